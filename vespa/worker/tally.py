# -*- test-case-name: tests.test_ledger -*-
"""
How requests end (:class:`Outcome`), and the one form the ledger's counters
take from the ledger to the reports and the metrics (:class:`Tally`, kept
as :class:`Counters`).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType


class Outcome(enum.Enum):
    """How a request ended."""

    #: The backend answered.
    SERVED = "served"
    #: The relay or the backend failed (a backend 5xx counts here).
    ERRORED = "errored"
    #: The client went away first.
    CANCELLED = "cancelled"
    #: Refused before admission (401, 429, 503); only through
    #: :meth:`~vespa.worker.ledger.Ledger.reject`.
    REJECTED = "rejected"

    # Members are singletons compared by identity, so the identity hash is
    # consistent, and it is C: Enum's own __hash__ is Python-level, and the
    # ledger hashes an outcome about ten times per request (its counters and
    # tables are keyed by it).
    __hash__ = object.__hash__


@dataclass(frozen=True)
class Count:
    """
    How many requests, and the sum of their workloads.

    :ivar requests: how many.
    :ivar workload: their workloads' sum, in benchmark units.
    """

    requests: int = 0
    workload: float = 0.0


#: Nothing counted.
_ZERO = Count()


@dataclass(frozen=True)
class Tally:
    """
    The ledger's counters, the one form they take from the ledger to the
    reports and the metrics: what was received, and how requests ended, keyed
    by :class:`Outcome` (``tally[Outcome.SERVED].workload``).

    ``Ledger.totals`` is the tally since the ledger was created, in which
    ``received == served + errored + cancelled + in flight`` (rejected requests
    were never received); ``Ledger.window()`` the tally since the last accepted
    report, to give back to ``Ledger.commit`` (see :mod:`vespa.worker.ledger`).

    :ivar received: the admitted requests.
    :ivar ended: how requests ended, every outcome present.
    """

    received: Count = _ZERO
    ended: Mapping[Outcome, Count] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Every outcome present, so two tallies that count the same are equal.
        ended = {outcome: self.ended.get(outcome, _ZERO) for outcome in Outcome}
        object.__setattr__(self, "ended", MappingProxyType(ended))

    def __getitem__(self, outcome: Outcome) -> Count:
        return self.ended[outcome]


class Counters:
    """The mutable counterpart of a :class:`Tally`, kept by the ledger."""

    __slots__ = ("_requests", "_workloads")

    def __init__(self) -> None:
        # None is "received"; the outcomes are how requests ended.
        self._requests: dict[Outcome | None, int] = dict.fromkeys((None, *Outcome), 0)
        self._workloads: dict[Outcome | None, float] = dict.fromkeys(self._requests, 0.0)

    def add(self, key: Outcome | None, workload: float) -> None:
        """
        Count one request.

        :param key: how it ended, or ``None`` for received.
        :param workload: its workload.
        """
        self._requests[key] += 1
        self._workloads[key] += workload

    def tally(self) -> Tally:
        """A snapshot of these counters."""

        def count(key: Outcome | None) -> Count:
            return Count(self._requests[key], self._workloads[key])

        return Tally(count(None), {outcome: count(outcome) for outcome in Outcome})

    def subtract(self, tally: Tally) -> None:
        """
        Take away ``tally``, all or nothing.

        :raises ValueError: if it holds more than these counters.
        """
        parts: list[tuple[Outcome | None, Count]] = [(None, tally.received), *tally.ended.items()]
        for key, part in parts:
            if not 0 <= part.requests <= self._requests[key]:
                raise ValueError(f"{tally!r} is not part of the current window (committed twice?)")
        for key, part in parts:
            self._requests[key] -= part.requests
            if self._requests[key] == 0:
                # Nothing left: exactly zero, not a rounding residue.
                self._workloads[key] = 0.0
            else:
                self._workloads[key] = max(self._workloads[key] - part.workload, 0.0)
