"""
Operating the worker: health and readiness, metrics, request ids, JSON logs,
TLS, and the drain.
"""

from __future__ import annotations

import io
import json
import os
import uuid
from typing import Any

from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.logger import Logger
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, readBody
from twisted.web.http_headers import Headers

from tests.support import (
    HTTPClient,
    listen,
    start_echo_backend,
    start_secured_worker,
    start_tls_worker,
    start_worker,
    until,
    wake_startup,
)
from tests.support_worker import Harness
from vespa.config import ConfigError, WorkerConfig
from vespa.log import _JSONLinesObserver
from vespa.worker import request_ids
from vespa.worker.drain import Drain
from vespa.worker.ledger import Ledger, Outcome
from vespa.worker.metrics import WorkerMetrics
from vespa.worker.request_ids import BATCH, new_request_id
from vespa.worker.state import Phase, WorkerState


class HealthAndReadinessTests(TestCase):
    """/health and /ready are answered locally with the worker's state."""

    timeout = 30

    async def test_health_and_ready_while_loading_and_loaded(self) -> None:
        """While loading /ready is 503 and /health 200; once loaded both are 200."""
        env = await start_secured_worker(
            self,
            wait_until_loaded=False,
            before_start=lambda e: setattr(e.backend, "health_status", 503),
        )
        response, body = await env.client.request(b"GET", b"/ready")
        self.assertEqual(response.code, 503)
        state = json.loads(body)
        self.assertEqual((state["ready"], state["phase"]), (False, "loading"))
        response, body = await env.client.request(b"GET", b"/health")
        self.assertEqual(response.code, 200)
        self.assertEqual(json.loads(body)["phase"], "loading")
        # The first probe must have had its 503 before the backend recovers.
        await env.backend.wait_for_request(b"/health")
        env.backend.health_status = 200
        await wake_startup(env.worker, env.clock)
        await until(lambda: env.worker.state.is_loaded)
        response, body = await env.client.request(b"GET", b"/ready")
        self.assertEqual(response.code, 200)
        state = json.loads(body)
        self.assertEqual(state["phase"], "ready")
        self.assertEqual(state["max_perf"], 100.0)
        for key in ("in_flight", "in_flight_workload", "queued", "version", "uptime", "error"):
            self.assertIn(key, state)
        self.assertFalse(any(uri in (b"/ready",) for _, uri in env.backend.received))


class MetricsTests(TestCase):
    """The Prometheus exposition agrees with the ledger."""

    timeout = 30

    async def test_metrics_count_requests_by_outcome(self) -> None:
        """After served, errored and forged requests, the counters say so: the
        forged one (401) only as a refusal, never as a rejected request."""
        env = await start_secured_worker(self, metrics_listen="tcp:0:interface=127.0.0.1")
        h = Harness(env)
        await h.post(b"/echo", {}, cost=7)
        await h.post(b"/status/500", {}, cost=3)
        bad = h.auth(2)
        bad["cost"] = 9
        await h.post(b"/echo", {}, auth=bad)
        metrics = WorkerMetrics(
            env.worker.ledger, env.worker.state, env.worker.resource.admission, env.worker.health
        )
        port = listen(self, _site(metrics.resource()))
        response, body = await HTTPClient(self, port).request(b"GET", b"/metrics")
        text = body.decode()
        self.assertEqual(response.code, 200)
        self.assertIn('vespa_requests_total{outcome="served"} 1.0', text)
        self.assertIn('vespa_requests_total{outcome="errored"} 1.0', text)
        self.assertIn('vespa_requests_total{outcome="rejected"} 0.0', text)
        self.assertIn('vespa_workload_total{outcome="served"} 7.0', text)
        self.assertIn('vespa_phase{phase="ready"} 1.0', text)
        self.assertIn("vespa_max_perf 100.0", text)
        refused = env.worker.resource.metrics.registry.get_sample_value(
            "vespa_refused_requests_total", {"status": "401"}
        )
        self.assertEqual(refused, 1.0)
        # The worker's own registry observed the backend exchanges.
        exchanges = env.worker.resource.metrics.backend_time.collect()[0]
        count = next(s.value for s in exchanges.samples if s.name.endswith("_count"))
        self.assertEqual(count, 2.0)


    async def test_no_metrics_without_a_metrics_port(self) -> None:
        """``--metrics-listen none``: no registry; requests are served and refused without one."""
        env = await start_secured_worker(self, unsecured=True)
        self.assertIsNone(env.worker.resource.metrics)
        response, _ = await env.client.request(b"GET", b"/echo")
        self.assertEqual(response.code, 200)
        response, _ = await env.client.request(b"TRACE", b"/echo")  # the refusal path
        self.assertEqual(response.code, 405)


def _site(resource: Any) -> Any:
    from twisted.web.server import Site

    return Site(resource)


class RequestIdTests(TestCase):
    """A request id is forwarded to the backend and returned to the caller."""

    timeout = 30

    async def test_given_and_generated_ids(self) -> None:
        """The caller's X-Request-Id is kept; without one (or with a non-visible
        one), a UUID4 is made: llama.cpp's server answers 400 to other ids."""
        env = await start_secured_worker(self, unsecured=True)
        response, body = await env.client.request(
            b"GET", b"/echo", headers={b"X-Request-Id": [b"abc-123"]}
        )
        self.assertEqual(response.headers.getRawHeaders(b"x-request-id"), [b"abc-123"])
        self.assertIn(["X-Request-Id", "abc-123"], json.loads(body)["headers"])
        response, body = await env.client.request(b"GET", b"/echo")
        made = response.headers.getRawHeaders(b"x-request-id")[0]
        self.assertEqual(uuid.UUID(made.decode()).version, 4)
        self.assertEqual(str(uuid.UUID(made.decode())), made.decode())
        self.assertIn(["X-Request-Id", made.decode()], json.loads(body)["headers"])
        response, body = await env.client.request(
            b"GET", b"/echo", headers={b"X-Request-Id": [b"has space"]}
        )
        replaced = response.headers.getRawHeaders(b"x-request-id")[0]
        self.assertEqual(uuid.UUID(replaced.decode()).version, 4)
        self.assertNotEqual(replaced, made)


class NewRequestIdTests(SynchronousTestCase):
    """The ids the worker makes are random UUID4s in canonical form."""

    def test_valid_uuid4s(self) -> None:
        made = [new_request_id() for _ in range(2000)]
        self.assertEqual(len(set(made)), len(made))
        for request_id in made:
            parsed = uuid.UUID(request_id.decode("ascii"))
            self.assertEqual(parsed.version, 4)
            self.assertEqual(parsed.variant, uuid.RFC_4122)
            self.assertEqual(str(parsed).encode("ascii"), request_id)

    def test_the_random_bits_vary(self) -> None:
        """Every one of the 122 random bits takes both values."""
        ones, zeros = 0, 0
        for _ in range(500):
            value = uuid.UUID(new_request_id().decode("ascii")).int
            ones, zeros = ones | value, zeros | ~value
        fixed = (0xF << 76) | (0x3 << 62)
        self.assertEqual(ones & zeros & ~fixed & ((1 << 128) - 1), ((1 << 128) - 1) & ~fixed)

    def test_the_kernel_is_asked_once_per_batch_of_ids(self) -> None:
        """``os.urandom`` (a system call) once per :data:`BATCH` ids, not once per id."""
        calls: list[int] = []
        real = os.urandom

        def urandom(count: int) -> bytes:
            calls.append(count)
            return real(count)

        self.patch(request_ids.os, "urandom", urandom)
        made = {new_request_id() for _ in range(BATCH * 4)}
        self.assertEqual(len(made), BATCH * 4)
        self.assertLessEqual(len(calls), 5)

    def test_a_forked_child_does_not_reuse_its_parents_random_bytes(self) -> None:
        new_request_id()  # bytes are waiting in the parent
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: its next id, then gone at once
            try:
                os.write(write_end, new_request_id())
            finally:
                os._exit(0)
        os.close(write_end)
        self.addCleanup(os.close, read_end)
        os.waitpid(pid, 0)
        childs = os.read(read_end, 100)
        self.assertEqual(len(childs), 36)
        self.assertNotEqual(childs, new_request_id())


class AccessLogTests(TestCase):
    """--access-log writes a line per request with its duration and id."""

    async def test_line_per_request_with_duration_and_id(self) -> None:
        """The combined format, then the seconds taken and the request id."""
        path = self.mktemp()
        _, backend_port = start_echo_backend(self)
        _, port = start_worker(self, backend_port, access_log=path)
        await HTTPClient(self, port).request(
            b"GET", b"/echo/logged", headers={b"X-Request-Id": [b"rid-42"]}
        )
        await until(lambda: _read(path).count("\n") >= 1)
        line = _read(path).splitlines()[0]
        self.assertIn('"GET /echo/logged HTTP/1.1" 200', line)
        took, request_id = line.rsplit(" ", 2)[1:]
        self.assertGreaterEqual(float(took), 0.0)
        self.assertEqual(request_id, "rid-42")


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except FileNotFoundError:
        return ""


class JSONLogTests(SynchronousTestCase):
    """--log-format json writes one JSON object per line."""

    def test_event_becomes_one_json_line(self) -> None:
        """Message, level, namespace and the event's fields are in the line."""
        stream = io.StringIO()
        observer = _JSONLinesObserver(stream)
        Logger(namespace="vespa.x", observer=observer).warn(
            "{method} failed", method="POST", request_id="r1"
        )
        record = json.loads(stream.getvalue())
        self.assertEqual(record["message"], "POST failed")
        self.assertEqual(record["level"], "warn")
        self.assertEqual(record["namespace"], "vespa.x")
        self.assertEqual(record["request_id"], "r1")
        self.assertEqual(stream.getvalue().count("\n"), 1)


class TLSTests(TestCase):
    """--use-ssl serves HTTPS with the given pair, HTTP/2 by ALPN."""

    timeout = 30

    def test_missing_certificate_is_a_usage_error_naming_the_path(self) -> None:
        """A missing certificate stops startup with the path in the message."""
        with self.assertRaises(ConfigError) as caught:
            WorkerConfig.from_sources(
                {
                    "backend-url": "http://127.0.0.1:8000",
                    "use-ssl": 1,
                    "tls-cert": "/nonexistent/instance.crt",
                },
                {},
            )
        self.assertIn("/nonexistent/instance.crt", str(caught.exception))

    async def test_https_with_a_self_signed_pair(self) -> None:
        """A client trusting the pair gets the response over TLS, h2 or http/1.1."""
        env, trust = await start_tls_worker(self)
        from twisted.web.client import HTTPConnectionPool

        pool = HTTPConnectionPool(reactor, persistent=False)
        agent = Agent(reactor, BrowserLikePolicyForHTTPS(trustRoot=trust), pool=pool)
        response = await agent.request(
            b"GET", b"https://127.0.0.1:%d/echo/tls" % (env.port,), Headers()
        )
        echo = json.loads(await readBody(response))
        self.assertIn(["X-Forwarded-Proto", "https"], echo["headers"])
        self.assertEqual(env.worker.resource.status()["phase"], "ready")


class DrainTests(SynchronousTestCase):
    """The drain waits for in-flight requests, up to its deadline."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.state = WorkerState(self.clock)
        self.state.loaded(10.0)
        self.ledger = Ledger()

    def test_waits_for_in_flight_requests(self) -> None:
        """Stopping refuses new work at once and completes when the last request ends."""
        ticket = self.ledger.receive(1, 1, 5.0)
        drain = Drain(self.clock, self.state, self.ledger, timeout=30.0)
        stopped = drain.stopService()
        self.assertIs(self.state.phase, Phase.DRAINING)
        self.assertFalse(self.state.accepting)
        self.clock.advance(10)
        self.assertNoResult(stopped)
        self.ledger.finish(ticket, Outcome.SERVED)
        self.clock.advance(0)
        self.successResultOf(stopped)
        self.assertTrue(drain.drained)

    def test_gives_up_at_the_deadline(self) -> None:
        """A request still running at the deadline does not hold the exit."""
        self.ledger.receive(1, 1, 5.0)
        drain = Drain(self.clock, self.state, self.ledger, timeout=30.0)
        stopped = drain.stopService()
        self.clock.advance(29.9)
        self.assertNoResult(stopped)
        self.clock.advance(0.1)
        self.clock.advance(0)
        self.successResultOf(stopped)
        self.assertFalse(drain.drained)

    def test_clean_drain_makes_the_exit_status_0(self) -> None:
        """After a clean drain the reactor's SIGTERM exit status is cleared."""

        class FakeReactor:
            _exitSignal = 15

        fake = FakeReactor()
        drain = Drain(self.clock, self.state, self.ledger, timeout=30.0, reactor=fake)
        stopped = drain.stopService()
        self.clock.advance(0)
        self.successResultOf(stopped)
        self.assertIsNone(fake._exitSignal)
