"""
Unit tests of the client's policies: preferences, budgets, backoff, the
in-flight limit, what is retryable, and the dispatcher's retries and hedges,
with a fake router and sender and a ``Clock``.
"""

from __future__ import annotations

import random
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers

from vespa.client.errors import (
    DeadlineExceeded,
    NoWorkerReady,
    TooManyRequests,
    WorkerTimeout,
    WorkerUnavailable,
)
from vespa.client.policy import (
    Budget,
    Dispatcher,
    DispatchFailed,
    Limiter,
    Outcome,
    Preferences,
    Retry,
    judge,
    parse_preferences,
)
from vespa.client.router import Route
from vespa.errors import BadRequest


class PreferenceTests(SynchronousTestCase):
    def test_no_header_gives_the_defaults(self) -> None:
        defaults = Preferences(max_retries=5)
        self.assertIs(parse_preferences(None, defaults), defaults)
        self.assertIs(parse_preferences(b"  ", defaults), defaults)

    def test_fields_override_the_defaults(self) -> None:
        prefs = parse_preferences(
            b'{"timeout_s": 30, "max_retries": 0, "hedge_delay": 0.25, "batch_size": 16,'
            b' "retry_budget_pct": 0.5, "hedge_budget_pct": 0, "initial_backoff_ms": 50,'
            b' "max_concurrent_requests": 4}',
            Preferences(),
        )
        self.assertEqual(
            prefs,
            Preferences(
                timeout_s=30.0,
                max_retries=0,
                retry_budget_pct=0.5,
                hedge_delay=0.25,
                hedge_budget_pct=0.0,
                initial_backoff_ms=50.0,
                max_concurrent_requests=4,
                batch_size=16,
            ),
        )

    def test_null_turns_hedging_and_the_timeout_off(self) -> None:
        prefs = parse_preferences(
            b'{"hedge_delay": null, "timeout_s": null}', Preferences(hedge_delay=1, timeout_s=9)
        )
        self.assertIsNone(prefs.hedge_delay)
        self.assertIsNone(prefs.timeout_s)

    def test_every_bad_field_is_named(self) -> None:
        with self.assertRaises(BadRequest) as caught:
            parse_preferences(
                b'{"max_retries": 1.5, "batch_size": true, "timeout_s": -1, "x": 1,'
                b' "hedge_delay": "1"}',
                Preferences(),
            )
        fields = caught.exception.details["fields"]
        self.assertEqual(
            set(fields), {"max_retries", "batch_size", "timeout_s", "x", "hedge_delay"}
        )
        self.assertEqual(fields["x"], "unknown preference")
        self.assertEqual(caught.exception.status, 400)

    def test_idempotent_is_a_boolean(self) -> None:
        """``idempotent`` takes true or false, nothing else (1 is not true)."""
        self.assertTrue(parse_preferences(b'{"idempotent": true}', Preferences()).idempotent)
        self.assertFalse(
            parse_preferences(b'{"idempotent": false}', Preferences(idempotent=True)).idempotent
        )
        with self.assertRaises(BadRequest) as caught:
            parse_preferences(b'{"idempotent": 1}', Preferences())
        fields = caught.exception.details["fields"]
        self.assertEqual(fields, {"idempotent": "must be true or false"})

    def test_not_json_or_not_an_object(self) -> None:
        for raw in (b"{", b"[1]", b'"s"'):
            with self.assertRaises(BadRequest):
                parse_preferences(raw, Preferences())


class BudgetTests(SynchronousTestCase):
    def test_reserve_then_share_of_requests(self) -> None:
        """reserve + pct * requests spends per window, then no more."""
        clock = Clock()
        budget = Budget(clock, window=10, reserve=1)
        for _ in range(10):
            budget.record_request()
        spent = [budget.try_spend(0.2) for _ in range(5)]
        self.assertEqual(spent, [True, True, True, False, False])  # 1 + 0.2 * 10
        self.assertEqual(budget.refused, 2)

    def test_window_slides(self) -> None:
        clock = Clock()
        budget = Budget(clock, window=10, reserve=1)
        self.assertTrue(budget.try_spend(0))
        self.assertFalse(budget.try_spend(0))
        clock.advance(10)
        self.assertTrue(budget.try_spend(0))
        self.assertEqual(budget.spent, 1)


class LimiterTests(SynchronousTestCase):
    def test_queue_then_refuse(self) -> None:
        limiter = Limiter(1, max_queue=1)
        first = self.successResultOf(limiter.acquire())
        waiting = limiter.acquire()
        self.assertNoResult(waiting)
        with self.assertRaises(TooManyRequests):
            limiter.acquire()
        first.release()
        first.release()  # idempotent
        second = self.successResultOf(waiting)
        self.assertEqual((limiter.in_flight, limiter.queued), (1, 0))
        second.release()
        self.assertEqual(limiter.in_flight, 0)

    def test_cancelled_waiter_leaves_the_queue(self) -> None:
        limiter = Limiter(1, max_queue=5)
        self.successResultOf(limiter.acquire())
        waiting = limiter.acquire()
        waiting.cancel()
        self.failureResultOf(waiting, CancelledError)
        self.assertEqual(limiter.queued, 0)


class FakeAnswer:
    def __init__(self, code: int, body: bytes = b"", worker: str = "w", **headers: str) -> None:
        self.code = code
        self.phrase = b""
        self.first = body
        self.complete = True
        self.worker = worker
        self.headers = Headers(
            {k.replace("_", "-").encode(): [v.encode()] for k, v in headers.items()}
        )
        self.discarded = False

    def discard(self) -> None:
        self.discarded = True


class JudgeTests(SynchronousTestCase):
    def test_answers(self) -> None:
        """Only a worker's own refusal is safe; its own 5xx may have reached the model."""
        safe, maybe, never = Retry.SAFE, Retry.IF_IDEMPOTENT, Retry.NEVER
        cases = [
            # The worker refused before relaying: nothing reached a model server.
            (FakeAnswer(429, b'{"error": "busy", "origin": "vespa"}'), safe),
            (FakeAnswer(503, b"{}", x_vespa_origin="vespa"), safe),
            (FakeAnswer(429), safe),  # the original PyWorker's queue refusal: no body
            # The model server's own 429/503: it had the request.
            (FakeAnswer(503, b'{"error": "model"}'), maybe),
            (FakeAnswer(503), maybe),
            # The worker's own 5xx: its backend failed or timed out with the request.
            (FakeAnswer(502, b'{"error": "x", "origin": "vespa"}'), maybe),
            (FakeAnswer(504, b"{}", x_vespa_origin="vespa"), maybe),
            (FakeAnswer(500), maybe),  # the original PyWorker's crash: empty 500
            (FakeAnswer(500, b"x", x_vespa_origin="worker"), maybe),
            # The model server's own answers are the caller's.
            (FakeAnswer(500, b'{"error": "model crashed"}'), never),
            (FakeAnswer(500, b"Internal Server Error"), never),
            (FakeAnswer(502, b"", x_vespa_origin="backend"), never),
            (FakeAnswer(400), never),
            (FakeAnswer(404, b'{"origin": "vespa"}'), never),
            (FakeAnswer(200), never),
        ]
        for answer, expected in cases:
            self.assertEqual(judge(answer), expected, (answer.code, answer.first))  # type: ignore[arg-type]

    def test_errors(self) -> None:
        """A connection failure is safe only when it says nothing was sent."""
        self.assertEqual(judge(WorkerUnavailable("refused", maybe_delivered=False)), Retry.SAFE)
        self.assertEqual(judge(WorkerTimeout("connect", maybe_delivered=False)), Retry.SAFE)
        self.assertEqual(judge(WorkerUnavailable("reset")), Retry.IF_IDEMPOTENT)
        self.assertEqual(judge(WorkerTimeout("first byte")), Retry.IF_IDEMPOTENT)
        self.assertEqual(judge(DeadlineExceeded("late")), Retry.IF_IDEMPOTENT)


def refused(message: str = "refused") -> WorkerUnavailable:
    """An attempt that provably sent nothing (the connection was refused)."""
    return WorkerUnavailable(message, maybe_delivered=False)


class FakeRouter:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, Any, Any]] = []
        self.pending: list[Deferred[Route]] = []
        self.cancelled: list[Deferred[Route]] = []

    def route(self, cost: Any, request_idx: Any = None, deadline: Any = None) -> Deferred[Route]:
        self.calls.append((cost, request_idx, deadline))
        d: Deferred[Route] = Deferred(self.cancelled.append)
        self.pending.append(d)
        return d

    def answer(self, index: int, url: str, idx: int = 7, waited: float = 0.0) -> None:
        self.pending[index].callback(Route(url, {"url": url}, idx, waited))


class FakeSender:
    def __init__(self) -> None:
        self.sent: list[tuple[Any, str]] = []
        self.pending: list[Deferred[Any]] = []
        self.cancelled: list[Deferred[Any]] = []

    def send(self, request: Any, worker: str, *, peek: bool) -> Deferred[Any]:
        self.sent.append((request, worker))
        d: Deferred[Any] = Deferred(self.cancelled.append)
        self.pending.append(d)
        return d


class DispatcherTestCase(SynchronousTestCase):
    """A dispatcher with a fake router and sender, on a Clock."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.router = FakeRouter()
        self.sender = FakeSender()
        self.dispatcher = Dispatcher(
            self.router,  # type: ignore[arg-type]
            self.sender,  # type: ignore[arg-type]
            self.clock,
            retry_budget=Budget(self.clock, reserve=10),
            hedge_budget=Budget(self.clock, reserve=1),
            rng=random.Random(0),
        )

    def dispatch(self, **prefs: Any) -> Deferred[Outcome]:
        def build(worker: str, auth: Any, attempt: int) -> Any:
            return (worker, attempt)

        deadline = prefs.pop("deadline", None)
        return self.dispatcher.dispatch(build, 10, Preferences(**prefs), deadline)


class DispatcherTests(DispatcherTestCase):
    def test_first_answer_wins(self) -> None:
        d = self.dispatch()
        self.router.answer(0, "http://w1")
        self.assertEqual(self.sender.sent, [(("http://w1", 1), "http://w1")])
        answer = FakeAnswer(200, worker="http://w1")
        self.sender.pending[0].callback(answer)
        outcome = self.successResultOf(d)
        self.assertIs(outcome.answer, answer)
        self.assertEqual(outcome.attempts, 1)
        self.assertEqual(self.dispatcher.stats.in_flight, 0)

    def test_failure_retried_with_the_same_request_idx_after_backoff(self) -> None:
        d = self.dispatch(initial_backoff_ms=100)
        self.router.answer(0, "http://w1", idx=42)
        self.sender.pending[0].errback(Failure(refused()))
        self.assertEqual(len(self.router.calls), 1)
        self.clock.advance(0.1)
        self.assertEqual(self.router.calls[1][1], 42)
        self.router.answer(1, "http://w2", idx=42)
        self.assertEqual(self.sender.sent[1][0], ("http://w2", 2))
        self.sender.pending[1].callback(FakeAnswer(200, worker="http://w2"))
        self.assertEqual(self.successResultOf(d).attempts, 2)
        self.assertEqual(self.dispatcher.stats.retries, 1)

    def test_retryable_answer_relayed_when_retries_run_out(self) -> None:
        d = self.dispatch(max_retries=1, initial_backoff_ms=0)
        self.router.answer(0, "http://w1")
        first = FakeAnswer(429, b"{}", x_vespa_origin="vespa")
        self.sender.pending[0].callback(first)
        self.clock.advance(0)
        self.router.answer(1, "http://w1")
        last = FakeAnswer(503, b"{}", x_vespa_origin="vespa")
        self.sender.pending[1].callback(last)
        outcome = self.successResultOf(d)
        self.assertIs(outcome.answer, last)
        self.assertTrue(first.discarded)
        self.assertFalse(last.discarded)

    def test_connection_errors_run_out(self) -> None:
        d = self.dispatch(max_retries=0)
        self.router.answer(0, "http://w1")
        self.sender.pending[0].errback(Failure(refused("reset")))
        failed = self.failureResultOf(d, DispatchFailed).value
        self.assertEqual(failed.error.message, "reset")
        self.assertEqual((failed.attempts, failed.worker), (1, "http://w1"))

    def test_budget_refusal(self) -> None:
        self.dispatcher.retry_budget = Budget(self.clock, reserve=0)
        d = self.dispatch(retry_budget_pct=0)
        self.router.answer(0, "http://w1")
        self.sender.pending[0].errback(Failure(refused()))
        failed = self.failureResultOf(d, DispatchFailed).value
        self.assertIn("budget", failed.error.details["retry"])
        self.assertEqual(self.dispatcher.stats.retries_refused_by_budget, 1)

    def test_routing_failure_is_final(self) -> None:
        d = self.dispatch()
        self.router.pending[0].errback(Failure(NoWorkerReady("none")))
        failed = self.failureResultOf(d, DispatchFailed).value
        self.assertIsInstance(failed.error, NoWorkerReady)
        self.assertEqual(failed.attempts, 0)

    def test_deadline(self) -> None:
        d = self.dispatch(deadline=5.0, timeout_s=5.0)
        self.router.answer(0, "http://w1")
        self.clock.advance(5)
        failed = self.failureResultOf(d, DispatchFailed).value
        self.assertIsInstance(failed.error, DeadlineExceeded)
        self.assertEqual(self.sender.cancelled, [self.sender.pending[0]])

    def test_cancel_cancels_routing_and_sending(self) -> None:
        d = self.dispatch()
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(self.router.cancelled, self.router.pending)
        self.assertEqual(self.dispatcher.stats.cancelled, 1)
        self.assertEqual(self.dispatcher.stats.in_flight, 0)

    def test_hedge_wins_loser_cancelled(self) -> None:
        d = self.dispatch(hedge_delay=0.5)
        self.router.answer(0, "http://w1")
        self.clock.advance(0.5)
        self.assertEqual(len(self.router.calls), 2)
        self.router.answer(1, "http://w2")
        self.sender.pending[1].callback(FakeAnswer(200, worker="http://w2"))
        outcome = self.successResultOf(d)
        self.assertEqual(outcome.worker, "http://w2")
        self.assertEqual(outcome.attempts, 2)
        self.assertEqual(self.sender.cancelled, [self.sender.pending[0]])
        self.assertEqual(self.dispatcher.stats.hedges_won, 1)

    def test_primary_can_still_win(self) -> None:
        d = self.dispatch(hedge_delay=0.5)
        self.router.answer(0, "http://w1")
        self.clock.advance(0.5)
        self.sender.pending[0].callback(FakeAnswer(200, worker="http://w1"))
        self.assertEqual(self.successResultOf(d).worker, "http://w1")
        self.assertEqual(self.router.cancelled, [self.router.pending[1]])

    def test_a_failed_racer_leaves_the_other_running(self) -> None:
        d = self.dispatch(hedge_delay=0.5)
        self.router.answer(0, "http://w1")
        self.clock.advance(0.5)
        self.sender.pending[0].errback(Failure(WorkerUnavailable("reset")))
        self.assertNoResult(d)
        self.router.answer(1, "http://w2")
        self.sender.pending[1].callback(FakeAnswer(200, worker="http://w2"))
        self.assertEqual(self.successResultOf(d).worker, "http://w2")
        self.assertEqual(self.dispatcher.stats.retries, 0)

    def test_hedge_budget(self) -> None:
        self.dispatcher.hedge_budget = Budget(self.clock, reserve=0)
        d = self.dispatch(hedge_delay=0.5, hedge_budget_pct=0)
        self.router.answer(0, "http://w1")
        self.clock.advance(0.5)
        self.assertEqual(len(self.router.calls), 1)
        self.assertEqual(self.dispatcher.stats.hedges_refused_by_budget, 1)
        self.sender.pending[0].callback(FakeAnswer(200))
        self.successResultOf(d)

    def test_no_hedge_while_still_routing(self) -> None:
        """The hedge clock starts when a worker has the request, not while waiting for one."""
        self.dispatch(hedge_delay=0.5)
        self.clock.advance(5)
        self.assertEqual(len(self.router.calls), 1)


class DeliveredOnceTests(DispatcherTestCase):
    """A request that may have reached a model server is not sent again, unless idempotent."""

    def test_a_failure_after_sending_is_not_retried(self) -> None:
        """The connection failed with the request written: 502 saying why, one attempt."""
        d = self.dispatch()
        self.router.answer(0, "http://w1")
        self.sender.pending[0].errback(Failure(WorkerUnavailable("reset after the body")))
        failed = self.failureResultOf(d, DispatchFailed).value
        self.assertEqual(failed.error.status, 502)
        self.assertIn("may have received", failed.error.details["retry"])
        self.assertEqual((failed.attempts, len(self.router.calls)), (1, 1))
        self.assertEqual(self.dispatcher.stats.retries, 0)

    def test_a_workers_own_502_is_the_answer(self) -> None:
        """The worker's 502 (its backend failed with the request) is relayed, not retried."""
        d = self.dispatch()
        self.router.answer(0, "http://w1")
        answer = FakeAnswer(502, b'{"error": "backend died", "origin": "vespa"}')
        self.sender.pending[0].callback(answer)
        self.assertIs(self.successResultOf(d).answer, answer)
        self.assertEqual(len(self.router.calls), 1)

    def test_idempotent_requests_are_retried(self) -> None:
        """Marked idempotent, the same failures are tried again on another worker."""
        d = self.dispatch(idempotent=True, initial_backoff_ms=0)
        self.router.answer(0, "http://w1")
        self.sender.pending[0].errback(Failure(WorkerUnavailable("reset after the body")))
        self.clock.advance(0)
        self.router.answer(1, "http://w2")
        self.sender.pending[1].callback(FakeAnswer(504, b"{}", x_vespa_origin="vespa"))
        self.clock.advance(1)
        self.router.answer(2, "http://w3")
        self.sender.pending[2].callback(FakeAnswer(200, worker="http://w3"))
        self.assertEqual(self.successResultOf(d).attempts, 3)

    def test_a_racing_hedge_may_still_answer(self) -> None:
        """With a hedge racing, an undeliverable failure waits for it, then gives up."""
        d = self.dispatch(hedge_delay=0.5)
        self.router.answer(0, "http://w1")
        self.clock.advance(0.5)
        self.router.answer(1, "http://w2")
        self.sender.pending[0].errback(Failure(WorkerUnavailable("reset")))
        self.assertNoResult(d)
        self.sender.pending[1].errback(Failure(refused()))
        self.failureResultOf(d, DispatchFailed)
        self.assertEqual(len(self.router.calls), 2)

    def test_a_build_that_raises_answers(self) -> None:
        """A route the request cannot be built for fails the request: no hang."""

        def build(worker: str, auth: Any, attempt: int) -> Any:
            raise ValueError("no")

        d = self.dispatcher.dispatch(build, 1, Preferences())
        self.router.answer(0, "http://w1")
        failed = self.failureResultOf(d, DispatchFailed).value
        self.assertEqual((failed.error.status, failed.error.origin), (502, "autoscaler"))
        self.assertEqual(self.dispatcher.stats.in_flight, 0)

    def test_a_callback_that_raises_answers(self) -> None:
        """A bug judging an answer fails the request (500), not a hang."""
        d = self.dispatch()
        self.router.answer(0, "http://w1")
        self.sender.pending[0].callback(object())  # not an Answer: judging it raises
        failed = self.failureResultOf(d, DispatchFailed).value
        self.assertEqual(failed.error.status, 500)
        self.assertIn("internal error", failed.error.message)
        self.assertEqual(self.dispatcher.stats.in_flight, 0)
        self.assertEqual(len(self.flushLoggedErrors(AttributeError)), 1)
