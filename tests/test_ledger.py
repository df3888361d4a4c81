"""
Tests for :mod:`vespa.worker.ledger`: every request ends in exactly one state,
windows are committed exactly, deletions are acknowledged exactly and bounded.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import CancelledError
from twisted.internet.task import Clock
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from vespa.protocol.reports import DeletionRecord
from vespa.worker.ledger import Deletions, Ledger, Ticket
from vespa.worker.tally import Count, Outcome, Tally


def window_sum(windows: list[Tally]) -> Tally:
    """Add windows counter by counter."""

    def total(counts: list[Count]) -> Count:
        return Count(sum(c.requests for c in counts), sum(c.workload for c in counts))

    return Tally(
        total([w.received for w in windows]),
        {outcome: total([w[outcome] for w in windows]) for outcome in Outcome},
    )


def check_invariants(testcase: SynchronousTestCase, ledger: Ledger, committed: list[Tally]) -> None:
    """
    Assert the ledger's invariants: received = served + errored + cancelled +
    in flight (counts and workloads), and committed windows plus the current
    window equal the totals. Workloads in these tests are multiples of 1/4,
    so float sums are exact.
    """
    t = ledger.totals
    ended = [t[Outcome.SERVED], t[Outcome.ERRORED], t[Outcome.CANCELLED]]
    testcase.assertEqual(
        t.received.requests, sum(c.requests for c in ended) + ledger.in_flight_count
    )
    testcase.assertEqual(
        t.received.workload, sum(c.workload for c in ended) + ledger.in_flight_workload
    )
    testcase.assertEqual(len(ledger.working_request_idxs()), ledger.in_flight_count)
    testcase.assertEqual(window_sum([*committed, ledger.window()]), t)


class CaptureWarnings:
    """Collect the ledger's log events at warning level and above."""

    def __init__(self, testcase: SynchronousTestCase) -> None:
        self.events: list[dict[str, object]] = []
        globalLogPublisher.addObserver(self.observe)
        testcase.addCleanup(globalLogPublisher.removeObserver, self.observe)

    def observe(self, event: dict[str, object]) -> None:
        """Keep ledger events at warn and above."""
        if event.get("log_namespace") == "vespa.worker.ledger" and event.get("log_level") in (
            LogLevel.warn,
            LogLevel.error,
            LogLevel.critical,
        ):
            self.events.append(event)


class RequestLifecycleTests(SynchronousTestCase):
    """receive, finish and reject keep the totals and the live view exact."""

    def test_receive_puts_in_flight(self) -> None:
        """A received request is in flight with its workload and request_idx."""
        ledger = Ledger()
        ledger.receive(7, 3, 12.5)
        ledger.receive(8, 4, 2.5)
        self.assertEqual(ledger.in_flight_count, 2)
        self.assertEqual(ledger.in_flight_workload, 15.0)
        self.assertEqual(ledger.working_request_idxs(), [7, 8])
        self.assertEqual(ledger.totals, Tally(received=Count(2, 15.0)))
        check_invariants(self, ledger, [])

    def test_each_outcome(self) -> None:
        """Served, errored and cancelled each count once, and leave flight."""
        ledger = Ledger()
        a = ledger.receive(1, 1, 1.0)
        b = ledger.receive(2, 2, 2.0)
        c = ledger.receive(3, 3, 4.0)
        ledger.finish(a, Outcome.SERVED)
        ledger.finish(b, Outcome.ERRORED)
        ledger.finish(c, Outcome.CANCELLED)
        ledger.reject(4, 4, 8.0)
        self.assertEqual(
            ledger.totals,
            Tally(
                received=Count(3, 7.0),
                ended={
                    Outcome.SERVED: Count(1, 1.0),
                    Outcome.ERRORED: Count(1, 2.0),
                    Outcome.CANCELLED: Count(1, 4.0),
                    Outcome.REJECTED: Count(1, 8.0),
                },
            ),
        )
        self.assertEqual(ledger.in_flight_count, 0)
        self.assertEqual(ledger.in_flight_workload, 0.0)
        self.assertEqual(ledger.working_request_idxs(), [])
        check_invariants(self, ledger, [])

    def test_unsecured_requests_do_not_collide(self) -> None:
        """
        In unsecured mode every request has request_idx 0 and reqnum 0; two in
        flight are two, and finishing one leaves the other.
        """
        ledger = Ledger()
        a = ledger.receive(0, 0, 1.0)
        b = ledger.receive(0, 0, 2.0)
        self.assertEqual(ledger.in_flight_count, 2)
        self.assertEqual(ledger.working_request_idxs(), [0, 0])
        ledger.finish(a, Outcome.SERVED)
        self.assertEqual(ledger.in_flight_count, 1)
        self.assertEqual(ledger.in_flight_workload, 2.0)
        ledger.finish(b, Outcome.SERVED)
        self.assertEqual(ledger.in_flight_count, 0)
        self.assertEqual(ledger.take_deletions().succeeded, (0, 0))
        check_invariants(self, ledger, [])

    def test_double_finish_is_a_bug(self) -> None:
        """Finishing a ticket twice raises RuntimeError and changes nothing."""
        ledger = Ledger()
        ticket = ledger.receive(1, 1, 1.0)
        ledger.finish(ticket, Outcome.SERVED)
        before = (ledger.totals, ledger.version, ledger.pending_deletions)
        self.assertRaises(RuntimeError, ledger.finish, ticket, Outcome.ERRORED)
        self.assertEqual((ledger.totals, ledger.version, ledger.pending_deletions), before)

    def test_foreign_ticket_is_a_bug(self) -> None:
        """A ticket from another ledger is not in flight here."""
        ticket = Ledger().receive(1, 1, 1.0)
        self.assertRaises(RuntimeError, Ledger().finish, ticket, Outcome.SERVED)

    def test_finish_as_rejected_is_refused(self) -> None:
        """An admitted request cannot end as rejected; it stays in flight."""
        ledger = Ledger()
        ticket = ledger.receive(1, 1, 1.0)
        self.assertRaises(ValueError, ledger.finish, ticket, Outcome.REJECTED)
        self.assertEqual(ledger.in_flight_count, 1)
        ledger.finish(ticket, Outcome.SERVED)
        check_invariants(self, ledger, [])

    def test_bad_workload(self) -> None:
        """Negative, NaN and infinite workloads are refused before counting."""
        ledger = Ledger()
        for bad in (-1.0, float("nan"), float("inf")):
            self.assertRaises(ValueError, ledger.receive, 1, 1, bad)
            self.assertRaises(ValueError, ledger.reject, 1, 1, bad)
        self.assertEqual(ledger.totals, Tally())
        self.assertEqual(ledger.version, 0)

    def test_version_bumps_on_every_change(self) -> None:
        """receive, finish and reject each bump the version; reads do not."""
        ledger = Ledger()
        ticket = ledger.receive(1, 1, 1.0)
        self.assertEqual(ledger.version, 1)
        ledger.finish(ticket, Outcome.SERVED)
        self.assertEqual(ledger.version, 2)
        ledger.reject(2, 2, 1.0)
        self.assertEqual(ledger.version, 3)
        ledger.window()
        ledger.take_deletions()
        _ = ledger.totals
        self.assertEqual(ledger.version, 3)

    def test_idle_in_flight_workload_is_exactly_zero(self) -> None:
        """Rounding residue does not survive an idle moment."""
        ledger = Ledger()
        tickets = [ledger.receive(i, i, w) for i, w in enumerate((0.1, 0.2, 0.3))]
        for ticket in tickets:
            ledger.finish(ticket, Outcome.SERVED)
        self.assertEqual(ledger.in_flight_workload, 0.0)

    def test_ticket_repr(self) -> None:
        """A ticket says what it is for."""
        ticket = Ledger().receive(5, 6, 1.5)
        self.assertIsInstance(ticket, Ticket)
        self.assertIn("request_idx=5", repr(ticket))
        self.assertIn("reqnum=6", repr(ticket))


class IdleTests(SynchronousTestCase):
    """when_idle() tells when the last request in flight ends, and only then."""

    def test_idle_at_once(self) -> None:
        """With nothing in flight it has already fired."""
        self.successResultOf(Ledger().when_idle())

    def test_fires_with_the_last_request(self) -> None:
        """Not when one of two ends, nor on a rejection; when the second ends."""
        ledger = Ledger()
        a = ledger.receive(1, 1, 1.0)
        b = ledger.receive(2, 2, 1.0)
        idle = ledger.when_idle()
        ledger.finish(a, Outcome.SERVED)
        ledger.reject(3, 3, 1.0)
        self.assertNoResult(idle)
        ledger.finish_in_session(b, Outcome.CANCELLED)
        self.successResultOf(idle)

    def test_cancelled_waiter_is_forgotten(self) -> None:
        """A cancelled wait fails alone; the others still fire."""
        ledger = Ledger()
        ticket = ledger.receive(1, 1, 1.0)
        gave_up, waiting = ledger.when_idle(), ledger.when_idle()
        gave_up.cancel()
        self.failureResultOf(gave_up, CancelledError)
        ledger.finish(ticket, Outcome.ERRORED)
        self.successResultOf(waiting)


class WindowTests(SynchronousTestCase):
    """Windows count since the last commit, and commit subtracts exactly."""

    def test_window_counts(self) -> None:
        """A window holds each outcome's workload and the received count."""
        ledger = Ledger()
        a = ledger.receive(1, 1, 10.0)
        b = ledger.receive(2, 2, 20.0)
        ledger.receive(3, 3, 30.0)
        ledger.finish(a, Outcome.SERVED)
        ledger.finish(b, Outcome.CANCELLED)
        ledger.reject(4, 4, 5.0)
        w = ledger.window()
        self.assertEqual(w.received, Count(3, 60.0))
        self.assertEqual(w[Outcome.SERVED].workload, 10.0)
        self.assertEqual(w[Outcome.CANCELLED].workload, 20.0)
        self.assertEqual(w[Outcome.ERRORED].workload, 0.0)
        self.assertEqual(w[Outcome.REJECTED].workload, 5.0)

    def test_commit_keeps_what_arrived_meanwhile(self) -> None:
        """What arrives between the snapshot and the commit stays for next time."""
        ledger = Ledger()
        ledger.receive(1, 1, 1.0)
        sent = ledger.window()
        ledger.receive(2, 2, 2.0)
        ledger.reject(3, 3, 4.0)
        ledger.commit(sent)
        self.assertEqual(
            ledger.window(),
            Tally(received=Count(1, 2.0), ended={Outcome.REJECTED: Count(1, 4.0)}),
        )
        check_invariants(self, ledger, [sent])

    def test_no_commit_no_loss(self) -> None:
        """Windows that were never committed (failed reports) accumulate."""
        ledger = Ledger()
        ledger.receive(1, 1, 1.0)
        ledger.window()
        ledger.receive(2, 2, 2.0)
        self.assertEqual(ledger.window().received, Count(2, 3.0))

    def test_commit_twice_is_refused(self) -> None:
        """Committing the same window twice would lose counts: refused."""
        ledger = Ledger()
        ledger.receive(1, 1, 1.0)
        w = ledger.window()
        ledger.commit(w)
        self.assertRaises(ValueError, ledger.commit, w)
        self.assertEqual(ledger.window(), Tally())

    def test_commit_leaves_exact_zero(self) -> None:
        """An emptied window is exactly zero, not a rounding residue."""
        ledger = Ledger()
        ledger.receive(1, 1, 0.1)
        first = ledger.window()
        ledger.receive(2, 2, 0.2)
        ledger.commit(first)
        ledger.commit(ledger.window())
        self.assertEqual(ledger.window(), Tally())


class DeletionTests(SynchronousTestCase):
    """Pending deletions: split by flag, dropped only when acknowledged, bounded."""

    def test_split_by_success(self) -> None:
        """Served and cancelled are successes; errored and rejected failures."""
        ledger = Ledger()
        for idx, outcome in (
            (1, Outcome.SERVED),
            (2, Outcome.ERRORED),
            (3, Outcome.CANCELLED),
        ):
            ledger.finish(ledger.receive(idx, idx, 1.0), outcome)
        ledger.reject(4, 4, 1.0)
        ledger.receive(5, 5, 1.0)  # in flight: not pending
        batch = ledger.take_deletions()
        self.assertEqual(batch.succeeded, (1, 3))
        self.assertEqual(batch.failed, (2, 4))
        self.assertEqual(batch.request_idxs(True), [1, 3])
        self.assertEqual(batch.request_idxs(False), [2, 4])
        self.assertEqual(len(batch), 4)

    def test_taking_is_not_acknowledging(self) -> None:
        """A batch stays pending until deletions_sent; then exactly it goes."""
        ledger = Ledger()
        ledger.finish(ledger.receive(1, 1, 1.0), Outcome.SERVED)
        batch = ledger.take_deletions()
        self.assertEqual(ledger.take_deletions(), batch)
        ledger.finish(ledger.receive(2, 2, 1.0), Outcome.SERVED)
        ledger.deletions_sent(batch)
        self.assertEqual(ledger.take_deletions().succeeded, (2,))

    def test_acknowledge_one_part(self) -> None:
        """The two flags are sent separately; each part is dropped alone."""
        ledger = Ledger()
        ledger.finish(ledger.receive(1, 1, 1.0), Outcome.SERVED)
        ledger.reject(2, 2, 1.0)
        batch = ledger.take_deletions()
        ledger.deletions_sent(batch.part(False))
        self.assertEqual(ledger.take_deletions().succeeded, (1,))
        self.assertEqual(ledger.take_deletions().failed, ())
        ledger.deletions_sent(batch.part(True))
        self.assertFalse(ledger.take_deletions())

    def test_records_times_and_status(self) -> None:
        """
        Each record has the official status and times from the ledger's
        clock: arrival at receive, start at the first ``started``, end at
        finish (0.0 when cancelled); a rejected request only its arrival.
        """
        clock = Clock()
        ledger = Ledger(now=clock.seconds)
        clock.advance(100)
        ticket = ledger.receive(1, 1, 1.0)
        clock.advance(1)
        ledger.started(ticket)
        clock.advance(1)
        ledger.started(ticket)  # only the first counts
        clock.advance(1)
        ledger.finish(ticket, Outcome.SERVED)
        ledger.started(ticket)  # no longer in flight: ignored
        cancelled = ledger.receive(2, 2, 1.0)
        ledger.started(cancelled)
        clock.advance(1)
        ledger.finish(cancelled, Outcome.CANCELLED)
        ledger.reject(3, 3, 1.0)
        self.assertEqual(
            ledger.take_deletions().records,
            (
                DeletionRecord(1, True, "Success", 100.0, 101.0, 103.0),
                DeletionRecord(2, True, "Cancelled", 103.0, 103.0, 0.0),
                DeletionRecord(3, False, "Rejected", 104.0, 0.0, 0.0),
            ),
        )

    def test_duplicate_idxs_are_distinct_entries(self) -> None:
        """
        Entries are acknowledged by key, not by request_idx: a newer entry with
        the same idx (0 in unsecured mode) survives the older one's ack.
        """
        ledger = Ledger()
        ledger.finish(ledger.receive(0, 0, 1.0), Outcome.SERVED)
        batch = ledger.take_deletions()
        ledger.finish(ledger.receive(0, 0, 1.0), Outcome.SERVED)
        ledger.deletions_sent(batch)
        self.assertEqual(ledger.take_deletions().succeeded, (0,))

    def test_limit(self) -> None:
        """take_deletions(limit) takes the oldest entries only."""
        ledger = Ledger()
        for idx in range(5):
            ledger.reject(idx, idx, 1.0)
        batch = ledger.take_deletions(limit=2)
        self.assertEqual(batch.failed, (0, 1))
        ledger.deletions_sent(batch)
        self.assertEqual(ledger.take_deletions().failed, (2, 3, 4))

    def test_bounded_with_one_warning(self) -> None:
        """
        Past the bound the oldest entries are dropped and counted, with one
        warning per outage; an acknowledgement ends the outage.
        """
        warnings = CaptureWarnings(self)
        ledger = Ledger(max_pending_deletions=3)
        for idx in range(10):
            ledger.reject(idx, idx, 1.0)
        self.assertEqual(ledger.pending_deletions, 3)
        self.assertEqual(ledger.deletions_dropped, 7)
        self.assertEqual(ledger.take_deletions().failed, (7, 8, 9))
        self.assertEqual(len(warnings.events), 1)
        ledger.deletions_sent(ledger.take_deletions())
        self.assertEqual(ledger.pending_deletions, 0)
        for idx in range(5):
            ledger.reject(idx, idx, 1.0)
        self.assertEqual(ledger.deletions_dropped, 9)
        self.assertEqual(len(warnings.events), 2)
        # Dropped entries are skipped when their stale batch is acknowledged.
        ledger.deletions_sent(Ledger().take_deletions())
        self.assertEqual(ledger.pending_deletions, 3)

    def test_bad_bound(self) -> None:
        """A bound below 1 is refused."""
        self.assertRaises(ValueError, Ledger, 0)


# One random operation: (name, argument).
_WORKLOADS = st.integers(min_value=0, max_value=400).map(lambda n: n / 4)
_OPERATIONS = st.lists(
    st.one_of(
        st.tuples(st.just("receive"), st.tuples(st.integers(0, 3), _WORKLOADS)),
        st.tuples(
            st.just("finish"),
            st.tuples(
                st.integers(0, 50),
                st.sampled_from([Outcome.SERVED, Outcome.ERRORED, Outcome.CANCELLED]),
            ),
        ),
        st.tuples(st.just("reject"), st.tuples(st.integers(0, 3), _WORKLOADS)),
        st.tuples(st.just("window"), st.none()),
        st.tuples(st.just("commit"), st.integers(0, 50)),
        st.tuples(st.just("take"), st.integers(1, 10)),
        st.tuples(st.just("sent"), st.tuples(st.integers(0, 50), st.sampled_from([None, True]))),
    ),
    max_size=80,
)


class PropertyTests(SynchronousTestCase):
    """Random sequences of operations keep every invariant."""

    @settings(max_examples=300, deadline=None)
    @given(_OPERATIONS)
    def test_random_sequences(self, operations: list[tuple[str, object]]) -> None:
        """
        After every operation: received = served + errored + cancelled + in
        flight; committed windows plus the current one equal the totals; the
        pending list is bounded; every finished request is pending or was
        acknowledged or dropped.
        """
        ledger = Ledger(max_pending_deletions=8)
        in_flight: list[Ticket] = []
        snapshots: list[Tally] = []
        committed: list[Tally] = []
        batches: list[Deletions] = []
        removed = 0
        ended = 0
        for name, arg in operations:
            if name == "receive":
                idx, workload = arg  # type: ignore[misc]
                in_flight.append(ledger.receive(idx, idx, workload))
            elif name == "finish" and in_flight:
                which, outcome = arg  # type: ignore[misc]
                ledger.finish(in_flight.pop(which % len(in_flight)), outcome)
                ended += 1
            elif name == "reject":
                idx, workload = arg  # type: ignore[misc]
                ledger.reject(idx, idx, workload)
                ended += 1
            elif name == "window":
                snapshots.append(ledger.window())
            elif name == "commit" and snapshots:
                # Reports are accepted in order; a later one supersedes the
                # earlier ones still in flight (they are never committed).
                w = snapshots[arg % len(snapshots)]  # type: ignore[operator]
                try:
                    ledger.commit(w)
                except ValueError:
                    pass
                else:
                    committed.append(w)
                    snapshots.clear()
            elif name == "take":
                batches.append(ledger.take_deletions(arg))  # type: ignore[arg-type]
            elif name == "sent" and batches:
                which, whole = arg  # type: ignore[misc]
                batch = batches.pop(which % len(batches))
                part = batch if whole else batch.part(True)
                before = ledger.pending_deletions
                ledger.deletions_sent(part)
                self.assertLessEqual(before - ledger.pending_deletions, len(part))
                removed += before - ledger.pending_deletions
            check_invariants(self, ledger, committed)
            self.assertLessEqual(ledger.pending_deletions, 8)
            self.assertEqual(ledger.in_flight_count, len(in_flight))
            # Every ended request is pending, acknowledged or dropped.
            self.assertEqual(ended, ledger.pending_deletions + removed + ledger.deletions_dropped)
