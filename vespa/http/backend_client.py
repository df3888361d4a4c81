# -*- test-case-name: tests.test_backend_client -*-
"""
One kept-alive HTTP/1.1 connection to the worker's one fixed backend.

This replaces Twisted's ``Agent`` on the worker's relay only (the client
keeps ``Agent``): measured, its per-request machinery (URI parsing, the
pool lookup, ``Headers``, a body producer and Deferred chain for a body
already in memory, the response object and its Deferreds) was 15-20 % of
the worker's CPU per relayed POST, and decoding each chunk of a streamed
body only for twisted.web to encode it again was a fifth of the CPU per
relayed SSE event (``benchmarks/PROFILE.md``).

A :class:`BackendConnection` carries one exchange at a time: the request
head is one ``bytes`` written together with a small body (a large one
streams from its file through a ``FileBodyProducer``); the response is
parsed for its head and framing only (:mod:`vespa.http.backend_response`)
and its body handed to a protocol, as ``IResponse.deliverBody`` does, raw or
decoded. The connection is that body's transport: pausing it pauses the
backend's socket; stopping it closes the connection at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from typing import Protocol as TypingProtocol

from twisted.internet import error as ierror
from twisted.internet import tcp
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IProtocol
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.client import FileBodyProducer, ResponseDone
from twisted.web.http import PotentialDataLoss

try:
    # Private: the forwarding protocol of Twisted's client endpoints. Without
    # it (a Twisted that renamed it) the shortcut in connectionMade is off
    # and every read goes through the wrappers, as Twisted means it to;
    # tests.test_backend_relay notices.
    from twisted.internet.endpoints import _WrappingProtocol
except ImportError:  # pragma: no cover - depends on the Twisted release
    _WrappingProtocol = None  # type: ignore[misc,assignment]

from vespa.http.backend_response import (
    MAX_HEAD,
    ChunkedBody,
    Framing,
    MalformedResponse,
    ResponseHead,
    head_end,
    parse_head,
)

__all__ = [
    "BackendConnection",
    "ConnectionOwner",
    "OutgoingRequest",
    "ResponseHandler",
]

#: Methods that may be sent twice when a kept-alive connection turned out
#: dead, as twisted.web's Agent retries them (and only without a body).
IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"DELETE", b"TRACE"})

_DONE = Failure(ResponseDone("the response body is complete"))
_UNTIL_CLOSE = Failure(PotentialDataLoss("the body ended with the connection"))


@dataclass(frozen=True, slots=True)
class OutgoingRequest:
    """
    A request ready to send.

    :ivar method: the method (``HEAD`` responses have no body).
    :ivar head: the request line, the header lines and the empty line.
    :ivar body: a body sent in the same write as the head, or ``None``.
    :ivar producer: a large body streamed from its file, or ``None``.
    """

    method: bytes
    head: bytes
    body: bytes | None = None
    producer: FileBodyProducer | None = None

    @property
    def retryable(self) -> bool:
        """Whether it may be sent again: an idempotent method with no body."""
        return self.method in IDEMPOTENT and self.body is None and self.producer is None


class ResponseHandler(TypingProtocol):
    """What an exchange does with the response it is sent."""

    def response_started(self, head: ResponseHead) -> tuple[IProtocol, bool]:
        """
        The response's head arrived.

        :return: the protocol its body is delivered to (it gets
            ``makeConnection``, ``dataReceived`` and one ``connectionLost``,
            with ``ResponseDone`` or ``PotentialDataLoss`` when complete), and
            whether a chunked body is handed on raw.
        """

    def response_failed(self, reason: Failure) -> None:
        """No response head arrived: the connection failed or sent garbage."""


class ConnectionOwner(TypingProtocol):
    """The pool a connection returns to."""

    def release(self, connection: BackendConnection) -> None:
        """``connection`` finished an exchange and may carry another."""

    def forget(self, connection: BackendConnection) -> None:
        """``connection`` is closed."""


class BackendConnection(Protocol):
    """
    A connection to the backend, carrying one exchange at a time.

    :param owner: the pool it returns to after each exchange.
    """

    #: When it was last released to its pool (the pool's clock).
    idle_since = 0.0
    #: Whether it carried an exchange before the one in flight.
    reused = False

    def __init__(self, owner: ConnectionOwner) -> None:
        self._owner = owner
        self._handler: ResponseHandler | None = None
        self._request: OutgoingRequest | None = None
        self._head_request = False
        self._buffer = b""
        #: Whether the current exchange has had any byte of a response.
        self.received_any = False
        self._body: IProtocol | None = None
        self._framing = Framing.NONE
        self._left = 0
        self._chunks: ChunkedBody | None = None
        self._keep_alive = False
        self._closing = False
        self._producing = False
        self._paused = False
        self._closed_waiters: list[Deferred[None]] = []

    def connectionMade(self) -> None:
        # Twisted's client endpoints put forwarding protocols between the TCP
        # transport and this one; once connected they only pass each read and
        # the end on. The transport is pointed here instead, so that each read
        # of the backend (each relayed SSE event) skips a call per wrapper.
        transport: Any = self.transport
        if type(transport) is not tcp.Client or _WrappingProtocol is None:
            return  # TLS, or a test's transport: left as it is
        wrapper = transport.protocol
        while isinstance(wrapper, _WrappingProtocol):
            wrapper = wrapper._wrappedProtocol
            if wrapper is self:
                transport.protocol = self
                return

    # Sending

    def send(self, request: OutgoingRequest, handler: ResponseHandler) -> None:
        """
        Send ``request``; ``handler`` hears of its response.
        """
        self._request = request
        self._handler = handler
        self._head_request = request.method == b"HEAD"
        self.received_any = False
        transport: Any = self.transport
        if request.body:
            transport.writeSequence([request.head, request.body])
        else:
            transport.write(request.head)
        producer = request.producer
        if producer is not None:
            self._producing = True
            transport.registerProducer(producer, True)
            producer.startProducing(transport).addCallbacks(
                self._produced, lambda reason: self.abort()
            )

    def _produced(self, _: object) -> None:
        self._producing = False
        if self.transport is not None:
            self.transport.unregisterProducer()  # type: ignore[attr-defined]

    # The body's transport, for its protocol and its consumers.

    def pauseProducing(self) -> None:
        """Stop reading the backend's socket."""
        self._paused = True
        transport: Any = self.transport
        transport.pauseProducing()

    def resumeProducing(self) -> None:
        """Read the backend's socket again."""
        self._paused = False
        transport: Any = self.transport
        transport.resumeProducing()

    def stopProducing(self) -> None:
        """Abandon the exchange: the backend sees the connection close at once."""
        self.abort()

    def close(self) -> Deferred[None]:
        """
        Close the connection cleanly (an idle one, expired or at shutdown).

        :return: fires once it is closed.
        """
        closed: Deferred[None] = Deferred()
        self._closed_waiters.append(closed)
        self._closing = True
        transport: Any = self.transport
        if transport is not None:
            transport.loseConnection()
        return closed

    def abort(self) -> None:
        """Close the connection at once, whatever it is doing."""
        self._closing = True
        transport: Any = self.transport
        if transport is not None:
            transport.abortConnection()

    # Receiving

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        body = self._body
        try:
            if body is None:
                if self._handler is None:
                    # Bytes nobody asked for: the connection cannot be trusted again.
                    self.abort()
                    return
                self.received_any = True
                self._head_received(data)
            elif self._chunks is not None:
                # A read of a chunked body, one SSE event most often: handed
                # to the body from here, with no call in between (the relay's
                # per-event path).
                out, ended = self._chunks.feed(data)
                if out:
                    body.dataReceived(out)
                if ended >= 0 and not self._closing:
                    self._complete(data[ended:])
            else:
                self._body_received(data)
        except MalformedResponse as e:
            self._fail(Failure(e))

    def _head_received(self, data: bytes) -> None:
        buffer = self._buffer + data if self._buffer else data
        while True:
            end = head_end(buffer)
            if end < 0:
                if len(buffer) > MAX_HEAD:
                    raise MalformedResponse(f"the response head is over {MAX_HEAD} bytes")
                self._buffer = buffer
                return
            if end > MAX_HEAD:
                raise MalformedResponse(f"the response head is over {MAX_HEAD} bytes")
            head = parse_head(buffer[:end], head_request=self._head_request)
            buffer = buffer[end:]
            if head.status >= 200:
                break
            if head.status == 101:
                raise MalformedResponse("the backend switched protocols unasked")
            # An interim response (100 Continue, 103 Early Hints): the real one follows.
        self._buffer = b""
        self._framing = head.framing
        self._left = head.length
        self._keep_alive = head.keep_alive
        handler = self._handler
        assert handler is not None
        body, raw = handler.response_started(head)
        if self._closing:  # the handler abandoned the exchange
            return
        self._body = body
        if head.framing is Framing.CHUNKED:
            self._chunks = ChunkedBody(raw=raw)
        body.makeConnection(self)  # type: ignore[arg-type]
        if head.framing is Framing.NONE or (head.framing is Framing.LENGTH and not self._left):
            self._complete(buffer)
        elif buffer and not self._closing:
            self.dataReceived(buffer)

    def _body_received(self, data: bytes) -> None:
        """A read of a body delimited by its length or the connection's close."""
        body = self._body
        assert body is not None
        if self._framing is Framing.LENGTH:
            left = self._left
            if len(data) < left:
                self._left = left - len(data)
                body.dataReceived(data)
                return
            self._left = 0
            body.dataReceived(data[:left])
            if not self._closing:
                self._complete(data[left:])
        else:
            body.dataReceived(data)

    def _complete(self, rest: bytes) -> None:
        """The response is complete; ``rest`` is what came after it."""
        body = self._body
        reusable = self._keep_alive and not rest and not self._producing
        self._reset()
        if reusable:
            if self._paused:  # a slow caller paused it as the body ended
                self.resumeProducing()
            # Back in the pool before the exchange ends: ending it may start
            # the next request, which can then reuse this connection.
            self._owner.release(self)
        else:
            self.abort()
        if body is not None:
            body.connectionLost(_DONE)

    def _fail(self, reason: Failure) -> None:
        """The backend broke the protocol: the exchange fails, the connection closes."""
        body, handler = self._body, self._handler
        self._reset()
        self.abort()
        if body is not None:
            body.connectionLost(reason)
        elif handler is not None:
            handler.response_failed(reason)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        body, handler, framing = self._body, self._handler, self._framing
        self._reset()
        self._closing = True
        self._owner.forget(self)
        waiters, self._closed_waiters = self._closed_waiters, []
        for closed in waiters:
            closed.callback(None)
        if body is not None:
            clean = framing is Framing.UNTIL_CLOSE and reason.check(ierror.ConnectionDone)
            body.connectionLost(_UNTIL_CLOSE if clean else reason)
        elif handler is not None:
            handler.response_failed(reason)

    def _reset(self) -> None:
        if self._producing and self._request is not None and self._request.producer:
            self._producing = False
            self._request.producer.stopProducing()
        self._handler = None
        self._request = None
        self._body = None
        self._chunks = None
        self._buffer = b""
        self._framing = Framing.NONE
