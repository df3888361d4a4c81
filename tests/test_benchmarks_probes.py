"""
The built-in probes against the fakes of :mod:`vespa.testing.model_servers`.

Every test runs on a Clock that moves only when nothing else can, so a probe
measures the fake's configured speed exactly (the tests assert equality, to
float rounding) and as fast as the code runs, whatever the machine's load.
Most run in memory (:class:`InMemoryBackend`); :class:`LoopbackTests` run each
probe over real loopback sockets, and check that connections are reused.
"""

from __future__ import annotations

import json
from typing import Any

import treq.client
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from tests.logcapture import capture_log
from tests.support import listen, until
from vespa.benchmarks import BenchmarkError, comfyui, ollama, openai_chat, openai_completions, tgi
from vespa.benchmarks.session import BackendResponse, BackendSession
from vespa.benchmarks.settings import (
    ComfyUISettings,
    OllamaSettings,
    OpenAISettings,
    TGISettings,
)
from vespa.testing.model_servers import (
    ComfyUIServer,
    FakeModelServer,
    InMemoryBackend,
    OllamaServer,
    OpenAIServer,
    TGIServer,
    fake_site,
)


def run(server: FakeModelServer, probe: Any, settings: Any) -> float:
    """Run ``probe`` with ``settings`` against ``server`` in memory."""
    backend = InMemoryBackend(server)
    result: float = backend.run(lambda session: probe(backend.URL, session, settings))
    return result


def failure_of(server: FakeModelServer, probe: Any, settings: Any) -> str:
    """The message of the BenchmarkError the probe raises."""
    backend = InMemoryBackend(server)
    try:
        backend.run(lambda session: probe(backend.URL, session, settings))
    except BenchmarkError as e:
        return str(e)
    raise AssertionError("the probe did not fail")


class OpenAIProbeTests(SynchronousTestCase):
    """``openai_chat`` and ``openai_completions`` count tokens, streamed or not."""

    def test_chat_streamed_with_usage(self) -> None:
        """
        Four requests at once on a server running four: 4 x 100 tokens/s. The
        model was discovered from /v1/models.
        """
        server = OpenAIServer(Clock(), tokens_per_second=100.0, saturate_at=4)
        settings = OpenAISettings(concurrency=4, runs=2, max_tokens=50)
        self.assertAlmostEqual(run(server, openai_chat.benchmark, settings), 400.0)
        last = server.bodies[-1]
        self.assertEqual(last["model"], "fake-model")
        self.assertEqual(last["stream_options"], {"include_usage": True})
        self.assertEqual(server.requests, 1 + 2 * (1 + 2 + 4))
        self.assertEqual(server.max_active, 4)

    def test_saturation_caps_throughput(self) -> None:
        """Eight requests on a server running two at a time: 2 x tps."""
        server = OpenAIServer(Clock(), tokens_per_second=100.0, saturate_at=2)
        settings = OpenAISettings(concurrency=8, runs=2, max_tokens=50)
        self.assertAlmostEqual(run(server, openai_chat.benchmark, settings), 200.0)

    def test_cut_short_streams_are_not_a_measurement(self) -> None:
        """
        A server that runs one request and cuts its stream short when another
        arrives (llama-cpp-python's default ``--interrupt_requests``): the
        ramp stops at 2 and the capacity is the one-at-a-time figure, with
        the log saying why, not a run of seven failed streams.
        """
        server = OpenAIServer(
            Clock(), tokens_per_second=100.0, saturate_at=1, interrupt_streams=True
        )
        settings = OpenAISettings(concurrency=8, runs=2, max_tokens=50)
        with capture_log() as log:
            self.assertAlmostEqual(run(server, openai_chat.benchmark, settings), 100.0)
        self.assertEqual(server.requests, 1 + 2 * 1 + 2)
        self.assertIn(
            "openai_chat: at concurrency 2, 1 of 2 requests failed "
            "(POST /v1/chat/completions: the stream was cut short after 1 tokens "
            "(it ended with no finish_reason)): measured at 1",
            log.text,
        )

    def test_no_level_sustained_is_an_error_and_nothing_else(self) -> None:
        """Every stream cut short (a server that always interrupts): an error."""
        server = OpenAIServer(
            Clock(), tokens_per_second=100.0, max_output_tokens=50, failure=None
        )
        server.finished = lambda job: b"data: [DONE]\n\n"  # type: ignore[method-assign]
        settings = OpenAISettings(concurrency=4, runs=2, max_tokens=50)
        message = failure_of(server, openai_chat.benchmark, settings)
        self.assertIn("the warm-up request failed", message)
        self.assertIn("the stream was cut short after 50 tokens", message)

    def test_latency_before_the_first_token(self) -> None:
        """Per request: 0.5 s to the first token, then 50 tokens at 100/s."""
        server = OpenAIServer(Clock(), tokens_per_second=100.0, latency=0.5, saturate_at=4)
        settings = OpenAISettings(concurrency=4, runs=2, max_tokens=50)
        self.assertAlmostEqual(run(server, openai_chat.benchmark, settings), 4 * 50 / 1.0)

    def test_stream_without_usage_counts_deltas(self) -> None:
        """A server that never sends usage: one token per content delta."""
        server = OpenAIServer(Clock(), tokens_per_second=100.0, usage=False, saturate_at=4)
        settings = OpenAISettings(concurrency=4, runs=2, max_tokens=50)
        self.assertAlmostEqual(run(server, openai_completions.benchmark, settings), 400.0)

    def test_non_streamed_usage(self) -> None:
        """``stream=False``: ``usage.completion_tokens`` of each answer."""
        server = OpenAIServer(Clock(), tokens_per_second=100.0, saturate_at=4)
        settings = OpenAISettings(concurrency=4, runs=2, max_tokens=50, stream=False)
        self.assertAlmostEqual(run(server, openai_chat.benchmark, settings), 400.0)
        self.assertNotIn("stream", server.bodies[-1])

    def test_counts_tokens_not_max_tokens(self) -> None:
        """A model that stops after 20 tokens is credited with 20, not 50."""
        for stream, usage in ((True, True), (True, False), (False, True)):
            server = OpenAIServer(
                Clock(), tokens_per_second=100.0, saturate_at=4, max_output_tokens=20, usage=usage
            )
            settings = OpenAISettings(concurrency=4, runs=1, max_tokens=50, stream=stream)
            self.assertAlmostEqual(run(server, openai_chat.benchmark, settings), 400.0)

    def test_given_model_is_used_without_discovery(self) -> None:
        """With a model name set, /v1/models is not needed (a TGI fake has none)."""
        server = OpenAIServer(Clock(), model="my-llm", tokens_per_second=100.0)
        settings = OpenAISettings(model="my-llm", concurrency=1, runs=1, max_tokens=10)
        self.assertAlmostEqual(run(server, openai_chat.benchmark, settings), 100.0)
        wrong = OpenAIServer(Clock(), model="my-llm")
        message = failure_of(wrong, openai_chat.benchmark, OpenAISettings(model="other"))
        self.assertIn("answered 404", message)
        self.assertIn("`other` does not exist", message)

    def test_discovery_failure_says_what_to_set(self) -> None:
        """No /v1/models: the error names VESPA_BENCHMARK_MODEL."""
        message = failure_of(TGIServer(Clock()), openai_chat.benchmark, OpenAISettings())
        self.assertIn("GET /v1/models answered 404", message)
        self.assertIn("set VESPA_BENCHMARK_MODEL (or MODEL_NAME)", message)

    def test_prompts_differ_between_requests(self) -> None:
        """No two requests share a prompt (prefix caches would answer them)."""
        server = OpenAIServer(Clock(), tokens_per_second=1000.0)
        run(server, openai_completions.benchmark, OpenAISettings(concurrency=4, runs=2))
        prompts = [body["prompt"] for body in server.bodies]
        self.assertEqual(len(set(prompts)), len(prompts))
        self.assertEqual(len(prompts[1].split()), len(prompts[0].split()))

    def test_error(self) -> None:
        """A 500: the reason says which request and what the server said."""
        message = failure_of(
            OpenAIServer(Clock(), failure="error"), openai_chat.benchmark, OpenAISettings()
        )
        self.assertIn("the warm-up request failed: POST /v1/chat/completions answered 500", message)
        self.assertIn("the fake server failed", message)

    def test_hang(self) -> None:
        """A server that never answers: a timeout, and the connection closed."""
        server = OpenAIServer(Clock(), failure="hang")
        message = failure_of(server, openai_chat.benchmark, OpenAISettings(timeout=30))
        self.assertIn("POST /v1/chat/completions: no complete answer within 30 s", message)
        self.assertEqual(server.clock.seconds(), 30.0)
        self.assertEqual(server.cancelled, 1)

    def test_hang_in_the_middle_of_a_stream(self) -> None:
        """
        Headers, then nothing: the body read times out, and the connection is
        closed (the fake sees its request cancelled, its slot freed).
        """
        server = OpenAIServer(Clock(), latency=1000.0)
        message = failure_of(server, openai_chat.benchmark, OpenAISettings(timeout=30))
        self.assertIn("no complete answer within 30 s", message)
        self.assertEqual((server.cancelled, server.active), (1, 0))

    def test_wrong_shape(self) -> None:
        """200s with nothing to count: an error naming what is missing."""
        server = OpenAIServer(Clock(), failure="wrong_shape")
        message = failure_of(server, openai_chat.benchmark, OpenAISettings())
        self.assertIn("the stream carried no tokens", message)
        server = OpenAIServer(Clock(), failure="wrong_shape")
        message = failure_of(server, openai_chat.benchmark, OpenAISettings(stream=False))
        self.assertIn("no usage.completion_tokens", message)
        self.assertIn("VESPA_BENCHMARK_STREAM=true", message)

    def test_non_streamed_without_usage_is_an_error(self) -> None:
        """Not streaming and no usage: nothing to count, and the way out named."""
        server = OpenAIServer(Clock(), usage=False)
        message = failure_of(server, openai_chat.benchmark, OpenAISettings(stream=False))
        self.assertIn("VESPA_BENCHMARK_STREAM=true counts streamed tokens", message)


class TGIProbeTests(SynchronousTestCase):
    """``tgi`` counts ``details.generated_tokens``."""

    def test_measures_configured_throughput(self) -> None:
        """8 requests, 4 at a time, 0.1 s latency: 8 x 50 tokens in 2 x 0.6 s."""
        server = TGIServer(Clock(), tokens_per_second=100.0, latency=0.1, saturate_at=4)
        settings = TGISettings(concurrency=8, runs=2, max_tokens=50)
        self.assertAlmostEqual(run(server, tgi.benchmark, settings), 8 * 50 / 1.2)
        parameters = server.bodies[-1]["parameters"]
        self.assertEqual((parameters["max_new_tokens"], parameters["details"]), (50, True))

    def test_counts_generated_tokens(self) -> None:
        """A model stopping at 10 tokens is credited with 10."""
        server = TGIServer(Clock(), tokens_per_second=100.0, max_output_tokens=10)
        settings = TGISettings(concurrency=2, runs=1, max_tokens=50)
        self.assertAlmostEqual(run(server, tgi.benchmark, settings), 200.0)

    def test_error(self) -> None:
        """A 500."""
        message = failure_of(TGIServer(Clock(), failure="error"), tgi.benchmark, TGISettings())
        self.assertIn("POST /generate answered 500", message)

    def test_hang(self) -> None:
        """A timeout."""
        server = TGIServer(Clock(), failure="hang")
        message = failure_of(server, tgi.benchmark, TGISettings(timeout=5))
        self.assertIn("POST /generate: no complete answer within 5 s", message)

    def test_wrong_shape(self) -> None:
        """No ``generated_text``."""
        server = TGIServer(Clock(), failure="wrong_shape")
        message = failure_of(server, tgi.benchmark, TGISettings())
        self.assertIn("POST /generate: the answer has no generated_text", message)


class OllamaProbeTests(SynchronousTestCase):
    """``ollama`` counts ``eval_count``."""

    def test_measures_configured_throughput(self) -> None:
        """Ollama running 2 at a time (OLLAMA_NUM_PARALLEL): 2 x tps."""
        server = OllamaServer(Clock(), tokens_per_second=40.0, saturate_at=2)
        settings = OllamaSettings(concurrency=4, runs=2, max_tokens=20)
        self.assertAlmostEqual(run(server, ollama.benchmark, settings), 80.0)
        body = server.bodies[-1]
        self.assertEqual((body["model"], body["stream"]), ("fake:latest", False))
        self.assertEqual(body["options"]["num_predict"], 20)

    def test_counts_eval_count(self) -> None:
        """A model stopping early is credited with what it generated."""
        server = OllamaServer(Clock(), tokens_per_second=40.0, max_output_tokens=5)
        settings = OllamaSettings(concurrency=1, runs=1, max_tokens=20)
        self.assertAlmostEqual(run(server, ollama.benchmark, settings), 40.0)

    def test_unknown_model(self) -> None:
        """A model Ollama has not pulled: its 404 is the reason."""
        server = OllamaServer(Clock())
        message = failure_of(server, ollama.benchmark, OllamaSettings(model="llama9"))
        self.assertIn("answered 404", message)
        self.assertIn("model 'llama9' not found", message)

    def test_discovery_failure(self) -> None:
        """No /api/tags: the error names VESPA_BENCHMARK_MODEL."""
        message = failure_of(OpenAIServer(Clock()), ollama.benchmark, OllamaSettings())
        self.assertIn("GET /api/tags answered 404", message)
        self.assertIn("set VESPA_BENCHMARK_MODEL", message)

    def test_error(self) -> None:
        """A 500."""
        server = OllamaServer(Clock(), failure="error")
        self.assertIn(
            "POST /api/generate answered 500",
            failure_of(server, ollama.benchmark, OllamaSettings()),
        )

    def test_hang(self) -> None:
        """A timeout."""
        server = OllamaServer(Clock(), failure="hang")
        message = failure_of(server, ollama.benchmark, OllamaSettings(timeout=7))
        self.assertIn("POST /api/generate: no complete answer within 7 s", message)

    def test_wrong_shape(self) -> None:
        """No ``eval_count``."""
        server = OllamaServer(Clock(), failure="wrong_shape")
        message = failure_of(server, ollama.benchmark, OllamaSettings())
        self.assertIn("POST /api/generate: the answer has no eval_count", message)


class ComfyUIProbeTests(SynchronousTestCase):
    """``comfyui`` counts 100 units per completed job."""

    def test_measures_configured_throughput(self) -> None:
        """One 2 s job at a time: 100 units / 2 s."""
        server = ComfyUIServer(Clock(), seconds_per_job=2.0)
        self.assertAlmostEqual(run(server, comfyui.benchmark, ComfyUISettings()), 50.0)
        self.assertEqual(server.requests, 1 + 3)
        job = server.bodies[-1]["input"]
        self.assertEqual(job["modifier"], "Text2Image")
        self.assertEqual(
            {k: job["modifications"][k] for k in ("width", "height", "steps")},
            {"width": 512, "height": 512, "steps": 20},
        )

    def test_parallel_jobs(self) -> None:
        """A wrapper driving two ComfyUI processes, benchmarked two at a time."""
        server = ComfyUIServer(Clock(), seconds_per_job=2.0, saturate_at=2, latency=0.5)
        settings = ComfyUISettings(concurrency=2, runs=2)
        self.assertAlmostEqual(run(server, comfyui.benchmark, settings), 200 / 2.5)

    def test_every_job_has_a_new_seed(self) -> None:
        """ComfyUI would answer a repeated job from its cache."""
        server = ComfyUIServer(Clock(), seconds_per_job=1.0)
        run(server, comfyui.benchmark, ComfyUISettings(steps=4, width=768, height=512))
        seeds = [body["input"]["modifications"]["seed"] for body in server.bodies]
        ids = [body["input"]["request_id"] for body in server.bodies]
        self.assertEqual(len(set(seeds)), len(seeds))
        self.assertEqual(len(set(ids)), len(ids))
        self.assertEqual(server.bodies[-1]["input"]["modifications"]["width"], 768)

    def test_workflow_file(self) -> None:
        """
        A workflow file is sent as ``workflow_json``, each sampler seed
        replaced (links to other nodes left alone).
        """
        workflow = {
            "3": {"class_type": "KSampler", "inputs": {"seed": 1, "steps": 30, "model": ["4", 0]}},
            "9": {"class_type": "RandomNoise", "inputs": {"noise_seed": 5}},
            "7": {"class_type": "Other", "inputs": {"seed": ["3", 0]}},
        }
        path = self.mktemp()
        with open(path, "w") as f:
            json.dump(workflow, f)
        server = ComfyUIServer(Clock(), seconds_per_job=4.0)
        self.assertAlmostEqual(
            run(server, comfyui.benchmark, ComfyUISettings(workflow_file=path)), 25.0
        )
        sent = [body["input"]["workflow_json"] for body in server.bodies]
        seeds = [w["3"]["inputs"]["seed"] for w in sent]
        self.assertEqual(len(set(seeds)), len(sent))
        self.assertEqual([w["9"]["inputs"]["noise_seed"] for w in sent], seeds)
        self.assertEqual(sent[0]["7"]["inputs"]["seed"], ["3", 0])
        self.assertEqual(sent[0]["3"]["inputs"]["steps"], 30)

    def test_payload_file(self) -> None:
        """A file holding a whole ``{"input": ...}`` payload is used as it is."""
        payload = {"input": {"modifier": "Text2Image", "modifications": {"prompt": "a cat"}}}
        path = self.mktemp()
        with open(path, "w") as f:
            json.dump(payload, f)
        server = ComfyUIServer(Clock(), seconds_per_job=1.0)
        self.assertAlmostEqual(
            run(server, comfyui.benchmark, ComfyUISettings(workflow_file=path)), 100.0
        )
        sent = server.bodies[-1]["input"]
        self.assertEqual(sent["modifications"]["prompt"], "a cat")
        self.assertIn("seed", sent["modifications"])

    def test_unusable_workflow_file(self) -> None:
        """A missing or broken file: an error naming the variable."""
        path = self.mktemp()
        for content, expected in ((None, "cannot read it"), ("{", "not JSON"), ("[]", "expected")):
            if content is not None:
                with open(path, "w") as f:
                    f.write(content)
            server = ComfyUIServer(Clock())
            message = failure_of(server, comfyui.benchmark, ComfyUISettings(workflow_file=path))
            self.assertIn("VESPA_COMFYUI_BENCHMARK_FILE=", message)
            self.assertIn(expected, message)
            self.assertEqual(server.requests, 0)

    def test_error(self) -> None:
        """A 500."""
        server = ComfyUIServer(Clock(), failure="error")
        message = failure_of(server, comfyui.benchmark, ComfyUISettings())
        self.assertIn("POST /generate/sync answered 500", message)

    def test_hang(self) -> None:
        """A timeout (600 s by default, as the original)."""
        server = ComfyUIServer(Clock(), failure="hang")
        message = failure_of(server, comfyui.benchmark, ComfyUISettings())
        self.assertIn("POST /generate/sync: no complete answer within 600 s", message)

    def test_wrong_shape(self) -> None:
        """No job status."""
        server = ComfyUIServer(Clock(), failure="wrong_shape")
        message = failure_of(server, comfyui.benchmark, ComfyUISettings())
        self.assertIn("the answer has no job status", message)

    def test_failed_job(self) -> None:
        """The wrapper's 200 for a failed job is a failure, with its message."""
        server = ComfyUIServer(Clock(), failure="job_failed")
        message = failure_of(server, comfyui.benchmark, ComfyUISettings())
        self.assertIn("the job ended 'failed': the fake job failed", message)


class CountingSession(BackendSession):
    """
    A session that counts the requests it sent and the answers it has
    finished reading (or given up on), so :func:`over_loopback` can tell
    when nothing is in flight.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sent = 0
        self.done = 0

    def _done(self, result: Any) -> Any:
        self.done += 1
        return result

    def request(self, method: str, path: str, **kwargs: Any) -> Deferred[BackendResponse]:
        self.sent += 1

        def counted(response: BackendResponse) -> BackendResponse:
            collect = response.collect

            def collect_counted(collector: Any) -> Deferred[None]:
                return collect(collector).addBoth(self._done)

            response.collect = collect_counted  # type: ignore[method-assign]
            return response

        return super().request(method, path, **kwargs).addCallbacks(counted, self._done)


async def over_loopback(
    testcase: TestCase, server: FakeModelServer, probe: Any, settings: Any
) -> float:
    """
    Run ``probe`` against ``server`` over real loopback sockets, every timer
    (the fake's pacing, the probe's clock and timeouts) on one Clock.

    The clock is advanced to the next timer only when every request sent has
    reached the server and every answer the server ended has been read: then
    nothing but time can make progress, whatever the machine's load, and the
    measurement is exact.
    """
    clock = server.clock
    assert isinstance(clock, Clock)
    port = listen(testcase, fake_site(server, reactor))
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = 32
    testcase.addCleanup(pool.closeCachedConnections)
    session = CountingSession(
        treq.client.HTTPClient(Agent(reactor, pool=pool)), f"http://127.0.0.1:{port}", clock
    )
    d = Deferred.fromCoroutine(probe(session.base_url, session, settings))

    def quiet() -> bool:
        return session.sent == server.http_requests and session.done == server.http_finished

    deadline = reactor.seconds() + 10
    while not d.called:
        # Let the reactor move bytes until the quiet condition holds.
        while not (d.called or quiet()):
            if reactor.seconds() > deadline:
                raise AssertionError("the loopback exchange never went quiet")
            await deferLater(reactor, 0, lambda: None)
        if d.called:
            break
        calls = clock.getDelayedCalls()
        if not calls:
            raise AssertionError("the benchmark waits, and nothing is scheduled")
        clock.advance(max(0.0, min(c.getTime() for c in calls) - clock.seconds()))
    result: float = await d
    return result


class LoopbackTests(TestCase):
    """
    Each probe over real loopback sockets (real HTTP, a real connection pool),
    with the fakes and the probes' clock on a Clock driven by
    :func:`over_loopback`: the figure is exact, and connections are reused.
    """

    timeout = 20

    async def check(
        self, server: FakeModelServer, probe: Any, settings: Any, configured: float
    ) -> None:
        measured = await over_loopback(self, server, probe, settings)
        self.assertAlmostEqual(measured, configured)
        # Warm-up and runs share `concurrency` connections, not one each.
        self.assertLessEqual(server.connections, settings.concurrency)

    async def test_openai_chat_streamed(self) -> None:
        """4 x 100 tokens/s, streamed token by token."""
        server = OpenAIServer(Clock(), tokens_per_second=100.0, saturate_at=4)
        settings = OpenAISettings(concurrency=4, runs=3, max_tokens=20)
        await self.check(server, openai_chat.benchmark, settings, 400.0)

    async def test_openai_completions(self) -> None:
        """4 x 100 tokens/s, not streamed, model named."""
        server = OpenAIServer(Clock(), tokens_per_second=100.0, saturate_at=4)
        settings = OpenAISettings(model="fake-model", concurrency=4, runs=3, stream=False)
        await self.check(server, openai_completions.benchmark, settings, 400.0)

    async def test_tgi(self) -> None:
        """Eight requests on four slots, 50 ms latency."""
        server = TGIServer(Clock(), tokens_per_second=100.0, latency=0.05, saturate_at=4)
        settings = TGISettings(concurrency=8, runs=2, max_tokens=100)
        await self.check(server, tgi.benchmark, settings, 8 * 100 / 2.1)

    async def test_ollama(self) -> None:
        """Two slots: 2 x 50 tokens/s."""
        server = OllamaServer(Clock(), tokens_per_second=50.0, saturate_at=2)
        settings = OllamaSettings(concurrency=2, runs=3, max_tokens=64)
        await self.check(server, ollama.benchmark, settings, 100.0)

    async def test_comfyui(self) -> None:
        """7 s jobs, one at a time."""
        server = ComfyUIServer(Clock(), seconds_per_job=7.0)
        await self.check(server, comfyui.benchmark, ComfyUISettings(), 100 / 7.0)

    async def test_hang_times_out_and_closes(self) -> None:
        """A hanging backend: the timeout's error, and the real connection closed."""
        server = TGIServer(Clock(), failure="hang")
        with self.assertRaises(BenchmarkError) as caught:
            await over_loopback(self, server, tgi.benchmark, TGISettings(timeout=30))
        self.assertIn("POST /generate: no complete answer within 30 s", str(caught.exception))
        await until(lambda: server.cancelled == 1)
