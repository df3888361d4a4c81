# -*- test-case-name: tests.test_client_policy -*-
"""
The dispatcher: routes, sends, retries and hedges one request (see
:mod:`vespa.client.policy` for the rules).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from vespa.backoff import equal_jitter
from vespa.client.budgets import Budget
from vespa.client.errors import AutoscalerError, DeadlineExceeded, WorkerUnavailable
from vespa.client.preferences import Preferences
from vespa.client.retries import Retry, judge
from vespa.client.router import Route, Router
from vespa.client.upstream import Answer, Sender, WorkerRequest
from vespa.errors import VespaError
from vespa.log import get_logger

log = get_logger(__name__)

#: The longest backoff between two attempts, in seconds.
MAX_BACKOFF = 5.0


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


class Dispatcher:
    """
    Routes, sends, retries and hedges requests; shared by the daemon and the API.

    :param router: asks the autoscaler for workers.
    :param sender: sends requests to workers.
    :param clock: for backoff, hedge delays and deadlines.
    :param retry_budget: the budget of retries.
    :param hedge_budget: the budget of hedges.
    :param rng: the jitter's randomness.
    """

    def __init__(
        self,
        router: Router,
        sender: Sender,
        clock: IReactorTime,
        *,
        retry_budget: Budget,
        hedge_budget: Budget,
        rng: random.Random | None = None,
    ) -> None:
        self.router = router
        self.sender = sender
        self.clock = clock
        self.retry_budget = retry_budget
        self.hedge_budget = hedge_budget
        self.rng = rng or random.Random()
        self.stats = DispatchStats()

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
    """One attempt: routing, then the worker request; cancellable as a whole."""

    def __init__(self, dispatch: _Dispatch, hedge: bool) -> None:
        self.dispatch = dispatch
        self.hedge = hedge
        self.pending: Deferred[Any] | None = None
        self.worker: str | None = None
        self.done = False

    def cancel(self) -> None:
        self.done = True
        pending, self.pending = self.pending, None
        if pending is not None:
            pending.cancel()


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
        self._build = build
        self._cost = cost
        self._prefs = prefs
        self._deadline = deadline
        self._result: Deferred[Outcome] = Deferred(self._cancelled)
        self._chains: list[_Chain] = []
        self._request_idx: int | None = None
        self._attempts = 0
        self._route_ms = 0.0
        self._retries = 0
        self._round_hedged = False
        self._last_answer: Answer | None = None
        self._last_error: VespaError | None = None
        self._last_worker: str | None = None
        self._timers: dict[str, IDelayedCall] = {}
        self._over = False
        # An attempt failed in a way that forbids another (the request may
        # have reached a model server): racing hedges may still answer.
        self._no_retry = False

    # -- lifecycle --

    def start(self) -> Deferred[Outcome]:
        stats = self._d.stats
        stats.requests += 1
        stats.in_flight += 1
        self._d.retry_budget.record_request()
        self._d.hedge_budget.record_request()
        if self._deadline is not None:
            delay = max(0.0, self._deadline - self._d.clock.seconds())
            self._timers["deadline"] = self._d.clock.callLater(delay, self._expired)
        self._launch(hedge=False)
        return self._result

    def _cancelled(self, _: Deferred[Outcome]) -> None:
        if self._over:
            return
        self._d.stats.cancelled += 1
        self._finish()

    def _finish(self) -> None:
        self._over = True
        self._d.stats.in_flight -= 1
        for timer in self._timers.values():
            if timer.active():
                timer.cancel()
        self._timers.clear()
        chains, self._chains = self._chains, []
        for chain in chains:
            chain.cancel()
        if self._last_answer is not None:
            self._last_answer.discard()
            self._last_answer = None

    def _win(self, outcome: Outcome) -> None:
        if self._last_answer is not None and self._last_answer is not outcome.answer:
            self._last_answer.discard()
        self._last_answer = None
        self._d.stats.answered += 1
        self._finish()
        self._result.callback(outcome)

    def _fail(self, error: VespaError) -> None:
        self._d.stats.failed += 1
        self._finish()
        self._result.errback(
            Failure(DispatchFailed(error, self._attempts, self._route_ms, self._last_worker))
        )

    def _expired(self) -> None:
        self._timers.pop("deadline", None)
        if self._over:
            return
        if self._last_answer is not None and not self._chains:
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

    # -- attempts --

    def _launch(self, hedge: bool) -> None:
        chain = _Chain(self, hedge)
        self._chains.append(chain)
        d = self._d.router.route(self._cost, self._request_idx, self._deadline)
        chain.pending = d
        d.addCallbacks(
            self._routed, self._route_failed, callbackArgs=(chain,), errbackArgs=(chain,)
        )
        d.addErrback(self._crashed)

    def _routed(self, route: Route, chain: _Chain) -> None:
        chain.pending = None
        if chain.done or self._over:
            return
        if route.request_idx is not None:
            self._request_idx = route.request_idx
        self._route_ms += route.waited * 1000.0
        self._attempts += 1
        self._d.stats.attempts += 1
        chain.worker = route.url
        self._last_worker = route.url
        try:
            request = self._build(route.url, route.auth, self._attempts)
        except Exception as e:
            # A route answer whose fields cannot be sent (a cost that is not
            # a number, a field JSON cannot hold): the autoscaler's fault.
            self._drop(chain)
            self._fail(AutoscalerError(f"the autoscaler's route answer is unusable: {e}"))
            return
        d = self._d.sender.send(request, route.url, peek=True)
        chain.pending = d
        d.addCallbacks(
            self._answered, self._send_failed, callbackArgs=(chain,), errbackArgs=(chain,)
        )
        d.addErrback(self._crashed)
        if not chain.hedge:
            self._arm_hedge()

    def _route_failed(self, reason: Failure, chain: _Chain) -> None:
        chain.pending = None
        if reason.check(CancelledError) or chain.done or self._over:
            return
        self._drop(chain)
        error = _vespa_error(reason)
        if self._chains:
            # Another attempt is still racing: let it decide.
            log.info("a hedge could not be routed: {error}", error=error.message)
            return
        self._fail(error)

    def _answered(self, answer: Answer, chain: _Chain) -> None:
        chain.pending = None
        if chain.done or self._over:
            answer.discard()
            return
        self._drop(chain)
        verdict = judge(answer)
        if verdict is not Retry.NEVER and (self._may_retry(verdict) or self._chains):
            log.debug(
                "worker {worker} answered {code}; another worker may do",
                worker=answer.worker,
                code=answer.code,
            )
            if self._last_answer is not None:
                self._last_answer.discard()
            self._last_answer = answer
            self._last_error = None
            self._attempt_failed()
            return
        if chain.hedge:
            self._d.stats.hedges_won += 1
        self._win(Outcome(answer, self._attempts, self._route_ms))

    def _send_failed(self, reason: Failure, chain: _Chain) -> None:
        chain.pending = None
        if reason.check(CancelledError) or chain.done or self._over:
            return
        self._drop(chain)
        error = _vespa_error(reason)
        log.debug("attempt at {worker} failed: {error}", worker=chain.worker, error=error.message)
        if not self._may_retry(judge(error)):
            error.details.setdefault(
                "retry",
                "not retried: the worker may have received the request; mark it idempotent "
                "to allow retries",
            )
        self._last_error = error
        if self._last_answer is not None:
            self._last_answer.discard()
            self._last_answer = None
        self._attempt_failed()

    def _may_retry(self, verdict: Retry) -> bool:
        """
        Whether a failure judged ``verdict`` leaves the request free to be
        sent again; if not, no attempt after the racing ones is made.
        """
        if verdict is Retry.SAFE or (verdict is Retry.IF_IDEMPOTENT and self._prefs.idempotent):
            return True
        self._no_retry = True
        return False

    def _crashed(self, reason: Failure) -> None:
        """
        A bug in one of the callbacks above: answer the caller anyway, so that
        no request hangs and its place in flight is freed.
        """
        log.failure("dispatching failed unexpectedly", reason)
        if not self._over:
            self._fail(VespaError(f"internal error in vespa-client: {reason.getErrorMessage()}"))

    def _drop(self, chain: _Chain) -> None:
        chain.done = True
        if chain in self._chains:
            self._chains.remove(chain)

    def _attempt_failed(self) -> None:
        if self._chains:
            return  # a racing attempt may still answer
        self._cancel_timer("hedge")
        prefs = self._prefs
        if self._no_retry or self._retries >= prefs.max_retries:
            self._give_up()
            return
        delay = equal_jitter(prefs.initial_backoff_ms / 1000.0, MAX_BACKOFF, self._d.rng)(
            self._retries
        )
        if self._deadline is not None and self._d.clock.seconds() + delay >= self._deadline:
            self._give_up()
            return
        if not self._d.retry_budget.try_spend(prefs.retry_budget_pct):
            self._d.stats.retries_refused_by_budget += 1
            log.info("not retrying: the retry budget is spent")
            self._give_up(budget=True)
            return
        self._retries += 1
        self._d.stats.retries += 1
        self._round_hedged = False
        self._timers["backoff"] = self._d.clock.callLater(delay, self._retry)

    def _retry(self) -> None:
        self._timers.pop("backoff", None)
        if self._over:
            return
        if self._last_answer is not None:
            self._last_answer.discard()
            self._last_answer = None
        self._launch(hedge=False)

    def _give_up(self, budget: bool = False) -> None:
        answer = self._last_answer
        if answer is not None:
            # The worker's own answer (a 429, a 503) says more than ours would.
            self._last_answer = None
            self._win(Outcome(answer, self._attempts, self._route_ms))
            return
        error = self._last_error or WorkerUnavailable("no worker could be reached")
        if budget:
            error.details.setdefault("retry", "not retried: the retry budget is spent")
        error.details.setdefault("attempts", self._attempts)
        self._fail(error)

    # -- hedging --

    def _arm_hedge(self) -> None:
        delay = self._prefs.hedge_delay
        if delay is None or self._round_hedged or self._retries > 1 or "hedge" in self._timers:
            return
        self._timers["hedge"] = self._d.clock.callLater(delay, self._hedge)

    def _hedge(self) -> None:
        self._timers.pop("hedge", None)
        if self._over or not self._chains or self._round_hedged:
            return
        self._round_hedged = True
        if not self._d.hedge_budget.try_spend(self._prefs.hedge_budget_pct):
            self._d.stats.hedges_refused_by_budget += 1
            return
        self._d.stats.hedges += 1
        log.debug("no first byte after {delay:g} s: hedging", delay=self._prefs.hedge_delay)
        self._launch(hedge=True)

    def _cancel_timer(self, name: str) -> None:
        timer = self._timers.pop(name, None)
        if timer is not None and timer.active():
            timer.cancel()


def _vespa_error(reason: Failure) -> VespaError:
    if isinstance(reason.value, VespaError):
        return reason.value
    log.failure("unexpected failure while dispatching", reason)
    return VespaError(f"internal error: {reason.getErrorMessage()}")
