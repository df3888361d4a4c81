# -*- test-case-name: tests.test_benchmarks_probes -*-
"""
What the ``openai_chat`` and ``openai_completions`` probes share: OpenAI-
compatible servers (vLLM, SGLang, llama.cpp's server, TGI's Messages API,
Ollama's ``/v1``, LM Studio...) measured in generated tokens per second.

Workload unit: one generated token. The autoscaler's ``cost`` for a request
must then be its expected output tokens (its ``max_tokens``).

A warm-up request, then ``VESPA_BENCHMARK_RUNS`` runs of
``VESPA_BENCHMARK_CONCURRENCY`` requests for ``VESPA_BENCHMARK_MAX_TOKENS``
tokens each; the result is the best run's counted tokens per second. The model
is ``VESPA_BENCHMARK_MODEL`` (or ``MODEL_NAME``), else the first one
``/v1/models`` lists.

Tokens are counted, not assumed: from ``usage.completion_tokens``, or, in a
stream without usage, one token per content delta (how these servers stream:
one token per event, the reasoning models' ``reasoning_content`` included).
A stream that ends without a ``finish_reason`` was cut short (llama-cpp-python
ends a running stream with ``[DONE]`` when another request arrives) and fails
its request: it is not a measurement.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from twisted.web.client import ResponseFailed

from vespa.benchmarks.errors import BenchmarkError
from vespa.benchmarks.prompts import fresh_seeds, text_prompt
from vespa.benchmarks.runner import (
    Request,
    describe,
    discover_first_model,
    measure,
    read_json,
    snippet,
)
from vespa.benchmarks.session import BackendResponse, BackendSession
from vespa.benchmarks.settings import OpenAISettings

__all__ = ["StreamCounter", "count_tokens", "discover_model", "run_openai"]

Kind = Literal["chat", "completions"]

PATHS: dict[Kind, str] = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}


async def discover_model(session: BackendSession, timeout: float) -> str:
    """
    The first model ``GET /v1/models`` lists (the served model; LoRA adapters
    come after it).

    :raise BenchmarkError: saying to set ``VESPA_BENCHMARK_MODEL``.
    """
    return await discover_first_model(
        session, timeout, path="/v1/models", list_key="data", name_key="id"
    )


def _completion_tokens(event: Any) -> int | None:
    usage = event.get("usage") if isinstance(event, dict) else None
    tokens = usage.get("completion_tokens") if isinstance(usage, dict) else None
    # bool is an int; a JSON true is not a token count.
    if isinstance(tokens, int) and not isinstance(tokens, bool) and tokens >= 0:
        return tokens
    return None


def _has_text(choice: Any) -> bool:
    if not isinstance(choice, dict):
        return False
    delta = choice.get("delta")
    if isinstance(delta, dict):
        return any(
            isinstance(delta.get(key), str) and delta[key] != ""
            for key in ("content", "reasoning_content", "reasoning")
        )
    text = choice.get("text")
    return isinstance(text, str) and text != ""


class StreamCounter:
    """
    Counts the tokens of an OpenAI server-sent event stream, fed chunk by
    chunk (``response.collect(counter.feed)``).

    :ivar usage: ``usage.completion_tokens`` when the stream carried it.
    :ivar deltas: events with text (content, reasoning or completion text).
    :ivar finished: whether a choice ended with a ``finish_reason``.
    """

    def __init__(self) -> None:
        self._buffer = b""
        self.usage: int | None = None
        self.deltas = 0
        self.finished = False

    @property
    def tokens(self) -> int:
        """
        The server's own count when it sent a non-zero one (it is exact where
        a delta may carry several tokens), else the deltas.
        """
        return self.usage if self.usage else self.deltas

    def feed(self, data: bytes) -> None:
        """
        Take the next chunk of the stream.

        :raise BenchmarkError: when an event is not JSON or reports an error
            (vLLM streams its errors as an event after a 200).
        """
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            self._line(line.rstrip(b"\r"))

    def finish(self) -> None:
        """The stream ended: read an unterminated last line."""
        if self._buffer:
            line, self._buffer = self._buffer, b""
            self._line(line.rstrip(b"\r"))

    def _line(self, line: bytes) -> None:
        if not line.startswith(b"data:"):
            return
        payload = line[5:].strip()
        if not payload or payload == b"[DONE]":
            return
        try:
            event = json.loads(payload)
        except ValueError:
            raise BenchmarkError(f"a stream event is not JSON: {snippet(payload)}") from None
        if not isinstance(event, dict):
            return
        if event.get("error"):
            raise BenchmarkError(f"the stream reported an error: {snippet(event['error'])}")
        tokens = _completion_tokens(event)
        if tokens is not None:
            self.usage = tokens
        choices = event.get("choices")
        if isinstance(choices, list):
            self.deltas += sum(1 for choice in choices if _has_text(choice))
            self.finished = self.finished or any(
                isinstance(choice, dict) and choice.get("finish_reason") for choice in choices
            )


async def count_tokens(response: BackendResponse, request: Request) -> float:
    """
    The generated tokens of one answer, streamed or not.

    :raise BenchmarkError: when there is nothing to count.
    """
    content_type = b";".join(response.headers.getRawHeaders(b"content-type") or [])
    if request.json.get("stream") and b"json" not in content_type.lower():
        counter = StreamCounter()
        try:
            await response.collect(counter.feed)
        except ResponseFailed as e:
            # llama-cpp-python, interrupted, may end the stream mid-chunk.
            raise BenchmarkError(
                f"{request}: the stream was cut short after {counter.tokens} tokens "
                f"(the connection ended mid-answer: {describe(e)})"
            ) from e
        counter.finish()
        if counter.tokens <= 0:
            raise BenchmarkError(
                f"{request}: the stream carried no tokens "
                "(no content deltas, no usage.completion_tokens)"
            )
        if not counter.finished:
            raise BenchmarkError(
                f"{request}: the stream was cut short after {counter.tokens} tokens "
                "(it ended with no finish_reason)"
            )
        return counter.tokens
    body = await read_json(response, request)
    tokens = _completion_tokens(body)
    if tokens is None:
        raise BenchmarkError(
            f"{request}: the answer has no usage.completion_tokens to count ({snippet(body)}); "
            "VESPA_BENCHMARK_STREAM=true counts streamed tokens instead"
        )
    return tokens


def _request(
    kind: Kind, settings: OpenAISettings, model: str, max_tokens: int, seed: int
) -> Request:
    prompt = text_prompt(settings.prompt_words, seed)
    body: dict[str, Any] = {"model": model, "max_tokens": max_tokens, "temperature": 0.7}
    if kind == "chat":
        # A user message only: some chat templates (Gemma's) refuse a system one.
        body["messages"] = [{"role": "user", "content": prompt}]
    else:
        body["prompt"] = prompt
    if settings.stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return Request(PATHS[kind], body, units=max_tokens)


async def run_openai(kind: Kind, session: BackendSession, settings: OpenAISettings | None) -> float:
    """
    Measure an OpenAI-compatible server's generated tokens per second.

    :param kind: ``chat`` (``/v1/chat/completions``) or ``completions``
        (``/v1/completions``).
    :param settings: ``OpenAISettings.from_env()`` when ``None``.
    """
    settings = settings if settings is not None else OpenAISettings.from_env()
    model = settings.model or await discover_model(session, settings.timeout)
    return await measure(
        session,
        fresh_seeds(lambda seed: _request(kind, settings, model, settings.max_tokens, seed)),
        count_tokens,
        settings,
        unit="tokens",
        name=f"openai_{kind}",
    )
