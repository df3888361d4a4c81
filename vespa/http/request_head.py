# -*- test-case-name: tests.test_request_head,tests.test_site -*-
"""
A request head that arrives whole, read in one pass.

twisted.web parses a request head a line at a time: ``LineReceiver`` splits
each line, ``HTTPChannel.lineReceived`` and ``headerReceived`` check it and
``Headers.addRawHeader`` stores it, a few Python calls per line (about a fifth
of the worker's CPU per POST). Nearly every request's head arrives in one
read, so :func:`parse_request_head` checks the whole block with one compiled
regex and splits its header lines with another, as
:func:`vespa.http.backend_response.parse_head` does for responses, and
:func:`start_request` gives the channel exactly the state its own parser would
have built (the request, its headers, the body's length and decoder).

Anything unusual is left to twisted.web's own parser, which refuses or
accepts it as before: a head not complete in the read, bytes beyond the
body (pipelining), HTTP/1.0, ``Transfer-Encoding``, ``Expect``, folded or
bare-LF lines, an invalid line, a ``Content-Length`` that is repeated or not
digits, more headers or bytes than twisted.web allows, a leading empty line.
``tests.test_request_head`` checks, for arbitrary heads, that both paths
build the same request or refuse it alike. :func:`host_problem` is the
``Host`` rule the site applies to every request, however it was read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from twisted.web import http
from twisted.web.http import _IdentityTransferDecoder
from twisted.web.http_headers import Headers
from twisted.web.iweb import INonQueuedRequestFactory

from vespa._typing import HTTPChannel
from vespa.http.headers import canonical_name

__all__ = ["SUPPORTED", "RequestHead", "host_problem", "parse_request_head", "start_request"]

_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
# twisted.web's request line (``_parseRequestLine``): a token, a target of
# bytes 0x21-0xB0 (its check is ``c <= 32 or c > 176``), HTTP/1.1; then
# header lines, each a token, a colon and a value with no CR, LF or NUL.
_HEAD = re.compile(
    rb"(" + _TOKEN + rb") ([\x21-\xb0]+) (HTTP/1\.1)\r\n((?:" + _TOKEN + rb":[^\r\n\0]*\r\n)*)"
)
# One header line; the value without its leading spaces and tabs (a lazy
# match that also drops the trailing ones is four times slower: they are
# stripped apart, when there are any).
_HEADER = re.compile(rb"(" + _TOKEN + rb"):[ \t]*([^\r\n\0]*)\r\n")
# Header names whose request twisted.web's own parser handles.
_UNUSUAL = (b"Transfer-Encoding", b"Expect")


def _parser_state_as_expected() -> bool:
    # start_request sets twisted.web's parser state by its private names
    # (there is no public way to hand HTTPChannel a parsed head). Should a
    # Twisted release rename them, the fast path turns itself off and every
    # request goes through twisted.web's own parser, slower but right;
    # tests.test_request_head fails on such a release so that it is noticed.
    channel = http.HTTPChannel
    return (
        getattr(channel, "_HTTPChannel__first_line", None) == 1
        and callable(getattr(channel, "_finishRequestBody", None))
        and callable(getattr(channel, "allContentReceived", None))
        and callable(getattr(channel, "rawDataReceived", None))
        and isinstance(getattr(Headers(), "_rawHeaders", None), dict)
    )


#: Whether the installed twisted.web has the parser state the fast path sets.
SUPPORTED = _parser_state_as_expected()

#: Whether a request factory (a site's class) is twisted.web's "non-queued"
#: kind, by factory: the check is an interface lookup, the answer never changes.
_non_queued: dict[object, bool] = {}


@dataclass(slots=True)
class RequestHead:
    """
    A request head as twisted.web's parser would have read it.

    :ivar method: the method, as sent.
    :ivar target: the request target, as sent.
    :ivar version: the HTTP version (``HTTP/1.1``).
    :ivar headers: the headers as twisted.web stores them: canonical name to
        the values, in order of each name's first line.
    :ivar length: the body's ``Content-Length`` (0 without one).
    :ivar body: the bytes of the body that came with the head.
    """

    method: bytes
    target: bytes
    version: bytes
    headers: dict[bytes, list[bytes]]
    length: int
    body: bytes


def parse_request_head(
    data: bytes, *, max_size: int, max_headers: int
) -> RequestHead | None:
    """
    Read a request head from the first read of a request, or ``None`` when
    twisted.web's own parser must (see the module's docstring).

    :param data: the bytes read, from the request's first byte.
    :param max_size: the most bytes of request line and headers
        (``HTTPChannel.totalHeadersSize``; line ends not counted).
    :param max_headers: the most header lines (``HTTPChannel.maxHeaders``).
    """
    end = data.find(b"\r\n\r\n")
    if end < 0 or end > max_size or not SUPPORTED:
        return None
    match = _HEAD.fullmatch(data, 0, end + 2)
    if match is None:
        return None
    method, target, version, block = match.groups()
    lines: list[tuple[bytes, bytes]] = _HEADER.findall(block)
    if b" \r\n" in block or b"\t\r\n" in block:  # stripped as twisted.web does
        lines = [(name, value.rstrip(b" \t")) for name, value in lines]
    if len(lines) > max_headers:
        return None
    headers: dict[bytes, list[bytes]] = {}
    for name, value in lines:
        canonical = canonical_name(name)
        values = headers.get(canonical)
        if values is None:
            headers[canonical] = [value]
        else:
            values.append(value)
    body = data[end + 4 :]
    length = 0
    lengths = headers.get(b"Content-Length")
    if lengths is not None:
        if len(lengths) > 1 or not lengths[0].isdigit():
            return None
        length = int(lengths[0])
    if len(body) > length or _UNUSUAL[0] in headers or _UNUSUAL[1] in headers:
        return None
    return RequestHead(method, target, version, headers, length, body)


def start_request(channel: HTTPChannel, head: RequestHead) -> None:
    """
    Give ``channel`` the state twisted.web's parser builds from ``head``
    (``lineReceived`` through ``headerReceived`` for each line), then go on
    as it does at the head's end: ``allHeadersReceived``, then the body or
    ``allContentReceived``.

    :param channel: a channel at the start of a request (line mode, nothing
        buffered, no request in progress).
    :param head: what :func:`parse_request_head` read.
    """
    factory = channel.requestFactory
    non_queued = _non_queued.get(factory)
    if non_queued is None:
        non_queued = _non_queued[factory] = bool(INonQueuedRequestFactory.providedBy(factory))
    if non_queued:
        request = factory(channel)
    else:
        request = factory(channel, len(channel.requests))
    channel.requests.append(request)
    channel._HTTPChannel__first_line = 0  # type: ignore[attr-defined]
    channel._command = head.method
    channel._path = head.target
    channel._version = head.version
    # The values are checked and stripped as headerReceived would have; the
    # names are canonical: what addRawHeader would have stored, line by line.
    request.requestHeaders._rawHeaders = head.headers
    length = head.length
    if b"Content-Length" in head.headers:
        channel.length = length
        channel._transferDecoder = _IdentityTransferDecoder(
            length, request.handleContentChunk, channel._finishRequestBody
        )
    channel.allHeadersReceived()
    if length == 0:
        channel.allContentReceived()  # type: ignore[no-untyped-call]
        return
    channel.setRawMode()  # type: ignore[no-untyped-call]
    transport = channel.transport
    if head.body and not (transport is not None and transport.disconnecting):  # type: ignore[attr-defined]
        channel.rawDataReceived(head.body)


def host_problem(hosts: list[bytes] | None, version: bytes) -> str | None:
    """Why the ``Host`` headers of a request are not acceptable (RFC 9112 3.2), if they are not."""
    if hosts is not None and len(hosts) > 1:
        return "the request has more than one Host header"
    if hosts is None and version == b"HTTP/1.1":
        return "an HTTP/1.1 request must have a Host header"
    return None
