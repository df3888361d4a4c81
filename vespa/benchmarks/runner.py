# -*- test-case-name: tests.test_benchmarks -*-
"""
The run loop every built-in probe shares, and custom benchmarks may use.

A probe gives two functions: one that builds request number ``i``
(:class:`Request`), one that counts the workload units in a response. The
loop does the rest:

1. one warm-up request as long as a measured one (its result is not timed:
   first requests compile kernels, fill caches and load weights lazily; with
   llama.cpp a 16-token warm-up left the first full generation 2x slower
   inside the measurement), which must succeed, so a backend that cannot
   answer at all fails in one request's time;
2. a ramp of concurrency levels, 1, 2, 4, ... up to ``concurrency``
   (:func:`concurrency_levels`): at each level ``runs`` runs of that many
   requests sent together, each run timed on ``session.clock`` from the first
   request sent to the last answer;
3. a run is a measurement only when every one of its requests completed: a
   failed or cut-short request (llama-cpp-python ends a running stream when
   another request arrives) would make the throughput a fiction. The first
   run that is not one ends the ramp: the server does not sustain that level;
4. the result is the best complete run's units per second, and the log says
   where the ramp stopped and why. No complete run raises
   :class:`BenchmarkError` with the reasons, never a small number: a wrong
   capacity is worse than none.

Every request fails after ``settings.timeout`` seconds, so a hanging backend
gives an error instead of holding startup forever.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypedDict, cast

from twisted.internet.defer import CancelledError, Deferred, DeferredList, TimeoutError
from twisted.python.failure import Failure

from vespa.benchmarks.errors import BenchmarkError, positive_number
from vespa.benchmarks.session import BackendResponse, BackendSession
from vespa.benchmarks.settings import RunSettings
from vespa.log import get_logger

__all__ = [
    "Count",
    "Request",
    "RunOptions",
    "RunResult",
    "concurrency_levels",
    "describe",
    "fetch_json",
    "measure",
    "measure_runs",
    "read_json",
    "send",
    "snippet",
]

if TYPE_CHECKING:
    from typing_extensions import Unpack

log = get_logger(__name__)


@dataclass(frozen=True)
class Request:
    """
    One benchmark request.

    :param path: relative to the backend, e.g. ``/v1/completions``.
    :param json: the JSON body, if any.
    :param method: the HTTP method.
    :param units: what the request is expected to cost, for probes that
        cannot count the answer (e.g. a fixed 100 per image job); the count
        function decides whether to use it.
    """

    path: str
    json: Any = None
    method: str = "POST"
    units: float = 0.0

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


#: Counts the workload units of one successful (2xx) response; may be
#: ``async``. Raise :class:`BenchmarkError` (or anything) when the response is
#: not the shape expected: the message becomes the request's failure reason.
Count = Callable[[BackendResponse, Request], Any]


@dataclass(frozen=True)
class RunResult:
    """
    What one run measured.

    :param run: its number, from 1, across the levels of the ramp.
    :param requests: requests sent together: its concurrency level.
    :param succeeded: requests that answered and were counted.
    :param units: the units counted.
    :param elapsed: seconds on ``session.clock``.
    :param failure: the first failure's reason, ``None`` when there was none.
    """

    run: int
    requests: int
    succeeded: int
    units: float
    elapsed: float
    failure: str | None

    @property
    def throughput(self) -> float:
        """Units per second, 0.0 for a run that measured nothing."""
        if not self.succeeded or self.elapsed <= 0:
            return 0.0
        return self.units / self.elapsed

    @property
    def complete(self) -> bool:
        """Whether it is a measurement: every request completed, in some time."""
        return self.failure is None and self.succeeded == self.requests and self.throughput > 0


def concurrency_levels(limit: int) -> list[int]:
    """
    The ramp up to ``limit``: 1, 2, 4, ... and ``limit`` itself.
    """
    levels = []
    level = 1
    while level < limit:
        levels.append(level)
        level *= 2
    levels.append(limit)
    return levels


def describe(error: BaseException) -> str:
    """What went wrong, from an exception (the messages inside a ResponseFailed)."""
    # ResponseFailed and friends carry a list of Failures and print as their
    # repr; the messages inside are what says what happened.
    reasons = getattr(error, "reasons", None)
    if isinstance(reasons, list) and reasons:
        return "; ".join(r.getErrorMessage() if isinstance(r, Failure) else str(r) for r in reasons)
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _snippet(body: bytes, limit: int = 300) -> str:
    text = body.decode("utf-8", "replace").strip()
    return text if len(text) <= limit else text[:limit] + "..."


def _cancellation(error: BaseException) -> bool:
    # Cancelling a request the Agent has sent fails it with
    # ResponseNeverReceived([CancelledError]), not CancelledError itself.
    reasons = getattr(error, "reasons", None)
    return isinstance(reasons, list) and any(
        isinstance(r, Failure) and r.check(CancelledError) for r in reasons
    )


async def _attempt(session: BackendSession, request: Request, count: Count) -> float:
    try:
        if request.json is None:
            response = await session.request(request.method, request.path)
        else:
            response = await session.request(request.method, request.path, json=request.json)
    except Exception as e:
        if _cancellation(e):
            # So that addTimeout sees the cancellation it caused.
            raise CancelledError() from e
        raise
    if not 200 <= response.code < 300:
        body = await response.content()
        raise BenchmarkError(f"{request} answered {response.code}: {_snippet(body)}")
    units = count(response, request)
    if inspect.isawaitable(units):
        units = await units
    return positive_number(
        units,
        f"{request}: counted {units!r}, not a number",
        f"{request}: counted {units!r} units in a successful answer",
    )


async def send(session: BackendSession, request: Request, count: Count, timeout: float) -> float:
    """
    Send one request and count its units, within ``timeout`` seconds.

    :return: the units counted (> 0).
    :raise BenchmarkError: saying which request failed and why.
    """
    d = Deferred.fromCoroutine(_attempt(session, request, count))
    d.addTimeout(timeout, session.clock)
    try:
        return await d
    except TimeoutError:
        raise BenchmarkError(
            f"{request}: no complete answer within {timeout:g} s "
            "(VESPA_BENCHMARK_TIMEOUT sets this limit)"
        ) from None
    except (BenchmarkError, CancelledError):
        raise
    except Exception as e:
        raise BenchmarkError(f"{request}: {describe(e)}") from e


def json_answer(
    path: str, code: int, body: bytes, error: Callable[[str], Exception]
) -> Any:
    """
    The parsed answer to ``GET path`` (a listing, say).

    :param error: makes the exception raised, from its message, when the
        answer is not 200 with JSON.
    """
    if code != 200:
        raise error(f"GET {path} answered {code}: {_snippet(body)}")
    try:
        return json.loads(body)
    except ValueError:
        raise error(f"GET {path} answered with no JSON: {_snippet(body)}") from None


async def fetch_json(session: BackendSession, path: str, timeout: float) -> Any:
    """
    ``GET path`` and parse the JSON answer, within ``timeout`` seconds (for
    discovering a model name, say).

    :raise BenchmarkError: saying what failed.
    """

    async def get() -> Any:
        try:
            response = await session.get(path)
        except Exception as e:
            if _cancellation(e):
                raise CancelledError() from e
            raise
        return json_answer(path, response.code, await response.content(), BenchmarkError)

    d = Deferred.fromCoroutine(get())
    d.addTimeout(timeout, session.clock)
    try:
        return await d
    except TimeoutError:
        raise BenchmarkError(f"GET {path}: no answer within {timeout:g} s") from None
    except (BenchmarkError, CancelledError):
        raise
    except Exception as e:
        raise BenchmarkError(f"GET {path}: {describe(e)}") from e


async def read_json(response: BackendResponse, request: Request) -> Any:
    """
    The JSON body of a response, for count functions.

    :raise BenchmarkError: when the body is not JSON.
    """
    body = await response.content()
    try:
        return json.loads(body)
    except ValueError:
        raise BenchmarkError(f"{request}: the answer is not JSON: {_snippet(body)}") from None


async def discover_first_model(
    session: BackendSession,
    timeout: float,
    *,
    path: str,
    list_key: str,
    name_key: str,
    hint: str = "",
) -> str:
    """
    The name of the first model a listing endpoint gives, e.g. ``GET /v1/models``
    (``data[0].id``) or Ollama's ``GET /api/tags`` (``models[0].name``).

    :param hint: what else could fix an empty listing, e.g. ``"pull one, or "``.
    :raise BenchmarkError: saying to set ``VESPA_BENCHMARK_MODEL``.
    """
    try:
        listing = await fetch_json(session, path, timeout)
    except BenchmarkError as e:
        raise BenchmarkError(
            f"cannot discover the model name ({e}); set VESPA_BENCHMARK_MODEL (or MODEL_NAME)"
        ) from e
    models = listing.get(list_key) if isinstance(listing, dict) else None
    first = models[0] if isinstance(models, list) and models else None
    name = first.get(name_key) if isinstance(first, dict) else None
    if not isinstance(name, str) or not name:
        raise BenchmarkError(
            f"GET {path} lists no model ({snippet(listing)}); "
            f"{hint}set VESPA_BENCHMARK_MODEL (or MODEL_NAME)"
        )
    return name


def snippet(value: Any, limit: int = 300) -> str:
    """
    The start of a body or a value, for error messages.
    """
    if isinstance(value, bytes):
        return _snippet(value, limit)
    if isinstance(value, str):
        return _snippet(value.encode(), limit)
    return _snippet(json.dumps(value, default=str).encode(), limit)


class RunOptions(TypedDict, total=False):
    """The keyword options :func:`measure` passes on to :func:`measure_runs`."""

    warmup: Request | bool
    unit: str
    name: str


async def measure_runs(
    session: BackendSession,
    request: Callable[[int], Request],
    count: Count,
    settings: RunSettings,
    *,
    warmup: Request | bool = True,
    unit: str = "units",
    name: str = "benchmark",
) -> list[RunResult]:
    """
    Warm up, then ramp: ``settings.runs`` runs at each concurrency level of
    :func:`concurrency_levels` up to ``settings.concurrency``, until a run in
    which some request did not complete.

    :param request: builds request ``i``: 0 is the warm-up, then 1, 2, ...
        across all runs, so each request can differ (a seed, a prompt).
    :param count: counts the units of a successful response.
    :param warmup: ``True`` sends ``request(0)`` first, a :class:`Request`
        sends that one, ``False`` none.
    :param unit: the unit's name, for the log.
    :param name: the benchmark's name, for the log.
    :return: every run; at least one is :attr:`RunResult.complete`, and only
        the last one may be incomplete (it ended the ramp).
    :raise BenchmarkError: when the warm-up fails, or no run completed.
    """
    if warmup is not False:
        first = request(0) if warmup is True else warmup
        try:
            await send(session, first, count, settings.timeout)
        except BenchmarkError as e:
            raise BenchmarkError(f"{name}: the warm-up request failed: {e}") from e
    results: list[RunResult] = []
    index = 1
    for level in concurrency_levels(settings.concurrency):
        for _ in range(settings.runs):
            batch = [request(index + k) for k in range(level)]
            index += level
            result = await _run(session, batch, count, settings, len(results) + 1)
            results.append(result)
            _log_run(result, name, unit)
            if not result.complete:
                break
        if not results[-1].complete:
            break
    if not any(r.complete for r in results):
        stopped = results[-1]
        raise BenchmarkError(
            f"{name}: no run completed: at concurrency {stopped.requests}, "
            f"{stopped.requests - stopped.succeeded} of {stopped.requests} requests failed; "
            f"the first failure: {stopped.failure}"
        )
    _log_ramp(results, name, unit)
    return results


async def _run(
    session: BackendSession,
    batch: list[Request],
    count: Count,
    settings: RunSettings,
    number: int,
) -> RunResult:
    """Send ``batch`` together and time it."""
    started = session.clock.seconds()
    outcomes = await DeferredList(
        [Deferred.fromCoroutine(send(session, r, count, settings.timeout)) for r in batch],
        consumeErrors=True,
    )
    elapsed = session.clock.seconds() - started
    units: list[float] = []
    failures: list[Failure] = []
    for ok, value in outcomes:
        # DeferredList types a result as success or Failure, not which.
        if ok:
            units.append(value)
        else:
            failures.append(cast(Failure, value))
    if any(f.check(CancelledError) for f in failures):
        # The whole benchmark was cancelled (the worker is stopping):
        # these are not failures of the backend.
        raise CancelledError()
    failure = failures[0].getErrorMessage() if failures else None
    if units and elapsed <= 0:
        failure = f"run {number} took no time on session.clock (is the clock running?)"
        units = []
    return RunResult(number, len(batch), len(units), sum(units), elapsed, failure)


def _log_ramp(results: list[RunResult], name: str, unit: str) -> None:
    """Say where the ramp stopped, if it stopped early, and what it measured."""
    complete = [r for r in results if r.complete]
    best = max(complete, key=lambda r: r.throughput)
    stopped = results[-1]
    if not stopped.complete:
        log.warn(
            "{name}: at concurrency {concurrency}, {n} of {concurrency} requests failed ({why}): "
            "measured at {best_level}",
            name=name,
            concurrency=stopped.requests,
            n=stopped.requests - stopped.succeeded,
            why=stopped.failure,
            best_level=best.requests,
        )
    log.info(
        "{name}: {best:.4g} {unit}/s at concurrency {concurrency} (the best of {n} complete runs)",
        name=name,
        best=best.throughput,
        unit=unit,
        concurrency=best.requests,
        n=len(complete),
    )


def _log_run(result: RunResult, name: str, unit: str) -> None:
    if result.complete:
        log.info(
            "{name} run {run} at concurrency {concurrency}: {units:g} {unit} in {elapsed:.3f} s: "
            "{throughput:.4g} {unit}/s",
            name=name,
            run=result.run,
            concurrency=result.requests,
            units=result.units,
            unit=unit,
            elapsed=result.elapsed,
            throughput=result.throughput,
        )
        return
    log.warn(
        "{name} run {run} at concurrency {concurrency}: {n} of {total} requests failed, "
        "not a measurement: {why}",
        name=name,
        run=result.run,
        concurrency=result.requests,
        n=result.requests - result.succeeded,
        total=result.requests,
        why=result.failure,
    )


async def measure(
    session: BackendSession,
    request: Callable[[int], Request],
    count: Count,
    settings: RunSettings,
    **options: Unpack[RunOptions],
) -> float:
    """
    The best throughput of the complete runs of :func:`measure_runs` (same
    parameters, the same defaults), in units per second.

    :raise BenchmarkError: when the warm-up fails, or no run completed.
    """
    runs = await measure_runs(session, request, count, settings, **options)
    return max(r.throughput for r in runs if r.complete)
