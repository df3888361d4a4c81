"""
Tests for :mod:`vespa.worker.workload`: each request's workload from its
payload, in the benchmark's unit, never a poison for the reports.
"""

from __future__ import annotations

import json
import math
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import ensureDeferred
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from tests.support_worker import ProtocolTestCase
from vespa.benchmarks.comfyui import JOB_UNITS
from vespa.benchmarks.settings import OpenAISettings
from vespa.protocol.envelope import NOT_PARSED
from vespa.worker.workload import (
    DEFAULT_MAX_TOKENS,
    MAX_PARSED_PAYLOAD,
    MAX_WORKLOAD,
    Workload,
    WorkloadError,
    generated_tokens,
)

CALLS: list[Any] = []


def raising(payload: Any) -> float:
    """A calculator with a bug."""
    raise KeyError("prompt")


def echo_weight(payload: Any) -> Any:
    """A calculator that returns the payload's own ``weight``, whatever it is."""
    CALLS.append(payload)
    return payload["weight"] if isinstance(payload, dict) else 1.0


def body(payload: Any) -> bytes:
    return json.dumps(payload).encode()


class Warnings:
    """The warnings of the workload module."""

    def __init__(self, testcase: SynchronousTestCase) -> None:
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.observe)
        testcase.addCleanup(globalLogPublisher.removeObserver, self.observe)

    def observe(self, event: dict[str, Any]) -> None:
        if (
            event.get("log_namespace") == "vespa.worker.workload"
            and event["log_level"] is LogLevel.warn
        ):
            self.events.append(event)


class GeneratedTokensTests(SynchronousTestCase):
    """The token-benchmark unit: the tokens a request asks for, in any API's spelling."""

    def test_default_is_one_benchmark_request(self) -> None:
        """The documented default is the benchmark's own max_tokens."""
        self.assertEqual(DEFAULT_MAX_TOKENS, float(OpenAISettings.max_tokens))
        self.assertEqual(DEFAULT_MAX_TOKENS, 256.0)

    def test_spellings(self) -> None:
        """OpenAI (new and old names, times n), TGI, Ollama; defaults where absent."""
        cases = [
            ({"messages": [], "max_tokens": 40}, 40.0),
            ({"max_completion_tokens": 50, "max_tokens": 40}, 50.0),
            ({"prompt": "x", "max_tokens": 30, "n": 3}, 90.0),
            ({"inputs": "x", "parameters": {"max_new_tokens": 64}}, 64.0),
            ({"model": "m", "options": {"num_predict": 12}}, 12.0),
            ({"model": "m", "options": {"num_predict": -1}}, DEFAULT_MAX_TOKENS),
            ({"model": "m", "options": {"num_predict": -2}}, DEFAULT_MAX_TOKENS),
            ({"messages": []}, DEFAULT_MAX_TOKENS),
            ({"max_tokens": "40"}, DEFAULT_MAX_TOKENS),
            ({"max_tokens": True}, DEFAULT_MAX_TOKENS),
            ({"max_tokens": 10**400}, math.inf),
            ([1, 2], DEFAULT_MAX_TOKENS),
            (None, DEFAULT_MAX_TOKENS),
        ]
        for payload, expected in cases:
            self.assertEqual(generated_tokens(payload), expected, payload)


class WorkloadTests(SynchronousTestCase):
    """The sources, and the fallback that keeps every value sound."""

    def test_auto_by_benchmark_kind(self) -> None:
        """auto: tokens for the token benchmarks, job units for ComfyUI, the cost otherwise."""
        payload = body({"max_tokens": 77, "parameters": {"max_new_tokens": 5}})
        for benchmark in ("openai_chat", "openai_completions", "tgi", "ollama"):
            self.assertEqual(Workload("auto", benchmark).of(payload, 3.0), 77.0, benchmark)
        self.assertEqual(Workload("auto", "benchmarks.tgi:benchmark").of(payload, 3.0), 77.0)
        self.assertEqual(Workload("auto", "comfyui").of(body({"input": {}}), 3.0), JOB_UNITS)
        custom = Workload("auto", "tests.support:fixed_benchmark")
        self.assertTrue(custom.uses_cost)
        self.assertEqual(custom.of(payload, 3.0), 3.0)

    def test_cost(self) -> None:
        """cost: the autoscaler's cost; --default-cost for a cost of 1 or less."""
        self.assertEqual(Workload("cost", "openai_chat").of(None, 12.5), 12.5)
        self.assertEqual(Workload("cost", "openai_chat", 50.0).of(None, 1.0), 50.0)
        self.assertEqual(Workload("cost", "openai_chat", 50.0).of(None, None), 50.0)
        self.assertEqual(Workload("cost", "openai_chat").of(None, None), 1.0)

    def test_user_calculator(self) -> None:
        """module:function gets the parsed payload, or None when it is not JSON."""
        workload = Workload("tests.test_workload:echo_weight", "openai_chat")
        del CALLS[:]
        self.assertEqual(workload.of(body({"weight": 7}), None), 7.0)
        self.assertEqual(workload.of(b"\xff not json", None), 1.0)
        self.assertEqual(workload.of(None, None), 1.0)
        self.assertEqual(CALLS, [{"weight": 7}, None, None])

    def test_payload_parsed_by_the_envelope(self) -> None:
        """A payload the envelope parser built is handed over, not parsed again."""
        workload = Workload("tests.test_workload:echo_weight", "openai_chat")
        del CALLS[:]
        self.assertEqual(workload.of(b"never parsed", None, {"weight": 5}), 5.0)
        self.assertEqual(workload.of(b"null", None, None), 1.0)  # JSON null, parsed
        self.assertEqual(workload.of(body({"weight": 6}), None, NOT_PARSED), 6.0)
        self.assertEqual(CALLS, [{"weight": 5}, None, {"weight": 6}])
        tokens = Workload("auto", "openai_chat")
        self.assertEqual(tokens.of(b"{}", 3.0, {"max_tokens": 12}), 12.0)

    def test_unknown_calculator(self) -> None:
        """A calculator that cannot be loaded is an error at start, naming it."""
        for spec in ("tests.test_workload:nothing_here", "no_such_module_x:f"):
            error = self.assertRaises(WorkloadError, Workload, spec, "openai_chat")
            self.assertIn(spec, str(error))

    def test_fallback_with_one_warning(self) -> None:
        """
        A calculator that raises, gives NaN, infinity, a negative, an absurd
        or a non-number value: the default counts, with one warning in all.
        """
        warnings = Warnings(self)
        workload = Workload("tests.test_workload:echo_weight", "openai_chat")
        bad = [math.nan, math.inf, -1.0, MAX_WORKLOAD * 10, 10**400, "12", None, [1]]
        for value in bad:
            self.assertEqual(workload.of(body({"weight": value}), None), DEFAULT_MAX_TOKENS)
        self.assertEqual(workload.fallbacks, len(bad))
        broken = Workload("tests.test_workload:raising", "comfyui")
        self.assertEqual(broken.of(b"{}", 1.0), JOB_UNITS)
        self.assertEqual(len(warnings.events), 2)  # one per Workload, not one per request

    def test_cost_of_1e308_falls_back(self) -> None:
        """An absurd cost (even a signed one) never reaches the ledger."""
        workload = Workload("cost", "openai_chat")
        self.assertEqual(workload.of(None, 1e308), DEFAULT_MAX_TOKENS)
        self.assertEqual(workload.fallbacks, 1)

    def test_large_payload_not_parsed(self) -> None:
        """A payload over MAX_PARSED_PAYLOAD counts the default, unread."""
        big = body({"max_tokens": 9, "prompt": "x" * MAX_PARSED_PAYLOAD})
        self.assertEqual(Workload("auto", "openai_chat").of(big, None), DEFAULT_MAX_TOKENS)

    @settings(max_examples=300, deadline=None, database=None)
    @given(
        payload=st.one_of(
            st.binary(max_size=64),
            st.recursive(
                st.none()
                | st.booleans()
                | st.floats()
                | st.integers()
                | st.just(10**400)
                | st.text(max_size=4),
                lambda inner: (
                    st.lists(inner, max_size=3)
                    | st.dictionaries(
                        st.sampled_from(
                            [
                                "max_tokens",
                                "max_completion_tokens",
                                "n",
                                "parameters",
                                "options",
                                "max_new_tokens",
                                "num_predict",
                                "weight",
                            ]
                        ),
                        inner,
                        max_size=4,
                    )
                ),
                max_leaves=8,
            ).map(lambda p: json.dumps(p).encode()),
        ),
        source=st.sampled_from(["auto", "tests.test_workload:echo_weight"]),
        cost=st.one_of(st.none(), st.floats()),
    )
    def test_always_sound(self, payload: bytes, source: str, cost: float | None) -> None:
        """Any payload, any cost, any source: a finite workload in [0, MAX_WORKLOAD]."""
        for benchmark in ("openai_chat", "comfyui", "tests.support:fixed_benchmark"):
            value = Workload(source, benchmark).of(payload, cost)
            self.assertIs(type(value), float)
            self.assertTrue(0.0 <= value <= MAX_WORKLOAD, value)


class WorkloadEndToEndTests(ProtocolTestCase):
    """The worker counts the workload its calculator computes from the payload."""

    async def test_tokens_from_the_payload_not_the_cost(self) -> None:
        """
        With a token calculator, a request signed with cost 1 asking for 300
        tokens counts 300 in the reports; one asking for none counts 256.
        """
        h = await self.start(workload="vespa.worker.workload:generated_tokens")
        await h.post(b"/echo", {"messages": [], "max_tokens": 300}, cost=1)
        await h.post(b"/echo", {"messages": []}, cost=1)
        report = await self.report(lambda r: r["cur_perf"] > 0)
        self.assertEqual(report["cur_perf"], 556.0)

    async def test_broken_calculator_never_500s(self) -> None:
        """A calculator that raises: each request served, counted at the default, warned once."""
        warnings = Warnings(self)
        h = await self.start(workload="tests.test_workload:raising")
        for _ in range(3):
            response, _ = await h.post(b"/echo", {"max_tokens": 5}, cost=2)
            self.assertEqual(response.code, 200)
        report = await self.report(lambda r: r["cur_perf"] > 0)
        self.assertEqual(report["cur_perf"], 3 * 100.0)  # a custom benchmark's default
        self.assertEqual(len(warnings.events), 1)
        self.assertEqual(self.env.autoscaler.refused_reports, [])


class ExclusiveWorkerTests(ProtocolTestCase):
    """``--max-wait-time 0``: refuse while anything is in flight."""

    async def test_zero_refuses_while_busy(self) -> None:
        """One request in flight, even at a huge throughput: the next is 429; then admitted."""
        h = await self.start(max_wait_time=0.0, throughput=1e9)
        first = ensureDeferred(h.post(b"/hang", {}, cost=1))
        await self.env.backend.wait_for_request(b"/hang")
        response, _ = await h.post(b"/echo", {}, cost=1)
        self.assertEqual(response.code, 429)
        first.cancel()
        first.addErrback(lambda f: None)  # the client gave up, as intended
        await self.ledger.when_idle()
        response, _ = await h.post(b"/echo", {}, cost=1)
        self.assertEqual(response.code, 200)
