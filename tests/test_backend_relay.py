"""
End to end on loopback: the worker relays a chunked backend body as it is
(framing and all) to an HTTP/1.1 caller, decoded to an HTTP/1.0 or HTTP/2
caller, and ends a broken stream abnormally; the access log counts the
relayed bytes, a caller gone mid-stream closes the backend's connection, and
an https backend works alike. The backend here is mostly a raw TCP server
the test scripts write by write, so the reads the worker sees are the test's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import DataReceived, ResponseReceived, StreamEnded, StreamReset
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredQueue
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from tests.support import (
    HTTPClient,
    RawClient,
    listen,
    raw_connect,
    start_tls_worker,
    start_worker,
    until,
)
from tests.support_chunks import CHUNKS, FRAMED, LAST, RELAYED
from vespa.http.endpoints import Origin
from vespa.http.relay import BackendRelay, _BodyRelay
from vespa.http.site import ProxySite
from vespa.testing.echo_backend import echo_site
from vespa.tls import make_self_signed, server_options
from vespa.worker.tally import Outcome

CHUNKED_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
)


class _BackendConnection(Protocol):
    """One connection to the scripted backend: reports its request, writes what it is told."""

    def __init__(self, requests: DeferredQueue[_BackendConnection]) -> None:
        self._requests = requests
        self.head = b""
        self.lost: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        had = b"\r\n\r\n" in self.head
        self.head += data
        if not had and b"\r\n\r\n" in self.head:
            self._requests.put(self)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.lost.callback(None)


class _ScriptedBackend(Factory):
    def __init__(self) -> None:
        self.requests: DeferredQueue[_BackendConnection] = DeferredQueue()

    def buildProtocol(self, addr: Any) -> _BackendConnection:
        return _BackendConnection(self.requests)


def _body(answer: bytes) -> bytes:
    return answer.partition(b"\r\n\r\n")[2]


class RawPassthroughTests(TestCase):
    """An HTTP/1.1 caller gets the backend's chunks as they were framed."""

    timeout = 15

    def setUp(self) -> None:
        self.backend = _ScriptedBackend()
        _, self.port = start_worker(self, listen(self, self.backend))

    async def open_stream(self, port: int) -> tuple[RawClient, _BackendConnection]:
        """A caller's ``GET /sse`` through the worker on ``port``, and the backend's end of it."""
        client = await raw_connect(port)
        client.transport.write(b"GET /sse HTTP/1.1\r\nHost: x\r\n\r\n")
        return client, await self.backend.requests.get()

    async def test_chunks_reach_the_caller_byte_for_byte_however_they_are_read(self) -> None:
        """
        Odd sizes, extensions, chunks and size lines split across the
        backend's writes, trailers: the caller's body is the backend's
        framing as it was (extensions dropped), then twisted.web's own last
        chunk; the trailers stay behind.
        """
        client, backend = await self.open_stream(self.port)
        mid_data = FRAMED.index(b"0123") + 4
        ext_line = FRAMED.index(b"7 ; ext")
        plain_line = FRAMED.index(b"A\r\n")
        cuts = [mid_data, ext_line + 3, plain_line + 1, len(FRAMED)]
        # What the caller has once each write is relayed (a size line's
        # start waits for its end).
        seen = [
            RELAYED[: RELAYED.index(b"0123") + 4],
            RELAYED[: RELAYED.index(b"7\r\n")],
            RELAYED[: RELAYED.index(b"A\r\n")],
            RELAYED,
        ]
        backend.transport.write(CHUNKED_HEAD)
        for start, cut, relayed in zip([0, *cuts], cuts, seen, strict=False):
            backend.transport.write(FRAMED[start:cut])
            # Relayed before the next write, so the worker reads them apart.
            await client.wait_for(relayed)
        backend.transport.write(LAST)
        await client.wait_for(RELAYED + b"0\r\n\r\n")
        self.assertEqual(_body(client.data), RELAYED + b"0\r\n\r\n")
        self.assertIn(b"transfer-encoding: chunked", client.data.lower())
        client.transport.loseConnection()

    async def test_the_access_log_counts_the_relayed_bytes(self) -> None:
        """
        The chunks go to the caller's connection straight, past twisted.web's
        ``Request.write``: the access log still counts every byte of them.
        """
        log = Path(self.mktemp())
        _, port = start_worker(self, listen(self, self.backend), access_log=str(log))
        client, backend = await self.open_stream(port)
        backend.transport.write(CHUNKED_HEAD + FRAMED + LAST)
        await client.wait_for(RELAYED + b"0\r\n\r\n")
        client.transport.loseConnection()
        await until(lambda: log.exists() and log.read_text().count("\n") >= 1)
        self.assertIn(f'"GET /sse HTTP/1.1" 200 {len(RELAYED)} ', log.read_text())

    async def test_a_caller_gone_mid_stream_closes_the_backend(self) -> None:
        """
        The caller leaves mid-stream: the backend's connection is closed
        and the request is accounted as cancelled.
        """
        resource, port = start_worker(self, listen(self, self.backend))
        client, backend = await self.open_stream(port)
        backend.transport.write(CHUNKED_HEAD + b"5\r\nhello\r\n")
        await client.wait_for(b"5\r\nhello\r\n")
        client.transport.loseConnection()
        await client.closed
        backend.transport.write(b"5\r\nworld\r\n")
        await backend.lost
        await until(lambda: resource.ledger.totals[Outcome.CANCELLED].requests == 1)

    async def test_the_backend_reads_reach_its_connection_directly(self) -> None:
        """
        Once connected, the TCP transport hands each backend read to the
        relay's connection itself, not through Twisted's endpoint wrappers.
        """
        resource, port = start_worker(self, listen(self, self.backend))
        answer = Deferred.fromCoroutine(HTTPClient(self, port).request(b"GET", b"/sse"))
        backend = await self.backend.requests.get()
        backend.transport.write(CHUNKED_HEAD + FRAMED + LAST)
        _, body = await answer
        self.assertEqual(body, b"".join(CHUNKS))
        (connection,) = resource.relay.pool.idle_connections
        self.assertIs(connection.transport.protocol, connection)  # type: ignore[attr-defined]

    async def test_a_parsing_client_reads_the_relayed_framing(self) -> None:
        """A real HTTP client decodes the relayed chunks to the backend's payload."""
        answer = Deferred.fromCoroutine(HTTPClient(self, self.port).request(b"GET", b"/sse"))
        backend = await self.backend.requests.get()
        backend.transport.write(CHUNKED_HEAD + FRAMED + LAST)
        response, body = await answer
        self.assertEqual((response.code, body), (200, b"".join(CHUNKS)))

    async def test_a_stream_cut_mid_chunk_ends_abnormally(self) -> None:
        """The backend dies mid-chunk: the caller's connection closes with no last chunk."""
        client, backend = await self.open_stream(self.port)
        backend.transport.write(CHUNKED_HEAD + b"5\r\nhel")
        await client.wait_for(b"5\r\nhel")
        backend.transport.loseConnection()
        await client.closed
        self.assertEqual(_body(client.data), b"5\r\nhel")

    async def test_broken_framing_mid_stream_ends_abnormally(self) -> None:
        """Garbage for a chunk: the caller's stream ends abnormally, the backend is closed."""
        client, backend = await self.open_stream(self.port)
        backend.transport.write(CHUNKED_HEAD + b"2\r\nok\r\n")
        await client.wait_for(b"2\r\nok\r\n")
        backend.transport.write(b"not a size\r\n")
        await client.closed
        await backend.lost
        self.assertEqual(_body(client.data), b"2\r\nok\r\n")

    async def test_a_garbage_answer_is_a_502(self) -> None:
        """A backend that answers with something not HTTP: a JSON 502 naming it."""
        answer = Deferred.fromCoroutine(HTTPClient(self, self.port).request(b"GET", b"/x"))
        backend = await self.backend.requests.get()
        backend.transport.write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
        response, body = await answer
        self.assertEqual(response.code, 502)
        error = json.loads(body)
        self.assertEqual(error["origin"], "vespa")
        self.assertIn("malformed response", error["error"])
        await backend.lost

    async def test_a_head_over_the_limit_is_a_502(self) -> None:
        """Headers without end: refused at 64 KiB, not buffered for ever."""
        answer = Deferred.fromCoroutine(HTTPClient(self, self.port).request(b"GET", b"/x"))
        backend = await self.backend.requests.get()
        backend.transport.write(b"HTTP/1.1 200 OK\r\n")
        for _ in range(100):
            backend.transport.write(b"X-Filler: " + b"y" * 1000 + b"\r\n")
        response, body = await answer
        self.assertEqual(response.code, 502)
        self.assertIn("over 65536 bytes", json.loads(body)["error"])
        await backend.lost

    async def test_an_http10_caller_gets_the_decoded_body(self) -> None:
        """HTTP/1.0 has no chunks: the caller gets the payload, ended by the close."""
        client = await raw_connect(self.port)
        client.transport.write(b"GET /sse HTTP/1.0\r\n\r\n")
        backend = await self.backend.requests.get()
        backend.transport.write(CHUNKED_HEAD + FRAMED + LAST)
        await client.closed
        self.assertTrue(client.data.startswith(b"HTTP/1.0 200 "))
        self.assertNotIn(b"transfer-encoding", client.data.lower())
        self.assertEqual(_body(client.data), b"".join(CHUNKS))

    async def test_a_length_answer_keeps_its_length(self) -> None:
        """A Content-Length body is relayed with its length, not chunked."""
        client = await raw_connect(self.port)
        client.transport.write(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
        backend = await self.backend.requests.get()
        backend.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel")
        await client.wait_for(b"hel")
        backend.transport.write(b"lo")
        await client.wait_for(b"hello")
        self.assertIn(b"content-length: 5\r\n", client.data.lower())
        self.assertNotIn(b"transfer-encoding", client.data.lower())
        client.transport.loseConnection()


class _H2Client(Protocol):
    """One HTTP/2 GET over TLS (h2 by ALPN), its status, headers and decoded body."""

    def __init__(self, path: bytes) -> None:
        self._path = path
        self.headers: dict[bytes, bytes] = {}
        self.body = b""
        self.done: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        self._h2 = H2Connection(H2Configuration(client_side=True))
        self._h2.initiate_connection()
        self._h2.send_headers(
            1,
            [
                (":method", "GET"),
                (":path", self._path.decode()),
                (":scheme", "https"),
                (":authority", "127.0.0.1"),
            ],
            end_stream=True,
        )
        self.transport.write(self._h2.data_to_send())  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        for event in self._h2.receive_data(data):
            if isinstance(event, ResponseReceived):
                self.headers = {bytes(k): bytes(v) for k, v in event.headers}
            elif isinstance(event, DataReceived):
                self.body += event.data
                self._h2.acknowledge_received_data(event.flow_controlled_length, 1)
            elif isinstance(event, StreamEnded) and not self.done.called:
                self.done.callback(None)
            elif isinstance(event, StreamReset) and not self.done.called:
                self.done.errback(Failure(AssertionError("the stream was reset")))
        self.transport.write(self._h2.data_to_send())  # type: ignore[union-attr]


class HTTP2CallerTests(TestCase):
    """An HTTP/2 caller has no chunks: it gets the backend's chunked body decoded."""

    timeout = 30

    async def test_an_h2_caller_gets_the_decoded_stream(self) -> None:
        env, trust = await start_tls_worker(self)
        tls = optionsForClientTLS("127.0.0.1", trustRoot=trust, acceptableProtocols=[b"h2"])
        client = _H2Client(b"/stream?n=3&interval=1")
        endpoint = wrapClientTLS(tls, TCP4ClientEndpoint(reactor, "127.0.0.1", env.port))
        await connectProtocol(endpoint, client)
        self.addCleanup(client.transport.loseConnection)  # type: ignore[union-attr]
        await env.backend.wait_for_request(b"/stream")
        env.clock.advance(1)
        env.clock.advance(1)
        await client.done
        self.assertEqual(client.transport.negotiatedProtocol, b"h2")  # type: ignore[union-attr]
        self.assertEqual(client.headers[b":status"], b"200")
        events = [json.loads(line[6:]) for line in client.body.split(b"\n\n") if line]
        self.assertEqual(events, [{"n": 0}, {"n": 1}, {"n": 2}])


class _Relaying(Resource):
    """Relays every request through ``relay``, as the worker's resource does."""

    isLeaf = True

    def __init__(self, relay: BackendRelay) -> None:
        super().__init__()
        self._relay = relay

    def render(self, request: Any) -> int:
        self._relay.forward(request, request.uri)
        return NOT_DONE_YET


class TLSBackendTests(TestCase):
    """An https backend: the same client over a TLS transport."""

    timeout = 15

    async def test_a_stream_and_a_post_through_a_tls_backend(self) -> None:
        cert, key = self.mktemp(), self.mktemp()
        make_self_signed(cert, key, ("127.0.0.1",))
        clock = Clock()
        site = echo_site(clock)
        backend_port = reactor.listenSSL(0, site, server_options(cert, key), interface="127.0.0.1")
        self.addCleanup(backend_port.stopListening)
        port = backend_port.getHost().port
        with open(cert, "rb") as c:
            tls = optionsForClientTLS("127.0.0.1", trustRoot=Certificate.loadPEM(c.read()))
        relay = BackendRelay(
            reactor,
            Origin("https", "127.0.0.1", port),
            endpoint=wrapClientTLS(tls, TCP4ClientEndpoint(reactor, "127.0.0.1", port)),
        )
        self.addCleanup(relay.close)
        worker_port = listen(self, ProxySite(_Relaying(relay), reactor=reactor))
        client = HTTPClient(self, worker_port, pooled=True)
        response, body = await client.request(b"POST", b"/echo", body=b'{"a": 1}')
        self.assertEqual(response.code, 200)
        self.assertEqual(json.loads(body)["method"], "POST")
        answer = Deferred.fromCoroutine(client.request(b"GET", b"/stream?n=3&interval=1"))
        await site.resource.wait_for_request(b"/stream")
        clock.advance(1)
        clock.advance(1)
        response, body = await answer
        self.assertEqual(body, b'data: {"n": 0}\n\ndata: {"n": 1}\n\ndata: {"n": 2}\n\n')
        # Both exchanges went over one kept-alive TLS connection.
        self.assertEqual(len(relay.pool.idle_connections), 1)


class _GoneRequest:
    """A twisted.web request whose caller went away before its head was written."""

    startedWriting = 0
    _disconnected = True
    channel = None
    sentLength = 0

    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)


class CallerGoneTests(SynchronousTestCase):
    def test_a_chunk_for_a_caller_gone_before_the_head_is_dropped(self) -> None:
        """
        A raw chunk for a caller that left before anything was written (its
        request has no channel any more) is dropped, not sent nor counted.
        """
        request = _GoneRequest()
        body = _BodyRelay(None, request, Clock(), None, raw=True)  # type: ignore[arg-type]
        body.dataReceived(b"5\r\nhello\r\n")
        self.assertEqual((request.written, request.sentLength), ([], 0))
