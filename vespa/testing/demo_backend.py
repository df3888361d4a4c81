# -*- test-case-name: tests.test_demo_backend -*-
"""
A deterministic fake of an OpenAI-compatible model server.

:class:`DemoModelServer` is a :mod:`twisted.web` resource that speaks the
subset of the OpenAI HTTP API that model servers such as vLLM expose:

- ``GET /health``
- ``GET /v1/models``
- ``POST /v1/chat/completions`` (streaming and non-streaming)
- ``POST /v1/completions`` (streaming and non-streaming)

It is what ``twistd -n vespa --demo`` runs behind the proxy, and what tests
use when they need a backend that behaves like a real one.  Generated text is
made of words from a fixed word list, chosen from an offset derived from the
prompt, so the same request always produces the same answer.  Tokens are
produced one at a time at ``tokens_per_second`` using the supplied clock, so a
:class:`twisted.internet.task.Clock` makes the timing fully controllable, and
``max_concurrency`` models a server that saturates: requests beyond the limit
wait, in arrival order, for a free slot.

Example::

    from twisted.internet import reactor
    from vespa.testing.demo_backend import demo_site

    reactor.listenTCP(8000, demo_site(tokens_per_second=20.0),
                      interface="127.0.0.1")
    reactor.run()
"""

from __future__ import annotations

import json
import zlib
from collections import deque
from collections.abc import Callable, Sequence
from itertools import count
from typing import IO, Literal, Protocol, cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

__all__ = ["MAX_MODEL_LEN", "DemoModelServer", "demo_site"]

#: The context length the fake model claims.  Like a real server it rejects
#: requests whose prompt plus ``max_tokens`` exceed it; this also stops a
#: single request with an absurd ``max_tokens`` from occupying a slot forever.
MAX_MODEL_LEN = 32768

#: Default ``max_tokens`` when the request does not give one (OpenAI's legacy
#: completions default).
_DEFAULT_MAX_TOKENS = 16

#: The vocabulary of the fake model.  Every generated token is one of these
#: words preceded by a space.
_WORDS: tuple[str, ...] = tuple(
    """
    the quick brown fox jumps over lazy dog a river flows past quiet hills
    under grey sky while small birds sing of distant summer and old trees
    whisper stories to patient stones that remember every season in slow
    green light as evening settles on warm fields near home
    """.split()
)

_JSON_CONTENT_TYPE = b"application/json"
_SSE_CONTENT_TYPE = b"text/event-stream"

_HEALTH = b"/health"
_MODELS = b"/v1/models"
_CHAT = b"/v1/chat/completions"
_COMPLETIONS = b"/v1/completions"

#: Allowed methods per known path; anything else on these paths is a 405.
_ROUTES: dict[bytes, tuple[bytes, ...]] = {
    _HEALTH: (b"GET", b"HEAD"),
    _MODELS: (b"GET", b"HEAD"),
    _CHAT: (b"POST",),
    _COMPLETIONS: (b"POST",),
}

_Kind = Literal["chat", "completion"]
_State = Literal["waiting", "running", "done", "cancelled"]


# Twisted's interfaces only type-check with the mypy-zope plugin and much of
# twisted.web.server.Request is unannotated, so the few members used here are
# described by protocols and the Twisted objects are cast to them once.


class _DelayedCall(Protocol):
    """
    The part of :class:`~twisted.internet.interfaces.IDelayedCall` used here.
    """

    def cancel(self) -> None:
        """
        Unschedule the call.
        """


class _Clock(Protocol):
    """
    The part of :class:`~twisted.internet.interfaces.IReactorTime` used here.
    """

    def seconds(self) -> float:
        """
        :return: The current time in seconds.
        """

    def callLater(
        self, delay: float, callable: Callable[..., object], *args: object
    ) -> _DelayedCall:
        """
        Call ``callable(*args)`` after ``delay`` seconds.
        """


class _Request(Protocol):
    """
    The part of :class:`twisted.web.server.Request` used here.
    """

    method: bytes
    path: bytes
    content: IO[bytes] | None

    def setResponseCode(self, code: int) -> None:
        """
        Set the HTTP status code.
        """

    def setHeader(self, name: bytes, value: bytes) -> None:
        """
        Set a response header.
        """

    def write(self, data: bytes) -> None:
        """
        Write part of the response body, sending the headers first if needed.
        """

    def finish(self) -> None:
        """
        End the response.
        """

    def notifyFinish(self) -> Deferred[None]:
        """
        :return: A Deferred that fires when the response ends, or fails when
            the connection is lost first.
        """


# Resource.__init__ is unannotated; this is its actual signature.
_resource_init = cast(Callable[[Resource], None], Resource.__init__)


def _encode(payload: object) -> bytes:
    """
    Serialise a JSON payload compactly, as model servers do on the wire.

    :param payload: A JSON-serialisable value.
    :return: UTF-8 encoded JSON.
    """
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _error_body(
    message: str,
    *,
    error_type: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
) -> dict[str, object]:
    """
    Build an error payload in the shape the OpenAI API uses.

    :param message: Human readable description.
    :param error_type: The ``type`` field.
    :param param: The request field at fault, if any.
    :param code: A machine readable error code, if any.
    :return: The ``{"error": {...}}`` payload.
    """
    return {
        "error": {
            "message": message,
            "type": error_type,
            "param": param,
            "code": code,
        }
    }


class _RequestError(Exception):
    """
    A request that must be answered with an OpenAI-shaped error response.

    :param status: HTTP status code.
    :param message: Human readable description.
    :param param: The request field at fault, if any.
    :param code: A machine readable error code, if any.
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code


def _word_count(text: str) -> int:
    """
    Count "prompt tokens" the way this fake model tokenises: by whitespace.

    :param text: Some prompt text.
    :return: The number of whitespace-separated words.
    """
    return len(text.split())


def _message_text(message: object, index: int) -> str:
    """
    Extract the text of one chat message, validating its shape.

    :param message: One element of the ``messages`` list.
    :param index: Its position, for error messages.
    :return: The message's text content (empty if it has none).
    :raises _RequestError: If the message is malformed.
    """
    if not isinstance(message, dict):
        raise _RequestError(400, f"messages[{index}] must be an object", param="messages")
    role = message.get("role")
    if not isinstance(role, str):
        raise _RequestError(400, f"messages[{index}].role must be a string", param="messages")
    content = message.get("content")
    if content is None:
        # Assistant messages carrying only tool calls have null content.
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        # Multi-part content: only text parts count towards the prompt; other
        # parts (images, audio) are accepted and ignored like a text model
        # behind a multimodal-aware frontend would.
        texts: list[str] = []
        for part in content:
            if not isinstance(part, dict):
                raise _RequestError(
                    400,
                    f"messages[{index}].content parts must be objects",
                    param="messages",
                )
            if part.get("type") == "text":
                text = part.get("text")
                if not isinstance(text, str):
                    raise _RequestError(
                        400,
                        f"messages[{index}].content text parts need a string 'text'",
                        param="messages",
                    )
                texts.append(text)
        return "\n".join(texts)
    raise _RequestError(
        400,
        f"messages[{index}].content must be a string, a list of parts or null",
        param="messages",
    )


class _Generation:
    """
    The state of one accepted completion request.

    :param request: The HTTP request being answered.
    :param kind: Whether this is a chat completion or a legacy completion.
    :param response_id: The ``id`` field of every response object.
    :param created: The ``created`` field (integer seconds).
    :param prompts: One prompt text per choice; each seeds its own words.
    :param prompt_tokens: The prompt token count for ``usage``.
    :param max_tokens: How many tokens to produce per choice.
    :param stream: Whether to answer with server-sent events.
    :param include_usage: Whether a streamed answer ends with a usage chunk.
    """

    def __init__(
        self,
        request: _Request,
        *,
        kind: _Kind,
        response_id: str,
        created: int,
        prompts: Sequence[str],
        prompt_tokens: int,
        max_tokens: int,
        stream: bool,
        include_usage: bool,
    ) -> None:
        self.request = request
        self.kind: _Kind = kind
        self.response_id = response_id
        self.created = created
        # crc32 rather than hash(): str hashes are salted per process and the
        # output must be the same on every run.
        self.offsets = [zlib.crc32(p.encode("utf-8")) % len(_WORDS) for p in prompts]
        self.texts: list[list[str]] = [[] for _ in prompts]
        self.prompt_tokens = prompt_tokens
        self.max_tokens = max_tokens
        self.stream = stream
        self.include_usage = include_usage
        self.produced = 0
        self.started_at = 0.0
        self.pending: _DelayedCall | None = None
        self.state: _State = "waiting"

    def running(self) -> bool:
        """
        :return: Whether this generation is still producing output.  A method
            rather than a comparison at each call site because a write can
            lose the connection and cancel the generation underneath us.
        """
        return self.state == "running"

    @property
    def object_name(self) -> str:
        """
        The ``object`` field of the non-streamed response.
        """
        return "chat.completion" if self.kind == "chat" else "text_completion"

    @property
    def chunk_object_name(self) -> str:
        """
        The ``object`` field of streamed chunks.
        """
        return "chat.completion.chunk" if self.kind == "chat" else "text_completion"

    def usage(self) -> dict[str, int]:
        """
        :return: The OpenAI ``usage`` object for this generation.
        """
        completion_tokens = self.max_tokens * len(self.texts)
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": self.prompt_tokens + completion_tokens,
        }


class DemoModelServer(Resource):
    """
    A fake OpenAI-compatible model server.

    The counters :attr:`active`, :attr:`waiting`, :attr:`completed` and
    :attr:`cancelled` describe the generations this server has seen.

    :param clock: Source of time used to pace token generation; the global
        reactor if ``None``.
    :param model: The only model name this server serves.
    :param tokens_per_second: The generation speed of every running request.
    :param max_concurrency: At most this many generations run at once; the
        rest wait in arrival order.  ``None`` means no limit.
    :raises ValueError: If ``tokens_per_second`` is not positive or
        ``max_concurrency`` is less than 1.
    """

    isLeaf = True

    def __init__(
        self,
        clock: IReactorTime | None = None,
        *,
        model: str = "vespa-demo",
        tokens_per_second: float = 50.0,
        max_concurrency: int | None = None,
    ) -> None:
        # "not >" rather than "<=" so that NaN is rejected too; infinity is
        # allowed and means "every token at once".
        if not tokens_per_second > 0:
            raise ValueError(f"tokens_per_second must be positive, not {tokens_per_second!r}")
        if max_concurrency is not None and max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1 or None, not {max_concurrency!r}")
        _resource_init(self)
        if clock is None:
            # Imported here so that importing this module never installs the
            # default reactor as a side effect.
            from twisted.internet import reactor

            clock = cast(IReactorTime, reactor)
        self._clock = cast(_Clock, clock)
        self._model = model
        self._interval = 1.0 / tokens_per_second
        self._max_concurrency = max_concurrency
        self._created = int(self._clock.seconds())
        self._ids = count(1)
        self._queue: deque[_Generation] = deque()
        self._active = 0
        self._completed = 0
        self._cancelled = 0

    # -- counters ----------------------------------------------------------

    @property
    def model(self) -> str:
        """
        The model name this server serves.
        """
        return self._model

    @property
    def active(self) -> int:
        """
        The number of generations currently producing tokens.
        """
        return self._active

    @property
    def waiting(self) -> int:
        """
        The number of accepted requests waiting for a concurrency slot.
        """
        return len(self._queue)

    @property
    def completed(self) -> int:
        """
        The number of generations that produced all their tokens and were
        delivered.
        """
        return self._completed

    @property
    def cancelled(self) -> int:
        """
        The number of generations abandoned because the client went away,
        whether they were running or still waiting.
        """
        return self._cancelled

    # -- HTTP --------------------------------------------------------------

    def render(self, request: Request) -> bytes | int:
        """
        Route a request to the matching endpoint.

        :param request: The request to answer.
        :return: The response body, or ``NOT_DONE_YET`` for generations,
            which are answered later.
        """
        return self._route(cast(_Request, request))

    def _route(self, request: _Request) -> bytes | int:
        """
        Route a request to the matching endpoint.

        :param request: The request to answer.
        :return: The response body, or ``NOT_DONE_YET``.
        """
        path = request.path
        if len(path) > 1:
            # "/v1/models/" is the same endpoint to every real server.
            path = path.rstrip(b"/")
        method = request.method
        allowed = _ROUTES.get(path)
        if allowed is None:
            return self._error(
                request,
                _RequestError(
                    404,
                    f"Invalid URL ({method.decode('ascii', 'replace')}"
                    f" {path.decode('ascii', 'replace')})",
                ),
            )
        if method not in allowed:
            request.setHeader(b"Allow", b", ".join(allowed))
            return self._error(
                request,
                _RequestError(
                    405,
                    f"Method {method.decode('ascii', 'replace')} not allowed"
                    f" for {path.decode('ascii', 'replace')}",
                    code="method_not_allowed",
                ),
            )
        if path == _HEALTH:
            return self._json(request, 200, {"status": "ok"})
        if path == _MODELS:
            return self._json(request, 200, self._models())
        kind: _Kind = "chat" if path == _CHAT else "completion"
        try:
            generation = self._parse(request, kind)
        except _RequestError as error:
            return self._error(request, error)
        return self._accept(generation)

    def _json(self, request: _Request, status: int, payload: object) -> bytes:
        """
        Prepare a complete JSON response.

        :param request: The request being answered.
        :param status: HTTP status code.
        :param payload: The JSON body.
        :return: The encoded body, for ``render`` to return.
        """
        request.setResponseCode(status)
        request.setHeader(b"Content-Type", _JSON_CONTENT_TYPE)
        return _encode(payload)

    def _error(self, request: _Request, error: _RequestError) -> bytes:
        """
        Prepare an OpenAI-shaped error response.

        :param request: The request being answered.
        :param error: What went wrong.
        :return: The encoded body, for ``render`` to return.
        """
        return self._json(
            request,
            error.status,
            _error_body(error.message, param=error.param, code=error.code),
        )

    def _models(self) -> dict[str, object]:
        """
        :return: The ``/v1/models`` listing.
        """
        return {
            "object": "list",
            "data": [
                {
                    "id": self._model,
                    "object": "model",
                    "created": self._created,
                    "owned_by": "vespa",
                }
            ],
        }

    def _parse(self, request: _Request, kind: _Kind) -> _Generation:
        """
        Validate a completion request body.

        :param request: The request whose body to read.
        :param kind: Which endpoint was called.
        :return: A generation, not yet started.
        :raises _RequestError: If the body is not an acceptable request.
        """
        raw = request.content.read() if request.content is not None else b""
        try:
            body = json.loads(raw)
        except (UnicodeDecodeError, ValueError) as e:
            raise _RequestError(
                400, f"We could not parse the JSON body of your request: {e}"
            ) from None
        if not isinstance(body, dict):
            raise _RequestError(400, "The request body must be a JSON object")

        model = body.get("model")
        if model is not None:
            if not isinstance(model, str):
                raise _RequestError(400, "model must be a string", param="model")
            if model != self._model:
                raise _RequestError(
                    404,
                    f"The model `{model}` does not exist.",
                    param="model",
                    code="model_not_found",
                )

        prompts: list[str]
        if kind == "chat":
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages:
                raise _RequestError(
                    400,
                    "messages is required and must be a non-empty list",
                    param="messages",
                )
            texts = [_message_text(m, i) for i, m in enumerate(messages)]
            prompt_tokens = sum(_word_count(t) for t in texts)
            prompts = ["\n".join(texts)]
            max_tokens = self._max_tokens(body, "max_completion_tokens")
            if max_tokens is None:
                max_tokens = self._max_tokens(body, "max_tokens")
        else:
            prompt = body.get("prompt")
            if isinstance(prompt, str):
                prompts = [prompt]
            elif isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
                # A batch: one choice per prompt, as the OpenAI API does.
                prompts = cast(list[str], prompt)
            else:
                raise _RequestError(
                    400,
                    "prompt is required and must be a string or a non-empty list of strings",
                    param="prompt",
                )
            prompt_tokens = sum(_word_count(p) for p in prompts)
            max_tokens = self._max_tokens(body, "max_tokens")
        if max_tokens is None:
            max_tokens = _DEFAULT_MAX_TOKENS
        if prompt_tokens + max_tokens > MAX_MODEL_LEN:
            raise _RequestError(
                400,
                f"This model's maximum context length is {MAX_MODEL_LEN} tokens."
                f" However, you requested {prompt_tokens + max_tokens} tokens"
                f" ({prompt_tokens} in the prompt, {max_tokens} in the"
                " completion). Please reduce the length of the prompt or"
                " completion.",
                param="max_tokens",
            )

        n = body.get("n")
        if n is not None and (type(n) is not int or n != 1):
            # Refuse rather than silently return fewer choices than asked.
            raise _RequestError(400, "Only n=1 is supported by the demo model server", param="n")

        stream = body.get("stream")
        if stream is None:
            stream = False
        if not isinstance(stream, bool):
            raise _RequestError(400, "stream must be a boolean", param="stream")
        include_usage = False
        stream_options = body.get("stream_options")
        if stream_options is not None:
            if not stream:
                raise _RequestError(
                    400,
                    "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                    param="stream_options",
                )
            if not isinstance(stream_options, dict):
                raise _RequestError(400, "stream_options must be an object", param="stream_options")
            flag = stream_options.get("include_usage", False)
            if not isinstance(flag, bool):
                raise _RequestError(
                    400,
                    "stream_options.include_usage must be a boolean",
                    param="stream_options",
                )
            include_usage = flag

        prefix = "chatcmpl" if kind == "chat" else "cmpl"
        return _Generation(
            request,
            kind=kind,
            response_id=f"{prefix}-{next(self._ids)}",
            created=int(self._clock.seconds()),
            prompts=prompts,
            prompt_tokens=prompt_tokens,
            max_tokens=max_tokens,
            stream=stream,
            include_usage=include_usage,
        )

    @staticmethod
    def _max_tokens(body: dict[str, object], field: str) -> int | None:
        """
        Read and validate a token limit field.

        :param body: The request body.
        :param field: ``max_tokens`` or ``max_completion_tokens``.
        :return: The limit, or ``None`` if the field is absent or null.
        :raises _RequestError: If the value is not a positive integer.
        """
        value = body.get(field)
        if value is None:
            return None
        # type() rather than isinstance(): JSON true must not count as 1.
        if type(value) is not int or value < 1:
            raise _RequestError(400, f"{field} must be a positive integer", param=field)
        return value

    # -- generation --------------------------------------------------------

    def _accept(self, generation: _Generation) -> int:
        """
        Start a generation now, or queue it if all slots are busy.

        :param generation: A freshly parsed generation.
        :return: ``NOT_DONE_YET``.
        """
        request = generation.request
        request.notifyFinish().addErrback(self._disconnected, generation)
        if generation.stream:
            request.setHeader(b"Content-Type", _SSE_CONTENT_TYPE)
            request.setHeader(b"Cache-Control", b"no-cache")
            # Commit the status line and headers now, even if the request has
            # to wait for a slot: clients (and the proxy) see the stream open
            # at once and then wait for the first event, as with a real
            # server whose scheduler is busy.
            request.write(b"")
        else:
            request.setHeader(b"Content-Type", _JSON_CONTENT_TYPE)
        if self._has_free_slot():
            self._start(generation)
        else:
            self._queue.append(generation)
        return NOT_DONE_YET

    def _has_free_slot(self) -> bool:
        """
        :return: Whether another generation may start now.
        """
        return self._max_concurrency is None or self._active < self._max_concurrency

    def _start(self, generation: _Generation) -> None:
        """
        Begin producing tokens for a generation.

        :param generation: A waiting generation.
        """
        generation.state = "running"
        generation.started_at = self._clock.seconds()
        self._active += 1
        if generation.stream and generation.kind == "chat":
            # The role chunk goes out as soon as the model starts, like the
            # real servers' first event, before any content is generated.
            self._write_event(
                generation,
                self._chunk(generation, 0, {"role": "assistant", "content": ""}, None),
            )
            if not generation.running():
                return
        self._schedule(generation)

    def _start_waiting(self) -> None:
        """
        Start queued generations, oldest first, while slots are free.
        """
        while self._queue and self._has_free_slot():
            self._start(self._queue.popleft())

    def _schedule(self, generation: _Generation) -> None:
        """
        Arrange for the next token of a generation to be produced.

        Due times are computed from the start time rather than chained from
        the previous call, so that a late-running reactor does not slow the
        stream down and advancing a test clock by ``t`` yields every token
        due by ``t``.

        :param generation: A running generation.
        """
        due = generation.started_at + (generation.produced + 1) * self._interval
        delay = max(0.0, due - self._clock.seconds())
        generation.pending = self._clock.callLater(delay, self._tick, generation)

    def _tick(self, generation: _Generation) -> None:
        """
        Produce one token for every choice of a generation.

        :param generation: A running generation.
        """
        generation.pending = None
        if not generation.running():
            return
        for index, offset in enumerate(generation.offsets):
            token = " " + _WORDS[(offset + generation.produced) % len(_WORDS)]
            generation.texts[index].append(token)
            if generation.stream:
                if generation.kind == "chat":
                    chunk = self._chunk(generation, index, {"content": token}, None)
                else:
                    chunk = self._chunk(generation, index, token, None)
                self._write_event(generation, chunk)
                if not generation.running():
                    return
        generation.produced += 1
        if generation.produced >= generation.max_tokens:
            self._complete(generation)
        else:
            self._schedule(generation)

    def _complete(self, generation: _Generation) -> None:
        """
        Deliver the end of a generation and free its slot.

        :param generation: A running generation whose tokens are all produced.
        """
        request = generation.request
        if generation.stream:
            events: list[object] = []
            for index in range(len(generation.texts)):
                if generation.kind == "chat":
                    events.append(self._chunk(generation, index, {}, "length"))
                else:
                    events.append(self._chunk(generation, index, "", "length"))
            if generation.include_usage:
                usage_chunk = self._chunk_base(generation)
                usage_chunk["choices"] = []
                usage_chunk["usage"] = generation.usage()
                events.append(usage_chunk)
            for event in events:
                self._write_event(generation, event)
                if not generation.running():
                    return
            request.write(b"data: [DONE]\n\n")
        else:
            body = _encode(self._response(generation))
            request.setHeader(b"Content-Length", b"%d" % (len(body),))
            request.write(body)
        if not generation.running():
            return
        generation.state = "done"
        self._active -= 1
        self._completed += 1
        request.finish()
        self._start_waiting()

    def _disconnected(self, reason: Failure, generation: _Generation) -> None:
        """
        Abandon a generation whose client went away.

        :param reason: Why the connection was lost; consumed here because a
            client hanging up is routine, not an error.
        :param generation: The generation being answered on that connection.
        """
        if generation.state == "waiting":
            self._queue.remove(generation)
        elif generation.state == "running":
            if generation.pending is not None:
                generation.pending.cancel()
                generation.pending = None
            self._active -= 1
        else:
            return
        generation.state = "cancelled"
        self._cancelled += 1
        self._start_waiting()

    def _write_event(self, generation: _Generation, payload: object) -> None:
        """
        Send one server-sent event.

        :param generation: The generation the event belongs to.
        :param payload: The event's JSON data.
        """
        generation.request.write(b"data: " + _encode(payload) + b"\n\n")

    def _chunk_base(self, generation: _Generation) -> dict[str, object]:
        """
        :param generation: A streaming generation.
        :return: The fields every streamed chunk carries.
        """
        base: dict[str, object] = {
            "id": generation.response_id,
            "object": generation.chunk_object_name,
            "created": generation.created,
            "model": self._model,
        }
        return base

    def _chunk(
        self,
        generation: _Generation,
        index: int,
        content: dict[str, str] | str,
        finish_reason: str | None,
    ) -> dict[str, object]:
        """
        Build one streamed chunk carrying a delta for one choice.

        :param generation: A streaming generation.
        :param index: The choice index.
        :param content: A chat ``delta`` object, or completion ``text``.
        :param finish_reason: ``None`` until the choice's final chunk.
        :return: The chunk payload.
        """
        choice: dict[str, object] = {"index": index}
        if isinstance(content, dict):
            choice["delta"] = content
        else:
            choice["text"] = content
        choice["logprobs"] = None
        choice["finish_reason"] = finish_reason
        chunk = self._chunk_base(generation)
        chunk["choices"] = [choice]
        if generation.include_usage:
            # OpenAI sends an explicit null usage on every chunk but the last
            # when usage was requested.
            chunk["usage"] = None
        return chunk

    def _response(self, generation: _Generation) -> dict[str, object]:
        """
        Build the non-streamed response of a finished generation.

        :param generation: A generation whose tokens are all produced.
        :return: The response payload.
        """
        choices: list[dict[str, object]] = []
        for index, tokens in enumerate(generation.texts):
            text = "".join(tokens)
            choice: dict[str, object] = {"index": index}
            if generation.kind == "chat":
                choice["message"] = {"role": "assistant", "content": text}
            else:
                choice["text"] = text
            choice["logprobs"] = None
            choice["finish_reason"] = "length"
            choices.append(choice)
        return {
            "id": generation.response_id,
            "object": generation.object_name,
            "created": generation.created,
            "model": self._model,
            "choices": choices,
            "usage": generation.usage(),
        }


class _QuietSite(Site):
    """
    A :class:`~twisted.web.server.Site` that keeps no access log: the demo
    backend's traffic is the proxy's own and would only duplicate its logs.
    """

    def log(self, request: http.Request) -> None:
        """
        Discard the access log line for ``request``.

        :param request: The finished request.
        """


def demo_site(
    clock: IReactorTime | None = None,
    *,
    model: str = "vespa-demo",
    tokens_per_second: float = 50.0,
    max_concurrency: int | None = None,
) -> Site:
    """
    Build a site serving a :class:`DemoModelServer` at its root, with the
    access log disabled.

    :param clock: Passed to :class:`DemoModelServer`; also used by the site
        for its connection timeouts.  The global reactor if ``None``.
    :param model: Passed to :class:`DemoModelServer`.
    :param tokens_per_second: Passed to :class:`DemoModelServer`.
    :param max_concurrency: Passed to :class:`DemoModelServer`.
    :return: A site ready for ``listenTCP``.
    """
    resource = DemoModelServer(
        clock,
        model=model,
        tokens_per_second=tokens_per_second,
        max_concurrency=max_concurrency,
    )
    # Bodies are JSON: there is nothing to gain from Twisted parsing form
    # uploads into request.args.
    # Site.__init__ is unannotated; it takes the resource plus HTTPFactory
    # keyword arguments.
    make_site = cast(Callable[..., Site], _QuietSite)
    return make_site(resource, reactor=clock, parsePOSTFormSubmission=False)
