# -*- test-case-name: tests.test_startup -*-
"""
Backend health: one probe, and the periodic checker that runs once loaded.

No sticky errors: the checker marks the worker errored after N consecutive
failures, and the first success after that clears the error it caused.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure

from vespa.log import get_logger
from vespa.worker.state import WorkerState

log = get_logger(__name__)


#: ``--healthcheck-endpoint auto``: the routes tried in order, by benchmark;
#: the next one is tried when the server answers 404 (it has no such route).
#: llama-cpp-python has no ``/health``, llama-server and vLLM have one.
NATIVE_ROUTES: dict[str, tuple[str, ...]] = {
    "openai_chat": ("/health", "/v1/models"),
    "openai_completions": ("/health", "/v1/models"),
    "tgi": ("/health",),
    "ollama": ("/api/version",),
    "comfyui": ("/system_stats",),
}

#: The routes of ``auto`` for a benchmark of the user's own.
DEFAULT_ROUTES = ("/health",)


class BackendNotHealthy(Exception):
    """
    The backend's health endpoint did not answer 200 in time.

    :ivar status: the HTTP status it answered, ``None`` when it did not answer.
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


async def probe(http: Any, url: str, clock: IReactorTime, timeout: float) -> None:
    """
    One health check: ``GET url`` must answer 200 within ``timeout`` seconds.

    :param http: a ``treq.client.HTTPClient``.
    :raise BackendNotHealthy: with the reason.
    """
    d: Deferred[Any] = http.get(url)
    d.addTimeout(timeout, clock)
    try:
        response = await d
        await response.content()  # read it, so the connection can be reused
    except Exception as e:  # every failure to answer is "not healthy", with its reason
        raise BackendNotHealthy(f"GET {url}: {_describe(e)}") from e
    if response.code != 200:
        raise BackendNotHealthy(f"GET {url} answered {response.code}", response.code)


class HealthRoute:
    """
    The backend's health route: the one ``--healthcheck-endpoint`` names, or,
    for ``auto``, the first of the benchmark's native routes the server has.

    The startup chain moves it along (:meth:`fall_back`) while it waits for
    the server; the periodic checker probes whatever it settled on.

    :param backend_url: the backend origin.
    :param endpoint: ``auto`` or a path.
    :param benchmark: the built-in benchmark's name, for ``auto``; ``None``
        for a benchmark of the user's own.
    """

    def __init__(self, backend_url: str, endpoint: str, benchmark: str | None) -> None:
        self.backend_url = backend_url
        self.auto = endpoint == "auto"
        if self.auto:
            self.candidates = NATIVE_ROUTES.get(benchmark or "", DEFAULT_ROUTES)
        else:
            self.candidates = (endpoint,)
        self._index = 0

    @property
    def path(self) -> str:
        """The route probed now."""
        return self.candidates[self._index]

    @property
    def url(self) -> str:
        """The URL probed now."""
        return self.backend_url + self.path

    def fall_back(self) -> bool:
        """
        The server answered 404 on :attr:`path`: move to the next candidate.

        :return: whether there was one.
        """
        if self._index + 1 >= len(self.candidates):
            return False
        self._index += 1
        return True

    def advice(self) -> str:
        """
        What to do when the server has none of the routes: the option to set,
        with a route worth trying.
        """
        tried = ", ".join(self.candidates)
        suggestion = "/v1/models" if "/v1/models" not in self.candidates else "/"
        return (
            f"the model server has no such route (tried {tried}); set "
            f"--healthcheck-endpoint to a path it answers 200 on when ready, "
            f"e.g. --healthcheck-endpoint {suggestion}"
        )


def _describe(error: BaseException) -> str:
    name = type(error).__name__
    return f"{name}: {error}" if str(error) else name


class HealthChecker:
    """
    Checks the backend every ``interval`` seconds once the worker is loaded.

    :param clock: runs the checks.
    :param state: marked errored after ``threshold`` consecutive failures, and
        recovered by the next success.
    :param check: one probe; fails when the backend is not healthy.
    :param interval: seconds between checks.
    :param threshold: consecutive failures that make an error.
    """

    def __init__(
        self,
        clock: IReactorTime,
        state: WorkerState,
        check: Callable[[], Deferred[None]],
        *,
        interval: float = 10.0,
        threshold: int = 3,
    ) -> None:
        self._state = state
        self._check = check
        self._interval = interval
        self._threshold = threshold
        self.failures = 0
        #: Failed checks since start, for the metrics.
        self.total_failures = 0
        self._raised = False
        self._loop = LoopingCall(self._tick)
        self._loop.clock = clock

    @property
    def running(self) -> bool:
        """Whether checks are scheduled."""
        return bool(self._loop.running)

    def start(self) -> None:
        """
        Start checking (the first check after one interval).
        """
        if not self._loop.running:
            self._loop.start(self._interval, now=False)

    def stop(self) -> None:
        """
        Stop checking.
        """
        if self._loop.running:
            self._loop.stop()

    def _tick(self) -> Deferred[None]:
        # Errors are handled here so the LoopingCall never stops.
        return self._check().addCallbacks(self._passed, self._failed)

    def _passed(self, _: object) -> None:
        self.failures = 0
        if self._raised:
            self._raised = False
            log.info("the backend is healthy again")
            self._state.recovered()

    def _failed(self, reason: Failure) -> None:
        self.failures += 1
        self.total_failures += 1
        if self.failures >= self._threshold and not self._raised:
            self._raised = True
            message = (
                f"Backend failed {self.failures} consecutive healthchecks: "
                f"{reason.getErrorMessage()}"
            )
            log.error("{message}", message=message)
            self._state.errored(message)
