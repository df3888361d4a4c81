# -*- test-case-name: tests.test_worker_relay -*-
"""
The streaming relay: one request from a ``twisted.web`` client to one backend.

The backend is reached through a pooled, kept-alive :class:`Agent` whose
endpoint is fixed at start: whatever the request says (absolute-form target,
``Host`` header), no traffic goes anywhere but the configured backend.

Response bodies stream: each chunk is written to the client when it arrives.
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
from twisted.internet.interfaces import (
    IDelayedCall,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.task import Cooperator
from twisted.python.failure import Failure
from twisted.web.client import (
    Agent,
    FileBodyProducer,
)
from twisted.web.http import NO_BODY_CODES
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer, IResponse
from twisted.web.server import Request

from vespa.errors import BackendTimeout, BackendUnavailable, VespaError, write_error
from vespa.http.endpoints import FixedEndpointFactory, Origin, backend_endpoint, quiet_pool
from vespa.http.headers import copy_response_headers, request_headers
from vespa.http.outbound import BytesBodyProducer, connection_error
from vespa.http.stream import BodyReader, cancel_call, end_response, ended_cleanly
from vespa.log import get_logger

log = get_logger(__name__)

# Bodies up to this size are sent in one write; larger ones stream from their
# file through a cooperator so one upload cannot monopolise the reactor.
_ONE_WRITE_BODY = 256 * 1024
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
    :param max_connections: idle connections kept; size it to the concurrency
        (Twisted's default of 2 halves throughput under load).
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
        self.pool = quiet_pool(reactor, keepalive=keepalive, max_connections=max_connections)
        if endpoint is None:
            endpoint = backend_endpoint(reactor, origin, timeouts.connect)
        self.agent = Agent.usingEndpointFactory(
            reactor, FixedEndpointFactory(endpoint), pool=self.pool
        )
        self._base = origin.url.encode("ascii")
        self._host = origin.netloc.encode("ascii")

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
        headers = request_headers(
            request.requestHeaders,
            host=self._host,
            client_ip=host.encode("ascii") if isinstance(host, str) else None,
            proto=b"https" if request.isSecure() else b"http",
            drop_authorization=self.drop_authorization,
            authorization=self.authorization,
        )
        method = request.method
        producer = self._producer(method, body, request.content)
        exchange = _Exchange(self, request, method, self._base + target, headers, producer)
        return exchange.start()

    def _producer(
        self, method: bytes, body: bytes | None, content: IO[bytes] | None
    ) -> IBodyProducer | None:
        if body is not None:
            return BytesBodyProducer(body)
        if content is None:
            return BytesBodyProducer(b"") if method in _BODY_METHODS else None
        content.seek(0, io.SEEK_END)
        length = content.tell()
        content.seek(0)
        if length == 0 and method not in _BODY_METHODS:
            return None
        if length <= _ONE_WRITE_BODY:
            return BytesBodyProducer(content.read())
        if self._cooperator is None:
            return FileBodyProducer(content)
        return FileBodyProducer(content, cooperator=self._cooperator)

    def close(self) -> Deferred[None]:
        """
        Close the idle backend connections (at shutdown).
        """
        closed: Deferred[None] = self.pool.closeCachedConnections()
        return closed


class _Exchange:
    """One request relayed: waits for headers, then streams the body through."""

    def __init__(
        self,
        relay: BackendRelay,
        request: Request,
        method: bytes,
        url: bytes,
        headers: Headers,
        producer: IBodyProducer | None,
    ) -> None:
        self._relay = relay
        self._request = request
        self._method = method
        self._url = url
        self._headers = headers
        self._producer = producer
        self._done: Deferred[RelayResult] = Deferred()
        self._finished = False
        self._client_gone = False
        self._pending: Deferred[IResponse] | None = None
        self._body: _BodyRelay | None = None
        self._status: int | None = None
        self._timeout: VespaError | None = None
        self._first_byte_call: IDelayedCall | None = None
        self._total_call: IDelayedCall | None = None
        self._started = relay.clock.seconds()
        self._headers_at: float | None = None

    def start(self) -> Deferred[RelayResult]:
        self._request.notifyFinish().addErrback(self._client_lost)
        timeouts = self._relay.timeouts
        # The errors are built only if a timer fires: almost none does.
        if timeouts.first_byte is not None:
            self._first_byte_call = self._later(
                timeouts.first_byte, "the backend sent no response within {:g} s"
            )
        if timeouts.total is not None:
            self._total_call = self._later(timeouts.total, "the exchange took longer than {:g} s")
        self._pending = self._relay.agent.request(
            self._method, self._url, self._headers, self._producer
        )
        self._pending.addCallbacks(self._response_received, self._request_failed)
        return self._done

    # Events

    def _client_lost(self, reason: Failure) -> None:
        self._client_gone = True
        self._abandon()

    def _expire(self, error: VespaError) -> None:
        self._timeout = error
        self._abandon()

    def _abandon(self) -> None:
        # Stop whichever stage is running; its end reports the outcome.
        if self._pending is not None:
            self._pending.cancel()
        elif self._body is not None:
            self._body.stop()

    def _request_failed(self, reason: Failure) -> None:
        self._pending = None
        if self._client_gone:
            self._end(RelayOutcome.CANCELLED)
            return
        error = self._timeout or connection_error(reason, "backend", self._relay.origin.url)
        self._log_failure(error)
        self._answer_error(error)

    def _response_received(self, response: IResponse) -> None:
        self._pending = None
        cancel_call(self._first_byte_call)
        self._headers_at = self._relay.clock.seconds()
        request = self._request
        self._status = response.code
        request.setResponseCode(response.code, response.phrase)
        copy_response_headers(response.headers, request.responseHeaders)
        if (
            response.length is not UNKNOWN_LENGTH
            and self._method != b"HEAD"
            and response.code not in NO_BODY_CODES
        ):
            request.responseHeaders.setRawHeaders(b"content-length", [b"%d" % (response.length,)])
        self._body = _BodyRelay(self, request, self._relay.clock, self._relay.timeouts.idle)
        response.deliverBody(self._body)

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
        cancel_call(self._first_byte_call)
        cancel_call(self._total_call)
        # Break the exchange <-> body cycle now, so the request and its headers
        # are freed by reference counting instead of waiting for the cycle
        # collector (full collections set the tail latency under load).
        self._body = None
        self._first_byte_call = self._total_call = None
        now = self._relay.clock.seconds()
        first_byte = None if self._headers_at is None else self._headers_at - self._started
        self._done.callback(
            RelayResult(outcome, self._status, error, first_byte, now - self._started)
        )

    def _later(self, seconds: float, message: str) -> IDelayedCall:
        return self._relay.clock.callLater(
            seconds, lambda: self._expire(BackendTimeout(message.format(seconds)))
        )

    def _log_failure(self, error: VespaError) -> None:
        request_id = self._headers.getRawHeaders(b"x-request-id")
        log.warn(
            "{method} {target}: {error} [request {request_id}]",
            method=self._method.decode("ascii", "replace"),
            target=self._target_for_log(),
            error=error.message,
            request_id=request_id[0].decode("ascii", "replace") if request_id else "-",
        )

    def _target_for_log(self) -> str:
        return self._url[len(self._relay._base) :][:200].decode("ascii", "replace")


class _BodyRelay(BodyReader):
    """
    Receives the backend's body and writes each chunk to the client.

    It is the client connection's producer (see :class:`BodyReader`): a
    slow client pauses the backend read.
    """

    def __init__(
        self, exchange: _Exchange, request: Request, clock: IReactorTime, idle: float | None
    ) -> None:
        super().__init__(clock, idle)
        self._exchange = exchange
        self._request = request

    def connectionMade(self) -> None:
        self._request.registerProducer(self, True)
        self.start_timing()

    def received(self, data: bytes) -> None:
        self._request.write(data)

    def ended(self, reason: Failure) -> None:
        self._exchange.body_ended(reason)

    def idle_expired(self) -> None:
        self._exchange._expire(
            BackendTimeout(f"the backend sent nothing for {self.idle_seconds:g} s mid-response")
        )
