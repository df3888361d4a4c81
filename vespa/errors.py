# -*- test-case-name: tests.test_errors -*-
"""
The errors Vespa answers with, and the one place that turns them into HTTP.

Every error Vespa itself produces is JSON ``{"error": ..., "origin": ...}`` with
the status code of its type. Errors from the backend are never produced here:
they pass through untouched.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any, ClassVar

from twisted.web.iweb import IRequest


class VespaError(Exception):
    """
    An error Vespa answers itself.

    :param message: what went wrong, in words a caller can act on.
    :param headers: extra response headers (for example ``Retry-After``).
    :param details: extra JSON fields for the body.
    """

    status: ClassVar[int] = 500
    origin: ClassVar[str] = "vespa"

    def __init_subclass__(cls, *, status: int | None = None, origin: str | None = None) -> None:
        """
        Let a subclass state its status and origin in its ``class`` line,
        ``class Gone(VespaError, status=410)``, so each error is its header
        and docstring; what it leaves out it inherits.
        """
        super().__init_subclass__()
        if status is not None:
            cls.status = status
        if origin is not None:
            cls.origin = origin

    def __init__(
        self,
        message: str,
        *,
        headers: Mapping[str, str] | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.headers = dict(headers or {})
        self.details = dict(details or {})

    def body(self) -> dict[str, Any]:
        """
        The JSON body of this error.
        """
        return {"error": self.message, "origin": self.origin, **self.details}


class BadRequest(VespaError, status=400):
    """The request is malformed (400)."""


class PathBlocked(VespaError, status=403):
    """The path matches ``--blocked-paths`` (403)."""


class MethodNotAllowed(VespaError, status=405):
    """The method cannot be relayed, such as ``CONNECT`` (405)."""


class RequestTimeout(VespaError, status=408):
    """The request's headers did not arrive within ``--header-timeout`` (408)."""


class BodyTooLarge(VespaError, status=413):
    """The request body is over ``--max-body-size`` (413)."""


class BackendUnavailable(VespaError, status=502):
    """The backend refused, was unreachable, or failed before answering (502)."""


class ServiceUnavailable(VespaError, status=503):
    """Vespa cannot serve now (503); ``Retry-After`` says when to try again."""


class BackendTimeout(VespaError, status=504):
    """The backend did not connect, answer, or send data in time (504)."""


#: RFC 9110 names where Python's table still has the older ones (before 3.13).
_RFC9110_PHRASES = {
    413: "Content Too Large",
    416: "Range Not Satisfiable",
    422: "Unprocessable Content",
}


def status_phrase(status: int) -> bytes:
    """
    The reason phrase of ``status`` (RFC 9110), for a status line.

    twisted.web knows no phrase for several codes Vespa sends (422, 429) and
    would write ``Unknown Status``.

    :param status: an HTTP status code.
    :return: its phrase, or ``b""`` for a code without one.
    """
    phrase = _RFC9110_PHRASES.get(status)
    if phrase is None:
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = ""
    return phrase.encode("ascii")


def _error_headers(error: VespaError, length: int) -> list[tuple[bytes, bytes]]:
    headers = [
        (b"Content-Type", b"application/json"),
        (b"Content-Length", b"%d" % (length,)),
        # Tells a client this answer is Vespa's own, not the model server's: a
        # worker's 503 is worth retrying elsewhere, a backend's 500 is not.
        (b"X-Vespa-Origin", error.origin.encode("ascii")),
    ]
    headers += [
        (name.encode("ascii"), value.encode("latin-1")) for name, value in error.headers.items()
    ]
    return headers


def write_error(request: IRequest, error: VespaError) -> bytes:
    """
    Set the status and headers of ``request`` for ``error`` and return its body.

    The caller writes the returned bytes (or returns them from ``render``).

    :param request: the request being answered; nothing must have been written yet.
    :param error: the error to answer with.
    :return: the JSON body.
    """
    body = json.dumps(error.body()).encode("utf-8")
    request.setResponseCode(error.status, status_phrase(error.status))
    for name, value in _error_headers(error, len(body)):
        request.responseHeaders.setRawHeaders(name, [value])
    return body


def error_response(error: VespaError) -> bytes:
    """
    A whole HTTP/1.1 response for ``error`` that closes the connection.

    For the answers written to a connection directly, before a request exists
    or instead of one (a malformed request line, a header deadline, a body
    over the limit).

    :param error: the error to answer with.
    :return: the status line, headers and JSON body.
    """
    body = json.dumps(error.body()).encode("utf-8")
    lines = [b"HTTP/1.1 %d %s" % (error.status, status_phrase(error.status))]
    lines += [name + b": " + value for name, value in _error_headers(error, len(body))]
    lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + body
