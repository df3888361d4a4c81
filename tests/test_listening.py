"""
Tests for :mod:`vespa.listening`: the listener tells its bound port through the
public endpoint API, a busy port is fatal or logged as asked, and stopping
closes the port.
"""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.error import CannotListenError, ConnectionRefusedError
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase

from vespa.listening import Listener


def _listener(port: int = 0, *, fatal: bool = True) -> Listener:
    endpoint = TCP4ServerEndpoint(reactor, port, interface="127.0.0.1")
    return Listener(endpoint, Factory.forProtocol(Protocol), fatal=fatal)


class ListenerTests(TestCase):
    async def test_tells_the_bound_port(self) -> None:
        """Asked before it starts, it answers once listening; the port takes connections."""
        listener = _listener()
        waiting = listener.listening()
        self.assertNoResult(waiting)
        listener.startService()
        self.addCleanup(listener.stopService)
        port = await listener.port()
        self.assertEqual((await waiting).getHost().port, port)
        client = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
        connected = await client.connect(Factory.forProtocol(Protocol))
        connected.transport.loseConnection()

    async def test_stop_closes_the_port(self) -> None:
        """After stopService nothing listens there any more."""
        listener = _listener()
        listener.startService()
        port = await listener.port()
        await listener.stopService()
        client = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
        with self.assertRaises(ConnectionRefusedError):
            await client.connect(Factory.forProtocol(Protocol))

    async def test_busy_port_is_fatal_at_start(self) -> None:
        """The main listener: a busy port raises from startService (twistd stops)."""
        first = _listener()
        first.startService()
        self.addCleanup(first.stopService)
        second = _listener(await first.port())
        self.assertRaises(CannotListenError, second.startService)
        self.failureResultOf(second.listening(), CannotListenError)
        self.successResultOf(second.stopService())

    async def test_busy_port_is_logged_when_optional(self) -> None:
        """An optional listener on a busy port logs it once and keeps the service up."""
        first = _listener()
        first.startService()
        self.addCleanup(first.stopService)
        events: list[dict[str, object]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        second = _listener(await first.port(), fatal=False)
        second.startService()
        self.assertTrue(second.running)
        self.failureResultOf(second.listening(), CannotListenError)
        failures = [e for e in events if "log_failure" in e]
        self.assertEqual(len(failures), 1)
        self.flushLoggedErrors(CannotListenError)
        self.successResultOf(second.stopService())
