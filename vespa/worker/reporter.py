# -*- test-case-name: tests.test_reporter -*-
"""
The reporter: pushes ``/worker_status/`` and ``/delete_requests/`` to the
autoscaler, and never delays the data plane.

A :class:`~twisted.internet.task.LoopingCall` on the injected clock ticks every
``interval`` seconds, starting at once when the service starts (so the
autoscaler hears "loading" from the first second, not after one interval).
Each tick runs one *cycle*, unless the previous one is still in flight (then
the tick does nothing: a hung autoscaler must not pile up requests; the
per-attempt timeout bounds how long that lasts). A cycle:

1. sends ``/worker_status/`` if the worker state or the ledger changed since
   the last *accepted* report, or ``heartbeat`` seconds passed since it, in
   every phase (loading and benchmarking heartbeats carry the disk growth,
   which the 2025 original never sent);
2. sends the pending deletions (at most ``max_deletions_per_post`` per cycle):
   in the ``records`` form (the default, as vastai 1.9.1), one POST of
   per-request records with their status and times; in the ``legacy`` form
   (for autoscalers of 2024-2025), successes and failures as two POSTs, each
   only if non-empty.

Every number is bounded by the builders of :mod:`vespa.protocol.reports`: a
value that is not finite or out of bounds is dropped (0 in its place, or its
record left out), logged once (until it is sound again), and the rest is sent,
so one bad number never stops the reports or their heartbeat.

Each POST goes to ``address.rstrip("/") + path`` for each address in order;
the first 2xx wins. An attempt fails on any other status (redirects are not
followed: a POST turned into a GET would be lost), on an exception, or after
``timeout`` seconds, which the reporter enforces itself on the injected clock
(so it works the same with any HTTP client). When every address failed,
nothing is reset: the ledger's window is only committed, and deletions only
dropped, once accepted, so the next tick retries with everything accumulated
(the original's retry sleeps are gone; the tick *is* the retry). Failures are
logged once when an outage starts and once when it ends, with its length.

Delivery is at least once. An attempt that timed out may still have been
processed by the autoscaler; its counts are then sent again. So the timeout is
long (60 s by default, where the official worker gives up after 10 s and
retries): an autoscaler that is merely slow answers within it, and nothing is
counted twice. What remains at least once: an answer later than the timeout,
or a connection lost after the body was sent. Deletions sent twice are
harmless (forgetting a request twice is forgetting it once).

Deletions are not sent to ``https://cloud.vast.ai/api/v0`` (the retired Redis
API, which the original skips too). With no address at all (``REPORT_ADDR``
unset: local mode) nothing is sent and every report counts as accepted, so the
ledger does not fill up.

Every cycle catches and logs its own errors: the loop never dies.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import treq.client
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure
from twisted.web.iweb import IResponse
from zope.interface import implementer

from vespa._typing import Service
from vespa.http.stream import Discard
from vespa.interfaces import IReportFailures
from vespa.log import get_logger
from vespa.protocol import reports
from vespa.protocol.reports import WorkerIdentity
from vespa.worker.ledger import Deletions, Ledger, Outcome
from vespa.worker.outage import Outage
from vespa.worker.state import WorkerState

log = get_logger(__name__)

#: Paths on the autoscaler.
STATUS_PATH = "/worker_status/"
DELETE_PATH = "/delete_requests/"

#: The retired Redis report API: it never gets deletions (spec §5.3).
_REDIS_API = "https://cloud.vast.ai/api/v0"

_GB = float(2**30)

#: The forms of ``/delete_requests/``: today's records, the 2024-2025 indexes.
DELETE_FORMATS = ("records", "legacy")


@dataclass(frozen=True)
class ReportSettings:
    """
    Where and how often to report.

    :ivar addresses: the autoscaler base URLs (``REPORT_ADDR`` split on
        commas), tried in order; empty in local mode.
    :ivar interval: seconds between ticks.
    :ivar heartbeat: a status report is sent at least this often, even when
        nothing changed.
    :ivar timeout: seconds per HTTP attempt: long, so that a slow autoscaler
        is waited for rather than sent the same counts twice.
    :ivar stop_timeout: seconds for the final flush at stop.
    :ivar max_deletions_per_post: the most ``request_idx`` values one cycle
        sends, so the backlog after an outage goes out in bounded bodies.
    :ivar delete_format: ``records`` (one POST of per-request records, as
        vastai 1.9.1) or ``legacy`` (two POSTs of indexes, as 2024-2025).
    """

    addresses: tuple[str, ...]
    interval: float = 1.0
    heartbeat: float = 10.0
    timeout: float = 60.0
    stop_timeout: float = 10.0
    max_deletions_per_post: int = 10_000
    delete_format: str = "records"

    def __post_init__(self) -> None:
        if self.delete_format not in DELETE_FORMATS:
            raise ValueError(
                f"delete_format must be one of {', '.join(DELETE_FORMATS)}, "
                f"got {self.delete_format!r}"
            )
        for name in ("interval", "heartbeat", "timeout", "stop_timeout"):
            value = getattr(self, name)
            if not value > 0:
                raise ValueError(f"{name} must be positive, got {value!r}")
        if self.max_deletions_per_post < 1:
            raise ValueError(
                f"max_deletions_per_post must be >= 1, got {self.max_deletions_per_post!r}"
            )
        addresses: object = self.addresses
        if isinstance(addresses, str):
            raise TypeError("addresses must be a tuple of URLs, not one string")


def _root_disk_used() -> float:
    # psutil's "used" is the same statvfs arithmetic; the stdlib's spares
    # every worker the import.
    return float(shutil.disk_usage("/").used)


def _discard_body(response: IResponse) -> Deferred[None]:
    if response.length == 0:
        return succeed(None)
    protocol = Discard()
    response.deliverBody(protocol)
    return protocol.done


def _describe(failure: BaseException) -> str:
    text = str(failure)
    return f"{type(failure).__name__}: {text}" if text else type(failure).__name__


@implementer(IReportFailures)
@dataclass(eq=False, repr=False)
class Reporter(Service):
    """
    Pushes the worker's status and finished requests to the autoscaler (see
    the module docstring).

    :ivar clock: drives the loop and the timeouts.
    :ivar http: the HTTP client for the reports.
    :ivar settings: where and how often.
    :ivar identity: the worker's identity, in every message.
    :ivar state: the worker's lifecycle state (phase, error, max_perf, loadtime).
    :ivar ledger: the request accounting.
    :ivar disk_usage: returns the bytes used on ``/`` (default: statvfs);
        ``additional_disk_usage`` is its growth in GB since the last accepted
        report. If it raises, 0.0 is reported and the baseline kept.
    """

    name = "reporter"

    clock: IReactorTime
    http: treq.client.HTTPClient
    settings: ReportSettings
    identity: WorkerIdentity
    state: WorkerState
    ledger: Ledger
    disk_usage: Callable[[], float] = _root_disk_used

    def __post_init__(self) -> None:
        addresses = self.settings.addresses
        self._status_addresses = addresses
        self._delete_addresses = tuple(a for a in addresses if a.rstrip("/") != _REDIS_API)
        self._loop: LoopingCall | None = None
        self._busy = False
        self._idle_waiters: list[Deferred[None]] = []
        self._tick_cycle: Deferred[None] | None = None
        self._last_state_version: int | None = None
        self._last_ledger_version: int | None = None
        self._last_accepted_at: float | None = None
        self._disk_baseline: float | None = None
        self._disk_failing = False
        self._broken: set[str] = set()
        # (path, field) of the values being dropped, each logged once.
        self._dropping: set[tuple[str, str]] = set()
        self._status_outage = Outage(STATUS_PATH)
        self._delete_outage = Outage(DELETE_PATH)
        #: How many ticks found the previous cycle still in flight.
        self.ticks_skipped = 0

    @property
    def failed_reports(self) -> dict[str, int]:
        """Failed sends since start, by endpoint (``worker_status``, ``delete_requests``)."""
        return {
            "worker_status": self._status_outage.total_failures,
            "delete_requests": self._delete_outage.total_failures,
        }

    # -- the service ----------------------------------------------------------

    def startService(self) -> None:
        """Take the disk baseline and start the loop (first tick at once)."""
        super().startService()
        if not self.settings.addresses:
            log.info("No report address: the autoscaler is not told anything (local mode)")
        self._disk_baseline = self._read_disk()
        loop = LoopingCall(self._tick)
        loop.clock = self.clock
        self._loop = loop
        loop.start(self.settings.interval, now=True).addErrback(
            lambda f: log.failure("The report loop stopped", f)
        )

    def stopService(self) -> Deferred[None]:
        """
        Stop the loop, then make one last attempt to send the status (always)
        and the pending deletions. The returned Deferred fires within
        ``timeout`` seconds, whatever the autoscaler does.
        """
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        final = Deferred.fromCoroutine(self._exclusive(force=True))
        final.addTimeout(self.settings.stop_timeout, self.clock)

        def gave_up(failure: Failure) -> None:
            log.warn(
                "The final report did not complete within {timeout} s: {why}",
                timeout=self.settings.stop_timeout,
                why=failure.getErrorMessage() or repr(failure.value),
            )
            if self._tick_cycle is not None:
                self._tick_cycle.cancel()

        final.addErrback(gave_up)
        return final

    def flush(self) -> Deferred[None]:
        """
        Send now what is pending: the status if it is due (changed, or the
        heartbeat is due), and the pending deletions. Waits for a cycle in
        flight first; never fails.
        """
        return Deferred.fromCoroutine(self._exclusive(force=False))

    # -- the cycle ------------------------------------------------------------

    def _tick(self) -> None:
        try:
            if self._busy:
                self.ticks_skipped += 1
                return
            cycle = Deferred.fromCoroutine(self._exclusive(force=False))
            if not cycle.called:
                self._tick_cycle = cycle

                def done(result: object) -> None:
                    self._tick_cycle = None

                cycle.addBoth(done)
        except Exception:
            log.failure("A report tick failed")

    async def _exclusive(self, force: bool) -> None:
        # One cycle at a time: whoever comes while one runs waits for it.
        while self._busy:
            waiter: Deferred[None] = Deferred()
            self._idle_waiters.append(waiter)
            await waiter
        self._busy = True
        try:
            await self._cycle(force)
        finally:
            self._busy = False
            waiters, self._idle_waiters = self._idle_waiters, []
            for waiter in waiters:
                if not waiter.called:
                    waiter.callback(None)

    async def _cycle(self, force: bool) -> None:
        for step, run in (("status", self._report_status), ("deletions", self._report_deletions)):
            try:
                await run(force)
            except CancelledError:
                raise
            except Exception:
                # A bug, not an outage: log it with its traceback once, then
                # quietly until that step works again.
                if step not in self._broken:
                    self._broken.add(step)
                    log.failure("Reporting the {step} failed", step=step)
                else:
                    log.debug("Reporting the {step} failed again", step=step)
            else:
                self._broken.discard(step)

    def _status_due(self, now: float) -> bool:
        return (
            self._last_accepted_at is None
            or self.state.version != self._last_state_version
            or self.ledger.version != self._last_ledger_version
            or now - self._last_accepted_at >= self.settings.heartbeat
        )

    async def _report_status(self, force: bool) -> None:
        now = self.clock.seconds()
        if not (force or self._status_due(now)):
            return
        state, ledger = self.state, self.ledger
        state_version, ledger_version = state.version, ledger.version
        window = ledger.window()
        disk_now = self._read_disk()
        if disk_now is not None and self._disk_baseline is not None:
            growth = (disk_now - self._disk_baseline) / _GB
        else:
            growth = 0.0
        disk_used = disk_now if disk_now is not None else self._disk_baseline
        built = reports.worker_status(
            self.identity,
            loadtime=state.loadtime,
            cur_load=ledger.in_flight_workload,
            rej_load=window[Outcome.REJECTED].workload,
            new_load=reports.new_load(window.received.workload, window[Outcome.CANCELLED].workload),
            error_msg=state.error,
            max_perf=state.max_perf,
            cur_perf=window[Outcome.SERVED].workload,
            num_requests_working=ledger.in_flight_count,
            num_requests_recieved=ledger.totals.received.requests,
            additional_disk_usage=growth,
            disk_usage=(disk_used or 0.0) / _GB,
            working_request_idxs=ledger.working_request_idxs(),
        )
        self._note_dropped(STATUS_PATH, built)
        if await self._post(STATUS_PATH, built.body, self._status_addresses, self._status_outage):
            ledger.commit(window)
            self._last_state_version = state_version
            self._last_ledger_version = ledger_version
            self._last_accepted_at = now
            if disk_now is not None:
                self._disk_baseline = disk_now

    async def _report_deletions(self, force: bool) -> None:
        batch = self.ledger.take_deletions(self.settings.max_deletions_per_post)
        if not batch:
            return
        if self.settings.delete_format == "records":
            await self._send_deletions(batch, reports.delete_records(self.identity, batch.records))
            return
        for success in (True, False):
            part = batch.part(success)
            if part:
                built = reports.delete_requests(self.identity, part.request_idxs(success), success)
                await self._send_deletions(part, built)

    async def _send_deletions(self, batch: Deletions, built: reports.Built) -> None:
        self._note_dropped(DELETE_PATH, built)
        # A batch whose every record was dropped is acknowledged without a
        # POST: sending it would send nothing, and keeping it would block the
        # ones behind it for ever.
        empty = not any(built.body.get(key) for key in ("requests", "request_idxs"))
        if empty or await self._post(
            DELETE_PATH, built.body, self._delete_addresses, self._delete_outage
        ):
            self.ledger.deletions_sent(batch)

    def _note_dropped(self, what: str, built: reports.Built) -> None:
        """
        Log each field whose value was dropped once, when it starts being
        dropped; again only after it was sound in between.
        """
        dropping = {(what, item.partition(":")[0]): item for item in built.dropped}
        for key, item in dropping.items():
            if key not in self._dropping:
                log.warn(
                    "{what}: a value cannot be reported and is left out ({item}); "
                    "the rest of the report is sent",
                    what=what,
                    item=item,
                )
        self._dropping = {k for k in self._dropping if k[0] != what} | set(dropping)

    def _read_disk(self) -> float | None:
        try:
            used = float(self.disk_usage())
        except Exception as e:
            if not self._disk_failing:
                self._disk_failing = True
                log.warn(
                    "Cannot read the disk usage ({why}); reporting no growth until it works",
                    why=_describe(e),
                )
            return None
        if self._disk_failing:
            self._disk_failing = False
            log.info("The disk usage can be read again")
        return used

    # -- HTTP -----------------------------------------------------------------

    async def _post(
        self, path: str, body: dict[str, Any], addresses: tuple[str, ...], outage: Outage
    ) -> bool:
        """
        POST ``body`` to ``path`` at each address in turn until one accepts.

        :return: whether one accepted it (always True with no address).
        """
        if not addresses:
            return True
        reasons = []
        for address in addresses:
            url = address.rstrip("/") + path
            try:
                code = await self._attempt(url, body)
            except CancelledError:
                raise
            except Exception as e:
                reason = _describe(e)
            else:
                if 200 <= code < 300:
                    outage.succeeded(self.clock.seconds())
                    return True
                reason = f"HTTP {code}"
            log.debug("POST {url} failed: {reason}", url=url, reason=reason)
            reasons.append(f"{url}: {reason}")
        outage.failed(self.clock.seconds(), "; ".join(reasons))
        return False

    async def _attempt(self, url: str, body: dict[str, Any]) -> int:
        """
        One POST, bounded by ``timeout`` on the clock, body read included.

        :return: the response's status code.
        """
        timeout = self.settings.timeout
        deadline = self.clock.seconds() + timeout
        requested = self.http.post(url, json=body, unbuffered=True, allow_redirects=False)
        requested.addTimeout(timeout, self.clock)
        response = await requested
        # The status is the answer; the body is read (to free the connection)
        # within what is left of the deadline, and its loss changes nothing.
        drained = _discard_body(response)
        drained.addTimeout(max(deadline - self.clock.seconds(), 0.0), self.clock)
        try:
            await drained
        except CancelledError:
            raise
        except Exception as e:
            log.debug("Reading the answer from {url} failed: {why}", url=url, why=_describe(e))
        return int(response.code)
