"""
A request body already in memory, as the worker's relay and the client send
it (:func:`vespa.http.outbound.body_producer`): a small one in one write, a
large one a piece at a time, as the connection takes them.
"""

from __future__ import annotations

from twisted.internet.task import Clock, Cooperator
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from vespa.http.outbound import ONE_WRITE, body_producer

#: How often the test's cooperator runs a piece.
TICK = 0.01


class _Consumer(StringTransport):
    """A connection that records each write."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        super().write(data)


class BodyProducerTests(SynchronousTestCase):
    """What reaches the connection, and when."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.cooperator = Cooperator(
            scheduler=lambda step: self.clock.callLater(TICK, step),
            terminationPredicateFactory=lambda: lambda: True,  # one piece a tick
        )
        self.consumer = _Consumer()

    def test_small_body_in_one_write(self) -> None:
        """A body up to :data:`ONE_WRITE` is written at once, in one piece."""
        body = b"x" * ONE_WRITE
        done = body_producer(body, self.cooperator).startProducing(self.consumer)
        self.assertEqual(self.consumer.writes, [body])
        self.assertIsNone(self.successResultOf(done))

    def test_large_body_in_pieces(self) -> None:
        """
        A larger body goes a piece at a time, none over 64 KiB, and arrives
        whole; while the connection is paused, nothing more is written.
        """
        body = bytes(range(256)) * (ONE_WRITE // 128) + b"!"
        producer = body_producer(body, self.cooperator)
        self.assertEqual(producer.length, len(body))
        done = producer.startProducing(self.consumer)
        self.assertEqual(self.consumer.writes, [])
        self.clock.advance(TICK)
        producer.pauseProducing()
        written = len(self.consumer.writes)
        self.clock.pump([TICK] * 5)
        self.assertEqual(len(self.consumer.writes), written)
        producer.resumeProducing()
        while not done.called:
            self.clock.advance(TICK)
        self.assertEqual(b"".join(self.consumer.writes), body)
        self.assertLessEqual(max(map(len, self.consumer.writes)), 64 * 1024)
