# -*- test-case-name: tests.test_worker_relay -*-
"""
The streaming relay: one request from a ``twisted.web`` client to one backend.

The backend is reached through a pool of kept-alive connections
(:mod:`vespa.http.backend_pool`) whose endpoint is fixed at start: whatever
the request says (absolute-form target, ``Host`` header), no traffic goes
anywhere but the configured backend.

Response bodies stream: each chunk is written to the client when it arrives.
A chunked body going to an HTTP/1.1 caller (whose response is chunked too) is
relayed as it arrived, framing and all, instead of being decoded only to be
encoded again; twisted.web's ``Request.finish`` writes the last chunk.
The relay registers itself as the client connection's producer, so a slow
client pauses the backend read and memory stays flat. A client that goes away
cancels the backend request at once (the backend sees the connection close).

Every exchange ends in one :class:`RelayOutcome`, for the caller's accounting.
"""

from __future__ import annotations

import enum
import io
from dataclasses import dataclass
from typing import IO, Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IProtocol, IReactorTime, IStreamClientEndpoint
from twisted.internet.task import Cooperator
from twisted.python.failure import Failure
from twisted.web.server import Request

from vespa.errors import BackendTimeout, BackendUnavailable, VespaError, write_error
from vespa.http.backend_client import OutgoingRequest
from vespa.http.backend_pool import BackendCall, BackendPool
from vespa.http.backend_response import Framing, ResponseHead
from vespa.http.deadlines import Deadlines
from vespa.http.eager import send_now
from vespa.http.endpoints import Origin, backend_endpoint
from vespa.http.headers import copy_response_lines, forwarded_headers, head_lines
from vespa.http.outbound import ONE_WRITE, connection_error, pieces_producer
from vespa.http.site import ProxyChannel
from vespa.http.stream import BodyReader, end_response, ended_cleanly
from vespa.log import get_logger

log = get_logger(__name__)

_BODY_METHODS = frozenset({b"POST", b"PUT", b"PATCH"})


class RelayOutcome(enum.Enum):
    """How an exchange ended."""

    #: The backend's response (any status) reached the client complete.
    SERVED = "served"
    #: Vespa could not relay: backend unreachable, timed out, or died mid-response.
    ERRORED = "errored"
    #: The client went away first.
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class RelayResult:
    """
    The end of one exchange.

    :ivar outcome: how it ended.
    :ivar status: the backend's status code, when a response arrived.
    :ivar error: what went wrong, for ``ERRORED``.
    :ivar first_byte: seconds from sending the request to the response
        headers, when they arrived.
    :ivar duration: seconds the exchange took.
    """

    outcome: RelayOutcome
    status: int | None = None
    error: VespaError | None = None
    first_byte: float | None = None
    duration: float = 0.0


@dataclass(frozen=True)
class RelayTimeouts:
    """
    Deadlines of an exchange, in seconds; ``None`` is no limit.

    :ivar connect: to open a backend connection.
    :ivar first_byte: from sending the request to the response headers.
    :ivar idle: of backend silence once the response has started.
    :ivar total: for the whole exchange.
    """

    connect: float | None = 10.0
    first_byte: float | None = 600.0
    idle: float | None = 300.0
    total: float | None = None


class BackendRelay:
    """
    Relays requests to one backend over a pool of kept-alive connections.

    :param reactor: provides TCP (and time, unless ``clock`` is given).
    :param origin: the backend.
    :param timeouts: the deadlines of each exchange.
    :param keepalive: seconds an idle connection is kept, ``None`` to keep none;
        keep it below the backend's own keep-alive timeout, because a POST on a
        connection the backend has just closed cannot be retried safely.
    :param max_connections: idle connections kept; size it to the concurrency.
    :param cooperator: schedules large request bodies; the global one if ``None``.
    :param endpoint: the backend endpoint; built from ``origin`` if ``None``.
    :param clock: runs the exchange deadlines; ``reactor`` if ``None``.
    :param drop_authorization: remove the caller's ``Authorization`` header.
    :param authorization: the ``Authorization`` header the backend gets
        instead of the caller's, e.g. ``b"Bearer KEY"``.
    """

    def __init__(
        self,
        reactor: Any,
        origin: Origin,
        *,
        timeouts: RelayTimeouts = RelayTimeouts(),
        keepalive: float | None = 4.0,
        max_connections: int = 256,
        cooperator: Cooperator | None = None,
        endpoint: IStreamClientEndpoint | None = None,
        clock: IReactorTime | None = None,
        drop_authorization: bool = False,
        authorization: bytes | None = None,
    ) -> None:
        self.clock: IReactorTime = clock or reactor
        self.drop_authorization = drop_authorization
        self.authorization = authorization
        self.origin = origin
        self.timeouts = timeouts
        self._cooperator = cooperator
        if endpoint is None:
            endpoint = backend_endpoint(reactor, origin, timeouts.connect)
        #: The kept-alive connections to the backend.
        self.pool = BackendPool(
            self.clock, endpoint, keepalive=keepalive, max_connections=max_connections
        )
        self._host = origin.netloc.encode("ascii")
        # One timer each for every exchange's first-byte and total deadlines
        # (see vespa.http.deadlines), the errors built only if one passes.
        self._deadlines: list[Deadlines[_Exchange]] = []
        self.first_byte = self._deadline(
            timeouts.first_byte, "the backend sent no response within {:g} s"
        )
        self.total = self._deadline(timeouts.total, "the exchange took longer than {:g} s")

    def _deadline(self, seconds: float | None, message: str) -> Deadlines[_Exchange] | None:
        if seconds is None:
            return None

        def expired(exchange: _Exchange) -> None:
            exchange.expire(BackendTimeout(message.format(seconds)))

        deadlines: Deadlines[_Exchange] = Deadlines(self.clock, seconds, expired)
        self._deadlines.append(deadlines)
        return deadlines

    def forward(
        self, request: Request, target: bytes, *, body: bytes | None = None
    ) -> Deferred[RelayResult]:
        """
        Relay ``request`` to the backend and its response back, streaming.

        The caller must not touch ``request`` until the returned Deferred fires:
        the relay answers it (the backend's response, or a JSON error) or, when
        the response had already started, ends the client's stream abnormally.

        :param request: the client's request; its body is ``request.content``.
        :param target: the origin-form target to send (``/path?query``).
        :param body: a replacement body, or ``None`` to send the request's own.
        :return: fires with the :class:`RelayResult` once the exchange is over.
        """
        client = request.getClientAddress()
        host = getattr(client, "host", None)
        method = request.method
        lines = head_lines(
            forwarded_headers(
                request.requestHeaders,
                host=self._host,
                client_ip=host.encode("ascii") if isinstance(host, str) else None,
                proto=b"https" if request.isSecure() else b"http",
                drop_authorization=self.drop_authorization,
                authorization=self.authorization,
            )
        )
        head = b"%s %s HTTP/1.1\r\n%s" % (method, target, lines)
        outgoing = self._outgoing(method, head, body, request.content)
        return _Exchange(self, request, target, outgoing).start()

    def _outgoing(
        self, method: bytes, head: bytes, body: bytes | None, content: IO[bytes] | None
    ) -> OutgoingRequest:
        if body is None and content is not None:
            length = content.seek(0, io.SEEK_END)
            content.seek(0)
            if length > ONE_WRITE:
                return self._in_pieces(method, head, content, length)
            if length or method in _BODY_METHODS:
                body = content.read()
        elif body is None and method in _BODY_METHODS:
            body = b""
        if body is None:
            return OutgoingRequest(method, head + b"\r\n")
        if len(body) > ONE_WRITE:
            return self._in_pieces(method, head, io.BytesIO(body), len(body))
        return OutgoingRequest(method, head + b"Content-Length: %d\r\n\r\n" % (len(body),), body)

    def _in_pieces(
        self, method: bytes, head: bytes, body: IO[bytes], length: int
    ) -> OutgoingRequest:
        """A large body, streamed a piece at a time so that no write monopolises the reactor."""
        head += b"Content-Length: %d\r\n\r\n" % (length,)
        return OutgoingRequest(method, head, producer=pieces_producer(body, self._cooperator))

    def close(self) -> Deferred[Any]:
        """
        Close the idle backend connections and stop the deadline timers (at shutdown).
        """
        for deadlines in self._deadlines:
            deadlines.stop()
        return self.pool.close()


class _Exchange:
    """One request relayed: waits for the response head, then streams the body through."""

    def __init__(
        self, relay: BackendRelay, request: Request, target: bytes, outgoing: OutgoingRequest
    ) -> None:
        self._relay = relay
        self._request = request
        self._target = target
        self._outgoing = outgoing
        self._done: Deferred[RelayResult] = Deferred()
        self._finished = False
        self._client_gone = False
        self._call: BackendCall | None = None
        self._body: _BodyRelay | None = None
        self._status: int | None = None
        self._timeout: VespaError | None = None
        self._started = relay.clock.seconds()
        self._headers_at: float | None = None

    def start(self) -> Deferred[RelayResult]:
        self._request.notifyFinish().addErrback(self._client_lost)
        relay = self._relay
        if relay.first_byte is not None:
            relay.first_byte.add(self)
        if relay.total is not None:
            relay.total.add(self)
        self._call = relay.pool.send(self._outgoing, self)
        return self._done

    # Events

    def _client_lost(self, reason: Failure) -> None:
        self._client_gone = True
        self._abandon()

    def expire(self, error: VespaError) -> None:
        """A deadline passed: the exchange ends with ``error``."""
        self._timeout = error
        self._abandon()

    def _abandon(self) -> None:
        # Stop whichever stage is running; its end reports the outcome.
        if self._body is not None:
            self._body.stop()
        elif self._call is not None:
            self._call.abort()

    def response_failed(self, reason: Failure) -> None:
        """No response came (the pool's ``ResponseHandler``)."""
        self._call = None
        if self._client_gone:
            self._end(RelayOutcome.CANCELLED)
            return
        error = self._timeout or connection_error(reason, "backend", self._relay.origin.url)
        self._log_failure(error)
        self._answer_error(error)

    def response_started(self, head: ResponseHead) -> tuple[IProtocol, bool]:
        """The response's head arrived (the pool's ``ResponseHandler``)."""
        relay = self._relay
        if relay.first_byte is not None:
            relay.first_byte.discard(self)
        self._headers_at = relay.clock.seconds()
        request = self._request
        self._status = head.status
        request.setResponseCode(head.status, head.phrase)
        copy_response_lines(head.headers, request.responseHeaders, drop=_LENGTH)
        if head.framing is Framing.LENGTH:
            request.responseHeaders.setRawHeaders(b"content-length", [b"%d" % (head.length,)])
        # Twisted's own test for a chunked response (Request.write): then the
        # backend's chunks can go to the caller as they are.
        raw = (
            head.framing is Framing.CHUNKED
            and request.clientproto == b"HTTP/1.1"
            and isinstance(request.channel, ProxyChannel)
            and not request.responseHeaders.hasHeader(b"content-length")
        )
        self._body = _BodyRelay(self, request, relay.clock, relay.timeouts.idle, raw=raw)
        return self._body, raw

    def body_ended(self, reason: Failure) -> None:
        """
        The backend's body ended, completely or not; finish the client's side.
        """
        request = self._request
        if self._client_gone:
            self._end(RelayOutcome.CANCELLED)
            return
        error: VespaError | None = None
        if self._timeout is not None or not ended_cleanly(reason):
            error = self._timeout or BackendUnavailable(
                "the backend closed the connection before the response was complete"
            )
            self._log_failure(error)
        end_response(request, error)
        self._end(RelayOutcome.SERVED if error is None else RelayOutcome.ERRORED, error)

    # Helpers

    def _answer_error(self, error: VespaError) -> None:
        request = self._request
        request.write(write_error(request, error))
        request.finish()
        self._end(RelayOutcome.ERRORED, error)

    def _end(self, outcome: RelayOutcome, error: VespaError | None = None) -> None:
        if self._finished:
            return
        self._finished = True
        relay = self._relay
        if relay.first_byte is not None:
            relay.first_byte.discard(self)
        if relay.total is not None:
            relay.total.discard(self)
        # Break the exchange <-> body and call cycles now, so the request and
        # its headers are freed by reference counting instead of waiting for
        # the cycle collector (full collections set the tail latency under load).
        self._body = None
        self._call = None
        now = relay.clock.seconds()
        first_byte = None if self._headers_at is None else self._headers_at - self._started
        self._done.callback(
            RelayResult(outcome, self._status, error, first_byte, now - self._started)
        )

    def _log_failure(self, error: VespaError) -> None:
        request_id = self._request.requestHeaders.getRawHeaders(b"x-request-id")
        log.warn(
            "{method} {target}: {error} [request {request_id}]",
            method=self._outgoing.method.decode("ascii", "replace"),
            target=self._target[:200].decode("ascii", "replace"),
            error=error.message,
            request_id=request_id[0].decode("ascii", "replace") if request_id else "-",
        )


#: The backend's framing headers are not the caller's: the relay sets its own.
_LENGTH = frozenset({b"content-length"})


class _BodyRelay(BodyReader):
    """
    Receives the backend's body and writes each piece to the client.

    It is the client connection's producer (see :class:`BodyReader`): a
    slow client pauses the backend read. With ``raw``, the pieces are the
    backend's chunks with their framing, written to the caller's connection
    as they are (the caller's response is chunked: see
    :meth:`_Exchange.response_started`).
    """

    def __init__(
        self,
        exchange: _Exchange,
        request: Request,
        clock: IReactorTime,
        idle: float | None,
        *,
        raw: bool,
    ) -> None:
        super().__init__(clock, idle)
        self._exchange = exchange
        self._request = request
        self._raw = raw
        # The caller's transport once the response's head is out (raw only).
        self._caller: Any = None

    def connectionMade(self) -> None:
        self._request.registerProducer(self, True)
        self.start_timing()

    def received(self, data: bytes) -> None:
        request = self._request
        caller = self._caller
        if caller is None:
            if not self._raw:
                request.write(data)
                return
            if request._disconnected:  # gone: its channel with it
                return
            if not request.startedWriting:
                request.write(b"")  # the status line and headers go first
            # The caller's connection (ProxyChannel.write's own target): from
            # now on each piece is sent to it straight, one call per event.
            caller = self._caller = request.channel.transport
        # What Request.write would still check and count for a chunk: a
        # caller gone gets nothing, and the access log counts what was sent.
        if not request._disconnected:
            request.sentLength += len(data)
            send_now(caller, data)

    def ended(self, reason: Failure) -> None:
        self._exchange.body_ended(reason)

    def idle_expired(self) -> None:
        self._exchange.expire(
            BackendTimeout(f"the backend sent nothing for {self.idle_seconds:g} s mid-response")
        )
