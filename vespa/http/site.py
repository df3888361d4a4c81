# -*- test-case-name: tests.test_site,tests.test_worker_relay -*-
"""
The ``twisted.web`` site a proxy serves with: what a client on the internet
may send, and how long it may take.

twisted.web reads the whole request body before a resource sees the request
(memory below 100 kB, else a temporary file, closed off the reactor thread:
:mod:`vespa.http.body_file`) and sets no size limit, so the
limit is enforced here, while the body arrives: an over-size body is refused
with 413 as soon as it is known to be too large, and never stored.

A proxy relays bodies as bytes, so form bodies are never parsed (twisted.web
would parse them into ``request.args`` on the reactor thread: one 60 MB form
froze a worker for 25 s). A connection must finish its request line and
headers within ``header_timeout`` seconds however it trickles them, and may
then sit idle between requests for ``keepalive_timeout``. With
``max_connections`` set (the worker derives it from its open-file limit), a
connection beyond the limit closes the one idle the longest instead of
running the process out of file descriptors (:mod:`vespa.http.connection_limit`).
Everything refused at the connection level is answered with Vespa's JSON
error, never a bare status line.
"""

from __future__ import annotations

import io
import json
import re
from enum import Enum
from typing import IO, Any, cast
from urllib.parse import unquote_to_bytes

from twisted.internet.interfaces import IAddress, IDelayedCall, ITCPTransport, ITransport
from twisted.internet.protocol import connectionDone
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.http_headers import Headers
from twisted.web.resource import IResource

from vespa._typing import GenericHTTPChannelProtocol, HTTPChannel, Request, Site
from vespa.errors import (
    BadRequest,
    BodyTooLarge,
    MethodNotAllowed,
    RequestTimeout,
    ServiceUnavailable,
    VespaError,
    error_response,
    status_phrase,
    write_error,
)
from vespa.http.access_log import timed_log_formatter
from vespa.http.body_file import body_file
from vespa.http.connection_limit import ConnectionLimit
from vespa.http.eager import send_now
from vespa.http.headers import head_lines
from vespa.http.lazy_timeout import LazyTimeoutMixin
from vespa.http.request_head import host_problem, parse_request_head, start_request
from vespa.log import get_logger

log = get_logger(__name__)

#: A line feed without its carriage return, in a request line or header.
_BARE_LF = re.compile(rb"(?<!\r)\n")


_date_cache: tuple[int, bytes] = (-1, b"")


def _date(now: float) -> bytes:
    """The ``Date`` header for ``now``, formatted once per second."""
    global _date_cache
    second = int(now)
    if _date_cache[0] != second:
        _date_cache = (second, http.datetimeToString(second))
    return _date_cache[1]


class _NullFile(io.RawIOBase):
    """Accepts and drops what is written: the body of a refused request."""

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        return len(data)


class ProxyRequest(Request):
    """
    A request that enforces its site's ``max_body_size``, never parses a form
    body, and adds no defaults of its own to a relayed response (no
    ``Content-Type: text/html``, no ``Server: TwistedWeb``).
    """

    defaultContentType = None
    body_too_large = False
    #: Already answered at the connection level (the connection is closing):
    #: the request is never processed.
    refused = False

    #: When the request's headers had arrived (``reactor.seconds()``), for the access log.
    started_at = 0.0

    def gotLength(self, length: int | None) -> None:
        self._body_received = 0
        if self.refused:
            return
        site = getattr(self.channel, "site", None)
        if site is not None and getattr(site, "_access_log", False):
            self.started_at = site.reactor.seconds()
        limit = self._limit()
        if length is not None and limit is not None and length > limit:
            self._refuse_body(f"the request body of {length} bytes is over the limit of {limit}")
            return
        self.content = body_file(length, getattr(site, "reactor", None))

    def handleContentChunk(self, data: bytes) -> None:
        if self.body_too_large or self.refused:
            return
        self._body_received += len(data)
        limit = self._limit()
        if limit is not None and self._body_received > limit:
            self._refuse_body(f"the request body is over the limit of {limit} bytes")
            return
        super().handleContentChunk(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        """
        Take the request line and process the request, leaving the body as it
        arrived: unlike twisted.web, a form body is not parsed into ``args``
        (only the query string is).
        """
        if self.refused:
            return
        if self.content is not None:
            self.content.seek(0, 0)
        self.method, self.uri = command, path
        self.clientproto = version
        self.path, question, query = path.partition(b"?")
        self.args = http.parse_qs(query, 1) if question else {}
        self.process()

    def process(self) -> None:
        """
        Render the site's resource, as twisted.web does, less its ``Server``
        header; a ``*`` target (which asks about the server itself) is
        answered here in JSON.
        """
        self.site = cast(Site, self.channel.site)  # type: ignore[attr-defined]
        self.setHeader(b"Date", _date(self.site.reactor.seconds()))
        if self.path == b"*":
            self._answer_star()
            return
        self.prepath = []
        self.postpath = list(map(unquote_to_bytes, self.path[1:].split(b"/")))
        try:
            self.render(self.site.getResourceFor(self))
        except Exception:
            self.processingFailed(Failure())

    def _answer_star(self) -> None:
        if self.method == b"OPTIONS":
            body = json.dumps({"origin": "vespa", "status": "ok"}).encode("utf-8")
            self.setHeader(b"Content-Type", b"application/json")
            self.setHeader(b"Content-Length", b"%d" % (len(body),))
        else:
            body = write_error(
                self, MethodNotAllowed("only OPTIONS applies to *", headers={"Allow": "OPTIONS"})
            )
        self.write(body)
        self.finish()

    def processingFailed(self, reason: Failure) -> None:
        """A failure while rendering: a JSON 500, never twisted.web's HTML page."""
        log.failure("answering {method} failed", reason, method=self.method)
        if self.startedWriting:
            self.loseConnection()
            return
        body = write_error(self, VespaError("the request could not be processed"))
        self.write(body)
        self.finish()

    def setResponseCode(self, code: int, message: bytes | None = None) -> None:
        # twisted.web has no phrase for 422 or 429 ("Unknown Status").
        super().setResponseCode(code, status_phrase(code) if message is None else message)

    def refuse(self, error: VespaError) -> None:
        """
        Answer ``error`` at once and close the connection; the request (and
        whatever remains of its body) is dropped unprocessed.

        Over HTTP/2 the stream cannot be answered here: the body is dropped as
        it arrives and the resource answers once the request is complete.
        """
        content: IO[bytes] = _NullFile()  # type: ignore[assignment]
        self.content = content
        channel = self.channel
        if isinstance(channel, ProxyChannel):
            self.refused = True
            channel.refuse(error)

    def _limit(self) -> int | None:
        site = getattr(self.channel, "site", None)
        return getattr(site, "max_body_size", None)

    def _refuse_body(self, message: str) -> None:
        # Answered now, instead of reading (and dropping) the rest of a body
        # that may be gigabytes: the parser cannot resume mid-body.
        self.body_too_large = True
        self.refuse(BodyTooLarge(message))


class _Phase(Enum):
    """Where a connection is in its request cycle."""

    IDLE = "idle"  # waiting for the first byte of a request
    HEAD = "head"  # the request line and headers are arriving
    BUSY = "busy"  # the body is arriving, or the request is being answered (or refused)


class ProxyChannel(LazyTimeoutMixin, HTTPChannel):
    """
    An HTTP/1.x connection with deadlines for slow clients and JSON refusals.

    Its site sets the deadlines: ``header_timeout`` from the connection (or
    from a kept-alive request's first byte) to the end of the headers, not
    reset by each byte; ``keepalive_timeout`` between requests. twisted.web's
    idle timeout (``timeOut``, reset by each byte) still applies to a body.
    Each deadline is kept on one lazily moved timer (:mod:`vespa.http.lazy_timeout`).
    """

    site: ProxySite
    _phase = _Phase.IDLE
    _tail = b""
    _kept_alive = False
    _closing: IDelayedCall | None = None
    _peer: IAddress | None = None
    _host: IAddress | None = None
    _secure: bool | None = None

    def connectionMade(self) -> None:
        self.clock = self.site.reactor
        super().connectionMade()
        if ITCPTransport.providedBy(self.transport):
            # A streamed event is sent alone: it must not wait for an ACK.
            self.transport.setTcpNoDelay(True)
        self._idle(self.site.header_timeout)

    # A connection's addresses and security do not change: each is read
    # once, not per request (Request.__init__ asks for both addresses, the
    # relay whether it is secure: an interface adaptation).

    def getPeer(self) -> IAddress:
        if self._peer is None:
            self._peer = super().getPeer()  # type: ignore[no-untyped-call]
        return self._peer

    def getHost(self) -> IAddress:
        if self._host is None:
            self._host = super().getHost()  # type: ignore[no-untyped-call]
        return self._host

    def isSecure(self) -> bool:
        if self._secure is None:
            self._secure = bool(super().isSecure())  # type: ignore[no-untyped-call]
        return self._secure

    def writeHeaders(
        self, version: bytes, code: bytes, reason: bytes, headers: Headers
    ) -> None:
        """The status line and headers, written as one ``bytes`` (not 4 pieces a header)."""
        lines = head_lines(headers.getAllRawHeaders())
        head = b"%s %s %s\r\n%s\r\n" % (version, code, reason, lines)
        cast(ITransport, self.transport).write(head)

    # A response's writes, sent at once when nothing is buffered: each event
    # of a stream leaves as it is written (see vespa.http.eager). The first
    # write follows the headers, which twisted.web buffers, so it and a
    # whole unary response leave together at the end of the reactor's turn.

    def write(self, data: bytes) -> None:
        send_now(self.transport, data)

    def writeSequence(self, iovec: list[bytes]) -> None:
        send_now(self.transport, b"".join(iovec))

    def dataReceived(self, data: bytes) -> None:
        if self._phase is _Phase.BUSY or self._handlingRequest:
            super().dataReceived(data)
            return
        if self._phase is _Phase.IDLE:
            if self._whole_head(data):
                return
            self._phase = _Phase.HEAD
            self._tail = b""
            if self._kept_alive:
                self.setTimeout(self.site.header_timeout or self.timeOut)
        if self.site.header_timeout is None:
            self.resetTimeout()
        # Only the new bytes of the head are checked (the tail is their
        # context): a body may hold any bytes.
        head = self._tail + data
        end = head.find(b"\r\n\r\n")
        if _BARE_LF.search(head if end < 0 else head[:end], len(self._tail)):
            # LineReceiver would wait for a CRLF that never comes.
            self.refuse(BadRequest("a request line or header ends in a bare LF, not CRLF"))
            return
        self._tail = head[-3:]
        # LineReceiver's parsing without HTTPChannel's, which would reset the deadline.
        LineReceiver.dataReceived(self, data)

    def _whole_head(self, data: bytes) -> bool:
        """
        Take a request whose head came whole in ``data`` without twisted.web's
        line parser (:mod:`vespa.http.request_head`); ``False`` to leave it to
        that parser.
        """
        if self._buffer or not self.line_mode or not self.persistent or self.paused:
            return False
        head = parse_request_head(
            data, max_size=self.totalHeadersSize, max_headers=self.maxHeaders
        )
        if head is None:
            return False
        # No header deadline to set: the head is complete.
        self._phase = _Phase.HEAD
        start_request(self, head)
        return True

    def allHeadersReceived(self) -> None:
        self._busy()
        request = self.requests[-1]
        problem = host_problem(request.requestHeaders.getRawHeaders(b"host"), self._version)
        if problem is not None and isinstance(request, ProxyRequest):
            request.refuse(BadRequest(problem))
            return
        super().allHeadersReceived()

    def requestDone(self, request: http.Request) -> None:
        self._idle(None)
        self._kept_alive = True
        super().requestDone(request)
        # Replaying a pipelined request may have started the next one already.
        if self._phase is _Phase.IDLE and self.persistent:
            self.setTimeout(self.site.keepalive_timeout or self.timeOut)

    def timeoutConnection(self) -> None:
        if self._phase is _Phase.BUSY:
            super().timeoutConnection()  # a body stalled: twisted.web's idle timeout
            return
        if self._phase is _Phase.HEAD:
            timeout = self.site.header_timeout or self.timeOut
            self.refuse(RequestTimeout(f"the request headers took longer than {timeout:g} s"))
            return
        log.debug("closing a connection idle between requests")
        self._close()

    def refuse(self, error: VespaError) -> None:
        """
        Answer ``error`` (JSON) and close the connection, whatever the request
        state: for requests too malformed, slow or large to process.
        """
        if self._closing is not None or self.transport is None:
            return
        log.debug(
            "refused a connection's request: {status} {error}",
            status=error.status,
            error=error.message,
        )
        self.transport.write(error_response(error))
        self._close()

    def evict(self) -> None:
        """Close this idle connection now, to make room for a new one."""
        log.debug("closing the connection idle the longest to make room for a new one")
        if self.transport is not None:
            cast(ITCPTransport, self.transport).abortConnection()

    def _respondToBadRequestAndDisconnect(self) -> None:
        # twisted.web's own answer is a bare "400 Bad Request" status line.
        self.refuse(BadRequest("the request is malformed (request line, header or chunk framing)"))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.site.forget(self)
        if self._closing is not None and self._closing.active():
            self._closing.cancel()
        super().connectionLost(reason)
        self.cancel_timeout()

    def _idle(self, timeout: float | None) -> None:
        self._phase = _Phase.IDLE
        self.site.idle(self)
        if timeout is not None:
            self.setTimeout(timeout)

    def _busy(self) -> None:
        self._phase = _Phase.BUSY
        self.site.forget(self)
        self.setTimeout(self.timeOut)

    def _close(self) -> None:
        # Closed once written; aborted if the peer does not read even that.
        self.setTimeout(None)
        self.site.forget(self)
        self._phase = _Phase.BUSY
        transport = cast(ITCPTransport, self.transport)
        self._closing = self.callLater(self.abortTimeout, transport.abortConnection)
        self.loseConnection()


class _Connection(GenericHTTPChannelProtocol):
    """
    One accepted connection, counted by its site: HTTP/1.x on a
    :class:`ProxyChannel` until ALPN selects HTTP/2.
    """

    def __init__(self, site: ProxySite, channel: ProxyChannel) -> None:
        super().__init__(channel)
        self._proxy_site = site
        self._http1 = channel

    def makeConnection(self, transport: ITransport) -> None:
        admitted = self._proxy_site.opened()
        super().makeConnection(transport)
        if not admitted:
            self._http1.refuse(
                ServiceUnavailable(
                    "the server is at its connection limit", headers={"Retry-After": "1"}
                )
            )

    def dataReceived(self, data: bytes) -> None:
        http1: object = self._http1
        was_http1 = self._channel is http1
        super().dataReceived(data)
        if was_http1 and self._channel is not http1:
            # HTTP/2 took over: the HTTP/1.x channel is gone, it is not idle.
            self._proxy_site.forget(self._http1)
            self._http1.cancel_timeout()

    def connectionLost(self, reason: Failure) -> None:
        self._proxy_site.closed()
        super().connectionLost(reason)


class ProxySite(Site, ConnectionLimit):
    """
    A :class:`Site` for a proxy.

    :param resource: the root resource.
    :param max_body_size: the largest request body accepted, in bytes.
    :param access_log: ``None`` for no access log (the default: a log event per
        request costs 15-40% of throughput), ``-`` for the daemon's log, or a
        file path.
    :param reactor: the reactor for timeouts; the global one if ``None``.
    :param header_timeout: seconds for a request line and headers to arrive,
        however slowly they trickle; ``None`` for twisted.web's idle timeout.
    :param keepalive_timeout: seconds a connection may wait between requests;
        ``None`` for twisted.web's idle timeout.
    :param max_connections: connections open at once; beyond it, a new
        connection closes the one idle (or still sending its headers) the
        longest, or is refused with 503 if none is. ``None`` for no limit.
    """

    requestFactory = ProxyRequest
    noisy = False
    displayTracebacks = False

    def __init__(
        self,
        resource: IResource,
        *,
        max_body_size: int | None = None,
        access_log: str | None = None,
        reactor: Any = None,
        header_timeout: float | None = None,
        keepalive_timeout: float | None = None,
        max_connections: int | None = None,
    ) -> None:
        log_path = access_log if access_log not in (None, "-") else None
        super().__init__(
            resource, logPath=log_path, reactor=reactor, logFormatter=timed_log_formatter
        )
        self.max_body_size = max_body_size
        self._access_log = access_log is not None
        self.header_timeout = header_timeout
        self.keepalive_timeout = keepalive_timeout
        ConnectionLimit.__init__(self, max_connections)

    def protocol(self) -> _Connection:
        """A new connection's protocol (twisted.web's, on a :class:`ProxyChannel`)."""
        return _Connection(self, ProxyChannel())

    def log(self, request: http.Request) -> None:
        if self._access_log:
            super().log(request)
