# -*- test-case-name: tests.test_client_policy -*-
"""
Whether a failed attempt may be sent again (see :mod:`vespa.client.policy`),
and the retry state of one request: its count, its backoff, its last word.
"""

from __future__ import annotations

import enum
import json
import random
from dataclasses import dataclass, field

from twisted.internet.interfaces import IReactorTime

from vespa.backoff import equal_jitter
from vespa.client.budgets import Budget
from vespa.client.errors import WorkerUnavailable
from vespa.client.preferences import Preferences
from vespa.client.upstream import Answer
from vespa.errors import VespaError
from vespa.log import get_logger

log = get_logger(__name__)

#: The longest backoff between two attempts, in seconds.
MAX_BACKOFF = 5.0


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


@dataclass
class RetryState:
    """
    The retries of one request: whether another attempt may follow, and what
    the caller gets when none does (the last relayable answer, else the last
    error).

    :ivar prefs: the request's preferences.
    :ivar clock: the time, for the deadline.
    :ivar rng: the backoff's jitter.
    :ivar budget: the retry budget shared by all requests.
    :ivar count: the retries made.
    :ivar answer: the last relayable answer, if any.
    :ivar error: the last error, if any.
    :ivar budget_spent: a retry was refused by the budget.
    """

    prefs: Preferences
    clock: IReactorTime
    rng: random.Random
    budget: Budget
    count: int = field(default=0, init=False)
    answer: Answer | None = field(default=None, init=False)
    error: VespaError | None = field(default=None, init=False)
    budget_spent: bool = field(default=False, init=False)
    # An attempt failed in a way that forbids another (the request may
    # have reached a model server): racing hedges may still answer.
    _forbidden: bool = field(default=False, init=False, repr=False)

    def allow(self, verdict: Retry) -> bool:
        """
        Whether a failure judged ``verdict`` leaves the request free to be
        sent again; if not, no attempt after the racing ones is made.
        """
        if verdict is Retry.SAFE or (verdict is Retry.IF_IDEMPOTENT and self.prefs.idempotent):
            return True
        self._forbidden = True
        return False

    def absorb(self, failure: Answer | VespaError, *, racing: bool) -> bool:
        """
        Take a failed attempt's ``failure`` in: keep it as what the caller
        gets if no attempt follows, when another attempt may do better
        (a retry, or an attempt still ``racing``).

        :return: whether it was kept; an answer that is not is the caller's.
        """
        verdict = judge(failure)
        if isinstance(failure, VespaError):
            if not self.allow(verdict):
                failure.details.setdefault(
                    "retry",
                    "not retried: the worker may have received the request; mark it "
                    "idempotent to allow retries",
                )
        elif verdict is Retry.NEVER or not (self.allow(verdict) or racing):
            return False
        else:
            log.debug(
                "worker {worker} answered {code}; another worker may do",
                worker=failure.worker,
                code=failure.code,
            )
        self.keep(failure)
        return True

    def keep(self, failure: Answer | VespaError) -> None:
        """What to give if no attempt follows: ``failure`` replaces what was kept."""
        self.drop_answer()
        if isinstance(failure, VespaError):
            self.error = failure
        else:
            self.answer, self.error = failure, None

    def drop_answer(self) -> None:
        """Discard the kept answer, if any."""
        answer, self.answer = self.answer, None
        if answer is not None:
            answer.discard()

    def next_delay(self, deadline: float | None) -> float | None:
        """
        The backoff before the next attempt, counted as a retry; ``None`` to
        give up (:attr:`budget_spent` says when the budget was the reason).

        :param deadline: a ``clock.seconds()`` time the retry must start before.
        """
        prefs = self.prefs
        if self._forbidden or self.count >= prefs.max_retries:
            return None
        delays = equal_jitter(prefs.initial_backoff_ms / 1000.0, MAX_BACKOFF, self.rng)
        delay = delays(self.count)
        if deadline is not None and self.clock.seconds() + delay >= deadline:
            return None
        if not self.budget.try_spend(prefs.retry_budget_pct):
            log.info("not retrying: the retry budget is spent")
            self.budget_spent = True
            return None
        self.count += 1
        return delay

    def last_word(self, attempts: int) -> Answer | VespaError:
        """
        What the caller gets now that no attempt follows: the worker's own
        answer (a 429, a 503) says more than an error of ours would.
        """
        answer, self.answer = self.answer, None
        if answer is not None:
            return answer
        error = self.error or WorkerUnavailable("no worker could be reached")
        if self.budget_spent:
            error.details.setdefault("retry", "not retried: the retry budget is spent")
        error.details.setdefault("attempts", attempts)
        return error
