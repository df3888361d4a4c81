"""
Running ``wrk`` and reading its report.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from processes import LOAD_CPU, run_bounded

WRK = "wrk"

_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_PERCENTILE = re.compile(r"^\s*(50|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s|m|h)\s*$", re.MULTILINE)
_RATE = re.compile(r"^Requests/sec:\s+([\d.]+)", re.MULTILINE)
_TOTAL = re.compile(r"^\s*(\d+) requests in", re.MULTILINE)
_NON_2XX = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")
_SOCKET_ERRORS = re.compile(
    r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)"
)


@dataclass(frozen=True)
class WrkResult:
    """
    What one ``wrk`` run measured.

    :ivar requests_per_s: completed requests per second.
    :ivar p50_ms: median latency.
    :ivar p99_ms: 99th percentile latency.
    :ivar requests: requests completed.
    :ivar errors: non-2xx/3xx responses plus socket errors.
    """

    requests_per_s: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int


class WrkOutputError(ValueError):
    """The text is not a ``wrk --latency`` report."""


def wrk_available() -> bool:
    """True when ``wrk`` is on the PATH."""
    return shutil.which(WRK) is not None


def parse_wrk(text: str) -> WrkResult:
    """
    Read the figures of a ``wrk --latency`` report.

    :raise WrkOutputError: a figure is missing.
    """
    rate = _RATE.search(text)
    total = _TOTAL.search(text)
    percentiles = {int(p): float(v) * _UNITS_MS[u] for p, v, u in _PERCENTILE.findall(text)}
    if rate is None or total is None or set(percentiles) != {50, 99}:
        raise WrkOutputError(f"unexpected wrk output:\n{text}")
    errors = 0
    non_2xx = _NON_2XX.search(text)
    if non_2xx is not None:
        errors += int(non_2xx.group(1))
    socket_errors = _SOCKET_ERRORS.search(text)
    if socket_errors is not None:
        errors += sum(int(n) for n in socket_errors.groups())
    return WrkResult(
        requests_per_s=float(rate.group(1)),
        p50_ms=percentiles[50],
        p99_ms=percentiles[99],
        requests=int(total.group(1)),
        errors=errors,
    )


def run_wrk(
    url: str,
    connections: int,
    seconds: float,
    *,
    script: Path | None = None,
    while_running: Callable[[], None] | None = None,
) -> WrkResult:
    """
    Load ``url`` with one wrk thread and ``connections`` connections, on the load CPU.

    One thread is enough: wrk's event loop drives tens of thousands of
    requests per second per thread, well above what is measured here, and
    the second core is shared with the backend.

    :param url: the target, on 127.0.0.1.
    :param connections: concurrent connections (the concurrency).
    :param seconds: how long to run (whole seconds, as wrk takes them).
    :param script: a wrk Lua script (e.g. :func:`post_script`), or ``None`` for GET.
    :param while_running: called repeatedly while wrk runs.
    """
    duration = max(1, round(seconds))
    command = [WRK, "-t1", f"-c{connections}", f"-d{duration}s", "--latency"]
    if script is not None:
        command += ["-s", str(script)]
    command.append(url)
    output = run_bounded(
        command, timeout=duration + 30, cpu=LOAD_CPU, while_running=while_running
    )
    return parse_wrk(output)


def post_script(path: Path, body: bytes) -> Path:
    """
    Write a wrk Lua script to ``path`` that sends every request as
    ``POST`` with ``body`` as its JSON body; return ``path``.
    """
    quoted = body.decode().replace("\\", "\\\\").replace('"', '\\"')
    path.write_text(
        'wrk.method = "POST"\n'
        f'wrk.body = "{quoted}"\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
    )
    return path
