"""
Tests for :mod:`vespa.http.headers`: what the backend and the client see of
each other's headers.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers

from vespa.http.headers import copy_response_headers, request_headers

#: Property tests run in memory only: no example database left in the checkout.
PROPERTY = settings(database=None, deadline=None)

HOP_BY_HOP_NAMES = (
    b"Connection",
    b"Keep-Alive",
    b"Proxy-Authenticate",
    b"Proxy-Authorization",
    b"Proxy-Connection",
    b"TE",
    b"Trailer",
    b"Transfer-Encoding",
    b"Upgrade",
)

#: The same, as the lower-case names :meth:`Headers.getAllRawHeaders` compares equal to.
HOP_BY_HOP = frozenset(name.lower() for name in HOP_BY_HOP_NAMES)

#: The headers Vespa writes itself on a forwarded request.
VESPA_SETS = frozenset({b"host", b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host"})

#: Headers removed from requests although they are not hop-by-hop.
REQUEST_ONLY = frozenset({b"host", b"content-length", b"expect"})


def make_headers(*pairs: tuple[bytes, bytes]) -> Headers:
    """Build headers from ``(name, value)`` pairs, in order, repeats kept."""
    headers = Headers()
    for name, value in pairs:
        headers.addRawHeader(name, value)
    return headers


def raw(headers: Headers) -> list[tuple[bytes, list[bytes]]]:
    """Every header as ``(lower-case name, values)``, in order."""
    return [(name.lower(), list(values)) for name, values in headers.getAllRawHeaders()]


def forward(
    *pairs: tuple[bytes, bytes],
    host: bytes = b"127.0.0.1:8000",
    client_ip: bytes | None = b"203.0.113.7",
    proto: bytes = b"http",
) -> Headers:
    """The headers :func:`request_headers` sends for a request with ``pairs``."""
    return request_headers(make_headers(*pairs), host=host, client_ip=client_ip, proto=proto)


class RequestHeadersTests(SynchronousTestCase):
    """
    Tests for :func:`request_headers`.
    """

    def test_hop_by_hop_dropped(self) -> None:
        """
        Each hop-by-hop header of the client's connection is not forwarded,
        whatever its case; the end-to-end headers around it are.
        """
        for name in HOP_BY_HOP_NAMES:
            for spelled in (name, name.lower(), name.upper()):
                out = forward(
                    (b"Accept", b"*/*"), (spelled, b"value"), (b"Content-Type", b"text/plain")
                )
                self.assertFalse(out.hasHeader(name), spelled)
                self.assertEqual(out.getRawHeaders(b"accept"), [b"*/*"])
                self.assertEqual(out.getRawHeaders(b"content-type"), [b"text/plain"])

    def test_connection_named_dropped(self) -> None:
        """
        Every header named in ``Connection`` is dropped: names are
        case-insensitive, comma lists may have blanks and empty items, and
        there may be several ``Connection`` headers.
        """
        out = forward(
            (b"Connection", b"X-Secret,  x-session-token ,,"),
            (b"X-Secret", b"1"),
            (b"X-Session-Token", b"2"),
            (b"connection", b"X-THIRD"),
            (b"x-third", b"3"),
            (b"X-Kept", b"4"),
        )
        self.assertFalse(out.hasHeader(b"x-secret"))
        self.assertFalse(out.hasHeader(b"x-session-token"))
        self.assertFalse(out.hasHeader(b"x-third"))
        self.assertFalse(out.hasHeader(b"connection"))
        self.assertEqual(out.getRawHeaders(b"x-kept"), [b"4"])

    def test_connection_named_end_to_end(self) -> None:
        """
        A normally end-to-end header (``Authorization``) named in
        ``Connection`` is dropped too.
        """
        out = forward((b"Authorization", b"Bearer x"), (b"Connection", b"authorization"))
        self.assertFalse(out.hasHeader(b"authorization"))

    def test_request_only_dropped(self) -> None:
        """
        The client's ``Content-Length`` and ``Expect`` are not forwarded: the
        relay frames the body and has answered any ``100-continue`` itself.
        """
        out = forward(
            (b"Content-Length", b"5"), (b"Expect", b"100-continue"), (b"Content-Type", b"a/b")
        )
        self.assertFalse(out.hasHeader(b"content-length"))
        self.assertFalse(out.hasHeader(b"expect"))
        self.assertEqual(out.getRawHeaders(b"content-type"), [b"a/b"])

    def test_host(self) -> None:
        """
        ``Host`` is the backend's, once, whatever the client sent.
        """
        out = forward((b"Host", b"worker.example:3000"), host=b"[::1]:8000")
        self.assertEqual(out.getRawHeaders(b"host"), [b"[::1]:8000"])
        self.assertEqual(forward(host=b"backend").getRawHeaders(b"host"), [b"backend"])

    def test_forwarded_for_new(self) -> None:
        """
        Without an incoming ``X-Forwarded-For``, it is the client's address.
        """
        self.assertEqual(forward().getRawHeaders(b"x-forwarded-for"), [b"203.0.113.7"])

    def test_forwarded_for_appended(self) -> None:
        """
        The client's address is appended to an incoming ``X-Forwarded-For``.
        """
        out = forward((b"X-Forwarded-For", b"198.51.100.1, 10.0.0.2"))
        self.assertEqual(
            out.getRawHeaders(b"x-forwarded-for"), [b"198.51.100.1, 10.0.0.2, 203.0.113.7"]
        )

    def test_forwarded_for_joined(self) -> None:
        """
        Several incoming ``X-Forwarded-For`` headers are joined in order into
        one, with the client last.
        """
        out = forward(
            (b"X-Forwarded-For", b"198.51.100.1"),
            (b"Accept", b"*/*"),
            (b"x-forwarded-for", b"10.0.0.2"),
        )
        self.assertEqual(
            out.getRawHeaders(b"x-forwarded-for"), [b"198.51.100.1, 10.0.0.2, 203.0.113.7"]
        )

    def test_forwarded_for_unknown_client(self) -> None:
        """
        When the client's address is not known, an incoming ``X-Forwarded-For``
        is forwarded as it is, and none is made up.
        """
        out = forward((b"X-Forwarded-For", b"198.51.100.1"), client_ip=None)
        self.assertEqual(out.getRawHeaders(b"x-forwarded-for"), [b"198.51.100.1"])
        self.assertFalse(forward(client_ip=None).hasHeader(b"x-forwarded-for"))

    def test_forwarded_proto(self) -> None:
        """
        ``X-Forwarded-Proto`` says how the client connected; a client's own
        value is replaced.
        """
        out = forward((b"X-Forwarded-Proto", b"https"), proto=b"http")
        self.assertEqual(out.getRawHeaders(b"x-forwarded-proto"), [b"http"])
        out = forward(proto=b"https")
        self.assertEqual(out.getRawHeaders(b"x-forwarded-proto"), [b"https"])

    def test_forwarded_host(self) -> None:
        """
        ``X-Forwarded-Host`` is the ``Host`` the client sent; a client's own
        ``X-Forwarded-Host`` is replaced.
        """
        out = forward((b"X-Forwarded-Host", b"evil.example"), (b"Host", b"worker.example:3000"))
        self.assertEqual(out.getRawHeaders(b"x-forwarded-host"), [b"worker.example:3000"])

    def test_forwarded_host_without_host(self) -> None:
        """
        Without a client ``Host`` there is no ``X-Forwarded-Host``, even when the
        client sent one.
        """
        out = forward((b"X-Forwarded-Host", b"evil.example"))
        self.assertFalse(out.hasHeader(b"x-forwarded-host"))

    def test_repeats_kept_in_order(self) -> None:
        """
        Repeated end-to-end headers are forwarded with every value, in order,
        and the headers keep their order.
        """
        out = forward(
            (b"Accept", b"text/html"),
            (b"X-Custom", b"3"),
            (b"Accept", b"application/json"),
            (b"X-Custom", b"1"),
            (b"X-Custom", b"2"),
            (b"Authorization", b"Bearer token"),
        )
        self.assertEqual(
            raw(out)[:3],
            [
                (b"accept", [b"text/html", b"application/json"]),
                (b"x-custom", [b"3", b"1", b"2"]),
                (b"authorization", [b"Bearer token"]),
            ],
        )

    def test_incoming_unchanged(self) -> None:
        """
        The client's request headers are left as they were.
        """
        incoming = make_headers(
            (b"Host", b"w"), (b"Connection", b"x-a"), (b"X-A", b"1"), (b"X-Forwarded-For", b"f")
        )
        before = raw(incoming)
        request_headers(incoming, host=b"b", client_ip=b"1.2.3.4", proto=b"http")
        self.assertEqual(raw(incoming), before)

    @PROPERTY
    @given(st.data())
    def test_filtering(self, data: st.DataObject) -> None:
        """
        Whatever the client sends, no hop-by-hop header and no header named in
        ``Connection`` reaches the backend (other than the ones Vespa writes
        itself), and every other header arrives with all its values, in order.
        """
        names = st.sampled_from(
            [*HOP_BY_HOP_NAMES, b"Accept", b"Authorization", b"Cookie", b"X-A", b"X-B",
             b"Content-Type", b"Content-Length", b"Expect", b"User-Agent"]
        ).flatmap(lambda n: st.sampled_from([n, n.lower(), n.upper()]))
        values = st.binary(min_size=0, max_size=8).map(
            lambda b: bytes(c for c in b if 0x20 <= c < 0x7F)
        )
        connection = st.lists(
            st.tuples(names, st.sampled_from([b"", b" ", b"  "]), st.sampled_from([b"", b" "])),
            max_size=4,
        ).map(lambda items: b",".join(before + n + after for n, before, after in items))
        pairs = data.draw(
            st.lists(
                st.one_of(
                    st.tuples(names, values),
                    st.tuples(st.sampled_from([b"Connection", b"connection"]), connection),
                ),
                max_size=12,
            )
        )
        incoming = make_headers(*pairs)
        out = request_headers(incoming, host=b"backend", client_ip=b"10.0.0.1", proto=b"http")

        tokens = {
            token.strip().lower()
            for name, value in pairs
            if name.lower() == b"connection"
            for token in value.split(b",")
        }
        dropped = set(HOP_BY_HOP) | REQUEST_ONLY | tokens | VESPA_SETS
        for name, _ in raw(out):
            self.assertNotIn(name, HOP_BY_HOP)
            self.assertTrue(name not in tokens or name in VESPA_SETS, name)
        kept = [(name, values) for name, values in raw(incoming) if name not in dropped]
        self.assertEqual([(n, v) for n, v in raw(out) if n not in VESPA_SETS], kept)


class CopyResponseHeadersTests(SynchronousTestCase):
    """
    Tests for :func:`copy_response_headers`.
    """

    def vespa_response(self) -> Headers:
        """The headers Vespa's own response has before the backend's are copied."""
        return make_headers(
            (b"Date", b"Thu, 01 Jan 2026 00:00:01 GMT"),
            (b"Server", b"TwistedWeb/26.10.0"),
        )

    def test_hop_by_hop_removed(self) -> None:
        """
        The backend's hop-by-hop headers do not reach the client.
        """
        upstream = make_headers(
            *[(name, b"x") for name in HOP_BY_HOP_NAMES], (b"Content-Type", b"text/event-stream")
        )
        downstream = self.vespa_response()
        copy_response_headers(upstream, downstream)
        for name in HOP_BY_HOP_NAMES:
            self.assertFalse(downstream.hasHeader(name), name)
        self.assertEqual(downstream.getRawHeaders(b"content-type"), [b"text/event-stream"])

    def test_connection_named_removed(self) -> None:
        """
        Headers the backend names in ``Connection`` do not reach the client.
        """
        upstream = make_headers(
            (b"Connection", b"keep-alive, X-Backend-Conn"),
            (b"connection", b" X-OTHER "),
            (b"X-Backend-Conn", b"1"),
            (b"X-Other", b"2"),
            (b"X-Request-Id", b"abc"),
        )
        downstream = self.vespa_response()
        copy_response_headers(upstream, downstream)
        self.assertFalse(downstream.hasHeader(b"x-backend-conn"))
        self.assertFalse(downstream.hasHeader(b"x-other"))
        self.assertEqual(downstream.getRawHeaders(b"x-request-id"), [b"abc"])

    def test_date_replaced(self) -> None:
        """
        The backend's ``Date`` replaces Vespa's: the client sees one ``Date``.
        """
        downstream = self.vespa_response()
        copy_response_headers(make_headers((b"date", b"Wed, 31 Dec 2025 23:59:59 GMT")), downstream)
        self.assertEqual(downstream.getRawHeaders(b"date"), [b"Wed, 31 Dec 2025 23:59:59 GMT"])

    def test_date_kept(self) -> None:
        """
        When the backend sends no ``Date``, Vespa's stays.
        """
        downstream = self.vespa_response()
        copy_response_headers(make_headers((b"Content-Type", b"a/b")), downstream)
        self.assertEqual(downstream.getRawHeaders(b"date"), [b"Thu, 01 Jan 2026 00:00:01 GMT"])

    def test_server_removed(self) -> None:
        """
        Vespa's ``Server`` header is removed: the client sees the backend's, or none.
        """
        downstream = self.vespa_response()
        copy_response_headers(make_headers((b"Content-Type", b"a/b")), downstream)
        self.assertFalse(downstream.hasHeader(b"server"))
        downstream = self.vespa_response()
        copy_response_headers(make_headers((b"Server", b"uvicorn")), downstream)
        self.assertEqual(downstream.getRawHeaders(b"server"), [b"uvicorn"])

    def test_set_cookie_repeated(self) -> None:
        """
        Several ``Set-Cookie`` headers all reach the client, in order, unmerged.
        """
        upstream = make_headers(
            (b"Set-Cookie", b"a=1; Path=/"),
            (b"Content-Type", b"a/b"),
            (b"set-cookie", b"b=2, c=3; Expires=Wed, 21 Oct 2026 07:28:00 GMT"),
        )
        downstream = self.vespa_response()
        copy_response_headers(upstream, downstream)
        self.assertEqual(
            downstream.getRawHeaders(b"set-cookie"),
            [b"a=1; Path=/", b"b=2, c=3; Expires=Wed, 21 Oct 2026 07:28:00 GMT"],
        )

    def test_end_to_end_kept(self) -> None:
        """
        The backend's end-to-end headers, ``Content-Length`` included, reach
        the client as they are.
        """
        upstream = make_headers(
            (b"Content-Length", b"12"), (b"Content-Type", b"application/json"),
            (b"Cache-Control", b"no-cache"), (b"Vary", b"Accept"), (b"Vary", b"Origin"),
        )
        downstream = self.vespa_response()
        copy_response_headers(upstream, downstream)
        for name, values in raw(upstream):
            self.assertEqual(downstream.getRawHeaders(name), values, name)

    def test_upstream_unchanged(self) -> None:
        """
        The backend's response headers are left as they were.
        """
        upstream = make_headers((b"Connection", b"close"), (b"Date", b"d"), (b"X-A", b"1"))
        before = raw(upstream)
        copy_response_headers(upstream, self.vespa_response())
        self.assertEqual(raw(upstream), before)

    @PROPERTY
    @given(
        st.lists(
            st.tuples(
                st.sampled_from(
                    [*HOP_BY_HOP_NAMES, b"Date", b"Server", b"Set-Cookie", b"Content-Type",
                     b"Content-Length", b"X-A"]
                ),
                st.sampled_from([b"1", b"2", b"a=b", b"keep-alive", b"x-a", b"Set-Cookie"]),
            ),
            max_size=10,
        )
    )
    def test_copy(self, pairs: list[tuple[bytes, bytes]]) -> None:
        """
        After the copy, every end-to-end header of the backend has exactly the
        backend's values, no hop-by-hop or ``Connection``-named header of the
        backend is there, and ``Server`` is only there when the backend sent one.
        """
        upstream = make_headers(*pairs)
        downstream = self.vespa_response()
        copy_response_headers(upstream, downstream)
        tokens = {
            token.strip().lower()
            for value in upstream.getRawHeaders(b"connection", [])
            for token in value.split(b",")
        }
        for name, values in raw(upstream):
            if name in HOP_BY_HOP or name in tokens:
                if name != b"date":
                    self.assertFalse(downstream.hasHeader(name), name)
            else:
                self.assertEqual(downstream.getRawHeaders(name), values, name)
        if not upstream.hasHeader(b"server") or b"server" in tokens:
            self.assertFalse(downstream.hasHeader(b"server"))


class AuthorizationTests(SynchronousTestCase):
    """The caller's key is not the backend's: it can be removed, and the backend's own set."""

    def test_kept_by_default(self) -> None:
        """A transparent proxy passes the caller's Authorization."""
        out = forward((b"Authorization", b"Bearer caller"))
        self.assertEqual(out.getRawHeaders(b"authorization"), [b"Bearer caller"])

    def test_dropped(self) -> None:
        """``drop_authorization`` removes every Authorization header, whatever its case."""
        out = request_headers(
            make_headers((b"authorization", b"Bearer a"), (b"AUTHORIZATION", b"Bearer b")),
            host=b"h",
            client_ip=None,
            proto=b"http",
            drop_authorization=True,
        )
        self.assertFalse(out.hasHeader(b"authorization"))

    def test_backend_key_replaces_the_callers(self) -> None:
        """``authorization`` is the backend's one Authorization, with or without a caller's."""
        for pairs in ([(b"Authorization", b"Bearer caller")], []):
            for drop in (True, False):
                out = request_headers(
                    make_headers(*pairs),
                    host=b"h",
                    client_ip=None,
                    proto=b"http",
                    drop_authorization=drop,
                    authorization=b"Bearer backend",
                )
                self.assertEqual(out.getRawHeaders(b"authorization"), [b"Bearer backend"])
