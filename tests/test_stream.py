"""
Unit tests of :mod:`vespa.http.stream`, the streaming core of the worker's
relay and the client's attempts, on a ``Clock`` and an in-memory transport.
(End to end, the relay and the client tests exercise it on real sockets.)
"""

from __future__ import annotations

from twisted.internet.defer import CancelledError
from twisted.internet.error import ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import ResponseDone

from vespa.errors import VespaError
from vespa.http.stream import BodyReader, BoundedBuffer, Collector, Discard, ended_cleanly


class _Recorder(BodyReader):
    def __init__(self, clock: Clock, idle: float | None) -> None:
        super().__init__(clock, idle)
        self.chunks: list[bytes] = []
        self.reasons: list[Failure] = []
        self.silences = 0

    def received(self, data: bytes) -> None:
        self.chunks.append(data)

    def ended(self, reason: Failure) -> None:
        self.reasons.append(reason)

    def idle_expired(self) -> None:
        self.silences += 1


def _reading(idle: float | None = 10.0) -> tuple[Clock, StringTransport, _Recorder]:
    clock = Clock()
    transport = StringTransport()
    reader = _Recorder(clock, idle)
    reader.makeConnection(transport)
    return clock, transport, reader


class BodyReaderTests(SynchronousTestCase):
    def test_silence_counts_only_once_timing_started(self) -> None:
        clock, _, reader = _reading()
        clock.advance(100)
        self.assertEqual(reader.silences, 0)
        reader.start_timing()
        clock.advance(9.9)
        self.assertEqual(reader.silences, 0)
        clock.advance(0.1)
        self.assertEqual(reader.silences, 1)

    def test_data_restarts_the_silence(self) -> None:
        clock, _, reader = _reading()
        reader.start_timing()
        for _ in range(5):
            clock.advance(9)
            reader.dataReceived(b"x")
        self.assertEqual((reader.silences, reader.chunks), (0, [b"x"] * 5))

    def test_a_paused_reader_is_not_a_silent_sender(self) -> None:
        clock, transport, reader = _reading()
        reader.start_timing()
        reader.pauseProducing()
        self.assertEqual(transport.producerState, "paused")
        clock.advance(1000)
        self.assertEqual(reader.silences, 0)
        reader.resumeProducing()
        self.assertEqual(transport.producerState, "producing")
        clock.advance(10)
        self.assertEqual(reader.silences, 1)

    def test_stop_aborts_the_body_and_the_timer(self) -> None:
        clock, transport, reader = _reading()
        reader.start_timing()
        reader.stopProducing()
        self.assertEqual(transport.producerState, "stopped")
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_the_end_disarms_and_is_reported(self) -> None:
        clock, _, reader = _reading()
        reader.start_timing()
        reader.connectionLost(Failure(ResponseDone()))
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertTrue(ended_cleanly(reader.reasons[0]))
        self.assertFalse(ended_cleanly(Failure(ConnectionLost())))

    def test_no_idle_limit_never_times(self) -> None:
        clock, _, reader = _reading(idle=None)
        reader.start_timing()
        self.assertEqual(clock.getDelayedCalls(), [])


class CollectorTests(SynchronousTestCase):
    def test_a_protocol_body_is_collected(self) -> None:
        kept = BoundedBuffer(10, VespaError("too large"))
        collector = Collector(kept)
        finished = collector.finished
        assert finished is not None
        collector.makeConnection(StringTransport())
        collector.dataReceived(b"abc")
        collector.connectionLost(Failure(ResponseDone()))
        self.successResultOf(finished)
        self.assertEqual(kept.joined(), b"abc")

    def test_too_large_aborts_through_the_sink_face(self) -> None:
        aborted: list[bool] = []
        collector = Collector(
            BoundedBuffer(4, VespaError("too large")), lambda: aborted.append(True)
        )
        finished = collector.finished
        assert finished is not None
        collector.chunk(b"abc")
        collector.chunk(b"de")
        self.assertEqual(self.failureResultOf(finished, VespaError).value.message, "too large")
        self.assertEqual(aborted, [True])
        collector.end(None)  # the abort's own end changes nothing

    def test_a_cut_body_fails(self) -> None:
        collector = Collector(lambda data: None, lambda: None)
        finished = collector.finished
        assert finished is not None
        collector.end(VespaError("cut"))
        self.failureResultOf(finished, VespaError)

    def test_cancelling_closes_the_connection(self) -> None:
        transport = StringTransport()
        collector = Collector(lambda data: None)
        collector.makeConnection(transport)
        finished = collector.finished
        assert finished is not None
        finished.cancel()
        self.failureResultOf(finished, CancelledError)
        self.assertEqual(transport.producerState, "stopped")


class DiscardTests(SynchronousTestCase):
    def test_reads_to_the_end(self) -> None:
        transport = StringTransport()
        discard = Discard()
        discard.makeConnection(transport)
        discard.dataReceived(b"ignored")
        self.assertEqual(transport.producerState, "producing")
        discard.connectionLost(Failure(ResponseDone()))
        self.successResultOf(discard.done)

    def test_abort_closes_at_once(self) -> None:
        transport = StringTransport()
        Discard(abort=True).makeConnection(transport)
        self.assertEqual(transport.producerState, "stopped")
