# -*- test-case-name: tests.test_loadtest_schedule -*-
"""
When requests are sent: open-loop arrivals at a rate, fixed or Poisson,
optionally ramping, driven by an injected clock.

Open loop means arrivals do not wait for answers: a slow endpoint gets the
same requests per second as a fast one, as it would from real callers (a
closed loop hides a slowdown by slowing down with it).

The arrival times are computed in "count space": with the rate profile's
expected count ``N(t)`` (the integral of the rate), arrival ``k`` of a fixed
schedule is at ``N⁻¹(k)``, and a Poisson schedule puts its arrivals at
``N⁻¹`` of the sums of unit exponential gaps. That time change is exact for
a ramp too (an inhomogeneous Poisson process), and a schedule never drifts:
each arrival is due at a time computed from the start, not from the last one.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime

__all__ = ["ARRIVALS", "Arrivals", "RateProfile", "arrival_offsets", "parse_ramp"]

#: The arrival processes.
ARRIVALS = ("fixed", "poisson")


@dataclass(frozen=True)
class RateProfile:
    """
    Requests per second over time: ``start`` rising (or falling) linearly to
    ``end`` over ``ramp_s`` seconds, then ``end``. A fixed rate has
    ``start == end`` and ``ramp_s == 0``.

    :ivar start: the rate at time 0.
    :ivar end: the rate from ``ramp_s`` on; more than 0.
    :ivar ramp_s: the ramp's length in seconds.
    """

    start: float
    end: float
    ramp_s: float = 0.0

    def __post_init__(self) -> None:
        if not (self.end > 0 and math.isfinite(self.end)):
            raise ValueError(f"the rate must be more than 0, got {self.end!r}")
        if not (self.start >= 0 and math.isfinite(self.start)):
            raise ValueError(f"a ramp must start at 0 or more, got {self.start!r}")
        if not (self.ramp_s >= 0 and math.isfinite(self.ramp_s)):
            raise ValueError(f"a ramp's length must be 0 or more, got {self.ramp_s!r}")

    @classmethod
    def fixed(cls, rate: float) -> RateProfile:
        """``rate`` requests per second throughout."""
        return cls(rate, rate, 0.0)

    def rate(self, t: float) -> float:
        """The asked rate at ``t`` seconds from the start."""
        if t >= self.ramp_s:
            return self.end
        return self.start + (self.end - self.start) * max(t, 0.0) / self.ramp_s

    def expected(self, t: float) -> float:
        """``N(t)``: the requests asked for from the start up to ``t`` seconds."""
        t = max(t, 0.0)
        ramp = min(t, self.ramp_s)
        count = (self.start + self.rate(ramp)) / 2 * ramp
        return count + self.end * max(t - self.ramp_s, 0.0)

    def time_of(self, count: float) -> float:
        """``N⁻¹(count)``: the time by which ``count`` requests are asked for."""
        in_ramp = (self.start + self.end) / 2 * self.ramp_s
        if count >= in_ramp:
            return self.ramp_s + (count - in_ramp) / self.end
        slope = (self.end - self.start) / self.ramp_s
        if slope == 0:
            return count / self.start
        # Solve slope/2 t² + start t = count for the positive root.
        return (math.sqrt(self.start**2 + 2 * slope * count) - self.start) / slope


def parse_ramp(text: str) -> RateProfile:
    """
    Parse ``--ramp FROM:TO:SECONDS`` (``10:100:60s``).

    :raise ValueError: saying what is wrong.
    """
    parts = text.strip().split(":")
    if len(parts) != 3:
        raise ValueError(f"expected FROM:TO:SECONDS such as 10:100:60s, got {text!r}")
    try:
        start, end = float(parts[0]), float(parts[1])
        seconds = float(parts[2].strip().lower().removesuffix("s"))
    except ValueError:
        raise ValueError(
            f"expected numbers FROM:TO:SECONDS such as 10:100:60s, got {text!r}"
        ) from None
    return RateProfile(start, end, seconds)


def arrival_offsets(
    profile: RateProfile, process: str = "fixed", rng: random.Random | None = None
) -> Iterator[float]:
    """
    The seconds from the start at which each request is due, endlessly.

    :param profile: the asked rate over time.
    :param process: ``fixed`` (evenly spaced; the first at 0) or ``poisson``
        (exponential gaps: independent callers).
    :param rng: the randomness of a Poisson schedule.
    """
    if process not in ARRIVALS:
        raise ValueError(f"expected one of {', '.join(ARRIVALS)}, got {process!r}")
    rng = rng or random.Random()
    count = 0.0
    while True:
        if process == "poisson":
            count += rng.expovariate(1.0)
        yield profile.time_of(count)
        if process == "fixed":
            count += 1.0


class Arrivals:
    """
    Calls ``on_arrival(index, due)`` at each due time of ``offsets``, until
    ``limit`` arrivals or ``duration`` seconds, or :meth:`stop`.

    A timer that fires late delivers every arrival already due at once, so
    the asked rate is kept even when the process is briefly busy.

    :param clock: the clock the schedule runs on.
    :param offsets: seconds from the start of each arrival, ascending.
    :param on_arrival: called with the arrival's index (from 0) and the
        ``clock.seconds()`` time it was due.
    :param limit: the number of arrivals, or ``None``.
    :param duration: the seconds arrivals may come in, or ``None``.
    :ivar done: fires once no arrival is left (or after :meth:`stop`).
    """

    def __init__(
        self,
        clock: IReactorTime,
        offsets: Iterator[float],
        on_arrival: Callable[[int, float], None],
        *,
        limit: int | None = None,
        duration: float | None = None,
    ) -> None:
        if limit is None and duration is None:
            raise ValueError("a number of requests or a duration is needed")
        self.clock = clock
        self.offsets = offsets
        self.on_arrival = on_arrival
        self.limit = limit
        self.duration = duration
        self.done: Deferred[None] = Deferred()
        self.started_at: float | None = None
        self.count = 0
        self._next: float | None = None
        self._timer: IDelayedCall | None = None

    def start(self) -> Deferred[None]:
        """Start the schedule now; returns :attr:`done`."""
        self.started_at = self.clock.seconds()
        self._advance()
        self._arm()
        return self.done

    def stop(self) -> None:
        """No more arrivals."""
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._finish()

    def _advance(self) -> None:
        """Take the next offset, or ``None`` when the schedule is over."""
        if self.limit is not None and self.count >= self.limit:
            self._next = None
            return
        offset = next(self.offsets)
        if self.duration is not None and offset >= self.duration:
            self._next = None
            return
        self._next = offset

    def _arm(self) -> None:
        if self._next is None:
            self._finish()
            return
        assert self.started_at is not None
        delay = self.started_at + self._next - self.clock.seconds()
        self._timer = self.clock.callLater(max(delay, 0.0), self._fire)

    def _fire(self) -> None:
        self._timer = None
        assert self.started_at is not None
        now = self.clock.seconds()
        # A hair of slack: the timer's time and the due time are computed apart.
        while self._next is not None and self.started_at + self._next <= now + 1e-9:
            index, due = self.count, self.started_at + self._next
            self.count += 1
            self.on_arrival(index, due)
            if self.done.called:
                return  # stopped by the callback
            self._advance()
        self._arm()

    def _finish(self) -> None:
        self._next = None
        if not self.done.called:
            self.done.callback(None)
