"""
End to end, ``vespa-loadtest`` on loopback: the autoscaler stand-in signing
routes to two real, secured Vespa workers, each in front of a fake OpenAI
server on real sockets; the load test sends through the client core on the
real reactor (its rate is real time). One backend starts failing part-way.
"""

from __future__ import annotations

import io
import json
import os
import signal
from types import SimpleNamespace
from typing import Any

from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from tests.support import FIXED_THROUGHPUT, listen, loopback_config, shared_key, until
from vespa.loadtest.cli import _interrupts, parse, run
from vespa.loadtest.html import CHARTS
from vespa.testing.autoscaler import Autoscaler, autoscaler_site
from vespa.testing.model_servers import OpenAIServer, fake_site

ENDPOINT = "loadtest-endpoint"
API_KEY = "loadtest-key"


async def start_worker(
    testcase: TestCase, backend: OpenAIServer, autoscaler_port: int, index: int, **overrides: Any
) -> str:
    """A secured worker (full signatures, said explicitly) in front of ``backend``; its url."""
    from vespa.worker.tap import build_worker

    backend_port = listen(testcase, fake_site(backend, reactor))
    FIXED_THROUGHPUT["value"] = 1e6
    # Its report and startup timers on a Clock nobody advances: the test
    # registers the workers at the stand-in itself, so the reports' format
    # does not matter here.
    clock = Clock()
    config = loopback_config(
        testcase,
        backend_port,
        autoscaler_port,
        container_id=200 + index,
        **{"unsecured": False, "signature_mode": "full", **overrides},
    )
    worker = build_worker(config, reactor, clock)
    worker.service.startService()
    testcase.addCleanup(worker.service.stopService)
    port = await worker.port()
    await until(lambda: worker.state.is_loaded)
    return f"http://127.0.0.1:{port}"


async def start_endpoint(testcase: TestCase, **backend_a: Any) -> SimpleNamespace:
    """The stand-in and two workers ``a`` and ``b``, each with its own fake OpenAI server."""
    autoscaler = Autoscaler(
        reactor, key=shared_key(), signing_mode="full", endpoint=ENDPOINT, api_key=API_KEY
    )
    autoscaler_port = listen(testcase, autoscaler_site(autoscaler))
    testcase.addCleanup(autoscaler.close)
    a = OpenAIServer(reactor, tokens_per_second=500.0, **backend_a)
    b = OpenAIServer(reactor, tokens_per_second=500.0)
    env = SimpleNamespace(autoscaler=autoscaler, a=a, b=b)
    env.a_url = await start_worker(testcase, a, autoscaler_port, 0)
    env.b_url = await start_worker(testcase, b, autoscaler_port, 1)
    autoscaler.register_worker(env.a_url)
    autoscaler.register_worker(env.b_url)
    env.autoscaler_url = f"http://127.0.0.1:{autoscaler_port}"
    return env


class EndpointLoadTests(TestCase):
    timeout = 60

    async def load(self, env: SimpleNamespace, *args: str) -> tuple[dict[str, Any], str, str]:
        """Run vespa-loadtest against the endpoint; the JSON document, stdout and stderr."""
        argv = [
            "--endpoint", ENDPOINT, "--api-key", API_KEY, "--autoscaler-url", env.autoscaler_url,
            "--payload", "openai_chat", "--max-tokens", "8", "--interval", "0.5", *args,
        ]  # fmt: skip
        config = parse(argv, {})
        out, err = io.StringIO(), io.StringIO()
        doc = await run(reactor, config, {}, out=out, err=err)
        return doc, out.getvalue(), err.getvalue()

    async def test_counts_match_the_standin_and_the_backends(self) -> None:
        """
        Worker a's backend fails from its 6th request on: the report's
        successes, 5xx failures and per-worker counts are what the backends
        and the stand-in recorded, and the send rate is the asked one.
        """
        env = await start_endpoint(self, failure=lambda n: "error" if n > 5 else None)
        json_path = os.path.join(self.mktemp() + "-report.json")
        html_path = self.mktemp() + "-report.html"
        doc, out, err = await self.load(
            env, "--rate", "40", "--requests", "100", "--json", json_path, "--html", html_path
        )
        a, b = env.a, env.b
        counts = doc["counts"]
        self.assertEqual(counts["sent"], 100)
        # The model was discovered through the endpoint: one more route.
        self.assertEqual(len(env.autoscaler.route_requests), 100 + 1)
        self.assertEqual(a.requests + b.requests, 100)
        self.assertEqual(counts["succeeded"], a.completed + b.completed)
        self.assertEqual(doc["failures"]["worker_5xx"], a.requests - a.completed)
        self.assertGreater(doc["failures"]["worker_5xx"], 0)
        self.assertEqual(counts["failed"], doc["failures"]["worker_5xx"])
        self.assertEqual(doc["workers"][env.a_url]["requests"], a.requests)
        self.assertEqual(doc["workers"][env.b_url]["requests"], b.requests)
        self.assertEqual(doc["workers"][env.a_url]["failed"], a.requests - a.completed)
        self.assertEqual(doc["status_codes"]["500"], a.requests - a.completed)
        # Rate control: the send rate, measured on the real clock, within
        # 5 % of the asked 40/s (a few percent: the machine may be busy).
        self.assertLess(abs(doc["rate"]["asked_rps"] - 40.0), 0.01)
        self.assertLess(abs(doc["rate"]["sent_rps"] - 40.0), 40.0 * 0.05)
        # Every request went out on time: none waited for another's answer.
        lateness = [r["sent"] - r["due"] for r in doc["requests"]]
        self.assertLess(max(lateness), 0.25)
        # The files: the JSON is the document; the page holds its charts.
        with open(json_path, encoding="utf-8") as f:
            self.assertEqual(json.load(f)["counts"], counts)
        with open(html_path, encoding="utf-8") as f:
            page = f.read()
        for chart_id in CHARTS:
            self.assertIn(f'<figure id="{chart_id}">', page)
        self.assertEqual(page.count("<svg"), len(CHARTS))
        self.assertIn("<polyline", page)
        self.assertNotIn("<script", page)
        self.assertIn(env.a_url, page)
        # The summary was printed; the live view, not a terminal, printed lines.
        self.assertIn("Load test of endpoint loadtest-endpoint", out)
        self.assertIn(f"worker 5xx {doc['failures']['worker_5xx']}", out)
        progress = [line for line in out.splitlines() if line.startswith("[")]
        self.assertGreaterEqual(len(progress), 2)
        self.assertIn("in flight", progress[0])
        self.assertIn("workers", progress[-1])
        self.assertIn(f"wrote {html_path}", err)

    async def test_streaming_measures_time_to_first_token(self) -> None:
        """
        Streamed answers from a backend that waits before its first token:
        the time to first token is that wait, the gaps its token pace.
        """
        env = await start_endpoint(self, latency=0.2)
        env.b.latency = 0.2
        doc, _, _ = await self.load(env, "--rate", "20", "--requests", "10", "--stream", "true")
        self.assertEqual(doc["counts"]["succeeded"], 10)
        ttft = doc["ttft_ms"]
        self.assertEqual(ttft["count"], 10)
        self.assertGreaterEqual(ttft["min"], 200.0)
        self.assertLess(ttft["p50"], 600.0)
        self.assertEqual([r["tokens"] for r in doc["requests"]], [8] * 10)
        gaps = doc["inter_token_ms"]
        # 8 tokens at 500 tokens/s: 7 gaps about 2 ms long (fewer when the
        # network joins two tokens into one chunk).
        self.assertGreater(gaps["count"], 10)
        self.assertLessEqual(gaps["count"], 70)
        self.assertLess(gaps["p50"], 50.0)
        self.assertGreaterEqual(doc["latency_ms"]["min"], ttft["min"])


class DirectLoadTests(TestCase):
    timeout = 30

    async def test_url_loads_one_unsecured_worker(self) -> None:
        """--url sends plain requests to one origin: every one reaches its backend."""
        backend = OpenAIServer(reactor, tokens_per_second=1000.0)
        url = await start_worker(self, backend, 1, 0, unsecured=True)
        config = parse(
            ["--url", url, "--payload", "openai_completions", "--model", "fake-model",
             "--rate", "50", "--requests", "20", "--plain"],
            {},
        )  # fmt: skip
        out = io.StringIO()
        doc = await run(reactor, config, {}, out=out, err=io.StringIO())
        self.assertEqual(doc["counts"]["succeeded"], 20)
        self.assertEqual(backend.completed, 20)
        self.assertEqual(list(doc["workers"]), [url])
        self.assertEqual(backend.bodies[-1]["model"], "fake-model")
        self.assertIn("prompt", backend.bodies[-1])


class InterruptTests(TestCase):
    timeout = 30

    async def interrupted(
        self, presses: int, latency: float
    ) -> tuple[SimpleNamespace, dict[str, Any], str]:
        """
        A run at 20/s against backends that take ``latency`` s to answer,
        Ctrl-C pressed ``presses`` times at 0.3 s.
        """
        env = await start_endpoint(self, latency=latency)
        env.b.latency = latency
        json_path = self.mktemp()
        config = parse(
            ["--endpoint", ENDPOINT, "--api-key", API_KEY, "--autoscaler-url",
             env.autoscaler_url, "--payload", "openai_chat", "--model", "fake-model",
             "--max-tokens", "2", "--rate", "20", "--requests", "1000", "--json", json_path],
            {},
        )  # fmt: skip
        err = io.StringIO()

        def on_start(load: Any) -> None:
            # The handler Ctrl-C runs, called as the signal would call it.
            hook = _interrupts(reactor, err)
            previous = signal.getsignal(signal.SIGINT)
            self.addCleanup(signal.signal, signal.SIGINT, previous)
            hook(load)
            handler = signal.getsignal(signal.SIGINT)
            assert callable(handler)
            for _ in range(presses):
                reactor.callLater(0.3, handler, signal.SIGINT, None)

        doc = await run(reactor, config, {}, out=io.StringIO(), err=err, on_start=on_start)
        with open(json_path, encoding="utf-8") as f:
            self.assertEqual(json.load(f)["counts"], doc["counts"])
        return env, doc, err.getvalue()

    async def test_first_ctrl_c_stops_sending_and_waits(self) -> None:
        """Once: sending stops at once, the requests in flight finish, the report is written."""
        env, doc, err = await self.interrupted(1, latency=0.5)
        self.assertTrue(doc["interrupted"])
        sent = doc["counts"]["sent"]
        self.assertGreater(sent, 3)
        self.assertLess(sent, 20)  # of 1000
        self.assertEqual(doc["counts"]["succeeded"], sent)
        self.assertEqual(env.a.completed + env.b.completed, sent)
        self.assertIn(f"waiting for {sent} in flight", err)

    async def test_second_ctrl_c_abandons(self) -> None:
        """Twice: the requests in flight are abandoned (the backends see them go)."""
        # The backends would answer after 5 s: the test ends long before.
        env, doc, err = await self.interrupted(2, latency=5.0)
        sent = doc["counts"]["sent"]
        self.assertEqual(doc["failures"]["abandoned"], sent)
        self.assertEqual(doc["counts"]["succeeded"], 0)
        self.assertIn("abandoning", err)
        # Those that reached a backend are cancelled there; the others
        # were still being routed, and routing stopped too.
        reached = env.a.requests + env.b.requests
        self.assertGreater(reached, 0)
        await until(lambda: env.a.cancelled + env.b.cancelled == reached)
        self.assertEqual(env.a.completed + env.b.completed, 0)
