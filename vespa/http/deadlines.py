# -*- test-case-name: tests.test_backend_pool,tests.test_worker_relay -*-
"""
One timer for many deadlines of the same length.

Each relayed exchange has a first-byte deadline and maybe a total one. A
``callLater`` per deadline is a heap push and a cancel per request (about
5 % of the worker's CPU per POST, ``benchmarks/PROFILE.md``). Deadlines that
all have the same length expire in the order they were set, so they need
only an insertion-ordered dict and one timer, armed for the oldest: setting
and clearing one is a dict insert and delete, and the timer fires exactly on
time (a test can drive it with ``task.Clock``).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from twisted.internet.interfaces import IDelayedCall, IReactorTime

__all__ = ["Deadlines"]

T = TypeVar("T", bound=Hashable)


class Deadlines(Generic[T]):
    """
    Items that each expire ``seconds`` after they were added, unless discarded first.

    :param clock: runs the timer.
    :param seconds: every item's deadline, from when it is added.
    :param expired: called with each item whose deadline passed (it is
        discarded first).
    """

    def __init__(self, clock: IReactorTime, seconds: float, expired: Callable[[T], None]) -> None:
        self.seconds = seconds
        self._clock = clock
        self._expired = expired
        self._due: dict[T, float] = {}
        self._timer: IDelayedCall | None = None

    def __len__(self) -> int:
        return len(self._due)

    def add(self, item: T) -> None:
        """Start ``item``'s deadline."""
        due = self._clock.seconds() + self.seconds
        self._due[item] = due
        if self._timer is None:
            self._timer = self._clock.callLater(self.seconds, self._fire)

    def discard(self, item: T) -> None:
        """Clear ``item``'s deadline, if it has one."""
        self._due.pop(item, None)

    def _fire(self) -> None:
        self._timer = None
        now = self._clock.seconds()
        due = self._due
        while due:
            item, at = next(iter(due.items()))
            if at > now:
                # A timer for the oldest deadline left (not one per item).
                self._timer = self._clock.callLater(at - now, self._fire)
                return
            del due[item]
            self._expired(item)

    def stop(self) -> None:
        """Stop the timer (at shutdown); the deadlines set are dropped."""
        self._due.clear()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
