"""
twisted.web's header work done in one pass builds what twisted.web would: a
request head read whole (:mod:`vespa.http.request_head`) the same request as
its line parser, or is refused alike; a backend response's header lines
copied straight into the response's ``Headers``
(:func:`vespa.http.headers.copy_response_lines`) the same headers as
``removeHeader`` and ``addRawHeader`` line by line.
"""

from __future__ import annotations

import contextlib
from typing import Any
from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import Request

from vespa.http import request_head
from vespa.http.backend_response import parse_head
from vespa.http.headers import HOP_BY_HOP, connection_tokens, copy_response_lines
from vespa.http.request_head import parse_request_head
from vespa.http.site import ProxyChannel, ProxySite

from .support import connect_in_memory

#: A request every run ends with: it shows the connection's state after the first.
FOLLOW_UP = b"GET /next HTTP/1.1\r\nHost: y\r\n\r\n"

# Each part of a request: mostly well formed (the fast path's case), often not.
_TOKEN_BYTES = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_tokens = st.binary(min_size=1, max_size=6).map(
    lambda raw: bytes(_TOKEN_BYTES[byte % len(_TOKEN_BYTES)] for byte in raw)
)
_METHODS = [b"GET", b"POST", b"OPTIONS", b"PUT"]
_BAD_METHODS = [b"G@T", b"", b"PO ST", b"\r\nPOST", b"GET\n"]
_TARGETS = [b"/", b"/a?b=c&d", b"*", b"/%20x", b"/\x7f", b"/\xb0", b"/a/b/"]
_BAD_TARGETS = [b"", b"/\xb1", b"/a b", b"/\x00", b"/\t"]
_VERSIONS = [b"HTTP/1.1"] * 6 + [b"HTTP/1.0", b"HTTP/2.0", b"http/1.1", b"HTTP/1.1 "]
_NAMES = [
    b"Host",
    b"host",
    b"HOST",
    b"Content-Length",
    b"content-length",
    b"Content-Type",
    b"Connection",
    b"X-Request-Id",
    b"etag",
    b"te",
    b"dnt",
    b"Upgrade",
]
_BAD_NAMES = [b"Transfer-Encoding", b"Expect", b"Bad Name", b"", b"X:Y", b" Host", b"H\x00"]
_VALUES = [
    b"",
    b"x",
    b" x ",
    b"\t1\t",
    b"a \t b",
    b"0",
    b"3",
    b"12",
    b"close",
    b"keep-alive, Close",
    b"h2c",
    b"\xff\x80",
    b"\x7f\x01",
]
_BAD_VALUES = [b"-1", b"1 2", b"+1", b"chunked", b"100-continue", b"a\x00b", b"a\rb"]
_BODIES = [b"", b"abc", b"abcdefghijkl"]
_LINE_ENDS = [b"\r\n"] * 12 + [b"\n", b"\r\n ", b"\r\n\t", b"\r"]


def _mostly(good: list[bytes], bad: list[bytes], arbitrary: Any = None) -> Any:
    """Mostly one of ``good``, sometimes one of ``bad`` or arbitrary bytes."""
    return st.one_of(
        *[st.sampled_from(good)] * 8,
        st.sampled_from(bad),
        arbitrary if arbitrary is not None else st.binary(max_size=5),
    )


_header = st.tuples(
    _mostly(_NAMES, _BAD_NAMES, _tokens), _mostly(_VALUES, _BAD_VALUES), st.sampled_from(_LINE_ENDS)
)


@st.composite
def _requests(draw: Any) -> bytes:
    """A request as bytes: mostly well formed, often not, in every part."""
    method = draw(_mostly(_METHODS, _BAD_METHODS, _tokens))
    target = draw(_mostly(_TARGETS, _BAD_TARGETS))
    version = draw(st.sampled_from(_VERSIONS))
    headers = draw(st.lists(_header, max_size=6))
    body = draw(_mostly(_BODIES, [b"ab", b"abcd"], st.binary(max_size=14)))
    line = method + b" " + target + b" " + version + draw(st.sampled_from(_LINE_ENDS))
    lines = b"".join(name + b":" + value + end for name, value, end in headers)
    return draw(st.sampled_from([b"", b"", b"", b"\r\n"])) + line + lines + b"\r\n" + body


@st.composite
def _well_formed_requests(draw: Any) -> bytes:
    """A request whose every line is well formed (the fast path's own case, mostly)."""
    method = draw(st.one_of(st.sampled_from(_METHODS), _tokens))
    target = draw(st.sampled_from(_TARGETS))
    names = st.one_of(st.sampled_from(_NAMES), _tokens)
    headers = draw(st.lists(st.tuples(names, st.sampled_from(_VALUES)), max_size=6))
    lines = b"".join(name + b":" + value + b"\r\n" for name, value in headers)
    body = draw(st.sampled_from(_BODIES))
    return method + b" " + target + b" HTTP/1.1\r\n" + lines + b"\r\n" + body


class _Record(Resource):
    """Answers every request with 200 and records what it was."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[Any, ...]] = []

    def render(self, request: Request) -> bytes:
        assert request.content is not None
        self.seen.append(
            (
                request.method,
                request.uri,
                request.clientproto,
                [(name, list(vs)) for name, vs in request.requestHeaders.getAllRawHeaders()],
                request.content.read(),
            )
        )
        return b"ok"


def _serve(data: bytes, *, whole_heads: bool) -> tuple[list[tuple[Any, ...]], bytes, bool]:
    """
    What a site makes of ``data`` then :data:`FOLLOW_UP`: the requests its
    resource saw, the bytes it answered and whether it closed.
    """
    resource = _Record()
    site = ProxySite(
        resource, reactor=Clock(), max_body_size=10, header_timeout=15.0, keepalive_timeout=60.0
    )
    connection, transport = connect_in_memory(site)
    line_parser_only = mock.patch.object(ProxyChannel, "_whole_head", return_value=False)
    with contextlib.nullcontext() if whole_heads else line_parser_only:
        for read in (data, FOLLOW_UP):
            # A closing TCP transport reads no more (loseConnection stops reading).
            if not transport.disconnecting:
                connection.dataReceived(read)
    return resource.seen, transport.value(), transport.disconnecting


class SameRequestTests(TestCase):
    """Both parsers, the same outcome."""

    @settings(max_examples=400, deadline=None)
    @given(_requests())
    def test_any_head_builds_the_same_request_or_is_refused_alike(self, data: bytes) -> None:
        self.assertEqual(_serve(data, whole_heads=True), _serve(data, whole_heads=False))

    @settings(max_examples=300, deadline=None)
    @given(_well_formed_requests())
    def test_well_formed_heads_build_the_same_request(self, data: bytes) -> None:
        """The same, for heads whose lines are all well formed (most take the fast path)."""
        self.assertEqual(_serve(data, whole_heads=True), _serve(data, whole_heads=False))


class FastPathTests(TestCase):
    """Which requests take the fast path, and what it builds."""

    def test_a_common_post_is_read_without_the_line_parser(self) -> None:
        """A POST whose head and body come in one read never reaches ``lineReceived``."""
        data = (
            b"POST /generate?x=1 HTTP/1.1\r\nHost: w:8000\r\nContent-Type: application/json\r\n"
            b"X-Thing:  a  b \t\r\nx-thing: c\r\nContent-Length: 7\r\n\r\n{\"a\":1}"
        )
        with mock.patch.object(ProxyChannel, "lineReceived") as line_received:
            seen, answer, closed = _serve(data, whole_heads=True)
        line_received.assert_not_called()
        self.assertEqual(
            seen[0],
            (
                b"POST",
                b"/generate?x=1",
                b"HTTP/1.1",
                [
                    (b"Host", [b"w:8000"]),
                    (b"Content-Type", [b"application/json"]),
                    (b"X-Thing", [b"a  b", b"c"]),
                    (b"Content-Length", [b"7"]),
                ],
                b'{"a":1}',
            ),
        )
        self.assertEqual(len(seen), 2)
        self.assertEqual(answer.count(b"HTTP/1.1 200 OK"), 2)
        self.assertFalse(closed)

    def test_a_body_in_later_reads_is_completed(self) -> None:
        """Only the head need come whole: the body's rest goes through the length decoder."""
        resource = _Record()
        site = ProxySite(resource, reactor=Clock())
        connection, _ = connect_in_memory(site)
        connection.dataReceived(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\n\r\nab")
        self.assertEqual(resource.seen, [])
        connection.dataReceived(b"cdef")
        self.assertEqual(resource.seen[0][4], b"abcdef")

    def test_what_is_left_to_twisted_web(self) -> None:
        """The unusual cases are not read by the fast path at all."""
        limits = {"max_size": 16384, "max_headers": 500}
        for data in [
            b"GET / HTTP/1.1\r\nHost: x\r\n",  # not complete
            b"GET / HTTP/1.0\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\n",  # pipelined
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n",
            b"GET / HTTP/1.1\nHost: x\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
            b"POST / HTTP/1.1\r\nContent-Length: +1\r\n\r\nx",
            b"\r\nGET / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nX: " + b"y" * 16384 + b"\r\n\r\n",
        ]:
            self.assertIsNone(parse_request_head(data, **limits), data[:60])
        many = b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 501 + b"\r\n"
        self.assertIsNone(parse_request_head(many, **limits))
        self.assertIsNotNone(parse_request_head(b"GET / HTTP/1.1\r\n\r\n", **limits))


def _copied_line_by_line(
    lines: list[tuple[bytes, bytes]], downstream: Headers, drop: frozenset[bytes]
) -> None:
    """What copy_response_lines did before, through ``Headers``' own methods."""
    downstream.removeHeader(b"server")
    tokens = connection_tokens(value for name, value in lines if name.lower() == b"connection")
    drop = HOP_BY_HOP | tokens | drop
    replaced: set[bytes] = set()
    for name, value in lines:
        lower = name.lower()
        if lower in drop:
            continue
        if lower not in replaced:
            replaced.add(lower)
            downstream.removeHeader(lower)
        downstream.addRawHeader(name, value)


class ResponseHeadersTests(TestCase):
    """A backend's header lines, copied straight, give the headers ``Headers`` would."""

    @settings(max_examples=300, deadline=None)
    @given(
        st.lists(
            st.tuples(
                st.one_of(st.sampled_from([*_NAMES, b"date", b"Server", b"X-A"]), _tokens),
                st.one_of(st.sampled_from(_VALUES), st.binary(max_size=6)),
            ),
            max_size=8,
        )
    )
    def test_the_same_headers_in_the_same_order(self, lines: list[tuple[bytes, bytes]]) -> None:
        head = b"HTTP/1.1 200 OK\r\n" + b"".join(n + b": " + v + b"\r\n" for n, v in lines)
        try:
            received = parse_head(head + b"\r\n", head_request=False).headers
        except Exception:
            return  # not a head the backend client accepts: never copied
        drop = frozenset({b"content-length"})
        results = []
        for copy in (copy_response_lines, _copied_line_by_line):
            downstream = Headers({b"Date": [b"ours"], b"Server": [b"TwistedWeb"]})
            copy(received, downstream, drop=drop)
            results.append(list(downstream.getAllRawHeaders()))
        self.assertEqual(results[0], results[1])


class TwistedInternalsTests(TestCase):
    """The fast path sets twisted.web's parser state by its private names."""

    def test_the_installed_twisted_has_the_state_the_fast_path_sets(self) -> None:
        """
        On a Twisted release that renamed that state the fast path turns
        itself off (every head goes through twisted.web's parser): this
        fails then, so that the lost speed is noticed.
        """
        self.assertTrue(request_head.SUPPORTED)

    def test_without_that_state_every_head_is_left_to_twisted_web(self) -> None:
        """Turned off, the fast path reads nothing, even a plain request."""
        data = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
        limits = {"max_size": 16384, "max_headers": 500}
        self.assertIsNotNone(request_head.parse_request_head(data, **limits))
        with mock.patch.object(request_head, "SUPPORTED", False):
            self.assertIsNone(request_head.parse_request_head(data, **limits))
