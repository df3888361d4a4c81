# -*- test-case-name: tests.test_benchmarks_probes -*-
"""
``--benchmark openai_completions``: an OpenAI-compatible server's
``/v1/completions`` (the legacy text endpoint: vLLM, SGLang, llama.cpp, ...).

Workload unit: one generated token, so the autoscaler's ``cost`` of a request
is its expected output tokens (its ``max_tokens``).

A warm-up request, then ``VESPA_BENCHMARK_RUNS`` runs of
``VESPA_BENCHMARK_CONCURRENCY`` requests for ``VESPA_BENCHMARK_MAX_TOKENS``
tokens each; the result is the best run's counted tokens per second. The model
is ``VESPA_BENCHMARK_MODEL`` (or ``MODEL_NAME``), else the first one
``/v1/models`` lists. See :mod:`vespa.benchmarks.openai_api`.
"""

from __future__ import annotations

from vespa.benchmarks.openai_api import run_openai
from vespa.benchmarks.session import BackendSession
from vespa.benchmarks.settings import OpenAISettings


async def benchmark(
    backend_url: str, session: BackendSession, settings: OpenAISettings | None = None
) -> float:
    """
    Generated tokens per second of ``/v1/completions``.

    :param backend_url: the backend origin (for messages only).
    :param session: requests to the backend.
    :param settings: read from the environment when ``None``.
    """
    return await run_openai("completions", session, settings)
