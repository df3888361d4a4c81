# -*- test-case-name: tests.test_worker_relay -*-
"""
An HTTP backend that shows what it received and misbehaves on request.

Useful to see what a proxy forwards (``/echo``: method, target, headers and
body as JSON) and to reproduce what real model servers do to a proxy: stream
slowly, stall, die mid-response, send huge bodies, gzip, redirect and set
cookies. Every behaviour is a path, so a test or a person with ``curl`` can
reach it through the proxy:

=========================  ===================================================
``/echo...``               any method: JSON of what arrived
``/health``                ``health_status`` (200 unless a test says otherwise)
``/status/<code>``         that status with a small JSON body
``/gzip``                  a gzip-encoded body (``Content-Encoding: gzip``)
``/redirect``              ``302`` to ``/echo``
``/cookie``                two ``Set-Cookie`` headers
``/stream?n=&interval=``   ``n`` SSE events, one per ``interval`` seconds
``/ndjson?n=&interval=``   the same as NDJSON lines
``/fixed?size=``           a body of ``size`` bytes with ``Content-Length``
``/big?size=``             ``size`` bytes, as fast as the client reads
``/hang``                  never answers
``/headers-only``          headers, then silence
``/stall``                 headers and one chunk, then silence
``/die``                   headers and one chunk, then the connection drops
``/die-before``            the connection drops before any response
=========================  ===================================================
"""

from __future__ import annotations

import gzip
import json
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer, IReactorTime, ITCPTransport
from twisted.python.failure import Failure
from twisted.web.server import NOT_DONE_YET, Request, Site
from zope.interface import implementer

from vespa._typing import Resource


class EchoBackend(Resource):
    """
    The echo backend's root resource.

    :param clock: paces streams; the global reactor if ``None``.
    :ivar received: every request seen, as ``(method, uri)``, in order.
    :ivar disconnects: targets whose client went away before the response ended.
    :ivar big_bytes_produced: bytes ``/big`` has handed to the transport so far.
    :ivar health_status: what ``/health`` answers.
    """

    isLeaf = True

    def __init__(self, clock: IReactorTime | None = None) -> None:
        super().__init__()
        if clock is None:
            from twisted.internet import reactor

            clock = reactor
        self.clock: IReactorTime = clock
        self.received: list[tuple[bytes, bytes]] = []
        self.disconnects: list[bytes] = []
        self.big_bytes_produced = 0
        self.health_status = 200
        self._waiting: list[tuple[str, bytes, Deferred[None]]] = []

    def wait_for_request(self, prefix: bytes) -> Deferred[None]:
        """
        Fires when a request whose target starts with ``prefix`` has arrived
        and its handler has run (a stream's timers are set).
        """
        return self._wait("request", prefix, self.received)

    def wait_for_disconnect(self, prefix: bytes) -> Deferred[None]:
        """
        Fires when the client of a request whose target starts with ``prefix``
        goes away before its response ended.
        """
        return self._wait("disconnect", prefix, [(b"", uri) for uri in self.disconnects])

    def _wait(self, kind: str, prefix: bytes, seen: list[tuple[bytes, bytes]]) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        if any(uri.startswith(prefix) for _, uri in seen):
            d.callback(None)
        else:
            self._waiting.append((kind, prefix, d))
        return d

    def _notify(self, kind: str, uri: bytes) -> None:
        for waiter in list(self._waiting):
            if waiter[0] == kind and uri.startswith(waiter[1]):
                self._waiting.remove(waiter)
                waiter[2].callback(None)

    def render(self, request: Request) -> bytes | int:
        self.received.append((request.method, request.uri))
        name = request.path.split(b"/")[1].decode("ascii", "replace")
        handler = getattr(self, "_" + name.replace("-", "_"), None)
        if name.startswith("echo") or handler is None:
            answer = self._echo(request)
            self._notify("request", request.uri)
            return answer
        result: bytes | int = handler(request)
        # After the handler's own clean-up, so a waiter sees the backend stopped.
        request.notifyFinish().addErrback(self._lost, request.uri)
        # Once the handler has run: a waiter that then advances the clock
        # finds the handler's timers (a stream's next event) in place.
        self._notify("request", request.uri)
        return result

    def _lost(self, reason: Failure, uri: bytes) -> None:
        self.disconnects.append(uri)
        self._notify("disconnect", uri)

    def _echo(self, request: Request) -> bytes:
        assert request.content is not None
        body = request.content.read()
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(
            {
                "method": request.method.decode("ascii"),
                "uri": request.uri.decode("latin-1"),
                "headers": [
                    [name.decode("latin-1"), value.decode("latin-1")]
                    for name, values in request.requestHeaders.getAllRawHeaders()
                    for value in values
                ],
                "body": body.decode("latin-1"),
            }
        ).encode("utf-8")

    def _status(self, request: Request) -> bytes:
        code = int(request.path.split(b"/")[2])
        request.setResponseCode(code)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"x-backend", b"echo")
        return json.dumps({"status": code, "from": "backend"}).encode("utf-8")

    def _health(self, request: Request) -> bytes:
        request.setResponseCode(self.health_status)
        request.setHeader(b"content-type", b"application/json")
        return json.dumps({"healthy": self.health_status == 200}).encode("utf-8")

    def _gzip(self, request: Request) -> bytes:
        request.setHeader(b"content-encoding", b"gzip")
        request.setHeader(b"content-type", b"text/plain")
        return gzip.compress(b"hello, compressed world\n" * 20, mtime=0)

    def _redirect(self, request: Request) -> bytes:
        request.setResponseCode(302)
        request.setHeader(b"location", b"/echo")
        return b""

    def _cookie(self, request: Request) -> bytes:
        request.responseHeaders.setRawHeaders(
            b"set-cookie", [b"sid=SECRET; HttpOnly", b"theme=dark"]
        )
        return b"cookies set"

    def _stream(self, request: Request) -> int:
        return self._paced(request, b"text/event-stream", b'data: {"n": %d}\n\n')

    def _ndjson(self, request: Request) -> int:
        return self._paced(request, b"application/x-ndjson", b'{"n": %d}\n')

    def _paced(self, request: Request, content_type: bytes, template: bytes) -> int:
        count = _int_arg(request, b"n", 5)
        interval = float(_arg(request, b"interval", b"0.1"))
        request.setHeader(b"content-type", content_type)
        request.setHeader(b"cache-control", b"no-cache")
        state: dict[str, Any] = {"sent": 0, "call": None}

        def send() -> None:
            if request._disconnected:
                return
            request.write(template % (state["sent"],))
            state["sent"] += 1
            if state["sent"] < count:
                state["call"] = self.clock.callLater(interval, send)
            else:
                request.finish()

        def stop(_: Failure) -> None:
            if state["call"] is not None and state["call"].active():
                state["call"].cancel()

        request.notifyFinish().addErrback(stop)
        send()
        return NOT_DONE_YET

    def _fixed(self, request: Request) -> bytes:
        size = _int_arg(request, b"size", 1024)
        request.setHeader(b"content-type", b"application/octet-stream")
        return bytes(i % 251 for i in range(size))

    def _big(self, request: Request) -> int:
        producer = _BigBody(self, request, _int_arg(request, b"size", 1 << 20))
        request.setHeader(b"content-type", b"application/octet-stream")
        request.registerProducer(producer, True)
        producer.resumeProducing()
        return NOT_DONE_YET

    def _hang(self, request: Request) -> int:
        return NOT_DONE_YET

    def _headers_only(self, request: Request) -> int:
        request.setHeader(b"content-type", b"application/json")
        request.write(b"")  # sends the status line and headers, no body yet
        return NOT_DONE_YET

    def _stall(self, request: Request) -> int:
        request.setHeader(b"content-type", b"text/event-stream")
        request.write(b"data: first\n\n")
        return NOT_DONE_YET

    def _die(self, request: Request) -> int:
        request.setHeader(b"content-type", b"text/event-stream")
        request.write(b"data: first\n\n")
        self.clock.callLater(0.01, _abort, request)
        return NOT_DONE_YET

    def _die_before(self, request: Request) -> int:
        _abort(request)
        return NOT_DONE_YET


@implementer(IPushProducer)
class _BigBody:
    """Writes a large body in 64 KiB chunks for as long as the transport accepts."""

    _CHUNK = b"x" * 65536

    def __init__(self, backend: EchoBackend, request: Request, size: int) -> None:
        self._backend = backend
        self._request = request
        self._left = size
        self._paused = False

    def resumeProducing(self) -> None:
        self._paused = False
        while not self._paused and self._left > 0 and not self._request._disconnected:
            chunk = self._CHUNK[: min(self._left, len(self._CHUNK))]
            self._left -= len(chunk)
            self._backend.big_bytes_produced += len(chunk)
            self._request.write(chunk)
        if self._left == 0 and not self._request._disconnected:
            self._left = -1
            self._request.unregisterProducer()
            self._request.finish()

    def pauseProducing(self) -> None:
        self._paused = True

    def stopProducing(self) -> None:
        self._paused = True
        self._left = -1


def _abort(request: Request) -> None:
    transport = getattr(request.channel, "transport", None)
    if ITCPTransport.providedBy(transport):
        transport.abortConnection()


def _arg(request: Request, name: bytes, default: bytes) -> bytes:
    values = (request.args or {}).get(name)
    return values[0] if values else default


def _int_arg(request: Request, name: bytes, default: int) -> int:
    return int(_arg(request, name, b"%d" % (default,)))


def echo_site(clock: IReactorTime | None = None) -> Site:
    """
    A :class:`Site` serving an :class:`EchoBackend`, without an access log.

    :param clock: paces streams; the global reactor if ``None``.
    """
    site = Site(EchoBackend(clock))
    site.log = lambda request: None  # type: ignore[method-assign]
    return site
