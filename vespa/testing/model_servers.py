# -*- test-case-name: tests.test_benchmarks_probes -*-
"""
Fakes of the model servers the built-in benchmarks measure, with a speed and
failure modes set by the test.

- :class:`OpenAIServer`: ``/v1/models``, ``/v1/chat/completions`` and
  ``/v1/completions``, streaming or not, with or without ``usage``;
- :class:`TGIServer`: text-generation-inference's ``/generate``;
- :class:`OllamaServer`: ``/api/tags`` and ``/api/generate``;
- :class:`ComfyUIServer`: the ComfyUI API wrapper's ``/generate/sync``.

Each is a :mod:`twisted.web` resource, driven by the clock it is given (a
:class:`~twisted.internet.task.Clock` in tests, so timing is exact), and
serves ``GET /health``. Speed: a request produces ``tokens_per_second``
tokens per second after ``latency`` seconds (a ComfyUI job takes
``seconds_per_job``); at most ``saturate_at`` requests run at once and the
rest wait in arrival order, so throughput caps at ``saturate_at *
tokens_per_second``. ``max_output_tokens`` makes the model stop early, as at
an end-of-sequence token, so a probe that assumes instead of counting is
caught.

Failure modes (``failure=``), for the generation endpoints only:

- ``"error"``: 500 with a JSON error, at once;
- ``"hang"``: the request is accepted and never answered;
- ``"wrong_shape"``: 200, on time, with a body missing the fields a client
  reads (``usage``, ``generated_text``, ``eval_count``, ``status``);
- ``"job_failed"`` (ComfyUI only): 200 with ``"status": "failed"``, as the
  wrapper answers a job that failed.

:class:`InMemoryBackend` serves a fake without sockets and runs a benchmark
against it on the fake's :class:`~twisted.internet.task.Clock`, advancing the
clock only when nothing else can happen: what a probe measures there is exact.

``failure`` may also be a function of the request's number (from 1) that
returns a mode or ``None``, for failures that come and go.

Example::

    from twisted.internet import reactor
    from vespa.testing.model_servers import OpenAIServer, fake_site

    server = OpenAIServer(reactor, tokens_per_second=200.0, saturate_at=4)
    reactor.listenTCP(8000, fake_site(server, reactor), interface="127.0.0.1")
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable
from typing import Any, ClassVar, Literal, cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from vespa.benchmarks.session import BackendSession

__all__ = [
    "ComfyUIServer",
    "FailureMode",
    "FakeModelServer",
    "InMemoryBackend",
    "OllamaServer",
    "OpenAIServer",
    "TGIServer",
    "fake_site",
]

FailureMode = Literal["error", "hang", "wrong_shape", "job_failed"]
FailurePolicy = FailureMode | None | Callable[[int], "FailureMode | None"]

_WORDS = "the quick brown fox jumps over a lazy dog by the river".split()


class _BadRequest(Exception):
    """A request the fake refuses, with the status a real server would use."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Job:
    """
    One accepted generation request.

    :ivar tokens: the tokens it will produce (1 for a ComfyUI job).
    :ivar stream: whether the answer is streamed token by token.
    :ivar mode: its failure mode, ``None`` for a good answer.
    :ivar body: the parsed request body.
    :ivar produced: tokens produced so far.
    """

    def __init__(self, request: Any, body: Any, tokens: int, *, stream: bool = False) -> None:
        self.request = request
        self.body = body
        self.tokens = tokens
        self.stream = stream
        self.mode: FailureMode | None = None
        self.number = 0
        self.produced = 0
        self.started_at = 0.0
        self.state: Literal["waiting", "running", "hung", "done", "cancelled"] = "waiting"
        self.pending: IDelayedCall | None = None
        self.extra: dict[str, Any] = {}

    def running(self) -> bool:
        """
        Whether the job is generating. A method, not a comparison at each
        call site, because writing can lose the connection and cancel the
        job underneath the caller.
        """
        return self.state == "running"

    def text(self, count: int | None = None) -> str:
        """The text of the first ``count`` tokens (all produced by default)."""
        n = self.produced if count is None else count
        return "".join(" " + _WORDS[i % len(_WORDS)] for i in range(n))


class FakeModelServer(Resource):
    """
    The machinery every fake shares: routing, pacing, saturation, failures
    and counters. Subclasses list their routes and shape their answers.

    :param clock: paces generation; the global reactor when ``None``.
    :param tokens_per_second: the speed of each running request.
    :param latency: seconds before a request's first token.
    :param saturate_at: requests running at once; ``None``: no limit.
    :param failure: a failure mode, or a function of the request number.
    :param max_output_tokens: tokens after which the model stops by itself.
    :param interrupt_streams: end a running stream at its next token when
        another request waits, as llama-cpp-python does by default
        (``--interrupt_requests``): the stream closes with no final event.

    :ivar requests: generation requests received.
    :ivar active: requests generating now.
    :ivar waiting: requests queued for a slot.
    :ivar max_active: the most that ever ran at once.
    :ivar completed: requests answered in full.
    :ivar cancelled: requests whose client went away first.
    :ivar bodies: the last request bodies received, oldest first.
    :ivar http_requests: HTTP requests received, of any kind.
    :ivar http_finished: HTTP requests whose answer ended (or whose client
        went away): with ``http_requests``, tells a test driving the clock
        over real sockets that the server is waiting for time alone.
    """

    isLeaf = True
    #: The failure modes this fake knows.
    MODES: ClassVar[tuple[str, ...]] = ("error", "hang", "wrong_shape")

    def __init__(
        self,
        clock: IReactorTime | None = None,
        *,
        tokens_per_second: float = 1000.0,
        latency: float = 0.0,
        saturate_at: int | None = None,
        failure: FailurePolicy = None,
        max_output_tokens: int | None = None,
        interrupt_streams: bool = False,
    ) -> None:
        if not tokens_per_second > 0:
            raise ValueError(f"tokens_per_second must be positive, not {tokens_per_second!r}")
        if not latency >= 0:
            raise ValueError(f"latency must be at least 0, not {latency!r}")
        if saturate_at is not None and saturate_at < 1:
            raise ValueError(f"saturate_at must be at least 1 or None, not {saturate_at!r}")
        if isinstance(failure, str) and failure not in self.MODES:
            raise ValueError(f"failure must be one of {self.MODES}, not {failure!r}")
        Resource.__init__(self)
        if clock is None:
            from twisted.internet import reactor

            clock = cast(IReactorTime, reactor)
        self.clock = clock
        self.tokens_per_second = tokens_per_second
        self.latency = latency
        self.saturate_at = saturate_at
        self.failure = failure
        self.max_output_tokens = max_output_tokens
        self.interrupt_streams = interrupt_streams
        self.requests = 0
        self.active = 0
        self.max_active = 0
        self.completed = 0
        self.cancelled = 0
        self.bodies: deque[Any] = deque(maxlen=1000)
        self._queue: deque[Job] = deque()
        self._clients: set[Any] = set()
        self.http_requests = 0
        self.http_finished = 0

    # -- what subclasses provide ---------------------------------------------

    def routes(self) -> dict[tuple[bytes, bytes], Callable[[Any], bytes | int]]:
        """``(method, path) → handler`` beyond ``GET /health``."""
        return {}

    def parse(self, request: Any, body: Any) -> Job:
        """
        Validate a generation request.

        :raise _BadRequest: for a request a real server would refuse.
        """
        raise NotImplementedError

    def started(self, job: Job) -> None:
        """A job got its slot (streamed answers send their headers here)."""

    def token(self, job: Job) -> None:
        """A streamed job produced its next token (``job.produced`` counts it)."""

    def finished(self, job: Job) -> bytes:
        """
        A job is done: the rest of the answer (the whole body if not streamed).
        """
        raise NotImplementedError

    # -- counters --------------------------------------------------------------

    @property
    def waiting(self) -> int:
        """Requests queued for a slot."""
        return len(self._queue)

    @property
    def connections(self) -> int:
        """Client connections seen (by address: kept-alive ones count once)."""
        return len(self._clients)

    # -- HTTP ------------------------------------------------------------------

    def render(self, request: Any) -> bytes | int:
        """Route a request."""
        self.http_requests += 1
        request.notifyFinish().addBoth(self._ended)
        address = request.getClientAddress()
        self._clients.add((getattr(address, "host", None), getattr(address, "port", None)))
        path = request.path.rstrip(b"/") or b"/"
        handlers = {(b"GET", b"/health"): self._health, **self.routes()}
        handler = handlers.get((request.method, path))
        if handler is None:
            known = {p for _, p in handlers}
            status = 405 if path in known else 404
            route = f"{request.method.decode('latin-1')} {path.decode('latin-1')}"
            return self.json(request, status, {"error": f"no route {route}"})
        return handler(request)

    def _ended(self, _: object) -> None:
        self.http_finished += 1

    def _health(self, request: Any) -> bytes:
        return self.json(request, 200, {"status": "ok"})

    @staticmethod
    def json(request: Any, status: int, payload: Any) -> bytes:
        """A complete JSON answer, for ``render`` to return."""
        request.setResponseCode(status)
        request.setHeader(b"Content-Type", b"application/json")
        return json.dumps(payload).encode()

    def generate(self, request: Any) -> bytes | int:
        """The handler of a generation endpoint: parse, then fail or queue."""
        try:
            body = json.loads(request.content.read() or b"null")
        except ValueError:
            return self.json(request, 400, {"error": "the body is not JSON"})
        self.bodies.append(body)
        try:
            job = self.parse(request, body)
        except _BadRequest as e:
            return self.json(request, e.status, {"error": e.message})
        self.requests += 1
        job.number = self.requests
        failure = self.failure
        job.mode = failure(job.number) if callable(failure) else failure
        if job.mode == "error":
            return self.json(request, 500, {"error": "the fake server failed, as asked"})
        if self.max_output_tokens is not None:
            job.tokens = min(job.tokens, self.max_output_tokens)
        request.notifyFinish().addErrback(self._lost, job)
        if job.mode == "hang":
            job.state = "hung"
        elif self.saturate_at is None or self.active < self.saturate_at:
            self._start(job)
        else:
            self._queue.append(job)
        return NOT_DONE_YET

    # -- pacing ----------------------------------------------------------------

    def _start(self, job: Job) -> None:
        job.state = "running"
        job.started_at = self.clock.seconds()
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        self.started(job)
        if job.running():
            self._schedule(job)

    def _schedule(self, job: Job) -> None:
        # Due times count from the start, so a late timer does not slow the
        # job down, and advancing a Clock by t delivers everything due by t.
        if job.stream:
            due = job.started_at + self.latency + (job.produced + 1) / self.tokens_per_second
        else:
            due = job.started_at + self.latency + job.tokens / self.tokens_per_second
        delay = max(0.0, due - self.clock.seconds())
        job.pending = self.clock.callLater(delay, self._tick, job)

    def _tick(self, job: Job) -> None:
        job.pending = None
        if not job.running():
            return
        if job.stream:
            job.produced += 1
            self.token(job)
            if not job.running():
                return
            if self.interrupt_streams and self._queue:
                job.extra["interrupted"] = True
            elif job.produced < job.tokens:
                self._schedule(job)
                return
        else:
            job.produced = job.tokens
        tail = self.finished(job)
        if not job.running():
            return
        job.state = "done"
        self.active -= 1
        self.completed += 1
        if tail:
            if not job.stream:
                job.request.setHeader(b"Content-Length", b"%d" % (len(tail),))
            job.request.write(tail)
        job.request.finish()
        self._next()

    def _next(self) -> None:
        while self._queue and (self.saturate_at is None or self.active < self.saturate_at):
            self._start(self._queue.popleft())

    def _lost(self, reason: Failure, job: Job) -> None:
        # The client went away (a benchmark timing out, say): free the slot.
        if job.state == "waiting":
            self._queue.remove(job)
        elif job.state == "running":
            if job.pending is not None:
                job.pending.cancel()
                job.pending = None
            self.active -= 1
        elif job.state != "hung":
            return
        job.state = "cancelled"
        self.cancelled += 1
        self._next()

    # -- helpers for subclasses ------------------------------------------------

    @staticmethod
    def event(job: Job, payload: Any) -> None:
        """Write one server-sent event."""
        job.request.write(b"data: " + json.dumps(payload).encode() + b"\n\n")

    @staticmethod
    def positive_int(body: dict[str, Any], *keys: str, default: int) -> int:
        """The first of ``keys`` in ``body``, a positive whole number."""
        for key in keys:
            value = body.get(key)
            if value is None:
                continue
            if type(value) is not int or value < 1:
                raise _BadRequest(400, f"{key} must be a positive integer")
            return value
        return default


def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise _BadRequest(400, "the body must be a JSON object")
    return body


class OpenAIServer(FakeModelServer):
    """
    An OpenAI-compatible server (vLLM-like).

    :param model: the model it serves and lists; requests naming another get 404.
    :param usage: whether answers carry ``usage`` (streams: when asked with
        ``stream_options.include_usage``); ``False`` is a server that never
        counts for you.
    :param kwargs: as :class:`FakeModelServer`.
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

    def routes(self) -> dict[tuple[bytes, bytes], Callable[[Any], bytes | int]]:
        """The OpenAI endpoints."""
        return {
            (b"GET", b"/v1/models"): self._models,
            (b"POST", b"/v1/chat/completions"): self.generate,
            (b"POST", b"/v1/completions"): self.generate,
        }

    def _models(self, request: Any) -> bytes:
        listing = {"object": "list", "data": [{"id": self.model, "object": "model"}]}
        return self.json(request, 200, listing)

    def parse(self, request: Any, body: Any) -> Job:
        """Check the model and the prompt; read the token limit and streaming."""
        body = _object(body)
        if body.get("model") not in (None, self.model):
            raise _BadRequest(404, f"The model `{body['model']}` does not exist.")
        chat = request.path.rstrip(b"/").endswith(b"/chat/completions")
        if chat and not (isinstance(body.get("messages"), list) and body["messages"]):
            raise _BadRequest(400, "messages is required")
        if not chat and not isinstance(body.get("prompt"), str):
            raise _BadRequest(400, "prompt is required")
        tokens = self.positive_int(body, "max_completion_tokens", "max_tokens", default=16)
        job = Job(request, body, tokens, stream=body.get("stream") is True)
        options = body.get("stream_options")
        job.extra["chat"] = chat
        job.extra["include_usage"] = (
            job.stream and isinstance(options, dict) and options.get("include_usage") is True
        )
        return job

    def _chunk(self, job: Job, choices: list[Any]) -> dict[str, Any]:
        kind = "chat.completion.chunk" if job.extra["chat"] else "text_completion"
        return {"id": f"cmpl-{job.number}", "object": kind, "model": self.model, "choices": choices}

    def _usage(self, job: Job) -> dict[str, int]:
        return {
            "prompt_tokens": 10,
            "completion_tokens": job.produced,
            "total_tokens": 10 + job.produced,
        }

    def started(self, job: Job) -> None:
        """Streams open at once, with the role event for chat."""
        if not job.stream:
            job.request.setHeader(b"Content-Type", b"application/json")
            return
        job.request.setHeader(b"Content-Type", b"text/event-stream")
        job.request.write(b"")
        if job.extra["chat"] and job.mode is None:
            choice = {"index": 0, "delta": {"role": "assistant", "content": ""}}
            self.event(job, self._chunk(job, [choice]))

    def token(self, job: Job) -> None:
        """One content delta (an empty chunk in the wrong shape)."""
        if job.mode == "wrong_shape":
            self.event(job, {"id": f"cmpl-{job.number}", "object": "unexpected"})
            return
        word = job.text(job.produced)[len(job.text(job.produced - 1)) :]
        if job.extra["chat"]:
            choice: dict[str, Any] = {"index": 0, "delta": {"content": word}}
        else:
            choice = {"index": 0, "text": word}
        choice["finish_reason"] = None
        self.event(job, self._chunk(job, [choice]))

    def finished(self, job: Job) -> bytes:
        """The final events, or the whole completion."""
        if job.stream:
            if job.mode is None and not job.extra.get("interrupted"):
                end: dict[str, Any] = {"index": 0, "finish_reason": "length"}
                end["delta" if job.extra["chat"] else "text"] = {} if job.extra["chat"] else ""
                self.event(job, self._chunk(job, [end]))
                if job.extra["include_usage"] and self.usage:
                    self.event(job, {**self._chunk(job, []), "usage": self._usage(job)})
            return b"data: [DONE]\n\n"
        if job.mode == "wrong_shape":
            return json.dumps({"id": f"cmpl-{job.number}", "object": "unexpected"}).encode()
        if job.extra["chat"]:
            choice: dict[str, Any] = {"message": {"role": "assistant", "content": job.text()}}
        else:
            choice = {"text": job.text()}
        choice.update(index=0, finish_reason="length")
        kind = "chat.completion" if job.extra["chat"] else "text_completion"
        answer: dict[str, Any] = {
            "id": f"cmpl-{job.number}",
            "object": kind,
            "model": self.model,
            "choices": [choice],
        }
        if self.usage:
            answer["usage"] = self._usage(job)
        return json.dumps(answer).encode()


class TGIServer(FakeModelServer):
    """
    Hugging Face text-generation-inference's ``/generate`` (and ``/info``).

    :param kwargs: as :class:`FakeModelServer`.
    """

    def routes(self) -> dict[tuple[bytes, bytes], Callable[[Any], bytes | int]]:
        """``/generate`` and ``/info``."""
        return {
            (b"POST", b"/generate"): self.generate,
            (b"GET", b"/info"): lambda r: self.json(r, 200, {"model_id": "fake-model"}),
        }

    def parse(self, request: Any, body: Any) -> Job:
        """``inputs`` and ``parameters.max_new_tokens`` (default 20)."""
        body = _object(body)
        if not isinstance(body.get("inputs"), str):
            raise _BadRequest(422, "inputs must be a string")
        parameters = body.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise _BadRequest(422, "parameters must be an object")
        tokens = self.positive_int(parameters, "max_new_tokens", default=20)
        job = Job(request, body, tokens)
        job.extra["details"] = parameters.get("details") is True
        return job

    def started(self, job: Job) -> None:
        """JSON answers."""
        job.request.setHeader(b"Content-Type", b"application/json")

    def finished(self, job: Job) -> bytes:
        """``generated_text``, and ``details`` when asked."""
        if job.mode == "wrong_shape":
            return json.dumps({"text": job.text()}).encode()
        answer: dict[str, Any] = {"generated_text": job.text()}
        if job.extra["details"]:
            answer["details"] = {
                "finish_reason": "length",
                "generated_tokens": job.produced,
                "seed": None,
            }
        return json.dumps(answer).encode()


class OllamaServer(FakeModelServer):
    """
    Ollama's native API: ``/api/tags`` and ``/api/generate`` (newline-
    delimited JSON when streaming, Ollama's default).

    :param model: the model it has pulled; requests naming another get 404.
    :param kwargs: as :class:`FakeModelServer`.
    """

    def __init__(
        self, clock: IReactorTime | None = None, *, model: str = "fake:latest", **kwargs: Any
    ) -> None:
        super().__init__(clock, **kwargs)
        self.model = model

    def routes(self) -> dict[tuple[bytes, bytes], Callable[[Any], bytes | int]]:
        """``/``, ``/api/version``, ``/api/tags`` and ``/api/generate``."""
        return {
            (b"GET", b"/"): lambda r: b"Ollama is running",
            (b"GET", b"/api/version"): lambda r: self.json(r, 200, {"version": "0.5.7"}),
            (b"GET", b"/api/tags"): lambda r: self.json(
                r, 200, {"models": [{"name": self.model, "model": self.model}]}
            ),
            (b"POST", b"/api/generate"): self.generate,
        }

    def parse(self, request: Any, body: Any) -> Job:
        """``model``, ``prompt``, ``stream`` and ``options.num_predict`` (128)."""
        body = _object(body)
        if body.get("model") != self.model:
            raise _BadRequest(404, f"model '{body.get('model')}' not found")
        options = body.get("options") or {}
        if not isinstance(options, dict):
            raise _BadRequest(400, "options must be an object")
        tokens = self.positive_int(options, "num_predict", default=128)
        return Job(request, body, tokens, stream=body.get("stream", True) is not False)

    def started(self, job: Job) -> None:
        """Headers: NDJSON or JSON."""
        kind = b"application/x-ndjson" if job.stream else b"application/json"
        job.request.setHeader(b"Content-Type", kind)
        if job.stream:
            job.request.write(b"")

    def _line(self, job: Job, **fields: Any) -> bytes:
        return json.dumps({"model": self.model, **fields}).encode() + b"\n"

    def token(self, job: Job) -> None:
        """One line per token."""
        word = job.text(job.produced)[len(job.text(job.produced - 1)) :]
        job.request.write(self._line(job, response=word, done=False))

    def finished(self, job: Job) -> bytes:
        """The last line, or the whole answer, with ``eval_count``."""
        fields: dict[str, Any] = {"done": True, "done_reason": "length"}
        fields["response"] = "" if job.stream else job.text()
        if job.mode != "wrong_shape":
            fields["eval_count"] = job.produced
            fields["eval_duration"] = int(job.produced / self.tokens_per_second * 1e9)
        return self._line(job, **fields)


class ComfyUIServer(FakeModelServer):
    """
    The ComfyUI API wrapper's ``/generate/sync``: one job of
    ``seconds_per_job`` seconds per request, one at a time by default.

    :param seconds_per_job: how long one job runs.
    :param saturate_at: jobs running at once (ComfyUI runs one).
    :param kwargs: ``latency`` and ``failure`` as :class:`FakeModelServer`.
    """

    MODES = ("error", "hang", "wrong_shape", "job_failed")

    def __init__(
        self,
        clock: IReactorTime | None = None,
        *,
        seconds_per_job: float = 1.0,
        saturate_at: int | None = 1,
        **kwargs: Any,
    ) -> None:
        if not seconds_per_job > 0:
            raise ValueError(f"seconds_per_job must be positive, not {seconds_per_job!r}")
        super().__init__(
            clock, tokens_per_second=1.0 / seconds_per_job, saturate_at=saturate_at, **kwargs
        )

    def routes(self) -> dict[tuple[bytes, bytes], Callable[[Any], bytes | int]]:
        """``/generate/sync`` and ComfyUI's ``/system_stats``."""
        return {
            (b"POST", b"/generate/sync"): self.generate,
            (b"GET", b"/system_stats"): lambda r: self.json(r, 200, {"system": {}, "devices": []}),
        }

    def parse(self, request: Any, body: Any) -> Job:
        """An ``input`` with a ``workflow_json`` or a ``modifier``."""
        job_input = _object(body).get("input")
        if not isinstance(job_input, dict):
            raise _BadRequest(422, "input is required")
        if ("workflow_json" in job_input) == ("modifier" in job_input):
            raise _BadRequest(422, "give exactly one of workflow_json and modifier")
        job = Job(request, body, 1)
        job.extra["id"] = job_input.get("request_id") or f"job-{self.requests + 1}"
        return job

    def started(self, job: Job) -> None:
        """JSON answers."""
        job.request.setHeader(b"Content-Type", b"application/json")

    def finished(self, job: Job) -> bytes:
        """The wrapper's Result envelope."""
        if job.mode == "wrong_shape":
            return json.dumps({"id": job.extra["id"], "result": "ok"}).encode()
        failed = job.mode == "job_failed"
        result = {
            "id": job.extra["id"],
            "status": "failed" if failed else "completed",
            "message": "the fake job failed, as asked" if failed else "Processing complete.",
            "comfyui_response": {},
            "output": [] if failed else [{"filename": "ComfyUI_00001_.png", "type": "output"}],
            "timings": {"generation_ms": int(1000 / self.tokens_per_second)},
        }
        return json.dumps(result).encode()


def fake_site(server: FakeModelServer, clock: IReactorTime | None = None) -> Site:
    """
    A site serving ``server`` at its root, without an access log.

    :param clock: the site's reactor (its connection timeouts); the server's
        clock when ``None``.
    """

    class QuietSite(Site):
        def log(self, request: Any) -> None:
            pass

    make_site = cast(Callable[..., Site], QuietSite)
    return make_site(server, reactor=clock or server.clock)


class InMemoryBackend:
    """
    A fake served in memory (``treq.testing``), with every timer on its
    :class:`~twisted.internet.task.Clock`.

    :meth:`run` is a discrete-event simulation: it moves every byte that can
    move, and only when nothing can advances the clock to the next timer (a
    token, a job's end, a timeout). A benchmark's ``session.clock`` is that
    clock, so it measures the fake's configured speed exactly, in no real time.

    :param server: a fake whose clock is a ``Clock``.
    :ivar session: the session to give a benchmark.
    """

    #: The base URL of the in-memory backend.
    URL = "http://backend.invalid"

    def __init__(self, server: FakeModelServer) -> None:
        from treq.testing import StubTreq

        if not isinstance(server.clock, Clock):
            raise TypeError("the fake needs a twisted.internet.task.Clock")
        self.server = server
        self.clock: Clock = server.clock
        self._stub = StubTreq(server)
        self.session = BackendSession(self._stub, self.URL, self.clock)

    def settle(self) -> None:
        """Deliver every byte in flight, and those their delivery causes."""
        # treq's flush() moves what is buffered now; a response can start new
        # requests on new connections, so repeat until every pump is empty.
        for _ in range(10_000):
            self._stub.flush()
            pumps = self._stub._agent._pumps
            if not any(p.clientIO.stream or p.serverIO.stream for p in pumps):
                return
        raise AssertionError("the in-memory connections never went quiet")

    def run(self, work: Callable[[BackendSession], Any], max_steps: int = 1_000_000) -> Any:
        """
        Run ``work(session)`` (a benchmark call: a coroutine, a Deferred or a
        value) to its end.

        :return: its result.
        :raise: its exception, or ``AssertionError`` when it waits for
            something that can never happen.
        """
        d = Deferred.fromCoroutine(_awaited(work(self.session)))
        for _ in range(max_steps):
            self.settle()
            if d.called:
                break
            calls = self.clock.getDelayedCalls()
            if not calls:
                raise AssertionError("the benchmark waits, and nothing is scheduled to happen")
            due = min(call.getTime() for call in calls)
            self.clock.advance(max(0.0, due - self.clock.seconds()))
        else:
            raise AssertionError(f"the benchmark did not finish in {max_steps} steps")
        outcome: list[Any] = []
        d.addBoth(outcome.append)
        if isinstance(outcome[0], Failure):
            outcome[0].raiseException()
        return outcome[0]


async def _awaited(value: Any) -> Any:
    import inspect

    if inspect.isawaitable(value):
        return await value
    return value
