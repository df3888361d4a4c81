# -*- test-case-name: tests.test_startup -*-
"""
The startup chain, one Deferred: public key → backend ready → benchmark →
loaded → periodic health checks.

A failure keeps the worker up: the error is set on the state (reported to the
autoscaler, and the reason of every 503), and the chain is tried again after
``retry`` seconds until it succeeds. The public key is fetched with capped
exponential backoff for as long as it takes; the worker is not loaded without it.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import deferLater
from twisted.python.failure import Failure

from vespa.benchmarks import BenchmarkError, resolve_benchmark, run_benchmark
from vespa.benchmarks.session import BackendSession
from vespa.log import get_logger
from vespa.protocol.signing import SignatureVerifier
from vespa.worker.health import BackendNotHealthy, HealthChecker, probe
from vespa.worker.state import Phase, WorkerState

log = get_logger(__name__)


class StartupError(Exception):
    """A step of startup failed; the message is what the autoscaler is told."""


class BenchmarkCache:
    """
    The measured throughput, kept across restarts in a file.

    Only a measured value is ever written (atomically), and a corrupt file is
    ignored with a warning, so a failure is never cached as a capacity.

    :param path: the cache file.
    """

    def __init__(self, path: str) -> None:
        self.path = path

    def read(self) -> float | None:
        """
        The cached throughput, or ``None`` when there is none usable.
        """
        try:
            with open(self.path, encoding="utf-8") as f:
                text = f.readline().strip()
        except FileNotFoundError:
            return None
        except OSError as e:
            log.warn("cannot read the benchmark cache {path}: {e}", path=self.path, e=e)
            return None
        try:
            value = float(text)
        except ValueError:
            value = 0.0
        if not value > 0 or value == float("inf"):
            log.warn(
                "ignoring the corrupt benchmark cache {path} ({text!r}); measuring again",
                path=self.path,
                text=text[:40],
            )
            return None
        return value

    def write(self, value: float) -> None:
        """
        Cache a measured throughput (atomically: a crash leaves the old file or
        the new one, never half of one).
        """
        directory = os.path.dirname(os.path.abspath(self.path))
        fd, temporary = tempfile.mkstemp(dir=directory, prefix=".benchmark-")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(f"{value!r}\n")
            os.replace(temporary, self.path)
        except OSError as e:
            log.warn("cannot write the benchmark cache {path}: {e}", path=self.path, e=e)
            if os.path.exists(temporary):
                os.unlink(temporary)


class Startup(Service):
    """
    Runs the startup chain when started, and again after a failure.

    :param clock: for waits, deadlines and retries.
    :param state: the worker state the chain moves along.
    :param http: a ``treq.client.HTTPClient`` for the key, health checks and benchmark.
    :param backend_url: the backend origin.
    :param health: started once loaded.
    :param benchmark: the ``--benchmark`` reference.
    :param cache: the benchmark cache.
    :param verifier: receives the public key; ``None`` in unsecured mode.
    :param pubkey_url: where the key is, ``<REPORT_ADDR>/pubkey/``.
    :param settings: ``healthcheck_endpoint``, ``healthcheck_timeout``,
        ``healthcheck_retry_interval``, ``ready_timeout_initial``,
        ``ready_timeout_resume``, ``pubkey_timeout`` and ``startup_retry``.
    """

    #: Backoff of public key fetches: 1, 2, 4 ... capped at this many seconds.
    PUBKEY_MAX_DELAY = 30.0
    #: Failed key fetches after which the worker reports the problem.
    PUBKEY_ATTEMPTS_BEFORE_ERROR = 5

    def __init__(
        self,
        clock: IReactorTime,
        state: WorkerState,
        http: Any,
        backend_url: str,
        health: HealthChecker,
        *,
        benchmark: str,
        cache: BenchmarkCache,
        verifier: SignatureVerifier | None,
        pubkey_url: str | None,
        settings: Any,
    ) -> None:
        self._clock = clock
        self._state = state
        self._http = http
        self._backend_url = backend_url
        self._health = health
        self._benchmark = benchmark
        self._cache = cache
        self._verifier = verifier
        self._pubkey_url = pubkey_url
        self._settings = settings
        self._running: Deferred[None] | None = None
        self._retry: IDelayedCall | None = None
        self.session = BackendSession(http, backend_url, clock)
        self.attempts = 0
        #: When the chain's current wait (a retry delay) ends, while it waits.
        self.sleeping_until: float | None = None

    def startService(self) -> None:
        super().startService()
        self._start()

    def stopService(self) -> None:
        super().stopService()
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        if self._running is not None:
            self._running.cancel()
        self._health.stop()

    def _start(self) -> None:
        self._retry = None
        self.attempts += 1
        self._running = Deferred.fromCoroutine(self.run())
        self._running.addErrback(self._failed)

    async def run(self) -> None:
        """
        The chain, once.
        """
        if self._verifier is not None and not self._verifier.has_key:
            await self._fetch_public_key()
        settings = self._settings
        cached = self._cache.read()
        timeout = settings.ready_timeout_resume if cached else settings.ready_timeout_initial
        self._state.set_phase(Phase.LOADING)
        await self._wait_for_backend(timeout, "resume" if cached else "initial")
        if cached is None:
            self._state.set_phase(Phase.BENCHMARKING)
            max_perf = await self._measure()
            self._cache.write(max_perf)
        else:
            log.info("using the cached benchmark: {perf:g} units/s", perf=cached)
            max_perf = cached
        self._state.loaded(max_perf)
        log.info(
            "loaded in {loadtime:.1f} s: max throughput {perf:g} units/s",
            loadtime=self._state.loadtime,
            perf=max_perf,
        )
        self._health.start()

    def _failed(self, reason: Failure) -> None:
        self._running = None
        if reason.check(CancelledError):
            return
        message = reason.getErrorMessage()
        if not reason.check(StartupError):
            log.failure("startup failed unexpectedly", reason)
            message = f"Startup failed: {message}"
        log.error(
            "{message}; trying again in {retry:g} s",
            message=message,
            retry=self._settings.startup_retry,
        )
        self._state.errored(message)
        self._retry = self._clock.callLater(self._settings.startup_retry, self._start)

    async def _fetch_public_key(self) -> None:
        assert self._verifier is not None and self._pubkey_url is not None
        delay, failures = 1.0, 0
        while True:
            try:
                d: Deferred[Any] = self._http.get(self._pubkey_url)
                d.addTimeout(self._settings.pubkey_timeout or 3600.0, self._clock)
                response = await d
                body: bytes = await response.content()
                if response.code != 200:
                    raise ValueError(f"answered {response.code}")
                self._verifier.set_public_key(body)
            except Exception as e:  # CancelledError included: it is an Exception
                if isinstance(e, CancelledError) and not self.running:
                    raise
                failures += 1
                why = (
                    f"cannot get the autoscaler public key from {self._pubkey_url}: "
                    f"{e or type(e).__name__}"
                )
                if failures == 1:
                    log.warn("{why}; retrying", why=why)
                if failures == self.PUBKEY_ATTEMPTS_BEFORE_ERROR:
                    self._state.errored(why)
                await self._sleep(delay)
                delay = min(delay * 2, self.PUBKEY_MAX_DELAY)
                continue
            if failures >= self.PUBKEY_ATTEMPTS_BEFORE_ERROR:
                self._state.recovered()
            log.info("got the autoscaler public key")
            return

    async def _sleep(self, seconds: float) -> None:
        self.sleeping_until = self._clock.seconds() + seconds
        try:
            await deferLater(self._clock, seconds)
        finally:
            self.sleeping_until = None

    async def _wait_for_backend(self, timeout: float, kind: str) -> None:
        settings = self._settings
        url = self._backend_url + settings.healthcheck_endpoint
        deadline = self._clock.seconds() + timeout
        last = ""
        while True:
            try:
                await probe(self._http, url, self._clock, settings.healthcheck_timeout)
                return
            except BackendNotHealthy as e:
                last = str(e)
            if self._clock.seconds() + settings.healthcheck_retry_interval > deadline:
                raise StartupError(
                    f"Backend failed to become ready after {timeout:g} seconds "
                    f"({kind} timeout): {last}"
                )
            await self._sleep(settings.healthcheck_retry_interval)

    async def _measure(self) -> float:
        try:
            benchmark = resolve_benchmark(self._benchmark)
            return await run_benchmark(benchmark, self._backend_url, self.session)
        except BenchmarkError as e:
            raise StartupError(f"Benchmark failed: {e}") from e
        except CancelledError:
            raise
        except Exception as e:
            raise StartupError(f"Benchmark failed: {type(e).__name__}: {e}") from e


def health_check(
    http: Any, url: str, clock: IReactorTime, timeout: float
) -> Callable[[], Deferred[None]]:
    """
    The probe the periodic checker runs: ``GET url`` answering 200.
    """
    return lambda: Deferred.fromCoroutine(probe(http, url, clock, timeout))
