"""
Tests for :mod:`vespa.worker.admission`: the wait estimate, the 429 it
produces, and the FIFO concurrency slots.
"""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import CancelledError, Deferred
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from vespa.errors import VespaError, write_error
from vespa.worker.admission import MAX_REPORTED_WAIT, Admission, Slot, TooBusy

#: The spec's example: a standard job is 100 units, done at 6.67 units/s.
JOB = 100.0
PERF = 6.67


class EstimateTests(SynchronousTestCase):
    """The queue-time estimate and the refusal it drives (spec 4.2)."""

    def test_spec_example(self) -> None:
        """
        One cost-100 request in flight at 6.67 units/s is about 15 s of work, so
        with a 10 s limit the next request is refused.
        """
        admission = Admission(max_wait_time=10.0)
        self.assertAlmostEqual(admission.estimate_wait(JOB, PERF), 14.993, places=3)
        self.assertRaises(TooBusy, admission.check, JOB, PERF)

    def test_official_default_is_30_seconds(self) -> None:
        """As the official worker's ``max_queue_time``: 30 s of work waits, more is refused."""
        admission = Admission()
        self.assertEqual(admission.max_wait_time, 30.0)
        admission.check(30 * PERF, PERF)
        self.assertRaises(TooBusy, admission.check, 30.5 * PERF, PERF)

    def test_zero_is_an_exclusive_worker(self) -> None:
        """
        ``max_wait_time`` 0 refuses while anything is in flight, even a request
        whose workload is 0, and admits when nothing is.
        """
        admission = Admission(max_wait_time=0.0)
        admission.check(0.0, PERF, 0)
        self.assertRaises(TooBusy, admission.check, 0.0, PERF, 1)
        self.assertRaises(TooBusy, admission.check, 1.0, 1e9, 1)

    def test_first_request_always_admitted(self) -> None:
        """
        The incoming request's own cost is not counted: with nothing in flight
        the estimate is 0 and any request, however large, is admitted.
        """
        admission = Admission(max_wait_time=0.0)
        self.assertEqual(admission.estimate_wait(0.0, PERF), 0.0)
        self.assertEqual(admission.estimate_wait(0.0, 0.0), 0.0)
        admission.check(0.0, PERF)
        admission.check(0.0, 0.0)

    def test_under_and_at_the_limit_admitted(self) -> None:
        """
        Only an estimate strictly over ``max_wait_time`` is refused.
        """
        admission = Admission(max_wait_time=10.0)
        admission.check(50.0, 10.0)
        admission.check(100.0, 10.0)
        self.assertRaises(TooBusy, admission.check, 100.1, 10.0)

    def test_throughput_floor(self) -> None:
        """
        A throughput of zero, below the floor, or NaN counts as 1e-5 units/s,
        so the estimate is huge but finite.
        """
        admission = Admission()
        for perf in (0.0, -1.0, 1e-9, float("nan")):
            self.assertAlmostEqual(admission.estimate_wait(1.0, perf), 1e5)

    def test_negative_workload(self) -> None:
        """
        A negative in-flight workload (an accounting slip) counts as nothing.
        """
        self.assertEqual(Admission().estimate_wait(-5.0, PERF), 0.0)

    def test_too_busy_answer(self) -> None:
        """
        The refusal is a 429 :class:`VespaError` with ``Retry-After`` in whole
        seconds (rounded up), and the estimate (to 3 decimals) and the limit in
        the body.
        """
        admission = Admission(max_wait_time=10.0)
        error = self.assertRaises(TooBusy, admission.check, JOB, PERF)
        self.assertIsInstance(error, VespaError)
        self.assertEqual(error.status, 429)
        self.assertEqual(error.headers, {"Retry-After": "15"})
        self.assertEqual(
            error.details, {"estimated_wait": round(JOB / PERF, 3), "max_wait_time": 10.0}
        )
        body = error.body()
        self.assertEqual(body["origin"], "vespa")
        self.assertIn("15.0 s", body["error"])
        self.assertIn("max_wait_time 10 s", body["error"])

    def test_too_busy_written_as_http(self) -> None:
        """
        :func:`~vespa.errors.write_error` turns the refusal into a 429 with a
        ``Retry-After`` header and a JSON body.
        """
        error = self.assertRaises(TooBusy, Admission(max_wait_time=10.0).check, JOB, PERF)
        request = DummyRequest([b""])
        body = json.loads(write_error(request, error))
        self.assertEqual(request.responseCode, 429)
        self.assertEqual(request.responseHeaders.getRawHeaders(b"retry-after"), [b"15"])
        self.assertEqual(body["estimated_wait"], 14.993)
        self.assertEqual(body["max_wait_time"], 10.0)

    def test_retry_after_is_a_whole_number_at_least_one(self) -> None:
        """
        ``Retry-After`` is an integer string: a fraction rounds up, and a
        sub-second estimate still says 1.
        """
        cases = [(0.25, 0.1, "1"), (1.0, 0.5, "1"), (10.01, 10.0, "11"), (20.0, 10.0, "20")]
        for estimate, limit, expected in cases:
            error = self.assertRaises(TooBusy, Admission(max_wait_time=limit).check, estimate, 1.0)
            self.assertEqual(error.headers["Retry-After"], expected)
            self.assertEqual(int(error.headers["Retry-After"]), float(expected))

    def test_absurd_estimate_is_capped_in_the_answer(self) -> None:
        """
        An infinite, NaN or enormous estimate is refused, and reported as one
        day, so the header stays a sane integer and the body valid JSON.
        """
        admission = Admission()
        for workload, perf in ((float("inf"), PERF), (float("nan"), PERF), (1e12, 0.0)):
            error = self.assertRaises(TooBusy, admission.check, workload, perf)
            self.assertEqual(error.headers["Retry-After"], "86400")
            self.assertEqual(error.details["estimated_wait"], MAX_REPORTED_WAIT)
            json.dumps(error.body(), allow_nan=False)

    def test_no_limit(self) -> None:
        """
        With ``max_wait_time=None`` nothing is ever refused.
        """
        admission = Admission(max_wait_time=None)
        admission.check(1e12, 0.0)
        admission.check(float("inf"), PERF)
        self.assertIsNone(admission.max_wait_time)

    def test_bad_settings(self) -> None:
        """
        A negative or NaN ``max_wait_time``, or fewer than one slot, is a
        :class:`ValueError`.
        """
        self.assertRaises(ValueError, Admission, max_wait_time=-1.0)
        self.assertRaises(ValueError, Admission, max_wait_time=float("nan"))
        self.assertRaises(ValueError, Admission, slots=0)
        self.assertRaises(ValueError, Admission, slots=-3)


class SlotTests(SynchronousTestCase):
    """The concurrency slots (spec 4.3): FIFO, cancellable, leak-free."""

    def acquired(self, d: Deferred[Slot]) -> Slot:
        """
        The slot ``d`` has fired with.
        """
        slot = self.successResultOf(d)
        self.assertIsInstance(slot, Slot)
        return slot

    def test_unlimited_never_queues(self) -> None:
        """
        With no limit every acquire succeeds at once and nothing queues.
        """
        admission = Admission(slots=None)
        slots = [self.acquired(admission.acquire()) for _ in range(1000)]
        self.assertEqual((admission.running, admission.queued), (1000, 0))
        self.assertIsNone(admission.slots)
        for slot in slots:
            slot.release()
        self.assertEqual((admission.running, admission.queued), (0, 0))

    def test_one_slot_serializes(self) -> None:
        """
        With one slot (``--allow-parallel false``) the second request waits
        until the first releases, and gets the slot in that very call.
        """
        admission = Admission(slots=1)
        first = self.acquired(admission.acquire())
        second = admission.acquire()
        self.assertNoResult(second)
        self.assertEqual((admission.running, admission.queued), (1, 1))
        first.release()
        self.acquired(second).release()
        self.assertEqual((admission.running, admission.queued), (0, 0))

    def test_n_slots(self) -> None:
        """
        With ``N`` slots (``--max-concurrency N``) ``N`` requests run and the
        rest wait; each release starts exactly one of them.
        """
        admission = Admission(slots=3)
        running = [self.acquired(admission.acquire()) for _ in range(3)]
        waiting = [admission.acquire() for _ in range(4)]
        for d in waiting:
            self.assertNoResult(d)
        self.assertEqual((admission.running, admission.queued), (3, 4))
        running.pop(0).release()
        running.append(self.acquired(waiting[0]))
        for d in waiting[1:]:
            self.assertNoResult(d)
        self.assertEqual((admission.running, admission.queued), (3, 3))

    def test_fifo(self) -> None:
        """
        Many waiters get the slot in the order they asked for it, one per
        release: no thundering herd.
        """
        admission = Admission(slots=1)
        holder = self.acquired(admission.acquire())
        order: list[int] = []
        handed: list[Slot] = []

        def granted(slot: Slot, i: int) -> None:
            order.append(i)
            handed.append(slot)

        for i in range(50):
            admission.acquire().addCallback(granted, i)
        self.assertEqual((order, admission.queued), ([], 50))
        for i in range(50):
            holder.release()
            self.assertEqual(order, list(range(i + 1)))
            self.assertEqual((admission.running, admission.queued), (1, 49 - i))
            holder = handed[-1]
        holder.release()
        self.assertEqual((admission.running, admission.queued), (0, 0))

    def test_cancel_queued(self) -> None:
        """
        Cancelling a queued waiter (its client went away) removes it from the
        queue at once, fails it with :class:`CancelledError`, uses no slot,
        and the next waiter gets the slot instead.
        """
        admission = Admission(slots=1)
        holder = self.acquired(admission.acquire())
        gone = admission.acquire()
        after = admission.acquire()
        gone.cancel()
        self.failureResultOf(gone, CancelledError)
        self.assertEqual((admission.running, admission.queued), (1, 1))
        holder.release()
        self.acquired(after).release()
        self.assertEqual((admission.running, admission.queued), (0, 0))

    def test_cancel_last_queued_then_release(self) -> None:
        """
        When the only waiter is cancelled, a release frees the slot outright.
        """
        admission = Admission(slots=1)
        holder = self.acquired(admission.acquire())
        gone = admission.acquire()
        gone.cancel()
        self.failureResultOf(gone, CancelledError)
        holder.release()
        self.assertEqual((admission.running, admission.queued), (0, 0))
        self.acquired(admission.acquire())
        self.assertEqual(admission.running, 1)

    def test_cancel_after_acquisition(self) -> None:
        """
        Cancelling a Deferred that already fired with a slot changes nothing:
        the slot stays held until it is released.
        """
        admission = Admission(slots=1)
        d = admission.acquire()
        results: list[object] = []
        d.addBoth(results.append)
        d.cancel()
        [slot] = results
        assert isinstance(slot, Slot)
        self.assertFalse(slot.released)
        self.assertEqual(admission.running, 1)
        waiter = admission.acquire()
        self.assertNoResult(waiter)
        slot.release()
        self.acquired(waiter)

    def test_cancel_after_hand_off(self) -> None:
        """
        A waiter handed a slot by a release is no longer cancellable: there is
        no window between the hand-off and its firing.
        """
        admission = Admission(slots=1)
        holder = self.acquired(admission.acquire())
        waiter = admission.acquire()
        holder.release()
        waiter.cancel()
        slot = self.acquired(waiter)
        self.assertEqual((admission.running, admission.queued), (1, 0))
        slot.release()
        self.assertEqual(admission.running, 0)

    def test_double_release(self) -> None:
        """
        Releasing a slot twice frees it once: the second call neither frees
        another slot nor wakes another waiter.
        """
        admission = Admission(slots=2)
        first = self.acquired(admission.acquire())
        second = self.acquired(admission.acquire())
        third = admission.acquire()
        fourth = admission.acquire()
        first.release()
        self.assertTrue(first.released)
        first.release()
        self.acquired(third)
        self.assertNoResult(fourth)
        self.assertEqual((admission.running, admission.queued), (2, 1))
        second.release()
        self.acquired(fourth)

    def test_double_release_when_idle(self) -> None:
        """
        Releasing twice with nobody waiting does not make ``running`` negative.
        """
        admission = Admission(slots=1)
        slot = self.acquired(admission.acquire())
        slot.release()
        slot.release()
        self.assertEqual(admission.running, 0)
        self.acquired(admission.acquire())
        self.assertNoResult(admission.acquire())

    def test_release_from_inside_a_grant(self) -> None:
        """
        A holder that releases its slot from the callback that gave it to it
        passes the slot straight on, in order, within the same call.
        """
        admission = Admission(slots=1)
        holder = self.acquired(admission.acquire())
        order: list[int] = []

        def use_and_release(slot: Slot, i: int) -> None:
            order.append(i)
            slot.release()

        for i in range(5):
            admission.acquire().addCallback(use_and_release, i)
        holder.release()
        self.assertEqual(order, [0, 1, 2, 3, 4])
        self.assertEqual((admission.running, admission.queued), (0, 0))

    def test_acquire_from_inside_a_grant(self) -> None:
        """
        A request acquired from inside a grant callback joins the back of the
        queue; it does not jump ahead of those already waiting.
        """
        admission = Admission(slots=1)
        holder = self.acquired(admission.acquire())
        later: list[Deferred[Slot]] = []

        def acquire_again(slot: Slot) -> Slot:
            later.append(admission.acquire())
            return slot

        first = admission.acquire().addCallback(acquire_again)
        second = admission.acquire()
        holder.release()
        self.assertEqual((admission.running, admission.queued), (1, 2))
        self.acquired(first).release()
        self.assertNoResult(later[0])
        self.acquired(second).release()
        self.acquired(later[0]).release()
        self.assertEqual((admission.running, admission.queued), (0, 0))


# One operation of the property test: acquire (releasing at once from the grant
# callback, or not), cancel the i-th request, or release the i-th request's slot.
_operations = st.lists(
    st.one_of(
        st.tuples(st.just("acquire"), st.booleans()),
        st.tuples(st.just("cancel"), st.integers(0, 63)),
        st.tuples(st.just("release"), st.integers(0, 63)),
    ),
    max_size=80,
)


class SlotPropertyTests(SynchronousTestCase):
    """Random acquire/cancel/release sequences keep every promise."""

    @settings(max_examples=300, deadline=None)
    @given(slots=st.one_of(st.none(), st.integers(1, 4)), operations=_operations)
    def test_random_sequences(
        self, slots: int | None, operations: list[tuple[str, object]]
    ) -> None:
        """
        Whatever the sequence: ``running`` never exceeds the limit and equals
        the slots held; ``queued`` equals the waiters left; slots go to
        non-cancelled waiters strictly in request order; and once every slot
        is released, nothing is running or queued.
        """
        admission = Admission(slots=slots)
        requests: list[Deferred[Slot]] = []
        granted: dict[int, Slot] = {}
        grant_order: list[int] = []
        cancelled: set[int] = set()

        def on_grant(slot: Slot, i: int, release_now: bool) -> Slot:
            self.assertNotIn(i, cancelled)
            self.assertNotIn(i, granted)
            granted[i] = slot
            grant_order.append(i)
            if release_now:
                slot.release()
            return slot

        def on_cancel(failure: Failure, i: int) -> None:
            failure.trap(CancelledError)
            self.assertNotIn(i, granted)
            cancelled.add(i)

        def check_invariants() -> None:
            held = sum(1 for slot in granted.values() if not slot.released)
            waiting = [i for i in range(len(requests)) if i not in granted and i not in cancelled]
            self.assertEqual(admission.running, held)
            self.assertEqual(admission.queued, len(waiting))
            if slots is None:
                self.assertEqual(admission.queued, 0)
            else:
                self.assertLessEqual(admission.running, slots)
                if waiting:
                    # Nobody waits while a slot is free.
                    self.assertEqual(admission.running, slots)
            # FIFO: grants in request order, and no waiter was passed over.
            self.assertEqual(grant_order, sorted(grant_order))
            if waiting and grant_order:
                self.assertGreater(min(waiting), max(grant_order))

        for op, arg in operations:
            if op == "acquire":
                i = len(requests)
                d = admission.acquire()
                requests.append(d)
                d.addCallback(on_grant, i, bool(arg))
                d.addErrback(on_cancel, i)
            elif requests:
                assert isinstance(arg, int)
                i = arg % len(requests)
                if op == "cancel":
                    was_granted = i in granted
                    requests[i].cancel()
                    if was_granted:
                        self.assertNotIn(i, cancelled)
                elif i in granted:
                    granted[i].release()
            check_invariants()

        # Drain: release whatever is held until nothing is; every waiter that
        # was not cancelled must get (and give back) a slot on the way.
        while True:
            held = [slot for slot in granted.values() if not slot.released]
            if not held:
                break
            for slot in held:
                slot.release()
            check_invariants()
        self.assertEqual((admission.running, admission.queued), (0, 0))
        self.assertEqual(set(granted) | cancelled, set(range(len(requests))))
        self.assertEqual(set(granted) & cancelled, set())
