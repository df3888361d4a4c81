"""
What a client on the internet can do to a Vespa site, tried as an attacker
would: raw sockets, huge form bodies, slow and malformed requests, more
connections than file descriptors.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from vespa.http.site import ProxySite
from vespa.protocol.envelope import wrap_body
from vespa.testing.echo_backend import EchoBackend

from .support import (
    connect_in_memory,
    listen,
    raw_connect,
    start_secured_worker,
    start_worker,
    until,
)
from .support_raw import (
    FORM_SIZE,
    MULTIPART,
    URLENCODED,
    exchange,
    multipart_form,
    parse,
    post_head,
    urlencoded_form,
)

#: The stream's events are this far apart; a stall shows as a longer gap.
EVENT_INTERVAL = 0.01
#: How much longer than before a stream's longest gap may grow while a 60 MB
#: form is relayed: it grows 0-10 ms, and grew 25-38 ms while the form was
#: decoded, written and freed in one piece each on the reactor thread.
MAX_GAP = 0.02
#: Events of the stream before the request whose longest gap is the baseline.
BASELINE_EVENTS = 50
#: A stream counts as not frozen while its gaps stay under this: longer than
#: any pause of a working reactor (parsing a 60 MB form froze it for 9 to 25 s).
NOT_FROZEN = 1.0

class _UploadBackend(EchoBackend):
    """The echo backend, keeping the body of ``/upload`` (unread) for the test to check."""

    upload: Any = None

    def _upload(self, request: Request) -> bytes:
        # Taken from the request, so it is not closed when the request ends.
        self.upload, request.content = request.content, None
        request.setHeader(b"content-type", b"application/json")
        return b'{"stored": true}'


def _longest_gap(chunks: list[tuple[float, int]]) -> float:
    """The longest time between two arrivals of ``chunks`` (``(time, size)`` pairs)."""
    times = [at for at, _ in chunks]
    return max(later - earlier for earlier, later in itertools.pairwise(times))


class FormBodyTests(TestCase):
    """A form body is relayed as bytes, never parsed: it cannot stall the reactor."""

    timeout = 20

    async def stream_during(
        self, port: int, stream_request: bytes, head: bytes, body: bytes
    ) -> tuple[bytes, float]:
        """
        Send ``head`` and ``body`` while an SSE stream comes through the worker
        on ``port``; return the answer and how much longer the stream's
        longest gap between arrivals was meanwhile than over the
        :data:`BASELINE_EVENTS` before: the delay the request caused, apart
        from what a busy machine adds to any gap.
        """
        stream = await raw_connect(port)
        self.addCleanup(stream.transport.loseConnection)
        stream.transport.write(stream_request)
        await stream.wait_for(b'data: {"n": 2}')
        before = len(stream.chunks)
        await stream.wait_for(b'data: {"n": %d}' % (2 + BASELINE_EVENTS,))
        baseline = _longest_gap(stream.chunks[before - 1 :])
        begun = len(stream.chunks)
        answer = await exchange(port, head, body)
        # Two more events after the answer: the stream ran through the whole attack.
        seen = stream.data.count(b"data: ")
        await stream.wait_for(b'data: {"n": %d}' % (seen + 1,))
        return answer, max(_longest_gap(stream.chunks[begun - 1 :]) - baseline, 0.0)

    async def unsecured_upload(self, content_type: bytes, body: bytes) -> float:
        """
        POST ``body`` through an unsecured worker while a stream runs; check the
        backend got it unchanged; return the stream's longest gap.
        """
        backend = _UploadBackend(reactor)
        backend_port = listen(self, ProxySite(backend, reactor=reactor))
        _, port = start_worker(self, backend_port)
        stream = b"GET /stream?n=100000&interval=%g HTTP/1.1\r\nHost: worker\r\n\r\n" % (
            EVENT_INTERVAL,
        )
        head = post_head(b"/upload", content_type, len(body))
        answer, gap = await self.stream_during(port, stream, head, body)
        status, _, reply = parse(answer)
        self.assertEqual((status, reply), (b"HTTP/1.1 200 OK", b'{"stored": true}'))
        backend.upload.seek(0)
        self.assertTrue(backend.upload.read() == body, "the backend got other bytes")
        return gap

    async def test_urlencoded_form_is_relayed_unchanged(self) -> None:
        """
        Unsecured: a 60 MB urlencoded form reaches the backend byte for byte,
        and a stream running meanwhile is not frozen (parsing it froze the
        reactor for 9 s).
        """
        gap = await self.unsecured_upload(URLENCODED, urlencoded_form(FORM_SIZE))
        self.assertLess(gap, NOT_FROZEN)

    async def test_multipart_form_is_relayed_unchanged(self) -> None:
        """Unsecured: the same for a 60 MB multipart form (parsing it froze the reactor 25 s)."""
        gap = await self.unsecured_upload(MULTIPART, multipart_form(FORM_SIZE))
        self.assertLess(gap, NOT_FROZEN)

    async def test_a_form_body_delays_a_stream_less_than_20_ms(self) -> None:
        """Unsecured: while a 60 MB form is relayed, a stream's events are
        delayed by less than 20 ms (its longest gap, over its longest gap just
        before)."""
        body = urlencoded_form(FORM_SIZE)
        # Two cores shared with other work can deschedule the process for a
        # while: the best of three runs is what the worker itself costs (a
        # parsed form stalls every run by seconds).
        gaps = []
        for _ in range(3):
            gaps.append(await self.unsecured_upload(URLENCODED, body))
            if gaps[-1] < MAX_GAP:
                break
        print(f"\n60 MB form: stream delay added {min(gaps) * 1000:.1f} ms")
        self.assertLess(min(gaps), MAX_GAP)


    async def test_secured_worker_refuses_form_bodies_with_json(self) -> None:
        """
        Secured: a 60 MB form of either kind is refused with Vespa's JSON 422
        (it is no envelope) while a signed stream runs through the worker,
        not frozen (its events are paced in real time).
        """
        from twisted.internet.task import LoopingCall

        from tests.support_worker import Harness

        env = await start_secured_worker(self)
        # The echo backend paces its stream on the worker's Clock: run it in real time.
        started = reactor.seconds()
        ticking = LoopingCall(
            lambda: env.clock.advance(reactor.seconds() - started - env.clock.seconds())
        )
        ticking.start(EVENT_INTERVAL / 2)
        self.addCleanup(ticking.stop)
        harness = Harness(env)
        for content_type, body in (
            (URLENCODED, urlencoded_form(FORM_SIZE)),
            (MULTIPART, multipart_form(FORM_SIZE)),
        ):
            signed = wrap_body(harness.auth(1), {})
            stream = (
                b"POST /stream?n=100000&interval=%g HTTP/1.1\r\nHost: worker\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (EVENT_INTERVAL, len(signed), signed)
            )
            head = post_head(b"/upload", content_type, len(body))
            answer, gap = await self.stream_during(env.port, stream, head, body)
            status, _, reply = parse(answer)
            self.assertEqual(status, b"HTTP/1.1 422 Unprocessable Content")
            self.assertEqual(json.loads(reply), {"error": "invalid JSON", "origin": "vespa"})
            self.assertLess(gap, NOT_FROZEN)
        self.assertNotIn(b"/upload", [uri for _, uri in env.backend.received])

    def test_form_bodies_are_not_parsed(self) -> None:
        """
        The request keeps a form body as bytes: ``args`` holds the query
        string only, whatever the content type (twisted.web would parse the
        body into it on the reactor thread).
        """
        received: list[Any] = []

        class Recorder(Resource):
            isLeaf = True

            def render(self, request: Request) -> bytes:
                assert request.content is not None
                received.append((request.args, request.content.read()))
                return b""

        site = ProxySite(Recorder(), reactor=Clock())
        for content_type, body in (
            (URLENCODED, b"a=1&b=2"),
            (MULTIPART, multipart_form(1000)),
            (MULTIPART, b"--not-the-boundary\r\ngarbage"),
        ):
            channel, _ = connect_in_memory(site)
            channel.dataReceived(post_head(b"/form?q=1&q=2", content_type, len(body)) + body)
            self.assertEqual(received.pop(), ({b"q": [b"1", b"2"]}, body))


class _Answer(Resource):
    """Answers ``ok``; ``/hold`` is never answered (a request in progress)."""

    isLeaf = True

    def render(self, request: Request) -> bytes | int:
        if request.path == b"/hold":
            return NOT_DONE_YET
        return b"ok"


OK_REQUEST = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


class DeadlineTests(TestCase):
    """
    A slow client cannot hold a connection: the request line and headers
    have a deadline however they trickle, and so has an idle keep-alive
    connection. Driven by a Clock, on an in-memory transport.
    """

    def connect(self, **deadlines: float | None) -> tuple[Any, StringTransport, Clock]:
        clock = Clock()
        site = ProxySite(
            _Answer(),
            reactor=clock,
            header_timeout=deadlines.get("header_timeout", 15.0),
            keepalive_timeout=deadlines.get("keepalive_timeout", 60.0),
        )
        connection, transport = connect_in_memory(site)
        return connection, transport, clock

    @staticmethod
    def trickle(connection: Any, clock: Clock, count: int, every: float) -> None:
        """Start a request, then send a header byte every ``every`` seconds, ``count`` times."""
        connection.dataReceived(b"GET / HTTP/1.1\r\n")
        for _ in range(count):
            clock.advance(every)
            connection.dataReceived(b"X")

    def test_trickled_headers_get_a_json_408_at_the_deadline(self) -> None:
        """A header byte every second does not extend the 15 s deadline."""
        connection, transport, clock = self.connect()
        self.trickle(connection, clock, 14, every=1)
        self.assertFalse(transport.disconnecting)
        clock.advance(1)
        self.assertTrue(transport.disconnecting)
        status, headers, body = parse(transport.value())
        self.assertEqual(status, b"HTTP/1.1 408 Request Timeout")
        self.assertEqual(headers[b"content-type"], [b"application/json"])
        self.assertEqual(
            json.loads(body),
            {"error": "the request headers took longer than 15 s", "origin": "vespa"},
        )

    def test_a_silent_connection_is_closed_at_the_header_deadline(self) -> None:
        """A connection that sends nothing is closed after 15 s, without an answer."""
        _, transport, clock = self.connect()
        clock.advance(14.9)
        self.assertFalse(transport.disconnecting)
        clock.advance(0.1)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(transport.value(), b"")

    def test_an_idle_keepalive_connection_is_closed_quietly(self) -> None:
        """
        After a request, the connection may wait 60 s for the next one (the
        header deadline does not apply), then it is closed without an answer.
        """
        connection, transport, clock = self.connect()
        connection.dataReceived(OK_REQUEST)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 200 OK"))
        transport.clear()
        clock.advance(59.9)
        self.assertFalse(transport.disconnecting)
        clock.advance(0.1)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(transport.value(), b"")

    def test_the_next_request_on_a_kept_connection_has_its_own_header_deadline(self) -> None:
        """The deadline of a kept-alive connection's next request runs from its first byte."""
        connection, transport, clock = self.connect()
        connection.dataReceived(OK_REQUEST)
        transport.clear()
        clock.advance(50)
        connection.dataReceived(b"GET / HTTP/1.1\r\n")
        clock.advance(14.9)
        self.assertFalse(transport.disconnecting)
        clock.advance(0.1)
        self.assertTrue(parse(transport.value())[0].startswith(b"HTTP/1.1 408 "))

    def test_a_slow_body_and_a_long_answer_are_not_cut_by_the_header_deadline(self) -> None:
        """
        Once the headers are in, a body arriving a byte per 10 s is received
        (twisted.web's idle timeout applies to it), and a request in progress
        is never timed out.
        """
        connection, transport, clock = self.connect()
        connection.dataReceived(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n")
        for byte in b"abcde":
            clock.advance(10)
            connection.dataReceived(bytes([byte]))
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 200 OK"))
        connection.dataReceived(b"GET /hold HTTP/1.1\r\nHost: x\r\n\r\n")
        clock.advance(3600)
        self.assertFalse(transport.disconnecting)

    def test_pipelined_requests_are_each_answered(self) -> None:
        """Requests sent back to back on one connection are all answered, in order."""
        connection, transport, _ = self.connect()
        connection.dataReceived(OK_REQUEST * 3)
        self.assertEqual(transport.value().count(b"HTTP/1.1 200 OK"), 3)
        self.assertFalse(transport.disconnecting)

    def test_without_deadlines_the_idle_timeout_applies(self) -> None:
        """Both deadlines off: twisted.web's 60 s idle timeout, reset by each byte."""
        connection, transport, clock = self.connect(header_timeout=None, keepalive_timeout=None)
        self.trickle(connection, clock, 3, every=59)
        self.assertFalse(transport.disconnecting)
        clock.advance(60)
        self.assertTrue(transport.disconnecting)

    async def test_over_a_real_socket(self) -> None:
        """The 408 reaches a real client, and the server closes the connection."""
        clock = Clock()
        site = ProxySite(_Answer(), reactor=clock, header_timeout=15.0)
        port = listen(self, site)
        client = await raw_connect(port)
        client.transport.write(b"GET / HTTP/1.1\r\nHost: x\r\n")
        # Once the server has read the bytes, the connection is in its headers.
        await until(lambda: [channel._phase.value for channel in site._idle] == ["head"])
        clock.advance(15)
        await client.closed
        self.assertTrue(client.data.startswith(b"HTTP/1.1 408 Request Timeout\r\n"))


class ConnectionLimitTests(TestCase):
    """Beyond ``max_connections``, a new connection closes the one idle the longest."""

    async def serve(self, limit: int) -> tuple[ProxySite, int]:
        site = ProxySite(_Answer(), reactor=reactor, header_timeout=15.0, max_connections=limit)
        return site, listen(self, site)

    async def trickling(self, site: ProxySite, port: int, count: int) -> list[Any]:
        clients = []
        for _ in range(count):
            client = await raw_connect(port)
            self.addCleanup(client.transport.loseConnection)
            client.transport.write(b"GET / HTTP/1.1\r\nX-Slow: ")
            clients.append(client)
        # Accepted in the order they connected: the first is the oldest.
        await until(lambda: site.connections == count)
        return clients

    async def test_a_new_request_closes_the_oldest_slow_connection(self) -> None:
        site, port = await self.serve(3)
        slow = await self.trickling(site, port, 3)
        answer = await exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        self.assertTrue(answer.startswith(b"HTTP/1.1 200 OK"))
        await slow[0].closed
        self.assertEqual([client.closed.called for client in slow], [True, False, False])

    async def test_when_every_connection_is_busy_a_new_one_gets_a_json_503(self) -> None:
        site, port = await self.serve(2)
        for _ in range(2):
            busy = await raw_connect(port)
            self.addCleanup(busy.transport.loseConnection)
            busy.transport.write(b"GET /hold HTTP/1.1\r\nHost: x\r\n\r\n")
        await until(lambda: site.connections == 2 and not site._idle)
        status, headers, body = parse(await exchange(port, OK_REQUEST))
        self.assertEqual(status, b"HTTP/1.1 503 Service Unavailable")
        self.assertEqual(headers[b"retry-after"], [b"1"])
        self.assertEqual(json.loads(body)["origin"], "vespa")


class MalformedRequestTests(TestCase):
    """Whatever cannot be parsed is refused at once, in JSON, and the connection closed."""

    async def refused(self, request: bytes) -> dict[str, Any]:
        port = listen(self, ProxySite(_Answer(), reactor=reactor, header_timeout=15.0))
        status, headers, body = parse(await exchange(port, request))
        self.assertEqual(status, b"HTTP/1.1 400 Bad Request")
        self.assertEqual(headers[b"content-type"], [b"application/json"])
        self.assertEqual(headers[b"connection"], [b"close"])
        error: dict[str, Any] = json.loads(body)
        self.assertEqual(error["origin"], "vespa")
        return error

    async def test_bare_lf_line_endings(self) -> None:
        """A request whose lines end in LF alone is answered at once, not left to time out."""
        error = await self.refused(b"GET / HTTP/1.1\nHost: x\n\n")
        self.assertIn("bare LF", error["error"])

    async def test_bare_lf_after_a_good_request_line(self) -> None:
        await self.refused(b"GET / HTTP/1.1\r\nHost: x\nX: y\r\n\r\n")

    async def test_http_1_1_without_host(self) -> None:
        error = await self.refused(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
        self.assertEqual(error["error"], "an HTTP/1.1 request must have a Host header")

    async def test_two_host_headers(self) -> None:
        error = await self.refused(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
        self.assertEqual(error["error"], "the request has more than one Host header")

    async def test_garbage_request_line(self) -> None:
        await self.refused(b"GARBAGE\r\n\r\n")

    async def test_header_without_colon(self) -> None:
        await self.refused(b"GET / HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n")

    async def test_bad_chunk_framing(self) -> None:
        await self.refused(
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"
        )

    async def test_http_1_0_needs_no_host(self) -> None:
        """HTTP/1.0 has no Host requirement: served."""
        port = listen(self, ProxySite(_Answer(), reactor=reactor))
        answer = await exchange(port, b"GET / HTTP/1.0\r\n\r\n")
        self.assertTrue(answer.startswith(b"HTTP/1.0 200 OK"), answer)


class WorkerAnswerTests(TestCase):
    """What a secured worker's own answers look like on the wire."""

    async def test_vespa_answers_have_proper_phrases_and_no_twisted_server_header(self) -> None:
        """
        422 goes out as ``422 Unprocessable Content``, 401 and the local
        routes as usual, none with twisted.web's ``Server`` header; a relayed
        answer keeps the backend's own ``Server`` header.
        """
        from tests.support_worker import Harness

        env = await start_secured_worker(self)
        unsigned = await exchange(env.port, post_head(b"/echo", b"application/json", 2) + b"{}")
        forged = wrap_body({**Harness(env).auth(1), "signature": "AAAA"}, {})
        unauthorized = await exchange(
            env.port, post_head(b"/echo", b"application/json", len(forged)) + forged
        )
        ping = await exchange(
            env.port, b"GET /ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        signed = wrap_body(Harness(env).auth(1), {})
        relayed = await exchange(
            env.port, post_head(b"/echo", b"application/json", len(signed)) + signed
        )
        expected = [
            (unsigned, b"HTTP/1.1 422 Unprocessable Content"),
            (unauthorized, b"HTTP/1.1 401 Unauthorized"),
            (ping, b"HTTP/1.1 200 OK"),
        ]
        for answer, status_line in expected:
            status, headers, _ = parse(answer)
            self.assertEqual(status, status_line)
            self.assertNotIn(b"server", headers)
        status, headers, _ = parse(relayed)
        self.assertEqual(status, b"HTTP/1.1 200 OK")
        self.assertTrue(headers[b"server"][0].startswith(b"TwistedWeb/"))  # the echo backend's

    async def test_options_star_is_answered_in_json(self) -> None:
        """``OPTIONS *`` is answered by Vespa in JSON; another method on ``*`` gets a JSON 405."""
        env = await start_secured_worker(self)
        status, headers, body = parse(
            await exchange(env.port, b"OPTIONS * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        )
        self.assertEqual(status, b"HTTP/1.1 200 OK")
        self.assertEqual(headers[b"content-type"], [b"application/json"])
        self.assertNotIn(b"server", headers)
        self.assertEqual(json.loads(body)["origin"], "vespa")
        status, headers, body = parse(
            await exchange(env.port, b"GET * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        )
        self.assertEqual(status, b"HTTP/1.1 405 Method Not Allowed")
        self.assertEqual(headers[b"allow"], [b"OPTIONS"])
        self.assertEqual(json.loads(body)["origin"], "vespa")
        self.assertNotIn(b"*", [uri for _, uri in env.backend.received])

    async def test_malformed_multipart_is_answered_in_json(self) -> None:
        """
        A multipart body whose parts do not match its boundary (twisted.web
        answered a bare 400): secured, Vespa's JSON 422; unsecured, relayed
        to the backend as it is.
        """
        body = b"--not-the-boundary\r\nContent-Disposition: garbage\r\n\r\nx\r\n"
        request = post_head(b"/echo", MULTIPART, len(body)) + body
        env = await start_secured_worker(self)
        status, _, reply = parse(await exchange(env.port, request))
        self.assertEqual(status, b"HTTP/1.1 422 Unprocessable Content")
        self.assertEqual(json.loads(reply)["origin"], "vespa")
        backend = EchoBackend(reactor)
        _, port = start_worker(self, listen(self, ProxySite(backend, reactor=reactor)))
        status, _, reply = parse(await exchange(port, request))
        self.assertEqual(status, b"HTTP/1.1 200 OK")
        self.assertEqual(json.loads(reply)["body"], body.decode())


class WiringTests(TestCase):
    """The worker's settings reach its site."""

    def test_deadlines_and_the_connection_limit(self) -> None:
        import resource as rlimit

        from vespa.config import WorkerConfig
        from vespa.fdlimit import connection_budget
        from vespa.worker.tap import build_worker

        config = WorkerConfig.from_sources(
            {"backend-url": "http://127.0.0.1:9"},
            {"VESPA_HEADER_TIMEOUT": "5", "PYWORKER_KEEPALIVE_TIMEOUT": "0"},
        )
        self.assertEqual((config.header_timeout, config.keepalive_timeout), (5.0, None))
        site = build_worker(config, reactor, Clock()).listener.factory
        self.assertEqual((site.header_timeout, site.keepalive_timeout), (5.0, None))
        soft = rlimit.getrlimit(rlimit.RLIMIT_NOFILE)[0]
        self.assertEqual(site.max_connections, connection_budget(soft))

    async def test_a_failing_resource_is_a_json_500(self) -> None:
        """A resource that raises gets Vespa's JSON 500, not twisted.web's HTML page."""

        class Broken(Resource):
            isLeaf = True

            def render(self, request: Request) -> bytes:
                raise RuntimeError("bug")

        port = listen(self, ProxySite(Broken(), reactor=reactor))
        status, _, body = parse(
            await exchange(port, OK_REQUEST[:-2] + b"Connection: close\r\n\r\n")
        )
        self.assertEqual(status, b"HTTP/1.1 500 Internal Server Error")
        self.assertEqual(json.loads(body)["origin"], "vespa")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
