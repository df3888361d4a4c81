"""
Tests for :mod:`vespa.worker.reporter`, against a small fake autoscaler over
:class:`treq.testing.StubTreq`, with time driven by a :class:`Clock`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from treq.testing import StubTreq
from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from vespa.protocol.reports import WORKER_STATUS_FIELDS, WorkerIdentity
from vespa.worker.ledger import Ledger, Outcome
from vespa.worker.reporter import Reporter, ReportSettings
from vespa.worker.state import Phase, WorkerState

IDENTITY = WorkerIdentity(worker_id=77, mtoken="tok", url="http://5.6.7.8:3000", version="9.9")
GB = 2**30


@dataclass
class Post:
    """One POST the fake autoscaler received."""

    host: str
    path: str
    body: dict[str, Any]
    mode: str

    @property
    def accepted(self) -> bool:
        """Whether it was answered 200 at once."""
        return self.mode == "ok"


class FakeAutoscaler(Resource):
    """
    Every autoscaler address, told apart by host name. Records each POST;
    answers per host: ``ok`` (200), ``fail`` (500), ``hang`` (never, until
    :meth:`release`), ``raise`` (the resource raises: twisted.web answers 500).
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.modes: dict[str, str] = {}
        self.received: list[Post] = []
        self.hung: list[Request] = []
        self.headers: dict[bytes, list[bytes]] = {}

    def render_POST(self, request: Request) -> bytes | int:
        """Record the POST, then answer as the host's mode says."""
        host = request.getRequestHostname().decode()
        # The endpoint's own path, whatever the address's base path.
        path = "/" + request.path.decode().rstrip("/").rsplit("/", 1)[-1] + "/"
        mode = self.modes.get(host, "ok")
        self.received.append(Post(host, path, json.loads(request.content.read()), mode))
        self.headers = dict(request.requestHeaders.getAllRawHeaders())
        if mode == "fail":
            request.setResponseCode(500)
            return b'{"error": "down"}'
        if mode == "raise":
            raise RuntimeError("autoscaler bug")
        if mode == "hang":
            self.hung.append(request)
            return NOT_DONE_YET
        return b'{"ok": true}'

    def release(self) -> None:
        """Answer every hung request that is still connected with 200."""
        hung, self.hung = self.hung, []
        for request in hung:
            if not request._disconnected:
                request.write(b"{}")
                request.finish()

    def bodies(
        self, path: str, host: str | None = None, accepted: bool | None = None
    ) -> list[dict[str, Any]]:
        """The bodies POSTed to ``path`` (at ``host``; accepted or not), oldest first."""
        return [
            p.body
            for p in self.received
            if p.path == path
            and (host is None or p.host == host)
            and (accepted is None or p.accepted is accepted)
        ]

    def statuses(
        self, host: str | None = None, accepted: bool | None = None
    ) -> list[dict[str, Any]]:
        """The ``/worker_status/`` bodies received (at ``host``; accepted or not)."""
        return self.bodies("/worker_status/", host, accepted)

    def deleted(self, success: bool) -> list[int]:
        """
        Every request_idx accepted by ``/delete_requests/`` with ``success``,
        from bodies of either form (records or legacy).
        """
        found = []
        for body in self.bodies("/delete_requests/", accepted=True):
            if "requests" in body:
                found += [r["request_idx"] for r in body["requests"] if r["success"] is success]
            elif body["success"] is success:
                found += body["request_idxs"]
        return found


class CaptureLog:
    """Collect the reporter's log events at info level and above."""

    def __init__(self, testcase: SynchronousTestCase, namespace: str) -> None:
        self.namespace = namespace
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.observe)
        testcase.addCleanup(globalLogPublisher.removeObserver, self.observe)

    def observe(self, event: dict[str, Any]) -> None:
        """Keep events of the namespace at info and above."""
        if event.get("log_namespace") == self.namespace and event["log_level"] not in (
            LogLevel.debug,
        ):
            self.events.append(event)

    def at(self, level: LogLevel) -> list[dict[str, Any]]:
        """The kept events at ``level``."""
        return [e for e in self.events if e["log_level"] is level]


class Harness:
    """A reporter wired to a fake autoscaler, a clock, a state and a ledger."""

    def __init__(
        self,
        testcase: SynchronousTestCase,
        addresses: tuple[str, ...] = ("http://a.test",),
        **settings: Any,
    ) -> None:
        self.clock = Clock()
        self.autoscaler = FakeAutoscaler()
        self.http = StubTreq(self.autoscaler)
        self.state = WorkerState(self.clock)
        self.ledger = Ledger(
            max_pending_deletions=settings.pop("max_pending_deletions", 100_000),
            now=self.clock.seconds,
        )
        self.disk = 10 * GB
        self.disk_error: Exception | None = None
        self.reporter = Reporter(
            self.clock,
            self.http,  # type: ignore[arg-type]
            ReportSettings(addresses=addresses, **settings),
            IDENTITY,
            self.state,
            self.ledger,
            disk_usage=self.disk_usage,
        )
        self.testcase = testcase

    def disk_usage(self) -> float:
        """The fake disk, or the fake disk failure."""
        if self.disk_error is not None:
            raise self.disk_error
        return float(self.disk)

    def start(self) -> None:
        """Start the reporter and stop it at cleanup."""
        self.reporter.startService()
        self.pump()

        def stop() -> None:
            if self.reporter.running:
                self.autoscaler.modes.clear()
                self.autoscaler.release()
                d = self.reporter.stopService()
                self.pump()
                self.clock.advance(60)
                self.pump()
                self.testcase.successResultOf(d)

        self.testcase.addCleanup(stop)

    def pump(self) -> None:
        """Deliver every in-memory byte between the reporter and the autoscaler."""
        for _ in range(10):
            self.http.flush()

    def tick(self, seconds: float = 1.0, times: int = 1) -> None:
        """Advance the clock ``times`` steps of ``seconds``, pumping after each."""
        for _ in range(times):
            self.clock.advance(seconds)
            self.pump()


class StatusFieldTests(SynchronousTestCase):
    """The status body, field by field, after a known sequence."""

    def test_every_field(self) -> None:
        """
        After loading (t=5, 100/s) and a known mix of requests, the first
        report has each of the 18 fields with its exact value and the JSON
        type the official worker sends.
        """
        h = Harness(self)
        h.clock.advance(5)
        h.state.loaded(100.0)
        ledger = h.ledger
        a = ledger.receive(11, 1, 10.0)
        b = ledger.receive(12, 2, 20.0)
        ledger.receive(13, 3, 30.0)
        ledger.receive(14, 4, 7.0)
        ledger.finish(a, Outcome.SERVED)
        ledger.finish(b, Outcome.CANCELLED)
        ledger.reject(15, 5, 5.0)
        ledger.reject(16, 6, 2.5)
        h.reporter.startService()
        self.addCleanup(h.reporter.stopService)
        h.disk += GB // 2
        h.reporter.flush()
        h.pump()
        h.state.errored("boom")
        h.tick()
        [first, second] = h.autoscaler.statuses()
        # The tick at start sent the first report with no disk growth; the
        # flush had nothing new to send.
        self.assertEqual(tuple(first), WORKER_STATUS_FIELDS)
        expected = {
            "id": 77,
            "mtoken": "tok",
            "version": "9.9",
            "loadtime": 5.0,
            "cur_load": 37.0,
            "rej_load": 7.5,
            "new_load": 47.0,
            "error_msg": "",
            "max_perf": 100.0,
            "cur_perf": 10.0,
            "cur_capacity": 0,
            "max_capacity": 0,
            "num_requests_working": 2,
            "num_requests_recieved": 4,
            "additional_disk_usage": 0.0,
            "disk_usage": 10.0,
            "working_request_idxs": [13, 14],
            "url": "http://5.6.7.8:3000",
        }
        self.assertEqual(first, expected)
        for name, value in expected.items():
            self.assertIs(type(first[name]), type(value), name)
        # The second: the window was committed, the disk grew 0.5 GB, the
        # error shows, loadtime is sent again (every report once loaded).
        self.assertEqual(
            second,
            {
                **expected,
                "rej_load": 0.0,
                "new_load": 0.0,
                "cur_perf": 0.0,
                "error_msg": "boom",
                "additional_disk_usage": 0.5,
                "disk_usage": 10.5,
            },
        )

    def test_error_not_sticky(self) -> None:
        """An error that clears is no longer reported."""
        h = Harness(self)
        h.state.loaded(10.0)
        h.start()
        h.state.errored("backend health check failed")
        h.tick()
        h.state.recovered()
        h.tick()
        self.assertEqual(
            [s["error_msg"] for s in h.autoscaler.statuses()],
            ["", "backend health check failed", ""],
        )

    def test_loading_values(self) -> None:
        """While loading: loadtime and max_perf are 0.0."""
        h = Harness(self)
        h.start()
        [status] = h.autoscaler.statuses()
        self.assertEqual((status["loadtime"], status["max_perf"]), (0.0, 0.0))

    def test_no_auth_header(self) -> None:
        """The mtoken in the body is the authentication; no header is sent."""
        h = Harness(self)
        h.start()
        self.assertNotIn(b"Authorization", h.autoscaler.headers)
        self.assertEqual(h.autoscaler.statuses()[0]["mtoken"], "tok")
        self.assertEqual(
            h.autoscaler.headers[b"Content-Type"], [b"application/json; charset=UTF-8"]
        )


class CadenceTests(SynchronousTestCase):
    """When status reports are sent."""

    def test_heartbeat_while_loading(self) -> None:
        """With nothing changing, a loading worker reports every 10 s."""
        h = Harness(self)
        h.start()
        h.tick(times=35)
        self.assertEqual(len(h.autoscaler.statuses()), 4)  # t = 0, 10, 20, 30

    def test_every_tick_with_changes(self) -> None:
        """With a change every second (503 rejects while loading), every tick reports."""
        h = Harness(self)
        h.start()
        for i in range(5):
            h.ledger.reject(i, i, 1.0)
            h.tick()
        self.assertEqual(len(h.autoscaler.statuses()), 6)
        self.assertEqual([s["rej_load"] for s in h.autoscaler.statuses()], [0.0] + [1.0] * 5)

    def test_state_change_reports(self) -> None:
        """A phase change is reported at the next tick, in every phase."""
        h = Harness(self)
        h.start()
        h.state.set_phase(Phase.BENCHMARKING)
        h.tick()
        h.state.loaded(50.0)
        h.tick()
        self.assertEqual([s["max_perf"] for s in h.autoscaler.statuses()], [0.0, 0.0, 50.0])

    def test_disk_growth_while_loading(self) -> None:
        """Loading heartbeats carry the disk growth since the last accepted one."""
        h = Harness(self)
        h.start()
        h.disk += 2 * GB
        h.tick(times=10)
        h.disk += GB
        h.tick(times=10)
        self.assertEqual(
            [s["additional_disk_usage"] for s in h.autoscaler.statuses()], [0.0, 2.0, 1.0]
        )

    def test_first_report_at_start(self) -> None:
        """The first report goes out when the service starts, not one interval later."""
        h = Harness(self)
        h.start()
        self.assertEqual(len(h.autoscaler.statuses()), 1)


class AddressTests(SynchronousTestCase):
    """Several addresses: in order, first success wins."""

    def test_first_success_wins(self) -> None:
        """The first address fails (500): the second gets it, and no third try."""
        h = Harness(self, ("http://a.test/", "http://b.test", "http://c.test"))
        h.autoscaler.modes["a.test"] = "fail"
        h.start()
        self.assertEqual(len(h.autoscaler.statuses("a.test")), 1)
        self.assertEqual(len(h.autoscaler.statuses("b.test")), 1)
        self.assertEqual(h.autoscaler.statuses("c.test"), [])
        self.assertEqual(
            [(p.host, p.path) for p in h.autoscaler.received],
            [("a.test", "/worker_status/"), ("b.test", "/worker_status/")],
        )

    def test_first_address_preferred(self) -> None:
        """When the first address works, the second is never used."""
        h = Harness(self, ("http://a.test", "http://b.test"))
        h.start()
        h.ledger.reject(1, 1, 1.0)
        h.tick()
        self.assertEqual({p.host for p in h.autoscaler.received}, {"a.test"})

    def test_resource_exception_is_failure(self) -> None:
        """An autoscaler that breaks (its 500 page) is a failure too."""
        h = Harness(self, ("http://a.test", "http://b.test"))
        h.autoscaler.modes["a.test"] = "raise"
        h.start()
        self.flushLoggedErrors(RuntimeError)
        self.assertEqual(len(h.autoscaler.statuses("b.test")), 1)

    def test_redis_api_gets_no_deletions(self) -> None:
        """Deletions skip the retired Redis API address; status reports do not."""
        h = Harness(self, ("https://cloud.vast.ai/api/v0/", "http://b.test"))
        h.autoscaler.modes["cloud.vast.ai"] = "fail"
        h.ledger.reject(1, 1, 1.0)
        h.start()
        self.assertEqual(len(h.autoscaler.statuses("cloud.vast.ai")), 1)
        self.assertEqual(h.autoscaler.bodies("/delete_requests/", "cloud.vast.ai"), [])
        self.assertEqual(len(h.autoscaler.bodies("/delete_requests/", "b.test")), 1)

    def test_local_mode(self) -> None:
        """With no address nothing is sent, and the ledger is drained."""
        h = Harness(self, ())
        h.ledger.finish(h.ledger.receive(1, 1, 1.0), Outcome.SERVED)
        h.start()
        self.assertEqual(h.autoscaler.received, [])
        self.assertEqual(h.ledger.pending_deletions, 0)
        self.assertEqual(h.ledger.window().received.requests, 0)


def run_outage(testcase: SynchronousTestCase, mode: str) -> Harness:
    """
    Run a 60 s outage (every POST answered as ``mode``) during which requests
    are served, cancelled, errored and rejected, then recover; check that the
    first accepted report carries every count from the outage (nothing lost,
    nothing counted twice), that the pending deletions stayed bounded and
    were all sent or counted as dropped, and that each kind of report logged
    the outage once when it started and once when it ended.
    """
    logged = CaptureLog(testcase, "vespa.worker.reporter")
    ledger_log = CaptureLog(testcase, "vespa.worker.ledger")
    # Attempts time out after 10 s, so that a hung one ends within the outage.
    h = Harness(testcase, max_pending_deletions=20, timeout=10.0)
    h.state.loaded(100.0)
    h.start()
    testcase.assertEqual(len(h.autoscaler.statuses(accepted=True)), 1)
    h.autoscaler.modes["a.test"] = mode
    tickets = []
    for second in range(60):
        tickets.append(h.ledger.receive(2 * second, second, 2.0))
        tickets.append(h.ledger.receive(2 * second + 1, second, 0.5))
        h.ledger.finish(tickets.pop(0), Outcome.SERVED)
        if second % 5 == 0:
            h.ledger.finish(tickets.pop(0), Outcome.CANCELLED)
        if second % 7 == 3:
            h.ledger.finish(tickets.pop(0), Outcome.ERRORED)
        h.ledger.reject(1000 + second, 0, 1.0)
        testcase.assertLessEqual(h.ledger.pending_deletions, 20)
        h.tick()
    testcase.assertEqual(len(h.autoscaler.statuses(accepted=True)), 1)
    testcase.assertEqual(h.autoscaler.bodies("/delete_requests/", accepted=True), [])
    # The autoscaler comes back (hung connections stay dead).
    h.autoscaler.modes.clear()
    h.tick(times=12)
    totals = h.ledger.totals
    [_, recovery, *later] = h.autoscaler.statuses(accepted=True)
    testcase.assertEqual(
        recovery["new_load"], totals.received.workload - totals[Outcome.CANCELLED].workload
    )
    testcase.assertEqual(recovery["cur_perf"], totals[Outcome.SERVED].workload)
    testcase.assertEqual(recovery["rej_load"], totals[Outcome.REJECTED].workload)
    testcase.assertEqual(recovery["num_requests_recieved"], 120)
    testcase.assertEqual(recovery["num_requests_working"], h.ledger.in_flight_count)
    testcase.assertEqual(recovery["cur_load"], h.ledger.in_flight_workload)
    # Nothing counted twice: later reports carry empty windows.
    for status in later:
        testcase.assertEqual(
            (status["new_load"], status["cur_perf"], status["rej_load"]), (0.0, 0.0, 0.0)
        )
    testcase.assertEqual(h.ledger.window().received.requests, 0)
    # Deletions: 20 kept, the rest dropped and counted, the 20 sent.
    ended = sum(totals[outcome].requests for outcome in Outcome)
    sent = h.autoscaler.deleted(True) + h.autoscaler.deleted(False)
    testcase.assertEqual(h.ledger.pending_deletions, 0)
    testcase.assertEqual(len(sent), 20)
    testcase.assertEqual(h.ledger.deletions_dropped, ended - 20)
    # Logged once when each outage started and once when it ended.
    started = [e for e in logged.at(LogLevel.warn) if "no autoscaler address" in e["log_format"]]
    testcase.assertEqual(
        sorted(e["what"] for e in started), ["/delete_requests/", "/worker_status/"]
    )
    over = [e for e in logged.at(LogLevel.info) if "accepted again" in e["log_format"]]
    testcase.assertEqual(sorted(e["what"] for e in over), ["/delete_requests/", "/worker_status/"])
    testcase.assertEqual(len(ledger_log.at(LogLevel.warn)), 1)
    return h


class OutageTests(SynchronousTestCase):
    """An autoscaler outage loses nothing and grows nothing without bound."""

    def test_outage_500(self) -> None:
        """Every report answered 500 for 60 s: retried every tick; see :func:`run_outage`."""
        h = run_outage(self, "fail")
        self.assertGreaterEqual(len(h.autoscaler.statuses(accepted=False)), 60)

    def test_outage_hang(self) -> None:
        """
        Every report hangs for 60 s: each attempt ends after its 10 s timeout,
        one at a time, the ticks meanwhile do nothing; see :func:`run_outage`.
        """
        h = run_outage(self, "hang")
        self.assertLessEqual(len([p for p in h.autoscaler.received if p.mode == "hang"]), 7)
        self.assertGreaterEqual(h.reporter.ticks_skipped, 50)

    def test_hung_report_accepted_late(self) -> None:
        """
        A report answered after the next ones were snapshotted commits only
        its own window: summed over accepted reports, every count once.
        """
        h = Harness(self, timeout=30.0)
        h.state.loaded(10.0)
        h.start()
        h.autoscaler.modes["a.test"] = "hang"
        h.ledger.finish(h.ledger.receive(1, 1, 3.0), Outcome.SERVED)
        h.tick()  # snapshot with served 3.0, hangs
        h.ledger.finish(h.ledger.receive(2, 2, 4.0), Outcome.SERVED)
        h.tick(times=3)
        h.autoscaler.modes.clear()
        h.autoscaler.release()
        h.pump()
        h.tick(times=2)
        accepted = h.autoscaler.statuses()
        self.assertEqual(sum(s["cur_perf"] for s in accepted), 7.0)
        self.assertEqual([s["cur_perf"] for s in accepted], [0.0, 3.0, 4.0])


class OverlapTests(SynchronousTestCase):
    """Sends never overlap."""

    def test_in_flight_not_duplicated(self) -> None:
        """
        While a report hangs, the ticks send nothing; once it is answered,
        changes made meanwhile go out at the next tick, and nothing else.
        """
        h = Harness(self)
        h.autoscaler.modes["a.test"] = "hang"
        h.start()
        h.tick(times=2)
        h.ledger.reject(1, 1, 1.0)
        h.tick(times=3)
        self.assertEqual(len(h.autoscaler.received), 1)
        self.assertEqual(h.reporter.ticks_skipped, 5)
        h.autoscaler.modes.clear()
        h.autoscaler.release()
        h.pump()
        self.assertEqual(len(h.autoscaler.statuses()), 1)
        h.tick()  # t=6: the reject changed the ledger
        statuses = h.autoscaler.statuses()
        self.assertEqual([s["rej_load"] for s in statuses], [0.0, 1.0])
        self.assertEqual(h.autoscaler.deleted(False), [1])
        h.tick(times=3)  # t=9: nothing new, heartbeat not due
        self.assertEqual(len(h.autoscaler.statuses()), 2)
        h.tick(times=7)  # t=16: heartbeat 10 s after the t=6 report
        self.assertEqual(len(h.autoscaler.statuses()), 3)

    def test_flush_waits_for_cycle_in_flight(self) -> None:
        """A flush during a hung cycle waits for it, then sends what is pending."""
        h = Harness(self)
        h.autoscaler.modes["a.test"] = "hang"
        h.start()
        h.ledger.reject(1, 1, 1.0)
        d = h.reporter.flush()
        self.assertNoResult(d)
        h.autoscaler.modes.clear()
        h.autoscaler.release()
        h.pump()
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(len(h.autoscaler.statuses()), 2)
        self.assertEqual(h.autoscaler.deleted(False), [1])

    def test_timeout_then_next_address(self) -> None:
        """The first address hangs: after the timeout the second one gets it."""
        h = Harness(self, ("http://a.test", "http://b.test"), timeout=5.0)
        h.autoscaler.modes["a.test"] = "hang"
        h.start()
        self.assertEqual(h.autoscaler.statuses("b.test"), [])
        h.tick(times=5)
        self.assertEqual(len(h.autoscaler.statuses("b.test")), 1)
        self.assertEqual(len(h.autoscaler.statuses("a.test")), 1)


class DeletionTests(SynchronousTestCase):
    """``/delete_requests/``: records (or the legacy split), removed only when acknowledged."""

    def test_records_in_one_post(self) -> None:
        """
        Every ended request goes in one POST of records, oldest first, with
        the official status, success flag and times: a served request has all
        three times; an errored one too; a request cancelled in the queue has
        neither start nor end; one cancelled at the backend has a start and
        no end; a rejected one only its arrival.
        """
        h = Harness(self)
        ledger = h.ledger
        served = ledger.receive(1, 1, 1.0)  # t=0
        h.clock.advance(1)
        ledger.started(served)  # t=1
        errored = ledger.receive(2, 2, 1.0)
        ledger.started(errored)
        queued = ledger.receive(3, 3, 1.0)
        h.clock.advance(2)
        ledger.finish(served, Outcome.SERVED)  # t=3
        ledger.finish(errored, Outcome.ERRORED)
        ledger.finish(queued, Outcome.CANCELLED)
        working = ledger.receive(5, 5, 1.0)
        ledger.started(working)
        h.clock.advance(1)
        ledger.finish(working, Outcome.CANCELLED)  # t=4
        ledger.reject(4, 4, 1.0)
        ledger.receive(6, 6, 1.0)  # still in flight: not deleted
        h.start()

        def record(idx: int, success: bool, status: str, *times: float) -> dict[str, Any]:
            keys = ("entered_queue_at", "work_started_at", "work_completed_at")
            return {
                "request_idx": idx,
                "success": success,
                "status": status,
                **dict(zip(keys, times, strict=True)),
            }

        self.assertEqual(
            h.autoscaler.bodies("/delete_requests/"),
            [
                {
                    "worker_id": 77,
                    "mtoken": "tok",
                    "requests": [
                        record(1, True, "Success", 0.0, 1.0, 3.0),
                        record(2, False, "Error", 1.0, 1.0, 3.0),
                        record(3, True, "Cancelled", 1.0, 0.0, 0.0),
                        record(5, True, "Cancelled", 3.0, 3.0, 0.0),
                        record(4, False, "Rejected", 4.0, 0.0, 0.0),
                    ],
                }
            ],
        )
        self.assertEqual(ledger.pending_deletions, 0)
        h.tick(times=3)
        self.assertEqual(len(h.autoscaler.bodies("/delete_requests/")), 1)

    def test_split_and_acknowledged(self) -> None:
        """Legacy form: served and cancelled go with success true; errored and rejected false."""
        h = Harness(self, delete_format="legacy")
        ledger = h.ledger
        ledger.finish(ledger.receive(1, 1, 1.0), Outcome.SERVED)
        ledger.finish(ledger.receive(2, 2, 1.0), Outcome.ERRORED)
        ledger.finish(ledger.receive(3, 3, 1.0), Outcome.CANCELLED)
        ledger.reject(4, 4, 1.0)
        ledger.receive(5, 5, 1.0)
        h.start()
        self.assertEqual(
            h.autoscaler.bodies("/delete_requests/"),
            [
                {"worker_id": 77, "mtoken": "tok", "request_idxs": [1, 3], "success": True},
                {"worker_id": 77, "mtoken": "tok", "request_idxs": [2, 4], "success": False},
            ],
        )
        self.assertEqual(ledger.pending_deletions, 0)

    def test_only_non_empty_lists(self) -> None:
        """Only the flag with entries is posted; nothing when nothing is pending."""
        h = Harness(self, delete_format="legacy")
        h.ledger.reject(9, 9, 1.0)
        h.start()
        h.tick(times=3)
        self.assertEqual(
            h.autoscaler.bodies("/delete_requests/"),
            [{"worker_id": 77, "mtoken": "tok", "request_idxs": [9], "success": False}],
        )

    def test_kept_until_acknowledged(self) -> None:
        """
        A refused POST keeps the entries; when only one of the two POSTs is
        accepted, only its entries go (legacy form).
        """
        h = Harness(self, delete_format="legacy")
        h.ledger.finish(h.ledger.receive(1, 1, 1.0), Outcome.SERVED)
        h.ledger.reject(2, 2, 1.0)
        h.autoscaler.modes["a.test"] = "fail"
        h.start()
        self.assertEqual(h.ledger.pending_deletions, 2)
        # Accept the success list, refuse the failure list.
        real = h.autoscaler.render_POST

        def picky(request: Request) -> bytes | int:
            body = json.loads(request.content.getvalue())
            h.autoscaler.modes["a.test"] = "fail" if body.get("success") is False else "ok"
            return real(request)

        h.autoscaler.render_POST = picky  # type: ignore[method-assign]
        h.tick()
        self.assertEqual(h.autoscaler.deleted(True), [1])
        self.assertEqual(h.ledger.take_deletions().failed, (2,))
        h.autoscaler.render_POST = real  # type: ignore[method-assign]
        h.autoscaler.modes.clear()
        h.tick()
        self.assertEqual(h.autoscaler.deleted(False), [2])
        self.assertEqual(h.autoscaler.deleted(True), [1])
        self.assertEqual(h.ledger.pending_deletions, 0)

    def test_backlog_in_bounded_posts(self) -> None:
        """A backlog goes out at most max_deletions_per_post per cycle."""
        h = Harness(self, max_deletions_per_post=4)
        for i in range(10):
            h.ledger.reject(i, i, 1.0)
        h.start()
        h.tick(times=2)
        self.assertEqual(
            [
                [r["request_idx"] for r in b["requests"]]
                for b in h.autoscaler.bodies("/delete_requests/")
            ],
            [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]],
        )


class StopTests(SynchronousTestCase):
    """stopService flushes, and never hangs."""

    def test_stop_flushes(self) -> None:
        """Stopping sends a final status (even unchanged) and the deletions."""
        h = Harness(self)
        h.start()
        h.state.set_phase(Phase.DRAINING)
        h.ledger.finish(h.ledger.receive(3, 3, 2.0), Outcome.SERVED)
        d = h.reporter.stopService()
        h.pump()
        self.assertIsNone(self.successResultOf(d))
        [_, final] = h.autoscaler.statuses()
        self.assertEqual(final["cur_perf"], 2.0)
        self.assertEqual(h.autoscaler.deleted(True), [3])
        # Unchanged since: still one final report, then the loop is gone.
        h.tick(times=30)
        self.assertEqual(len(h.autoscaler.statuses()), 2)
        self.assertFalse(h.reporter.running)

    def test_stop_sends_unchanged_status(self) -> None:
        """The final status is sent even when nothing changed."""
        h = Harness(self)
        h.start()
        d = h.reporter.stopService()
        h.pump()
        self.successResultOf(d)
        self.assertEqual(len(h.autoscaler.statuses()), 2)

    def test_stop_never_hangs(self) -> None:
        """
        With the autoscaler hanging, and a cycle in flight, stopService
        still fires within ``timeout`` seconds; nothing is committed.
        """
        h = Harness(self)
        h.start()
        h.autoscaler.modes["a.test"] = "hang"
        h.ledger.reject(1, 1, 1.0)
        h.tick()
        d = h.reporter.stopService()
        h.pump()
        self.assertNoResult(d)
        h.tick(9.9)
        self.assertNoResult(d)
        h.tick(0.1)
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(h.ledger.pending_deletions, 1)
        self.assertEqual(h.ledger.window()[Outcome.REJECTED].requests, 1)
        # The hung attempt ends by its own 60 s timeout; nothing is left after.
        h.tick(times=60)
        self.assertEqual(len(h.clock.getDelayedCalls()), 0)


class RobustnessTests(SynchronousTestCase):
    """The loop never dies."""

    def test_disk_usage_raises(self) -> None:
        """
        disk_usage raising: reports still go out (0.0 growth), logged once;
        when it works again, the growth counts from the last good baseline.
        """
        logged = CaptureLog(self, "vespa.worker.reporter")
        h = Harness(self)
        h.start()
        h.disk_error = OSError("no /")
        h.tick(times=25)
        self.assertEqual(
            [s["additional_disk_usage"] for s in h.autoscaler.statuses()], [0.0, 0.0, 0.0]
        )
        self.assertEqual(len([e for e in logged.at(LogLevel.warn) if "disk" in e["log_format"]]), 1)
        h.disk_error = None
        h.disk += 3 * GB
        h.tick(times=5)
        self.assertEqual(h.autoscaler.statuses()[-1]["additional_disk_usage"], 3.0)

    def test_disk_usage_raises_at_start(self) -> None:
        """No baseline at start: growth is 0.0 until one is taken."""
        h = Harness(self)
        h.disk_error = OSError("no /")
        h.start()
        h.disk_error = None
        h.tick(times=10)
        h.disk += GB
        h.tick(times=10)
        self.assertEqual(
            [s["additional_disk_usage"] for s in h.autoscaler.statuses()], [0.0, 0.0, 1.0]
        )

    def test_bug_in_a_step(self) -> None:
        """
        An unexpected exception in a cycle is logged once (with its traceback),
        the loop keeps ticking, and the other step still runs.
        """
        h = Harness(self)
        broken = [True]
        real = h.ledger.take_deletions

        def take(limit: int | None = None) -> Any:
            if broken[0]:
                raise ZeroDivisionError("bug")
            return real(limit)

        h.ledger.take_deletions = take  # type: ignore[method-assign]
        h.ledger.reject(1, 1, 1.0)
        h.start()
        h.tick(times=12)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertEqual(len(h.autoscaler.statuses()), 2)
        broken[0] = False
        h.tick()
        self.assertEqual(h.autoscaler.deleted(False), [1])

    def test_client_raises(self) -> None:
        """An HTTP client that raises or fails at once is an ordinary failure."""
        clock = Clock()
        calls = []

        class Broken:
            """An HTTP client that fails every way it can."""

            def post(self, url: str, **kwargs: Any) -> Deferred[Any]:
                calls.append(url)
                if len(calls) % 2:
                    raise ConnectionRefusedError("refused")
                return fail(ConnectionRefusedError("refused"))

        ledger = Ledger()
        reporter = Reporter(
            clock,
            Broken(),  # type: ignore[arg-type]
            ReportSettings(addresses=("http://a.test",)),
            IDENTITY,
            WorkerState(clock),
            ledger,
            disk_usage=lambda: 0.0,
        )
        reporter.startService()
        for _ in range(5):
            clock.advance(1)
        self.assertEqual(len(calls), 6)
        clock.advance(1)  # the loop goes on
        self.assertEqual(len(calls), 7)
        d = reporter.stopService()
        self.successResultOf(d)


class SettingsTests(SynchronousTestCase):
    """ReportSettings refuses nonsense."""

    def test_bad_values(self) -> None:
        """Non-positive interval, heartbeat, timeout or batch size; a bare string."""
        for bad in (
            {"interval": 0},
            {"heartbeat": -1},
            {"timeout": 0},
            {"stop_timeout": 0},
            {"delete_format": "xml"},
        ):
            self.assertRaises(ValueError, ReportSettings, ("http://a",), **bad)
        self.assertRaises(ValueError, ReportSettings, ("http://a",), max_deletions_per_post=0)
        self.assertRaises(TypeError, ReportSettings, "http://a")


class UnsoundValueTests(SynchronousTestCase):
    """A value that cannot be reported is dropped and logged once; the reports go on."""

    def test_absurd_load_dropped_heartbeat_kept(self) -> None:
        """
        A load of 1e300 in flight (over MAX_LOAD): every status still goes
        out on time with cur_load 0.0 in its place, each field's problem
        logged once (cur_load, and new_load in the window that received it);
        once the request ends, the real value is sent again.
        """
        logged = CaptureLog(self, "vespa.worker.reporter")
        h = Harness(self)
        h.state.loaded(10.0)
        h.start()
        ticket = h.ledger.receive(1, 1, 1e300)
        h.tick(times=25)
        statuses = h.autoscaler.statuses()
        # The start report, the change at t=1, then heartbeats at t=11 and t=21.
        self.assertEqual(len(statuses), 4)
        self.assertEqual({s["cur_load"] for s in statuses}, {0.0})
        self.assertEqual(statuses[-1]["working_request_idxs"], [1])
        dropped = [e for e in logged.at(LogLevel.warn) if "cannot be reported" in e["log_format"]]
        self.assertEqual(
            sorted(e["item"].partition(":")[0] for e in dropped), ["cur_load", "new_load"]
        )
        h.ledger.finish(ticket, Outcome.SERVED)
        other = h.ledger.receive(2, 2, 5.0)
        h.tick()
        self.assertEqual(h.autoscaler.statuses()[-1]["cur_load"], 5.0)
        h.ledger.finish(other, Outcome.SERVED)

    def test_unsound_index_left_out_of_deletions(self) -> None:
        """
        An index the autoscaler cannot store (2**70, -1) is left out of the
        records, logged once, and its batch still acknowledged: the ones
        behind it are not blocked.
        """
        logged = CaptureLog(self, "vespa.worker.reporter")
        h = Harness(self)
        h.ledger.reject(2**70, 0, 1.0)
        h.ledger.reject(-1, 0, 1.0)
        h.ledger.reject(8, 0, 1.0)
        h.start()
        h.tick(times=3)
        self.assertEqual(h.autoscaler.deleted(False), [8])
        self.assertEqual(h.ledger.pending_deletions, 0)
        dropped = [e for e in logged.at(LogLevel.warn) if "cannot be reported" in e["log_format"]]
        self.assertEqual(len(dropped), 1)


class SlowAutoscalerTests(SynchronousTestCase):
    """A slow autoscaler is waited for: its counts are not sent twice."""

    def test_answer_after_20_seconds_counted_once(self) -> None:
        """
        The autoscaler takes 20 s to accept a report carrying 3 units
        served: with the default timeout it is not given up on, so the
        served work is sent once in all (the official worker's 10 s timeout
        would have sent it again).
        """
        h = Harness(self)
        self.assertEqual(ReportSettings(addresses=()).timeout, 60.0)
        h.state.loaded(10.0)
        h.start()
        h.autoscaler.modes["a.test"] = "hang"
        h.ledger.finish(h.ledger.receive(1, 1, 3.0), Outcome.SERVED)
        h.tick(times=20)
        h.autoscaler.modes.clear()
        h.autoscaler.release()
        h.pump()
        h.tick(times=15)
        served = [p.body["cur_perf"] for p in h.autoscaler.received if p.path == "/worker_status/"]
        self.assertEqual(sum(served), 3.0)
        self.assertEqual(served.count(3.0), 1)


class ReporterPropertyTests(SynchronousTestCase):
    """Whatever the ledger holds, every report is strict JSON and the cadence holds."""

    @settings(max_examples=40, deadline=None, database=None)
    @given(
        requests=st.lists(
            st.tuples(
                st.integers(min_value=-(2**70), max_value=2**70),
                st.floats(min_value=0.0, max_value=1e308),
                st.sampled_from(list(Outcome)),
            ),
            max_size=12,
        ),
        max_perf=st.floats(min_value=1e-300, max_value=1e300),
    )
    def test_reports_always_sound(
        self, requests: list[tuple[int, float, Outcome]], max_perf: float
    ) -> None:
        """
        Any indexes and workloads the ledger accepts, any outcome, any
        throughput: a status goes out every tick there is a change and at the
        heartbeat, every body is strict JSON with finite numbers, and the
        deletions are all acknowledged.
        """
        h = Harness(self)
        h.state.loaded(max_perf)
        h.start()
        for idx, workload, outcome in requests:
            if outcome is Outcome.REJECTED:
                h.ledger.reject(idx, 0, workload)
            else:
                ticket = h.ledger.receive(idx, 0, workload)
                if outcome is not Outcome.SERVED or idx % 2:
                    h.ledger.finish(ticket, outcome)
            h.tick()
        before = len(h.autoscaler.statuses())
        h.tick(times=21)
        self.assertGreaterEqual(len(h.autoscaler.statuses()) - before, 2)
        for post in h.autoscaler.received:
            json.dumps(post.body, allow_nan=False)
        self.assertEqual(h.ledger.pending_deletions, 0)
        h.reporter.stopService()
        h.pump()
