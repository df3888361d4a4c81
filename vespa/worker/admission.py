# -*- test-case-name: tests.test_admission -*-
"""
Admission control: the queue-time estimate that refuses work, and the
concurrency slots that serialise what is admitted.

Two independent gates, applied in this order by the resource:

1. :meth:`Admission.check` refuses a request (:class:`TooBusy`, 429) when the
   work already in flight would take longer than ``max_wait_time`` to drain at
   the measured throughput, as Vast's worker estimates it. As in the official
   worker (vastai 1.9.1), the limit defaults to 30 s; ``0`` refuses
   while anything at all is in flight (an exclusive worker); ``None`` never
   refuses. The incoming request's
   own cost is not counted, so a lone request is always admitted, however
   large. Requests still queued for a slot are part of the in-flight workload
   (the caller counts them), so the slot queue is bounded by time, not by a
   count: the lesson of Knative's ``10 x containerConcurrency`` queue, which
   rejects long requests and floods short ones.
2. :meth:`Admission.acquire` waits for a concurrency slot (4.3): none for
   unlimited concurrency, one for ``--allow-parallel false``, ``N`` for
   ``--max-concurrency N``. Waiters are served strictly first in, first out;
   a released slot is handed to the next waiter directly, in the same call,
   so no reactor turn is needed and only one waiter wakes.

The module does no I/O and reads no clock: the caller passes the figures in.
"""

from __future__ import annotations

import math

from twisted.internet.defer import Deferred

from vespa.errors import VespaError
from vespa.gate import Gate, Slot

__all__ = ["Admission", "Slot", "TooBusy"]

#: The throughput floor of the estimate, as in the spec, so that an unknown or
#: zero throughput gives a huge estimate rather than a division by zero.
MIN_THROUGHPUT = 1e-5

#: The most a refusal ever reports as the estimated wait (one day). Larger
#: estimates only come from a throughput near zero or an absurd cost; capping
#: them keeps ``Retry-After`` a sane integer and the body valid JSON (an
#: infinite or NaN estimate has no JSON spelling).
MAX_REPORTED_WAIT = 86_400.0


class TooBusy(VespaError, status=429):
    """
    The work in flight would take longer than ``max_wait_time`` (429).

    Carries ``Retry-After`` (whole seconds, at least 1) and the body fields
    ``estimated_wait`` and ``max_wait_time``.
    """


class Admission:
    """
    The worker's admission gates: the wait-time check and the concurrency slots.

    :param max_wait_time: refuse a request when the estimated wait for the
        work in flight is over this many seconds; ``0`` refuses while any
        request is in flight; ``None`` never refuses.
    :param slots: how many requests may be relayed at once; ``None`` for no
        limit.
    :raises ValueError: if ``max_wait_time`` is negative or NaN, or ``slots``
        is below 1.
    """

    def __init__(self, *, max_wait_time: float | None = 30.0, slots: int | None = None) -> None:
        if max_wait_time is not None and not max_wait_time >= 0:
            raise ValueError(f"max_wait_time must be >= 0 or None, not {max_wait_time!r}")
        if slots is not None and slots < 1:
            raise ValueError(f"slots must be >= 1 or None, not {slots!r}")
        self.max_wait_time = max_wait_time
        self._gate = Gate(slots)

    @property
    def slots(self) -> int | None:
        """
        The concurrency limit; ``None`` for none.
        """
        return self._gate.limit

    @property
    def running(self) -> int:
        """
        How many slots are held.
        """
        return self._gate.held

    @property
    def queued(self) -> int:
        """
        How many requests are waiting for a slot.
        """
        return self._gate.queued

    def estimate_wait(self, in_flight_workload: float, max_perf: float) -> float:
        """
        Estimate how long the work in flight takes to drain (spec 4.2).

        :param in_flight_workload: the summed cost of every admitted request
            that has not ended, queued ones included.
        :param max_perf: the measured throughput, in cost units per second;
            anything below :data:`MIN_THROUGHPUT` (or NaN) counts as that.
        :return: seconds; 0.0 when nothing is in flight.
        """
        if in_flight_workload <= 0:
            return 0.0
        throughput = max_perf if max_perf > MIN_THROUGHPUT else MIN_THROUGHPUT
        return in_flight_workload / throughput

    def check(self, in_flight_workload: float, max_perf: float, in_flight: int = 0) -> None:
        """
        Refuse a request if the work ahead of it would take too long.

        The request's own cost is not part of ``in_flight_workload``, as in
        the spec, so a lone request is always admitted.

        :param in_flight_workload: as for :meth:`estimate_wait`.
        :param max_perf: as for :meth:`estimate_wait`.
        :param in_flight: how many requests are in flight, queued ones
            included: with ``max_wait_time`` 0, any is a refusal, even one
            whose workload is 0.
        :raises TooBusy: if the estimate is over ``max_wait_time`` (or is NaN).
        """
        limit = self.max_wait_time
        if limit is None:
            return
        estimate = self.estimate_wait(in_flight_workload, max_perf)
        if estimate <= limit and not (limit == 0 and in_flight > 0):
            return
        # NaN fails the test above, so it is refused; NaN and inf fail this
        # one, so they are reported as the cap.
        reported = estimate if estimate < MAX_REPORTED_WAIT else MAX_REPORTED_WAIT
        raise TooBusy(
            f"worker too busy: estimated wait {reported:.1f} s is over max_wait_time {limit:g} s",
            headers={"Retry-After": str(max(1, math.ceil(reported)))},
            details={"estimated_wait": round(reported, 3), "max_wait_time": limit},
        )

    def take(self) -> Slot | None:
        """
        Get a concurrency slot now if one is free, without a :class:`Deferred`.

        :return: the held :class:`Slot`, or ``None`` when the caller must
            :meth:`acquire` and wait in line.
        """
        return self._gate.take()

    def acquire(self) -> Deferred[Slot]:
        """
        Get a concurrency slot.

        :return: a :class:`Deferred` that fires with a :class:`Slot` at once
            if one is free, else when one is released to it, in FIFO order.
            Cancelling it while it waits (the client went away) takes it off
            the queue at once without using a slot, and it fails with
            :class:`~twisted.internet.defer.CancelledError`. Cancelling it
            after it fired does nothing: the holder must release the slot.
        """
        return self._gate.acquire()
