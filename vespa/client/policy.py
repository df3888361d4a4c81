# -*- test-case-name: tests.test_client_policy -*-
"""
How hard the client tries: preferences, retries, hedging, budgets, deadlines.

Two rules make retries safe. **Nothing is retried once a byte of the answer
has reached the caller** (``reference/peers.md`` 5.4). And **a request is
sent again only if it provably never reached a model server**, unless it is
idempotent (the ``idempotent`` preference, or a safe method: ``GET``,
``HEAD``, ``OPTIONS``). A retry goes to a freshly routed worker, with the
same ``request_idx`` (so the autoscaler counts one request), after a capped,
jittered exponential backoff. :func:`judge` sorts the failures:

* :attr:`Retry.SAFE`, retried for every request: the worker could not be
  reached (connection refused, connect timeout, TLS handshake failed: see
  :func:`vespa.client.upstream.never_sent`), or it refused the request
  itself before relaying it: its own 429 or 503 (full, loading, draining),
  marked as its own by ``X-Vespa-Origin: vespa`` or a JSON
  ``"origin": "vespa"``, or the bodiless 429 of the original PyWorker.
* :attr:`Retry.IF_IDEMPOTENT`, retried for idempotent requests only,
  because the model server may have the request already: the connection
  failed after the request was written to it, the worker went silent past
  ``--first-byte-timeout``, the worker answered a 5xx of its own (its 502
  or 504 says the backend failed or timed out *with* the request; the
  original PyWorker's empty 500 too), or a model server's own 429/503.
* :attr:`Retry.NEVER`: every other answer, the model server's 4xx and 5xx
  above all: a request that fails there would fail again, and cost twice.

A request that is not retried for want of idempotence gets the worker's
answer, or a 502/504 JSON error saying the worker may have received it.

Retries are bounded twice: ``max_retries`` per request, and a **retry
budget** shared by all requests (:class:`Budget`): over the last
:data:`BUDGET_WINDOW` seconds, retries may add at most ``retry_budget_pct``
of the requests received, plus a small reserve, so a bad minute cannot
multiply the load on an endpoint that is already failing.

**Hedging** (opt-in, ``hedge_delay``): when a worker has been sent the
request and ``hedge_delay`` seconds pass with no first byte, a second worker
is routed and raced; the first to produce a byte wins and the other is
cancelled (its worker sees the connection close). Hedging is at-least-once
by design: both workers may have started the request. Hedges spend their own
budget (``hedge_budget_pct``). Only the first attempt and the first retry hedge.

The :class:`Dispatcher` does all this for one request and hands back an
:class:`Outcome` (the winning :class:`~vespa.client.upstream.Answer`, not yet
streamed) or a :class:`~vespa.errors.VespaError`; cancelling it (the caller
went away) cancels routing, backoff and every attempt at once.
"""

from __future__ import annotations

import enum
import json
import math
import random
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from vespa.client.errors import (
    AutoscalerError,
    DeadlineExceeded,
    TooManyRequests,
    WorkerUnavailable,
)
from vespa.client.router import Route, Router
from vespa.client.upstream import Answer, Sender, WorkerRequest
from vespa.errors import BadRequest, VespaError
from vespa.log import get_logger

log = get_logger(__name__)

#: Seconds of history the retry and hedge budgets look at.
BUDGET_WINDOW = 10.0
#: The longest backoff between two attempts, in seconds.
MAX_BACKOFF = 5.0


# -- preferences ---------------------------------------------------------------


@dataclass(frozen=True)
class Preferences:
    """
    How one request is handled. The daemon's options give the defaults; the
    ``X-Vespa-Request-Preferences`` header (JSON) overrides them per request.

    :ivar timeout_s: seconds for the whole request, from arrival to the end of
        the answer; ``None`` for no limit.
    :ivar max_retries: attempts after the first, at most.
    :ivar retry_budget_pct: the share of recent requests retries may add, as a
        fraction (``0.2`` is 20 %), as Baseten's header has it.
    :ivar hedge_delay: seconds without a first byte before a second worker is
        raced; ``None`` for no hedging.
    :ivar hedge_budget_pct: the share of recent requests hedges may add, a fraction.
    :ivar initial_backoff_ms: the first backoff; each retry doubles it, up to
        :data:`MAX_BACKOFF`, with jitter.
    :ivar max_concurrent_requests: parts of one split batch in flight at once.
    :ivar batch_size: inputs per part when a batch is split.
    :ivar idempotent: the request may reach a model server twice without
        harm: retry it also after failures that may have delivered it (a
        safe method, ``GET``, ``HEAD`` or ``OPTIONS``, always is).
    """

    timeout_s: float | None = None
    max_retries: int = 3
    retry_budget_pct: float = 0.2
    hedge_delay: float | None = None
    hedge_budget_pct: float = 0.1
    initial_backoff_ms: float = 125.0
    max_concurrent_requests: int = 32
    batch_size: int = 128
    idempotent: bool = False


def _flag(value: Any) -> str | None:
    """A checker for a JSON boolean."""
    return None if isinstance(value, bool) else "must be true or false"


def _number(low: float, high: float, *, nullable: bool = False, whole: bool = False) -> Any:
    """A checker for a JSON number in ``[low, high]``: returns a reason, or ``None`` if fine."""

    def check(value: Any) -> str | None:
        if value is None and nullable:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            kind = "a whole number" if whole else "a number"
            return f"must be {kind}{' or null' if nullable else ''}"
        if whole and not isinstance(value, int):
            return "must be a whole number"
        if not (math.isfinite(value) and low <= value <= high):
            return f"must be between {low:g} and {high:g}"
        return None

    return check


#: Every preference a request may set, and what it accepts.
PREFERENCE_CHECKS: Mapping[str, Callable[[Any], str | None]] = {
    "timeout_s": _number(0.001, 86400, nullable=True),
    "max_retries": _number(0, 10, whole=True),
    "retry_budget_pct": _number(0, 3),
    "hedge_delay": _number(0.001, 3600, nullable=True),
    "hedge_budget_pct": _number(0, 3),
    "initial_backoff_ms": _number(0, 60000),
    "max_concurrent_requests": _number(1, 1024, whole=True),
    "batch_size": _number(1, 4096, whole=True),
    "idempotent": _flag,
}
assert set(PREFERENCE_CHECKS) == {f.name for f in fields(Preferences)}


def parse_preferences(raw: bytes | None, defaults: Preferences) -> Preferences:
    """
    The preferences of a request: ``defaults`` with the header's fields applied.

    :param raw: the ``X-Vespa-Request-Preferences`` header value, or ``None``.
    :param defaults: the daemon's defaults.
    :raise BadRequest: invalid JSON, not an object, or unknown or ill-typed
        fields (all of them named, in ``details["fields"]``).
    """
    if raw is None or not raw.strip():
        return defaults
    try:
        given = json.loads(raw)
    except ValueError:
        raise BadRequest("X-Vespa-Request-Preferences is not valid JSON") from None
    if not isinstance(given, dict):
        raise BadRequest("X-Vespa-Request-Preferences must be a JSON object")
    problems: dict[str, str] = {}
    for name, value in given.items():
        check = PREFERENCE_CHECKS.get(name)
        if check is None:
            problems[name] = "unknown preference"
            continue
        reason = check(value)
        if reason is not None:
            problems[name] = reason
    if problems:
        said = "; ".join(f"{name}: {reason}" for name, reason in problems.items())
        raise BadRequest(
            f"X-Vespa-Request-Preferences has bad fields ({said}); known fields: "
            + ", ".join(PREFERENCE_CHECKS),
            details={"fields": problems},
        )
    values: dict[str, Any] = {
        name: float(value)
        if isinstance(value, int) and not isinstance(value, bool) and name not in _WHOLE
        else value
        for name, value in given.items()
    }
    return replace(defaults, **values)


_WHOLE = frozenset({"max_retries", "max_concurrent_requests", "batch_size"})


# -- budgets, backoff, concurrency ----------------------------------------------


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


def backoff(attempt: int, initial_ms: float, rng: random.Random, cap: float = MAX_BACKOFF) -> float:
    """
    Seconds to wait before retry number ``attempt + 1``: ``initial_ms``
    doubled per retry, capped at ``cap``, then drawn between half and all of
    it so that clients retrying together spread out.
    """
    base = min(cap, initial_ms / 1000.0 * (2 ** min(attempt, 30)))
    return float(base * (0.5 + rng.random() / 2))


class Slot:
    """One place among the requests in flight; release it exactly once when done."""

    def __init__(self, limiter: Limiter) -> None:
        self._limiter: Limiter | None = limiter

    def release(self) -> None:
        """Give the place back (idempotent)."""
        limiter, self._limiter = self._limiter, None
        if limiter is not None:
            limiter._release()


class Limiter:
    """
    At most ``max_in_flight`` requests at once; up to ``max_queue`` more wait
    in arrival order; beyond that a request is refused at once (429), so a
    runaway caller cannot pile unbounded work onto the endpoint.

    :param max_in_flight: requests handled at once; ``None`` for no limit.
    :param max_queue: requests waiting at most.
    """

    def __init__(self, max_in_flight: int | None, max_queue: int) -> None:
        self.max_in_flight = max_in_flight
        self.max_queue = max_queue
        self.in_flight = 0
        self._waiting: deque[Deferred[Slot]] = deque()

    @property
    def queued(self) -> int:
        """Requests waiting for a place."""
        return len(self._waiting)

    def acquire(self) -> Deferred[Slot]:
        """
        A place, now or when one frees up; cancelling the Deferred leaves the queue.

        :raise TooManyRequests: the queue is full.
        """
        if self.max_in_flight is None or self.in_flight < self.max_in_flight:
            self.in_flight += 1
            d: Deferred[Slot] = Deferred()
            d.callback(Slot(self))
            return d
        if len(self._waiting) >= self.max_queue:
            raise TooManyRequests(
                f"{self.in_flight} requests are in flight and {len(self._waiting)} waiting; "
                "try again shortly",
                headers={"Retry-After": "1"},
            )

        def leave(waiter: Deferred[Slot]) -> None:
            try:
                self._waiting.remove(waiter)
            except ValueError:
                pass

        waiter: Deferred[Slot] = Deferred(leave)
        self._waiting.append(waiter)
        return waiter

    def _release(self) -> None:
        if self._waiting:
            # Handed over directly: the place never looks free to a newcomer.
            self._waiting.popleft().callback(Slot(self))
            return
        self.in_flight -= 1


# -- dispatching -------------------------------------------------------------


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


class Retry(enum.Enum):
    """Whether a failed attempt may be sent again (see the module's docstring)."""

    #: The request never reached a model server: retry it.
    SAFE = "safe"
    #: A model server may have the request: retry only an idempotent one.
    IF_IDEMPOTENT = "if idempotent"
    #: The answer is the caller's: never retry.
    NEVER = "never"


#: Methods that are safe (RFC 9110, 9.2.1): always idempotent.
SAFE_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS"})


def judge(failure: Answer | VespaError) -> Retry:
    """
    Whether an attempt that ended in ``failure`` (a worker's answer, or the
    error of an attempt that got none) may be sent again.
    """
    if isinstance(failure, VespaError):
        if isinstance(failure, WorkerUnavailable) and not failure.maybe_delivered:
            return Retry.SAFE
        return Retry.IF_IDEMPOTENT
    code = failure.code
    if code not in (429, 503) and code < 500:
        return Retry.NEVER
    own = _workers_own(failure)
    if code in (429, 503):
        return Retry.SAFE if own else Retry.IF_IDEMPOTENT
    return Retry.IF_IDEMPOTENT if own else Retry.NEVER


def _workers_own(answer: Answer) -> bool:
    """
    Whether an answer is the worker's own, not its model server's: a Vespa
    worker says so (``X-Vespa-Origin``, or ``"origin"`` in its JSON error);
    the original PyWorker's own answers have no body (429 queue full, 500).
    """
    origin = answer.headers.getRawHeaders(b"x-vespa-origin")
    if origin:
        return origin[0].strip().lower() != b"backend"
    if not answer.complete:
        return False
    body = answer.first.strip()
    if not body:
        return answer.code in (429, 500)
    try:
        parsed = json.loads(body)
    except ValueError:
        return False
    return isinstance(parsed, dict) and parsed.get("origin") == "vespa"


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
        delay = backoff(self._retries, prefs.initial_backoff_ms, self._d.rng)
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
