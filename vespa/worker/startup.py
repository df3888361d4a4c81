# -*- test-case-name: tests.test_startup -*-
"""
The startup chain, one Deferred: public key → backend ready → benchmark →
loaded → periodic health checks.

It says what it is doing, at info level: each step as it starts and ends and,
while it waits for the model server, one line every :data:`WAIT_NOTE_INTERVAL`
seconds with the server's last answer, the time spent and the limit.

A failure keeps the worker up: the error is set on the state (reported to the
autoscaler, and the reason of every 503), and the chain is tried again after
``retry`` seconds until it succeeds. The public key is fetched with capped
exponential backoff for as long as it takes; the worker is not loaded without it.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass
from typing import TYPE_CHECKING, Any

from treq.client import HTTPClient
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import deferLater
from twisted.python.failure import Failure

from vespa._typing import Service
from vespa.backoff import equal_jitter
from vespa.benchmarks import (
    BenchmarkError,
    resolve_benchmark,
    run_benchmark,
    unit_of,
)
from vespa.benchmarks.session import BackendSession
from vespa.interfaces import IStartupSettings
from vespa.log import get_logger
from vespa.worker.health import BackendNotHealthy, HealthChecker, HealthRoute, probe
from vespa.worker.state import Phase, WorkerState

if TYPE_CHECKING:
    # Only a secured worker imports the RSA code (tap.py).
    from vespa.protocol.signing import SignatureVerifier

log = get_logger(__name__)

#: Seconds between the "still waiting for the model server" lines.
WAIT_NOTE_INTERVAL = 30.0


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


@dataclass(eq=False, repr=False)
class Startup(Service):
    """
    Runs the startup chain when started, and again after a failure.

    :ivar clock: for waits, deadlines and retries.
    :ivar state: the worker state the chain moves along.
    :ivar http: a ``treq.client.HTTPClient`` for the key, health checks and benchmark.
    :ivar backend_url: the backend origin.
    :ivar health: started once loaded.
    :ivar benchmark: the ``--benchmark`` reference.
    :ivar cache: the benchmark cache.
    :ivar verifier: receives the public key; ``None`` in unsecured mode.
    :ivar pubkey_url: where the key is, ``<REPORT_ADDR>/pubkey/``.
    :ivar settings: ``healthcheck_endpoint``, ``healthcheck_timeout``,
        ``healthcheck_retry_interval``, ``ready_timeout_initial``,
        ``ready_timeout_resume``, ``pubkey_timeout``, ``startup_retry`` and
        ``benchmark_settings`` (passed to a built-in probe).
    :ivar route: the health route, shared with the periodic checker, which
        startup settles (an ``auto`` route falls back on 404).
    """

    #: Backoff of public key fetches: 1, 2, 4 ... capped at this many seconds.
    PUBKEY_MAX_DELAY = 30.0
    #: Failed key fetches after which the worker reports the problem.
    PUBKEY_ATTEMPTS_BEFORE_ERROR = 5

    clock: IReactorTime
    state: WorkerState
    http: HTTPClient
    backend_url: str
    health: HealthChecker
    _: KW_ONLY
    benchmark: str
    cache: BenchmarkCache
    verifier: SignatureVerifier | None
    pubkey_url: str | None
    settings: IStartupSettings
    route: HealthRoute

    def __post_init__(self) -> None:
        self._running: Deferred[None] | None = None
        self._retry: IDelayedCall | None = None
        self.session = BackendSession(self.http, self.backend_url, self.clock)
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
        self.health.stop()

    def _start(self) -> None:
        self._retry = None
        self.attempts += 1
        self._running = Deferred.fromCoroutine(self.run())
        self._running.addErrback(self._failed)

    async def run(self) -> None:
        """
        The chain, once.
        """
        if self.verifier is not None and not self.verifier.has_key:
            await self._fetch_public_key()
        settings = self.settings
        cached = self.cache.read()
        timeout = settings.ready_timeout_resume if cached else settings.ready_timeout_initial
        self.state.set_phase(Phase.LOADING)
        await self._wait_for_backend(timeout, "resume" if cached else "initial")
        unit = unit_of(self.benchmark)
        if cached is None:
            self.state.set_phase(Phase.BENCHMARKING)
            log.info("benchmarking the model server: {benchmark}", benchmark=self.benchmark)
            started = self.clock.seconds()
            max_perf = await self._measure()
            log.info(
                "benchmark done in {elapsed:.1f} s: {perf:.4g} {unit}/s",
                elapsed=self.clock.seconds() - started,
                perf=max_perf,
                unit=unit,
            )
            self.cache.write(max_perf)
        else:
            log.info(
                "using the cached benchmark from {path}: {perf:.4g} {unit}/s",
                path=self.cache.path,
                perf=cached,
                unit=unit,
            )
            max_perf = cached
        self.state.loaded(max_perf)
        log.info(
            "loaded in {loadtime:.1f} s: {perf:.4g} {unit}/s",
            loadtime=self.state.loadtime,
            perf=max_perf,
            unit=unit,
        )
        self.health.start()

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
            retry=self.settings.startup_retry,
        )
        self.state.errored(message)
        self._retry = self.clock.callLater(self.settings.startup_retry, self._start)

    async def _fetch_public_key(self) -> None:
        assert self.verifier is not None and self.pubkey_url is not None
        log.info("fetching the autoscaler public key: GET {url}", url=self.pubkey_url)
        delays = equal_jitter(1.0, self.PUBKEY_MAX_DELAY)
        failures = 0
        while True:
            try:
                d: Deferred[Any] = self.http.get(self.pubkey_url)
                d.addTimeout(self.settings.pubkey_timeout or 3600.0, self.clock)
                response = await d
                body: bytes = await response.content()
                if response.code != 200:
                    raise ValueError(f"answered {response.code}")
                self.verifier.set_public_key(body)
            except Exception as e:  # CancelledError included: it is an Exception
                if isinstance(e, CancelledError) and not self.running:
                    raise
                failures += 1
                why = (
                    f"cannot get the autoscaler public key from {self.pubkey_url}: "
                    f"{e or type(e).__name__}"
                )
                if failures == 1:
                    log.warn("{why}; retrying", why=why)
                if failures == self.PUBKEY_ATTEMPTS_BEFORE_ERROR:
                    self.state.errored(why)
                await self._sleep(delays(failures - 1))
                continue
            if failures >= self.PUBKEY_ATTEMPTS_BEFORE_ERROR:
                self.state.recovered()
            log.info("got the autoscaler public key")
            return

    async def _sleep(self, seconds: float) -> None:
        self.sleeping_until = self.clock.seconds() + seconds
        try:
            await deferLater(self.clock, seconds)
        finally:
            self.sleeping_until = None

    async def _wait_for_backend(self, timeout: float, kind: str) -> None:
        """
        Probe the health route until it answers 200, falling back along the
        ``auto`` routes on 404; a 503 or no answer means "still loading".
        """
        settings, route, clock = self.settings, self.route, self.clock
        started = clock.seconds()
        deadline = started + timeout
        next_note = started + WAIT_NOTE_INTERVAL
        advised = False
        log.info(
            "waiting for the model server: GET {url} (up to {timeout:g} s)",
            url=route.url,
            timeout=timeout,
        )
        while True:
            try:
                await probe(self.http, route.url, clock, settings.healthcheck_timeout)
            except BackendNotHealthy as e:
                last = str(e)
                if e.status == 404 and route.fall_back():
                    log.info(
                        "{last}: the model server has no such route; trying GET {url}",
                        last=last,
                        url=route.url,
                    )
                    continue
                if e.status == 404:
                    last = f"{last}: {route.advice()}"
                    if not advised:
                        advised = True
                        log.warn("{last}", last=last)
                elif e.status == 503:
                    last = f"{last} (still loading)"
            else:
                log.info(
                    "the model server is ready: GET {url} answered 200 after {elapsed:.1f} s"
                    "{choice}",
                    url=route.url,
                    elapsed=clock.seconds() - started,
                    choice=f"; health checks use {route.path} (auto)" if route.auto else "",
                )
                return
            now = clock.seconds()
            if now + settings.healthcheck_retry_interval > deadline:
                raise StartupError(
                    f"Backend failed to become ready after {timeout:g} seconds "
                    f"({kind} timeout): {last}"
                )
            if now >= next_note:
                next_note = now + WAIT_NOTE_INTERVAL
                log.info(
                    "still waiting for the model server: {last} ({waited:.0f} s of {timeout:g} s)",
                    last=last,
                    waited=now - started,
                    timeout=timeout,
                )
            await self._sleep(settings.healthcheck_retry_interval)

    async def _measure(self) -> float:
        try:
            benchmark = resolve_benchmark(self.benchmark)
            return await run_benchmark(
                benchmark, self.backend_url, self.session, self.settings.benchmark_settings
            )
        except BenchmarkError as e:
            raise StartupError(f"Benchmark failed: {e}") from e
        except CancelledError:
            raise
        except Exception as e:
            raise StartupError(f"Benchmark failed: {type(e).__name__}: {e}") from e


def health_check(
    http: HTTPClient, route: HealthRoute, clock: IReactorTime, timeout: float
) -> Callable[[], Deferred[None]]:
    """
    The probe the periodic checker runs: ``GET`` on the route startup settled
    on, answering 200.
    """
    return lambda: Deferred.fromCoroutine(probe(http, route.url, clock, timeout))
