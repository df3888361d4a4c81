"""
End-to-end: a client, the worker, and a real backend, all on loopback sockets.
"""

from __future__ import annotations

import gzip
import json
import socket
from collections.abc import Callable

from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import TestCase
from twisted.web.iweb import IResponse

from tests.support import HTTPClient, raw_connect, start_echo_backend, start_worker
from vespa.worker.ledger import Outcome


def _headers(echo: dict[str, object]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, value in echo["headers"]:  # type: ignore[union-attr, misc]
        out.setdefault(name.lower(), []).append(value)
    return out


class TransparencyTests(TestCase):
    """The backend sees the client's request, and the client the backend's response."""

    def setUp(self) -> None:
        self.backend, self.backend_port = start_echo_backend(self)
        _, self.port = start_worker(self, self.backend_port)
        self.client = HTTPClient(self, self.port)

    async def test_every_method_is_forwarded_as_itself(self) -> None:
        """GET, POST, PUT, PATCH, DELETE and OPTIONS reach the backend unchanged, with bodies."""
        for method in (b"GET", b"POST", b"PUT", b"PATCH", b"DELETE", b"OPTIONS"):
            body = b'{"m": "%s"}' % (method,) if method in (b"POST", b"PUT", b"PATCH") else None
            response, echo = await self.client.json(method, b"/echo/x", body=body)
            self.assertEqual(response.code, 200)
            self.assertEqual(echo["method"], method.decode())
            self.assertEqual(echo["body"], (body or b"").decode())

    async def test_head_is_forwarded_as_head(self) -> None:
        """HEAD reaches the backend as HEAD (the original sent it as POST), with no body back."""
        response, body = await self.client.request(b"HEAD", b"/echo/head")
        self.assertEqual(response.code, 200)
        self.assertEqual(body, b"")
        self.assertEqual(self.backend.received[-1], (b"HEAD", b"/echo/head"))

    async def test_path_and_query_are_byte_identical(self) -> None:
        """Odd paths and repeated query parameters arrive exactly as sent."""
        target = b"/echo/a//b/%2F/x%20y/..%2Fz?q=a%20b&q=%7e&r&q=3"
        _, echo = await self.client.json(b"GET", target)
        self.assertEqual(echo["uri"], target.decode())

    async def test_end_to_end_headers_kept_hop_by_hop_removed(self) -> None:
        """Custom and repeated headers pass; hop-by-hop ones, and those Connection names, do not."""
        _, echo = await self.client.json(
            b"GET",
            b"/echo",
            headers={
                b"Authorization": [b"Bearer abc"],
                b"X-Custom": [b"one", b"two"],
                b"Connection": [b"X-Secret-Hop"],
                b"X-Secret-Hop": [b"hidden"],
                b"Keep-Alive": [b"timeout=5"],
                b"Proxy-Authorization": [b"Basic eA=="],
                b"TE": [b"trailers"],
                b"Host": [b"client.example"],
                b"X-Forwarded-For": [b"10.1.2.3"],
            },
        )
        headers = _headers(echo)
        self.assertEqual(headers["authorization"], ["Bearer abc"])
        self.assertEqual(headers["x-custom"], ["one", "two"])
        for hop in ("x-secret-hop", "keep-alive", "proxy-authorization", "te"):
            self.assertNotIn(hop, headers)
        self.assertEqual(headers["host"], ["127.0.0.1:%d" % (self.backend_port,)])
        self.assertEqual(headers["x-forwarded-for"], ["10.1.2.3, 127.0.0.1"])
        self.assertEqual(headers["x-forwarded-host"], ["client.example"])
        self.assertEqual(headers["x-forwarded-proto"], ["http"])

    async def test_status_reason_and_headers_come_back(self) -> None:
        """A backend 4xx/5xx passes through untouched: status, headers and body."""
        for code in (404, 418, 500, 503):
            response, body = await self.client.request(b"GET", b"/status/%d" % (code,))
            self.assertEqual(response.code, code)
            self.assertEqual(json.loads(body), {"status": code, "from": "backend"})
            self.assertEqual(response.headers.getRawHeaders(b"x-backend"), [b"echo"])

    async def test_gzip_body_is_never_decoded(self) -> None:
        """A gzip-encoded body arrives byte for byte, still encoded."""
        response, body = await self.client.request(b"GET", b"/gzip")
        self.assertEqual(response.headers.getRawHeaders(b"content-encoding"), [b"gzip"])
        self.assertEqual(body, gzip.compress(b"hello, compressed world\n" * 20, mtime=0))

    async def test_redirect_is_never_followed(self) -> None:
        """A 302 comes back as a 302 with its Location; the backend saw one request."""
        response, _ = await self.client.request(b"GET", b"/redirect")
        self.assertEqual(response.code, 302)
        self.assertEqual(response.headers.getRawHeaders(b"location"), [b"/echo"])
        self.assertEqual([uri for _, uri in self.backend.received], [b"/redirect"])

    async def test_cookies_are_never_stored(self) -> None:
        """Set-Cookie headers reach the client; the next request carries no cookie."""
        response, _ = await self.client.request(b"GET", b"/cookie")
        self.assertEqual(
            response.headers.getRawHeaders(b"set-cookie"), [b"sid=SECRET; HttpOnly", b"theme=dark"]
        )
        _, echo = await self.client.json(b"GET", b"/echo")
        self.assertNotIn("cookie", _headers(echo))

    async def test_fixed_length_body_keeps_its_length(self) -> None:
        """A Content-Length response is relayed with the same length and bytes, not chunked."""
        client = await raw_connect(self.port)
        client.transport.write(
            b"GET /fixed?size=100000 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        await client.closed
        head, _, body = client.data.partition(b"\r\n\r\n")
        self.assertIn(b"Content-Length: 100000", head)
        self.assertNotIn(b"chunked", head.lower())
        self.assertEqual(body, bytes(i % 251 for i in range(100000)))


def _chunked_complete(data: bytes) -> bool:
    """Whether a raw chunked HTTP/1.1 response ended with its terminating chunk."""
    return data.endswith(b"\r\n0\r\n\r\n")


class StreamingTests(TestCase):
    """Bodies stream through chunk by chunk, with backpressure and cancellation."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.backend, backend_port = start_echo_backend(self, self.clock)
        self.worker, self.port = start_worker(self, backend_port)

    async def _stream_one_event_at_a_time(self, path: bytes, marker: bytes) -> bytes:
        client = await raw_connect(self.port)
        client.transport.write(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % (path,))
        for n in range(5):
            if n:
                self.clock.advance(1)
            await client.wait_for(marker % (n,))
            # The next event has not been produced yet, so this one came alone,
            # as soon as the backend wrote it.
            self.assertNotIn(marker % (n + 1,), client.data)
        await client.wait_for(b"\r\n0\r\n\r\n")
        client.transport.loseConnection()
        return client.data

    async def test_sse_events_arrive_as_they_are_produced(self) -> None:
        """Each SSE event reaches the client when the backend sends it, not at the end."""
        data = await self._stream_one_event_at_a_time(b"/stream?n=5&interval=1", b'data: {"n": %d}')
        self.assertIn(b"content-type: text/event-stream", data.lower())
        self.assertIn(b"transfer-encoding: chunked", data.lower())

    async def test_ndjson_lines_arrive_as_they_are_produced(self) -> None:
        """NDJSON streams the same way."""
        await self._stream_one_event_at_a_time(b"/ndjson?n=5&interval=1", b'{"n": %d}\n')

    async def test_slow_client_pauses_the_backend(self) -> None:
        """A client that stops reading stops the backend's writes; memory stays bounded."""
        size = 96 << 20
        client = await raw_connect(self.port)
        client.transport.pauseProducing()
        client.transport.write(b"GET /big?size=%d HTTP/1.1\r\nHost: x\r\n\r\n" % (size,))
        produced = await _settled(lambda: self.backend.big_bytes_produced)
        # Only socket buffers' worth is in flight: the rest was never produced.
        self.assertLess(produced, 32 << 20)
        client.transport.resumeProducing()
        await client.wait_for(b"\r\n0\r\n\r\n")
        self.assertEqual(self.backend.big_bytes_produced, size)
        client.transport.loseConnection()

    async def test_client_gone_mid_stream_closes_the_backend_request(self) -> None:
        """A client that disconnects mid-stream makes the backend see a disconnect at once."""
        client = await raw_connect(self.port)
        client.transport.write(b"GET /stream?n=1000&interval=1 HTTP/1.1\r\nHost: x\r\n\r\n")
        await client.wait_for(b'data: {"n": 0}')
        client.transport.loseConnection()
        await self.backend.wait_for_disconnect(b"/stream")
        self.assertEqual(self.clock.getDelayedCalls(), [])  # the backend stopped generating
        await _until(lambda: self.worker.ledger.totals[Outcome.CANCELLED].requests == 1)
        self.assertEqual(self.worker.ledger.in_flight_count, 0)

    async def test_client_gone_before_response_closes_the_backend_request(self) -> None:
        """A client that disconnects while the backend is still working cancels it."""
        client = await raw_connect(self.port)
        client.transport.write(b"POST /hang HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
        await self.backend.wait_for_request(b"/hang")
        client.transport.loseConnection()
        await self.backend.wait_for_disconnect(b"/hang")
        await _until(lambda: self.worker.ledger.totals[Outcome.CANCELLED].requests == 1)
        self.assertEqual(self.worker.ledger.in_flight_count, 0)


async def _until(condition: Callable[[], object], timeout: float = 5.0) -> None:
    """Let the reactor run until ``condition()`` is true (bounded)."""
    deadline = reactor.seconds() + timeout
    while not condition():
        if reactor.seconds() > deadline:
            raise AssertionError("condition not reached in time")
        await deferLater(reactor, 0.005, lambda: None)


async def _settled(read: Callable[[], int], timeout: float = 10.0) -> int:
    """Let the reactor run until ``read()`` stops changing for 0.2 s (bounded)."""
    deadline = reactor.seconds() + timeout
    last, stable_since = read(), reactor.seconds()
    while reactor.seconds() - stable_since < 0.2:
        if reactor.seconds() > deadline:
            raise AssertionError("value did not settle")
        await deferLater(reactor, 0.02, lambda: None)
        if read() != last:
            last, stable_since = read(), reactor.seconds()
    return last


class ErrorTests(TestCase):
    timeout = 15
    """Each failure gets its status and a JSON body from Vespa, or an abnormal end."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.backend, self.backend_port = start_echo_backend(self)

    def _worker(self, **overrides: object) -> HTTPClient:
        self.worker, self.port = start_worker(
            self, self.backend_port, clock=self.clock, **overrides
        )
        return HTTPClient(self, self.port)

    def _assert_vespa_error(self, response: IResponse, body: bytes, status: int) -> dict[str, str]:
        self.assertEqual(response.code, status)
        self.assertEqual(response.headers.getRawHeaders(b"content-type"), [b"application/json"])
        error = json.loads(body)
        self.assertEqual(error["origin"], "vespa")
        self.assertIsInstance(error["error"], str)
        return error  # type: ignore[no-any-return]

    async def test_backend_refused_is_502(self) -> None:
        """A backend that refuses connections gives 502 naming the backend."""
        closed = reactor.listenTCP(0, Factory(), interface="127.0.0.1")
        port = closed.getHost().port
        await closed.stopListening()
        self.backend_port = port
        client = self._worker()
        response, body = await client.request(b"POST", b"/v1/completions", body=b"{}")
        error = self._assert_vespa_error(response, body, 502)
        self.assertIn("refused", error["error"])

    async def test_backend_closes_before_answering_is_502(self) -> None:
        """A backend that drops the connection without a response gives 502."""
        client = self._worker()
        response, body = await client.request(b"GET", b"/die-before")
        self._assert_vespa_error(response, body, 502)

    async def test_connect_timeout_is_504(self) -> None:
        """A backend that never accepts the connection gives 504 after the connect timeout."""
        # A listener with a full accept queue drops further SYNs: connecting hangs.
        sock = socket.socket()
        self.addCleanup(sock.close)
        sock.bind(("127.0.0.1", 0))
        sock.listen(0)
        fillers = []
        for _ in range(4):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(sock.getsockname())
            fillers.append(filler)
            self.addCleanup(filler.close)
        self.backend_port = sock.getsockname()[1]
        client = self._worker(connect_timeout=0.2)
        response, body = await client.request(b"GET", b"/echo")
        error = self._assert_vespa_error(response, body, 504)
        self.assertIn("connecting", error["error"])

    async def test_first_byte_timeout_is_504_and_cancels_the_backend(self) -> None:
        """No response headers within the first-byte timeout gives 504; the backend sees a close."""
        client = self._worker(first_byte_timeout=30.0)
        answer = ensureDeferred(client.request(b"POST", b"/hang", body=b"{}"))
        await self.backend.wait_for_request(b"/hang")
        self.clock.advance(29)
        self.assertEqual(self.backend.disconnects, [])
        self.clock.advance(1)
        response, body = await answer
        error = self._assert_vespa_error(response, body, 504)
        self.assertIn("30 s", error["error"])
        await self.backend.wait_for_disconnect(b"/hang")

    async def test_idle_timeout_before_any_body_is_504(self) -> None:
        """Headers and then silence: nothing reached the client yet, so it gets a clean 504."""
        client = self._worker(idle_timeout=5.0, first_byte_timeout=None)
        answer = ensureDeferred(client.request(b"GET", b"/headers-only"))
        await self.backend.wait_for_request(b"/headers-only")
        await _until(lambda: self.clock.getDelayedCalls())  # the idle timer is armed
        self.clock.advance(5)
        response, body = await answer
        self._assert_vespa_error(response, body, 504)
        await self.backend.wait_for_disconnect(b"/headers-only")

    async def test_idle_timeout_mid_stream_ends_the_stream_abnormally(self) -> None:
        """Silence after data has been relayed: the client's stream is cut, never completed."""
        self._worker(idle_timeout=5.0)
        client = await raw_connect(self.port)
        client.transport.write(b"GET /stall HTTP/1.1\r\nHost: x\r\n\r\n")
        await client.wait_for(b"data: first")
        self.clock.advance(5)
        await client.closed
        self.assertTrue(client.data.startswith(b"HTTP/1.1 200 "))
        self.assertFalse(_chunked_complete(client.data))

    async def test_backend_dies_mid_stream_ends_the_stream_abnormally(self) -> None:
        """A backend that dies mid-response: chunked encoding not terminated, connection closed."""
        self._worker()
        client = await raw_connect(self.port)
        client.transport.write(b"GET /die HTTP/1.1\r\nHost: x\r\n\r\n")
        await client.closed
        self.assertIn(b"data: first", client.data)
        self.assertFalse(_chunked_complete(client.data))
        await _until(lambda: self.worker.ledger.totals[Outcome.ERRORED].requests == 1)

    async def test_total_timeout_cuts_a_long_stream(self) -> None:
        """With a total timeout, a stream that runs past it is cut abnormally."""
        self._worker(total_timeout=60.0)
        client = await raw_connect(self.port)
        client.transport.write(b"GET /stall HTTP/1.1\r\nHost: x\r\n\r\n")
        await client.wait_for(b"data: first")
        self.clock.advance(60)
        await client.closed
        self.assertFalse(_chunked_complete(client.data))

    async def test_body_over_limit_is_413_before_it_is_read(self) -> None:
        """A declared body over --max-body-size gets 413 at once and is never forwarded."""
        self._worker(max_body_size=1000)
        client = await raw_connect(self.port)
        client.transport.write(
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5000000\r\n\r\n" + b"x" * 1000
        )
        await client.closed
        head, _, body = client.data.partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 413 "))
        self.assertEqual(json.loads(body)["origin"], "vespa")
        self.assertEqual(self.backend.received, [])

    async def test_chunked_body_over_limit_is_413(self) -> None:
        """A chunked body is counted as it arrives and refused once over the limit."""
        self._worker(max_body_size=1000)
        client = await raw_connect(self.port)
        client.transport.write(
            b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"400\r\n"
            + b"y" * 1024
            + b"\r\n"
        )
        await client.closed
        self.assertTrue(client.data.startswith(b"HTTP/1.1 413 "))
        self.assertEqual(self.backend.received, [])

    async def test_body_at_limit_is_forwarded(self) -> None:
        """A body exactly at the limit is relayed intact."""
        client = self._worker(max_body_size=1000)
        _, echo = await client.json(b"POST", b"/echo", body=b"z" * 1000)
        self.assertEqual(echo["body"], "z" * 1000)

    async def test_large_body_streams_from_its_temporary_file(self) -> None:
        """A multi-megabyte upload (stored in a temporary file) reaches the backend intact."""
        client = self._worker()
        payload = bytes(range(256)) * 20000
        _, echo = await client.json(b"PUT", b"/echo", body=payload)
        self.assertEqual(echo["body"].encode("latin-1"), payload)

    async def test_blocked_paths_are_403(self) -> None:
        """Blocked paths, with wildcards and however encoded, get 403 and are not forwarded."""
        client = self._worker(blocked_paths=("/admin/*", "/debug", "/v?/secret"))
        for target in (
            b"/admin/users",
            b"//%61dmin/x",
            b"/x/../admin/y",
            b"/debug",
            b"/debug?a=1",
            b"/v1/secret",
        ):
            response, body = await client.request(b"GET", target)
            self._assert_vespa_error(response, body, 403)
        self.assertEqual(self.backend.received, [])
        response, _ = await client.request(b"GET", b"/echo/admin")
        self.assertEqual(response.code, 200)

    async def test_connect_and_trace_are_refused(self) -> None:
        """CONNECT and TRACE are not relayed (no tunnels, no header echo)."""
        client = self._worker()
        response, body = await client.request(b"TRACE", b"/echo")
        self._assert_vespa_error(response, body, 405)
        self.assertEqual(self.backend.received, [])


class TargetTests(TestCase):
    """Only the configured backend ever receives traffic; local routes stay local."""

    def setUp(self) -> None:
        self.backend, backend_port = start_echo_backend(self)
        self.worker, self.port = start_worker(self, backend_port)

    async def _raw(self, request: bytes) -> bytes:
        client = await raw_connect(self.port)
        client.transport.write(request)
        await client.closed
        return client.data

    async def test_absolute_form_target_goes_to_the_backend(self) -> None:
        """An absolute-form target for another host is relayed to the backend, as its path."""
        data = await self._raw(
            b"GET http://169.254.169.254/echo/meta?x=1 HTTP/1.1\r\nHost: 169.254.169.254\r\n"
            b"Connection: close\r\n\r\n"
        )
        self.assertTrue(data.startswith(b"HTTP/1.1 200 "))
        self.assertEqual(self.backend.received, [(b"GET", b"/echo/meta?x=1")])
        echo = json.loads(data.partition(b"\r\n\r\n")[2])
        self.assertIn(["Host", "127.0.0.1:%d" % (self.backend_port_of(),)], echo["headers"])

    def backend_port_of(self) -> int:
        return self.worker.relay.origin.port

    async def test_asterisk_target_is_answered_locally(self) -> None:
        """``OPTIONS *`` asks about the server itself: answered by Vespa, not relayed."""
        data = await self._raw(b"OPTIONS * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        self.assertTrue(data.startswith(b"HTTP/1.1 200 "))
        self.assertEqual(self.backend.received, [])

    async def test_ping_is_answered_locally(self) -> None:
        """GET /ping answers pong without touching the backend."""
        client = HTTPClient(self, self.port)
        response, body = await client.request(b"GET", b"/ping")
        self.assertEqual((response.code, body), (200, b"pong"))
        self.assertEqual(self.backend.received, [])

    async def test_pooled_connections_are_reused(self) -> None:
        """Sequential requests reuse one kept-alive backend connection, with TCP_NODELAY."""
        client = HTTPClient(self, self.port, pooled=True)
        pool = self.worker.relay.pool
        seen = set()
        for _ in range(5):
            await client.request(b"GET", b"/echo")
            seen.update(pool.idle_connections)
        # One connection carried all five, and is idle in the pool again.
        self.assertEqual(len(seen), 1)
        connections = pool.idle_connections
        self.assertEqual(len(connections), 1)
        # Small SSE events must not wait for Nagle's algorithm on the backend leg.
        backend_socket = connections[0].transport.getHandle()  # type: ignore[union-attr]
        self.assertTrue(backend_socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
