# -*- test-case-name: tests.test_benchmarks_probes -*-
"""
``--benchmark ollama``: Ollama's native ``/api/generate``, not streaming.

Workload unit: one generated token, so the autoscaler's ``cost`` of a request
is its expected output tokens (its ``options.num_predict``).

Tokens are Ollama's own ``eval_count``. The model is ``VESPA_BENCHMARK_MODEL``
(or ``MODEL_NAME``), else the first one ``/api/tags`` lists. Ollama runs
``OLLAMA_NUM_PARALLEL`` requests at once and queues the rest; set
``VESPA_BENCHMARK_CONCURRENCY`` to that number or more.
"""

from __future__ import annotations

from typing import Any

from vespa.benchmarks.errors import BenchmarkError
from vespa.benchmarks.prompts import fresh_seeds, text_prompt
from vespa.benchmarks.runner import (
    Request,
    discover_first_model,
    measure,
    read_json,
    snippet,
)
from vespa.benchmarks.session import BackendResponse, BackendSession
from vespa.benchmarks.settings import OllamaSettings


async def discover_model(session: BackendSession, timeout: float) -> str:
    """
    The first model ``GET /api/tags`` lists.

    :raise BenchmarkError: saying to set ``VESPA_BENCHMARK_MODEL``.
    """
    return await discover_first_model(
        session,
        timeout,
        path="/api/tags",
        list_key="models",
        name_key="name",
        hint="pull one, or ",
    )


def _request(settings: OllamaSettings, model: str, num_predict: int, seed: int) -> Request:
    body = {
        "model": model,
        "prompt": text_prompt(settings.prompt_words, seed),
        "stream": False,
        "options": {"num_predict": num_predict, "temperature": 0.7},
    }
    return Request("/api/generate", body, units=num_predict)


async def count_tokens(response: BackendResponse, request: Request) -> float:
    """
    ``eval_count``, the tokens Ollama generated.

    :raise BenchmarkError: when the answer has none.
    """
    body: Any = await read_json(response, request)
    tokens = body.get("eval_count") if isinstance(body, dict) else None
    if not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 0:
        raise BenchmarkError(f"{request}: the answer has no eval_count: {snippet(body)}")
    return tokens


async def benchmark(
    backend_url: str, session: BackendSession, settings: OllamaSettings | None = None
) -> float:
    """
    Generated tokens per second of Ollama's ``/api/generate``.

    :param backend_url: the backend origin (for messages only).
    :param session: requests to the backend.
    :param settings: ``OllamaSettings.from_env()`` when ``None``.
    """
    settings = settings if settings is not None else OllamaSettings.from_env()
    model = settings.model or await discover_model(session, settings.timeout)
    return await measure(
        session,
        fresh_seeds(lambda seed: _request(settings, model, settings.max_tokens, seed)),
        count_tokens,
        settings,
        unit="tokens",
        name="ollama",
    )
