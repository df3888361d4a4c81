"""
The startup chain end to end: public key, backend readiness, benchmark and its
cache, loaded; failures that keep the worker up and recover.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.logger import LogLevel, formatEvent
from twisted.trial.unittest import TestCase

from tests.logcapture import capture_log
from tests.support import BENCHMARK_CALLS, start_secured_worker, until, wake_startup
from tests.support_worker import Harness
from vespa.worker import health
from vespa.worker.ledger import Outcome
from vespa.worker.state import Phase


class StartupTests(TestCase):
    timeout = 30

    async def start(self, **kw: Any) -> Any:
        self.env = await start_secured_worker(self, wait_until_loaded=False, **kw)
        self.state = self.env.worker.state
        return self.env

    def probes(self) -> int:
        return sum(1 for _, uri in self.env.backend.received if uri == b"/health")

    async def advance_probe(self, seconds: float, times: int = 1) -> None:
        """Advance the clock to the next readiness probe and wait until it was made."""
        for _ in range(times):
            before = self.probes()
            self.assertEqual(await wake_startup(self.env.worker, self.env.clock), seconds)
            await until(lambda before=before: self.probes() > before)
            await until(lambda: True)

    async def report(self, predicate: Any) -> dict[str, Any]:
        """Advance the report loop until a matching report arrives."""
        reports = self.env.autoscaler.status_reports
        for _ in range(30):
            for report in reports:
                if predicate(report):
                    return report  # type: ignore[no-any-return]
            self.env.clock.advance(1)
            await until(lambda: not self.env.worker.reporter._busy)
        raise AssertionError("no matching report")

    async def test_requests_wait_for_a_slow_backend_with_503(self) -> None:
        """While the backend starts, requests get 503 with Retry-After; once its
        health endpoint answers, the benchmark runs and the worker serves."""
        env = await self.start(before_start=lambda e: setattr(e.backend, "health_status", 503))
        await until(lambda: self.probes() == 1)
        response, body = await Harness(env).post(b"/echo", {}, cost=5)
        self.assertEqual(response.code, 503)
        self.assertEqual(response.headers.getRawHeaders(b"retry-after"), [b"10"])
        self.assertIn("not ready", json.loads(body)["error"])
        self.assertEqual(env.worker.ledger.totals[Outcome.REJECTED].requests, 1)
        await self.advance_probe(5, times=3)
        self.assertFalse(self.state.is_loaded)
        env.backend.health_status = 200
        await self.advance_probe(5)
        await until(lambda: self.state.is_loaded)
        self.assertEqual(self.state.max_perf, 100.0)

    async def test_backend_never_ready_is_an_error_that_recovers(self) -> None:
        """Past the ready timeout the worker is errored (reported, 503 with the
        reason); it keeps trying and recovers when the backend comes up."""
        env = await self.start(
            ready_timeout_initial=20.0,
            startup_retry=30.0,
            before_start=lambda e: setattr(e.backend, "health_status", 503),
        )
        await until(lambda: self.probes() == 1)
        await self.advance_probe(5, times=4)
        await until(lambda: self.state.phase is Phase.ERRORED)
        self.assertIn("failed to become ready after 20 seconds (initial timeout)", self.state.error)
        response, body = await Harness(env).post(b"/echo", {}, cost=5)
        self.assertEqual(response.code, 503)
        self.assertEqual(response.headers.getRawHeaders(b"retry-after"), [b"30"])
        self.assertIn("failed to become ready", json.loads(body)["error"])
        report = await self.report(lambda r: r["error_msg"] != "")
        self.assertIn("initial timeout", report["error_msg"])
        env.backend.health_status = 200
        await until(lambda: env.worker.startup._retry is not None)
        env.clock.advance(env.worker.startup._retry.getTime() - env.clock.seconds())
        await until(lambda: self.probes() > 0 and self.state.is_loaded)
        await until(lambda: self.state.is_loaded)
        self.assertEqual(self.state.error, "")

    async def test_cached_benchmark_is_reused_with_the_resume_timeout(self) -> None:
        """A cached throughput skips the benchmark (the resume path)."""
        cache = self.mktemp()
        with open(cache, "w") as f:
            f.write("250.5\n")
        BENCHMARK_CALLS["count"] = 0
        await self.start(benchmark_cache=cache)
        await until(lambda: self.state.is_loaded)
        self.assertEqual(self.state.max_perf, 250.5)
        self.assertEqual(BENCHMARK_CALLS["count"], 0)

    async def test_corrupt_cache_is_ignored_and_rewritten(self) -> None:
        """A corrupt cache is ignored with a warning; the measurement replaces it."""
        cache = self.mktemp()
        with open(cache, "w") as f:
            f.write("1.0e\n")
        await self.start(benchmark_cache=cache, throughput=42.0)
        await until(lambda: self.state.is_loaded)
        self.assertEqual(self.state.max_perf, 42.0)
        with open(cache) as f:
            self.assertEqual(float(f.read()), 42.0)

    async def test_failed_benchmark_caches_nothing_and_is_reported(self) -> None:
        """A benchmark with no success is an error with its reason; no cache file."""
        cache = self.mktemp()
        await self.start(benchmark="tests.support:failing_benchmark", benchmark_cache=cache)
        await until(lambda: self.state.phase is Phase.ERRORED)
        self.assertIn("Benchmark failed", self.state.error)
        self.assertIn("every request answered 500", self.state.error)
        import os

        self.assertFalse(os.path.exists(cache))
        report = await self.report(lambda r: "Benchmark" in r["error_msg"])
        self.assertEqual(report["max_perf"], 0.0)

    async def test_unknown_benchmark_says_what_to_fix(self) -> None:
        """A benchmark that cannot be loaded is an error naming the problem."""
        await self.start(benchmark="no_such_module:bench")
        await until(lambda: self.state.phase is Phase.ERRORED)
        self.assertIn("no_such_module", self.state.error)
        self.assertIn("PYTHONPATH", self.state.error)

    async def test_public_key_is_retried_with_backoff(self) -> None:
        """The key fetch fails, is retried at 1, 2, 4, 8 s; after 5 failures the
        worker reports the problem, and it clears when the key arrives."""
        env = await self.start(
            before_start=lambda e: e.autoscaler.fail("500", paths=("pubkey",), times=5)
        )
        await until(lambda: len(env.autoscaler.injected_failures) == 1)
        for n, delay in enumerate([1, 2, 4, 8]):
            self.assertFalse(self.state.is_loaded)
            self.assertEqual(await wake_startup(env.worker, env.clock), delay)
            await until(lambda n=n: len(env.autoscaler.injected_failures) == n + 2)
        self.assertIn("public key", self.state.error)
        self.assertEqual(await wake_startup(env.worker, env.clock), 16)
        await until(lambda: self.state.is_loaded)
        self.assertEqual(self.state.error, "")


async def models_benchmark(backend_url: str, session: Any) -> float:
    """A benchmark that needs ``/v1/models`` only (the server has no ``/health``)."""
    response = await session.get("/v1/models")
    await response.content()
    return 50.0


class StartupSaysWhatItDoesTests(TestCase):
    """
    The first minute with a model server: unsecured relays at once, the log
    says what startup waits for, and the health route finds itself.
    """

    timeout = 30

    async def start(self, **kw: Any) -> Any:
        self.env = await start_secured_worker(self, wait_until_loaded=False, **kw)
        return self.env

    def probes(self, uri: bytes = b"/health") -> int:
        return sum(1 for _, seen in self.env.backend.received if seen == uri)

    async def next_probe(self, times: int = 1) -> None:
        for _ in range(times):
            before = len(self.env.backend.received)
            await wake_startup(self.env.worker, self.env.clock)
            await until(lambda before=before: len(self.env.backend.received) > before)

    async def test_unsecured_relays_while_loading(self) -> None:
        """Unsecured: requests go through while the model server loads; /ready
        still says 503 loading, and the chain goes on to load."""
        env = await self.start(
            unsecured=True, before_start=lambda e: setattr(e.backend, "health_status", 503)
        )
        await until(lambda: self.probes() == 1)
        response, body = await env.client.request(b"POST", b"/echo/dev", body=b'{"x": 1}')
        self.assertEqual(response.code, 200)
        self.assertEqual(json.loads(body)["body"], '{"x": 1}')
        response, body = await env.client.request(b"GET", b"/ready")
        self.assertEqual((response.code, json.loads(body)["phase"]), (503, "loading"))
        self.assertEqual(env.worker.state.phase, Phase.LOADING)
        env.backend.health_status = 200
        await self.next_probe()
        await until(lambda: env.worker.state.is_loaded)

    async def test_waiting_is_logged_every_30_seconds_with_the_last_answer(self) -> None:
        """One line as the wait starts, then one per 30 s with the last answer
        (503 = still loading), the time spent and the limit; then the end."""
        with capture_log() as log:
            env = await self.start(before_start=lambda e: setattr(e.backend, "health_status", 503))
            await until(lambda: self.probes() == 1)
            await self.next_probe(times=12)  # probes every 5 s: t = 0 ... 60
            # The last probe's answer is handled (and logged) once the chain sleeps again.
            await until(lambda: env.worker.startup.sleeping_until is not None)
            waiting = [line for line in log.lines() if "still waiting" in line]
            self.assertEqual(len(waiting), 2)
            self.assertIn("answered 503 (still loading) (30 s of 1200 s)", waiting[0])
            self.assertIn("(60 s of 1200 s)", waiting[1])
            self.assertEqual(
                len([line for line in log.lines() if line.startswith("waiting for the model")]),
                1,
            )
            self.assertRegex(
                log.text,
                r"waiting for the model server: GET http://127\.0\.0\.1:\d+/health "
                r"\(up to 1200 s\)",
            )
            env.backend.health_status = 200
            await self.next_probe()
            await until(lambda: env.worker.state.is_loaded)
        self.assertIn("answered 200 after 65.0 s", log.text)
        self.assertIn("benchmarking the model server: tests.support:fixed_benchmark", log.text)
        self.assertRegex(log.text, r"loaded in 65\.0 s: 100 units/s")
        self.assertTrue(
            all(e["log_level"] is LogLevel.info for e in log.events if "waiting" in formatEvent(e))
        )

    async def test_404_names_the_option_once(self) -> None:
        """An explicit route the server lacks: one warning naming
        --healthcheck-endpoint with a suggestion, and the error says it too."""
        with capture_log() as log:
            env = await self.start(
                healthcheck_endpoint="/health",
                ready_timeout_initial=20.0,
                before_start=lambda e: setattr(e.backend, "health_status", 404),
            )
            await until(lambda: self.probes() == 1)
            await self.next_probe(times=4)
            await until(lambda: env.worker.state.phase is Phase.ERRORED)
        warnings = log.lines(LogLevel.warn)
        self.assertEqual(len(warnings), 1)
        self.assertIn("answered 404: the model server has no such route", warnings[0])
        self.assertIn("--healthcheck-endpoint /v1/models", warnings[0])
        self.assertIn("--healthcheck-endpoint", env.worker.state.error)

    async def test_auto_falls_back_on_404_and_health_checks_use_the_choice(self) -> None:
        """auto: /health answers 404, so /v1/models is tried at once and kept,
        for startup and for the periodic checks; the choice is logged."""
        self.patch(health, "DEFAULT_ROUTES", ("/health", "/v1/models"))
        with capture_log() as log:
            env = await self.start(
                benchmark="tests.test_startup:models_benchmark",
                before_start=lambda e: setattr(e.backend, "health_status", 404),
            )
            await until(lambda: env.worker.state.is_loaded)
        self.assertEqual((self.probes(), self.probes(b"/v1/models")), (1, 2))
        self.assertIn(
            "/health answered 404: the model server has no such route; trying GET", log.text
        )
        self.assertIn("health checks use /v1/models (auto)", log.text)
        env.clock.advance(env.worker.startup._settings.healthcheck_interval)
        await until(lambda: self.probes(b"/v1/models") == 3)
        self.assertEqual(self.probes(), 1)


class NativeRoutesTests(TestCase):
    """``auto`` starts from each built-in benchmark's native route, one its
    server (here its fake, over loopback) answers 200 on."""

    async def test_each_kind_probes_a_route_its_server_has(self) -> None:
        from twisted.internet import reactor

        from tests.support import listen
        from vespa.benchmarks.session import BackendSession
        from vespa.testing.model_servers import (
            ComfyUIServer,
            OllamaServer,
            OpenAIServer,
            TGIServer,
            fake_site,
        )
        from vespa.worker.health import HealthRoute, probe

        servers = {
            "openai_chat": OpenAIServer(),
            "openai_completions": OpenAIServer(),
            "tgi": TGIServer(),
            "ollama": OllamaServer(),
            "comfyui": ComfyUIServer(),
        }
        self.assertEqual(
            {kind: HealthRoute("", "auto", kind).path for kind in servers},
            {
                "openai_chat": "/health",
                "openai_completions": "/health",
                "tgi": "/health",
                "ollama": "/api/version",
                "comfyui": "/system_stats",
            },
        )
        for kind, server in servers.items():
            url = f"http://127.0.0.1:{listen(self, fake_site(server, reactor))}"
            session = BackendSession.create(reactor, url)
            self.addCleanup(session.close)
            await probe(session.http, HealthRoute(url, "auto", kind).url, reactor, 5.0)
        explicit = HealthRoute("http://x", "/ping", "ollama")
        self.assertEqual((explicit.url, explicit.fall_back()), ("http://x/ping", False))
