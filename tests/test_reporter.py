"""
Tests for :mod:`vespa.worker.reporter`, against a small fake autoscaler over
:class:`treq.testing.StubTreq`, with time driven by a :class:`Clock`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from treq.testing import StubTreq
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
        """Every request_idx accepted by ``/delete_requests/`` with ``success``."""
        return [
            i
            for body in self.bodies("/delete_requests/", accepted=True)
            if body["success"] is success
            for i in body["request_idxs"]
        ]


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
        self.ledger = Ledger(max_pending_deletions=settings.pop("max_pending_deletions", 100_000))
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
        report has each of the 17 fields with its exact value and type.
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
        h.disk = 10 * GB  # baseline taken at start
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
            "cur_capacity": 0.0,
            "max_capacity": 0.0,
            "num_requests_working": 2,
            "num_requests_recieved": 4,
            "additional_disk_usage": 0.0,
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
        self.assertEqual(h.ledger.window().requests_received, 0)


