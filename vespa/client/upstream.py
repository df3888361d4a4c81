# -*- test-case-name: tests.test_client_upstream,tests.test_client_e2e -*-
"""
One attempt at one worker: send the wrapped request, wait for the first byte.

The client may retry or hedge a request only while nothing of the answer has
reached its caller, so an attempt does not hand back a response when its
headers arrive but when its *first body byte* does (or its body ends empty):
a worker that sends headers and dies before any body is still a failed
attempt, safe to retry. What an attempt hands back is an :class:`Answer`,
paused: its body waits, not read any further, until the winner is chosen and
:meth:`Answer.attach` starts streaming it (or :meth:`Answer.discard` drops it).

Answers that may be retried (429, 503, and 5xx) are peeked instead: their
body is read whole (up to :data:`PEEK_LIMIT`) so that the caller of
:meth:`Sender.send` can tell a worker's own error from a model server's and,
when it gives up retrying, relay the last answer intact.

Requests go through one pooled, kept-alive :class:`Agent`; worker URLs change
with every route, so endpoints are built per origin and cached (building one
costs an IDNA encoding) and carry ``TCP_NODELAY``. ``https`` workers are
verified with the given :class:`IPolicyForHTTPS` (see :mod:`vespa.client.tls`).

A failed attempt says whether the request may have reached the worker
(:attr:`~vespa.client.errors.WorkerUnavailable.maybe_delivered`), so that the
dispatcher retries a request that is not idempotent only when it provably did
not: the connection was refused, timed out or never made, the TLS handshake
failed, or the pooled connection was unusable before a byte was written
(:func:`never_sent`). Twisted's own automatic retry of pooled requests is
off, so that this is the one place deciding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from OpenSSL import SSL
from twisted.internet import error as ierror
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure
from twisted.web._newclient import RequestNotSent
from twisted.web.client import (
    Agent,
    RequestGenerationFailed,
    RequestTransmissionFailed,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IPolicyForHTTPS, IResponse

from vespa.client.errors import WorkerTimeout, WorkerUnavailable
from vespa.errors import VespaError
from vespa.http.endpoints import WorkerEndpoints, quiet_pool
from vespa.http.outbound import body_producer, connection_error
from vespa.http.stream import BodyReader, Discard, ended_cleanly
from vespa.log import get_logger

log = get_logger(__name__)

#: Statuses whose body is read whole before the attempt is judged: the ones
#: a retry may follow.
PEEKED = frozenset({429, 503})
#: The most of a peeked body held in memory; a longer one is not an error
#: body, so it is streamed like any other answer.
PEEK_LIMIT = 64 * 1024
#: Seconds an idle worker connection is kept; twisted.web and aiohttp workers
#: keep theirs far longer, so a reused connection is rarely one being closed.
WORKER_KEEPALIVE = 20.0


@dataclass(frozen=True)
class WorkerRequest:
    """
    A request ready for a worker.

    :ivar method: the HTTP method.
    :ivar url: the absolute URL (worker origin, path, query with routing data).
    :ivar headers: the headers to send, ``Host`` included.
    :ivar body: the body, or ``None`` for none.
    """

    method: bytes
    url: bytes
    headers: Headers
    body: bytes | None


class BodySink(Protocol):
    """Where a committed answer's body goes."""

    def chunk(self, data: bytes) -> None:
        """A piece of the body."""

    def end(self, error: VespaError | None) -> None:
        """
        The body is over: complete (``None``) or cut short by ``error``.
        """


class Answer:
    """
    A worker's response whose first body byte (or whole body, if peeked)
    has arrived, and nothing of it has been passed on yet.

    :ivar code: the status code.
    :ivar phrase: the reason phrase.
    :ivar headers: the response headers, as the worker sent them.
    :ivar worker: the worker's base URL.
    :ivar first: the body received so far.
    :ivar complete: whether ``first`` is the whole body.
    :ivar length: the body's length, when known (Agent keeps
        ``Content-Length`` out of ``headers``).
    """

    def __init__(
        self,
        response: IResponse,
        worker: str,
        body: _AttemptBody,
        first: bytes,
        complete: bool,
    ) -> None:
        self.code: int = response.code
        self.phrase: bytes = response.phrase
        self.headers: Headers = response.headers
        self.length: int | None = (
            len(first)
            if complete
            else None
            if response.length is UNKNOWN_LENGTH
            else response.length
        )
        self.worker = worker
        self.first = first
        self.complete = complete
        self._body = body

    def attach(self, sink: BodySink) -> None:
        """
        Stream the body to ``sink``: ``first``, then the rest as it arrives.
        """
        self._body.attach(sink, self.first, self.complete)

    def pause(self) -> None:
        """Stop reading the worker's body (the caller is slow)."""
        self._body.pauseProducing()

    def resume(self) -> None:
        """Read the worker's body again."""
        self._body.resumeProducing()

    def discard(self) -> None:
        """
        Drop this answer: abort the worker's response (the worker sees the
        connection close and stops its work).
        """
        self._body.stop()


class Sender:
    """
    Sends requests to workers over a pool of kept-alive connections.

    :param reactor: provides TCP.
    :param clock: runs the deadlines.
    :param tls: verifies ``https`` workers.
    :param max_connections: idle connections kept (Twisted's default of 2
        halves throughput under concurrency).
    :param connect_timeout: seconds to connect, or ``None`` for an hour.
    :param first_byte_timeout: seconds from sending to the first body byte,
        or ``None`` for no limit.
    :param idle_timeout: seconds a worker may stay silent mid-body, or ``None``.
    """

    def __init__(
        self,
        reactor: Any,
        *,
        clock: IReactorTime,
        tls: IPolicyForHTTPS,
        max_connections: int = 100,
        connect_timeout: float | None = 10.0,
        first_byte_timeout: float | None = 600.0,
        idle_timeout: float | None = 300.0,
    ) -> None:
        self.clock = clock
        self.first_byte_timeout = first_byte_timeout
        self.idle_timeout = idle_timeout
        self.pool = quiet_pool(reactor, keepalive=WORKER_KEEPALIVE, max_connections=max_connections)
        # Twisted would resend a bodyless DELETE on a reused connection that
        # failed; whether to send a request twice is the dispatcher's call.
        self.pool.retryAutomatically = False
        self.agent = Agent.usingEndpointFactory(
            reactor, WorkerEndpoints(reactor, tls, connect_timeout), pool=self.pool
        )

    def send(self, request: WorkerRequest, worker: str, *, peek: bool) -> Deferred[Answer]:
        """
        Send ``request`` and wait for its first byte.

        :param request: what to send.
        :param worker: the worker's base URL, for errors and the answer.
        :param peek: read a possibly retryable answer (:data:`PEEKED`, 5xx) whole.
        :return: fires with the :class:`Answer`, or fails with a
            :class:`WorkerUnavailable` (or :class:`WorkerTimeout`); cancelling
            it aborts the request.
        """
        return _Attempt(self, request, worker, peek).start()

    def close(self) -> Deferred[None]:
        """Close the idle worker connections (at shutdown)."""
        closed: Deferred[None] = self.pool.closeCachedConnections()
        return closed


class _Attempt:
    """One request to one worker, until its first byte (or its failure)."""

    def __init__(self, sender: Sender, request: WorkerRequest, worker: str, peek: bool) -> None:
        self._sender = sender
        self._request = request
        self._worker = worker
        self._peek = peek
        self._done: Deferred[Answer] = Deferred(self._cancel)
        self._pending: Deferred[IResponse] | None = None
        self._body: _AttemptBody | None = None
        self._timer: IDelayedCall | None = None
        self._timed_out = False

    def start(self) -> Deferred[Answer]:
        request = self._request
        producer = body_producer(request.body) if request.body is not None else None
        try:
            pending = self._sender.agent.request(
                request.method, request.url, request.headers, producer
            )
        except Exception as e:  # a request Agent cannot even start: nothing was sent
            self._fail(
                WorkerUnavailable(
                    f"the request to the worker could not be sent: {e}", maybe_delivered=False
                )
            )
            return self._done
        timeout = self._sender.first_byte_timeout
        if timeout is not None:
            self._timer = self._sender.clock.callLater(timeout, self._expire)
        self._pending = pending
        pending.addCallbacks(self._response, self._failed)
        return self._done

    def _cancel(self, _: Deferred[Answer]) -> None:
        # The Deferred errbacks with CancelledError by itself once this returns.
        self._stop_timer()
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.cancel()
        elif self._body is not None:
            self._body.stop()

    def _expire(self) -> None:
        self._timer = None
        self._timed_out = True
        if self._pending is not None:
            # Still connecting, or sent and waiting for the headers: the
            # cancellation's failure (now, or once the connection is torn
            # down) tells which, and _failed gives the timeout.
            pending, self._pending = self._pending, None
            pending.cancel()
            return
        # The headers are in: the worker has the request.
        self._fail(self._timeout_error(maybe_delivered=True))
        if self._body is not None:
            self._body.stop()

    def _timeout_error(self, *, maybe_delivered: bool) -> WorkerTimeout:
        timeout = self._sender.first_byte_timeout
        return WorkerTimeout(
            f"the worker at {self._worker} sent nothing within {timeout:g} s",
            maybe_delivered=maybe_delivered,
        )

    def _failed(self, reason: Failure) -> None:
        self._pending = None
        if self._done.called:
            return
        if self._timed_out:
            self._fail(self._timeout_error(maybe_delivered=not never_sent(reason)))
            return
        if reason.check(CancelledError):
            return
        error = connection_error(
            reason, "worker", self._worker, unavailable=WorkerUnavailable, timeout=WorkerTimeout
        )
        if isinstance(error, WorkerUnavailable):
            error.maybe_delivered = not never_sent(reason)
        self._fail(error)

    def _response(self, response: IResponse) -> None:
        self._pending = None
        if self._done.called:
            response.deliverBody(Discard(abort=True))
            return
        peek = self._peek and (response.code in PEEKED or response.code >= 500)
        self._body = _AttemptBody(self, response, peek)
        response.deliverBody(self._body)

    # Called by the body.

    def first_byte(self, response: IResponse, first: bytes, complete: bool) -> None:
        self._stop_timer()
        if self._done.called:
            assert self._body is not None
            self._body.stop()
            return
        assert self._body is not None
        self._done.callback(Answer(response, self._worker, self._body, first, complete))

    def body_failed(self, reason: Failure) -> None:
        if self._done.called or self._timed_out:
            return
        self._fail(
            WorkerUnavailable(
                f"the worker at {self._worker} closed the connection before its first byte",
                maybe_delivered=True,
            )
        )

    def _fail(self, error: VespaError) -> None:
        self._stop_timer()
        if not self._done.called:
            self._done.errback(Failure(error))

    def _stop_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None


def never_sent(reason: Failure) -> bool:
    """
    Whether an Agent request that failed with ``reason`` provably sent
    nothing the worker could act on.

    Agent fails with its wrapper errors (:class:`ResponseNeverReceived`,
    :class:`RequestTransmissionFailed`, ...) once a connection was had and
    the request written to it, and with the connection's own error before;
    among the wrapped ones, only a failed TLS handshake proves that no
    request byte was read (they are encrypted after it). Anything not known
    counts as possibly delivered.
    """
    if reason.check(RequestNotSent):
        return True
    if reason.check(
        ResponseNeverReceived, RequestTransmissionFailed, ResponseFailed, RequestGenerationFailed
    ):
        reasons = getattr(reason.value, "reasons", None) or []
        return any(isinstance(r, Failure) and r.check(SSL.Error) for r in reasons)
    return (
        reason.check(ierror.ConnectError, ierror.DNSLookupError, ierror.ConnectingCancelledError)
        is not None
    )


class _AttemptBody(BodyReader):
    """
    A worker's body: held until the attempt is judged, then streamed to a sink.

    Before :meth:`attach` the transport is paused once the first byte is in,
    so an answer that loses a race or waits for its caller holds one chunk,
    not the whole body; the idle deadline counts from :meth:`attach` on.
    """

    def __init__(self, attempt: _Attempt, response: IResponse, peek: bool) -> None:
        super().__init__(attempt._sender.clock, attempt._sender.idle_timeout)
        self._attempt: _Attempt | None = attempt
        self._response = response
        self._peek = peek
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._sink: BodySink | None = None
        self._ended: Failure | None = None
        self._stopped = False

    def received(self, data: bytes) -> None:
        if self._sink is not None:
            self._sink.chunk(data)
            return
        self._buffer.append(data)
        self._buffered += len(data)
        attempt = self._attempt
        if attempt is None:
            return
        if self._peek and self._buffered <= PEEK_LIMIT:
            return
        # The first byte of an answer (or a peeked body too long to be an
        # error): the attempt is judged now; hold the rest until it is wanted.
        self._attempt = None
        self.pause_transport()
        attempt.first_byte(self._response, self._take(), False)

    def ended(self, reason: Failure) -> None:
        attempt = self._attempt
        if attempt is not None:
            self._attempt = None
            if ended_cleanly(reason):
                attempt.first_byte(self._response, self._take(), True)
            else:
                attempt.body_failed(reason)
            return
        if self._sink is None:
            # Judged but not attached: remember how it ended for attach().
            self._ended = reason
            return
        self._finish(reason)

    # Streaming, once judged

    def attach(self, sink: BodySink, first: bytes, complete: bool) -> None:
        self._sink = sink
        if first:
            sink.chunk(first)
        if self._buffer:
            sink.chunk(self._take())
        if complete:
            sink.end(None)
            return
        if self._ended is not None:
            self._finish(self._ended)
            return
        self.start_timing()
        self.resume_transport()

    def stop(self) -> None:
        """Abort the response: the worker sees its connection close."""
        self._stopped = True
        super().stop()

    def _finish(self, reason: Failure) -> None:
        sink, self._sink = self._sink, None
        if sink is None:
            return
        self.stop_timing()
        if ended_cleanly(reason):
            sink.end(None)
        elif self._stopped:
            sink.end(WorkerUnavailable("the worker's response was abandoned"))
        else:
            sink.end(
                WorkerUnavailable(
                    "the worker closed the connection before the response was complete"
                )
            )

    def _take(self) -> bytes:
        data = b"".join(self._buffer)
        self._buffer = []
        self._buffered = 0
        return data

    def idle_expired(self) -> None:
        sink, self._sink = self._sink, None
        self.stop_timing()
        self.stop()
        if sink is not None:
            sink.end(
                WorkerTimeout(f"the worker sent nothing for {self.idle_seconds:g} s mid-response")
            )
