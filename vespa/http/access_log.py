# -*- test-case-name: tests.test_site -*-
"""The access log's line for a request: the combined log format, timed."""

from __future__ import annotations

from typing import Any

from twisted.web.http import combinedLogFormatter

__all__ = ["timed_log_formatter"]


def timed_log_formatter(timestamp: str, request: Any) -> str:
    """
    The combined log format, then the seconds the request took and its id.
    """
    line: str = combinedLogFormatter(timestamp, request)
    started = getattr(request, "started_at", 0.0)
    took = request.channel.site.reactor.seconds() - started if started and request.channel else 0.0
    request_id = request.responseHeaders.getRawHeaders(b"x-request-id") or [b"-"]
    return f"{line} {took:.3f} {request_id[0].decode('ascii', 'replace')}"
