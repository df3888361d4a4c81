# -*- test-case-name: tests.test_drain,tests.test_operations,tests.test_sessions_e2e -*-
"""
Graceful drain: on SIGTERM the worker stops admitting, lets what is in flight
finish (up to a deadline), and only then lets the rest of it stop.

Stopping is ordered (:class:`vespa.service.OrderedMultiService`): this service
stops first, while the listener still answers new requests with 503 and
``Retry-After`` (and ``/ready`` with 503); then the listener closes, the
reporter sends its final reports, and the pools close.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater

from vespa._typing import Service
from vespa.log import get_logger
from vespa.worker.ledger import Ledger
from vespa.worker.state import Phase, WorkerState

log = get_logger(__name__)


@dataclass(eq=False, repr=False)
class Drain(Service):
    """
    Waits, at shutdown, for in-flight requests.

    :ivar clock: for the deadline.
    :ivar state: moved to ``DRAINING`` (so nothing new is admitted).
    :ivar ledger: tells when the last request in flight ends.
    :ivar timeout: seconds to wait for them.
    :ivar reactor: whose shutdown status is set to success after a clean
        drain (twistd otherwise exits 143 after SIGTERM); ``None`` to leave it.
    :ivar drained: whether the last drain ended with nothing in flight;
        ``None`` before one.
    """

    clock: IReactorTime
    state: WorkerState
    ledger: Ledger
    timeout: float
    reactor: Any = None
    drained: bool | None = field(default=None, init=False)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return ensureDeferred(self._drain())

    async def _drain(self) -> None:
        self.state.set_phase(Phase.DRAINING)
        waiting = self.ledger.in_flight_count
        log.info(
            "draining: {n} requests in flight, waiting up to {t:g} s", n=waiting, t=self.timeout
        )
        idle = self.ledger.when_idle()
        idle.addTimeout(self.timeout, self.clock)
        try:
            await idle
        except defer.TimeoutError:
            pass  # told below, with how many are cut
        # One more turn, so the last response is written out before the
        # reactor goes on to close every connection.
        await deferLater(self.clock, 0)
        left = self.ledger.in_flight_count
        self.drained = left == 0
        if left:
            log.warn(
                "drain timeout: {n} requests still in flight after {t:g} s are cut",
                n=left,
                t=self.timeout,
            )
            return
        log.info("drained")
        if self.reactor is not None:
            # A clean drain is a clean exit (0); after a cut one twistd still
            # ends by the signal, as a process killed mid-work should.
            forget_exit_signal(self.reactor)


def forget_exit_signal(reactor: Any) -> None:
    """
    Make twistd exit 0, not by the SIGTERM (status 143), once the reactor stops.

    It sets a private Twisted name: the lifecycle's only one (the hot path's,
    in ``vespa.http`` and ``vespa.epoll_reactor``, are each held by their
    own tests too). Twisted's SIGTERM handler (``ReactorBase.sigTerm``) stops
    the reactor and records the signal in the reactor's ``_exitSignal``;
    twistd's runner copies it
    (``ApplicationRunner.startReactor``, for a reactor that provides
    ``_ISupportsExitSignalCapturing``) and re-raises it on its way out. No
    public API says "this signal was handled". The public alternative, our
    own SIGTERM handler put over the reactor's once it runs, would rest on
    when the reactor installs its handlers (an internal order too), would
    replace the signal handling of every in-process test that starts a
    worker, and would lose the 143 that tells a supervisor requests were
    cut. ``tests.test_drain`` fails if Twisted stops recording or reading
    the signal this way.

    :param reactor: the reactor twistd runs; a reactor that caught no exit
        signal is left as it is.
    """
    if getattr(reactor, "_exitSignal", None) is not None:
        reactor._exitSignal = None
