"""
A Twisted backend for the relay benchmark: paced SSE streams and a fixed JSON answer.

``GET /sse?events=N&interval=S`` answers ``200 text/event-stream`` (chunked)
and sends N events of about 100 bytes, like an LLM's token chunks: the first at
once with the headers, then one every S seconds. Events are scheduled on an
absolute timetable (start + k * S), so timer lateness does not accumulate, and
each carries the time it was written, so a client can measure how long it
took to arrive.

``GET /v1/models`` and ``POST /v1/chat/completions`` give minimal
OpenAI-shaped answers (one model; a completion of 16 tokens), so a worker that
probes and benchmarks its model server at startup gets ready at once. Every
other request gets a small fixed JSON body: with ``--json-only`` (no ``/sse``)
this is the fallback fast backend when nginx is not installed.

Run: ``python benchmarks/sse_backend.py --port 8001``
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from payloads import COMPLETION_JSON, FIXED_JSON, MODELS_JSON
from twisted.internet import reactor as global_reactor
from twisted.internet.interfaces import IDelayedCall
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

EVENT_SIZE = 100
MAX_EVENTS = 100_000


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


class _Stream:
    """
    One SSE response in progress: writes its events on schedule, then finishes.
    """

    def __init__(
        self, request: Request, stream_id: int, events: int, interval: float, clock: Any
    ) -> None:
        self._request = request
        self._id = stream_id
        self._events = events
        self._interval = interval
        self._clock = clock
        self._sent = 0
        self._start = time.monotonic()
        self._call: IDelayedCall | None = None
        self._gone = False

    def start(self) -> None:
        self._request.notifyFinish().addErrback(self._client_gone)
        self._send_next()

    def _send_next(self) -> None:
        self._call = None
        if self._gone:
            return
        self._request.write(sse_event(self._id, self._sent, time.monotonic_ns()))
        self._sent += 1
        if self._sent >= self._events:
            self._request.finish()
            return
        due = self._start + self._sent * self._interval
        self._call = self._clock.callLater(max(0.0, due - time.monotonic()), self._send_next)

    def _client_gone(self, reason: Failure) -> None:
        self._gone = True
        if self._call is not None and self._call.active():
            self._call.cancel()


class BenchResource(Resource):
    """
    ``/sse`` streams; every other path gets :data:`FIXED_JSON`.

    :param clock: schedules the events.
    :param sse: serve ``/sse`` (off for the plain JSON fallback).
    """

    isLeaf = True

    def __init__(self, clock: Any, sse: bool = True) -> None:
        super().__init__()
        self._clock = clock
        self._sse = sse
        self._next_id = 0

    def render_GET(self, request: Request) -> bytes | int:
        if self._sse and request.path == b"/sse":
            return self._render_sse(request)
        request.setHeader(b"content-type", b"application/json")
        return MODELS_JSON if request.path == b"/v1/models" else FIXED_JSON

    def render_POST(self, request: Request) -> bytes | int:
        if self._sse and request.path == b"/sse":
            return self._render_sse(request, _body_params(request))
        request.setHeader(b"content-type", b"application/json")
        return COMPLETION_JSON if request.path.startswith(b"/v1/") else FIXED_JSON

    def _render_sse(self, request: Request, body: dict[str, Any] | None = None) -> bytes | int:
        params = body or {}
        try:
            events = int(params.get("events", _arg(request, b"events", b"100")))
            interval = float(params.get("interval", _arg(request, b"interval", b"0.02")))
        except ValueError:
            request.setResponseCode(400)
            return b"bad events or interval\n"
        if not (1 <= events <= MAX_EVENTS and 0 <= interval <= 60):
            request.setResponseCode(400)
            return b"events or interval out of range\n"
        request.setHeader(b"content-type", b"text/event-stream")
        request.setHeader(b"cache-control", b"no-cache")
        self._next_id += 1
        _Stream(request, self._next_id, events, interval, self._clock).start()
        return NOT_DONE_YET


def _body_params(request: Request) -> dict[str, Any]:
    """
    The stream's parameters from a POST's JSON body: either bare, as a worker
    relays the payload, or inside a Vast envelope, as a direct request carries it.
    """
    try:
        assert request.content is not None
        body = json.loads(request.content.read() or b"{}")
    except ValueError:
        return {}
    if isinstance(body, dict) and isinstance(body.get("payload"), dict):
        body = body["payload"]
    return body if isinstance(body, dict) else {}


def _arg(request: Request, name: bytes, default: bytes) -> bytes:
    values = (request.args or {}).get(name)
    return values[0] if values else default


class _QuietSite(Site):
    """
    No access log: a log line per request would make the backend the bottleneck.

    (``HTTPChannel`` sets ``TCP_NODELAY`` itself, so each event leaves at once.)
    """

    noisy = False

    def log(self, request: http.Request) -> None:
        pass


def main(argv: list[str] | None = None) -> int:
    """
    Serve on 127.0.0.1 until killed.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--json-only", action="store_true", help="serve only the fixed JSON")
    args = parser.parse_args(argv)
    reactor: Any = global_reactor
    site = _QuietSite(BenchResource(reactor, sse=not args.json_only))
    # A backlog large enough for 1,000 streams connecting at once.
    reactor.listenTCP(args.port, site, backlog=2048, interface="127.0.0.1")
    print(f"sse_backend listening on 127.0.0.1:{args.port}", flush=True)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
