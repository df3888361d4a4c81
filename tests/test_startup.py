"""
The startup chain: public key, backend readiness, benchmark and its cache,
loaded; failures that keep the worker up and recover.

The chain itself runs in memory (:class:`Chain`: ``treq.testing`` in front of
the echo backend and the autoscaler stand-in, every timer on a ``Clock``);
what a client sees meanwhile is checked end to end, over loopback.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from typing import Any

from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.logger import LogLevel, formatEvent
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource, getChildForRequest
from twisted.web.server import Request

from tests.logcapture import capture_log
from tests.support import (
    BENCHMARK_CALLS,
    FIXED_THROUGHPUT,
    PUBLIC_URL,
    shared_key,
    start_secured_worker,
    until,
    wake_startup,
)
from tests.support_worker import Harness
from vespa.benchmarks import built_in_name
from vespa.config import Origin, WorkerConfig
from vespa.protocol.signing import SignatureVerifier
from vespa.testing.autoscaler import Autoscaler
from vespa.testing.echo_backend import EchoBackend
from vespa.worker import health
from vespa.worker.health import HealthChecker, HealthRoute
from vespa.worker.ledger import Outcome
from vespa.worker.startup import BenchmarkCache, Startup, health_check
from vespa.worker.state import Phase, WorkerState


class _ByHost(Resource):
    """Serves each host name's resource: one in-memory agent for two origins."""

    isLeaf = True

    def __init__(self, hosts: dict[bytes, Resource]) -> None:
        super().__init__()
        self.hosts = hosts

    def render(self, request: Request) -> Any:
        target = self.hosts[request.getRequestHostname()]
        return getChildForRequest(target, request).render(request)


class Chain:
    """
    The startup chain as ``twistd vespa`` builds it, in memory: its HTTP is a
    ``treq.testing.StubTreq`` serving the echo backend (``backend.test``) and
    the autoscaler stand-in (``autoscaler.test``), its timers a ``Clock``.
    Those fakes answer at once, so every step that can happen has happened
    when a call here returns; only the clock moves time.
    """

    def __init__(
        self,
        testcase: SynchronousTestCase,
        *,
        health_status: int = 200,
        throughput: float = 100.0,
        **overrides: Any,
    ) -> None:
        self.clock = Clock()
        self.backend = EchoBackend(self.clock)
        self.backend.health_status = health_status
        self.autoscaler = Autoscaler(self.clock, key=shared_key())
        self.http = StubTreq(
            _ByHost({b"backend.test": self.backend, b"autoscaler.test": self.autoscaler.resource()})
        )
        FIXED_THROUGHPUT["value"] = throughput
        config = replace(
            WorkerConfig(
                backend=Origin("http", "backend.test", 80),
                benchmark="tests.support:fixed_benchmark",
                benchmark_cache=testcase.mktemp(),
            ),
            **overrides,
        )
        self.config = config
        self.state = WorkerState(self.clock)
        route = HealthRoute(
            config.backend.url, config.healthcheck_endpoint, built_in_name(config.benchmark)
        )
        checker = HealthChecker(
            self.clock,
            self.state,
            health_check(self.http, route, self.clock, config.healthcheck_timeout),
            interval=config.healthcheck_interval,
            threshold=config.healthcheck_failures,
        )
        verifier = SignatureVerifier(
            mode=config.signature_mode,
            replay_window=config.replay_window,
            own_url=PUBLIC_URL,
            bind_url=config.url_binding,
        )
        self.startup = Startup(
            self.clock,
            self.state,
            self.http,  # type: ignore[arg-type]
            config.backend.url,
            checker,
            benchmark=config.benchmark,
            cache=BenchmarkCache(config.benchmark_cache),
            verifier=verifier,
            pubkey_url="http://autoscaler.test/pubkey/",
            settings=config,
            route=route,
        )
        testcase.addCleanup(self.stop)

    def settle(self) -> None:
        """Deliver what the fakes answered (a response can start the next request)."""
        for _ in range(20):
            self.http.flush()

    def start(self) -> None:
        self.startup.startService()
        self.settle()

    def stop(self) -> None:
        if self.startup.running:
            self.startup.stopService()

    def advance(self, seconds: float) -> None:
        """Move the clock ``seconds`` on, and let what that starts happen."""
        self.clock.advance(seconds)
        self.settle()

    def wake(self) -> float:
        """End the chain's current wait; return how long it was."""
        self.settle()
        until = self.startup.sleeping_until
        if until is None:
            raise AssertionError("the startup chain is not waiting")
        delay = until - self.clock.seconds()
        self.advance(delay)
        return delay

    def probes(self, uri: bytes = b"/health") -> int:
        return sum(1 for _, seen in self.backend.received if seen == uri)


class ChainTests(SynchronousTestCase):
    """The startup chain, in memory, its time on a ``Clock``."""

    def test_probes_every_5_seconds_until_the_backend_is_ready(self) -> None:
        """While /health answers 503 the chain probes every 5 s and stays
        loading; once it answers 200, the benchmark runs and the worker is loaded."""
        chain = Chain(self, health_status=503)
        chain.start()
        self.assertEqual((chain.probes(), chain.state.phase), (1, Phase.LOADING))
        for n in range(2, 5):
            self.assertEqual(chain.wake(), 5)
            self.assertEqual(chain.probes(), n)
        self.assertFalse(chain.state.is_loaded)
        chain.backend.health_status = 200
        self.assertEqual(chain.wake(), 5)
        self.assertTrue(chain.state.is_loaded)
        self.assertEqual(chain.state.max_perf, 100.0)

    def test_backend_never_ready_is_an_error_that_recovers(self) -> None:
        """Past the ready timeout the worker is errored, with the reason; the
        chain is tried again after ``startup_retry`` and recovers."""
        chain = Chain(self, health_status=503, ready_timeout_initial=20.0, startup_retry=30.0)
        chain.start()
        for _ in range(4):
            self.assertEqual(chain.wake(), 5)
        self.assertIs(chain.state.phase, Phase.ERRORED)
        self.assertIn(
            "failed to become ready after 20 seconds (initial timeout)", chain.state.error
        )
        self.assertIsNone(chain.startup.sleeping_until)
        chain.backend.health_status = 200
        chain.advance(29.9)
        self.assertIs(chain.state.phase, Phase.ERRORED)
        chain.advance(0.1)
        self.assertTrue(chain.state.is_loaded)
        self.assertEqual(chain.state.error, "")
        self.assertEqual(chain.startup.attempts, 2)

    def test_cached_benchmark_is_reused(self) -> None:
        """A cached throughput skips the benchmark (the resume path)."""
        cache = self.mktemp()
        with open(cache, "w") as f:
            f.write("250.5\n")
        BENCHMARK_CALLS["count"] = 0
        chain = Chain(self, benchmark_cache=cache)
        chain.start()
        self.assertTrue(chain.state.is_loaded)
        self.assertEqual(chain.state.max_perf, 250.5)
        self.assertEqual(BENCHMARK_CALLS["count"], 0)

    def test_corrupt_cache_is_ignored_and_rewritten(self) -> None:
        """A corrupt cache is ignored with a warning; the measurement replaces it."""
        cache = self.mktemp()
        with open(cache, "w") as f:
            f.write("1.0e\n")
        chain = Chain(self, benchmark_cache=cache, throughput=42.0)
        with capture_log() as log:
            chain.start()
        self.assertIn("ignoring the corrupt benchmark cache", log.text)
        self.assertEqual(chain.state.max_perf, 42.0)
        with open(cache) as f:
            self.assertEqual(float(f.read()), 42.0)

    def test_failed_benchmark_caches_nothing(self) -> None:
        """A benchmark with no success is an error with its reason; no cache file."""
        cache = self.mktemp()
        chain = Chain(self, benchmark="tests.support:failing_benchmark", benchmark_cache=cache)
        chain.start()
        self.assertIs(chain.state.phase, Phase.ERRORED)
        self.assertIn("Benchmark failed", chain.state.error)
        self.assertIn("every request answered 500", chain.state.error)
        self.assertEqual(chain.state.max_perf, 0.0)
        self.assertFalse(os.path.exists(cache))

    def test_unknown_benchmark_says_what_to_fix(self) -> None:
        """A benchmark that cannot be loaded is an error naming the problem."""
        chain = Chain(self, benchmark="no_such_module:bench")
        chain.start()
        self.assertIs(chain.state.phase, Phase.ERRORED)
        self.assertIn("no_such_module", chain.state.error)
        self.assertIn("PYTHONPATH", chain.state.error)

    def test_public_key_is_retried_with_backoff(self) -> None:
        """The key fetch fails, is retried at 1, 2, 4, 8 s; after 5 failures the
        worker reports the problem, and it clears when the key arrives."""
        chain = Chain(self)
        chain.autoscaler.fail("500", paths=("pubkey",), times=5)
        chain.start()
        self.assertEqual(len(chain.autoscaler.injected_failures), 1)
        for n, delay in enumerate([1, 2, 4, 8]):
            self.assertFalse(chain.state.is_loaded)
            self.assertEqual(chain.wake(), delay)
            self.assertEqual(len(chain.autoscaler.injected_failures), n + 2)
        self.assertIn("public key", chain.state.error)
        self.assertEqual(chain.probes(), 0)
        self.assertEqual(chain.wake(), 16)
        self.assertTrue(chain.state.is_loaded)
        self.assertEqual(chain.state.error, "")


class HealthCheckTests(SynchronousTestCase):
    """Once loaded, the backend is probed every ``healthcheck_interval`` seconds."""

    def test_consecutive_failures_make_an_error_the_next_success_clears(self) -> None:
        """Three failed checks in a row make the worker errored, with the
        reason; the first check that passes clears it (no sticky errors)."""
        chain = Chain(self)
        chain.start()
        self.assertTrue(chain.state.is_loaded)
        probes = chain.probes()
        chain.backend.health_status = 503
        for _ in range(2):
            chain.advance(chain.config.healthcheck_interval)
        self.assertEqual((chain.probes(), chain.state.error), (probes + 2, ""))
        chain.advance(chain.config.healthcheck_interval)
        self.assertIs(chain.state.phase, Phase.ERRORED)
        self.assertIn("3 consecutive", chain.state.error)
        self.assertIn("answered 503", chain.state.error)
        chain.backend.health_status = 200
        chain.advance(chain.config.healthcheck_interval)
        self.assertTrue(chain.state.is_loaded)
        self.assertEqual(chain.state.error, "")

    def test_a_failure_between_successes_is_forgotten(self) -> None:
        """Failures must be consecutive: one passing check starts the count again."""
        chain = Chain(self)
        chain.start()
        for status in (503, 503, 200, 503, 503):
            chain.backend.health_status = status
            chain.advance(chain.config.healthcheck_interval)
        self.assertTrue(chain.state.is_loaded)
        self.assertEqual(chain.state.error, "")


class WhileStartingTests(TestCase):
    """What a client and the autoscaler see of startup: the whole worker, over loopback."""

    timeout = 30

    async def test_requests_wait_for_a_slow_backend_with_503(self) -> None:
        """While the backend starts, requests get 503 with Retry-After; once its
        health endpoint answers, the benchmark runs and the worker serves."""
        env = await start_secured_worker(
            self,
            wait_until_loaded=False,
            before_start=lambda e: setattr(e.backend, "health_status", 503),
        )
        await env.backend.wait_for_request(b"/health")
        h = Harness(env)
        response, body = await h.post(b"/echo", {}, cost=5)
        self.assertEqual(response.code, 503)
        self.assertEqual(response.headers.getRawHeaders(b"retry-after"), [b"10"])
        self.assertIn("not ready", json.loads(body)["error"])
        self.assertEqual(env.worker.ledger.totals[Outcome.REJECTED].requests, 1)
        env.backend.health_status = 200
        self.assertEqual(await wake_startup(env.worker, env.clock), 5)
        await until(lambda: env.worker.state.is_loaded)
        response, _ = await h.post(b"/echo", {}, cost=5)
        self.assertEqual(response.code, 200)

    async def test_an_error_is_refused_with_its_reason_and_reported(self) -> None:
        """An errored worker answers 503 with the reason and Retry-After
        ``startup_retry``, and reports the error with ``max_perf`` 0."""
        env = await start_secured_worker(
            self,
            wait_until_loaded=False,
            startup_retry=30.0,
            benchmark="tests.support:failing_benchmark",
        )
        await until(lambda: env.worker.state.phase is Phase.ERRORED)
        response, body = await Harness(env).post(b"/echo", {}, cost=5)
        self.assertEqual(response.code, 503)
        self.assertEqual(response.headers.getRawHeaders(b"retry-after"), [b"30"])
        self.assertIn("Benchmark failed", json.loads(body)["error"])
        await env.worker.reporter.flush()
        report = env.autoscaler.status_reports[-1]
        self.assertIn("every request answered 500", report["error_msg"])
        self.assertEqual(report["max_perf"], 0.0)


async def models_benchmark(backend_url: str, session: Any) -> float:
    """A benchmark that needs ``/v1/models`` only (the server has no ``/health``)."""
    response = await session.get("/v1/models")
    await response.content()
    return 50.0


class StartupSaysWhatItDoesTests(SynchronousTestCase):
    """
    The first minute with a model server: the log says what startup waits
    for, and the health route finds itself.
    """

    def test_waiting_is_logged_every_30_seconds_with_the_last_answer(self) -> None:
        """One line as the wait starts, then one per 30 s with the last answer
        (503 = still loading), the time spent and the limit; then the end."""
        chain = Chain(self, health_status=503)
        with capture_log() as log:
            chain.start()
            for _ in range(12):  # probes every 5 s: t = 0 ... 60
                chain.wake()
            waiting = [line for line in log.lines() if "still waiting" in line]
            self.assertEqual(len(waiting), 2)
            self.assertIn("answered 503 (still loading) (30 s of 1200 s)", waiting[0])
            self.assertIn("(60 s of 1200 s)", waiting[1])
            self.assertEqual(
                len([line for line in log.lines() if line.startswith("waiting for the model")]),
                1,
            )
            self.assertIn(
                f"waiting for the model server: GET {chain.config.backend.url}/health "
                "(up to 1200 s)",
                log.text,
            )
            chain.backend.health_status = 200
            chain.wake()
            self.assertTrue(chain.state.is_loaded)
        self.assertIn("answered 200 after 65.0 s", log.text)
        self.assertIn("benchmarking the model server: tests.support:fixed_benchmark", log.text)
        self.assertRegex(log.text, r"loaded in 65\.0 s: 100 units/s")
        self.assertTrue(
            all(e["log_level"] is LogLevel.info for e in log.events if "waiting" in formatEvent(e))
        )

    def test_404_names_the_option_once(self) -> None:
        """An explicit route the server lacks: one warning naming
        --healthcheck-endpoint with a suggestion, and the error says it too."""
        chain = Chain(
            self, health_status=404, healthcheck_endpoint="/health", ready_timeout_initial=20.0
        )
        with capture_log() as log:
            chain.start()
            for _ in range(4):
                chain.wake()
        self.assertIs(chain.state.phase, Phase.ERRORED)
        warnings = log.lines(LogLevel.warn)
        self.assertEqual(len(warnings), 1)
        self.assertIn("answered 404: the model server has no such route", warnings[0])
        self.assertIn("--healthcheck-endpoint /v1/models", warnings[0])
        self.assertIn("--healthcheck-endpoint", chain.state.error)

    def test_auto_falls_back_on_404_and_health_checks_use_the_choice(self) -> None:
        """auto: /health answers 404, so /v1/models is tried at once and kept,
        for startup and for the periodic checks; the choice is logged."""
        self.patch(health, "DEFAULT_ROUTES", ("/health", "/v1/models"))
        chain = Chain(self, health_status=404, benchmark="tests.test_startup:models_benchmark")
        with capture_log() as log:
            chain.start()
        self.assertTrue(chain.state.is_loaded)
        self.assertEqual((chain.probes(), chain.probes(b"/v1/models")), (1, 2))
        self.assertIn(
            "/health answered 404: the model server has no such route; trying GET", log.text
        )
        self.assertIn("health checks use /v1/models (auto)", log.text)
        chain.advance(chain.config.healthcheck_interval)
        self.assertEqual((chain.probes(), chain.probes(b"/v1/models")), (1, 3))


class UnsecuredWhileLoadingTests(TestCase):
    """Unsecured, the whole worker over loopback relays while the model server loads."""

    timeout = 30

    async def test_unsecured_relays_while_loading(self) -> None:
        """Unsecured: requests go through while the model server loads; /ready
        still says 503 loading, and the chain goes on to load."""
        env = await start_secured_worker(
            self,
            wait_until_loaded=False,
            unsecured=True,
            before_start=lambda e: setattr(e.backend, "health_status", 503),
        )
        await env.backend.wait_for_request(b"/health")
        response, body = await env.client.request(b"POST", b"/echo/dev", body=b'{"x": 1}')
        self.assertEqual(response.code, 200)
        self.assertEqual(json.loads(body)["body"], '{"x": 1}')
        response, body = await env.client.request(b"GET", b"/ready")
        self.assertEqual((response.code, json.loads(body)["phase"]), (503, "loading"))
        self.assertEqual(env.worker.state.phase, Phase.LOADING)
        env.backend.health_status = 200
        await wake_startup(env.worker, env.clock)
        await until(lambda: env.worker.state.is_loaded)


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
