# -*- test-case-name: tests.test_gate,tests.test_admission,tests.test_client_policy -*-
"""
The one FIFO gate: at most ``limit`` holders at once, the others waiting in
arrival order.

The worker's admission (its concurrency slots), the client's limiter (its
requests in flight) and the client's batching (parts in flight) all queue
through a :class:`Gate`. Waiters are served strictly first in, first out; a
released place is handed to the next waiter directly, in the same call, so
no reactor turn is needed, only one waiter wakes and no newcomer can pass it.
A waiter that is cancelled leaves the queue at once, in O(1).

The module does no I/O and reads no clock.
"""

from __future__ import annotations

from collections import OrderedDict

from twisted.internet.defer import Deferred, succeed

__all__ = ["Gate", "Slot"]


class Slot:
    """
    One place through a :class:`Gate`, held from :meth:`Gate.acquire` until
    :meth:`release`.

    The holder must release it exactly when its work ends, however it ends;
    releasing again is harmless.
    """

    __slots__ = ("_gate", "_released")

    def __init__(self, gate: Gate) -> None:
        self._gate = gate
        self._released = False

    @property
    def released(self) -> bool:
        """
        Whether :meth:`release` has been called.
        """
        return self._released

    def release(self) -> None:
        """
        Give the place back; the longest waiter, if any, gets it now.

        Idempotent: only the first call frees the place.
        """
        if self._released:
            return
        self._released = True
        self._gate._release()


class Gate:
    """
    A first-in, first-out gate of ``limit`` places.

    :param limit: places held at once; ``None`` for no limit.
    :raises ValueError: if ``limit`` is below 1.
    """

    def __init__(self, limit: int | None) -> None:
        if limit is not None and limit < 1:
            raise ValueError(f"the limit must be >= 1 or None, not {limit!r}")
        self.limit = limit
        self._held = 0
        # Insertion-ordered, with O(1) removal from anywhere (a cancel) and
        # from the front (a hand-off): a deque would make cancelling O(n).
        self._waiters: OrderedDict[Deferred[Slot], None] = OrderedDict()

    @property
    def held(self) -> int:
        """
        How many places are held.
        """
        return self._held

    @property
    def queued(self) -> int:
        """
        How many are waiting for a place.
        """
        return len(self._waiters)

    @property
    def free(self) -> bool:
        """
        Whether :meth:`acquire` would give a place at once.
        """
        return self.limit is None or self._held < self.limit

    def acquire(self) -> Deferred[Slot]:
        """
        Get a place.

        :return: a :class:`Deferred` that fires with a :class:`Slot` at once
            if a place is free, else when one is released to it, in FIFO
            order. Cancelling it while it waits (its caller went away) takes
            it off the queue at once without using a place, and it fails with
            :class:`~twisted.internet.defer.CancelledError`. Cancelling it
            after it fired does nothing: the holder must release the slot.
        """
        slot = self.take()
        if slot is not None:
            return succeed(slot)
        waiter: Deferred[Slot] = Deferred(self._cancel)
        self._waiters[waiter] = None
        return waiter

    def take(self) -> Slot | None:
        """
        Get a place now, without waiting: what :meth:`acquire` fires with at
        once, with no :class:`Deferred` built (the common case of a worker
        with room).

        :return: the held :class:`Slot`, or ``None`` if no place is free (the
            caller may then :meth:`acquire` and wait).
        """
        if self.limit is None or self._held < self.limit:
            # A free place means nobody is waiting: a release hands its place
            # to the next waiter rather than freeing it, so no one can be passed.
            self._held += 1
            return Slot(self)
        return None

    def _cancel(self, waiter: Deferred[Slot]) -> None:
        """
        Take a cancelled waiter off the queue; :class:`Deferred` then fails it
        with :class:`~twisted.internet.defer.CancelledError`.

        A :class:`Deferred` calls its canceller only if it has not fired, and
        a waiter is fired only after it leaves the queue, so a waiter that is
        handed a place can no longer be cancelled and a cancelled one is never
        handed a place.
        """
        self._waiters.pop(waiter, None)

    def _release(self) -> None:
        """
        Free a place, or pass it straight on to the longest waiter.
        """
        if self._waiters:
            # The place changes hands, so ``held`` stays as it is. The state
            # is complete before the callback runs, so the new holder may
            # release, acquire or cancel from inside it.
            waiter, _ = self._waiters.popitem(last=False)
            waiter.callback(Slot(self))
        else:
            self._held -= 1
