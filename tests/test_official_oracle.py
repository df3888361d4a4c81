"""
The official worker as the oracle of the reports' form: ``vastai==1.9.1``'s
worker (a subprocess) and a Vespa worker report to the same autoscaler
stand-in, get the same traffic, and their ``/worker_status/`` and
``/delete_requests/`` bodies must have the same keys and value types.

The stand-in signs the url only, as today's autoscaler does and as the
official worker verifies.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import sys
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

from tests.support import HTTPClient, start_echo_backend, until
from tests.support_worker import ProtocolTestCase
from vespa.protocol.envelope import wrap_body

OFFICIAL_ID = 8
VESPA_ID = 7
SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "official_worker.py")


def free_port() -> int:
    """A port free on 127.0.0.1 now, for a process that cannot report its own."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Official(ProcessProtocol):
    """Keeps the official worker's output (shown if a test fails) and its end."""

    def __init__(self) -> None:
        self.output = bytearray()
        self.ended: Deferred[None] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output += data[-65536:]

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(None)


def declared_types(cls: Any) -> dict[str, Any]:
    """The field types the official code declares, by name."""
    return {f.name: f.type for f in dataclasses.fields(cls)}


def json_kind(value: Any, declared: Any) -> str:
    """
    The JSON kind of ``value``. A field the official code declares ``float``
    is a number: the official worker writes its int ``0`` there after a reset
    (``ModelMetrics.reset``), which the autoscaler reads as the same number.
    """
    if declared is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return "number"
    if isinstance(value, list):
        return "list[" + ",".join(sorted({type(v).__name__ for v in value})) + "]"
    return type(value).__name__


class OfficialOracleTests(ProtocolTestCase):
    """Vespa's reports have the official worker's keys and value types."""

    timeout = 120

    async def start_official(self, autoscaler_port: int) -> int:
        """Start the official worker in front of an echo backend; return its port."""
        self.official_backend, backend_port = start_echo_backend(self)
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        log_file = os.path.join(workdir, "model.log")
        with open(log_file, "w") as f:
            f.write("READY\n")
        port, http_port = free_port(), free_port()
        env = {
            **os.environ,
            "WORKER_PORT": str(port),
            "WORKER_HTTP_PORT": str(http_port),
            "REPORT_ADDR": f"http://127.0.0.1:{autoscaler_port}",
            "CONTAINER_ID": str(OFFICIAL_ID),
            "MASTER_TOKEN": "official-token",
            "PUBLIC_IPADDR": "127.0.0.1",
            f"VAST_TCP_PORT_{port}": str(port),
        }
        official = _Official()
        transport = reactor.spawnProcess(
            official,
            sys.executable,
            [sys.executable, SCRIPT, str(backend_port), log_file],
            env=env,
            path=workdir,
        )
        self.official = official

        async def stop() -> None:
            if not official.ended.called:
                transport.signalProcess("KILL")
            await official.ended

        self.addCleanup(lambda: Deferred.fromCoroutine(stop()))
        return port

    async def wait(self, waiting: Deferred[Any], what: str, seconds: float = 60.0) -> Any:
        """``waiting``'s result, or a failure showing the official worker's output."""
        waiting.addTimeout(seconds, reactor)
        try:
            return await waiting
        except Exception:
            output = self.official.output.decode("utf-8", "replace")[-4000:]
            self.fail(f"no {what} within {seconds} s; the official worker said:\n{output}")

    def records(self, worker_id: int) -> dict[str, dict[str, Any]]:
        """The first record of each status that ``worker_id`` deleted so far."""
        records: dict[str, dict[str, Any]] = {}
        for body in self.env.autoscaler.delete_reports:
            if body["worker_id"] == worker_id:
                for record in body["requests"]:
                    records.setdefault(record["status"], record)
        return records

    async def official_records(self, statuses: set[str]) -> dict[str, dict[str, Any]]:
        """Wait for a record of each status from the official worker (its own clock)."""
        for status in sorted(statuses):
            await self.wait(
                self.env.autoscaler.wait_for_delete(
                    lambda d, s=status: (
                        d["worker_id"] == OFFICIAL_ID
                        and any(r["status"] == s for r in d["requests"])
                    )
                ),
                f"{status} record from the official worker",
            )
        return self.records(OFFICIAL_ID)

    async def vespa_records(self, statuses: set[str]) -> dict[str, dict[str, Any]]:
        """Tick Vespa's clock until it deleted a record of each status."""
        for _ in range(30):
            if statuses <= set(self.records(VESPA_ID)):
                return self.records(VESPA_ID)
            self.env.clock.advance(1)
            await self.env.worker.reporter.flush()
        self.fail(f"Vespa deleted {sorted(self.records(VESPA_ID))}, not {sorted(statuses)}")

    async def traffic(self, post: Any) -> None:
        """
        The same traffic for each worker: two served requests; one that
        hangs at the backend while another is refused (429, the worker being
        exclusive), then is cancelled by its client.
        """
        for _ in range(2):
            response, body = await post(b"/echo")
            self.assertEqual(response.code, 200, body)
        hanging = ensureDeferred(post(b"/hang"))
        hanging.addErrback(lambda f: None)  # the client gives up, as intended
        await until(lambda: any(uri == b"/hang" for _, uri in self.backends_received()))
        response, body = await post(b"/echo")
        self.assertEqual(response.code, 429, body)
        hanging.cancel()

    def backends_received(self) -> list[tuple[bytes, bytes]]:
        """What the two echo backends received, ``(method, uri)``."""
        return list(self.env.backend.received) + list(self.official_backend.received)

    async def test_same_keys_and_types(self) -> None:
        """
        For the same traffic (served, refused with 429, cancelled at the
        backend), the official worker's and Vespa's status reports (one with
        served work) and deletion records have the same keys and each value
        the same JSON type; the records of each status have the official
        success flag and the same zero times.
        """
        from vastai.serverless.server.lib.data_types import RequestMetrics, WorkerStatusData

        h = await self.start(signing_mode="url", max_wait_time=0.0)
        autoscaler = self.env.autoscaler
        official_port = await self.start_official(self.env.autoscaler_port)
        await self.wait(
            autoscaler.wait_for_status(lambda r: r.get("id") == OFFICIAL_ID and r["max_perf"] > 0),
            "loaded report from the official worker",
        )
        official = HTTPClient(self, official_port)

        async def to_official(path: bytes) -> Any:
            auth = h.auth(1, mode="url", url=f"http://127.0.0.1:{official_port}")
            return await official.request(b"POST", path, body=wrap_body(auth, {"x": 1}))

        async def to_vespa(path: bytes) -> Any:
            return await h.post(path, {"x": 1}, auth=h.auth(1, mode="url"))

        await self.traffic(to_official)
        self.official_backend.received.clear()
        self.env.backend.received.clear()
        # Vespa's wall clock is the test's, at 0 until now: "never" is 0 too.
        self.env.clock.advance(1)
        await self.traffic(to_vespa)

        theirs_status = await self.wait(
            autoscaler.wait_for_status(lambda r: r.get("id") == OFFICIAL_ID and r["cur_perf"] > 0),
            "status with served work from the official worker",
        )
        ours_status = await self.report(lambda r: r["id"] == VESPA_ID and r["cur_perf"] > 0)
        statuses = {"Success", "Rejected", "Cancelled"}
        theirs_records = await self.official_records(statuses)
        ours_records = await self.vespa_records(statuses)
        self.assertEqual(autoscaler.refused_reports, [])

        status_types = declared_types(WorkerStatusData)
        self.assertEqual(sorted(ours_status), sorted(theirs_status))
        self.assertEqual(sorted(ours_status), sorted(status_types))
        for name, declared in status_types.items():
            self.assertEqual(
                json_kind(ours_status[name], declared),
                json_kind(theirs_status[name], declared),
                f"{name}: ours {ours_status[name]!r}, official {theirs_status[name]!r}",
            )
            if name in ("cur_capacity", "max_capacity"):
                # Declared float, always written as the literal int 0 by both.
                self.assertEqual((ours_status[name], theirs_status[name]), (0, 0))
                self.assertIs(type(ours_status[name]), type(theirs_status[name]))
            elif declared is float:
                # Vespa always writes the declared float, never the int 0 of a reset.
                self.assertIs(type(ours_status[name]), float, name)

        ours_delete = next(d for d in autoscaler.delete_reports if d["worker_id"] == VESPA_ID)
        theirs_delete = next(d for d in autoscaler.delete_reports if d["worker_id"] == OFFICIAL_ID)
        self.assertEqual(sorted(ours_delete), sorted(theirs_delete))
        record_types = declared_types(RequestMetrics)
        for status in sorted(statuses):
            ours, theirs = ours_records[status], theirs_records[status]
            self.assertEqual(sorted(ours), sorted(theirs), status)
            for name in theirs:
                self.assertIn(name, record_types)
                self.assertEqual(
                    json_kind(ours[name], None),
                    json_kind(theirs[name], None),
                    f"{status} {name}: ours {ours[name]!r}, official {theirs[name]!r}",
                )
            for name in ("entered_queue_at", "work_started_at", "work_completed_at"):
                self.assertEqual(ours[name] == 0, theirs[name] == 0, f"{status} {name}")
            self.assertEqual(ours["success"], theirs["success"], status)
        json.dumps([ours_status, ours_delete], allow_nan=False)
