"""
The relay's exchange deadlines: one timer per kind of deadline for all the
exchanges, exact to the second on a ``Clock``
(:class:`vespa.http.deadlines.Deadlines`, used by
:class:`vespa.http.relay.BackendRelay`).
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.support import HTTPClient, start_echo_backend, start_worker
from vespa.http.deadlines import Deadlines


class DeadlinesTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.expired: list[str] = []
        self.deadlines: Deadlines[str] = Deadlines(self.clock, 10.0, self.expired.append)

    def test_each_expires_exactly_on_time_in_order(self) -> None:
        self.deadlines.add("a")
        self.clock.advance(3)
        self.deadlines.add("b")
        self.deadlines.add("c")
        self.clock.advance(6.9)
        self.assertEqual(self.expired, [])
        self.clock.advance(0.1)
        self.assertEqual(self.expired, ["a"])
        self.clock.advance(2.9)
        self.assertEqual(self.expired, ["a"])
        self.clock.advance(0.1)
        self.assertEqual(self.expired, ["a", "b", "c"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_one_timer_however_many_deadlines(self) -> None:
        for n in range(100):
            self.deadlines.add(str(n))
            self.clock.advance(0.01)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)

    def test_a_discarded_deadline_never_fires(self) -> None:
        self.deadlines.add("a")
        self.clock.advance(1)
        self.deadlines.add("b")
        self.deadlines.discard("a")
        self.clock.advance(9)
        self.assertEqual(self.expired, [])
        self.clock.advance(1)
        self.assertEqual(self.expired, ["b"])
        self.assertEqual(len(self.deadlines), 0)

    def test_stop_drops_them_and_the_timer(self) -> None:
        self.deadlines.add("a")
        self.deadlines.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(20)
        self.assertEqual(self.expired, [])


class RelayTimerTests(TestCase):
    """The relay arms no timer per exchange."""

    async def test_exchanges_share_one_timer_per_deadline(self) -> None:
        clock = Clock()
        _, backend_port = start_echo_backend(self)
        worker, port = start_worker(
            self, backend_port, clock=clock, first_byte_timeout=30.0, total_timeout=60.0
        )
        client = HTTPClient(self, port, pooled=True)
        for _ in range(5):
            response, _ = await client.request(b"POST", b"/echo", body=b"{}")
            self.assertEqual(response.code, 200)
        # The first-byte and total deadlines' timers, and the pool's idle
        # expiry: three, not two per exchange.
        self.assertEqual(len(clock.getDelayedCalls()), 3)
        self.assertEqual(len(worker.relay.first_byte or ()), 0)
