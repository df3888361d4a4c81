"""
The reactor A/B of issue 14, round three: the same worker (and the floor
relay) on Twisted's ``EPollReactor`` and on Vespa's own reactor
(:mod:`vespa.reactor`), measured interleaved in one run so that the
machine's noise falls on every variant alike.

Variants: ``floor/twisted`` and ``floor/vespa`` (``floor_relay.py`` with
``FLOOR_REACTOR``), ``worker/twisted`` (``twistd --reactor epoll vespa``) and
``worker/vespa`` (``twistd vespa``). For each, in each round: worker CPU per
relayed SSE event at 300 and 600 streams (and 600's mean stream time), time
to first byte p99 of 128 streams started together, and wrk c=32 POSTs (CPU
per request, p50, p99). Printed: each round, then the median over them.

Run: ``python benchmarks/reactor_ab.py [--rounds N]`` (about 80 s a round).

With ``--trees A B`` the variants are instead the worker of two source trees
(each run with ``PYTHONPATH`` set to it, on Vespa's reactor) and the floor
relay on Vespa's reactor: a tree A/B of the per-event cost, interleaved.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from functools import partial
from typing import Any

from backends import Server, start_json_backend, start_sse_backend
from cpu_noise import CpuNoise
from payloads import ONE_EVENT, POST_PAYLOAD, envelope, probe_request
from processes import ProcessSet, run_with_processes
from run_hotpath import (
    JSON_ROUTE,
    QUICK,
    SSE_ROUTE,
    measure_post,
    measure_sse,
    measure_ttfb,
    start_floor,
    start_vespa,
)
from wrk import post_script

#: Quick windows, but a longer SSE window: the mean stream time needs streams
#: that start and end inside it.
PLAN = replace(QUICK, sse_window=4.0)

#: How to start a variant in front of a backend (``run_hotpath.start_vespa``'s
#: arguments: procs, backend, process name, readiness probe).
Starter = Callable[[ProcessSet, Server, str, bytes], Server]


def floor(reactor: str) -> Starter:
    """``floor_relay.py`` on ``reactor`` (``twisted``: the default; ``vespa``)."""
    return partial(start_floor, reactor=reactor)


def worker(twistd_reactor: str | None) -> Starter:
    """``twistd [--reactor NAME] vespa``, unsecured, metrics off; ``None``: no option."""
    return partial(start_vespa, twistd_reactor=twistd_reactor)


def tree(path: str) -> Starter:
    """The worker of the source tree at ``path`` (``PYTHONPATH``), unsecured, metrics off."""
    return partial(start_vespa, pythonpath=path)


def _process_name(variant: str, backend: str) -> str:
    """A variant's process name in front of ``backend``: ``floor-vespa-sse``."""
    return f"{variant.replace('/', '-').replace(' ', '')}-{backend}"


#: The variants, in the order they run in each round.
VARIANTS: dict[str, Starter] = {
    "floor/twisted": floor("twisted"),
    "floor/vespa": floor("vespa"),
    "worker/twisted": worker("epoll"),
    "worker/vespa": worker(None),
}


def one_round(procs: ProcessSet, starters: dict[str, Starter]) -> dict[str, dict[str, Any]]:
    """Every variant in turn, fresh, in front of the SSE backend, then of nginx."""
    results: dict[str, dict[str, Any]] = {name: {} for name in starters}
    sse = start_sse_backend(procs)
    probe = probe_request(SSE_ROUTE, envelope(ONE_EVENT))
    for name, start in starters.items():
        server = start(procs, sse, _process_name(name, "sse"), probe)
        pid = server.child.pid
        results[name]["ttfb_p99_ms"] = measure_ttfb(PLAN, server)["ttfb_p99_ms"]
        for streams in (300, 600):
            got = measure_sse(PLAN, server, pid, streams)
            results[name][f"sse{streams}_us"] = got["cpu_us_per_event"]
            results[name][f"sse{streams}_eps"] = got["events_per_s"]
            results[name][f"sse{streams}_mean_ms"] = got["stream_mean_ms"]
        procs.stop(server.child)
    procs.stop(sse.child)
    nginx = start_json_backend(procs)
    body = envelope(POST_PAYLOAD)
    script = post_script(procs.workdir / "post.lua", body)
    probe = probe_request(JSON_ROUTE, body)
    for name, start in starters.items():
        server = start(procs, nginx, _process_name(name, "json"), probe)
        got = measure_post(PLAN, server, server.child.pid, script)
        results[name]["post_us"] = got["cpu_us_per_request"]
        results[name]["post_p50_ms"] = got["p50_ms"]
        results[name]["post_p99_ms"] = got["p99_ms"]
        procs.stop(server.child)
    procs.stop(nginx.child)
    return results


COLUMNS = [
    ("sse300_us", "SSE300 us/ev", ".1f"),
    ("sse300_eps", "SSE300 ev/s", ",.0f"),
    ("sse600_us", "SSE600 us/ev", ".1f"),
    ("sse600_mean_ms", "SSE600 mean ms", ".0f"),
    ("ttfb_p99_ms", "TTFB p99 ms", ".1f"),
    ("post_us", "POST us/req", ".0f"),
    ("post_p50_ms", "POST p50 ms", ".2f"),
    ("post_p99_ms", "POST p99 ms", ".2f"),
]


def report(rounds: list[dict[str, dict[str, Any]]]) -> str:
    """One line per variant: the median of each figure over ``rounds``."""
    lines = ["variant".ljust(18) + "".join(title.rjust(16) for _, title, _ in COLUMNS)]
    for name in rounds[0]:
        cells = []
        for key, _, fmt in COLUMNS:
            values = [r[name][key] for r in rounds if r[name].get(key) is not None]
            cells.append(format(statistics.median(values), fmt) if values else "-")
        lines.append(name.ljust(18) + "".join(c.rjust(16) for c in cells))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--trees", nargs=2, metavar="TREE", help="A/B two source trees instead")
    args = parser.parse_args(argv)
    variants = VARIANTS
    if args.trees:
        variants = {"floor/vespa": floor("vespa")}
        variants.update((f"tree {path}", tree(path)) for path in args.trees)
    noise = CpuNoise()
    noise.start()
    rounds: list[dict[str, dict[str, Any]]] = []

    def run(procs: ProcessSet) -> None:
        for i in range(args.rounds):
            rounds.append(one_round(procs, variants))
            print(f"round {i + 1}:\n{report(rounds[-1:])}", flush=True)

    failed = run_with_processes("vespa-reactor-ab-", run)
    if failed is not None:
        return failed
    print(f"\nmedian of {args.rounds} rounds:\n{report(rounds)}")
    print(f"\n{noise.report()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
