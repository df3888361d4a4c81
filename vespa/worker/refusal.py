# -*- test-case-name: tests.test_worker_protocol,tests.test_sessions -*-
"""
A refused request, answered and logged once: the one place both of the
worker's listeners (its port and the plain-HTTP session port) refuse.
"""

from __future__ import annotations

from twisted.web.server import Request

from vespa.errors import VespaError, write_error
from vespa.log import get_logger

log = get_logger(__name__)


def refuse(request: Request, error: VespaError, *, where: str = "") -> bytes:
    """
    Log a refusal (at debug level: a refusal is the caller's doing, not the
    worker's) and write it as the JSON error the caller gets.

    :param request: the refused request; its ``X-Request-Id`` response header,
        when set, is logged with it.
    :param error: why, with the status.
    :param where: said after the request, e.g. ``" on the plain-HTTP port"``.
    :return: the response body, for ``render`` to return.
    """
    request_id = request.responseHeaders.getRawHeaders(b"x-request-id") or [b"-"]
    log.debug(
        "refused {method} {uri}{where}: {status} {error} [request {request_id}]",
        method=request.method.decode("ascii", "replace"),
        uri=request.uri[:200].decode("ascii", "replace"),
        where=where,
        status=error.status,
        error=error.message,
        request_id=request_id[0].decode("ascii", "replace"),
    )
    return write_error(request, error)
