# -*- test-case-name: tests.test_ledger -*-
"""
Exact per-request workload accounting.

Every admitted request goes through :meth:`Ledger.receive`, which makes it
*in flight* and hands back a :class:`Ticket`; it then ends in exactly one
:class:`Outcome` through :meth:`Ledger.finish`: served, errored or cancelled.
A request refused before admission (401, 429, 503) goes through
:meth:`Ledger.reject` and is never in flight. So, at every moment::

    received == served + errored + cancelled + in flight

in counts and in workloads (:attr:`Ledger.totals`, :attr:`Ledger.in_flight_count`,
:attr:`Ledger.in_flight_workload`). The counters take one form everywhere, a
:class:`~vespa.worker.tally.Tally` keyed by :class:`~vespa.worker.tally.Outcome`.

In-flight requests are keyed by the ticket (an internal counter), never by
``reqnum`` or ``request_idx``: in unsecured mode every request carries 0 for
both, and two requests in flight must not overwrite each other.

Two things are reported to the autoscaler, and both are handed out as
snapshots that are acknowledged explicitly, so an outage loses nothing:

- The *reporting window* (:meth:`Ledger.window`): what happened since the last
  accepted ``/worker_status/``. When the report carrying a window is accepted,
  :meth:`Ledger.commit` subtracts exactly that window; whatever arrived while
  the report was in flight stays for the next one. A failed report commits
  nothing, so the next report carries everything. The sum of all committed
  windows plus the current window always equals the totals.
- The *pending deletions* (:meth:`Ledger.take_deletions`): every finished or
  rejected request, for ``/delete_requests/``, as a
  :class:`~vespa.protocol.reports.DeletionRecord`: its ``request_idx``, its
  status and success flag (served and cancelled are successes, as in the
  original; errored and rejected are failures) and its three wall-clock times
  (``entered_queue_at`` at :meth:`Ledger.receive`, ``work_started_at`` at
  :meth:`Ledger.started`, ``work_completed_at`` at :meth:`Ledger.finish`; 0.0
  for "never", and always 0.0 when cancelled, as the official worker sends
  them). :meth:`Ledger.deletions_sent` drops
  exactly the entries of an acknowledged batch, again by internal key, so
  duplicate ``request_idx`` values (idx 0 in unsecured mode, retries) are
  never confused. The list is bounded: past ``max_pending_deletions`` the
  oldest entries are dropped and counted in :attr:`Ledger.deletions_dropped`,
  with one warning per outage, so an autoscaler that is down for minutes
  cannot grow memory without limit.
"""

from __future__ import annotations

import itertools
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from twisted.internet.defer import Deferred, succeed

from vespa.log import get_logger
from vespa.protocol.reports import DeletionRecord
from vespa.worker.tally import Counters, Tally
from vespa.worker.tally import Outcome as Outcome  # re-exported: where callers find it

log = get_logger(__name__)


#: The success flag each outcome carries to ``/delete_requests/``.
_SUCCESS = {
    Outcome.SERVED: True,
    Outcome.CANCELLED: True,
    Outcome.ERRORED: False,
    Outcome.REJECTED: False,
}

#: The ``status`` each outcome carries to ``/delete_requests/``.
_STATUS = {
    Outcome.SERVED: "Success",
    Outcome.CANCELLED: "Cancelled",
    Outcome.ERRORED: "Error",
    Outcome.REJECTED: "Rejected",
}


@dataclass(slots=True, eq=False, repr=False)
class Ticket:
    """
    The handle of one admitted request, from :meth:`Ledger.receive` to
    :meth:`Ledger.finish`. Opaque: only the ledger that issued it uses it.

    :ivar request_idx: the autoscaler's index for the request (0 when unsecured).
    :ivar reqnum: the autoscaler's request number (0 when unsecured).
    :ivar workload: the request's workload in benchmark units.
    :ivar entered_queue_at: wall time it was received.
    :ivar work_started_at: wall time its backend call started, 0.0 until then.
    """

    _key: int
    request_idx: int
    reqnum: int
    workload: float
    entered_queue_at: float
    work_started_at: float = field(default=0.0, init=False)

    def __repr__(self) -> str:
        return (
            f"<Ticket #{self._key} request_idx={self.request_idx} "
            f"reqnum={self.reqnum} workload={self.workload!r}>"
        )


@dataclass(frozen=True)
class Deletions:
    """
    A snapshot of pending ``/delete_requests/`` entries, oldest first. Give it
    (or one :meth:`part` of it) back to :meth:`Ledger.deletions_sent` once the
    autoscaler acknowledged it.

    :ivar records: how each request ended, oldest first.
    """

    records: tuple[DeletionRecord, ...] = ()
    _keys: tuple[int, ...] = field(default=(), repr=False, compare=False)

    def __bool__(self) -> bool:
        return bool(self.records)

    def __len__(self) -> int:
        return len(self.records)

    @property
    def succeeded(self) -> tuple[int, ...]:
        """The ``request_idx`` of the served and cancelled requests."""
        return tuple(self.request_idxs(True))

    @property
    def failed(self) -> tuple[int, ...]:
        """The ``request_idx`` of the errored and rejected requests."""
        return tuple(self.request_idxs(False))

    def request_idxs(self, success: bool) -> list[int]:
        """
        The ``request_idx`` values with one success flag (the legacy body).

        :param success: which half.
        """
        return [r.request_idx for r in self.records if r.success is success]

    def part(self, success: bool) -> Deletions:
        """
        The half of this batch with one success flag, to acknowledge it alone
        (the legacy form sends the two flags as two POSTs).

        :param success: which half.
        """
        kept = [
            (r, k) for r, k in zip(self.records, self._keys, strict=True) if r.success is success
        ]
        return Deletions(tuple(r for r, _ in kept), tuple(k for _, k in kept))


class Ledger:
    """
    Per-request workload accounting for one worker (see the module docstring).

    :param max_pending_deletions: how many finished requests may wait for
        ``/delete_requests/`` before the oldest are dropped.
    :param now: the wall clock of the records' times, in ``time.time()``
        seconds (the worker passes its reactor's ``seconds``).
    :ivar version: bumped on every change (receive, finish, reject), so a
        reader can tell cheaply whether anything happened since it last looked.
    :ivar deletions_dropped: pending deletions dropped because the list was full.
    """

    def __init__(
        self, max_pending_deletions: int = 100_000, *, now: Callable[[], float] = time.time
    ) -> None:
        if max_pending_deletions < 1:
            raise ValueError(f"max_pending_deletions must be >= 1, got {max_pending_deletions!r}")
        self._max_pending = max_pending_deletions
        self._now = now
        self._keys = itertools.count(1)
        self._in_flight: dict[int, Ticket] = {}
        self._in_flight_workload = 0.0
        # Cumulative, and the current window (since the last commit).
        self._totals = Counters()
        self._window = Counters()
        # key -> how the request ended, oldest first.
        self._pending: OrderedDict[int, DeletionRecord] = OrderedDict()
        self._dropping = False
        self.deletions_dropped = 0
        self.version = 0
        # Deferreds of when_idle(), fired when the last request in flight ends.
        self._idle_waiters: list[Deferred[None]] = []

    # -- the requests ---------------------------------------------------------

    def receive(self, request_idx: int, reqnum: int, workload: float) -> Ticket:
        """
        A request was admitted: it is in flight until :meth:`finish`.

        :param request_idx: its ``request_idx`` (0 when unsecured).
        :param reqnum: its ``reqnum`` (0 when unsecured).
        :param workload: its workload, finite and >= 0.
        :return: the ticket to finish it with.
        """
        workload = _check_workload(workload)
        ticket = Ticket(next(self._keys), request_idx, reqnum, workload, self._now())
        self._in_flight[ticket._key] = ticket
        self._in_flight_workload += workload
        self._add(None, workload)
        return ticket

    def started(self, ticket: Ticket) -> None:
        """
        The request's backend call starts now (its ``work_started_at``). Only
        the first call counts; a ticket no longer in flight is left alone.

        :param ticket: what :meth:`receive` returned for it.
        """
        if not ticket.work_started_at and ticket._key in self._in_flight:
            ticket.work_started_at = self._now()

    def finish(self, ticket: Ticket, outcome: Outcome) -> None:
        """
        An admitted request ended.

        :param ticket: what :meth:`receive` returned for it.
        :param outcome: :attr:`Outcome.SERVED`, :attr:`Outcome.ERRORED` or
            :attr:`Outcome.CANCELLED`.
        :raises ValueError: for :attr:`Outcome.REJECTED` (use :meth:`reject`).
        :raises RuntimeError: if the ticket is not in flight here (finished
            twice, or issued by another ledger): a bug in the caller.
        """
        if outcome is Outcome.REJECTED or outcome not in _SUCCESS:
            raise ValueError(f"an admitted request cannot end as {outcome!r}")
        if self._in_flight.get(ticket._key) is not ticket:
            raise RuntimeError(f"{ticket!r} is not in flight (finished twice?)")
        del self._in_flight[ticket._key]
        if self._in_flight:
            self._in_flight_workload = max(self._in_flight_workload - ticket.workload, 0.0)
        else:
            # Exactly zero when idle, whatever rounding the sums accumulated.
            self._in_flight_workload = 0.0
        self._add(outcome, ticket.workload)
        cancelled = outcome is Outcome.CANCELLED
        self._queue_deletion(
            ticket._key,
            DeletionRecord(
                request_idx=ticket.request_idx,
                success=_SUCCESS[outcome],
                status=_STATUS[outcome],
                entered_queue_at=ticket.entered_queue_at,
                work_started_at=ticket.work_started_at,
                work_completed_at=0.0 if cancelled else self._now(),
            ),
        )
        if not self._in_flight:
            self._tell_idle()

    def finish_in_session(self, ticket: Ticket, outcome: Outcome) -> None:
        """
        As :meth:`finish`, for a request that ran in a session: counted like any
        other, but its end is no deletion of its own, because its
        ``request_idx`` is the session's, which is deleted when the session ends.
        """
        self.finish(ticket, outcome)
        self._pending.pop(ticket._key, None)

    def reject(self, request_idx: int, reqnum: int, workload: float) -> None:
        """
        A request whose signature verified was refused before admission (429,
        503): it was never in flight, and it is reported as a failed deletion.
        A request refused *before* its signature verified must never come
        here: what it claims is not to be reported.

        :param request_idx: its ``request_idx`` (0 when unsecured).
        :param reqnum: its ``reqnum`` (0 when unsecured).
        :param workload: its workload, finite and >= 0.
        """
        workload = _check_workload(workload)
        self._add(Outcome.REJECTED, workload)
        record = DeletionRecord(request_idx, False, _STATUS[Outcome.REJECTED], self._now())
        self._queue_deletion(next(self._keys), record)

    def _add(self, key: Outcome | None, workload: float) -> None:
        self._totals.add(key, workload)
        self._window.add(key, workload)
        self.version += 1

    # -- the live view --------------------------------------------------------

    @property
    def in_flight_count(self) -> int:
        """How many admitted requests have not finished."""
        return len(self._in_flight)

    @property
    def in_flight_workload(self) -> float:
        """The sum of the workloads of the requests in flight."""
        return self._in_flight_workload

    def when_idle(self) -> Deferred[None]:
        """
        Fires when no request is in flight: at once if none is, else when the
        last one finishes. Cancelling it only stops the waiting.
        """
        if not self._in_flight:
            return succeed(None)
        waiter: Deferred[None] = Deferred(self._idle_waiters.remove)
        self._idle_waiters.append(waiter)
        return waiter

    def _tell_idle(self) -> None:
        waiters, self._idle_waiters = self._idle_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def working_request_idxs(self) -> list[int]:
        """The ``request_idx`` of each request in flight, oldest first."""
        return [ticket.request_idx for ticket in self._in_flight.values()]

    @property
    def totals(self) -> Tally:
        """A snapshot of the cumulative counts and workloads."""
        return self._totals.tally()

    # -- reporting windows ----------------------------------------------------

    def window(self) -> Tally:
        """A snapshot of the counters since the last :meth:`commit`."""
        return self._window.tally()

    def commit(self, window: Tally) -> None:
        """
        The report carrying ``window`` was accepted: subtract exactly it.
        What arrived since the snapshot stays for the next report.

        :param window: a snapshot from :meth:`window`, committed at most once.
        :raises ValueError: if it holds more than the current window (committed
            twice, or from another ledger).
        """
        self._window.subtract(window)

    # -- /delete_requests/ ----------------------------------------------------

    @property
    def pending_deletions(self) -> int:
        """How many finished requests wait for ``/delete_requests/``."""
        return len(self._pending)

    def _queue_deletion(self, key: int, record: DeletionRecord) -> None:
        self._pending[key] = record
        if len(self._pending) > self._max_pending:
            self._pending.popitem(last=False)
            self.deletions_dropped += 1
            if not self._dropping:
                self._dropping = True
                log.warn(
                    "{max} request deletions are waiting for the autoscaler: "
                    "dropping the oldest until it acknowledges again",
                    max=self._max_pending,
                )

    def take_deletions(self, limit: int | None = None) -> Deletions:
        """
        A snapshot of the pending deletions, oldest first. They stay pending
        until :meth:`deletions_sent`.

        :param limit: take at most this many (the oldest), or all when None.
        """
        entries = list(itertools.islice(self._pending.items(), limit))
        return Deletions(tuple(r for _, r in entries), tuple(k for k, _ in entries))

    def deletions_sent(self, batch: Deletions) -> None:
        """
        The autoscaler acknowledged ``batch``: drop exactly its entries (those
        dropped meanwhile, or acknowledged already, are skipped).

        :param batch: what :meth:`take_deletions` returned, or a part of it.
        """
        for key in batch._keys:
            self._pending.pop(key, None)
        if batch and self._dropping:
            self._dropping = False
            log.info(
                "The autoscaler acknowledges deletions again; "
                "{dropped} were dropped in all while it did not",
                dropped=self.deletions_dropped,
            )


def _check_workload(workload: float) -> float:
    workload = float(workload)
    if not (math.isfinite(workload) and workload >= 0.0):
        raise ValueError(f"workload must be finite and >= 0, got {workload!r}")
    return workload
