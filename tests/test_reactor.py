"""
:class:`vespa.epoll_reactor.VespaReactor`: I/O events dispatched without the
legacy log context, Twisted's error handling kept.

Each test builds its own reactor (never the global one) and turns it by hand
with ``iterate``, on real loopback sockets. Twisted's own reactor tests run
against it in ``tests.test_reactor_twisted``.
"""

from __future__ import annotations

import os
import select
import socket
import sys
from typing import Any

from twisted.internet import error
from twisted.internet.abstract import FileDescriptor
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import globalLogPublisher
from twisted.python import log as legacy_log
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, SynchronousTestCase

if not sys.platform.startswith("linux"):
    raise SkipTest("VespaReactor is Linux only (epoll)")

from vespa.epoll_reactor import VespaReactor

#: Turns of a reactor allowed before a test gives up waiting for a condition.
TURNS = 200


LEGACY = "a legacy log line inside an I/O callback"


class Boom(Exception):
    """What a protocol raises to prove that only its connection suffers."""


def spin(reactor: VespaReactor, condition: Any) -> None:
    """Turn ``reactor`` until ``condition()`` is true; fail after :data:`TURNS` turns."""
    for _ in range(TURNS):
        if condition():
            return
        reactor.iterate(0.05)
    raise AssertionError("the condition never became true")


def receive(reactor: VespaReactor, sock: socket.socket) -> bytes:
    """Turn ``reactor`` until ``sock`` has something to read, and read it."""
    spin(reactor, lambda: select.select([sock], [], [], 0)[0])
    return sock.recv(100)


class Echo(Protocol):
    """Echoes, except that it raises on ``boom``; remembers why it was lost."""

    lost: list[Failure]

    def connectionMade(self) -> None:
        self.lost = []
        self.factory.connections.append(self)  # type: ignore[attr-defined]

    def dataReceived(self, data: bytes) -> None:
        if data == b"boom":
            raise Boom("raised by dataReceived")
        if data == b"legacy":
            legacy_log.msg(LEGACY)
        self.transport.write(data)  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure | None = None) -> None:
        assert reason is not None
        self.lost.append(reason)


class Pipe(FileDescriptor):
    """The read end of a pipe as a reactor descriptor whose ``doRead`` says what the test wants."""

    def __init__(self, reactor: VespaReactor, answer: Any, fileno: int | None = None) -> None:
        super().__init__(reactor)
        self.read_end, self.write_end = os.pipe()
        self.answer = answer
        self.fake_fileno = fileno
        self.lost: list[Failure] = []

    def fileno(self) -> int:
        return self.read_end if self.fake_fileno is None else self.fake_fileno

    def doRead(self) -> Any:
        os.read(self.read_end, 100)
        return self.answer

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        self.lost.append(reason)
        self.fake_fileno = -2  # removed from the poller already

    def close(self) -> None:
        os.close(self.read_end)
        os.close(self.write_end)


class DispatchTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = VespaReactor()
        self.addCleanup(self.reactor.disconnectAll)
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def serve(self) -> tuple[Factory, int]:
        factory = Factory.forProtocol(Echo)
        factory.connections = []  # type: ignore[attr-defined]
        port = self.reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return factory, port.getHost().port

    def connect(self, port: int) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", port))
        self.addCleanup(sock.close)
        sock.settimeout(5)
        return sock

    def test_reads_and_writes(self) -> None:
        """What a client sends comes back: a read, then a write, dispatched."""
        _, port = self.serve()
        sock = self.connect(port)
        sock.sendall(b"hello")
        self.assertEqual(receive(self.reactor, sock), b"hello")

    def test_a_hang_up_ends_the_connection_cleanly(self) -> None:
        """The peer closing is a clean end (``ConnectionDone``), not an error."""
        factory, port = self.serve()
        sock = self.connect(port)
        spin(self.reactor, lambda: factory.connections)  # type: ignore[attr-defined]
        sock.close()
        connection = factory.connections[0]  # type: ignore[attr-defined]
        spin(self.reactor, lambda: connection.lost)
        connection.lost[0].trap(error.ConnectionDone)

    def test_an_exception_disconnects_only_its_descriptor_and_is_logged_once(self) -> None:
        factory, port = self.serve()
        victim, bystander = self.connect(port), self.connect(port)
        spin(self.reactor, lambda: len(factory.connections) == 2)  # type: ignore[attr-defined]
        victim.sendall(b"boom")
        failed = factory.connections[0]  # type: ignore[attr-defined]
        spin(self.reactor, lambda: failed.lost)
        failed.lost[0].trap(Boom)
        self.assertEqual(victim.recv(10), b"")  # closed on the caller too
        # The reactor runs on and the other connection still works.
        bystander.sendall(b"still here")
        self.assertEqual(receive(self.reactor, bystander), b"still here")
        errors = [e for e in self.events if "log_failure" in e]
        self.assertEqual(len(errors), 1)
        self.assertIsInstance(errors[0]["log_failure"].value, Boom)
        # The error keeps the descriptor's system prefix, as Twisted's log.err had it.
        self.assertEqual(errors[0]["log_system"], failed.transport.logPrefix())
        self.assertEqual(len(self.flushLoggedErrors(Boom)), 1)

    def test_legacy_log_lines_in_io_callbacks_lose_the_system_prefix(self) -> None:
        """
        What the reactor gives up: a legacy ``log.msg`` inside ``doRead`` has
        the system ``-`` (Twisted's reactor labels it with the connection's
        ``logPrefix()``). Events of :mod:`twisted.logger`, Vespa's, never had it.
        """
        _, port = self.serve()
        sock = self.connect(port)
        sock.sendall(b"legacy")

        def lines() -> list[dict[str, Any]]:
            return [e for e in self.events if e.get("message") == (LEGACY,)]

        spin(self.reactor, lines)
        self.assertEqual(lines()[0]["system"], "-")

    def test_a_reason_returned_by_doRead_disconnects_without_an_error(self) -> None:
        pipe = Pipe(self.reactor, error.ConnectionLost("said by doRead"))
        self.addCleanup(pipe.close)
        self.reactor.addReader(pipe)
        os.write(pipe.write_end, b"x")
        spin(self.reactor, lambda: pipe.lost)
        pipe.lost[0].trap(error.ConnectionLost)
        self.assertNotIn(pipe, self.reactor.getReaders())
        self.assertEqual([e for e in self.events if "log_failure" in e], [])

    def test_a_descriptor_without_a_file_is_disconnected(self) -> None:
        """``fileno()`` saying -1 disconnects it before ``doRead``, as Twisted does."""
        pipe = Pipe(self.reactor, None)
        self.addCleanup(pipe.close)
        self.reactor.addReader(pipe)
        pipe.fake_fileno = -1
        os.write(pipe.write_end, b"x")
        spin(self.reactor, lambda: pipe.lost)
        pipe.lost[0].trap(error.ConnectionFdescWentAway)
        self.assertEqual(os.read(pipe.read_end, 10), b"x")  # never read

    def test_an_error_while_disconnecting_is_logged_and_the_reactor_runs_on(self) -> None:
        class BadLoss(Pipe):
            def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
                super().connectionLost(reason)
                raise Boom("raised by connectionLost")

        pipe = BadLoss(self.reactor, error.ConnectionLost("said by doRead"))
        self.addCleanup(pipe.close)
        self.reactor.addReader(pipe)
        os.write(pipe.write_end, b"x")
        spin(self.reactor, lambda: pipe.lost)
        fired: list[bool] = []
        self.reactor.callLater(0, fired.append, True)
        spin(self.reactor, lambda: fired)
        self.assertEqual(len(self.flushLoggedErrors(Boom)), 1)


class WriteTests(SynchronousTestCase):
    """
    A write leaves at the end of the turn that made it, with no ``epoll``
    registration; only bytes the socket cannot take are left to ``epoll``.
    """

    def setUp(self) -> None:
        self.reactor = VespaReactor()
        self.addCleanup(self.reactor.disconnectAll)
        self.factory = Factory.forProtocol(Echo)
        self.factory.connections = []  # type: ignore[attr-defined]
        port = self.reactor.listenTCP(0, self.factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.sock = socket.create_connection(("127.0.0.1", port.getHost().port))
        self.addCleanup(self.sock.close)
        self.sock.settimeout(5)
        spin(self.reactor, lambda: self.factory.connections)  # type: ignore[attr-defined]
        self.server: Echo = self.factory.connections[0]  # type: ignore[attr-defined]

    def written(self) -> bool:
        """Whether epoll watches the server's connection for writability."""
        return self.server.transport.fileno() in self.reactor._writes  # type: ignore[union-attr]

    def turn_once_readable(self) -> None:
        """Turn the reactor until a turn has read the client's bytes."""
        transport: Any = self.server.transport
        spin(self.reactor, lambda: select.select([transport.socket], [], [], 0)[0])
        self.reactor.iterate(5)

    def test_a_reply_leaves_in_the_turn_that_read_the_request(self) -> None:
        """One turn reads, echoes and sends; epoll never watched the socket for writing."""
        self.sock.sendall(b"hello")
        self.turn_once_readable()
        self.assertEqual(select.select([self.sock], [], [], 0)[0], [self.sock])
        self.assertEqual(self.sock.recv(100), b"hello")
        self.assertFalse(self.written())
        self.assertNotIn(self.server.transport, self.reactor.getWriters())

    def test_writes_of_one_turn_leave_together(self) -> None:
        """Two writes in one dispatch reach the peer in one piece, in order."""
        transport: Any = self.server.transport
        self.server.dataReceived = lambda data: (  # type: ignore[method-assign]
            transport.write(b"head;"), transport.write(b"body")
        )
        self.sock.sendall(b"go")
        self.turn_once_readable()
        self.assertEqual(self.sock.recv(100), b"head;body")

    def test_a_write_made_by_a_timer_leaves_without_waiting_for_io(self) -> None:
        """Written outside a dispatch: the next poll sends it before it waits."""
        transport: Any = self.server.transport
        self.reactor.callLater(0, transport.write, b"from a timer")
        self.reactor.runUntilCurrent()
        self.reactor.doIteration(None)  # would wait forever if it polled first
        self.assertEqual(self.sock.recv(100), b"from a timer")

    def test_what_the_socket_cannot_take_is_left_to_epoll(self) -> None:
        """
        A write bigger than the socket's buffers: what is left waits for
        epoll to say the socket is writable, and all of it arrives, in order.
        """
        payload = bytes(range(256)) * (16 * 1024)  # 4 MiB
        transport: Any = self.server.transport
        transport.write(payload)
        self.reactor.iterate(0)
        self.assertTrue(self.written())
        got = bytearray()
        while len(got) < len(payload):
            self.reactor.iterate(0.01)
            try:
                got += self.sock.recv(1 << 20, socket.MSG_DONTWAIT)
            except BlockingIOError:
                pass
        self.assertEqual(bytes(got), payload)
        spin(self.reactor, lambda: not self.written())

    def test_a_writer_removed_before_its_flush_is_not_written(self) -> None:
        """``stopWriting`` between the write and the end of the turn: nothing is sent."""
        pipe = Pipe(self.reactor, None)
        self.addCleanup(pipe.close)
        calls: list[None] = []
        pipe.doWrite = lambda: calls.append(None)  # type: ignore[method-assign]
        self.reactor.addWriter(pipe)
        self.assertIn(pipe, self.reactor.getWriters())
        self.reactor.removeWriter(pipe)
        self.assertNotIn(pipe, self.reactor.getWriters())
        self.reactor.iterate(0)
        self.assertEqual(calls, [])

    def test_a_writer_removed_by_an_earlier_flush_is_not_written(self) -> None:
        """One writer's flush stops another of the same turn: that one is left out."""
        first, second = Pipe(self.reactor, None), Pipe(self.reactor, None)
        self.addCleanup(first.close)
        self.addCleanup(second.close)
        calls: list[str] = []

        def first_writes() -> None:
            calls.append("first")
            self.reactor.removeWriter(first)
            self.reactor.removeWriter(second)  # as closing its connection would

        first.doWrite = first_writes  # type: ignore[method-assign]
        second.doWrite = lambda: calls.append("second")  # type: ignore[method-assign]
        self.reactor.addWriter(first)
        self.reactor.addWriter(second)
        self.reactor.iterate(0)
        self.assertEqual(calls, ["first"])
        self.assertEqual(self.reactor.getWriters(), [])

    def test_a_flush_that_raises_disconnects_its_writer_and_is_logged(self) -> None:
        """As a failing ``doWrite`` in a dispatch: logged once, disconnected, reactor runs on."""
        transport: Any = self.server.transport

        def boom() -> None:
            raise Boom("raised by doWrite")

        transport.doWrite = boom
        transport.write(b"x")
        self.reactor.iterate(0)
        spin(self.reactor, lambda: self.server.lost)
        self.server.lost[0].trap(Boom)
        self.assertEqual(len(self.flushLoggedErrors(Boom)), 1)


class MainLoopTests(SynchronousTestCase):
    """``run()``'s loop: turns with no timer due skip Twisted's timer steps, nothing else."""

    def setUp(self) -> None:
        self.reactor = VespaReactor()
        self.addCleanup(self.reactor.disconnectAll)

    def test_timers_fire_in_order_while_io_flows(self) -> None:
        """
        Events keep the loop turning with a timer pending (the turns that
        skip Twisted's steps); each timer still fires, in order, once due.
        """
        reactor = self.reactor
        pipe = Pipe(reactor, None)
        self.addCleanup(pipe.close)
        reads: list[None] = []

        def read() -> None:
            os.read(pipe.read_end, 100)
            reads.append(None)
            os.write(pipe.write_end, b"x")  # readable again: a busy loop of turns

        pipe.doRead = read  # type: ignore[method-assign]
        reactor.addReader(pipe)
        os.write(pipe.write_end, b"x")
        fired: list[str] = []
        reactor.callLater(0.05, fired.append, "second")
        reactor.callLater(0.01, fired.append, "first")
        reactor.callLater(0.1, reactor.stop)
        reactor.run(installSignalHandlers=False)
        self.assertEqual(fired, ["first", "second"])
        self.assertGreater(len(reads), 10)

    def test_an_error_escaping_a_turn_is_logged_and_the_loop_goes_on(self) -> None:
        """As in Twisted's loop: logged once as an unexpected error, then the next turn."""
        reactor = self.reactor
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        polls = {"count": 0}
        poll = reactor.doIteration

        def failing_once(timeout: float | None) -> None:
            polls["count"] += 1
            if polls["count"] == 1:
                raise Boom("raised by a poll")
            poll(timeout)

        reactor.doIteration = failing_once  # type: ignore[method-assign]
        reactor.callLater(0.01, reactor.stop)
        reactor.run(installSignalHandlers=False)
        self.assertEqual(len(self.flushLoggedErrors(Boom)), 1)
        self.assertIn("Unexpected error in main loop", [e.get("log_format") for e in events])
        self.assertGreater(polls["count"], 1)
