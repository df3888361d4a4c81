"""
The hot-path benchmark of issue 14: worker CPU per relayed request and per
relayed SSE event, beside the backend direct and the official Vast worker.

In one run and one process tree, against the same backends (nginx for small
JSON, ``sse_backend.py`` for SSE), each target is measured in turn: the
backend ``direct``, ``floor`` (``floor_relay.py``: a byte relay with no HTTP,
what the reactor alone costs), ``vespa`` (``twistd vespa --unsecured``,
metrics off) and ``official`` (``vastai.serverless.server`` 1.9.1, aiohttp,
``UNSECURED``),
and for the POST path also ``secured``: Vespa verifying the url-only
signature Vast's autoscaler issues today, the same one on every request,
with the autoscaler stand-in (``python -m vespa.testing.autoscaler``)
serving its public key.
Every request is a ``POST`` carrying a Vast envelope, the only shape the
official worker relays. The worker under test runs alone on the proxy CPU;
its CPU time is read from ``/proc/<pid>/stat`` (utime + stime) over a fixed
load.

Run: ``.venv/bin/python benchmarks/run_hotpath.py [--quick] [--json FILE]``
(see README.md).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aioloop
from backends import HERE, Server, start_json_backend, start_sse_backend, twistd_path
from cpu_noise import CpuNoise
from payloads import ONE_EVENT, POST_PAYLOAD, envelope, probe_request
from processes import (
    LOAD_CPU,
    LOCALHOST,
    PROXY_CPU,
    Child,
    ProcessError,
    ProcessSet,
    free_port,
    memory_kib,
    pinning_available,
    run_with_processes,
    wait_for_port,
)
from run_relay import sse_load
from wrk import post_script, run_wrk, wrk_available

from vespa.testing.autoscaler.cli import load_or_create_key
from vespa.testing.autoscaler.wire import sign_auth

OFFICIAL_PEER = HERE / "official_peer.py"
FLOOR_RELAY = HERE / "floor_relay.py"
JSON_ROUTE = "/bench"
SSE_ROUTE = "/sse"
TARGETS = ("direct", "floor", "vespa", "secured", "official")


@dataclass(frozen=True)
class Plan:
    """Durations and sizes of a run."""

    wrk_seconds: int
    wrk_warmup: int
    sse_window: float
    rss_streams: int
    # One burst of 128 streams gives one p99; on this machine it ranged from
    # 25 to 61 ms added in back-to-back runs, so the figure is the median of
    # several bursts.
    ttfb_bursts: int


FULL = Plan(wrk_seconds=8, wrk_warmup=2, sse_window=5.0, rss_streams=1000, ttfb_bursts=5)
QUICK = Plan(wrk_seconds=2, wrk_warmup=1, sse_window=2.0, rss_streams=1000, ttfb_bursts=3)


# The worker's own CPU time


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """
    utime + stime of ``pid`` from ``/proc/<pid>/stat``, in seconds.

    The fields after the command name (which may hold spaces, hence the
    ``rpartition``) start at field 3, so utime and stime are at 11 and 12.
    """
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


class CpuMeter:
    """CPU seconds a process used between :meth:`start` and :meth:`stop`."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        self._start = 0.0

    def start(self) -> None:
        if self.pid is not None:
            self._start = cpu_seconds(self.pid)

    def stop(self) -> float | None:
        return None if self.pid is None else cpu_seconds(self.pid) - self._start


# The workers


def start_vespa(
    procs: ProcessSet,
    backend: Server,
    name: str,
    probe: bytes,
    *,
    pythonpath: str | None = None,
    twistd_reactor: str | None = None,
) -> Server:
    """
    ``twistd vespa`` unsecured with metrics off, on the proxy CPU, ready once
    it relays. With ``pythonpath``, the worker runs that source tree; with
    ``twistd_reactor``, on the reactor twistd's ``--reactor`` names.
    """
    port = free_port()
    command = _vespa_command(backend, port, "--unsecured")
    if twistd_reactor is not None:
        command[1:1] = ["--reactor", twistd_reactor]
    child = procs.start(name, command, cpu=PROXY_CPU, env=_environment(pythonpath))
    return _ready(child, port, name, probe)


def start_floor(
    procs: ProcessSet, backend: Server, name: str, probe: bytes, *, reactor: str | None = None
) -> Server:
    """
    ``floor_relay.py`` (bytes relayed, no HTTP) on the proxy CPU, ready once
    it relays; on Twisted's default reactor, or ``reactor`` (``vespa``).
    """
    port = free_port()
    command = [sys.executable, str(FLOOR_RELAY), str(port), str(backend.port)]
    env = None if reactor is None else {**os.environ, "FLOOR_REACTOR": reactor}
    child = procs.start(name, command, cpu=PROXY_CPU, env=env)
    return _ready(child, port, name, probe)


def _environment(pythonpath: str | None, **more: str) -> dict[str, str] | None:
    """This process's environment with ``more``, and ``PYTHONPATH`` set to a tree if given."""
    if pythonpath is None and not more:
        return None
    env = {**os.environ, **more}
    if pythonpath is not None:
        env["PYTHONPATH"] = os.path.abspath(pythonpath)
    return env


def _vespa_command(backend: Server, port: int, *extra: str) -> list[str]:
    return [
        twistd_path(), "-n", "--pidfile=", "vespa",
        "--backend-url", backend.url,
        "--listen", f"tcp:{port}:interface={LOCALHOST}",
        "--metrics-listen", "none",
        *extra,
    ]  # fmt: skip


@dataclass(frozen=True)
class Secured:
    """A secured Vespa and the signed envelope it admits."""

    server: Server
    body: bytes


def start_secured(
    procs: ProcessSet,
    backend: Server,
    name: str,
    payload: dict[str, Any],
    *,
    pythonpath: str | None = None,
) -> Secured:
    """
    The autoscaler stand-in on the load CPU, then a secured Vespa (metrics
    off) on the proxy CPU that fetches its public key and binds signatures to
    its url, as on Vast; ready once a request signed for that url relays.
    With ``pythonpath``, the worker runs that source tree.
    """
    key_file = procs.workdir / "autoscaler-key.pem"
    key = load_or_create_key(str(key_file))
    autoscaler_port = free_port()
    standin = procs.start(
        "autoscaler",
        [sys.executable, "-m", "vespa.testing.autoscaler", "--port", str(autoscaler_port),
         "--key-file", str(key_file)],
        cpu=LOAD_CPU,
    )  # fmt: skip
    wait_for_port(standin, autoscaler_port)
    port = free_port()
    url = f"http://{LOCALHOST}:{port}"
    env = _environment(
        pythonpath,
        REPORT_ADDR=f"http://{LOCALHOST}:{autoscaler_port}",
        PUBLIC_IPADDR=LOCALHOST,
        CONTAINER_ID="1",
        MASTER_TOKEN="bench",
        **{f"VAST_TCP_PORT_{port}": str(port)},
    )
    child = procs.start(name, _vespa_command(backend, port), cpu=PROXY_CPU, env=env)
    body = envelope(payload, signature=sign_auth(key, {"url": url}, mode="url"), url=url)
    return Secured(_ready(child, port, name, probe_request(JSON_ROUTE, body)), body)


def start_official(
    procs: ProcessSet, backend: Server, name: str, route: str, probe: bytes
) -> Server:
    """The official worker (``official_peer.py``), on the proxy CPU, ready once it relays."""
    port, http_port = free_port(), free_port()
    model_log = procs.workdir / f"{name}-model.log"
    model_log.write_text("READY\n")
    env = {
        **os.environ,
        "WORKER_PORT": str(port),
        "WORKER_HTTP_PORT": str(http_port),
        f"VAST_TCP_PORT_{port}": str(port),
        "PUBLIC_IPADDR": LOCALHOST,
        "UNSECURED": "true",
        # Nobody listens there: reports fail quickly, off the request path.
        "REPORT_ADDR": f"http://{LOCALHOST}:{free_port()}",
        "CONTAINER_ID": "1",
        "MASTER_TOKEN": "bench",
    }
    command = [sys.executable, str(OFFICIAL_PEER), str(backend.port), str(model_log), route]
    child = procs.start(name, command, cpu=PROXY_CPU, env=env)
    return _ready(child, port, name, probe)


def _ready(child: Child, port: int, name: str, probe: bytes) -> Server:
    """Wait for the port, then until ``probe`` (a raw POST) is answered 200."""
    wait_for_port(child, port, timeout=60.0)
    deadline = time.monotonic() + 60.0
    while True:
        connection = http.client.HTTPConnection(LOCALHOST, port, timeout=5.0)
        try:
            method, _, rest = probe.partition(b" ")
            path, _, body = rest.partition(b" ")
            connection.request(
                method.decode(), path.decode(), body=body,
                headers={"Content-Type": "application/json"},
            )  # fmt: skip
            response = connection.getresponse()
            response.read()
            if response.status == 200:
                return Server(name, child, port)
        except OSError:
            pass
        finally:
            connection.close()
        if child.popen.poll() is not None or time.monotonic() > deadline:
            raise ProcessError(f"{name} never relayed {path!r}:\n{child.log_tail()}")
        time.sleep(0.1)


# Measurements


def measure_post(plan: Plan, server: Server, pid: int | None, script: Path) -> dict[str, Any]:
    """wrk c=32 POSTs of a small envelope: throughput, latency, worker CPU per request."""
    url = server.url + JSON_ROUTE
    run_wrk(url, 32, plan.wrk_warmup, script=script)
    meter = CpuMeter(pid)
    meter.start()
    result = run_wrk(url, 32, plan.wrk_seconds, script=script)
    cpu = meter.stop()
    return {
        "requests_per_s": result.requests_per_s,
        "p50_ms": result.p50_ms,
        "p99_ms": result.p99_ms,
        "errors": result.errors,
        "cpu_us_per_request": None if cpu is None else cpu / result.requests * 1e6,
    }


def measure_sse(
    plan: Plan, server: Server, pid: int | None, streams: int
) -> dict[str, Any]:
    """
    ``streams`` streams of 100 events at 10 ms, back to back, for a window:
    events/s, mean stream time, and the worker's CPU per relayed event (its
    CPU over the whole load, over every event the load received).
    """
    meter = CpuMeter(pid)
    meter.start()
    summary = sse_load(
        server.port, streams=streams, events=100, interval=0.01,
        seconds=plan.sse_window, mode="window", post=SSE_ROUTE,
    )  # fmt: skip
    cpu = meter.stop()
    total = summary["events_total"]
    return {
        "events_per_s": summary["events_per_s"],
        "stream_mean_ms": summary["stream_mean_ms"],
        "failed": summary["failed"] + summary["short"],
        "cpu_us_per_event": None if cpu is None or not total else cpu / total * 1e6,
    }


def measure_ttfb(plan: Plan, server: Server) -> dict[str, Any]:
    """
    128 streams requested at the same moment: time to first event, the
    median over ``plan.ttfb_bursts`` bursts of each burst's p99.
    """
    p99s: list[float] = []
    failed = 0
    for _ in range(plan.ttfb_bursts):
        summary = sse_load(
            server.port, streams=128, events=10, interval=0.01, seconds=10.0, mode="once",
            post=SSE_ROUTE,
        )  # fmt: skip
        failed += summary["failed"]
        if summary["ttfb_ms"]["p99"] is not None:
            p99s.append(summary["ttfb_ms"]["p99"])
    return {
        "ttfb_p99_ms": statistics.median(p99s) if p99s else None,
        "ttfb_p99_bursts_ms": p99s,
        "failed": failed,
    }


def measure_rss(plan: Plan, server: Server, pid: int) -> dict[str, Any]:
    """A fresh worker holding ``plan.rss_streams`` streams open at once: peak RSS."""
    summary = sse_load(
        server.port, streams=plan.rss_streams, events=30, interval=0.1,
        seconds=10.0, mode="once", post=SSE_ROUTE,
    )  # fmt: skip
    return {
        "peak_rss_mib": memory_kib(pid)["VmHWM"] / 1024,
        "peak_open": summary["peak_open"],
        "completed": summary["completed"],
        "failed": summary["failed"] + summary["short"],
    }


def run_all(plan: Plan, procs: ProcessSet, results: dict[str, dict[str, Any]]) -> None:
    """
    The JSON phase (nginx) then the SSE phase (sse_backend.py), each target
    in turn; each worker is fresh for its phase, so the SSE phase's peak RSS
    is that of the 1,000 streams (measured first).
    """
    post_body = envelope(POST_PAYLOAD)
    script = post_script(procs.workdir / "post.lua", post_body)
    json_probe = probe_request(JSON_ROUTE, post_body)

    nginx = start_json_backend(procs)
    workers = {
        "direct": (nginx, None),
        "floor": _worker(start_floor(procs, nginx, "floor-json", json_probe)),
        "vespa": _worker(start_vespa(procs, nginx, "vespa-json", json_probe)),
        "official": _worker(
            start_official(procs, nginx, "official-json", JSON_ROUTE, json_probe)
        ),
    }
    for label, (server, pid) in workers.items():
        results[label]["post"] = measure_post(plan, server, pid, script)
        _progress(f"post {label}: {results[label]['post']}")
    for server, pid in workers.values():
        if pid is not None:
            procs.stop(server.child)
    secured = start_secured(procs, nginx, "vespa-secured", POST_PAYLOAD)
    signed_script = post_script(procs.workdir / "signed.lua", secured.body)
    pid = secured.server.child.pid
    results["secured"]["post"] = measure_post(plan, secured.server, pid, signed_script)
    _progress(f"post secured: {results['secured']['post']}")
    procs.stop(secured.server.child)
    procs.stop(nginx.child)

    sse = start_sse_backend(procs)
    sse_probe = probe_request(SSE_ROUTE, envelope(ONE_EVENT))
    workers = {
        "direct": (sse, None),
        "floor": _worker(start_floor(procs, sse, "floor-sse", sse_probe)),
        "vespa": _worker(start_vespa(procs, sse, "vespa-sse", sse_probe)),
        "official": _worker(start_official(procs, sse, "official-sse", SSE_ROUTE, sse_probe)),
    }
    for label, (server, pid) in workers.items():
        if pid is not None:
            results[label]["rss"] = measure_rss(plan, server, pid)
            _progress(f"rss {label}: {results[label]['rss']}")
    for label, (server, _) in workers.items():
        results[label]["ttfb"] = measure_ttfb(plan, server)
        _progress(f"ttfb {label}: {results[label]['ttfb']}")
    for streams in (300, 600):
        for label, (server, pid) in workers.items():
            results[label][f"sse{streams}"] = measure_sse(plan, server, pid, streams)
            _progress(f"sse {streams} {label}: {results[label][f'sse{streams}']}")


def _worker(server: Server) -> tuple[Server, int]:
    return server, server.child.pid


# Report


#: Reads one figure from a target's results.
Getter = Callable[[dict[str, Any]], float | None]


def _cell(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def table(results: dict[str, dict[str, Any]]) -> list[tuple[str, list[str]]]:
    """The rows of the report: a measurement, then one cell per target."""

    def row(label: str, get: Getter, fmt: str) -> tuple[str, list[str]]:
        cells = []
        for target in TARGETS:
            try:
                value = get(results[target])
            except (KeyError, TypeError):
                value = None  # not measured for this target
            cells.append(_cell(value, fmt))
        return label, cells

    def over_direct(section: str, key: str, ratio: bool) -> Getter:
        """A target's figure over direct's: their ratio, or the difference."""

        def get(r: dict[str, Any]) -> float | None:
            mine, direct = r[section][key], results["direct"][section][key]
            if mine is None or direct is None:
                return None
            return float(mine / direct if ratio else mine - direct)

        return get

    return [
        row("POST c=32 worker CPU/request (us)", lambda r: r["post"]["cpu_us_per_request"], ".0f"),
        row("POST c=32 requests/s", lambda r: r["post"]["requests_per_s"], ",.0f"),
        row("POST c=32 p50 (ms)", lambda r: r["post"]["p50_ms"], ".2f"),
        row("POST c=32 p99 (ms)", lambda r: r["post"]["p99_ms"], ".2f"),
        row("POST errors", lambda r: r["post"]["errors"], "d"),
        row("SSE 300 worker CPU/event (us)", lambda r: r["sse300"]["cpu_us_per_event"], ".1f"),
        row("SSE 300 events/s", lambda r: r["sse300"]["events_per_s"], ",.0f"),
        row("SSE 300 delivered vs direct", over_direct("sse300", "events_per_s", True), ".3f"),
        row("SSE 600 worker CPU/event (us)", lambda r: r["sse600"]["cpu_us_per_event"], ".1f"),
        row("SSE 600 events/s", lambda r: r["sse600"]["events_per_s"], ",.0f"),
        row("SSE 600 delivered vs direct", over_direct("sse600", "events_per_s", True), ".3f"),
        row("SSE 600 mean stream (ms)", lambda r: r["sse600"]["stream_mean_ms"], ".0f"),
        row("SSE 600 mean stream added (ms)", over_direct("sse600", "stream_mean_ms", False),
            "+.0f"),
        row("SSE failed or short streams", _sse_failures, "d"),
        row("TTFB p99, 128 together (ms)", lambda r: r["ttfb"]["ttfb_p99_ms"], ".1f"),
        row("TTFB p99 added (ms)", over_direct("ttfb", "ttfb_p99_ms", False), "+.1f"),
        row("peak RSS, 1,000 open (MiB)", lambda r: r["rss"]["peak_rss_mib"], ".1f"),
        (
            "1,000 streams open / completed",
            [
                "-" if "rss" not in results[t] else
                f"{results[t]['rss']['peak_open']} / {results[t]['rss']['completed']}"
                for t in TARGETS
            ],
        )
    ]


def _sse_failures(r: dict[str, Any]) -> int:
    return int(r["sse300"]["failed"] + r["sse600"]["failed"] + r["ttfb"]["failed"])


def report(rows: list[tuple[str, list[str]]]) -> str:
    """The table as text."""
    lines = [f"  {'measurement':<36}" + "".join(f"{t:>12}" for t in TARGETS)]
    for label, cells in rows:
        lines.append(f"  {label:<36}" + "".join(f"{c:>12}" for c in cells))
    return "\n".join(lines)


# Entry point


def _progress(message: str) -> None:
    print(f"  .. {message}", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Run it; 0 when measured, 2 when a run could not be done, 130 on Ctrl-C."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short windows: about a minute")
    parser.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    if not wrk_available():
        print("wrk is required (apt-get install wrk)", file=sys.stderr)
        return 2
    where = (
        f"workers on CPU {PROXY_CPU}, backends and load on CPU {LOAD_CPU}"
        if pinning_available()
        else "not pinned"
    )
    print(
        f"Hot-path benchmark ({'quick' if args.quick else 'full'}); {where}; "
        f"SSE backend and load on {aioloop.name()}",
        flush=True,
    )
    results: dict[str, dict[str, Any]] = {t: {} for t in TARGETS}
    started = time.monotonic()
    noise = CpuNoise()
    noise.start()
    failed = run_with_processes("vespa-hotpath-", lambda procs: run_all(plan, procs, results))
    if failed is not None:
        return failed
    rows = table(results)
    print(report(rows))
    print(f"\n{noise.report()}")
    print(f"({time.monotonic() - started:.0f} s)")
    if args.json is not None:
        payload = {"plan": asdict(plan), "results": results, "table": rows,
                   "cpu_noise": noise.report()}  # fmt: skip
        args.json.write_text(json.dumps(payload, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
