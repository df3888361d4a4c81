"""
An SSE load generator: many concurrent event streams, measured, as JSON on stdout.

It speaks HTTP/1.1 itself over asyncio protocols (no HTTP library), so one
process sustains a thousand streams at a few per cent of a core: parsing is
one ``find`` per chunk and per event, on bytes already in memory.

Two modes:

``window`` (default)
    ``--streams`` connections each run streams back to back (kept alive) for
    ``--duration`` seconds, then everything is cut. Events/s counts the events
    received inside the window; the connections are all opened *before* the
    window starts, so the connect ramp is not measured.
``once``
    every connection runs exactly one stream, all requested at the same
    moment; the run ends when all have finished (or at a deadline). Used to
    hold ``--streams`` streams open at once, e.g. to measure a proxy's memory.

Measured per stream: TTFB, from the request written to the first complete
``data:`` event received; the event count; and each event's delivery time,
from the backend writing it (the ``"t"`` it carries, on the machine-wide
monotonic clock) to its arrival here.

Run: ``python benchmarks/sse_load.py --port 8080 --streams 128 --duration 10``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from aioloop import run_loop
from payloads import envelope

# Connections opened concurrently during the ramp. This does not bound the
# server's accept queue (a connect completes on the SYN-ACK, before accept()),
# so a server with a short backlog (Twisted's default is 50) can still drop
# SYNs, which are retried a second later: the ramp's duration, reported as
# "connect_s", shows it. The ramp is never inside a measurement.
CONNECT_CONCURRENCY = 32
CONNECT_TIMEOUT = 10.0


@dataclass
class Stats:
    """What every stream of the run adds to."""

    # The measurement window, in time.monotonic_ns(); "once" mode counts everything.
    window_start: int = 0
    window_end: int = 2**63
    events: int = 0
    # Every event received, in the window or not: with the proxy's CPU time
    # over the whole run, this gives its CPU cost per event.
    events_total: int = 0
    ttfb: list[float] = field(default_factory=list)
    # Request written to last byte, for streams that started and ended in the window.
    stream_time: list[float] = field(default_factory=list)
    delivery: list[float] = field(default_factory=list)
    completed: int = 0
    short: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    open_now: int = 0
    peak_open: int = 0

    def stream_opened(self) -> None:
        self.open_now += 1
        self.peak_open = max(self.peak_open, self.open_now)

    def stream_closed(self) -> None:
        self.open_now -= 1


class StreamError(Exception):
    """A stream ended abnormally (status, truncation, connection loss)."""


# The backend's write time in an event: "t":<monotonic ns>.
_SENT_AT = re.compile(rb'"t":(\d+)')

# Parser states of the response in progress.
_IDLE, _HEAD, _CHUNK_SIZE, _CHUNK_DATA, _TRAILER, _LENGTH, _TO_CLOSE = range(7)


class SSEConnection(asyncio.Protocol):
    """
    One kept-alive HTTP/1.1 connection that runs SSE requests one at a time.

    :param stats: where results are added.
    """

    def __init__(self, stats: Stats) -> None:
        self.stats = stats
        self.transport: asyncio.Transport | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._buf = bytearray()
        self._sse = bytearray()
        self._state = _IDLE
        self._remaining = 0
        self._done: asyncio.Future[int] | None = None
        self._sent_at = 0.0
        self._events = 0
        self._status = 0
        self._keep_alive = True

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # asyncio and uvloop set TCP_NODELAY themselves; uvloop's transports
        # are not subclasses of asyncio.Transport, only alike.
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self._state == _IDLE:
            return
        self._buf += data
        try:
            self._parse(time.monotonic_ns())
        except (ValueError, StreamError) as e:
            self._fail(f"bad response: {e}")
            self.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._state == _TO_CLOSE:
            self._finish()
        elif self._state != _IDLE:
            self._fail("connection lost mid-response")
        if not self.closed.done():
            self.closed.set_result(None)

    # Requests

    @property
    def usable(self) -> bool:
        """True when another request can be sent on this connection."""
        return self.transport is not None and not self.closed.done() and self._keep_alive

    def request(self, raw_request: bytes) -> asyncio.Future[int]:
        """
        Send one request; the future fires with its event count, or fails.
        """
        assert self.transport is not None and self._state == _IDLE
        self._state = _HEAD
        self._events = 0
        self._sse.clear()
        self._done = asyncio.get_running_loop().create_future()
        self._sent_at = time.monotonic_ns()
        self.transport.write(raw_request)
        return self._done

    def abort(self) -> None:
        """Drop the connection at once (no FIN handshake to wait for)."""
        if self.transport is not None:
            self.transport.abort()

    # Parsing

    def _parse(self, now: int) -> None:
        buf = self._buf
        while buf:
            state = self._state
            if state == _HEAD:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                self._head(bytes(buf[:end]))
                del buf[: end + 4]
            elif state == _CHUNK_SIZE:
                end = buf.find(b"\r\n")
                if end < 0:
                    return
                size = int(bytes(buf[:end]).split(b";")[0], 16)
                del buf[: end + 2]
                self._remaining = size
                self._state = _CHUNK_DATA if size else _TRAILER
            elif state == _CHUNK_DATA:
                if len(buf) < self._remaining + 2:
                    return
                self._body(bytes(buf[: self._remaining]), now)
                del buf[: self._remaining + 2]
                self._state = _CHUNK_SIZE
            elif state == _TRAILER:
                if buf.startswith(b"\r\n"):
                    del buf[:2]
                    self._finish()
                    return
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                del buf[: end + 4]
                self._finish()
                return
            elif state == _LENGTH:
                take = min(len(buf), self._remaining)
                self._body(bytes(buf[:take]), now)
                del buf[:take]
                self._remaining -= take
                if not self._remaining:
                    self._finish()
                return
            elif state == _TO_CLOSE:
                self._body(bytes(buf), now)
                buf.clear()
            else:
                raise StreamError("data after the response")

    def _head(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        self._status = int(lines[0].split(b" ", 2)[1])
        headers: dict[bytes, bytes] = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip().lower()
        self._keep_alive = headers.get(b"connection") != b"close"
        if b"chunked" in headers.get(b"transfer-encoding", b""):
            self._state = _CHUNK_SIZE
        elif b"content-length" in headers:
            self._remaining = int(headers[b"content-length"])
            self._state = _LENGTH if self._remaining else _IDLE
            if not self._remaining:
                self._finish()
        else:
            self._keep_alive = False
            self._state = _TO_CLOSE

    def _body(self, data: bytes, now: int) -> None:
        sse = self._sse
        sse += data
        start = 0
        while True:
            end = sse.find(b"\n\n", start)
            if end < 0:
                break
            if sse.find(b"data:", start, end) >= 0:
                stamp = _SENT_AT.search(sse, start, end)
                self._event(now, int(stamp.group(1)) if stamp else None)
            start = end + 2
        del sse[:start]

    def _event(self, now: int, sent_ns: int | None) -> None:
        stats = self.stats
        in_window = stats.window_start <= now <= stats.window_end
        if self._events == 0:
            stats.stream_opened()
            if in_window and self._sent_at >= stats.window_start:
                stats.ttfb.append((now - self._sent_at) / 1e9)
        stats.events_total += 1
        if in_window:
            stats.events += 1
            if sent_ns is not None:
                stats.delivery.append((now - sent_ns) / 1e9)
        self._events += 1

    def _finish(self) -> None:
        if self._status != 200:
            self._fail(f"status {self._status}")
            return
        stats = self.stats
        now = time.monotonic_ns()
        if self._sent_at >= stats.window_start and now <= stats.window_end:
            stats.stream_time.append((now - self._sent_at) / 1e9)
        self._end()
        if self._done is not None and not self._done.done():
            self._done.set_result(self._events)

    def _fail(self, why: str) -> None:
        self._end()
        if self._done is not None and not self._done.done():
            self._done.set_exception(StreamError(why))

    def _end(self) -> None:
        if self._events:
            self.stats.stream_closed()
        self._state = _IDLE


@dataclass(frozen=True)
class LoadConfig:
    """One run of the generator."""

    port: int
    streams: int
    events: int
    interval: float
    duration: float
    mode: str
    # POST this path with a Vast request envelope instead of the GET: the
    # official worker relays only POST routes, with the stream's parameters
    # in the JSON payload.
    post_path: str | None = None

    @property
    def raw_request(self) -> bytes:
        """The request every stream sends."""
        if self.post_path is not None:
            body = envelope({"events": self.events, "interval": self.interval})
            return (
                f"POST {self.post_path} HTTP/1.1\r\n"
                f"Host: 127.0.0.1:{self.port}\r\n"
                "Accept: text/event-stream\r\n"
                "Content-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n"
                "User-Agent: vespa-bench-sse-load\r\n\r\n"
            ).encode("ascii") + body
        return (
            f"GET /sse?events={self.events}&interval={self.interval:g} HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{self.port}\r\n"
            "Accept: text/event-stream\r\n"
            "User-Agent: vespa-bench-sse-load\r\n\r\n"
        ).encode("ascii")

    @property
    def stream_seconds(self) -> float:
        """How long one stream lasts at the backend's pace."""
        return (self.events - 1) * self.interval


async def connect(config: LoadConfig, stats: Stats, gate: asyncio.Semaphore) -> SSEConnection:
    """
    Open one connection, at most :data:`CONNECT_CONCURRENCY` being opened at once.
    """
    loop = asyncio.get_running_loop()
    async with gate:
        _, protocol = await asyncio.wait_for(
            loop.create_connection(lambda: SSEConnection(stats), "127.0.0.1", config.port),
            CONNECT_TIMEOUT,
        )
    return protocol


async def run_one(conn: SSEConnection, config: LoadConfig, stats: Stats) -> None:
    """
    Run one stream on ``conn`` and add its outcome to ``stats``.
    """
    try:
        count = await conn.request(config.raw_request)
    except StreamError as e:
        stats.errors[str(e)] += 1
        conn.abort()
        return
    stats.completed += 1
    if count != config.events:
        stats.short += 1


async def window_worker(
    conn: SSEConnection,
    config: LoadConfig,
    stats: Stats,
    gate: asyncio.Semaphore,
    delay: float,
    opened: list[SSEConnection],
) -> None:
    """
    After ``delay``, run streams back to back on one connection (reconnecting
    if it closes, and adding the new connection to ``opened``) until cancelled.
    """
    await asyncio.sleep(delay)
    while True:
        if not conn.usable:
            conn.abort()
            conn = await connect(config, stats, gate)
            opened.append(conn)
        await run_one(conn, config, stats)


async def open_all(config: LoadConfig, stats: Stats) -> tuple[list[SSEConnection], float]:
    """
    Open ``config.streams`` connections; return them and the seconds it took.
    """
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
    started = time.monotonic()
    conns = await asyncio.gather(*(connect(config, stats, gate) for _ in range(config.streams)))
    return list(conns), time.monotonic() - started


async def run_window(config: LoadConfig, stats: Stats) -> dict[str, Any]:
    """
    The ``window`` mode: streams back to back, measured for ``config.duration`` seconds.

    The connections' first requests are spread evenly over one stream's
    length, and the window opens once they all run: a steady state of
    ``config.streams`` open streams with arrivals spread out, as from
    independent users. (Started in step, every stream would end and restart in
    step too, and TTFB would measure a queue of 128 simultaneous requests.)
    """
    conns, connect_s = await open_all(config, stats)
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
    ramp = config.stream_seconds
    stats.window_start = time.monotonic_ns() + round(ramp * 1e9)
    stats.window_end = stats.window_start + round(config.duration * 1e9)
    opened = list(conns)
    tasks = [
        asyncio.create_task(window_worker(c, config, stats, gate, i * ramp / len(conns), opened))
        for i, c in enumerate(conns)
    ]
    await asyncio.sleep(ramp + config.duration)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for conn in opened:
        conn.abort()
    return {"connect_s": connect_s, "elapsed_s": config.duration}


async def run_once(config: LoadConfig, stats: Stats) -> dict[str, Any]:
    """
    The ``once`` mode: one stream per connection, all requested together.
    """
    conns, connect_s = await open_all(config, stats)
    start = time.monotonic()
    # A generous bound: the streams' own length, plus time for a loaded proxy.
    deadline = config.stream_seconds + max(10.0, config.duration)
    tasks = [asyncio.create_task(run_one(c, config, stats)) for c in conns]
    _, pending = await asyncio.wait(tasks, timeout=deadline)
    for task in pending:
        task.cancel()
    if pending:
        stats.errors["not finished by the deadline"] += len(pending)
    await asyncio.gather(*tasks, return_exceptions=True)
    elapsed = time.monotonic() - start
    for conn in conns:
        conn.abort()
    return {"connect_s": connect_s, "elapsed_s": elapsed}


def percentile(values: list[float], p: float) -> float | None:
    """
    The nearest-rank ``p``-th percentile of ``values``, or ``None`` when empty.
    """
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def _ms(values: list[float]) -> dict[str, float | int | None]:
    def to_ms(v: float | None) -> float | None:
        return None if v is None else round(v * 1000, 3)

    return {
        "n": len(values),
        "p50": to_ms(percentile(values, 50)),
        "p99": to_ms(percentile(values, 99)),
        "max": to_ms(max(values) if values else None),
    }


def summary(config: LoadConfig, stats: Stats, timing: dict[str, Any]) -> dict[str, Any]:
    """
    The JSON report of a run.
    """
    elapsed = timing["elapsed_s"]
    return {
        "mode": config.mode,
        "streams": config.streams,
        "events_per_stream": config.events,
        "interval_s": config.interval,
        "connect_s": round(timing["connect_s"], 3),
        "elapsed_s": round(elapsed, 3),
        "events": stats.events,
        "events_per_s": round(stats.events / elapsed, 1) if elapsed > 0 else 0.0,
        "events_total": stats.events_total,
        "ttfb_ms": _ms(stats.ttfb),
        "stream_ms": _ms(stats.stream_time),
        "stream_mean_ms": (
            round(sum(stats.stream_time) / len(stats.stream_time) * 1000, 3)
            if stats.stream_time
            else None
        ),
        "delivery_ms": _ms(stats.delivery),
        "completed": stats.completed,
        "short": stats.short,
        "failed": sum(stats.errors.values()),
        "errors": dict(stats.errors),
        "peak_open": stats.peak_open,
        # This process's own CPU use: proof that it was not the bottleneck.
        "cpu_share": round(timing["cpu_s"] / timing["wall_s"], 3) if timing["wall_s"] else 0.0,
    }


def parse_args(argv: list[str] | None) -> LoadConfig:
    """
    The run's configuration from the command line.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True, help="port on 127.0.0.1")
    parser.add_argument("--streams", type=int, default=128, help="concurrent streams")
    parser.add_argument("--events", type=int, default=100, help="events per stream")
    parser.add_argument("--interval", type=float, default=0.02, help="seconds between events")
    parser.add_argument(
        "--duration", type=float, default=10.0, help="window length (once: extra deadline)"
    )
    parser.add_argument("--mode", choices=("window", "once"), default="window")
    parser.add_argument(
        "--post", metavar="PATH", help="POST this path with a Vast envelope instead of GET /sse"
    )
    args = parser.parse_args(argv)
    return LoadConfig(
        args.port, args.streams, args.events, args.interval, args.duration, args.mode, args.post
    )


def main(argv: list[str] | None = None) -> int:
    """
    Run the load, print the JSON summary.
    """
    config = parse_args(argv)
    stats = Stats()
    runner = run_window if config.mode == "window" else run_once
    wall, cpu = time.monotonic(), time.process_time()
    timing = run_loop(runner(config, stats))
    timing["wall_s"] = time.monotonic() - wall
    timing["cpu_s"] = time.process_time() - cpu
    json.dump(summary(config, stats, timing), sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
