# -*- test-case-name: tests.test_benchmarks_probes -*-
"""
``--benchmark tgi``: Hugging Face text-generation-inference's ``/generate``.

Workload unit: one generated token, so the autoscaler's ``cost`` of a request
is its expected output tokens (its ``parameters.max_new_tokens``).

The probe asks for ``details`` and counts ``details.generated_tokens``; a
server that leaves the details out is credited with the ``max_new_tokens`` it
was asked for (the original Vespa probe's count, an upper bound when the model
stops early). An answer without ``generated_text`` is not a TGI answer and
counts as a failure.
"""

from __future__ import annotations

from typing import Any

from vespa.benchmarks.errors import BenchmarkError
from vespa.benchmarks.prompts import fresh_seeds, text_prompt
from vespa.benchmarks.runner import Request, measure, read_json, snippet
from vespa.benchmarks.session import BackendResponse, BackendSession
from vespa.benchmarks.settings import TGISettings


def _request(settings: TGISettings, max_new_tokens: int, seed: int) -> Request:
    parameters = {
        "max_new_tokens": max_new_tokens,
        "do_sample": True,
        "temperature": 0.7,
        "details": True,
    }
    body = {"inputs": text_prompt(settings.prompt_words, seed), "parameters": parameters}
    return Request("/generate", body, units=max_new_tokens)


async def count_tokens(response: BackendResponse, request: Request) -> float:
    """
    ``details.generated_tokens``, else the ``max_new_tokens`` asked for.

    :raise BenchmarkError: when the answer has no ``generated_text``.
    """
    body: Any = await read_json(response, request)
    if isinstance(body, list) and len(body) == 1:
        # The Inference API's shape: a one-element list.
        body = body[0]
    if not isinstance(body, dict) or not isinstance(body.get("generated_text"), str):
        raise BenchmarkError(f"{request}: the answer has no generated_text: {snippet(body)}")
    details = body.get("details")
    tokens = details.get("generated_tokens") if isinstance(details, dict) else None
    if isinstance(tokens, int) and not isinstance(tokens, bool) and tokens >= 0:
        return tokens
    return request.units


async def benchmark(
    backend_url: str, session: BackendSession, settings: TGISettings | None = None
) -> float:
    """
    Generated tokens per second of TGI's ``/generate``.

    :param backend_url: the backend origin (for messages only).
    :param session: requests to the backend.
    :param settings: ``TGISettings.from_env()`` when ``None``.
    """
    settings = settings if settings is not None else TGISettings.from_env()
    return await measure(
        session,
        fresh_seeds(lambda seed: _request(settings, settings.max_tokens, seed)),
        count_tokens,
        settings,
        unit="tokens",
        name="tgi",
    )
