# -*- test-case-name: tests.test_benchmarks_probes,tests.test_openai_server -*-
"""
What every fake model server shares: routing, pacing, saturation, failure
modes and counters. Each fake lists its routes and shapes its answers.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable
from typing import Any, ClassVar, Literal, cast

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure
from twisted.web.server import NOT_DONE_YET, Site

from vespa._typing import Resource

FailureMode = Literal["error", "hang", "wrong_shape", "job_failed"]
FailurePolicy = FailureMode | None | Callable[[int], "FailureMode | None"]

#: The vocabulary of the fake models: every token is one of these words
#: after a space.
VOCABULARY: tuple[str, ...] = tuple(
    """
    the quick brown fox jumps over lazy dog a river flows past quiet hills
    under grey sky while small birds sing of distant summer and old trees
    whisper stories to patient stones that remember every season in slow
    green light as evening settles on warm fields near home
    """.split()
)

Handler = Callable[[Any], "bytes | int"]


def encode(payload: Any) -> bytes:
    """A JSON body or event."""
    return json.dumps(payload).encode()


class BadRequest(Exception):
    """
    A request the fake refuses, with the status a real server would use.

    :ivar fields: more about the fault, for fakes whose errors carry them
        (OpenAI's ``param`` and ``code``).
    """

    def __init__(self, status: int, message: str, **fields: str | None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.fields = fields


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

    def text(self, count: int | None = None, offset: int = 0) -> str:
        """
        The text of the first ``count`` tokens (all produced by default),
        starting ``offset`` words into the vocabulary.
        """
        n = self.produced if count is None else count
        return "".join(self.word(i, offset) for i in range(n))

    @staticmethod
    def word(index: int, offset: int = 0) -> str:
        """Token number ``index`` (from 0) of a text starting at ``offset``."""
        return " " + VOCABULARY[(offset + index) % len(VOCABULARY)]


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
        # The counters of the class docstring (read-only properties below).
        self.requests = self.max_active = self._active = self._completed = self._cancelled = 0
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

        :raise BadRequest: for a request a real server would refuse.
        """
        raise NotImplementedError

    def accepted(self, job: Job) -> None:
        """A job will be answered: now, or when it gets its slot."""

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
    def active(self) -> int:
        """Requests generating now."""
        return self._active

    @property
    def waiting(self) -> int:
        """Requests queued for a slot."""
        return len(self._queue)

    @property
    def completed(self) -> int:
        """Requests answered in full."""
        return self._completed

    @property
    def cancelled(self) -> int:
        """Requests whose client went away first, running or waiting."""
        return self._cancelled

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
        # A trailing slash names the same endpoint, to every real server.
        path = request.path.rstrip(b"/") or b"/"
        handlers = {(b"GET", b"/health"): self._health, **self.routes()}
        # twisted.web answers HEAD as GET and drops the body.
        method = b"GET" if request.method == b"HEAD" else request.method
        handler = handlers.get((method, path))
        if handler is not None:
            return handler(request)
        said = f"{request.method.decode('latin-1')} {path.decode('latin-1')}"
        allowed = sorted(m for m, p in handlers if p == path)
        if not allowed:
            return self.refuse(request, BadRequest(404, f"Invalid URL ({said})"))
        if b"GET" in allowed:
            allowed.append(b"HEAD")
        request.setHeader(b"Allow", b", ".join(allowed))
        return self.refuse(
            request, BadRequest(405, f"Method not allowed: {said}", code="method_not_allowed")
        )

    def _ended(self, _: object) -> None:
        self.http_finished += 1

    def _health(self, request: Any) -> bytes:
        return self.json(request, 200, {"status": "ok"})

    @staticmethod
    def json(request: Any, status: int, payload: Any) -> bytes:
        """A complete JSON answer, for ``render`` to return."""
        request.setResponseCode(status)
        request.setHeader(b"Content-Type", b"application/json")
        return encode(payload)

    def refuse(self, request: Any, error: BadRequest) -> bytes:
        """An error answer, for ``render`` to return: ``{"error": message}``."""
        return self.json(request, error.status, {"error": error.message})

    def generate(self, request: Any) -> bytes | int:
        """The handler of a generation endpoint: parse, then fail or queue."""
        try:
            body = json.loads(request.content.read() or b"null")
        except ValueError as e:  # UnicodeDecodeError included
            return self.refuse(request, BadRequest(400, f"the body is not JSON: {e}"))
        self.bodies.append(body)
        try:
            job = self.parse(request, body)
        except BadRequest as e:
            return self.refuse(request, e)
        self.requests += 1
        job.number = self.requests
        failure = self.failure
        job.mode = failure(job.number) if callable(failure) else failure
        if job.mode == "error":
            return self.refuse(request, BadRequest(500, "the fake server failed, as asked"))
        if self.max_output_tokens is not None:
            job.tokens = min(job.tokens, self.max_output_tokens)
        request.notifyFinish().addErrback(self._lost, job)
        if job.mode == "hang":
            job.state = "hung"
            return NOT_DONE_YET
        self.accepted(job)
        if self.saturate_at is None or self.active < self.saturate_at:
            self._start(job)
        else:
            self._queue.append(job)
        return NOT_DONE_YET

    # -- pacing ----------------------------------------------------------------

    def _start(self, job: Job) -> None:
        job.state = "running"
        job.started_at = self.clock.seconds()
        self._active += 1
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
        self._active -= 1
        self._completed += 1
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
            self._active -= 1
        elif job.state != "hung":
            return
        job.state = "cancelled"
        self._cancelled += 1
        self._next()

    # -- helpers for subclasses ------------------------------------------------

    @staticmethod
    def event(job: Job, payload: Any) -> None:
        """Write one server-sent event."""
        job.request.write(b"data: " + encode(payload) + b"\n\n")

    @staticmethod
    def positive_int(body: dict[str, Any], *keys: str, default: int) -> int:
        """The first of ``keys`` in ``body``, a positive whole number."""
        for key in keys:
            value = body.get(key)
            if value is None:
                continue
            if type(value) is not int or value < 1:
                raise BadRequest(400, f"{key} must be a positive integer")
            return value
        return default


def json_object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise BadRequest(400, "the body must be a JSON object")
    return body


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
    # Bodies are JSON: nothing to gain from parsing form uploads into args.
    return make_site(server, reactor=clock or server.clock, parsePOSTFormSubmission=False)
