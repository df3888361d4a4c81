# -*- test-case-name: tests.test_loadtest_runner,tests.test_loadtest_e2e -*-
"""
The run: arrivals from the schedule become requests through a
:class:`~vespa.loadtest.target.Target`, each recorded as a
:class:`~vespa.loadtest.stats.Sample` from sending to the end of its answer.

An arrival that finds ``max_in_flight`` requests in flight is not sent (and
counted as skipped): waiting for a place would turn the open loop into a
closed one and hide how the endpoint falls behind.

:meth:`LoadRun.stop` the first time stops sending and lets the requests in
flight finish; the second time abandons them (each counted ``abandoned``).
Either way :attr:`LoadRun.finished` fires with the figures.

Why a request failed (:data:`~vespa.loadtest.stats.CAUSES`): an error the
client core raised is ``route`` when the autoscaler caused it,
``timeout`` for a deadline or a worker that stayed silent, ``connection``
for a worker that could not be reached or broke off; an answer is
``429`` (its ``Retry-After`` kept), ``worker_4xx`` or ``worker_5xx``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import KW_ONLY, InitVar, dataclass

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from vespa.client.errors import DeadlineExceeded, WorkerTimeout
from vespa.client.policy import DispatchFailed
from vespa.client.upstream import Answer
from vespa.errors import VespaError
from vespa.loadtest.payloads import RequestSpec, Source
from vespa.loadtest.schedule import Arrivals, RateProfile
from vespa.loadtest.stats import Sample, Stats
from vespa.loadtest.target import Started, Target
from vespa.loadtest.tokens import TokenCounter
from vespa.log import get_logger

__all__ = ["LoadRun", "cause_of_error", "cause_of_status"]

log = get_logger(__name__)

#: Content types of streamed answers, whose tokens are timed.
_STREAMING_TYPES = (b"text/event-stream", b"application/x-ndjson", b"application/jsonl")


def cause_of_status(code: int) -> str | None:
    """The failure an answer's status is, or ``None`` for a success."""
    if code == 429:
        return "429"
    if 400 <= code < 500:
        return "worker_4xx"
    if code >= 500:
        return "worker_5xx"
    return None


def cause_of_error(error: VespaError) -> str:
    """The failure an error of the client core is."""
    if isinstance(error, (WorkerTimeout, DeadlineExceeded)):
        return "timeout"
    if error.origin == "autoscaler":
        return "route"
    if error.origin == "worker":
        return "connection"
    if error.status == 429:
        return "429"
    return "client"


@dataclass(eq=False, repr=False)
class LoadRun:
    """
    One load test.

    :ivar target: where requests go.
    :ivar source: makes request ``i``.
    :ivar clock: the schedule's and the measurements' clock.
    :param offsets: the arrival times, seconds from the start.
    :param profile: the asked rate (for the figures).
    :param requests: arrivals in all, or ``None``.
    :param duration: seconds of arrivals, or ``None``.
    :ivar max_in_flight: requests in flight at most.
    :ivar timeout: seconds a request may take in all, or ``None``.
    :ivar finished: fires with the :class:`Stats` once every request sent has ended.
    """

    target: Target
    source: Source
    clock: IReactorTime
    _: KW_ONLY
    offsets: InitVar[Iterator[float]]
    profile: InitVar[RateProfile]
    requests: InitVar[int | None]
    duration: InitVar[float | None]
    max_in_flight: int
    timeout: float | None = None

    def __post_init__(
        self,
        offsets: Iterator[float],
        profile: RateProfile,
        requests: int | None,
        duration: float | None,
    ) -> None:
        self.stats = Stats(profile)
        self.finished: Deferred[Stats] = Deferred()
        self.started_at = self.clock.seconds()
        self.ended_at: float | None = None
        self.stopping = False
        self.abandoning = False
        self._pending: dict[int, _Request] = {}
        self._source_failed = False
        self.arrivals = Arrivals(
            self.clock, offsets, self._arrive, limit=requests, duration=duration
        )

    def start(self) -> Deferred[Stats]:
        """Start sending; returns :attr:`finished`."""
        self.started_at = self.clock.seconds()
        self.arrivals.start().addCallback(self._sending_over)
        return self.finished

    def now(self) -> float:
        """Seconds since the start."""
        return self.clock.seconds() - self.started_at

    @property
    def elapsed(self) -> float:
        """Seconds the run took, or has taken so far."""
        end = self.ended_at if self.ended_at is not None else self.clock.seconds()
        return end - self.started_at

    def stop(self) -> None:
        """
        The first call stops sending, the requests in flight run to their
        end; the second abandons them.
        """
        if not self.stopping:
            self.stopping = True
            self.arrivals.stop()
            return
        if not self.abandoning:
            self.abandoning = True
            for request in list(self._pending.values()):
                request.abandon()

    def _arrive(self, index: int, due: float) -> None:
        if len(self._pending) >= self.max_in_flight:
            self.stats.skip(due - self.started_at)
            return
        sample = Sample(index, due - self.started_at, self.now())
        self.stats.sent(sample)
        try:
            spec = self.source(index)
        except Exception as e:
            # Your payload function failed: the request could not be made.
            sample.ended, sample.cause, sample.error = sample.sent, "client", f"{e}"
            if not self._source_failed:  # once: the report counts the rest
                self._source_failed = True
                log.error("request {index} could not be made: {error}", index=index, error=e)
            return
        request = _Request(self, sample, spec)
        self._pending[index] = request
        request.start()

    def _sending_over(self, _: object) -> None:
        self.stats.sending_ended = self.now()
        self._check_done()

    def _ended(self, request: _Request) -> None:
        self._pending.pop(request.sample.index, None)
        self._check_done()

    def _check_done(self) -> None:
        if self.arrivals.done.called and not self._pending and not self.finished.called:
            self.ended_at = self.clock.seconds()
            self.finished.callback(self.stats)


class _Request:
    """One request in flight: sent, then its answer read to the end."""

    def __init__(self, run: LoadRun, sample: Sample, spec: RequestSpec) -> None:
        self.run = run
        self.sample = sample
        self.spec = spec
        self._pending: Deferred[Started] | None = None
        self._answer: Answer | None = None
        self._timer: IDelayedCall | None = None
        self._tokens: TokenCounter | None = None
        self._last_token: float | None = None
        self._gaps: list[float] = []

    def start(self) -> None:
        if self.run.timeout is not None:
            self._timer = self.run.clock.callLater(self.run.timeout, self._expire)
        self._pending = self.run.target.send(self.spec)
        self._pending.addCallbacks(self._started, self._failed)

    def _started(self, started: Started) -> None:
        self._pending = None
        sample = self.sample
        sample.code, sample.worker, sample.attempts = started.code, started.worker, started.attempts
        if sample.ended is not None:  # timed out or abandoned meanwhile
            if started.answer is not None:
                started.answer.discard()
            return
        if started.code == 429:
            values = started.headers.getRawHeaders(b"retry-after")
            sample.retry_after = values[0].decode("latin-1") if values else "(none)"
        content_type = b";".join(started.headers.getRawHeaders(b"content-type") or []).lower()
        if self.spec.streams or any(kind in content_type for kind in _STREAMING_TYPES):
            self._tokens = TokenCounter()
        if started.answer is None:
            self.chunk(started.body)
            self.end(None)
            return
        self._answer = started.answer
        started.answer.attach(self)

    def _failed(self, reason: Failure) -> None:
        self._pending = None
        if self.sample.ended is not None or reason.check(CancelledError):
            return
        if isinstance(reason.value, DispatchFailed):
            failed = reason.value
            self.sample.worker = failed.worker
            self.sample.attempts = failed.attempts
            self._finish(cause_of_error(failed.error), failed.error.message)
        elif isinstance(reason.value, VespaError):
            self._finish(cause_of_error(reason.value), reason.value.message)
        else:
            log.failure("unexpected failure of a request", reason)
            self._finish("client", reason.getErrorMessage())

    # BodySink

    def chunk(self, data: bytes) -> None:
        if self._tokens is None or self.sample.ended is not None:
            return
        if self._tokens.feed(data):
            self._token_arrived()

    def end(self, error: VespaError | None) -> None:
        if self.sample.ended is not None:
            return
        if error is not None:
            self._finish(cause_of_error(error), error.message)
            return
        if self._tokens is not None and self._tokens.finish():
            self._token_arrived()
        cause = cause_of_status(self.sample.code or 0)
        self._finish(cause, None if cause is None else f"answered {self.sample.code}")

    def _token_arrived(self) -> None:
        now = self.run.now()
        if self.sample.ttft is None:
            self.sample.ttft = now - self.sample.sent
        elif self._last_token is not None:
            self._gaps.append(now - self._last_token)
        self._last_token = now

    # Endings

    def _expire(self) -> None:
        self._timer = None
        self._finish("timeout", f"no complete answer within {self.run.timeout:g} s")
        self._drop()

    def abandon(self) -> None:
        """Give up on the request (a second Ctrl-C)."""
        self._finish("abandoned", "abandoned when the run was interrupted")
        self._drop()

    def _drop(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.cancel()
        answer, self._answer = self._answer, None
        if answer is not None:
            answer.discard()

    def _finish(self, cause: str | None, error: str | None) -> None:
        if self.sample.ended is not None:
            return
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self.sample.ended = self.run.now()
        self.sample.cause = cause
        self.sample.error = error
        if self._tokens is not None:
            self.sample.tokens = self._tokens.tokens
        if cause is None:
            self.run.stats.token_gaps(self.sample, self._gaps)
        self.run._ended(self)
