# -*- test-case-name: tests.test_openai_server,tests.test_benchmarks_probes -*-
"""
The fake OpenAI-compatible model server (vLLM-like): the one that
``twistd vespa --demo`` runs, and that tests and benchmarks talk to.

It speaks the subset of the OpenAI HTTP API that model servers expose:
``GET /health``, ``GET /v1/models``, ``POST /v1/chat/completions`` and
``POST /v1/completions``, streamed (server-sent events) or not. It refuses
what a real server refuses, with OpenAI-shaped errors
(``{"error": {"message", "type", "param", "code"}}``). The text is
deterministic: words of a fixed vocabulary from an offset derived from the
prompt, so the same request always gets the same answer.
"""

from __future__ import annotations

import zlib
from typing import Any, cast

from twisted.internet.interfaces import IReactorTime

from vespa.testing.model_servers.base import (
    VOCABULARY,
    BadRequest,
    FakeModelServer,
    Handler,
    Job,
    encode,
    json_object,
)

__all__ = ["MAX_MODEL_LEN", "OpenAIServer"]

#: The context length the fake model claims. Like a real server it refuses
#: a prompt plus ``max_tokens`` beyond it; this also stops one request with an
#: absurd ``max_tokens`` from holding a slot for ever.
MAX_MODEL_LEN = 32768

#: ``max_tokens`` when the request gives none (OpenAI's legacy completions').
DEFAULT_MAX_TOKENS = 16

_CHAT = b"/v1/chat/completions"


class OpenAIServer(FakeModelServer):
    """
    An OpenAI-compatible server.

    Prompt tokens are counted by whitespace; each choice of a request (a
    completion's ``prompt`` may be a list) produces ``max_tokens`` tokens
    unless ``max_output_tokens`` stops it first.

    :param clock: as :class:`FakeModelServer`.
    :param model: the model it serves and lists; requests naming another get
        404 ``model_not_found``.
    :param usage: whether answers carry ``usage`` (streams: when asked with
        ``stream_options.include_usage``); ``False`` is a server that never
        counts for you.
    :param kwargs: as :class:`FakeModelServer` (speed, saturation, failures).
    """

    def __init__(
        self,
        clock: IReactorTime | None = None,
        *,
        model: str = "fake-model",
        usage: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(clock, **kwargs)
        self.model = model
        self.usage = usage
        self.created = int(self.clock.seconds())

    def routes(self) -> dict[tuple[bytes, bytes], Handler]:
        """The OpenAI endpoints."""
        return {
            (b"GET", b"/v1/models"): self._models,
            (b"POST", _CHAT): self.generate,
            (b"POST", b"/v1/completions"): self.generate,
        }

    def refuse(self, request: Any, error: BadRequest) -> bytes:
        """An OpenAI-shaped error."""
        kind = "server_error" if error.status >= 500 else "invalid_request_error"
        detail = {
            "message": error.message,
            "type": kind,
            "param": error.fields.get("param"),
            "code": error.fields.get("code"),
        }
        return self.json(request, error.status, {"error": detail})

    def _models(self, request: Any) -> bytes:
        listing = {
            "id": self.model,
            "object": "model",
            "created": self.created,
            "owned_by": "vespa",
        }
        return self.json(request, 200, {"object": "list", "data": [listing]})

    # -- requests --------------------------------------------------------------

    def parse(self, request: Any, body: Any) -> Job:
        """Check the model, the prompt, the token limit and the stream fields."""
        body = json_object(body)
        model = body.get("model")
        if model is not None and not isinstance(model, str):
            raise BadRequest(400, "model must be a string", param="model")
        if model is not None and model != self.model:
            raise BadRequest(
                404, f"The model `{model}` does not exist.", param="model", code="model_not_found"
            )
        chat = request.path.rstrip(b"/") == _CHAT
        prompts = _chat_prompts(body) if chat else _completion_prompts(body)
        prompt_tokens = sum(len(p.split()) for p in prompts)
        tokens = _token_limit(body, "max_completion_tokens") if chat else None
        if tokens is None:
            tokens = _token_limit(body, "max_tokens") or DEFAULT_MAX_TOKENS
        if prompt_tokens + tokens > MAX_MODEL_LEN:
            raise BadRequest(
                400,
                f"This model's maximum context length is {MAX_MODEL_LEN} tokens. However, you"
                f" requested {prompt_tokens + tokens} tokens ({prompt_tokens} in the prompt,"
                f" {tokens} in the completion). Please reduce the length of the prompt or"
                " completion.",
                param="max_tokens",
            )
        n = body.get("n")
        if n is not None and (type(n) is not int or n != 1):
            # Refused rather than answered with fewer choices than asked.
            raise BadRequest(400, "Only n=1 is supported by the fake model server", param="n")
        stream = False if body.get("stream") is None else body["stream"]
        if not isinstance(stream, bool):
            raise BadRequest(400, "stream must be a boolean", param="stream")
        job = Job(request, body, tokens, stream=stream)
        job.extra.update(
            chat=chat,
            include_usage=_include_usage(body, stream) and self.usage,
            prompt_tokens=prompt_tokens,
            # crc32, not hash(): str hashes are salted per process.
            offsets=[zlib.crc32(p.encode("utf-8")) % len(VOCABULARY) for p in prompts],
            created=int(self.clock.seconds()),
        )
        return job

    # -- answers ---------------------------------------------------------------

    def accepted(self, job: Job) -> None:
        """
        Headers at once, even for a request that waits for a slot: a stream
        opens and then waits for its first event, as with a busy scheduler.
        """
        if not job.stream:
            job.request.setHeader(b"Content-Type", b"application/json")
            return
        job.request.setHeader(b"Content-Type", b"text/event-stream")
        job.request.setHeader(b"Cache-Control", b"no-cache")
        job.request.write(b"")

    def started(self, job: Job) -> None:
        """A chat stream's role event, as soon as the model starts."""
        if job.stream and job.extra["chat"] and job.mode is None:
            self.event(job, self._chunk(job, 0, {"role": "assistant", "content": ""}))

    def token(self, job: Job) -> None:
        """One content delta per choice (an empty chunk in the wrong shape)."""
        if job.mode == "wrong_shape":
            self.event(job, {"id": self._id(job), "object": "unexpected"})
            return
        for index, offset in enumerate(job.extra["offsets"]):
            word = job.word(job.produced - 1, offset)
            self.event(
                job, self._chunk(job, index, {"content": word} if job.extra["chat"] else word)
            )
            if not job.running():
                return

    def finished(self, job: Job) -> bytes:
        """The final events and ``[DONE]``, or the whole completion."""
        if job.stream:
            if job.mode is None and not job.extra.get("interrupted"):
                end: dict[str, str] | str = {} if job.extra["chat"] else ""
                for index in range(len(job.extra["offsets"])):
                    self.event(job, self._chunk(job, index, end, "length"))
                if job.extra["include_usage"]:
                    self.event(job, {**self._base(job), "choices": [], "usage": self._usage(job)})
            return b"data: [DONE]\n\n"
        if job.mode == "wrong_shape":
            return encode({"id": self._id(job), "object": "unexpected"})
        choices = []
        for index, offset in enumerate(job.extra["offsets"]):
            text = job.text(offset=offset)
            choice: dict[str, Any] = {"index": index}
            if job.extra["chat"]:
                choice["message"] = {"role": "assistant", "content": text}
            else:
                choice["text"] = text
            choice.update(logprobs=None, finish_reason="length")
            choices.append(choice)
        answer = {**self._base(job), "choices": choices}
        answer["object"] = "chat.completion" if job.extra["chat"] else "text_completion"
        if self.usage:
            answer["usage"] = self._usage(job)
        return encode(answer)

    def _id(self, job: Job) -> str:
        return f"{'chatcmpl' if job.extra['chat'] else 'cmpl'}-{job.number}"

    def _base(self, job: Job) -> dict[str, Any]:
        kind = "chat.completion.chunk" if job.extra["chat"] else "text_completion"
        return {
            "id": self._id(job),
            "object": kind,
            "created": job.extra["created"],
            "model": self.model,
        }

    def _chunk(
        self, job: Job, index: int, content: dict[str, str] | str, finish: str | None = None
    ) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": index}
        choice["delta" if isinstance(content, dict) else "text"] = content
        choice.update(logprobs=None, finish_reason=finish)
        chunk = {**self._base(job), "choices": [choice]}
        if job.extra["include_usage"]:
            # OpenAI sends a null usage on every chunk but the last when asked.
            chunk["usage"] = None
        return chunk

    def _usage(self, job: Job) -> dict[str, int]:
        completion = job.produced * len(job.extra["offsets"])
        prompt: int = job.extra["prompt_tokens"]
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }


def _chat_prompts(body: dict[str, Any]) -> list[str]:
    """A chat's one prompt: the text of its messages."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest(400, "messages is required and must be a non-empty list", param="messages")
    return ["\n".join(_message_text(m, i) for i, m in enumerate(messages))]


def _completion_prompts(body: dict[str, Any]) -> list[str]:
    """A completion's prompts: one, or a batch (one choice each, as OpenAI does)."""
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        return cast(list[str], prompt)
    raise BadRequest(
        400,
        "prompt is required and must be a string or a non-empty list of strings",
        param="prompt",
    )


def _message_text(message: object, index: int) -> str:
    """The text of one chat message, its shape checked."""
    if not isinstance(message, dict):
        raise BadRequest(400, f"messages[{index}] must be an object", param="messages")
    if not isinstance(message.get("role"), str):
        raise BadRequest(400, f"messages[{index}].role must be a string", param="messages")
    content = message.get("content")
    if content is None:
        # An assistant message with only tool calls has null content.
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise BadRequest(
            400,
            f"messages[{index}].content must be a string, a list of parts or null",
            param="messages",
        )
    # Only text parts count; others (images, audio) are accepted and ignored,
    # as by a text model behind a multimodal-aware frontend.
    return "\n".join(_text_part(part, index) for part in content if _is_text_part(part, index))


def _is_text_part(part: object, index: int) -> bool:
    if not isinstance(part, dict):
        raise BadRequest(400, f"messages[{index}].content parts must be objects", param="messages")
    return part.get("type") == "text"


def _text_part(part: dict[str, Any], index: int) -> str:
    text = part.get("text")
    if not isinstance(text, str):
        raise BadRequest(
            400, f"messages[{index}].content text parts need a string 'text'", param="messages"
        )
    return text


def _token_limit(body: dict[str, Any], field: str) -> int | None:
    """``max_tokens`` or ``max_completion_tokens``: ``None`` if absent or null."""
    value = body.get(field)
    if value is None:
        return None
    # type(), not isinstance(): JSON true is not 1.
    if type(value) is not int or value < 1:
        raise BadRequest(400, f"{field} must be a positive integer", param=field)
    return value


def _include_usage(body: dict[str, Any], stream: bool) -> bool:
    """Whether a stream ends with a usage chunk, ``stream_options`` checked."""
    options = body.get("stream_options")
    if options is None:
        return False
    if not stream:
        raise BadRequest(
            400,
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            param="stream_options",
        )
    if not isinstance(options, dict):
        raise BadRequest(400, "stream_options must be an object", param="stream_options")
    flag = options.get("include_usage", False)
    if not isinstance(flag, bool):
        raise BadRequest(
            400, "stream_options.include_usage must be a boolean", param="stream_options"
        )
    return flag
