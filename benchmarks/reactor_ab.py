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
import os
import statistics
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from backends import Server, start_json_backend, start_sse_backend
from cpu_noise import CpuNoise
from payloads import envelope
from post_ab import start_tree_worker
from processes import PROXY_CPU, ProcessSet, free_port
from run_hotpath import (
    FLOOR_RELAY,
    JSON_ROUTE,
    QUICK,
    SSE_ROUTE,
    _ready,
    _vespa_command,
    measure_post,
    measure_sse,
    measure_ttfb,
)
from wrk import post_script

#: Quick windows, but a longer SSE window: the mean stream time needs streams
#: that start and end inside it.
PLAN = replace(QUICK, sse_window=4.0)

#: A variant: its name and how to start it in front of a backend.
Starter = Callable[[ProcessSet, Server, str, bytes], Server]


def floor(reactor: str) -> Starter:
    """``floor_relay.py`` on ``reactor`` (``twisted``: the default; ``vespa``)."""

    def start(procs: ProcessSet, backend: Server, name: str, probe: bytes) -> Server:
        port = free_port()
        command = [sys.executable, str(FLOOR_RELAY), str(port), str(backend.port)]
        env = {**os.environ, "FLOOR_REACTOR": reactor}
        return _ready(procs.start(name, command, cpu=PROXY_CPU, env=env), port, name, probe)

    return start


def worker(twistd_reactor: str | None) -> Starter:
    """``twistd [--reactor NAME] vespa``, unsecured, metrics off; ``None``: no option."""

    def start(procs: ProcessSet, backend: Server, name: str, probe: bytes) -> Server:
        port = free_port()
        command = _vespa_command(backend, port, "--unsecured")
        if twistd_reactor is not None:
            command[1:1] = ["--reactor", twistd_reactor]
        return _ready(procs.start(name, command, cpu=PROXY_CPU), port, name, probe)

    return start


def tree(path: str) -> Starter:
    """The worker of the source tree at ``path`` (``PYTHONPATH``), unsecured, metrics off."""

    def start(procs: ProcessSet, backend: Server, name: str, probe: bytes) -> Server:
        return start_tree_worker(procs, backend, name, path, probe)

    return start


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
    probe = b"POST " + SSE_ROUTE.encode() + b" " + envelope({"events": 1, "interval": 0})
    for name, start in starters.items():
        server = start(procs, sse, name.replace("/", "-").replace(" ", "") + "-sse", probe)
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
    body = envelope({"model": "bench", "prompt": "hello", "max_tokens": 16})
    script = post_script(procs.workdir / "post.lua", body)
    probe = b"POST " + JSON_ROUTE.encode() + b" " + body
    for name, start in starters.items():
        server = start(procs, nginx, name.replace("/", "-").replace(" ", "") + "-json", probe)
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
    rounds = []
    with tempfile.TemporaryDirectory(prefix="vespa-reactor-ab-") as tmp:
        with ProcessSet(Path(tmp)) as procs:
            for i in range(args.rounds):
                rounds.append(one_round(procs, variants))
                print(f"round {i + 1}:\n{report(rounds[-1:])}", flush=True)
    print(f"\nmedian of {args.rounds} rounds:\n{report(rounds)}")
    print(f"\n{noise.report()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
