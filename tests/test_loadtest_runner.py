"""
The load test's runner on a ``Clock`` with a scripted target: what each
request becomes, the in-flight cap, timeouts, Ctrl-C once and twice.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.http_headers import Headers

from vespa.client.errors import (
    DeadlineExceeded,
    NoWorkerReady,
    UnsupportedBody,
    WorkerTimeout,
    WorkerUnavailable,
)
from vespa.client.policy import DispatchFailed
from vespa.errors import VespaError
from vespa.loadtest.payloads import RequestSpec
from vespa.loadtest.runner import LoadRun, cause_of_error, cause_of_status
from vespa.loadtest.schedule import RateProfile, arrival_offsets
from vespa.loadtest.stats import Stats
from vespa.loadtest.target import Started

WORKER = "http://worker-a"


class FakeAnswer:
    """An answer whose body the test streams with :meth:`send` and :meth:`finish`."""

    def __init__(self) -> None:
        self.sink: Any = None
        self.discarded = False

    def attach(self, sink: Any) -> None:
        self.sink = sink

    def discard(self) -> None:
        self.discarded = True


class ScriptedTarget:
    """A target whose requests stay pending until the test answers them."""

    description = "scripted"

    def __init__(self) -> None:
        self.pending: list[Deferred[Started]] = []
        self.specs: list[RequestSpec] = []
        self.cancelled: list[int] = []

    def send(self, spec: RequestSpec) -> Deferred[Started]:
        index = len(self.pending)
        d: Deferred[Started] = Deferred(lambda _: self.cancelled.append(index))
        self.pending.append(d)
        self.specs.append(spec)
        return d

    def close(self) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        d.callback(None)
        return d

    def answer(
        self, i: int, code: int, headers: dict[bytes, list[bytes]] | None = None
    ) -> FakeAnswer:
        answer = FakeAnswer()
        self.pending[i].callback(Started(code, Headers(headers or {}), WORKER, 1, answer))  # type: ignore[arg-type]
        return answer

    def fail(self, i: int, error: VespaError, worker: str | None = None) -> None:
        self.pending[i].errback(Failure(DispatchFailed(error, 2, 0.0, worker)))


def spec(i: int) -> RequestSpec:
    return RequestSpec("/v1/completions", {"prompt": f"p{i}", "max_tokens": 4})


def stream_spec(i: int) -> RequestSpec:
    return RequestSpec("/v1/completions", {"prompt": "p", "stream": True})


class RunnerTests(TestCase):
    def start(
        self, requests: int = 3, rate: float = 10.0, source: Any = spec, **kw: Any
    ) -> tuple[Clock, ScriptedTarget, LoadRun, Deferred[Stats]]:
        clock = Clock()
        target = ScriptedTarget()
        profile = RateProfile.fixed(rate)
        run = LoadRun(
            target,
            source,
            clock,
            offsets=arrival_offsets(profile),
            profile=profile,
            requests=requests,
            duration=None,
            max_in_flight=kw.pop("max_in_flight", 100),
            **kw,
        )
        finished = run.start()
        return clock, target, run, finished

    def test_each_request_ends_once_with_its_figures(self) -> None:
        """Sent on schedule; the answer's end is its latency; finished when all ended."""
        clock, target, _, finished = self.start(requests=2)
        clock.pump([0.0, 0.1])
        self.assertEqual(len(target.pending), 2)
        clock.advance(0.05)
        first = target.answer(0, 200)
        first.sink.chunk(b'{"choices": []}')
        first.sink.end(None)
        self.assertFalse(finished.called)
        clock.advance(0.5)
        target.answer(1, 200).sink.end(None)
        stats = self.successResultOf(finished)
        samples = stats.samples
        self.assertEqual([s.cause for s in samples], [None, None])
        self.assertAlmostEqual(samples[0].latency or 0, 0.15)
        self.assertAlmostEqual(samples[1].latency or 0, 0.55)
        self.assertEqual(samples[0].worker, WORKER)
        self.assertIsNone(samples[0].ttft)  # not streamed

    def test_streamed_answer_times_its_tokens(self) -> None:
        """The first event with text is the first token; the role event is not."""
        clock, target, _, finished = self.start(requests=1, source=stream_spec)
        clock.advance(0)
        headers = {b"content-type": [b"text/event-stream"]}
        answer = target.answer(0, 200, headers)
        answer.sink.chunk(b'data: {"choices": [{"delta": {"role": "assistant"}}]}\n\n')
        clock.advance(0.3)
        answer.sink.chunk(b'data: {"choices": [{"delta": {"content": "Hi"}}]}\n\ndata: {"cho')
        clock.advance(0.02)
        answer.sink.chunk(b'ices": [{"delta": {"content": " there"}}]}\n\n')
        clock.advance(0.03)
        answer.sink.chunk(b'data: {"choices": [{"text": "!"}]}\n\ndata: [DONE]\n\n')
        answer.sink.end(None)
        stats = self.successResultOf(finished)
        sample = stats.samples[0]
        self.assertAlmostEqual(sample.ttft or 0, 0.3)
        self.assertAlmostEqual(sample.gap_max or 0, 0.03)
        self.assertEqual(sorted(round(g, 6) for g in stats.gaps.values), [0.02, 0.03])
        self.assertEqual(sample.tokens, 3)
        self.assertAlmostEqual(sample.latency or 0, 0.35)

    def test_causes(self) -> None:
        """Each way a request fails is counted under its cause."""
        clock, target, _, finished = self.start(requests=8)
        clock.pump([0.1] * 8)
        target.fail(0, NoWorkerReady("no worker became ready"))
        target.fail(1, WorkerUnavailable("refused"), worker=WORKER)
        target.fail(2, WorkerTimeout("silent"))
        target.answer(3, 429, {b"retry-after": [b"7"]}).sink.end(None)
        target.answer(4, 404).sink.end(None)
        target.answer(5, 503).sink.end(None)
        target.answer(6, 200).sink.end(WorkerUnavailable("cut short"))
        target.fail(7, UnsupportedBody("not JSON"))
        samples = self.successResultOf(finished).samples
        self.assertEqual(
            [s.cause for s in samples],
            ["route", "connection", "timeout", "429", "worker_4xx", "worker_5xx",
             "connection", "client"],
        )  # fmt: skip
        self.assertEqual(samples[3].retry_after, "7")
        self.assertEqual(samples[1].worker, WORKER)
        self.assertEqual(samples[1].attempts, 2)
        self.assertEqual(samples[0].error, "no worker became ready")

    def test_max_in_flight_skips_arrivals(self) -> None:
        """An arrival that finds the cap reached is skipped, not queued."""
        clock, target, run, finished = self.start(requests=5, max_in_flight=2)
        clock.pump([0.1] * 5)
        self.assertEqual(len(target.pending), 2)
        self.assertEqual(run.stats.skipped, 3)
        target.answer(0, 200).sink.end(None)
        target.answer(1, 200).sink.end(None)
        summary = self.successResultOf(finished).summary(run.elapsed)
        self.assertEqual(summary["counts"]["skipped_max_in_flight"], 3)
        self.assertEqual(summary["counts"]["arrivals"], 5)

    def test_timeout(self) -> None:
        """A request past --timeout ends as a timeout; its answer is dropped."""
        clock, target, _, finished = self.start(requests=2, timeout=5.0)
        clock.advance(0)
        answer = target.answer(0, 200)
        clock.advance(0.1)  # the second is sent, never answered
        clock.advance(5.0)
        samples = self.successResultOf(finished).samples
        self.assertEqual([s.cause for s in samples], ["timeout", "timeout"])
        self.assertTrue(answer.discarded)
        self.assertEqual(target.cancelled, [1])
        answer.sink.end(None)  # late: changes nothing
        self.assertEqual(samples[0].cause, "timeout")

    def test_first_stop_waits_for_the_requests_in_flight(self) -> None:
        """Ctrl-C once: nothing more is sent, the report waits for what is in flight."""
        clock, target, run, finished = self.start(requests=100)
        clock.pump([0.1] * 3)
        run.stop()
        clock.advance(10)
        self.assertEqual(len(target.pending), 4)
        self.assertFalse(finished.called)
        for i in range(4):
            target.answer(i, 200).sink.end(None)
        stats = self.successResultOf(finished)
        self.assertEqual(len(stats.samples), 4)
        self.assertTrue(all(s.ok for s in stats.samples))

    def test_second_stop_abandons(self) -> None:
        """Ctrl-C twice: the requests in flight are abandoned and counted so."""
        clock, target, run, finished = self.start(requests=100)
        clock.pump([0.1] * 2)
        streaming = target.answer(0, 200)
        run.stop()
        run.stop()
        stats = self.successResultOf(finished)
        self.assertEqual([s.cause for s in stats.samples], ["abandoned"] * 3)
        self.assertTrue(streaming.discarded)
        self.assertEqual(target.cancelled, [1, 2])

    def test_a_failing_payload_function_fails_its_requests(self) -> None:
        def broken(i: int) -> RequestSpec:
            raise KeyError("prompt")

        clock, target, _, finished = self.start(requests=2, source=broken)
        clock.pump([0.1] * 2)
        stats = self.successResultOf(finished)
        self.assertEqual([s.cause for s in stats.samples], ["client", "client"])
        self.assertEqual(target.pending, [])
        self.flushLoggedErrors()


class CauseTests(TestCase):
    def test_statuses(self) -> None:
        self.assertEqual(
            [cause_of_status(c) for c in (200, 204, 301, 400, 429, 500, 503)],
            [None, None, None, "worker_4xx", "429", "worker_5xx", "worker_5xx"],
        )

    def test_errors(self) -> None:
        self.assertEqual(cause_of_error(DeadlineExceeded("late")), "timeout")
        self.assertEqual(cause_of_error(NoWorkerReady("none")), "route")
        self.assertEqual(cause_of_error(WorkerUnavailable("gone")), "connection")
