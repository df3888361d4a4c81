"""
The hot path's shortcuts keep the behaviour they replace.

A response write leaves at once, in one piece, over a real loopback socket;
where it cannot (something already buffered, another transport), the bytes
still arrive whole and in order through the transport's own buffer. A body's
idle deadline is one timer checked when it fires, not moved per chunk, and
still expires exactly that long after the last chunk; so are a connection's
header and keep-alive deadlines. A connection's addresses are read once, and
a response head is written in one piece.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import TestCase
from twisted.web.http import HTTPChannel
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from vespa.http.eager import send_now
from vespa.http.site import ProxyChannel, ProxySite
from vespa.http.stream import BodyReader

from .support import connect_in_memory, listen, raw_connect


class _Stream(Resource):
    """Writes one event per call of :meth:`event`; records the transport after each."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.request: Any = None
        self.buffered: list[int] = []
        self.registered: list[bool] = []

    def render_GET(self, request: Any) -> Any:
        self.request = request
        request.setHeader(b"content-type", b"text/event-stream")
        self.event(b"data: 1\n\n")
        return NOT_DONE_YET

    def event(self, data: bytes) -> None:
        self.request.write(data)
        transport = self.request.channel.transport
        self.buffered.append(len(transport.dataBuffer) + transport._tempDataLen)
        self.registered.append(transport in reactor.getWriters())


class EagerWriteTests(TestCase):
    async def test_each_event_after_the_first_is_sent_at_once(self) -> None:
        """
        The status line, headers and first event are buffered, to leave
        together on the reactor's next turn; each later event (and the end of
        the stream) leaves in the write's own call: nothing waits in the
        transport's buffer or for the reactor's next turn.
        """
        resource = _Stream()
        port = listen(self, ProxySite(resource, reactor=reactor))
        client = await raw_connect(port)
        self.addCleanup(client.transport.loseConnection)
        client.transport.write(b"GET /s HTTP/1.1\r\nHost: x\r\n\r\n")
        await client.wait_for(b"data: 1\n\n")
        self.assertEqual(len(client.chunks), 1)  # headers and event together
        resource.event(b"data: 2\n\n")
        resource.request.finish()
        await client.wait_for(b"0\r\n\r\n")
        self.assertGreater(resource.buffered[0], 0)
        self.assertEqual(resource.buffered[1:], [0])
        self.assertEqual(resource.registered, [True, False])
        self.assertTrue(client.data.startswith(b"HTTP/1.1 200 OK\r\n"))
        self.assertTrue(client.data.endswith(b"9\r\ndata: 1\n\n\r\n9\r\ndata: 2\n\n\r\n0\r\n\r\n"))

    def test_behind_buffered_bytes_order_is_kept(self) -> None:
        """With bytes already waiting, new ones queue behind them, not ahead."""
        transport = StringTransport()
        transport.write(b"first ")
        send_now(transport, b"second third")
        self.assertEqual(transport.value(), b"first second third")


class _Silences(BodyReader):
    def __init__(self, clock: Clock) -> None:
        super().__init__(clock, 10.0)
        self.silences: list[float] = []

    def idle_expired(self) -> None:
        self.silences.append(self._clock.seconds())


class IdleDeadlineTests(TestCase):
    def test_the_deadline_is_exact_and_chunks_do_not_move_a_timer(self) -> None:
        """
        Chunks 3 s apart keep one timer where it was armed; silence then
        expires 10 s after the last chunk, not 10 s after the timer was armed.
        """
        clock = Clock()
        reader = _Silences(clock)
        reader.makeConnection(StringTransport())
        reader.start_timing()
        [timer] = clock.getDelayedCalls()
        for _ in range(3):
            clock.advance(3)
            reader.dataReceived(b"x")
            self.assertEqual(clock.getDelayedCalls(), [timer])
            self.assertEqual(timer.getTime(), 10)
        clock.advance(9.9)
        self.assertEqual(reader.silences, [])
        clock.advance(0.1)
        self.assertEqual(reader.silences, [19.0])
        self.assertEqual(clock.getDelayedCalls(), [])


class _Ok(Resource):
    isLeaf = True

    def render(self, request: Any) -> bytes:
        return b"ok"


_KEPT_REQUEST = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


class ConnectionDeadlineTests(TestCase):
    """
    A connection's deadlines (header, keep-alive, idle) are one lazily moved
    timer: a kept-alive connection's requests schedule no timer of their own,
    and it still closes exactly ``keepalive_timeout`` after its last request.
    """

    def connect(self) -> tuple[Any, StringTransport, Clock, list[float]]:
        clock = Clock()
        scheduled: list[float] = []
        call_later = clock.callLater

        def counted(delay: float, *args: Any, **kwargs: Any) -> Any:
            scheduled.append(delay)
            return call_later(delay, *args, **kwargs)

        clock.callLater = counted  # type: ignore[method-assign]
        site = ProxySite(_Ok(), reactor=clock, header_timeout=15.0, keepalive_timeout=60.0)
        connection, transport = connect_in_memory(site)
        return connection, transport, clock, scheduled

    def test_kept_alive_requests_schedule_no_timer(self) -> None:
        connection, transport, clock, scheduled = self.connect()
        connection.dataReceived(_KEPT_REQUEST)
        scheduled.clear()
        for _ in range(120):
            clock.advance(1)
            connection.dataReceived(_KEPT_REQUEST)
        self.assertEqual(transport.value().count(b"HTTP/1.1 200 OK"), 121)
        # The timer fired at the first request's header deadline (15 s) and
        # at 74 s, each time waiting again for the rest: two timers in 120 s,
        # where a DelayedCall per deadline change made about four per request.
        self.assertEqual(scheduled, [59.0, 59.0])
        self.assertEqual(len(clock.getDelayedCalls()), 1)

    def test_the_keepalive_deadline_is_exact_after_many_requests(self) -> None:
        connection, transport, clock, _ = self.connect()
        for _ in range(5):
            connection.dataReceived(_KEPT_REQUEST)
            clock.advance(30)
        # The timer set at the first request fired early and waited for the rest.
        clock.advance(29.9)
        self.assertFalse(transport.disconnecting)
        clock.advance(0.1)
        self.assertTrue(transport.disconnecting)

    def test_a_sooner_deadline_replaces_the_timer(self) -> None:
        """A kept-alive request's partial head: its header deadline is sooner than keep-alive's."""
        connection, transport, clock, scheduled = self.connect()
        connection.dataReceived(_KEPT_REQUEST)
        clock.advance(1)
        connection.dataReceived(b"GET / HTTP/1.1\r\n")
        self.assertEqual(scheduled[-1], 15.0)
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        clock.advance(14.9)
        self.assertFalse(transport.disconnecting)
        clock.advance(0.1)
        self.assertTrue(transport.disconnecting)
        self.assertIn(b"408 Request Timeout", transport.value())

    def test_a_closed_connection_leaves_no_timer(self) -> None:
        connection, _, clock, _ = self.connect()
        connection.dataReceived(_KEPT_REQUEST)
        connection.connectionLost(None)
        self.assertEqual(clock.getDelayedCalls(), [])


class ConnectionFactsTests(TestCase):
    """A connection's addresses and security are read from its transport once, not per request."""

    def test_addresses_are_read_once_per_connection(self) -> None:
        site = ProxySite(_Ok(), reactor=Clock())
        connection = site.buildProtocol(None)
        transport = StringTransport()
        reads: list[str] = []
        get_peer, get_host = transport.getPeer, transport.getHost
        transport.getPeer = lambda: reads.append("peer") or get_peer()  # type: ignore[method-assign]
        transport.getHost = lambda: reads.append("host") or get_host()  # type: ignore[method-assign]
        connection.makeConnection(transport)
        for _ in range(3):
            connection.dataReceived(_KEPT_REQUEST)
        channel = connection._channel
        self.assertEqual(sorted(reads), ["host", "peer"])
        self.assertEqual(channel.getPeer(), get_peer())
        self.assertEqual(channel.getHost(), get_host())
        self.assertFalse(channel.isSecure())
        self.assertEqual(transport.value().count(b"HTTP/1.1 200 OK"), 3)


class ResponseHeadTests(TestCase):
    """The response's status line and headers, written as one piece, are twisted.web's bytes."""

    def test_the_same_bytes_as_twisted_web_writes(self) -> None:
        headers = Headers()
        for name, value in [
            (b"Date", b"Mon, 30 Nov 2026 08:00:00 GMT"),
            (b"content-type", b"application/json"),
            (b"Set-Cookie", b"a=1"),
            (b"Set-Cookie", b"b=2"),
            (b"Transfer-Encoding", b"chunked"),
        ]:
            headers.addRawHeader(name, value)
        written = []
        for channel in (ProxyChannel(), HTTPChannel()):
            transport = StringTransport()
            channel.transport = transport
            channel.writeHeaders(b"HTTP/1.1", b"200", b"OK", headers)
            written.append(transport.value())
        self.assertEqual(written[0], written[1])
        self.assertTrue(written[0].startswith(b"HTTP/1.1 200 OK\r\nDate: "))
