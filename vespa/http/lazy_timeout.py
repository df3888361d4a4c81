# -*- test-case-name: tests.test_hotpath,tests.test_site -*-
"""
A connection's idle deadline on one timer that is rarely moved.

twisted.web changes a connection's deadline four times per kept-alive
request (``setTimeout`` at the head's end, ``None`` while the request is
answered, its old period back, then the keep-alive wait): with
``TimeoutMixin`` each is a ``DelayedCall`` cancelled or scheduled in the
reactor's timer heap. :class:`LazyTimeoutMixin` keeps the deadline as a
number instead and one timer that fires no later than it: a later deadline
only changes the number (the timer, when it fires, waits again for the
rest), so a kept-alive connection's requests touch the reactor's timers
about once per deadline period, not four times per request. Only a sooner
deadline replaces the timer (cancelled and scheduled anew, never moved with
``DelayedCall.reset``: moving a call sooner is a linear search of the
reactor's timer heap, which holds a call per open connection). The
deadline is kept as exactly as before: the connection times out at the
moment the last change set.
"""

from __future__ import annotations

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.protocols.policies import TimeoutMixin

__all__ = ["LazyTimeoutMixin"]


class LazyTimeoutMixin(TimeoutMixin):
    """
    :class:`TimeoutMixin` with a lazily moved timer (see the module).

    :ivar clock: the reactor the deadlines are read and set on; set it before
        the first :meth:`setTimeout`.
    """

    clock: IReactorTime
    #: When the connection times out (``clock.seconds()``), or ``None``.
    _deadline: float | None = None
    #: Fires at or before :attr:`_deadline`.
    _deadline_timer: IDelayedCall | None = None

    def setTimeout(self, period: float | None) -> float | None:
        previous: float | None = self.timeOut
        self.timeOut = period  # type: ignore[assignment]  # seconds, as twisted.web passes
        self._move_deadline(period)
        return previous

    def resetTimeout(self) -> None:
        """Restart the idle period, if a deadline is set (as ``TimeoutMixin`` does)."""
        if self._deadline is not None and self.timeOut is not None:
            self._move_deadline(self.timeOut)

    def cancel_timeout(self) -> None:
        """No deadline any more, and no timer left in the reactor: the connection is gone."""
        self._deadline = None
        timer, self._deadline_timer = self._deadline_timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _move_deadline(self, period: float | None) -> None:
        if period is None:
            self._deadline = None  # the timer, if any, finds none and stops
            return
        deadline = self.clock.seconds() + period
        self._deadline = deadline
        timer = self._deadline_timer
        if timer is not None:
            if timer.getTime() <= deadline:
                return  # it fires first and waits for the rest
            timer.cancel()
        self._deadline_timer = self.clock.callLater(period, self._deadline_reached)

    def _deadline_reached(self) -> None:
        self._deadline_timer = None
        deadline = self._deadline
        if deadline is None:
            return
        now = self.clock.seconds()
        if now < deadline:
            self._deadline_timer = self.clock.callLater(deadline - now, self._deadline_reached)
            return
        self._deadline = None
        self.timeoutConnection()  # type: ignore[no-untyped-call]
