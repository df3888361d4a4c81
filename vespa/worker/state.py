# -*- test-case-name: tests.test_startup,tests.test_operations -*-
"""
The worker's lifecycle state: what phase it is in, its error, its capacity.

One object, read by the resource (may it serve?), the reporter (what to tell
the autoscaler) and the health endpoints; written by the startup chain and the
health checker. Every change bumps :attr:`WorkerState.version`, so a reader can
tell cheaply whether anything changed since it last looked.
"""

from __future__ import annotations

import enum

from twisted.internet.interfaces import IReactorTime


class Phase(enum.Enum):
    """Where the worker is in its life."""

    #: Waiting for the public key or the model server.
    LOADING = "loading"
    #: Measuring the model server's throughput.
    BENCHMARKING = "benchmarking"
    #: Serving.
    READY = "ready"
    #: Startup failed or the backend is failing its health checks.
    ERRORED = "errored"
    #: Shutting down: finishing what is in flight, admitting nothing new.
    DRAINING = "draining"


class WorkerState:
    """
    The lifecycle state of one worker.

    :param clock: gives the time, for ``loadtime`` and uptime.
    :ivar phase: the current :class:`Phase`.
    :ivar error: the current error message, ``""`` when there is none.
    :ivar max_perf: the measured throughput (workload units per second), 0.0
        until loaded.
    :ivar loadtime: seconds from start to loaded, 0.0 until loaded.
    :ivar version: bumped on every change.
    """

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self.started_at = clock.seconds()
        self.phase = Phase.LOADING
        self.error = ""
        self.max_perf = 0.0
        self.loadtime = 0.0
        self.version = 0
        self._loaded = False

    @property
    def uptime(self) -> float:
        """Seconds since the worker started."""
        return self._clock.seconds() - self.started_at

    @property
    def accepting(self) -> bool:
        """Whether proxied requests may be admitted now."""
        return self.phase is Phase.READY

    @property
    def is_loaded(self) -> bool:
        """Whether the model server has been benchmarked and declared ready once."""
        return self._loaded

    def set_phase(self, phase: Phase) -> None:
        """
        Move to ``phase`` (for the steps of startup and for draining).
        """
        if phase is not self.phase:
            self.phase = phase
            self.version += 1

    def loaded(self, max_perf: float) -> None:
        """
        The model server is ready and measured: start serving.

        :param max_perf: its throughput in workload units per second (> 0).
        """
        if not max_perf > 0:
            raise ValueError(f"max_perf must be positive, got {max_perf!r}")
        self.max_perf = float(max_perf)
        if not self._loaded:
            self.loadtime = self._clock.seconds() - self.started_at
        self._loaded = True
        self.error = ""
        self.phase = Phase.READY
        self.version += 1

    def errored(self, message: str) -> None:
        """
        Something fatal for serving happened; it is reported until it clears.

        :param message: what went wrong, for operators and the autoscaler.
        """
        if self.phase is Phase.DRAINING:
            self.error = message
        elif (self.phase, self.error) != (Phase.ERRORED, message):
            self.phase = Phase.ERRORED
            self.error = message
        else:
            return
        self.version += 1

    def recovered(self) -> None:
        """
        The cause of the error is gone (no sticky errors): serve again if loaded.
        """
        if self.phase is Phase.ERRORED:
            self.error = ""
            self.phase = Phase.READY if self._loaded else Phase.LOADING
            self.version += 1
