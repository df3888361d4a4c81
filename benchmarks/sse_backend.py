"""
A backend for the relay benchmarks: paced SSE streams and a fixed JSON answer.

``GET /sse?events=N&interval=S`` (or a ``POST /sse`` whose JSON body, bare or
inside a Vast envelope, gives ``events`` and ``interval``) answers ``200
text/event-stream`` (chunked) and sends N events of about 100 bytes, like an
LLM's token chunks: the first at once with the headers, then one every S
seconds. Events are scheduled on an absolute timetable (start + k * S), so
timer lateness does not accumulate, and each carries the time it was
written, so a client can measure how long it took to arrive.

``GET /v1/models`` and ``POST /v1/chat/completions`` give minimal
OpenAI-shaped answers (one model; a completion of 16 tokens), so a worker that
probes and benchmarks its model server at startup gets ready at once. Every
other request gets a small fixed JSON body: with ``--json-only`` (no ``/sse``)
this is the fallback fast backend when nginx is not installed.

Why asyncio protocols and not twisted.web: the backend shares the load CPU
with the load generator, and what it costs per event is taken from the
load's share of that core. On twisted.web it cost 16-17 us per event, so
at 300 streams the backend and the load together used the whole core and
set the figures (a proxy that changed when events arrived made the load
side fall behind). Here it speaks just enough HTTP/1.1 for the benchmark
(kept-alive requests in order, ``Content-Length`` bodies) and runs on
uvloop when it is installed, as vLLM's server does: about a quarter of that.

Run: ``python benchmarks/sse_backend.py --port 8001``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any
from urllib.parse import parse_qs

from aioloop import run_loop
from payloads import COMPLETION_JSON, FIXED_JSON, MODELS_JSON

EVENT_SIZE = 100
MAX_EVENTS = 100_000
#: A request head longer than this is refused (the benchmark's are short).
MAX_HEAD = 16384

_SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\n"
    b"Content-Type: text/event-stream\r\n"
    b"Cache-Control: no-cache\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
)
_LAST_CHUNK = b"0\r\n\r\n"


def sse_event(stream_id: int, index: int, sent_ns: int) -> bytes:
    """
    One SSE event of :data:`EVENT_SIZE` bytes, shaped like a token chunk.

    ``t`` is when it was written, in ``time.monotonic_ns()``: the clock is
    the same for every process on the machine, so the client can tell how
    long each event took to reach it.
    """
    head = b'data: {"id":"cmpl-%d","index":%d,"t":%d,"delta":{"content":" tok' % (
        stream_id,
        index,
        sent_ns,
    )
    tail = b'"}}\n\n'
    return head + b"x" * max(0, EVENT_SIZE - len(head) - len(tail)) + tail


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _answer(status: bytes, body: bytes, content_type: bytes = b"application/json") -> bytes:
    return b"HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n%s" % (
        status,
        content_type,
        len(body),
        body,
    )


class _Head:
    """The parts of a request head the backend reads."""

    def __init__(self, raw: bytes) -> None:
        lines = raw.split(b"\r\n")
        parts = lines[0].split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            raise ValueError("bad request line")
        self.method, target, version = parts
        self.path, _, self.query = target.partition(b"?")
        self.length = 0
        self.close = version == b"HTTP/1.0"
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                self.length = int(value)
                if self.length < 0:
                    raise ValueError("negative content-length")
            elif name == b"transfer-encoding":
                raise ValueError("chunked request bodies are not served here")
            elif name == b"connection":
                self.close = value.strip().lower() == b"close"


class BenchServer:
    """
    What every connection shares: the stream numbering and the routes served.

    :param sse: serve ``/sse`` (off for the plain JSON fallback).
    """

    def __init__(self, sse: bool = True) -> None:
        self.sse = sse
        self.next_id = 0


class BenchConnection(asyncio.Protocol):
    """
    One client connection: requests answered in order, one at a time.
    """

    def __init__(self, server: BenchServer) -> None:
        self._server = server
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._busy = False  # a stream is being written
        self._close_after = False
        self._timer: asyncio.TimerHandle | None = None
        # The stream in progress.
        self._id = 0
        self._events = 0
        self._interval = 0.0
        self._sent = 0
        self._start = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._buf += data
        self._serve()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._transport = None

    # Requests, in order

    def _serve(self) -> None:
        while not self._busy and self._transport is not None:
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buf) > MAX_HEAD:
                    self._refuse(b"431 Request Header Fields Too Large", b"head too long\n")
                return
            try:
                head = _Head(bytes(self._buf[:end]))
            except ValueError as e:
                self._refuse(b"400 Bad Request", str(e).encode() + b"\n")
                return
            if len(self._buf) < end + 4 + head.length:
                return
            body = bytes(self._buf[end + 4 : end + 4 + head.length])
            del self._buf[: end + 4 + head.length]
            self._close_after = head.close
            self._respond(head, body)

    def _respond(self, head: _Head, body: bytes) -> None:
        if self._server.sse and head.path == b"/sse":
            self._start_stream(head, body)
            return
        if head.method == b"GET":
            answer = MODELS_JSON if head.path == b"/v1/models" else FIXED_JSON
        else:
            answer = COMPLETION_JSON if head.path.startswith(b"/v1/") else FIXED_JSON
        self._write_and_end(_answer(b"200 OK", answer))

    def _refuse(self, status: bytes, reason: bytes) -> None:
        self._close_after = True
        self._write_and_end(_answer(status, reason, b"text/plain"))

    def _write_and_end(self, data: bytes) -> None:
        assert self._transport is not None
        self._transport.write(data)
        if self._close_after:
            self._transport.close()
            self._transport = None

    # SSE

    def _start_stream(self, head: _Head, body: bytes) -> None:
        params = _params(head, body)
        try:
            events = int(params.get("events", 100))
            interval = float(params.get("interval", 0.02))
        except (TypeError, ValueError):
            self._refuse(b"400 Bad Request", b"bad events or interval\n")
            return
        if not (1 <= events <= MAX_EVENTS and 0 <= interval <= 60):
            self._refuse(b"400 Bad Request", b"events or interval out of range\n")
            return
        self._server.next_id += 1
        self._id = self._server.next_id
        self._events = events
        self._interval = interval
        self._sent = 0
        self._start = self._loop.time()
        self._busy = True
        self._send_next(_SSE_HEAD)

    def _send_next(self, prefix: bytes = b"") -> None:
        self._timer = None
        transport = self._transport
        if transport is None:
            return
        data = prefix + _chunk(sse_event(self._id, self._sent, time.monotonic_ns()))
        self._sent += 1
        if self._sent < self._events:
            transport.write(data)
            due = self._start + self._sent * self._interval
            self._timer = self._loop.call_at(due, self._send_next)
            return
        self._busy = False
        self._write_and_end(data + _LAST_CHUNK)
        if self._buf:
            self._serve()


def _params(head: _Head, body: bytes) -> dict[str, Any]:
    """
    The stream's parameters: from a POST's JSON body, either bare (as a worker
    relays the payload) or inside a Vast envelope (as a direct request
    carries it); else from the query string.
    """
    if body:
        try:
            parsed = json.loads(body)
        except ValueError:
            return {}
        if isinstance(parsed, dict) and isinstance(parsed.get("payload"), dict):
            parsed = parsed["payload"]
        return parsed if isinstance(parsed, dict) else {}
    query = parse_qs(head.query.decode("latin-1"))
    return {name: values[0] for name, values in query.items()}


async def serve(port: int, sse: bool) -> None:
    """Serve on 127.0.0.1 until cancelled."""
    shared = BenchServer(sse)
    loop = asyncio.get_running_loop()
    # A backlog large enough for 1,000 streams connecting at once. asyncio and
    # uvloop set TCP_NODELAY, so each event leaves at once.
    server = await loop.create_server(
        lambda: BenchConnection(shared), "127.0.0.1", port, backlog=2048
    )
    print(f"sse_backend listening on 127.0.0.1:{port}", flush=True)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    """
    Serve on 127.0.0.1 until killed.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--json-only", action="store_true", help="serve only the fixed JSON")
    args = parser.parse_args(argv)
    try:
        run_loop(serve(args.port, not args.json_only))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
