"""
End to end, the Vast protocol: the worker between the autoscaler stand-in and
a backend, every socket real, every timer on a Clock.
"""

from __future__ import annotations

import json
import random

from twisted.internet.defer import ensureDeferred, gatherResults

from tests.support import (
    PUBLIC_URL,
    HTTPClient,
    raw_connect,
    until,
)
from tests.support_worker import ProtocolTestCase
from vespa.protocol.envelope import wrap_body
from vespa.protocol.reports import WORKER_STATUS_FIELDS
from vespa.worker.ledger import Outcome


class SignedRequestTests(ProtocolTestCase):
    """Signed requests are verified and relayed; everything else is refused."""

    async def test_signed_post_is_relayed_with_the_payload_as_body(self) -> None:
        """The payload reaches the backend as the body; the response comes back."""
        h = await self.start()
        response, body = await h.post(b"/echo/v1/completions?x=1", {"prompt": "hi", "n": 1})
        self.assertEqual(response.code, 200)
        echo = json.loads(body)
        self.assertEqual(json.loads(echo["body"]), {"prompt": "hi", "n": 1})
        self.assertEqual(echo["uri"], "/echo/v1/completions?x=1")
        self.assertEqual(self.ledger.totals[Outcome.SERVED].requests, 1)
        self.assert_invariant()

    async def test_routed_by_the_stand_in(self) -> None:
        """A request routed and signed by the autoscaler stand-in goes through."""
        h = await self.start()
        for cost in (100, 100.0, 7.5):
            auth = await h.routed(cost)
            self.assertEqual(auth["url"], PUBLIC_URL)
            response, _ = await h.post(b"/echo", {"max_tokens": cost}, auth=auth)
            self.assertEqual(response.code, 200)

    async def test_int_and_float_costs_verify_as_received(self) -> None:
        """Cost 100 and 100.0 sign differently; each verifies exactly as sent."""
        h = await self.start()
        for cost in (100, 100.0):
            response, _ = await h.post(b"/echo", {}, cost=cost)
            self.assertEqual(response.code, 200)
        forged = h.auth(100)
        forged["cost"] = 100.0  # same number, other JSON type: not what was signed
        response, body = await h.post(b"/echo", {}, auth=forged)
        self.assertEqual(response.code, 401)
        self.assertEqual(json.loads(body)["origin"], "vespa")

    async def test_get_with_query_auth_keeps_the_callers_parameters(self) -> None:
        """GET auth travels in serverless_* params, which never reach the backend."""
        h = await self.start()
        response, body = await h.get(b"/echo/models?a=1&a=2&b=x%20y", cost=1.5)
        self.assertEqual(response.code, 200)
        self.assertEqual(json.loads(body)["uri"], "/echo/models?a=1&a=2&b=x%20y")

    async def test_url_signing_mode(self) -> None:
        """In url mode only the url is signed."""
        h = await self.start(signing_mode="url")
        response, _ = await h.post(b"/echo", {}, auth=h.auth(3, mode="url"))
        self.assertEqual(response.code, 200)
        response, _ = await h.post(b"/echo", {}, auth=h.auth(3, mode="full"))
        self.assertEqual(response.code, 401)

    async def test_bad_signature_is_401_and_never_reported(self) -> None:
        """
        A tampered request is 401 and counted in the local metrics only: not
        in the ledger, not in rej_load, not in /delete_requests/.
        """
        h = await self.start()
        auth = h.auth(40)
        auth["cost"] = 1
        response, body = await h.post(b"/echo", {}, auth=auth)
        self.assertEqual(response.code, 401)
        self.assertEqual(json.loads(body)["origin"], "vespa")
        self.assertEqual(
            (self.ledger.totals[Outcome.REJECTED].requests, self.ledger.totals.received.requests),
            (0, 0),
        )
        self.assertEqual(self.refused("401"), 1.0)
        self.assertEqual([r for r in self.env.backend.received if r[1] != b"/health"], [])
        signed = h.auth(5)
        await h.post(b"/echo", {}, auth=signed)
        report = await self.report(lambda r: r["cur_perf"] > 0)
        self.assertEqual(report["rej_load"], 0.0)
        self.assertEqual(self.deleted(), [signed["request_idx"]])

    async def test_replayed_signature_is_refused(self) -> None:
        """The same signed request twice: the second is 401."""
        h = await self.start()
        auth = h.auth(5)
        self.assertEqual((await h.post(b"/echo", {}, auth=auth))[0].code, 200)
        response, body = await h.post(b"/echo", {}, auth=auth)
        self.assertEqual(response.code, 401)
        self.assertIn("replay", json.loads(body)["error"])

    async def test_request_signed_for_another_worker_is_refused(self) -> None:
        """A valid signature for another worker's url is 401 (url binding)."""
        h = await self.start()
        response, body = await h.post(b"/echo", {}, auth=h.auth(5, url="http://198.51.100.1:4000"))
        self.assertEqual(response.code, 401)
        self.assertIn("another worker", json.loads(body)["error"])

    async def test_url_binding_can_be_switched_off(self) -> None:
        """With --url-binding false, a request signed for another url is accepted."""
        h = await self.start(url_binding=False)
        response, _ = await h.post(b"/echo", {}, auth=h.auth(5, url="http://198.51.100.1:4000"))
        self.assertEqual(response.code, 200)

    async def test_envelope_errors(self) -> None:
        """No envelope: 422 for a body, 400 for a query; neither is counted."""
        h = await self.start()
        response, body = await self.env.client.request(b"POST", b"/echo", body=b"{nope")
        self.assertEqual((response.code, json.loads(body)["error"]), (422, "invalid JSON"))
        response, body = await self.env.client.request(b"POST", b"/echo", body=b'{"payload": 1}')
        self.assertEqual(response.code, 422)
        self.assertEqual(json.loads(body)["auth_data"], "field missing")
        response, _ = await self.env.client.request(b"GET", b"/echo")
        self.assertEqual(response.code, 400)
        response, _ = await self.env.client.request(b"GET", b"/echo?serverless_reqnum=x")
        self.assertEqual(response.code, 400)
        self.assertEqual(
            self.ledger.totals[Outcome.REJECTED].requests + self.ledger.totals.received.requests, 0
        )
        del h

    async def test_blocked_path_is_403_before_auth(self) -> None:
        """A blocked path is refused before the envelope is even read."""
        await self.start(blocked_paths=("/admin/*",))
        response, _ = await self.env.client.request(b"POST", b"/admin/x", body=b"garbage")
        self.assertEqual(response.code, 403)

    async def test_default_cost_applies_to_costs_of_one_or_less(self) -> None:
        """--default-cost replaces a signed cost of 1 or less, for accounting only."""
        h = await self.start(default_cost=50.0)
        await h.post(b"/echo", {}, cost=1)
        await h.post(b"/echo", {}, cost=20)
        self.assertEqual(self.ledger.totals[Outcome.SERVED].workload, 70.0)


class AdmissionTests(ProtocolTestCase):
    """The wait estimate refuses with 429; slots queue requests in order."""

    async def test_429_when_the_estimated_wait_is_over_the_limit(self) -> None:
        """
        At 10 units/s, 350 units in flight is a 35 s wait, over the default
        30 s: the next request gets 429, and is reported as Rejected.
        """
        h = await self.start(throughput=10.0)
        first = ensureDeferred(h.post(b"/hang", {}, cost=350))
        await self.env.backend.wait_for_request(b"/hang")
        auth = h.auth(1)
        response, body = await h.post(b"/echo", {}, auth=auth)
        self.assertEqual(response.code, 429)
        error = json.loads(body)
        self.assertEqual(error["estimated_wait"], 35.0)
        self.assertEqual(response.headers.getRawHeaders(b"retry-after"), [b"35"])
        report = await self.report(lambda r: r["rej_load"] > 0)
        self.assertEqual(report["rej_load"], 1.0)
        [delete] = self.env.autoscaler.delete_reports
        [record] = delete["requests"]
        self.assertEqual(
            (record["request_idx"], record["status"], record["success"]),
            (auth["request_idx"], "Rejected", False),
        )
        self.assertEqual((record["work_started_at"], record["work_completed_at"]), (0.0, 0.0))
        self.assertEqual(self.ledger.totals[Outcome.REJECTED].requests, 1)
        first.cancel()
        first.addErrback(lambda f: None)  # the client gave up, as intended
        self.assert_invariant()

    async def test_one_slot_serves_in_order_and_a_queued_client_can_leave(self) -> None:
        """With one slot, requests run one at a time in arrival order; a client
        that leaves the queue is cancelled and never reaches the backend."""
        h = await self.start(slots=1)
        clients = []
        for n in range(3):
            client = await raw_connect(self.env.port)
            body = wrap_body(h.auth(1), {})
            client.transport.write(
                b"POST /stream?n=2&interval=1&k=%d HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n"
                b"\r\n%s" % (n, len(body), body)
            )
            clients.append(client)
            await until(lambda n=n: self.ledger.totals.received.requests == n + 1)
        self.assertEqual(self.env.worker.resource.admission.queued, 2)
        clients[1].transport.loseConnection()
        await until(lambda: self.ledger.totals[Outcome.CANCELLED].requests == 1)
        self.assertEqual(self.env.worker.resource.admission.queued, 1)
        for _ in range(4):
            self.env.clock.advance(1)
            await until(lambda: True)
        await clients[0].wait_for(b"\r\n0\r\n\r\n")
        await self.env.backend.wait_for_request(b"/stream?n=2&interval=1&k=2")
        self.env.clock.advance(1)
        await clients[2].wait_for(b"\r\n0\r\n\r\n")
        streams = [uri for _, uri in self.env.backend.received if uri.startswith(b"/stream")]
        self.assertEqual(streams, [b"/stream?n=2&interval=1&k=0", b"/stream?n=2&interval=1&k=2"])
        self.assertEqual(
            (
                self.ledger.totals[Outcome.SERVED].requests,
                self.ledger.totals[Outcome.CANCELLED].requests,
            ),
            (2, 1),
        )
        for client in clients:
            client.transport.loseConnection()
        self.assert_invariant()


class ReportTests(ProtocolTestCase):
    """What the autoscaler is told, and that an outage loses nothing."""

    async def test_report_fields(self) -> None:
        """A report after one served request has the 18 fields with the right values,
        and the deletion is one record with its status and times."""
        h = await self.start()
        auth = h.auth(30)
        await h.post(b"/echo", {}, auth=auth)
        report = await self.report(lambda r: r["cur_perf"] > 0)
        self.assertEqual(tuple(sorted(report)), tuple(sorted(WORKER_STATUS_FIELDS)))
        self.assertEqual(len(report), 18)
        self.assertIsInstance(report["disk_usage"], float)
        self.assertEqual(report["id"], 7)
        self.assertEqual(report["mtoken"], "master-token")
        self.assertEqual(report["url"], PUBLIC_URL)
        self.assertEqual(report["max_perf"], 100.0)
        self.assertEqual(report["cur_perf"], 30.0)
        self.assertEqual(report["new_load"], 30.0)
        self.assertEqual(report["cur_load"], 0.0)
        self.assertEqual(report["error_msg"], "")
        self.assertEqual(report["num_requests_recieved"], 1)
        self.assertEqual(report["working_request_idxs"], [])
        self.assertGreaterEqual(report["loadtime"], 0.0)
        self.assertIsInstance(report["additional_disk_usage"], float)
        delete = await self.env.autoscaler.wait_for_delete(lambda d: True)
        [record] = delete["requests"]
        self.assertEqual(
            (record["request_idx"], record["status"], record["success"]),
            (auth["request_idx"], "Success", True),
        )
        self.assertTrue(
            0
            <= record["entered_queue_at"]
            <= record["work_started_at"]
            <= record["work_completed_at"]
        )
        self.assertEqual((delete["worker_id"], delete["mtoken"]), (7, "master-token"))

    async def test_record_times_of_cancelled_requests(self) -> None:
        """
        With one slot: a request cancelled at the backend has its start and
        no end; one cancelled while queued has neither (the official zeros);
        both are Cancelled with success true.
        """
        h = await self.start(slots=1)
        self.env.clock.advance(5)
        clients = []
        for n in range(2):
            client = await raw_connect(self.env.port)
            body = wrap_body(h.auth(1, request_idx=70 + n), {})
            client.transport.write(
                b"POST /hang HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
                % (len(body), body)
            )
            clients.append(client)
            await until(lambda n=n: self.ledger.totals.received.requests == n + 1)
        self.env.clock.advance(1)
        for client in reversed(clients):
            client.transport.loseConnection()
        await until(lambda: self.ledger.totals[Outcome.CANCELLED].requests == 2)
        await self.report(lambda r: r["new_load"] == 0 and r["num_requests_working"] == 0)
        records = {
            r["request_idx"]: r for d in self.env.autoscaler.delete_reports for r in d["requests"]
        }
        at_backend, queued = records[70], records[71]
        self.assertEqual((at_backend["status"], at_backend["success"]), ("Cancelled", True))
        self.assertEqual((queued["status"], queued["success"]), ("Cancelled", True))
        self.assertGreater(at_backend["work_started_at"], 0.0)
        self.assertEqual(at_backend["work_completed_at"], 0.0)
        self.assertEqual((queued["work_started_at"], queued["work_completed_at"]), (0.0, 0.0))
        self.assertGreater(queued["entered_queue_at"], 0.0)

    async def test_legacy_deletes_for_an_older_autoscaler(self) -> None:
        """
        ``--delete-requests-format legacy`` against a stand-in expecting the
        2024-2025 form: the two-POST body is accepted, nothing refused.
        """
        h = await self.start(
            delete_requests_format="legacy",
            before_start=lambda env: setattr(env.autoscaler, "report_format", "legacy"),
        )
        ok = h.auth(2)
        await h.post(b"/echo", {}, auth=ok)
        await h.post(b"/status/500", {}, cost=3)
        await self.report(lambda r: r["cur_perf"] > 0)
        self.assertEqual(self.env.autoscaler.refused_reports, [])
        bodies = self.env.autoscaler.delete_reports
        self.assertEqual(
            [sorted(b) for b in bodies],
            [sorted(("worker_id", "mtoken", "request_idxs", "success"))] * 2,
        )
        self.assertEqual([b["success"] for b in bodies], [True, False])
        self.assertEqual(bodies[0]["request_idxs"], [ok["request_idx"]])

    async def test_in_flight_requests_are_reported(self) -> None:
        """A request in flight shows in cur_load and working_request_idxs."""
        h = await self.start()
        auth = h.auth(25)
        pending = ensureDeferred(h.post(b"/hang", {}, auth=auth))
        await self.env.backend.wait_for_request(b"/hang")
        report = await self.report(lambda r: r["cur_load"] > 0)
        self.assertEqual(report["cur_load"], 25.0)
        self.assertEqual(report["working_request_idxs"], [auth["request_idx"]])
        self.assertEqual(report["num_requests_working"], 1)
        pending.cancel()
        pending.addErrback(lambda f: None)  # the client gave up, as intended

    async def test_outage_of_60_seconds_loses_no_count(self) -> None:
        """Reports fail for 60 simulated seconds while requests come and go; the
        first accepted report after it carries every count, once (and nothing
        of the forged requests sent meanwhile)."""
        h = await self.start()
        await self.report()
        accepted_before = len(self.env.autoscaler.status_reports)
        self.env.autoscaler.fail("500")
        served = 0.0
        for second in range(60):
            if second % 10 == 0:
                await h.post(b"/echo", {}, cost=10)
                served += 10
                bad = h.auth(3)
                bad["cost"] = 4
                await h.post(b"/echo", {}, auth=bad)
            self.env.clock.advance(1)
            await self.env.worker.reporter.flush()
        self.assertEqual(len(self.env.autoscaler.status_reports), accepted_before)
        self.env.autoscaler.fail(None)
        report = await self.report(lambda r: r["cur_perf"] > 0)
        self.assertEqual(report["cur_perf"], served)
        self.assertEqual(report["new_load"], served)
        self.assertEqual(report["rej_load"], 0.0)
        for _ in range(3):
            self.env.clock.advance(1)
            await self.env.worker.reporter.flush()
        deletes = self.deleted()
        self.assertEqual(len(deletes), 6)
        self.assertEqual(len(set(deletes)), 6)

    async def test_hung_autoscaler_does_not_slow_requests(self) -> None:
        """With the autoscaler hanging, requests are served at once."""
        h = await self.start()
        self.env.autoscaler.fail("hang")
        self.env.clock.advance(1)
        await self.env.autoscaler.wait_for_failure()
        self.assertEqual(self.env.autoscaler.hanging, 1)
        for _ in range(5):
            response, _ = await h.post(b"/echo", {}, cost=2)
            self.assertEqual(response.code, 200)
        self.env.autoscaler.fail(None)
        await self.env.autoscaler.close()


class LifecycleTests(ProtocolTestCase):
    """Health checks error the worker and clear it; the ledger holds under chaos."""

    async def test_backend_dies_and_recovers(self) -> None:
        """Three failed health checks error the worker (503, reported); the first
        success clears it (no sticky errors)."""
        h = await self.start()
        self.env.backend.health_status = 503
        health = self.env.worker.health
        for n in range(3):
            self.env.clock.advance(10)
            await until(lambda n=n: health.failures == n + 1)
        self.assertIn("healthchecks", self.env.worker.state.error)
        response, body = await h.post(b"/echo", {}, cost=2)
        self.assertEqual(response.code, 503)
        self.assertIn("healthchecks", json.loads(body)["error"])
        report = await self.report(lambda r: r["error_msg"] != "")
        self.assertIn("3 consecutive", report["error_msg"])
        self.env.backend.health_status = 200
        self.env.clock.advance(10)
        await until(lambda: health.failures == 0)
        self.assertEqual(self.env.worker.state.error, "")
        report = await self.report(lambda r: r["error_msg"] == "")
        self.assertEqual((await h.post(b"/echo", {}, cost=2))[0].code, 200)

    async def test_ledger_invariant_under_a_random_mix(self) -> None:
        """Success, backend 500s, client disconnects and rejections, shuffled:
        every request ends in exactly one state and the reports add up."""
        h = await self.start()
        rng = random.Random(20261125)
        disconnects = bad = 0
        for _ in range(40):
            kind = rng.choice(["ok", "500", "gone", "bad", "gone-stream"])
            if kind == "ok":
                await h.post(b"/echo", {}, cost=rng.randint(1, 20))
            elif kind == "500":
                await h.post(b"/status/500", {}, cost=3)
            elif kind == "bad":
                auth = h.auth(2)
                auth["reqnum"] += 1
                await h.post(b"/echo", {}, auth=auth)
                bad += 1
            else:
                client = await raw_connect(self.env.port)
                body = wrap_body(h.auth(4), {})
                path = b"/hang" if kind == "gone" else b"/stream?n=100&interval=1"
                client.transport.write(
                    b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
                    % (path, len(body), body)
                )
                await until(lambda: self.ledger.in_flight_count == 1)
                client.transport.loseConnection()
                disconnects += 1
                await self.ledger.when_idle()
            self.assert_invariant()
        totals = self.ledger.totals
        self.assertEqual(totals[Outcome.CANCELLED].requests, disconnects)
        # Forged signatures are refused before verification: never in the ledger.
        self.assertEqual(totals.received.requests + bad, 40)
        self.assertEqual(totals[Outcome.REJECTED].requests, 0)
        for _ in range(3):
            await self.report()
        reports = self.env.autoscaler.status_reports
        self.assertAlmostEqual(sum(r["cur_perf"] for r in reports), totals[Outcome.SERVED].workload)
        self.assertAlmostEqual(
            sum(r["rej_load"] for r in reports), totals[Outcome.REJECTED].workload
        )
        self.assertAlmostEqual(
            sum(r["new_load"] for r in reports),
            totals.received.workload - totals[Outcome.CANCELLED].workload,
        )


class UnverifiedRequestTests(ProtocolTestCase):
    """
    The attacks of issue 10 items 1 and 4: what an unsigned caller claims
    never reaches the reports, and the reports keep their cadence.
    """

    async def test_two_costs_of_1e308_then_a_signed_request(self) -> None:
        """
        Two forged requests claiming cost 1e308 (in the body, and as
        ``serverless_cost`` in a GET query) are 401; the reports keep coming
        every tick, and the signed request after them is counted.
        """
        h = await self.start()
        forged = h.auth(1)
        forged["cost"] = 1e308
        response, _ = await h.post(b"/echo", {}, auth=forged)
        self.assertEqual(response.code, 401)
        query = h.auth(1)
        query["cost"] = "1e308"
        response, _ = await h.get(b"/echo", auth=query)
        self.assertEqual(response.code, 401)
        self.assertEqual(self.refused("401"), 2.0)
        signed = h.auth(30)
        response, _ = await h.post(b"/echo", {}, auth=signed)
        self.assertEqual(response.code, 200)
        report = await self.report(lambda r: r["cur_perf"] > 0)
        self.assertEqual((report["cur_perf"], report["rej_load"]), (30.0, 0.0))
        # The heartbeat goes on: a report at least every 10 simulated seconds.
        before = len(self.env.autoscaler.status_reports)
        for _ in range(21):
            self.env.clock.advance(1)
            await self.env.worker.reporter.flush()
        self.assertGreaterEqual(len(self.env.autoscaler.status_reports) - before, 2)
        self.assertEqual(self.env.autoscaler.refused_reports, [])
        self.assertEqual(self.deleted(), [signed["request_idx"]])

    async def test_1000_invented_indexes_never_deleted(self) -> None:
        """
        1,000 forged requests with invented indexes (and one claiming the
        index of a request in flight) are all 401 and none of their indexes
        reaches /delete_requests/: only the real requests are deleted, once.
        """
        h = await self.start()
        victim = h.auth(5)
        pending = ensureDeferred(h.post(b"/hang", {}, auth=victim))
        await self.env.backend.wait_for_request(b"/hang")
        client = HTTPClient(self, self.env.port, pooled=True)
        client.pool.maxPersistentPerHost = 10
        someone_elses = h.auth(1)["signature"]

        async def forge(n: int) -> int:
            auth = h.auth(1, request_idx=900_000 + n)
            auth["signature"] = someone_elses
            if n == 0:
                auth["request_idx"] = victim["request_idx"]
            response, _ = await client.request(b"POST", b"/echo", body=wrap_body(auth, {}))
            return int(response.code)

        for first in range(0, 1000, 10):
            codes = await gatherResults(
                [ensureDeferred(forge(n)) for n in range(first, first + 10)]
            )
            self.assertEqual(set(codes), {401})
        self.assertEqual(self.refused("401"), 1000.0)
        signed = h.auth(5)
        await h.post(b"/echo", {}, auth=signed)
        await self.report(lambda r: r["cur_perf"] > 0)
        for _ in range(3):
            self.env.clock.advance(1)
            await self.env.worker.reporter.flush()
        self.assertEqual(self.deleted(), [signed["request_idx"]])
        report = self.env.autoscaler.status_reports[-1]
        self.assertEqual(report["working_request_idxs"], [victim["request_idx"]])
        self.assertEqual(report["rej_load"], 0.0)
        pending.cancel()
        pending.addErrback(lambda f: None)  # the client gave up, as intended
