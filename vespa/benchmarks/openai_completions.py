# -*- test-case-name: tests.test_benchmarks_probes -*-
"""
``--benchmark openai_completions``: an OpenAI-compatible server's
``/v1/completions`` (the legacy text endpoint: vLLM, SGLang, llama.cpp, ...).

Workload unit (a generated token), runs and model: :mod:`vespa.benchmarks.openai_api`.
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
