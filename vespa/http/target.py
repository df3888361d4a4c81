# -*- test-case-name: tests.test_target -*-
"""
Request targets: what path is forwarded, whether a path is blocked, and
what is never forwarded (:func:`check_relayable`).

The forwarded target is always origin-form (``/path?query``), taken byte for
byte from the request line, so the backend sees exactly what the client sent.
An absolute-form target (``GET http://169.254.169.254/ HTTP/1.1``) keeps only
its path and query: Vespa talks to the configured backend and nothing else.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable
from fnmatch import fnmatchcase
from urllib.parse import unquote_to_bytes

from twisted.web.server import Request

from vespa.errors import BadRequest, BodyTooLarge, MethodNotAllowed
from vespa.http.site import ProxyRequest

_ABSOLUTE = re.compile(rb"^[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*")


def origin_form(uri: bytes) -> bytes:
    """
    The origin-form target to forward for a request-line target.

    :param uri: the target exactly as received.
    :return: ``/path?query``, never with a scheme or authority.
    :raise BadRequest: for a target that is not a path (``*``, garbage).
    """
    uri = uri.split(b"#", 1)[0]
    match = _ABSOLUTE.match(uri)
    if match is not None:
        uri = uri[match.end() :] or b"/"
        if uri.startswith(b"?"):
            uri = b"/" + uri
    if not uri.startswith(b"/"):
        raise BadRequest(f"the request target must be a path, got {uri[:80]!r}")
    return uri


def normalized_path(target: bytes) -> str:
    """
    The path a backend would route ``target`` to: percent-decoded, dot segments
    resolved and repeated slashes collapsed, so ``/a/../admin`` and ``//%61dmin``
    both read ``/admin``.

    :param target: an origin-form target.
    """
    raw = target.split(b"?", 1)[0]
    path = unquote_to_bytes(raw).decode("utf-8", "surrogateescape")
    path = re.sub(r"/{2,}", "/", path)
    normal = posixpath.normpath(path)
    # normpath drops a trailing slash, which patterns such as /admin/* rely on;
    # a last segment of "." or ".." names a directory too ("/admin/." is "/admin/").
    if path.endswith(("/", "/.", "/..")) and normal != "/":
        normal += "/"
    return normal


class PathBlocklist:
    """
    Path patterns refused with 403, using ``*`` and ``?`` wildcards.

    A pattern matches the normalized path (see :func:`normalized_path`), so
    encoding or dot segments cannot get around it. ``*`` also crosses ``/``:
    ``/admin/*`` blocks everything below ``/admin/``.

    :param patterns: the patterns, such as ``("/admin/*", "/debug")``.
    """

    def __init__(self, patterns: Iterable[str]) -> None:
        self.patterns = tuple(p if p.startswith(("/", "*")) else "/" + p for p in patterns)

    def __bool__(self) -> bool:
        return bool(self.patterns)

    def blocks(self, target: bytes) -> bool:
        """
        Whether ``target`` is blocked.

        :param target: an origin-form target, query included or not.
        """
        if not self.patterns:
            return False
        path = normalized_path(target)
        # "/debug" also blocks "/debug/", which most routers treat alike.
        bare = path.rstrip("/") or "/"
        return any(
            fnmatchcase(path, pattern) or fnmatchcase(bare, pattern) for pattern in self.patterns
        )


#: Methods never relayed: a tunnel or a trace is not a model-server request;
#: relaying either would make an open proxy or leak headers.
REFUSED_METHODS = frozenset({b"CONNECT", b"TRACE"})


def check_relayable(request: Request, verb: str) -> None:
    """
    Refuse what neither daemon passes on: ``CONNECT`` and ``TRACE``, and a
    body over the limit (:class:`ProxyRequest` has not kept it).

    :param request: the request.
    :param verb: what is not done to it, for the message: ``relayed``, ``proxied``.
    :raise MethodNotAllowed: a refused method (405).
    :raise BodyTooLarge: the body is over the limit (413).
    """
    if request.method in REFUSED_METHODS:
        raise MethodNotAllowed(
            f"{request.method.decode('ascii', 'replace')} is not {verb}",
            headers={"Allow": "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"},
        )
    if isinstance(request, ProxyRequest) and request.body_too_large:
        raise BodyTooLarge("the request body is over the limit")
