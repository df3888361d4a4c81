# -*- test-case-name: tests.test_benchmarks -*-
"""
Throughput of an OpenAI-compatible chat server (vLLM, llama.cpp, TGI's
Messages API, ...), in generated tokens per second.

Workload unit: one generated token. The autoscaler's ``cost`` for a request
must then be its expected output tokens (its ``max_tokens``).

A warm-up request, then several runs of concurrent requests; the result is
the best run's ``sum(completion tokens) / elapsed``. The model is discovered
from ``/v1/models`` unless ``MODEL_NAME`` is set.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.defer import DeferredList

from vespa.benchmarks.session import BackendSession
from vespa.log import get_logger

log = get_logger(__name__)

PROMPT = (
    "Write a long, detailed story about a zebra who learns to paint, "
    "describing every colour and every brush stroke."
)


async def _model(session: BackendSession) -> str:
    name = os.environ.get("MODEL_NAME")
    if name:
        return name
    response = await session.get("/v1/models")
    if response.code != 200:
        raise RuntimeError(f"GET /v1/models answered {response.code}; set MODEL_NAME")
    data = await response.json()
    return str(data["data"][0]["id"])


async def _one(session: BackendSession, model: str, max_tokens: int) -> int:
    response = await session.post(
        "/v1/chat/completions",
        json={
            "model": model,
            "messages": [{"role": "user", "content": PROMPT}],
            "max_tokens": max_tokens,
            "temperature": 0.7,
        },
    )
    body: Any = await response.json()
    if response.code != 200:
        raise RuntimeError(f"the backend answered {response.code}: {str(body)[:200]}")
    return int(body["usage"]["completion_tokens"])


async def benchmark(backend_url: str, session: BackendSession) -> float:
    """
    Measure generated tokens per second at the server's best concurrency tried.

    Settings from the environment: ``VESPA_BENCHMARK_CONCURRENCY`` (8),
    ``VESPA_BENCHMARK_RUNS`` (2), ``VESPA_BENCHMARK_MAX_TOKENS`` (64).
    """
    concurrency = int(os.environ.get("VESPA_BENCHMARK_CONCURRENCY", "8"))
    runs = int(os.environ.get("VESPA_BENCHMARK_RUNS", "2"))
    max_tokens = int(os.environ.get("VESPA_BENCHMARK_MAX_TOKENS", "64"))
    model = await _model(session)
    await _one(session, model, min(max_tokens, 16))  # warm-up
    best = 0.0
    for run in range(runs):
        started = session.clock.seconds()
        results = await DeferredList(
            [_deferred(_one(session, model, max_tokens)) for _ in range(concurrency)],
            consumeErrors=True,
        )
        elapsed = session.clock.seconds() - started
        tokens = sum(value for ok, value in results if ok)
        failures = [value for ok, value in results if not ok]
        if failures:
            log.warn(
                "benchmark run {run}: {n} requests failed: {why}",
                run=run,
                n=len(failures),
                why=failures[0].getErrorMessage(),
            )
        if tokens and elapsed > 0:
            best = max(best, tokens / elapsed)
    if best <= 0:
        raise RuntimeError("no benchmark request succeeded")
    return best


def _deferred(coroutine: Any) -> Any:
    from twisted.internet.defer import Deferred

    return Deferred.fromCoroutine(coroutine)
