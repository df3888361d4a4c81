"""
Tests of :mod:`vespa.gate`, the FIFO gate behind worker admission, the
client's limiter and batching.
"""

from __future__ import annotations

from twisted.internet.defer import CancelledError
from twisted.trial.unittest import SynchronousTestCase

from vespa.gate import Gate, Slot


class GateTests(SynchronousTestCase):
    def test_no_limit_never_queues(self) -> None:
        gate = Gate(None)
        slots = [self.successResultOf(gate.acquire()) for _ in range(1000)]
        self.assertEqual((gate.held, gate.queued, gate.free), (1000, 0, True))
        for slot in slots:
            slot.release()
        self.assertEqual(gate.held, 0)

    def test_a_limit_below_one_is_refused(self) -> None:
        for limit in (0, -1):
            self.assertRaises(ValueError, Gate, limit)

    def test_waiters_are_served_first_in_first_out(self) -> None:
        gate = Gate(1)
        first = self.successResultOf(gate.acquire())
        waiting = [gate.acquire() for _ in range(3)]
        self.assertFalse(gate.free)
        order: list[int] = []
        for i, d in enumerate(waiting):
            d.addCallback(lambda slot, i=i: (order.append(i), slot)[1])
        first.release()
        second = self.successResultOf(waiting[0])
        self.assertEqual((gate.held, gate.queued), (1, 2))
        second.release()
        self.successResultOf(waiting[1]).release()
        self.successResultOf(waiting[2]).release()
        self.assertEqual(order, [0, 1, 2])
        self.assertEqual((gate.held, gate.queued), (0, 0))

    def test_a_release_hands_the_place_over_before_a_newcomer(self) -> None:
        gate = Gate(1)
        first = self.successResultOf(gate.acquire())
        waiter = gate.acquire()
        first.release()
        self.assertIsInstance(self.successResultOf(waiter), Slot)
        newcomer = gate.acquire()
        self.assertNoResult(newcomer)

    def test_a_cancelled_waiter_leaves_and_is_never_served(self) -> None:
        gate = Gate(1)
        first = self.successResultOf(gate.acquire())
        cancelled, kept = gate.acquire(), gate.acquire()
        cancelled.cancel()
        self.failureResultOf(cancelled, CancelledError)
        self.assertEqual(gate.queued, 1)
        first.release()
        self.successResultOf(kept)
        self.assertEqual(gate.held, 1)

    def test_releasing_twice_frees_one_place(self) -> None:
        gate = Gate(2)
        slot = self.successResultOf(gate.acquire())
        self.successResultOf(gate.acquire())
        slot.release()
        slot.release()
        self.assertTrue(slot.released)
        self.assertEqual(gate.held, 1)

    def test_take_holds_a_free_place_at_once(self) -> None:
        gate = Gate(2)
        first, second = gate.take(), gate.take()
        self.assertIsInstance(first, Slot)
        self.assertIsInstance(second, Slot)
        self.assertIsNone(gate.take())
        self.assertEqual((gate.held, gate.queued), (2, 0))

    def test_take_never_passes_a_waiter(self) -> None:
        gate = Gate(1)
        held = gate.take()
        assert held is not None
        waiter = gate.acquire()
        held.release()  # handed to the waiter, not freed
        self.assertIsNone(gate.take())
        self.successResultOf(waiter).release()
        self.assertIsInstance(gate.take(), Slot)
