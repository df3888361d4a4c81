"""
The relay performance suite: the same load direct to a backend and through Vespa.

Measures small JSON requests (wrk), paced SSE streams (sse_load.py) and
Vespa's peak memory with 1,000 streams open, prints direct and through-Vespa
figures side by side, then checks the targets and exits 1 if any fails.

Run: ``/work/venv/bin/python benchmarks/run_relay.py [--quick]`` (see README.md).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil
from backends import Server, start_json_backend, start_sse_backend, start_vespa, twistd_path
from cpu_noise import CpuNoise
from processes import (
    LOAD_CPU,
    PROXY_CPU,
    ProcessSet,
    memory_kib,
    pinning_available,
    run_bounded,
    run_with_processes,
)
from wrk import WrkResult, run_wrk, wrk_available

HERE = Path(__file__).resolve().parent
SSE_LOAD = HERE / "sse_load.py"
# One short stream: shows the SSE path relays before it is measured.
SSE_PROBE = "/sse?events=1&interval=0"

# Targets.
SSE_RATE_RATIO = 0.95
TTFB_P99_ADDED_MS = 10.0
JSON_C32_RPS = 4000.0
RSS_LIMIT_MIB = 80.0


@dataclass(frozen=True)
class Plan:
    """Durations and sizes of a run."""

    wrk_seconds: int
    wrk_warmup: int
    concurrencies: tuple[int, ...]
    sse_seconds: float
    sse_streams: int
    sse_events: int
    sse_interval: float
    rss_streams: int
    rss_events: int
    rss_interval: float


FULL = Plan(
    wrk_seconds=10, wrk_warmup=3, concurrencies=(1, 32),
    sse_seconds=10.0, sse_streams=128, sse_events=100, sse_interval=0.02,
    rss_streams=1000, rss_events=30, rss_interval=0.1,
)  # fmt: skip
QUICK = Plan(
    wrk_seconds=3, wrk_warmup=1, concurrencies=(1, 32),
    sse_seconds=3.0, sse_streams=128, sse_events=100, sse_interval=0.02,
    rss_streams=1000, rss_events=30, rss_interval=0.1,
)  # fmt: skip


@dataclass
class Results:
    """Everything measured, for the report, the checks and ``--json``."""

    json_backend: str = ""
    pinned: bool = False
    wrk: dict[str, dict[int, WrkResult]] = field(default_factory=dict)
    sse: dict[str, dict[str, Any]] = field(default_factory=dict)
    rss: dict[str, Any] = field(default_factory=dict)


# Measurements


def measure_json(plan: Plan, targets: dict[str, Server], results: Results) -> None:
    """
    wrk at each concurrency, direct then through Vespa, each after a warm-up.
    """
    for concurrency in plan.concurrencies:
        for label, server in targets.items():
            url = server.url + "/"
            run_wrk(url, concurrency, plan.wrk_warmup)  # warm-up: pools, caches, CPU clock
            result = run_wrk(url, concurrency, plan.wrk_seconds)
            results.wrk.setdefault(label, {})[concurrency] = result
            _progress(
                f"json c={concurrency} {label}: {result.requests_per_s:,.0f} req/s, "
                f"p50 {result.p50_ms:.3f} ms, p99 {result.p99_ms:.3f} ms"
            )


def sse_load(
    port: int,
    *,
    streams: int,
    events: int,
    interval: float,
    seconds: float,
    mode: str,
    while_running: Callable[[], None] | None = None,
    post: str | None = None,
) -> dict[str, Any]:
    """
    Run ``sse_load.py`` on the load CPU and return its JSON summary.

    :param post: POST this path with a Vast envelope instead of ``GET /sse``.
    """
    command = [
        sys.executable, str(SSE_LOAD), "--port", str(port), "--mode", mode,
        "--streams", str(streams), "--events", str(events),
        "--interval", str(interval), "--duration", str(seconds),
    ]  # fmt: skip
    if post is not None:
        command += ["--post", post]
    # Bound: ramp (one stream) + window, or one stream + its deadline, + start-up.
    timeout = (events * interval + seconds) * 2 + 30
    output = run_bounded(command, timeout, cpu=LOAD_CPU, while_running=while_running)
    summary: dict[str, Any] = json.loads(output)
    return summary


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds used so far by ``pid``."""
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def measure_sse(
    plan: Plan, targets: dict[str, Server], results: Results, proxy: Server
) -> None:
    """
    ``plan.sse_streams`` paced streams for a fixed window, direct then through Vespa.

    The proxy's CPU use over the run shows how much headroom it had.
    """
    for label, server in targets.items():
        proxy_cpu, wall = cpu_seconds(proxy.child.pid), time.monotonic()
        summary = sse_load(
            server.port,
            streams=plan.sse_streams,
            events=plan.sse_events,
            interval=plan.sse_interval,
            seconds=plan.sse_seconds,
            mode="window",
        )
        share = (cpu_seconds(proxy.child.pid) - proxy_cpu) / (time.monotonic() - wall)
        summary["proxy_cpu_share"] = share if server is proxy else None
        results.sse[label] = summary
        _progress(
            f"sse {label}: {summary['events_per_s']:,.0f} events/s, TTFB p50 "
            f"{summary['ttfb_ms']['p50']} ms, p99 {summary['ttfb_ms']['p99']} ms"
        )


class RssSampler:
    """
    Samples a process's RSS while the load runs; ``VmHWM`` gives the true peak.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.max_rss_kib = 0

    def __call__(self) -> None:
        try:
            rss = memory_kib(self.pid).get("VmRSS", 0)
        except OSError:
            return  # the process is gone; the run will report the failure
        self.max_rss_kib = max(self.max_rss_kib, rss)


def measure_rss(plan: Plan, vespa: Server, results: Results) -> None:
    """
    Hold ``plan.rss_streams`` streams open at once through a fresh Vespa; read its peak RSS.
    """
    pid = vespa.child.pid
    idle = memory_kib(pid)
    sampler = RssSampler(pid)
    summary = sse_load(
        vespa.port,
        streams=plan.rss_streams,
        events=plan.rss_events,
        interval=plan.rss_interval,
        seconds=10.0,
        mode="once",
        while_running=sampler,
    )
    after = memory_kib(pid)
    results.rss = {
        "streams": plan.rss_streams,
        "idle_rss_mib": idle["VmRSS"] / 1024,
        "max_sampled_rss_mib": sampler.max_rss_kib / 1024,
        "peak_rss_mib": after["VmHWM"] / 1024,
        "completed": summary["completed"],
        "short": summary["short"],
        "failed": summary["failed"],
        "errors": summary["errors"],
        "peak_open": summary["peak_open"],
        "ttfb_ms": summary["ttfb_ms"],
        "delivery_ms": summary["delivery_ms"],
        "connect_s": summary["connect_s"],
        "elapsed_s": summary["elapsed_s"],
    }
    _progress(
        f"rss: peak {results.rss['peak_rss_mib']:.1f} MiB with {summary['peak_open']} "
        f"streams open, {summary['completed']}/{plan.rss_streams} completed"
    )


def run_all(plan: Plan, procs: ProcessSet, results: Results, extra: Sequence[str]) -> None:
    """
    Start each backend and a Vespa in front of it, measure, stop them phase by phase.

    Each phase gets its own Vespa, so one phase's leftovers (pooled
    connections, heap growth) cannot colour the next, and the memory figure
    is that of the 1,000 streams alone.
    """
    json_backend = start_json_backend(procs)
    results.json_backend = json_backend.name
    if json_backend.name != "nginx":
        _progress("nginx not found: the small-JSON backend is the Twisted fallback")
    vespa = start_vespa(procs, json_backend, "/", name="vespa-json", extra_args=extra)
    measure_json(plan, {"direct": json_backend, "vespa": vespa}, results)
    procs.stop(vespa.child)
    procs.stop(json_backend.child)

    sse_backend = start_sse_backend(procs)
    vespa = start_vespa(procs, sse_backend, SSE_PROBE, name="vespa-sse", extra_args=extra)
    measure_sse(plan, {"direct": sse_backend, "vespa": vespa}, results, vespa)
    procs.stop(vespa.child)

    vespa = start_vespa(procs, sse_backend, SSE_PROBE, name="vespa-rss", extra_args=extra)
    measure_rss(plan, vespa, results)


# Report


def _progress(message: str) -> None:
    print(f"  .. {message}", file=sys.stderr, flush=True)


def _ratio(vespa: float | None, direct: float | None) -> str:
    if vespa is None or not direct:
        return "-"
    return f"{vespa / direct:.3f}"


def _row(
    label: str, direct: float | None, vespa: float | None, fmt: str, ratio: bool = True
) -> str:
    def cell(v: float | None) -> str:
        return "-" if v is None else format(v, fmt)

    last = _ratio(vespa, direct) if ratio else ""
    return f"  {label:<30}{cell(direct):>14}{cell(vespa):>14}{last:>14}"


def _line(label: str, value: str) -> str:
    return f"  {label:<30}{value:>14}"


def _pct(share: float | None) -> float | None:
    return None if share is None else share * 100


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _ms_pair(figures: dict[str, float | None]) -> str:
    return f"{_ms(figures['p50'])} / {_ms(figures['p99'])}"


def _header(title: str) -> list[str]:
    return ["", title, f"  {'':<30}{'direct':>14}{'vespa':>14}{'vespa/direct':>14}"]


def report(plan: Plan, results: Results) -> str:
    """
    The side-by-side tables.
    """
    lines = _header(
        f"Small JSON ({results.json_backend}), wrk -t1, {plan.wrk_seconds} s after a "
        f"{plan.wrk_warmup} s warm-up"
    )
    direct, vespa = results.wrk["direct"], results.wrk["vespa"]
    for c in plan.concurrencies:
        d, v = direct[c], vespa[c]
        lines += [
            _row(f"c={c} requests/s", d.requests_per_s, v.requests_per_s, ",.0f"),
            _row(f"c={c} latency p50 (ms)", d.p50_ms, v.p50_ms, ".3f"),
            _row(f"c={c} latency p99 (ms)", d.p99_ms, v.p99_ms, ".3f"),
            _row(f"c={c} errors", d.errors, v.errors, "d"),
        ]
    lines += _header(
        f"SSE, {plan.sse_streams} streams x {plan.sse_events} events every "
        f"{plan.sse_interval * 1000:g} ms, {plan.sse_seconds:g} s window"
    )
    sd, sv = results.sse["direct"], results.sse["vespa"]
    lines += [
        _row("events/s", sd["events_per_s"], sv["events_per_s"], ",.0f"),
        _row("TTFB p50 (ms)", sd["ttfb_ms"]["p50"], sv["ttfb_ms"]["p50"], ".3f"),
        _row("TTFB p99 (ms)", sd["ttfb_ms"]["p99"], sv["ttfb_ms"]["p99"], ".3f"),
        _row("event delivery p50 (ms)", sd["delivery_ms"]["p50"], sv["delivery_ms"]["p50"], ".3f"),
        _row("event delivery p99 (ms)", sd["delivery_ms"]["p99"], sv["delivery_ms"]["p99"], ".3f"),
        _row("streams completed", sd["completed"], sv["completed"], "d"),
        _row("streams failed", sd["failed"], sv["failed"], "d"),
        _row("Vespa CPU (% of its core)", None, _pct(sv["proxy_cpu_share"]), ".0f", False),
        _row("load generator CPU (% core)", _pct(sd["cpu_share"]), _pct(sv["cpu_share"]), ".0f",
             False),
    ]
    rss = results.rss
    lines += [
        "",
        f"Memory, {rss['streams']} streams x {plan.rss_events} events every "
        f"{plan.rss_interval * 1000:g} ms, all at once, through a fresh Vespa",
        _line("idle RSS (MiB)", f"{rss['idle_rss_mib']:.1f}"),
        _line("peak RSS, VmHWM (MiB)", f"{rss['peak_rss_mib']:.1f}"),
        _line("largest RSS sample (MiB)", f"{rss['max_sampled_rss_mib']:.1f}"),
        _line("streams open at once", str(rss["peak_open"])),
        _line("streams completed", str(rss["completed"])),
        _line("streams failed / short", f"{rss['failed']} / {rss['short']}"),
        _line("TTFB p50 / p99 (ms)", _ms_pair(rss["ttfb_ms"])) + "  (all requested at once)",
        _line("event delivery p50 / p99 (ms)", _ms_pair(rss["delivery_ms"])),
        _line("opening the connections (s)", f"{rss['connect_s']:.2f}")
        + "  (over 1 s: SYNs dropped by a full accept queue)",
    ]
    return "\n".join(lines)


# Targets


@dataclass(frozen=True)
class Check:
    """One target and whether it was met."""

    name: str
    measured: str
    ok: bool


def checks(results: Results) -> list[Check]:
    """
    The targets, plus the validity of the runs (an error is never fast).
    """
    sd, sv = results.sse["direct"], results.sse["vespa"]
    ratio = sv["events_per_s"] / sd["events_per_s"] if sd["events_per_s"] else 0.0
    added = _added_p99(sd, sv)
    c32 = results.wrk["vespa"].get(32)
    rps = c32.requests_per_s if c32 is not None else 0.0
    rss = results.rss
    all_done = rss["completed"] == rss["streams"] and not rss["failed"] and not rss["short"]
    all_open = rss["peak_open"] == rss["streams"]
    errors = sum(r.errors for by_c in results.wrk.values() for r in by_c.values()) + sum(
        s["failed"] + s["short"] for s in results.sse.values()
    )
    return [
        Check(
            f"SSE events/s through Vespa >= {SSE_RATE_RATIO} x direct",
            f"{ratio:.3f} x ({sv['events_per_s']:,.0f} vs {sd['events_per_s']:,.0f})",
            ratio >= SSE_RATE_RATIO,
        ),
        Check(
            f"SSE TTFB p99 added by Vespa < {TTFB_P99_ADDED_MS:g} ms",
            "no TTFB sample" if added is None else f"{added:+.3f} ms",
            added is not None and added < TTFB_P99_ADDED_MS,
        ),
        Check(
            f"small JSON through Vespa at c=32 >= {JSON_C32_RPS:,.0f} req/s",
            f"{rps:,.0f} req/s",
            rps >= JSON_C32_RPS,
        ),
        Check(
            f"Vespa peak RSS < {RSS_LIMIT_MIB:g} MiB with {rss['streams']} streams open, "
            "all completed",
            f"{rss['peak_rss_mib']:.1f} MiB, {rss['peak_open']} open at once, "
            f"{rss['completed']} completed",
            rss["peak_rss_mib"] < RSS_LIMIT_MIB and all_done and all_open,
        ),
        Check("no errors in the JSON and SSE runs", f"{errors} errors", errors == 0),
    ]


def _added_p99(direct: dict[str, Any], vespa: dict[str, Any]) -> float | None:
    d, v = direct["ttfb_ms"]["p99"], vespa["ttfb_ms"]["p99"]
    return None if d is None or v is None else v - d


def print_checks(found: list[Check]) -> None:
    """Print PASS/FAIL per target."""
    print("\nTargets")
    for check in found:
        print(f"  {'PASS' if check.ok else 'FAIL'}  {check.name}: {check.measured}")


# Entry point


def vespa_location() -> str:
    """Where the ``vespa`` package the worker will run is (PYTHONPATH applies)."""
    spec = importlib.util.find_spec("vespa")
    if spec is None or spec.origin is None:
        return "not found"
    return str(Path(spec.origin).parent)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short durations: a smoke run")
    parser.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    parser.add_argument(
        "--vespa-arg",
        action="append",
        default=[],
        metavar="OPTION",
        help="an extra 'twistd vespa' option, e.g. --vespa-arg=--max-wait-time=0 (repeatable)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """
    Run the suite; 0 if every target is met, 1 if one is not, 2 on error, 130 on Ctrl-C.
    """
    args = parse_args(argv)
    plan = QUICK if args.quick else FULL
    if not wrk_available():
        print("wrk is required (apt-get install wrk)", file=sys.stderr)
        return 2
    results = Results(pinned=pinning_available())
    where = (
        f"Vespa on CPU {PROXY_CPU}, backends and load on CPU {LOAD_CPU}"
        if results.pinned
        else "not pinned (taskset missing or one CPU)"
    )
    print(f"Vespa relay benchmark ({'quick' if args.quick else 'full'}); {where}")
    print(f"worker: {twistd_path()} vespa, package {vespa_location()}", flush=True)
    started = time.monotonic()
    noise = CpuNoise()
    noise.start()
    failed = run_with_processes(
        "vespa-bench-", lambda procs: run_all(plan, procs, results, args.vespa_arg)
    )
    if failed is not None:
        return failed
    print(report(plan, results))
    found = checks(results)
    print_checks(found)
    print(f"\n{noise.report()}")
    print(f"({time.monotonic() - started:.0f} s)")
    if args.json is not None:
        payload: dict[str, Any] = {
            "plan": asdict(plan),
            "results": asdict(results),
            "checks": [asdict(c) for c in found],
            "cpu_noise": noise.report(),
        }
        args.json.write_text(json.dumps(payload, indent=2, default=str))
    return 0 if all(c.ok for c in found) else 1


if __name__ == "__main__":
    sys.exit(main())
