# -*- test-case-name: tests.test_client_policy -*-
"""
The dispatcher: routes, sends, retries and hedges one request (see
:mod:`vespa.client.policy` for the rules).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import KW_ONLY, dataclass, field
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from vespa.client.budgets import Budget
from vespa.client.errors import AutoscalerError, DeadlineExceeded
from vespa.client.preferences import Preferences
from vespa.client.retries import RetryState
from vespa.client.router import Route, Router
from vespa.client.upstream import Answer, Sender, WorkerRequest
from vespa.errors import VespaError
from vespa.log import get_logger

log = get_logger(__name__)


@dataclass
class DispatchStats:
    """Counters of the dispatcher, for ``/health``."""

    requests: int = 0
    in_flight: int = 0
    answered: int = 0
    failed: int = 0
    cancelled: int = 0
    attempts: int = 0
    retries: int = 0
    retries_refused_by_budget: int = 0
    hedges: int = 0
    hedges_won: int = 0
    hedges_refused_by_budget: int = 0


@dataclass
class Outcome:
    """
    The winner of a request: an answer ready to stream, and how it was got.

    :ivar answer: the worker's answer, its body not yet passed on.
    :ivar attempts: requests sent to workers, hedges included.
    :ivar route_ms: milliseconds spent routing, summed over attempts.
    """

    answer: Answer
    attempts: int
    route_ms: float

    @property
    def worker(self) -> str:
        """The worker that answered."""
        return self.answer.worker


class DispatchFailed(Exception):
    """
    A request that got no answer: the error to give, and what was tried.

    :ivar error: the error for the caller.
    :ivar attempts: requests sent to workers.
    :ivar route_ms: milliseconds spent routing.
    :ivar worker: the last worker tried, if any.
    """

    def __init__(self, error: VespaError, attempts: int, route_ms: float, worker: str | None):
        super().__init__(error.message)
        self.error = error
        self.attempts = attempts
        self.route_ms = route_ms
        self.worker = worker


#: A function building the request for a worker: (worker url, auth fields,
#: attempt number) -> request.
Builder = Callable[[str, Mapping[str, Any], int], WorkerRequest]


@dataclass(eq=False, repr=False)
class Dispatcher:
    """
    Routes, sends, retries and hedges requests; shared by the daemon and the API.

    :ivar router: asks the autoscaler for workers.
    :ivar sender: sends requests to workers.
    :ivar clock: for backoff, hedge delays and deadlines.
    :ivar retry_budget: the budget of retries.
    :ivar hedge_budget: the budget of hedges.
    :ivar rng: the jitter's randomness.
    :ivar stats: the counters ``/health`` shows.
    """

    router: Router
    sender: Sender
    clock: IReactorTime
    _: KW_ONLY
    retry_budget: Budget
    hedge_budget: Budget
    rng: random.Random = field(default_factory=random.Random)
    stats: DispatchStats = field(init=False, default_factory=DispatchStats)

    def dispatch(
        self,
        build: Builder,
        cost: int | float,
        prefs: Preferences,
        deadline: float | None = None,
    ) -> Deferred[Outcome]:
        """
        Get one answer for a request.

        :param build: makes the request for a routed worker.
        :param cost: the workload for ``/route/``.
        :param prefs: the request's preferences.
        :param deadline: a ``clock.seconds()`` time by which an answer must
            have started, or ``None``.
        :return: fires with the :class:`Outcome`, or fails with
            :class:`DispatchFailed`; cancel it to abandon the request.
        """
        return _Dispatch(self, build, cost, prefs, deadline).start()


class _Chain:
    """
    One attempt: routing, then the worker request; cancellable as a whole.
    It tells its dispatch how each step went.
    """

    def __init__(self, dispatch: _Dispatch, hedge: bool) -> None:
        self.dispatch = dispatch
        self.hedge = hedge
        self.pending: Deferred[Any] | None = None
        self.worker: str | None = None
        self.done = False

    def start(self, router: Router, cost: int | float, request_idx: int | None) -> None:
        d = router.route(cost, request_idx, self.dispatch.deadline)
        self.pending = d
        d.addCallbacks(self._routed, self._failed).addErrback(self.dispatch.crashed)

    def cancel(self) -> None:
        self.done = True
        pending, self.pending = self.pending, None
        if pending is not None:
            pending.cancel()

    def _live(self) -> bool:
        self.pending = None
        return not (self.done or self.dispatch.over)

    def _routed(self, route: Route) -> None:
        if not self._live():
            return
        self.worker = route.url
        request = self.dispatch.routed(self, route)
        if request is None:
            return
        d = self.dispatch.sender.send(request, route.url, peek=True)
        self.pending = d
        d.addCallbacks(self._answered, self._failed).addErrback(self.dispatch.crashed)
        if not self.hedge:
            self.dispatch.hedging.arm(self.dispatch.retries.count)

    def _answered(self, answer: Answer) -> None:
        if not self._live():
            answer.discard()
            return
        self.dispatch.answered(self, answer)

    def _failed(self, reason: Failure) -> None:
        if not self._live() or reason.check(CancelledError):
            return
        self.dispatch.attempt_failed(self, _vespa_error(reason))


@dataclass
class _Tally:
    """
    What one request's attempts add up to.

    :ivar attempts: requests sent to workers, hedges included.
    :ivar route_ms: milliseconds spent routing.
    :ivar request_idx: the autoscaler's number for the request, once it gave one.
    :ivar last_worker: the last worker routed to.
    """

    attempts: int = 0
    route_ms: float = 0.0
    request_idx: int | None = None
    last_worker: str | None = None

    def routed(self, route: Route) -> None:
        """An attempt was routed to a worker."""
        if route.request_idx is not None:
            self.request_idx = route.request_idx
        self.route_ms += route.waited * 1000.0
        self.attempts += 1
        self.last_worker = route.url


class _Dispatch:
    """The state of one request being dispatched."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        build: Builder,
        cost: int | float,
        prefs: Preferences,
        deadline: float | None,
    ) -> None:
        self._d = dispatcher
        self.sender = dispatcher.sender
        self._build = build
        self._cost = cost
        self._prefs = prefs
        self.deadline = deadline
        self._result: Deferred[Outcome] = Deferred(self._cancelled)
        self._chains: list[_Chain] = []
        self.retries = RetryState(prefs, dispatcher.clock, dispatcher.rng, dispatcher.retry_budget)
        self.tally = _Tally()
        self.hedging = _Hedging(self, dispatcher, prefs)
        self.timers = _Timers(dispatcher.clock, lambda: self.over)
        self.over = False

    # -- lifecycle --

    def start(self) -> Deferred[Outcome]:
        stats = self._d.stats
        stats.requests += 1
        stats.in_flight += 1
        self._d.retry_budget.record_request()
        self._d.hedge_budget.record_request()
        if self.deadline is not None:
            delay = max(0.0, self.deadline - self._d.clock.seconds())
            self.timers.start("deadline", delay, self._expired)
        self.launch(hedge=False)
        return self._result

    def _cancelled(self, _: Deferred[Outcome]) -> None:
        if not self.over:
            self._d.stats.cancelled += 1
            self._finish()

    def _finish(self) -> None:
        self.over = True
        self._d.stats.in_flight -= 1
        self.timers.cancel_all()
        chains, self._chains = self._chains, []
        for chain in chains:
            chain.cancel()
        self.retries.drop_answer()

    def _give_up(self) -> None:
        said = self.retries.last_word(self.tally.attempts)
        if isinstance(said, VespaError):
            self._fail(said)
        else:
            self._win(said)

    def _win(self, answer: Answer) -> None:
        self._d.stats.answered += 1
        self._finish()
        self._result.callback(Outcome(answer, self.tally.attempts, self.tally.route_ms))

    def _expired(self) -> None:
        if self.retries.answer is not None and not self._chains:
            # Waiting in backoff with a relayable answer: give that.
            self._give_up()
            return
        timeout = self._prefs.timeout_s
        self._fail(
            DeadlineExceeded(
                f"no worker answered within the request's timeout"
                f"{f' of {timeout:g} s' if timeout else ''}"
            )
        )

    def crashed(self, reason: Failure) -> None:
        """
        A bug in one of the callbacks: answer the caller anyway, so that no
        request hangs and its place in flight is freed.
        """
        log.failure("dispatching failed unexpectedly", reason)
        if not self.over:
            self._fail(VespaError(f"internal error in vespa-client: {reason.getErrorMessage()}"))

    def _fail(self, error: VespaError) -> None:
        self._d.stats.failed += 1
        self._finish()
        tally = self.tally
        failed = DispatchFailed(error, tally.attempts, tally.route_ms, tally.last_worker)
        self._result.errback(Failure(failed))

    # -- attempts, told by their chains --

    @property
    def racing(self) -> bool:
        """Whether an attempt is under way."""
        return bool(self._chains)

    def launch(self, hedge: bool) -> None:
        """Start an attempt: a hedge races the one under way."""
        chain = _Chain(self, hedge)
        self._chains.append(chain)
        chain.start(self._d.router, self._cost, self.tally.request_idx)

    def routed(self, chain: _Chain, route: Route) -> WorkerRequest | None:
        """Count an attempt at the routed worker; its request, or ``None`` if it cannot be."""
        self.tally.routed(route)
        self._d.stats.attempts += 1
        try:
            return self._build(route.url, route.auth, self.tally.attempts)
        except Exception as e:
            # A route answer whose fields cannot be sent (a cost that is not
            # a number, a field JSON cannot hold): the autoscaler's fault.
            self._drop(chain)
            self._fail(AutoscalerError(f"the autoscaler's route answer is unusable: {e}"))
            return None

    def answered(self, chain: _Chain, answer: Answer) -> None:
        """A worker answered ``chain``'s request: the winner, or a failure to retry."""
        self._drop(chain)
        if self.retries.absorb(answer, racing=self.racing):
            self._next()
            return
        if chain.hedge:
            self._d.stats.hedges_won += 1
        self.retries.drop_answer()
        self._win(answer)

    def attempt_failed(self, chain: _Chain, error: VespaError) -> None:
        """``chain`` got no answer: its route, or its worker request, failed."""
        self._drop(chain)
        if chain.worker is None:  # routing failed
            if self._chains:
                # Another attempt is still racing: let it decide.
                log.info("a hedge could not be routed: {error}", error=error.message)
                return
            self._fail(error)
            return
        log.debug("attempt at {worker} failed: {error}", worker=chain.worker, error=error.message)
        self.retries.absorb(error, racing=self.racing)
        self._next()

    def _drop(self, chain: _Chain) -> None:
        chain.done = True
        if chain in self._chains:
            self._chains.remove(chain)

    def _next(self) -> None:
        if self._chains:
            return  # a racing attempt may still answer
        self.timers.cancel("hedge")
        delay = self.retries.next_delay(self.deadline)
        if delay is None:
            if self.retries.budget_spent:
                self._d.stats.retries_refused_by_budget += 1
            self._give_up()
            return
        self._d.stats.retries += 1
        self.hedging.new_round()
        self.timers.start("backoff", delay, self._retry)

    def _retry(self) -> None:
        self.retries.drop_answer()
        self.launch(hedge=False)


class _Timers:
    """
    The named timers of one dispatch (deadline, backoff, hedge); none fires
    once the dispatch is over.
    """

    def __init__(self, clock: IReactorTime, over: Callable[[], bool]) -> None:
        self._clock = clock
        self._over = over
        self._calls: dict[str, IDelayedCall] = {}

    def __contains__(self, name: str) -> bool:
        return name in self._calls

    def start(self, name: str, delay: float, then: Callable[[], None]) -> None:
        def fire() -> None:
            del self._calls[name]
            if not self._over():
                then()

        self._calls[name] = self._clock.callLater(delay, fire)

    def cancel(self, name: str) -> None:
        call = self._calls.pop(name, None)
        if call is not None and call.active():
            call.cancel()

    def cancel_all(self) -> None:
        for name in list(self._calls):
            self.cancel(name)


class _Hedging:
    """
    When one dispatch races a second worker: once per round (the first
    attempt and the first retry only), ``hedge_delay`` after the request was
    sent, if the hedge budget allows.
    """

    def __init__(self, dispatch: _Dispatch, dispatcher: Dispatcher, prefs: Preferences) -> None:
        self._dispatch = dispatch
        self._d = dispatcher
        self._prefs = prefs
        self._hedged = False

    def arm(self, retries: int) -> None:
        """The first attempt of a round was sent, after ``retries`` retries."""
        delay = self._prefs.hedge_delay
        timers = self._dispatch.timers
        if delay is None or self._hedged or retries > 1 or "hedge" in timers:
            return
        timers.start("hedge", delay, self._fire)

    def new_round(self) -> None:
        """A retry starts a new round: it may hedge again."""
        self._hedged = False

    def _fire(self) -> None:
        if not self._dispatch.racing or self._hedged:
            return
        self._hedged = True
        if not self._d.hedge_budget.try_spend(self._prefs.hedge_budget_pct):
            self._d.stats.hedges_refused_by_budget += 1
            return
        self._d.stats.hedges += 1
        log.debug("no first byte after {delay:g} s: hedging", delay=self._prefs.hedge_delay)
        self._dispatch.launch(hedge=True)


def _vespa_error(reason: Failure) -> VespaError:
    if isinstance(reason.value, VespaError):
        return reason.value
    log.failure("unexpected failure while dispatching", reason)
    return VespaError(f"internal error: {reason.getErrorMessage()}")
