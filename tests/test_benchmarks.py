"""
Tests for :mod:`vespa.benchmarks`: resolving ``--benchmark``, running a
benchmark of any kind, the settings, the shared run loop, the session, and
the startup chain's rule that only a measured value is ever cached.
"""

from __future__ import annotations

import os
import sys
from dataclasses import replace
from typing import Any

import treq
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests.logcapture import capture_log
from vespa.benchmarks import (
    BUILT_IN,
    BenchmarkError,
    Request,
    RunSettings,
    SettingsError,
    comfyui,
    load_benchmark,
    measure,
    measure_runs,
    ollama,
    openai_chat,
    openai_completions,
    resolve_benchmark,
    run_benchmark,
    tgi,
)
from vespa.benchmarks.__main__ import main as cli
from vespa.benchmarks.openai_api import StreamCounter
from vespa.benchmarks.runner import concurrency_levels
from vespa.benchmarks.session import BackendSession
from vespa.benchmarks.settings import ComfyUISettings, OpenAISettings, TGISettings
from vespa.config import Origin, WorkerConfig
from vespa.testing.model_servers import InMemoryBackend, OpenAIServer, TGIServer
from vespa.worker.health import HealthChecker, HealthRoute
from vespa.worker.startup import BenchmarkCache, Startup
from vespa.worker.state import Phase, WorkerState

# -- benchmarks of every kind, for resolution and run_benchmark ------------------


def plain_benchmark(backend_url: str, session: Any) -> float:
    """Returns a plain number."""
    return 12.5


def deferred_benchmark(backend_url: str, session: Any) -> Deferred[float]:
    """Returns a Deferred."""
    return succeed(25.0)


async def coroutine_benchmark(backend_url: str, session: BackendSession) -> float:
    """Awaits the session, as a user's ``async def`` does."""
    response = await session.get("/health")
    body = await response.json()
    return 50.0 if response.code == 200 and body == {"status": "ok"} else 0.0


def no_arguments() -> float:
    """Cannot be called as a benchmark."""
    return 1.0


NOT_A_FUNCTION = 3


class ResolveTests(SynchronousTestCase):
    """``--benchmark`` names a built-in or ``module:function``, or says what to fix."""

    def test_built_in_names(self) -> None:
        """Each built-in name finds its module's ``benchmark``."""
        modules = {
            "openai_chat": openai_chat,
            "openai_completions": openai_completions,
            "tgi": tgi,
            "ollama": ollama,
            "comfyui": comfyui,
        }
        self.assertEqual(set(BUILT_IN), set(modules))
        for name, module in modules.items():
            self.assertIs(resolve_benchmark(name), module.benchmark)

    def test_seed_spelling(self) -> None:
        """The original documents' ``benchmarks.<name>:benchmark`` finds the built-in."""
        self.assertIs(resolve_benchmark("benchmarks.openai_chat:benchmark"), openai_chat.benchmark)
        self.assertIs(resolve_benchmark("benchmarks.tgi:benchmark"), tgi.benchmark)
        self.assertIs(resolve_benchmark(" comfyui:benchmark "), comfyui.benchmark)
        self.assertIs(resolve_benchmark("vespa.benchmarks.ollama:benchmark"), ollama.benchmark)

    def test_module_function(self) -> None:
        """Any importable ``module:function``."""
        self.assertIs(resolve_benchmark("tests.test_benchmarks:plain_benchmark"), plain_benchmark)

    def assert_error(self, spec: str, *parts: str) -> None:
        with self.assertRaises(BenchmarkError) as caught:
            resolve_benchmark(spec)
        for part in parts:
            self.assertIn(part, str(caught.exception))

    def test_unknown_name(self) -> None:
        """A bare name that is no built-in: the built-ins listed, the form to use."""
        self.assert_error(
            "openaichat", "not a built-in (openai_chat, openai_completions, tgi", "module:function"
        )

    def test_no_such_module(self) -> None:
        """The module is not on the path: says where it must be."""
        self.assert_error(
            "nosuchmodule_x1:benchmark",
            "cannot import 'nosuchmodule_x1': there is no such module",
            "PYTHONPATH",
            os.getcwd(),
        )

    def scratch_module(self, name: str, source: str) -> None:
        directory = self.mktemp()
        os.makedirs(directory)
        with open(os.path.join(directory, name + ".py"), "w") as f:
            f.write(source)
        sys.path.insert(0, directory)
        self.addCleanup(sys.path.remove, directory)
        self.addCleanup(sys.modules.pop, name, None)

    def test_missing_dependency(self) -> None:
        """The module imports something not installed: says to install it."""
        self.scratch_module("bench_missing_dep", "import not_installed_pkg_x2\n")
        self.assert_error(
            "bench_missing_dep:benchmark", "imports 'not_installed_pkg_x2'", "not installed"
        )

    def test_broken_module(self) -> None:
        """The module fails to import: the error is shown."""
        self.scratch_module("bench_broken", "def benchmark(:\n")
        self.assert_error("bench_broken:benchmark", "importing bench_broken failed: SyntaxError")

    def test_no_such_function(self) -> None:
        """The module lacks the function: its functions are listed."""
        self.assert_error(
            "tests.test_benchmarks:nothing_here",
            "has no 'nothing_here'",
            "coroutine_benchmark",
            "plain_benchmark",
        )

    def test_not_callable(self) -> None:
        """A value that is no function."""
        self.assert_error("tests.test_benchmarks:NOT_A_FUNCTION", "is a int, not a function")

    def test_wrong_signature(self) -> None:
        """A function that cannot take (backend_url, session)."""
        self.assert_error(
            "tests.test_benchmarks:no_arguments",
            "no_arguments() cannot be called as benchmark(backend_url, session)",
        )

    def test_load_checks_settings_now(self) -> None:
        """
        ``load_benchmark`` also reads a built-in's settings, so a bad variable
        stops startup instead of failing every benchmark later.
        """
        self.assertIs(load_benchmark("tgi", {}), tgi.benchmark)
        with self.assertRaises(SettingsError) as caught:
            load_benchmark("benchmarks.tgi:benchmark", {"VESPA_BENCHMARK_RUNS": "many"})
        self.assertIn("VESPA_BENCHMARK_RUNS='many': expected a whole number", str(caught.exception))
        with self.assertRaises(SettingsError) as caught:
            load_benchmark("comfyui", {"PYWORKER_COMFYUI_BENCHMARK_FILE": "/nonexistent/x.json"})
        self.assertIn("VESPA_COMFYUI_BENCHMARK_FILE='/nonexistent/x.json'", str(caught.exception))
        self.assertIs(
            load_benchmark("tests.test_benchmarks:plain_benchmark", {"VESPA_BENCHMARK_RUNS": "x"}),
            plain_benchmark,
        )


class RunBenchmarkTests(SynchronousTestCase):
    """A benchmark's result may be a value, a Deferred or a coroutine; only a
    positive finite number is a measurement."""

    def result(self, benchmark: Any) -> float:
        backend = InMemoryBackend(OpenAIServer(Clock()))
        value: float = backend.run(lambda session: run_benchmark(benchmark, backend.URL, session))
        return value

    def test_plain_deferred_coroutine(self) -> None:
        """All three kinds of result."""
        self.assertEqual(self.result(plain_benchmark), 12.5)
        self.assertEqual(self.result(deferred_benchmark), 25.0)
        self.assertEqual(self.result(coroutine_benchmark), 50.0)

    def test_not_a_measurement(self) -> None:
        """Zero, negative, infinite, NaN, text, None, bool: errors, never capacities."""
        for value in (0, -1.0, float("inf"), float("nan"), "fast", None, True, "0"):
            with self.assertRaises(BenchmarkError):
                self.result(lambda url, session, value=value: value)

    def test_string_number(self) -> None:
        """A number as text is accepted, as the cache file holds one."""
        self.assertEqual(self.result(lambda url, session: "7.5"), 7.5)

    def test_exception_propagates(self) -> None:
        """The benchmark's own exception reaches the startup chain as it is."""

        def broken(url: str, session: Any) -> float:
            raise ZeroDivisionError("oops")

        with self.assertRaises(ZeroDivisionError):
            self.result(broken)


class SettingsTests(SynchronousTestCase):
    """Settings from the environment, with aliases and errors naming the variable."""

    def test_defaults(self) -> None:
        """Nothing set: the documented defaults."""
        openai = OpenAISettings.from_env({})
        self.assertEqual(
            (openai.concurrency, openai.runs, openai.timeout, openai.model),
            (8, 3, 300.0, None),
        )
        self.assertEqual((openai.max_tokens, openai.prompt_words, openai.stream), (256, 250, True))
        image = ComfyUISettings.from_env({})
        self.assertEqual((image.concurrency, image.runs, image.timeout), (1, 3, 600.0))
        self.assertEqual((image.steps, image.width, image.height), (20, 512, 512))
        self.assertIsNone(image.workflow_file)

    def test_values(self) -> None:
        """Every variable, parsed to its type."""
        env = {
            "VESPA_BENCHMARK_MODEL": "llama",
            "VESPA_BENCHMARK_MAX_TOKENS": "64",
            "VESPA_BENCHMARK_CONCURRENCY": "16",
            "VESPA_BENCHMARK_RUNS": "5",
            "VESPA_BENCHMARK_PROMPT_WORDS": "10",
            "VESPA_BENCHMARK_TIMEOUT": "2.5",
            "VESPA_BENCHMARK_STREAM": "off",
        }
        self.assertEqual(
            OpenAISettings.from_env(env),
            OpenAISettings(
                model="llama",
                max_tokens=64,
                concurrency=16,
                runs=5,
                prompt_words=10,
                timeout=2.5,
                stream=False,
            ),
        )

    def test_aliases(self) -> None:
        """The original names work; Vespa's win; an empty value is unset."""
        self.assertEqual(OpenAISettings.from_env({"MODEL_NAME": "m1"}).model, "m1")
        both = {"MODEL_NAME": "m1", "VESPA_BENCHMARK_MODEL": "m2"}
        self.assertEqual(OpenAISettings.from_env(both).model, "m2")
        empty = {"VESPA_BENCHMARK_MODEL": " ", "MODEL_NAME": "m1"}
        self.assertEqual(OpenAISettings.from_env(empty).model, "m1")
        old = {
            "BENCHMARK_TEST_STEPS": "8",
            "BENCHMARK_TEST_WIDTH": "1024",
            "BENCHMARK_TEST_HEIGHT": "768",
            "PYWORKER_COMFYUI_BENCHMARK_FILE": "/w.json",
        }
        self.assertEqual(
            ComfyUISettings.from_env(old),
            ComfyUISettings(steps=8, width=1024, height=768, workflow_file="/w.json"),
        )

    def test_bad_values_name_the_variable(self) -> None:
        """Each bad value: the variable, the value, and what is expected."""
        cases = [
            (TGISettings, "VESPA_BENCHMARK_CONCURRENCY", "eight", "expected a whole number"),
            (
                TGISettings,
                "VESPA_BENCHMARK_CONCURRENCY",
                "0",
                "expected a whole number, at least 1",
            ),
            (TGISettings, "VESPA_BENCHMARK_TIMEOUT", "-1", "expected a positive number of seconds"),
            (TGISettings, "VESPA_BENCHMARK_TIMEOUT", "soon", "expected a number"),
            (OpenAISettings, "VESPA_BENCHMARK_STREAM", "maybe", "expected true or false"),
            (
                ComfyUISettings,
                "BENCHMARK_TEST_WIDTH",
                "500",
                "expected a size in pixels, a multiple of 8",
            ),
        ]
        for cls, name, value, expected in cases:
            with self.assertRaises(SettingsError) as caught:
                cls.from_env({name: value})
            self.assertIn(f"{name}={value!r}: {expected}", str(caught.exception))

    def test_bad_explicit_values_name_the_field(self) -> None:
        """Given in code, the field is named."""
        with self.assertRaises(SettingsError) as caught:
            OpenAISettings(max_tokens=0)
        self.assertIn("OpenAISettings.max_tokens=0: expected a whole number", str(caught.exception))

    def test_settings_error_is_a_benchmark_error(self) -> None:
        """The startup chain reports it like any benchmark failure."""
        self.assertTrue(issubclass(SettingsError, BenchmarkError))

    def test_probes_read_the_environment(self) -> None:
        """With no settings, a probe reads ``os.environ``."""
        self.patch(
            os,
            "environ",
            {"VESPA_BENCHMARK_RUNS": "1", "VESPA_BENCHMARK_CONCURRENCY": "2", "MODEL_NAME": "x"},
        )
        server = OpenAIServer(Clock(), model="x", tokens_per_second=10.0)
        backend = InMemoryBackend(server)
        backend.run(lambda session: openai_chat.benchmark(backend.URL, session))
        self.assertEqual(server.requests, 1 + 1 + 2)
        self.assertEqual(server.bodies[-1]["max_tokens"], 256)


def generate(i: int) -> Request:
    """Request ``i`` to a TGI fake: ten tokens."""
    return Request("/generate", {"inputs": f"prompt {i}", "parameters": {"max_new_tokens": 10}})


async def count_all(response: Any, request: Request) -> float:
    """Every answer counts 10 units."""
    await response.content()
    return 10.0


class RunLoopTests(SynchronousTestCase):
    """The shared loop: warm-up, timed runs, best run, failures."""

    def runs(self, server: TGIServer, **settings: Any) -> Any:
        backend = InMemoryBackend(server)
        return backend.run(
            lambda session: measure_runs(
                session, generate, count_all, RunSettings(**settings), name="test"
            )
        )

    def failure(self, server: TGIServer, **settings: Any) -> str:
        with self.assertRaises(BenchmarkError) as caught:
            self.runs(server, **settings)
        return str(caught.exception)

    def test_runs(self) -> None:
        """A warm-up, then the ramp: ``runs`` runs at 1, 2, 4 ... up to the
        concurrency, each timed."""
        self.assertEqual(concurrency_levels(8), [1, 2, 4, 8])
        self.assertEqual(concurrency_levels(6), [1, 2, 4, 6])
        self.assertEqual(concurrency_levels(1), [1])
        server = TGIServer(Clock(), tokens_per_second=10.0)
        results = self.runs(server, concurrency=4, runs=2)
        self.assertEqual(server.requests, 1 + 2 * (1 + 2 + 4))
        self.assertEqual([r.run for r in results], [1, 2, 3, 4, 5, 6])
        self.assertEqual([r.requests for r in results], [1, 1, 2, 2, 4, 4])
        self.assertTrue(all(r.complete and r.elapsed == 1.0 for r in results))
        self.assertEqual([r.throughput for r in results], [10.0, 10.0, 20.0, 20.0, 40.0, 40.0])

    def test_a_failed_request_ends_the_ramp(self) -> None:
        """
        At concurrency 2 one request fails: that run is no measurement, the
        ramp stops there, and the result comes from the level sustained,
        with the log saying why.
        """
        server = TGIServer(Clock(), tokens_per_second=10.0, failure=lambda n: n == 5 and "error")
        backend = InMemoryBackend(server)
        with capture_log() as events:
            measured = backend.run(
                lambda session: measure(
                    session, generate, count_all, RunSettings(concurrency=8, runs=3), name="test"
                )
            )
        self.assertEqual(measured, 10.0)
        self.assertEqual(server.requests, 1 + 3 + 2)
        self.assertIn(
            "test: at concurrency 2, 1 of 2 requests failed (POST /generate answered 500",
            events.text,
        )
        self.assertIn("): measured at 1", events.text)

    def test_partial_failure_is_not_a_measurement(self) -> None:
        """One of two fails: the run counts nothing, though the other completed."""
        server = TGIServer(Clock(), tokens_per_second=10.0, failure=lambda n: n == 3 and "error")
        results = self.runs(server, concurrency=2, runs=1)
        self.assertEqual([r.complete for r in results], [True, False])
        self.assertEqual((results[1].succeeded, results[1].requests), (1, 2))
        self.assertIn("POST /generate answered 500", results[1].failure)

    def test_no_success_is_an_error_not_a_number(self) -> None:
        """The warm-up works, the first run fails: an error with the reason."""
        server = TGIServer(Clock(), failure=lambda n: None if n == 1 else "error")
        message = self.failure(server, concurrency=2, runs=2)
        self.assertIn("test: no run completed: at concurrency 1, 1 of 1 requests failed", message)
        self.assertIn("the first failure: POST /generate answered 500", message)
        self.assertEqual(server.requests, 2)

    def test_warmup_failure_stops_at_once(self) -> None:
        """A backend that cannot answer fails in one request's time."""
        server = TGIServer(Clock(), failure="error")
        message = self.failure(server, concurrency=4, runs=5)
        self.assertIn("test: the warm-up request failed: POST /generate answered 500", message)
        self.assertEqual(server.requests, 1)

    def test_timeout_frees_the_backend(self) -> None:
        """A hanging request fails after the timeout and its connection is closed."""
        server = TGIServer(Clock(), failure=lambda n: "hang" if n == 3 else None)
        result = self.runs(server, concurrency=2, runs=1, timeout=4.0)[-1]
        self.assertEqual((result.requests, result.succeeded), (2, 1))
        self.assertAlmostEqual(result.elapsed, 4.0)
        self.assertIn("no complete answer within 4 s", result.failure)
        self.assertEqual(server.cancelled, 1)

    def test_no_time_is_no_measurement(self) -> None:
        """A clock that does not move cannot time anything: an error, not infinity."""
        server = TGIServer(Clock(), tokens_per_second=float("inf"))
        message = self.failure(server, concurrency=1, runs=2)
        self.assertIn("took no time on session.clock", message)

    def test_count_failures(self) -> None:
        """A count that raises or counts nothing fails the request with its reason."""

        def zero(response: Any, request: Request) -> float:
            return 0.0

        def broken(response: Any, request: Request) -> float:
            raise KeyError("usage")

        for count, expected in ((zero, "counted 0.0 units"), (broken, "KeyError: 'usage'")):
            backend = InMemoryBackend(TGIServer(Clock()))
            with self.assertRaises(BenchmarkError) as caught:
                backend.run(
                    lambda session, count=count: measure(
                        session, generate, count, RunSettings(), name="test"
                    )
                )
            self.assertIn(expected, str(caught.exception))

    def test_warmup_choices(self) -> None:
        """``warmup=False`` sends none; a Request sends that one."""
        server = TGIServer(Clock())
        backend = InMemoryBackend(server)
        settings = RunSettings(concurrency=1, runs=1)
        backend.run(lambda s: measure(s, generate, count_all, settings, warmup=False))
        self.assertEqual(server.requests, 1)
        special = Request("/generate", {"inputs": "warm", "parameters": {"max_new_tokens": 1}})
        backend.run(lambda s: measure(s, generate, count_all, settings, warmup=special))
        self.assertEqual([b["inputs"] for b in server.bodies], ["prompt 1", "warm", "prompt 1"])

    def test_cancel(self) -> None:
        """Cancelling the benchmark (the worker stopping) cancels its requests."""
        clock = Clock()
        server = TGIServer(clock, tokens_per_second=1.0)
        backend = InMemoryBackend(server)
        d = Deferred.fromCoroutine(
            measure(backend.session, generate, count_all, RunSettings(concurrency=3))
        )
        backend.settle()
        clock.advance(10)  # the warm-up's answer
        backend.settle()
        for _ in range(3):  # the three runs at concurrency 1
            clock.advance(10)
            backend.settle()
        self.assertEqual(server.active, 2)
        d.cancel()
        backend.settle()
        self.failureResultOf(d, CancelledError)
        self.assertEqual((server.active, server.cancelled), (0, 2))


class SessionTests(SynchronousTestCase):
    """The session's responses."""

    def test_relative_paths_and_bodies(self) -> None:
        """Paths with or without a slash; content, json and text read once, kept."""

        async def work(session: BackendSession) -> Any:
            response = await session.get("v1/models")
            first = await response.content()
            return response.code, first, await response.json(), await response.text()

        backend = InMemoryBackend(OpenAIServer(Clock()))
        code, raw, parsed, text = backend.run(work)
        self.assertEqual(code, 200)
        self.assertEqual(parsed["data"][0]["id"], "fake-model")
        self.assertEqual(text.encode(), raw)

    def test_treq_collect_and_collect(self) -> None:
        """``treq.collect`` works on a response, as on treq's own."""

        async def work(session: BackendSession) -> list[bytes]:
            chunks: list[bytes] = []
            response = await session.get("/health")
            await treq.collect(response, chunks.append)
            again = await session.get("/health")
            await again.collect(chunks.append)
            return chunks

        backend = InMemoryBackend(OpenAIServer(Clock()))
        self.assertEqual(b"".join(backend.run(work)), b'{"status": "ok"}' * 2)


class StreamCounterTests(SynchronousTestCase):
    """Counting tokens in an OpenAI event stream."""

    def count(self, *chunks: bytes) -> StreamCounter:
        counter = StreamCounter()
        for chunk in chunks:
            counter.feed(chunk)
        counter.finish()
        return counter

    def test_deltas_across_chunk_boundaries(self) -> None:
        """Events split anywhere, CRLF endings, role and empty deltas not counted."""
        stream = (
            b'data: {"choices":[{"delta":{"role":"assistant","content":""}}]}\r\n\r\n'
            b'data: {"choices":[{"delta":{"content":"Hi"}}]}\n\n'
            b'data: {"choices":[{"delta":{"reasoning_content":"hmm"}}]}\n\n'
            b'data: {"choices":[{"text":" there"}]}\n\n'
            b": keep-alive comment\n\n"
            b"data: [DONE]"
        )
        counter = self.count(*(stream[i : i + 7] for i in range(0, len(stream), 7)))
        self.assertEqual((counter.deltas, counter.usage, counter.tokens), (3, None, 3))

    def test_usage_wins(self) -> None:
        """The server's own count, when it sends one."""
        counter = self.count(
            b'data: {"choices":[{"delta":{"content":"a"}}],"usage":null}\n\n'
            b'data: {"choices":[],"usage":{"completion_tokens":7}}\n\n'
        )
        self.assertEqual(counter.tokens, 7)

    def test_errors(self) -> None:
        """An error event, or an event that is not JSON."""
        with self.assertRaises(BenchmarkError) as caught:
            self.count(b'data: {"error": {"message": "CUDA out of memory"}}\n\n')
        self.assertIn("the stream reported an error", str(caught.exception))
        self.assertIn("CUDA out of memory", str(caught.exception))
        with self.assertRaises(BenchmarkError):
            self.count(b"data: {not json\n\n")


class CommandTests(SynchronousTestCase):
    """``python -m vespa.benchmarks``."""

    def test_usage(self) -> None:
        """Wrong arguments: the usage, status 2."""
        self.patch(sys, "stderr", open(os.devnull, "w"))
        self.addCleanup(sys.stderr.close)
        self.assertEqual(cli([]), 2)


FLAKY = {"fail": True, "value": 123.0}


async def flaky_benchmark(backend_url: str, session: BackendSession) -> float:
    """The real TGI probe while ``FLAKY["fail"]``, else a fixed figure."""
    if FLAKY["fail"]:
        return await tgi.benchmark(backend_url, session, TGISettings(runs=1, timeout=5))
    return FLAKY["value"]


class CacheTests(SynchronousTestCase):
    """
    Through the startup chain, in memory (its timers and the fake's on one
    ``Clock``): a failed benchmark is reported with its reason and never
    cached; a measured value is; a corrupt cache is measured again.
    """

    def start(self, cache_path: str) -> tuple[WorkerState, InMemoryBackend]:
        backend = InMemoryBackend(TGIServer(Clock(), failure="error"))
        config = replace(
            WorkerConfig(backend=Origin("http", "backend.invalid", 80)), startup_retry=30
        )
        state = WorkerState(backend.clock)
        health = HealthChecker(backend.clock, state, lambda: succeed(None))
        startup = Startup(
            backend.clock,
            state,
            backend.session.http,
            InMemoryBackend.URL,
            health,
            benchmark="tests.test_benchmarks:flaky_benchmark",
            cache=BenchmarkCache(cache_path),
            verifier=None,
            pubkey_url=None,
            settings=config,
            route=HealthRoute(InMemoryBackend.URL, config.healthcheck_endpoint, None),
        )
        startup.startService()
        self.addCleanup(startup.stopService)
        backend.settle()
        return state, backend

    def test_failure_is_reported_and_not_cached(self) -> None:
        """The reason reaches the state; no file; a later success is cached."""
        FLAKY.update(fail=True, value=123.0)
        path = self.mktemp()
        state, backend = self.start(path)
        self.assertIs(state.phase, Phase.ERRORED)
        self.assertIn("Benchmark failed: tgi: the warm-up request failed", state.error)
        self.assertIn("POST /generate answered 500", state.error)
        self.assertFalse(os.path.exists(path))
        self.assertEqual(os.listdir(os.path.dirname(os.path.abspath(path))), [])
        FLAKY["fail"] = False
        backend.clock.advance(30)
        backend.settle()
        self.assertTrue(state.is_loaded)
        self.assertEqual(state.max_perf, 123.0)
        self.assertEqual(BenchmarkCache(path).read(), 123.0)

    def test_corrupt_cache_is_measured_again(self) -> None:
        """A cache file that is not a positive number is ignored, then replaced."""
        FLAKY.update(fail=False, value=77.0)
        path = self.mktemp()
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        for corrupt in ("1.0 fallback\n", "0\n", "nan\n", ""):
            with open(path, "w") as f:
                f.write(corrupt)
            self.assertIsNone(BenchmarkCache(path).read())
        state, _ = self.start(path)
        self.assertTrue(state.is_loaded)
        self.assertEqual(state.max_perf, 77.0)
        self.assertEqual(BenchmarkCache(path).read(), 77.0)
