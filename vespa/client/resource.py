# -*- test-case-name: tests.test_client_e2e -*-
"""
The local proxy: any HTTP request to it becomes a routed, signed request to a
worker of the endpoint, and the worker's answer streams back.

``GET /health`` is answered locally: the endpoint, the autoscaler and the
counters. Everything else, in order:

1. the target, the method (``CONNECT``/``TRACE``: 405) and the body size (413);
2. the preferences header (400 naming bad fields), the body (415 if a body
   method's body is not JSON) and the cost header (400);
3. a place among the requests in flight, waiting in line if needed (429
   when the line is full too);
4. the dispatch (route, send, retry, hedge) or, for a list input above
   ``batch_size``, the batch;
5. the answer, streamed chunk by chunk with backpressure; a caller that
   leaves cancels whatever is under way, routing, backoff or the worker's
   request.

Every response carries ``X-Vespa-Worker`` (the worker that answered, or the
last one tried, or ``none``), ``X-Vespa-Attempts`` (worker requests made) and
``X-Vespa-Route-Ms`` (time spent routing). Errors the client produces are
JSON ``{"error", "origin"}``, ``origin`` being ``vespa``, ``autoscaler`` or
``worker``.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IDelayedCall, IPushProducer
from twisted.python.failure import Failure
from twisted.web.http import NO_BODY_CODES
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface import implementer

from vespa._typing import Resource
from vespa.client.core import ClientCore, Reply
from vespa.client.errors import DeadlineExceeded
from vespa.client.policy import DispatchFailed, Preferences, Slot, parse_preferences
from vespa.client.wrapping import PREFERENCES_HEADER
from vespa.errors import VespaError, write_error
from vespa.http.headers import copy_response_headers
from vespa.http.stream import cancel_call, end_response
from vespa.http.target import check_relayable, origin_form
from vespa.interfaces import IHealthDocument
from vespa.log import get_logger

log = get_logger(__name__)


def vespa_headers(request: Request, worker: str | None, attempts: int, route_ms: float) -> None:
    """Set the ``X-Vespa-*`` headers that every response carries."""
    headers = request.responseHeaders
    headers.setRawHeaders(b"X-Vespa-Worker", [(worker or "none").encode("utf-8")])
    headers.setRawHeaders(b"X-Vespa-Attempts", [b"%d" % (attempts,)])
    headers.setRawHeaders(b"X-Vespa-Route-Ms", [b"%d" % (round(route_ms),)])


class ClientResource(Resource):
    """
    The root resource of the local proxy.

    :param core: turns requests into replies.
    :param health: the source of the ``/health`` document.
    """

    isLeaf = True

    def __init__(self, core: ClientCore, health: IHealthDocument) -> None:
        super().__init__()
        self.core = core
        self.health = health

    def render(self, request: Request) -> bytes | int:
        """Answer ``/health``, refuse what cannot be sent, or proxy."""
        try:
            target = origin_form(request.uri)
            if request.path == b"/health" and request.method in (b"GET", b"HEAD"):
                request.setHeader(b"content-type", b"application/json")
                return json.dumps(self.health.health()).encode("utf-8")
            check_relayable(request, "proxied")
            raw = request.requestHeaders.getRawHeaders(PREFERENCES_HEADER)
            prefs = parse_preferences(raw[0] if raw else None, self.core.defaults)
            body = b""
            if request.content is not None:
                request.content.seek(0)
                body = request.content.read()
            host = getattr(request.getClientAddress(), "host", None)
            call = self.core.call(
                request.method,
                target,
                request.requestHeaders,
                body,
                client_ip=host.encode("ascii") if isinstance(host, str) else None,
                proto=b"https" if request.isSecure() else b"http",
            )
            slot = self.core.limiter.acquire()
        except VespaError as error:
            return _refuse(request, error)
        _Proxied(self.core, request, call, prefs).start(slot)
        return NOT_DONE_YET


def _refuse(request: Request, error: VespaError) -> bytes:
    body = write_error(request, error)
    vespa_headers(request, None, 0, 0.0)
    return body


@implementer(IPushProducer)
class _Proxied:
    """One proxied request: waits for a place, gets its reply, streams it."""

    def __init__(self, core: ClientCore, request: Request, call: Any, prefs: Preferences) -> None:
        self._core = core
        self._request = request
        self._call = call
        self._prefs = prefs
        self._deadline = core.deadline(prefs)
        self._pending: Deferred[Any] | None = None
        self._slot: Slot | None = None
        self._reply: Reply | None = None
        self._gone = False
        self._over = False
        self._deadline_call: IDelayedCall | None = None

    def start(self, waiting: Deferred[Slot]) -> None:
        self._request.notifyFinish().addErrback(self._caller_gone)
        self._pending = waiting
        waiting.addCallbacks(self._admitted, self._failed).addErrback(self._crashed)

    def _admitted(self, slot: Slot) -> None:
        self._pending = None
        self._slot = slot
        if self._gone:
            self._end()
            return
        d = self._core.send(self._call, self._prefs, self._deadline)
        self._pending = d
        d.addCallbacks(self._replied, self._failed).addErrback(self._crashed)

    def _caller_gone(self, reason: Failure) -> None:
        self._gone = True
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.cancel()
        if self._reply is not None:
            self._reply.discard()
        self._end()

    def _failed(self, reason: Failure) -> None:
        self._pending = None
        if reason.check(CancelledError) or self._gone:
            self._end()
            return
        if isinstance(reason.value, DispatchFailed):
            failed = reason.value
            self._error(failed.error, failed.worker, failed.attempts, failed.route_ms)
        elif isinstance(reason.value, VespaError):
            self._error(reason.value, None, 0, 0.0)
        else:
            log.failure("proxying failed unexpectedly", reason)
            self._error(VespaError("internal error in vespa-client"), None, 0, 0.0)
        self._end()

    def _crashed(self, reason: Failure) -> None:
        """
        A bug in a callback above: the caller still gets an answer (or, once
        the answer has begun, an abnormal end) and the place is freed.
        """
        log.failure("proxying failed unexpectedly", reason)
        if self._reply is not None:
            self._reply.discard()
        request = self._request
        if not self._gone and not request.finished:
            if request.startedWriting:
                request.loseConnection()
            else:
                self._error(VespaError("internal error in vespa-client"), None, 0, 0.0)
        self._end()

    def _error(self, error: VespaError, worker: str | None, attempts: int, route_ms: float) -> None:
        request = self._request
        body = write_error(request, error)
        vespa_headers(request, worker, attempts, route_ms)
        request.write(body)
        request.finish()

    def _replied(self, reply: Reply) -> None:
        self._pending = None
        if self._gone:
            reply.discard()
            self._end()
            return
        self._reply = reply
        request = self._request
        request.setResponseCode(reply.code, reply.phrase)
        copy_response_headers(reply.headers, request.responseHeaders)
        vespa_headers(request, ",".join(reply.workers), reply.attempts, reply.route_ms)
        answer = reply.answer
        length = (
            len(reply.body)
            if answer is None and reply.body is not None
            else (answer.length if answer is not None else None)
        )
        if length is not None and request.method != b"HEAD" and reply.code not in NO_BODY_CODES:
            request.responseHeaders.setRawHeaders(b"content-length", [b"%d" % (length,)])
        if answer is None:
            request.write(reply.body or b"")
            request.finish()
            self._end()
            return
        if self._deadline is not None:
            delay = max(0.0, self._deadline - self._core.clock.seconds())
            self._deadline_call = self._core.clock.callLater(delay, self._expired)
        request.registerProducer(self, True)
        answer.attach(self)

    # BodySink: the worker's body

    def chunk(self, data: bytes) -> None:
        if not self._gone:
            self._request.write(data)

    def end(self, error: VespaError | None) -> None:
        if self._over or self._gone:
            self._end()
            return
        if error is not None:
            log.warn("the answer was cut short: {error}", error=error.message)
        end_response(self._request, error)
        self._end()

    def _expired(self) -> None:
        self._deadline_call = None
        reply = self._reply
        if reply is not None and not self._over:
            self.end(DeadlineExceeded("the request's timeout passed mid-answer"))
            reply.discard()

    # IPushProducer: the caller's connection

    def pauseProducing(self) -> None:
        if self._reply is not None and self._reply.answer is not None:
            self._reply.answer.pause()

    def resumeProducing(self) -> None:
        if self._reply is not None and self._reply.answer is not None:
            self._reply.answer.resume()

    def stopProducing(self) -> None:
        if self._reply is not None:
            self._reply.discard()

    def _end(self) -> None:
        if self._over:
            return
        self._over = True
        cancel_call(self._deadline_call)
        self._deadline_call = None
        slot, self._slot = self._slot, None
        if slot is not None:
            slot.release()
        # Break the request <-> producer cycle now rather than in the cycle collector.
        self._reply = None
