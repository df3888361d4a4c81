# -*- test-case-name: tests.test_worker_relay -*-
"""
The ``twisted.web`` site a proxy serves with: body limits and a quiet log.

twisted.web reads the whole request body before a resource sees the request
(memory below 100 kB, else a temporary file) and sets no size limit, so the
limit is enforced here, while the body arrives: an over-size body is refused
with 413 as soon as it is known to be too large, and never stored.
"""

from __future__ import annotations

import io
import json
from typing import IO, Any

from twisted.web import http
from twisted.web.resource import IResource
from twisted.web.server import Request, Site

from vespa.errors import BodyTooLarge
from vespa.log import get_logger

log = get_logger(__name__)


class _Discard(io.RawIOBase):
    """Accepts and drops what is written: the body of a refused request."""

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        return len(data)


class ProxyRequest(Request):
    """
    A request that enforces its site's ``max_body_size`` and adds no defaults
    of its own to a relayed response (no ``Content-Type: text/html``).
    """

    defaultContentType = None
    body_too_large = False

    #: When the request's headers had arrived (``reactor.seconds()``), for the access log.
    started_at = 0.0

    def gotLength(self, length: int | None) -> None:
        self._body_received = 0
        site = getattr(self.channel, "site", None)
        if site is not None and site._access_log:
            self.started_at = site.reactor.seconds()
        limit = self._limit()
        if length is not None and limit is not None and length > limit:
            self._refuse_body(f"the request body of {length} bytes is over the limit of {limit}")
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self.body_too_large:
            return
        self._body_received += len(data)
        limit = self._limit()
        if limit is not None and self._body_received > limit:
            self._refuse_body(f"the request body is over the limit of {limit} bytes")
            return
        super().handleContentChunk(data)

    def _limit(self) -> int | None:
        site = getattr(self.channel, "site", None)
        return getattr(site, "max_body_size", None)

    def _refuse_body(self, message: str) -> None:
        self.body_too_large = True
        content: IO[bytes] = _Discard()  # type: ignore[assignment]
        self.content = content
        log.info("refused a request body: {message}", message=message)
        channel = self.channel
        if isinstance(channel, http.HTTPChannel) and channel.transport is not None:
            # Answer now and close, instead of reading (and dropping) the rest of
            # a body that may be gigabytes: the parser cannot resume mid-body.
            error = BodyTooLarge(message)
            body = json.dumps(error.body()).encode("utf-8")
            channel.transport.write(
                b"HTTP/1.1 413 Payload Too Large\r\n"
                b"Content-Type: application/json\r\n"
                b"Connection: close\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
            )
            channel.transport.loseConnection()
        # Otherwise (HTTP/2) the body is dropped as it arrives and the
        # resource answers 413 once the request is complete.


def _timed_log_formatter(timestamp: str, request: Any) -> str:
    """
    The combined log format, then the seconds the request took and its id.
    """
    from twisted.web.http import combinedLogFormatter

    line: str = combinedLogFormatter(timestamp, request)
    started = getattr(request, "started_at", 0.0)
    took = request.channel.site.reactor.seconds() - started if started and request.channel else 0.0
    request_id = request.responseHeaders.getRawHeaders(b"x-request-id") or [b"-"]
    return f"{line} {took:.3f} {request_id[0].decode('ascii', 'replace')}"


class ProxySite(Site):
    """
    A :class:`Site` for a proxy.

    :param resource: the root resource.
    :param max_body_size: the largest request body accepted, in bytes.
    :param access_log: ``None`` for no access log (the default: a log event per
        request costs 15-40% of throughput), ``-`` for the daemon's log, or a
        file path.
    :param reactor: the reactor for timeouts; the global one if ``None``.
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
    ) -> None:
        log_path = access_log if access_log not in (None, "-") else None
        super().__init__(
            resource, logPath=log_path, reactor=reactor, logFormatter=_timed_log_formatter
        )
        self.max_body_size = max_body_size
        self._access_log = access_log is not None

    def log(self, request: http.Request) -> None:
        if self._access_log:
            super().log(request)
