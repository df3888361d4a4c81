"""
One attempt at one worker, on a memory reactor and a ``Clock``: whether a
failed attempt may have delivered the request (what makes a retry safe).
"""

from __future__ import annotations

from typing import Any

from OpenSSL import SSL
from twisted.internet import error as ierror
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web._newclient import RequestNotSent
from twisted.web.client import ResponseFailed, ResponseNeverReceived
from twisted.web.http_headers import Headers

from vespa.client.errors import WorkerTimeout, WorkerUnavailable
from vespa.client.tls import worker_tls_policy
from vespa.client.upstream import Answer, Sender, WorkerRequest, never_sent

WORKER = "http://127.0.0.1:4000"
BODY = b'{"auth_data": {}, "payload": {"prompt": "once"}}'


class NeverSentTests(SynchronousTestCase):
    def test_failures_before_a_connection(self) -> None:
        for error in (
            ierror.ConnectionRefusedError(),
            ierror.TimeoutError(),
            ierror.DNSLookupError(),
            ierror.ConnectingCancelledError(None),
            RequestNotSent(),
        ):
            self.assertTrue(never_sent(Failure(error)), error)

    def test_failures_after_the_request_was_written(self) -> None:
        for error in (
            ResponseNeverReceived([Failure(ierror.ConnectionLost())]),
            ResponseNeverReceived([Failure(CancelledError())]),
            ResponseFailed([Failure(ierror.ConnectionDone())]),
            CancelledError(),  # not known to be before the connection: possibly sent
            ValueError("anything else"),
        ):
            self.assertFalse(never_sent(Failure(error)), error)

    def test_a_failed_tls_handshake_sent_nothing(self) -> None:
        handshake = ResponseNeverReceived([Failure(SSL.Error([("SSL", "", "bad cert")]))])
        self.assertTrue(never_sent(Failure(handshake)))


class AttemptTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactor()
        self.clock = Clock()
        self.sender = Sender(
            self.reactor,
            clock=self.clock,
            tls=worker_tls_policy(None),
            connect_timeout=10.0,
            first_byte_timeout=30.0,
        )

    def send(self, method: bytes = b"POST") -> Deferred[Answer]:
        url = WORKER.encode() + b"/v1/completions"
        request = WorkerRequest(method, url, Headers({b"Host": [b"worker"]}), BODY)
        return self.sender.send(request, WORKER, peek=True)

    def failed(self, d: Deferred[Any]) -> WorkerUnavailable:
        error = self.failureResultOf(d, WorkerUnavailable).value
        assert isinstance(error, WorkerUnavailable)
        return error

    def connect(self) -> tuple[Any, StringTransport]:
        """Complete the pending connect: the protocol, and the transport it writes to."""
        factory = self.reactor.tcpClients[-1][2]
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        return protocol, transport

    def test_connection_refused_sent_nothing(self) -> None:
        d = self.send()
        factory = self.reactor.tcpClients[0][2]
        factory.clientConnectionFailed(None, Failure(ierror.ConnectionRefusedError()))
        error = self.failed(d)
        self.assertIn("refused the connection", error.message)
        self.assertFalse(error.maybe_delivered)

    def test_connect_timeout_sent_nothing(self) -> None:
        d = self.send()
        factory = self.reactor.tcpClients[0][2]
        factory.clientConnectionFailed(None, Failure(ierror.TimeoutError()))
        error = self.failed(d)
        self.assertIsInstance(error, WorkerTimeout)
        self.assertFalse(error.maybe_delivered)

    def test_first_byte_timeout_while_connecting_sent_nothing(self) -> None:
        d = self.send()
        self.clock.advance(30)
        error = self.failed(d)
        self.assertIsInstance(error, WorkerTimeout)
        self.assertIn("sent nothing within 30 s", error.message)
        self.assertFalse(error.maybe_delivered)

    def test_first_byte_timeout_after_sending_may_have_delivered(self) -> None:
        d = self.send()
        _, transport = self.connect()
        self.assertIn(BODY, transport.value())
        self.clock.advance(30)
        error = self.failed(d)
        self.assertIsInstance(error, WorkerTimeout)
        self.assertTrue(error.maybe_delivered)

    def test_reset_after_sending_may_have_delivered(self) -> None:
        d = self.send()
        protocol, transport = self.connect()
        self.assertIn(BODY, transport.value())
        protocol.connectionLost(Failure(ierror.ConnectionLost()))
        error = self.failed(d)
        self.assertTrue(error.maybe_delivered)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_request_agent_refuses_sent_nothing(self) -> None:
        """Agent raising at once (a method with a space): a failed attempt, not a raise."""
        d = self.send(b"PO ST")
        error = self.failed(d)
        self.assertIn("could not be sent", error.message)
        self.assertFalse(error.maybe_delivered)
        self.assertEqual(self.reactor.tcpClients, [])
