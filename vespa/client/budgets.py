# -*- test-case-name: tests.test_client_policy -*-
"""
Budgets of extra attempts shared by every request, and the limit of requests
in flight.
"""

from __future__ import annotations

from collections import deque

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from vespa.client.errors import TooManyRequests
from vespa.gate import Gate, Slot

#: Seconds of history the retry and hedge budgets look at.
BUDGET_WINDOW = 10.0


class Budget:
    """
    A sliding-window budget of extra attempts (retries, or hedges), shared by
    every request of the client, as Envoy and Finagle keep them.

    Over the last ``window`` seconds, :meth:`try_spend` allows
    ``reserve + pct * requests`` spends, where ``requests`` counts
    :meth:`record_request` calls; the reserve lets a lone request retry.

    :param clock: the time.
    :param window: seconds of history.
    :param reserve: spends always allowed per window.
    """

    def __init__(self, clock: IReactorTime, *, window: float = BUDGET_WINDOW, reserve: int = 3):
        self.clock = clock
        self.window = window
        self.reserve = reserve
        self._requests: deque[float] = deque()
        self._spent: deque[float] = deque()
        self.refused = 0

    def _prune(self, now: float) -> None:
        horizon = now - self.window
        for times in (self._requests, self._spent):
            while times and times[0] <= horizon:
                times.popleft()

    def record_request(self) -> None:
        """A request arrived (it earns the budget a share of one spend)."""
        now = self.clock.seconds()
        self._prune(now)
        self._requests.append(now)

    def try_spend(self, pct: float) -> bool:
        """
        Spend one extra attempt if the budget allows it at share ``pct``.

        :return: whether it was spent.
        """
        now = self.clock.seconds()
        self._prune(now)
        if len(self._spent) < self.reserve + pct * len(self._requests):
            self._spent.append(now)
            return True
        self.refused += 1
        return False

    @property
    def spent(self) -> int:
        """Spends in the current window."""
        self._prune(self.clock.seconds())
        return len(self._spent)


class Limiter:
    """
    At most ``max_in_flight`` requests at once; up to ``max_queue`` more wait
    in arrival order (a :class:`~vespa.gate.Gate`); beyond that a request is
    refused at once (429), so a runaway caller cannot pile unbounded work
    onto the endpoint.

    :param max_in_flight: requests handled at once; ``None`` for no limit.
    :param max_queue: requests waiting at most.
    """

    def __init__(self, max_in_flight: int | None, max_queue: int) -> None:
        self.max_queue = max_queue
        self._gate = Gate(max_in_flight)

    @property
    def max_in_flight(self) -> int | None:
        """Requests handled at once; ``None`` for no limit."""
        return self._gate.limit

    @property
    def in_flight(self) -> int:
        """Requests holding a place."""
        return self._gate.held

    @property
    def queued(self) -> int:
        """Requests waiting for a place."""
        return self._gate.queued

    def acquire(self) -> Deferred[Slot]:
        """
        A place, now or when one frees up; cancelling the Deferred leaves the queue.

        :raise TooManyRequests: the queue is full.
        """
        gate = self._gate
        if not gate.free and gate.queued >= self.max_queue:
            raise TooManyRequests(
                f"{gate.held} requests are in flight and {gate.queued} waiting; try again shortly",
                headers={"Retry-After": "1"},
            )
        return gate.acquire()
