"""
Worker CPU per relayed POST, two trees A/B: two ``twistd vespa`` workers
(unsecured, metrics off), each run with ``PYTHONPATH`` set to its tree, side
by side on the proxy CPU in front of one nginx; wrk c=32 windows alternate
between them (A B, B A, ...), so both see the same machine. With
``--secured``, each is a secured worker with its own autoscaler stand-in,
every request carrying the same url-only signature (``run_hotpath.py``'s
``secured`` column).

    .venv/bin/python benchmarks/post_ab.py /work/main . --rounds 8 --seconds 4
    .venv/bin/python benchmarks/post_ab.py /work/main . --secured

Prints each window's worker CPU per request and each tree's median.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from backends import Server, start_json_backend
from cpu_noise import CpuNoise
from payloads import POST_PAYLOAD, envelope, probe_request
from processes import ProcessSet, run_with_processes
from run_hotpath import JSON_ROUTE, QUICK, measure_post, start_secured, start_vespa
from wrk import post_script


def main(argv: Sequence[str] | None = None) -> int:
    """Measure; 0 when done."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("trees", nargs=2, help="two source trees (e.g. /work/main and .)")
    parser.add_argument("--rounds", type=int, default=8, help="windows per tree")
    parser.add_argument("--seconds", type=int, default=4, help="length of each window")
    parser.add_argument("--secured", action="store_true", help="secured workers, signed requests")
    args = parser.parse_args(argv)
    plan = replace(QUICK, wrk_seconds=args.seconds, sse_window=0.0, rss_streams=0, ttfb_bursts=0)
    noise = CpuNoise()
    noise.start()
    got: dict[str, list[float]] = {tree: [] for tree in args.trees}

    def run(procs: ProcessSet) -> None:
        body = envelope(POST_PAYLOAD)
        nginx = start_json_backend(procs)
        workers: list[tuple[str, Server, Path]] = []
        for i, tree in enumerate(args.trees):
            if args.secured:
                # Signatures are bound to each worker's url: a body each.
                secured = start_secured(procs, nginx, f"vespa-{i}", POST_PAYLOAD, pythonpath=tree)
                server, signed = secured.server, secured.body
            else:
                probe = probe_request(JSON_ROUTE, body)
                server = start_vespa(procs, nginx, f"vespa-{i}", probe, pythonpath=tree)
                signed = body
            workers.append((tree, server, post_script(procs.workdir / f"post-{i}.lua", signed)))
        for round_ in range(args.rounds):
            for tree, server, script in workers if round_ % 2 == 0 else workers[::-1]:
                result = measure_post(plan, server, server.child.pid, script)
                cpu = result["cpu_us_per_request"]
                got[tree].append(cpu)
                print(
                    f"round {round_} {tree}: {cpu:.1f} us/request, "
                    f"{result['requests_per_s']:,.0f} req/s, errors {result['errors']}",
                    flush=True,
                )

    failed = run_with_processes("vespa-post-ab-", run)
    if failed is not None:
        return failed
    for tree, values in got.items():
        listed = ", ".join(f"{value:.1f}" for value in values)
        print(f"{tree}: median {statistics.median(values):.1f} us/request (all: {listed})")
    print(noise.report())
    return 0


if __name__ == "__main__":
    sys.exit(main())
