"""
Unit tests of the worker's backend client in memory: the response parser
(:mod:`vespa.http.backend_response`), one connection
(:mod:`vespa.http.backend_client`) and the pool with its retry rule
(:mod:`vespa.http.backend_pool`), on ``StringTransport`` and ``Clock``.
End to end, ``tests.test_backend_relay`` and ``tests.test_worker_relay``
run them on loopback sockets.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import error as ierror
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IProtocol, IProtocolFactory
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss

from tests.support_chunks import CHUNKS, FRAMED, LAST, RELAYED
from vespa.http.backend_client import BackendConnection, OutgoingRequest
from vespa.http.backend_pool import BackendPool
from vespa.http.backend_response import (
    MAX_HEADERS,
    ChunkedBody,
    Framing,
    MalformedResponse,
    ResponseHead,
    head_end,
    parse_head,
)


def _head(text: bytes, *, head_request: bool = False) -> ResponseHead:
    end = head_end(text)
    assert end > 0
    return parse_head(text[:end], head_request=head_request)


class HeadTests(SynchronousTestCase):
    """The status line, the headers and how the body ends."""

    def test_framings(self) -> None:
        cases = [
            (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", Framing.LENGTH, True),
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", Framing.CHUNKED, True),
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", Framing.UNTIL_CLOSE, False),
            (b"HTTP/1.1 200 OK\r\n\r\n", Framing.UNTIL_CLOSE, False),
            (b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\n", Framing.LENGTH, False),
            (b"HTTP/1.1 204 No Content\r\n\r\n", Framing.NONE, True),
            (b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n", Framing.NONE, True),
            (
                b"HTTP/1.1 200 OK\r\nConnection: keep-alive, Close\r\n\r\n",
                Framing.UNTIL_CLOSE,
                False,
            ),
            (
                b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
                Framing.LENGTH,
                False,
            ),
        ]
        for text, framing, keep_alive in cases:
            head = _head(text)
            self.assertEqual((head.framing, head.keep_alive), (framing, keep_alive), text)
        self.assertEqual(_head(cases[0][0]).length, 5)

    def test_a_head_response_has_no_body_whatever_it_says(self) -> None:
        head = _head(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", head_request=True)
        self.assertEqual((head.framing, head.keep_alive), (Framing.NONE, True))

    def test_status_phrase_and_headers_as_sent(self) -> None:
        head = _head(b"HTTP/1.1 418 I'm a teapot\nx-a:  1 \nX-A: 2\nSet-Cookie: a=b\n\n")
        self.assertEqual((head.status, head.phrase), (418, b"I'm a teapot"))
        self.assertEqual(head.headers, [(b"x-a", b"1"), (b"X-A", b"2"), (b"Set-Cookie", b"a=b")])

    def test_the_head_ends_at_its_first_empty_line(self) -> None:
        self.assertEqual(head_end(b"HTTP/1.1 200 OK\r\nA: b\r\n"), -1)
        self.assertEqual(head_end(b"HTTP/1.1 200 OK\r\n\r\nbody\r\n\r\n"), 19)
        self.assertEqual(head_end(b"HTTP/1.1 200 OK\n\nbody\r\n\r\n"), 17)

    def test_garbage_is_malformed(self) -> None:
        for text in [
            b"SSH-2.0-OpenSSH\r\n\r\n",
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"HTTP/2 200 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nbad name: x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nA: b\r\n folded\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nA: b\rc\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        ]:
            with self.assertRaises(MalformedResponse, msg=text):
                _head(text)

    def test_too_many_headers_are_malformed(self) -> None:
        lines = b"".join(b"H%d: v\r\n" % (n,) for n in range(MAX_HEADERS + 1))
        with self.assertRaises(MalformedResponse):
            _head(b"HTTP/1.1 200 OK\r\n" + lines + b"\r\n")
        enough = b"".join(b"H%d: v\r\n" % (n,) for n in range(MAX_HEADERS))
        self.assertEqual(len(_head(b"HTTP/1.1 200 OK\r\n" + enough + b"\r\n").headers), 100)


def _feed_in(body: ChunkedBody, data: bytes, cuts: list[int]) -> tuple[bytes, int]:
    """Feed ``data`` split at ``cuts``; the joined output and where it ended in ``data``."""
    out: list[bytes] = []
    ended = -1
    for start, end in zip([0, *cuts], [*cuts, len(data)], strict=True):
        piece, at = body.feed(data[start:end])
        out.append(piece)
        if at >= 0:
            ended = start + at
            break
    return b"".join(out), ended


class ChunkedBodyTests(SynchronousTestCase):
    """A chunked body, raw and decoded, however its reads are split."""

    def test_every_split_in_two_reads(self) -> None:
        data = FRAMED + LAST + b"NEXT"
        for cut in range(1, len(data)):
            for raw in (True, False):
                out, ended = _feed_in(ChunkedBody(raw=raw), data, [cut])
                expected = RELAYED if raw else b"".join(CHUNKS)
                self.assertEqual((out, ended), (expected, len(FRAMED + LAST)), (cut, raw))

    def test_byte_by_byte(self) -> None:
        data = FRAMED + LAST
        for raw in (True, False):
            body = ChunkedBody(raw=raw)
            out, ended = _feed_in(body, data, list(range(1, len(data))))
            self.assertEqual(out, RELAYED if raw else b"".join(CHUNKS))
            self.assertEqual(ended, len(data))
            self.assertTrue(body.done)

    def test_one_whole_chunk_is_handed_on_as_it_is(self) -> None:
        chunk = b"e\r\ndata: {...}\n\n\r\n"
        out, ended = ChunkedBody(raw=True).feed(chunk)
        self.assertIs(out, chunk)  # no copy on the hot path
        self.assertEqual(ended, -1)

    def test_plain_size_lines_pass_and_extensions_are_dropped(self) -> None:
        data = b"3\r\nabc\r\n3;x=y\r\ndef\r\n3 \r\nghi\r\n"
        out, _ = ChunkedBody(raw=True).feed(data)
        self.assertEqual(out, b"3\r\nabc\r\n3\r\ndef\r\n3\r\nghi\r\n")

    def test_broken_framing_is_malformed(self) -> None:
        for data in [
            b"zz\r\n",
            b"3\r\nabcX\r\n",
            b"3\nabc\r\n",
            b"-3\r\nabc\r\n",
            b"0x3\r\nabc\r\n",
            b"3;a\rb\r\nabc\r\n",
            b"1" * 5000,
            b"0\r\n" + b"X: y\r\n" * 5000,
        ]:
            with self.assertRaises(MalformedResponse, msg=data[:20]):
                ChunkedBody(raw=True).feed(data)


class _Body(Protocol):
    def __init__(self) -> None:
        self.data: list[bytes] = []
        self.reasons: list[Failure] = []

    def dataReceived(self, data: bytes) -> None:
        self.data.append(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.reasons.append(reason)


class _Handler:
    def __init__(self, *, raw: bool = False) -> None:
        self.heads: list[ResponseHead] = []
        self.failures: list[Failure] = []
        self.body = _Body()
        self._raw = raw

    def response_started(self, head: ResponseHead) -> tuple[IProtocol, bool]:
        self.heads.append(head)
        return self.body, self._raw

    def response_failed(self, reason: Failure) -> None:
        self.failures.append(reason)


class _Transport(StringTransport):
    """Closing it tells its protocol at once (the reactor would on its next turn)."""

    def __init__(self) -> None:
        super().__init__()
        self.closed: str | None = None

    def loseConnection(self) -> None:
        self._close("lost", ierror.ConnectionDone())

    def abortConnection(self) -> None:
        self._close("aborted", ierror.ConnectionAborted())

    def _close(self, how: str, error: Exception) -> None:
        if self.closed is None:
            self.closed = how
            self.protocol.connectionLost(Failure(error))


class _Endpoint:
    """Connects at once, on an in-memory transport."""

    def __init__(self) -> None:
        self.connections: list[tuple[BackendConnection, _Transport]] = []

    def connect(self, factory: IProtocolFactory) -> Deferred[Any]:
        protocol = factory.buildProtocol(None)
        transport = _Transport()
        transport.protocol = protocol
        protocol.makeConnection(transport)
        self.connections.append((protocol, transport))  # type: ignore[arg-type]
        return succeed(protocol)


GET = OutgoingRequest(b"GET", b"GET / HTTP/1.1\r\nHost: b\r\n\r\n")
POST = OutgoingRequest(
    b"POST", b"POST / HTTP/1.1\r\nHost: b\r\nContent-Length: 2\r\n\r\n", body=b"{}"
)
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class PoolTests(SynchronousTestCase):
    """Connections, kept alive and reused, expired and retried, on a Clock."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.endpoint = _Endpoint()
        self.pool = BackendPool(self.clock, self.endpoint, keepalive=4.0, max_connections=2)  # type: ignore[arg-type]

    def send(
        self, request: OutgoingRequest = GET, answer: bytes | None = OK, *, raw: bool = False
    ) -> _Handler:
        handler = _Handler(raw=raw)
        self.pool.send(request, handler)
        if answer is not None:
            self.last[0].dataReceived(answer)
        return handler

    @property
    def last(self) -> tuple[BackendConnection, _Transport]:
        return self.endpoint.connections[-1]

    def test_the_head_and_a_small_body_go_in_one_write(self) -> None:
        handler = self.send(POST)
        self.assertEqual(self.last[1].value(), POST.head + b"{}")
        self.assertEqual(handler.body.data, [b"ok"])
        self.assertTrue(handler.body.reasons[0].check(ResponseDone))

    def test_a_kept_alive_connection_is_reused(self) -> None:
        for _ in range(3):
            self.assertEqual(self.send().body.data, [b"ok"])
        self.assertEqual(len(self.endpoint.connections), 1)
        self.assertEqual(self.pool.idle_connections, (self.last[0],))

    def test_the_connection_idle_the_shortest_is_reused_first(self) -> None:
        first, second = _Handler(), _Handler()
        self.pool.send(GET, first)
        self.pool.send(GET, second)
        (one, _), (two, _) = self.endpoint.connections
        two.dataReceived(OK)
        self.clock.advance(1)
        one.dataReceived(OK)  # released last: the warmest
        self.pool.send(GET, _Handler())
        self.assertEqual(self.pool.idle_connections, (two,))
        self.assertEqual(len(self.endpoint.connections), 2)

    def test_connection_close_is_not_reused(self) -> None:
        self.send(answer=b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
        self.assertEqual(self.last[1].closed, "aborted")
        self.send()
        self.assertEqual(len(self.endpoint.connections), 2)

    def test_interim_responses_are_skipped(self) -> None:
        handler = self.send(
            answer=b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early\r\nLink: x\r\n\r\n" + OK
        )
        self.assertEqual([head.status for head in handler.heads], [200])
        self.assertEqual(handler.body.data, [b"ok"])

    def test_bytes_after_the_response_close_the_connection(self) -> None:
        handler = self.send(answer=OK + b"HTTP/1.1 200 OK\r\n\r\n")
        self.assertEqual(handler.body.data, [b"ok"])
        self.assertTrue(handler.body.reasons[0].check(ResponseDone))
        self.assertEqual(self.last[1].closed, "aborted")
        self.assertEqual(self.pool.idle_connections, ())

    def test_bytes_nobody_asked_for_close_an_idle_connection(self) -> None:
        self.send()
        self.last[0].dataReceived(b"HTTP/1.1 200 OK\r\n")
        self.assertEqual(self.last[1].closed, "aborted")
        self.assertEqual(self.pool.idle_connections, ())

    def test_garbage_fails_the_exchange(self) -> None:
        handler = self.send(answer=b"\x16\x03\x01 hello\r\n\r\n")
        self.assertTrue(handler.failures[0].check(MalformedResponse))
        self.assertEqual(self.last[1].closed, "aborted")

    def test_a_head_without_end_is_bounded(self) -> None:
        handler = self.send(answer=b"HTTP/1.1 200 OK\r\n" + b"X: " + b"y" * (70 * 1024))
        self.assertTrue(handler.failures[0].check(MalformedResponse))
        self.assertEqual(self.last[1].closed, "aborted")

    def test_garbage_mid_body_ends_the_body_abnormally(self) -> None:
        handler = self.send(answer=b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok")
        self.last[0].dataReceived(b"ZZ")
        self.assertEqual(handler.body.data, [b"ok"])
        self.assertEqual(self.last[1].closed, "aborted")
        self.assertTrue(handler.body.reasons[0].check(MalformedResponse))

    def test_raw_chunks_are_handed_on_framed(self) -> None:
        handler = self.send(
            answer=b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + FRAMED + LAST,
            raw=True,
        )
        self.assertEqual(b"".join(handler.body.data), RELAYED)
        self.assertTrue(handler.body.reasons[0].check(ResponseDone))
        self.assertEqual(self.pool.idle_connections, (self.last[0],))

    def test_a_body_until_close_is_complete_at_the_close(self) -> None:
        handler = self.send(answer=b"HTTP/1.0 200 OK\r\n\r\npart one, ")
        self.last[0].dataReceived(b"part two")
        self.last[1].loseConnection()
        self.assertEqual(b"".join(handler.body.data), b"part one, part two")
        self.assertTrue(handler.body.reasons[0].check(PotentialDataLoss))

    def test_a_length_body_cut_short_is_not_complete(self) -> None:
        handler = self.send(answer=b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        self.last[1].loseConnection()
        self.assertEqual(handler.body.data, [b"abc"])
        self.assertFalse(handler.body.reasons[0].check(ResponseDone, PotentialDataLoss))

    def test_pause_and_stop_reach_the_backend_connection(self) -> None:
        handler = self.send(answer=b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        transport: Any = handler.body.transport
        transport.pauseProducing()
        self.assertEqual(self.last[1].producerState, "paused")
        transport.resumeProducing()
        self.assertEqual(self.last[1].producerState, "producing")
        transport.stopProducing()
        self.assertEqual(self.last[1].closed, "aborted")
        self.assertTrue(handler.body.reasons[0].check(ierror.ConnectionAborted))

    def test_a_connection_paused_as_its_body_ended_reads_again_in_the_pool(self) -> None:
        handler = self.send(answer=b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab")
        transport: Any = handler.body.transport
        transport.pauseProducing()  # the caller is slow...
        self.last[0].dataReceived(b"cd")  # ...and the body ends in the read under way
        self.assertEqual(self.pool.idle_connections, (self.last[0],))
        self.assertEqual(self.last[1].producerState, "producing")
        self.assertEqual(self.send().body.data, [b"ok"])

    def test_abort_before_the_response_closes_the_connection(self) -> None:
        handler = _Handler()
        call = self.pool.send(POST, handler)
        call.abort()
        self.assertEqual(self.last[1].closed, "aborted")
        self.assertTrue(handler.failures[0].check(ierror.ConnectionAborted))

    def test_idle_connections_expire_after_keepalive(self) -> None:
        self.send()
        first = self.last
        self.clock.advance(2)
        handler = _Handler()
        self.pool.send(GET, handler)  # reuses the first: its idle time starts again
        self.pool.send(GET, _Handler())  # a second connection
        second = self.last
        first[0].dataReceived(OK)
        second[0].dataReceived(OK)
        self.clock.advance(3.9)
        self.assertEqual((first[1].closed, second[1].closed), (None, None))
        self.clock.advance(0.1)
        self.assertEqual((first[1].closed, second[1].closed), ("lost", "lost"))
        self.assertEqual(self.pool.idle_connections, ())
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_at_most_max_connections_are_kept(self) -> None:
        handlers = [_Handler() for _ in range(3)]
        for handler in handlers:
            self.pool.send(GET, handler)
        for connection, _ in self.endpoint.connections:
            connection.dataReceived(OK)
        self.assertEqual(len(self.pool.idle_connections), 2)
        self.assertEqual([t.closed for _, t in self.endpoint.connections], [None, None, "lost"])

    def test_close_closes_the_idle_connections(self) -> None:
        self.send()
        closed = self.pool.close()
        self.assertEqual(self.last[1].closed, "lost")
        self.successResultOf(closed)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_get_on_a_dead_kept_alive_connection_is_retried_once(self) -> None:
        self.send()
        handler = self.send(answer=None)
        self.last[1].loseConnection()  # the backend had closed it
        self.assertEqual(len(self.endpoint.connections), 2)
        self.assertEqual(self.last[1].value(), GET.head)
        self.last[0].dataReceived(OK)
        self.assertEqual((handler.failures, handler.body.data), ([], [b"ok"]))

    def test_a_retried_get_fails_if_the_new_connection_dies_too(self) -> None:
        self.send()
        handler = self.send(answer=None)
        self.last[1].loseConnection()
        self.last[1].loseConnection()
        self.assertEqual(len(self.endpoint.connections), 2)
        self.assertTrue(handler.failures[0].check(ierror.ConnectionDone))

    def test_a_post_is_never_sent_twice(self) -> None:
        self.send()
        handler = self.send(POST, answer=None)
        self.last[1].loseConnection()
        self.assertEqual(len(self.endpoint.connections), 1)
        self.assertTrue(handler.failures[0].check(ierror.ConnectionDone))

    def test_no_retry_once_a_response_byte_came(self) -> None:
        self.send()
        handler = self.send(answer=b"HTTP/1.1 2")
        self.last[1].loseConnection()
        self.assertEqual(len(self.endpoint.connections), 1)
        self.assertEqual(len(handler.failures), 1)

    def test_no_retry_on_a_fresh_connection(self) -> None:
        handler = self.send(answer=None)
        self.last[1].loseConnection()
        self.assertEqual(len(self.endpoint.connections), 1)
        self.assertEqual(len(handler.failures), 1)
