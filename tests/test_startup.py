"""
The startup chain end to end: public key, backend readiness, benchmark and its
cache, loaded; failures that keep the worker up and recover.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.trial.unittest import TestCase

from tests.support import BENCHMARK_CALLS, start_secured_worker, until, wake_startup
from tests.test_worker_protocol import Harness
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
        self.assertEqual(env.worker.ledger.totals.rejected, 1)
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
