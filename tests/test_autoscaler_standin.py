# -*- test-case-name: tests.test_autoscaler_standin -*-
"""
Tests for :mod:`vespa.testing.autoscaler`, the autoscaler stand-in.

Every test talks to the stand-in over a real socket on 127.0.0.1 with treq,
and checks signatures with pycryptodome on messages written out literally
here, so a mistake in the stand-in's signing cannot hide behind shared code.
"""

from __future__ import annotations

import base64
import json
import math
import os
import re
import subprocess
import sys
from collections.abc import Generator
from typing import Any

import treq
from Crypto.Hash import SHA256
from Crypto.PublicKey import RSA
from Crypto.Signature import pkcs1_15
from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred, inlineCallbacks
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import HTTPConnectionPool, ResponseNeverReceived

from tests.support_process import free_port, http, spawn, stop, wait_for_port
from vespa.testing.autoscaler import (
    PATHS,
    STATUS_FIELDS,
    Autoscaler,
    StandinConfig,
    autoscaler_site,
    build_autoscaler,
    parse_args,
    sign_auth,
)
from vespa.testing.autoscaler.wire import RECORD_FIELDS, report_problem

#: One key for the whole module: generating RSA keys is slow.
KEY = RSA.generate(2048)

WORKER_A = "http://127.0.0.1:3000"
WORKER_B = "http://127.0.0.1:3001"

#: How the SDK's and OFFICIAL's clients read the "no worker ready" text.
STATUS_TEXT = re.compile(
    r"total workers: (\d+), loading workers: (\d+), standby workers: (\d+), error workers: (\d+)"
)

Gen = Generator[Deferred[Any], Any, None]
Answer = Generator[Deferred[Any], Any, tuple[int, Any]]


def verify(pem: bytes, message: bytes, signature: str) -> None:
    """
    Check ``signature`` over ``message`` with the public key ``pem``, as a
    worker does; raise :class:`ValueError` if it does not verify.
    """
    key = RSA.import_key(pem)
    pkcs1_15.new(key).verify(SHA256.new(message), base64.b64decode(signature))


def record(idx: int, success: bool, status: str = "Success") -> dict[str, Any]:
    """A ``/delete_requests/`` record, as vastai 1.9.1 sends one."""
    return {
        "request_idx": idx,
        "success": success,
        "status": status,
        "entered_queue_at": 1765000000.5,
        "work_started_at": 1765000001.0 if status != "Rejected" else 0.0,
        "work_completed_at": 1765000002.0 if status != "Rejected" else 0.0,
    }


def report(worker_id: int, url: str | None, **fields: Any) -> dict[str, Any]:
    """A ``/worker_status/`` body with every field, loaded and healthy unless overridden."""
    body: dict[str, Any] = dict.fromkeys(STATUS_FIELDS, 0.0)
    body.update(
        num_requests_working=0,
        num_requests_recieved=0,
        id=worker_id,
        mtoken="token",
        version="test",
        error_msg="",
        max_perf=10.0,
        working_request_idxs=[],
        url=url,
    )
    if url is None:
        del body["url"]
    body.update(fields)
    return body


class StandinTestCase(TestCase):
    """Serves a fresh :class:`Autoscaler` on an ephemeral port for each test."""

    signing_mode = "full"

    def setUp(self) -> None:
        self.autoscaler = Autoscaler(reactor, key=KEY, signing_mode=self.signing_mode)
        site: Any = autoscaler_site(self.autoscaler)
        port: Any = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        # Runs before stopListening: hung requests must not outlive the test.
        self.addCleanup(self.autoscaler.close)
        self.base = "http://127.0.0.1:%d" % (port.getHost().port,)
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(self.pool.closeCachedConnections)

    def get(self, path: str, **kwargs: Any) -> Deferred[Any]:
        """GET ``path`` from the stand-in."""
        return treq.get(self.base + path, pool=self.pool, **kwargs)

    def post(self, path: str, body: Any, **kwargs: Any) -> Deferred[Any]:
        """POST ``body`` (JSON unless bytes) to ``path``."""
        data = body if isinstance(body, bytes) else json.dumps(body).encode("utf-8")
        headers = kwargs.pop("headers", {})
        headers.setdefault(b"content-type", [b"application/json"])
        return treq.post(self.base + path, data=data, headers=headers, pool=self.pool, **kwargs)

    @inlineCallbacks
    def route(self, body: Any, api_key: str | None = "demo-key") -> Answer:
        """
        POST ``body`` to ``/route/`` with ``api_key`` as Bearer token.

        :return: fires with ``(status code, parsed JSON answer)``.
        """
        headers = {} if api_key is None else {b"authorization": [b"Bearer " + api_key.encode()]}
        response = yield self.post("/route/", body, headers=headers)
        text = yield treq.content(response)
        return (response.code, json.loads(text))

    @inlineCallbacks
    def post_json(self, path: str, body: Any) -> Answer:
        """POST ``body`` to ``path``; fires with ``(status code, raw body)``."""
        response = yield self.post(path, body)
        content = yield treq.content(response)
        return (response.code, content)


class PubkeyTests(StandinTestCase):
    """``GET /pubkey/``."""

    @inlineCallbacks
    def test_pem(self) -> Gen:
        """The public key is served as PEM text that ``RSA.import_key`` loads."""
        response = yield self.get("/pubkey/")
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders(b"content-type"), [b"text/plain"])
        pem = yield treq.content(response)
        self.assertEqual(pem, self.autoscaler.public_key_pem)
        key = RSA.import_key(pem)
        self.assertFalse(key.has_private())
        self.assertEqual(key, KEY.public_key())

    @inlineCallbacks
    def test_trailing_slash_required(self) -> Gen:
        """``/pubkey`` without the trailing slash is a 404, as on the real one."""
        response = yield self.get("/pubkey")
        self.assertEqual(response.code, 404)
        yield treq.content(response)

    @inlineCallbacks
    def test_wrong_method(self) -> Gen:
        """POST to ``/pubkey/`` is a 405 naming GET; GET ``/route/`` names POST."""
        code, _ = yield self.post_json("/pubkey/", {})
        self.assertEqual(code, 405)
        response = yield self.get("/route/")
        self.assertEqual(response.code, 405)
        self.assertEqual(response.headers.getRawHeaders(b"allow"), [b"POST"])
        yield treq.content(response)


class RouteTests(StandinTestCase):
    """``POST /route/`` in ``full`` signing mode."""

    @inlineCallbacks
    def test_int_cost_signature(self) -> Gen:
        """
        With an int cost the answer carries every field, the cost stays an
        int, and the signature verifies over the five sorted, indented fields.
        """
        self.autoscaler.register_worker(WORKER_A)
        code, answer = yield self.route({"endpoint": "demo-endpoint", "cost": 100})
        self.assertEqual(code, 200)
        self.assertEqual(
            set(answer),
            {"url", "reqnum", "signature", "endpoint", "cost", "request_idx", "__request_id"},
        )
        self.assertEqual(answer["url"], WORKER_A)
        self.assertIs(type(answer["cost"]), int)
        self.assertIsInstance(answer["__request_id"], str)
        message = (
            '{\n    "cost": 100,\n    "endpoint": "demo-endpoint",\n'
            '    "reqnum": %d,\n    "request_idx": %d,\n'
            '    "url": "http://127.0.0.1:3000"\n}' % (answer["reqnum"], answer["request_idx"])
        ).encode()
        verify(self.autoscaler.public_key_pem, message, answer["signature"])

    @inlineCallbacks
    def test_float_cost_signature(self) -> Gen:
        """A float cost stays a float (``1.0``, not ``1``) in the answer and the signed text."""
        self.autoscaler.register_worker(WORKER_A)
        code, answer = yield self.route(
            {"endpoint": "demo-endpoint", "cost": 1.0, "request_idx": 42}
        )
        self.assertEqual(code, 200)
        self.assertIs(type(answer["cost"]), float)
        message = (
            '{\n    "cost": 1.0,\n    "endpoint": "demo-endpoint",\n'
            '    "reqnum": %d,\n    "request_idx": 42,\n'
            '    "url": "http://127.0.0.1:3000"\n}' % (answer["reqnum"],)
        ).encode()
        verify(self.autoscaler.public_key_pem, message, answer["signature"])
        # Another cost gives another signature: cost is part of the message.
        self.assertRaises(
            ValueError,
            verify,
            self.autoscaler.public_key_pem,
            message.replace(b"1.0", b"1"),
            answer["signature"],
        )

    @inlineCallbacks
    def test_reqnum_and_request_idx(self) -> Gen:
        """
        ``reqnum`` increases on every routed answer; a new request gets a new,
        increasing ``request_idx``; a retry keeps the one it sends.
        """
        self.autoscaler.register_worker(WORKER_A)
        answers = []
        for _ in range(3):
            _, answer = yield self.route({"endpoint": "demo-endpoint", "cost": 1})
            answers.append(answer)
        _, retry = yield self.route(
            {"endpoint": "demo-endpoint", "cost": 1, "request_idx": answers[0]["request_idx"]}
        )
        reqnums = [a["reqnum"] for a in [*answers, retry]]
        self.assertEqual(reqnums, sorted(set(reqnums)))
        idxs = [a["request_idx"] for a in answers]
        self.assertEqual(idxs, sorted(set(idxs)))
        self.assertEqual(retry["request_idx"], answers[0]["request_idx"])
        self.assertEqual(len({a["__request_id"] for a in [*answers, retry]}), 4)
        self.assertEqual(len(self.autoscaler.route_requests), 4)
        self.assertEqual(self.autoscaler.route_requests[3]["request_idx"], idxs[0])

    @inlineCallbacks
    def test_round_robin(self) -> Gen:
        """Ready workers are picked in turn; a worker not ready is skipped."""
        self.autoscaler.register_worker(WORKER_A)
        self.autoscaler.register_worker(WORKER_B)
        urls = []
        for _ in range(4):
            _, answer = yield self.route({"endpoint": "demo-endpoint", "cost": 1})
            urls.append(answer["url"])
        self.assertEqual(urls, [WORKER_A, WORKER_B, WORKER_A, WORKER_B])
        self.autoscaler.set_worker_ready(WORKER_A, False)
        for _ in range(2):
            _, answer = yield self.route({"endpoint": "demo-endpoint", "cost": 1})
            self.assertEqual(answer["url"], WORKER_B)

    @inlineCallbacks
    def test_no_worker_ready(self) -> Gen:
        """
        With no ready worker the answer is a 200 without ``url``, with the
        status text clients parse and a ``request_idx`` to retry with.  No
        ``reqnum`` is used up.
        """
        code, answer = yield self.route({"endpoint": "demo-endpoint", "cost": 1})
        self.assertEqual(code, 200)
        self.assertNotIn("url", answer)
        self.assertEqual(answer["endpoint"], "demo-endpoint")
        match = STATUS_TEXT.fullmatch(answer["status"])
        self.assertIsNotNone(match)
        assert match is not None
        self.assertEqual(match.groups(), ("0", "0", "0", "0"))

        self.autoscaler.register_worker(WORKER_A, ready=False)
        _, retry = yield self.route(
            {"endpoint": "demo-endpoint", "cost": 1, "request_idx": answer["request_idx"]}
        )
        self.assertNotIn("url", retry)
        self.assertEqual(retry["request_idx"], answer["request_idx"])
        self.assertEqual(
            retry["status"],
            "total workers: 1, loading workers: 1, standby workers: 0, error workers: 0",
        )

        self.autoscaler.set_worker_ready(WORKER_A, True)
        _, routed = yield self.route(
            {"endpoint": "demo-endpoint", "cost": 1, "request_idx": answer["request_idx"]}
        )
        self.assertEqual(routed["url"], WORKER_A)
        self.assertEqual(routed["reqnum"], 1)

    @inlineCallbacks
    def test_remove_worker(self) -> Gen:
        """A removed worker is neither routed to nor counted."""
        self.autoscaler.register_worker(WORKER_A)
        self.autoscaler.remove_worker(WORKER_A)
        _, answer = yield self.route({"endpoint": "demo-endpoint", "cost": 1})
        self.assertNotIn("url", answer)
        self.assertTrue(answer["status"].startswith("total workers: 0,"))
        self.assertRaises(KeyError, self.autoscaler.remove_worker, WORKER_A)
        self.assertRaises(KeyError, self.autoscaler.set_worker_ready, WORKER_A, True)

    @inlineCallbacks
    def test_bad_api_key(self) -> Gen:
        """A wrong or missing Bearer key is a 401 with a JSON error, and routes nothing."""
        self.autoscaler.register_worker(WORKER_A)
        code, answer = yield self.route({"endpoint": "demo-endpoint", "cost": 1}, "wrong")
        self.assertEqual((code, set(answer)), (401, {"error"}))
        code, answer = yield self.route({"endpoint": "demo-endpoint", "cost": 1}, None)
        self.assertEqual((code, set(answer)), (401, {"error"}))
        _, answer = yield self.route({"endpoint": "demo-endpoint", "cost": 1})
        self.assertEqual(answer["reqnum"], 1)

    @inlineCallbacks
    def test_unknown_endpoint(self) -> Gen:
        """An endpoint name other than the stand-in's is a 404."""
        self.autoscaler.register_worker(WORKER_A)
        code, answer = yield self.route({"endpoint": "other", "cost": 1})
        self.assertEqual(code, 404)
        self.assertIn("error", answer)

    @inlineCallbacks
    def test_bad_bodies(self) -> Gen:
        """Invalid JSON, a non-object, a missing or non-number cost, a bad idx: 400."""
        self.autoscaler.register_worker(WORKER_A)
        for body in (
            b"{not json",
            b"[1, 2]",
            b'{"endpoint": "demo-endpoint", "cost": NaN}',
            {"endpoint": "demo-endpoint"},
            {"endpoint": "demo-endpoint", "cost": "1"},
            {"endpoint": "demo-endpoint", "cost": True},
            {"endpoint": "demo-endpoint", "cost": 1, "request_idx": "3"},
            {"cost": 1},
        ):
            code, answer = yield self.route(body)
            self.assertEqual(code, 400, body)
            self.assertIn("error", answer)


class UrlModeTests(StandinTestCase):
    """``POST /route/`` in ``url`` signing mode."""

    signing_mode = "url"

    @inlineCallbacks
    def test_url_only_signature(self) -> Gen:
        """The signature verifies over the url alone, and not over the five fields."""
        self.autoscaler.register_worker(WORKER_A)
        _, answer = yield self.route({"endpoint": "demo-endpoint", "cost": 3})
        message = b'{\n    "url": "http://127.0.0.1:3000"\n}'
        verify(self.autoscaler.public_key_pem, message, answer["signature"])
        full = (
            '{\n    "cost": 3,\n    "endpoint": "demo-endpoint",\n'
            '    "reqnum": %d,\n    "request_idx": %d,\n'
            '    "url": "http://127.0.0.1:3000"\n}' % (answer["reqnum"], answer["request_idx"])
        ).encode()
        self.assertRaises(
            ValueError, verify, self.autoscaler.public_key_pem, full, answer["signature"]
        )

    @inlineCallbacks
    def test_one_signature_per_worker(self) -> Gen:
        """Like Vast's autoscaler today, each worker's url is signed once and reused."""
        self.autoscaler.register_worker(WORKER_A)
        self.autoscaler.register_worker(WORKER_B)
        signatures: dict[str, set[str]] = {}
        for cost in (1, 2, 3, 4):
            _, answer = yield self.route({"endpoint": "demo-endpoint", "cost": cost})
            signatures.setdefault(answer["url"], set()).add(answer["signature"])
        self.assertEqual(sorted(signatures), sorted([WORKER_A, WORKER_B]))
        self.assertEqual([len(s) for s in signatures.values()], [1, 1])
        self.assertNotEqual(signatures[WORKER_A], signatures[WORKER_B])

    def test_url_signing_is_the_default(self) -> None:
        """The stand-in signs today's way unless asked for the five-field form."""
        self.assertEqual(Autoscaler(Clock(), key=KEY).signing_mode, "url")
        self.assertEqual(StandinConfig().signing_mode, "url")

    @inlineCallbacks
    def test_request_idx_zero_is_a_new_request(self) -> Gen:
        """The official client's first call sends ``request_idx: 0``: each gets a fresh index."""
        self.autoscaler.register_worker(WORKER_A)
        idxs = []
        for _ in range(3):
            _, answer = yield self.route(
                {"endpoint": "demo-endpoint", "cost": 100, "request_idx": 0}
            )
            idxs.append(answer["request_idx"])
        self.assertNotIn(0, idxs)
        self.assertEqual(len(set(idxs)), 3)
        _, again = yield self.route(
            {"endpoint": "demo-endpoint", "cost": 100, "request_idx": idxs[0]}
        )
        self.assertEqual(again["request_idx"], idxs[0])


class ReportTests(StandinTestCase):
    """``POST /worker_status/`` and ``POST /delete_requests/``."""

    @inlineCallbacks
    def test_recorded_in_order(self) -> Gen:
        """Bodies are answered ``{"ok": true}`` and recorded in arrival order."""
        for n in range(3):
            code, content = yield self.post_json("/worker_status/", report(n, None))
            self.assertEqual((code, json.loads(content)), (200, {"ok": True}))
        deletes = [
            {"worker_id": 1, "mtoken": "t", "requests": [record(1, True), record(2, True)]},
            {"worker_id": 1, "mtoken": "t", "requests": [record(3, False, "Rejected")]},
        ]
        for body in deletes:
            code, content = yield self.post_json("/delete_requests/", body)
            self.assertEqual((code, json.loads(content)), (200, {"ok": True}))
        self.assertEqual([r["id"] for r in self.autoscaler.status_reports], [0, 1, 2])
        self.assertEqual(self.autoscaler.delete_reports, deletes)
        self.assertEqual(len(self.autoscaler.status_times), 3)
        self.assertEqual(len(self.autoscaler.delete_times), 2)

    @inlineCallbacks
    def test_other_forms_refused(self) -> Gen:
        """
        By default, a legacy deletion, a 17-field status, a record with a bad
        status and a status with a non-number load are 422 and not recorded.
        """
        legacy_status = report(1, WORKER_A)
        del legacy_status["disk_usage"]
        bad_load = report(1, WORKER_A, cur_load="1e308")
        refused = [
            (
                "/delete_requests/",
                {"worker_id": 1, "mtoken": "t", "request_idxs": [1], "success": True},
            ),
            (
                "/delete_requests/",
                {"worker_id": 1, "mtoken": "t", "requests": [record(1, True, "Done")]},
            ),
            ("/worker_status/", legacy_status),
            ("/worker_status/", bad_load),
        ]
        for path, body in refused:
            code, content = yield self.post_json(path, body)
            self.assertEqual(code, 422, body)
            self.assertIn("error", json.loads(content))
        self.assertEqual((self.autoscaler.status_reports, self.autoscaler.delete_reports), ([], []))
        self.assertEqual(
            [body for _, body, _ in self.autoscaler.refused_reports], [b for _, b in refused]
        )

    @inlineCallbacks
    def test_legacy_forms_as_an_option(self) -> Gen:
        """With ``report_format="legacy"``, 2024-2025 bodies are accepted and records refused."""
        self.autoscaler.report_format = "legacy"
        legacy_status = report(1, WORKER_A)
        del legacy_status["disk_usage"]
        legacy_delete = {"worker_id": 1, "mtoken": "t", "request_idxs": [1], "success": True}
        for path, body in (
            ("/worker_status/", legacy_status),
            ("/delete_requests/", legacy_delete),
        ):
            code, _ = yield self.post_json(path, body)
            self.assertEqual(code, 200)
        code, _ = yield self.post_json(
            "/delete_requests/", {"worker_id": 1, "mtoken": "t", "requests": [record(1, True)]}
        )
        self.assertEqual(code, 422)
        self.assertEqual(self.autoscaler.delete_reports, [legacy_delete])

    @inlineCallbacks
    def test_invalid_json(self) -> Gen:
        """Invalid JSON is a 400 and is not recorded."""
        for path in ("/worker_status/", "/delete_requests/"):
            code, _ = yield self.post_json(path, b"{oops")
            self.assertEqual(code, 400)
        self.assertEqual(self.autoscaler.status_reports, [])
        self.assertEqual(self.autoscaler.delete_reports, [])

    @inlineCallbacks
    def test_wait_for_status_past_and_future(self) -> Gen:
        """
        ``wait_for_status`` fires at once for a report already received, and
        later for one still to come; ``wait_for_delete`` likewise.
        """
        yield self.post_json("/worker_status/", report(1, None, cur_load=5.0))
        past = yield self.autoscaler.wait_for_status(lambda r: r["cur_load"] == 5.0)
        self.assertEqual(past["id"], 1)

        future = self.autoscaler.wait_for_status(lambda r: r["id"] == 2)
        other = self.autoscaler.wait_for_status(lambda r: r["id"] == 99)
        self.assertNoResult(future)
        yield self.post_json("/worker_status/", report(3, None))
        self.assertNoResult(future)
        yield self.post_json("/worker_status/", report(2, None))
        self.assertEqual(self.successResultOf(future)["id"], 2)
        self.assertNoResult(other)
        other.cancel()
        self.failureResultOf(other, CancelledError)

        deleted = self.autoscaler.wait_for_delete(lambda b: b["requests"][0]["request_idx"] == 7)
        yield self.post_json(
            "/delete_requests/", {"worker_id": 1, "mtoken": "", "requests": [record(7, True)]}
        )
        self.assertEqual(self.successResultOf(deleted)["requests"], [record(7, True)])

    @inlineCallbacks
    def test_latest_status(self) -> Gen:
        """``latest_status`` gives each worker id's last report, ``None`` for unknown ids."""
        yield self.post_json("/worker_status/", report(1, WORKER_A, cur_load=1.0))
        yield self.post_json("/worker_status/", report(2, WORKER_B, cur_load=2.0))
        yield self.post_json("/worker_status/", report(1, WORKER_A, cur_load=3.0))
        latest = self.autoscaler.latest_status(1)
        assert latest is not None
        self.assertEqual(latest["cur_load"], 3.0)
        self.assertIsNone(self.autoscaler.latest_status(3))

    @inlineCallbacks
    def test_auto_registration(self) -> Gen:
        """
        A report with a url, ``max_perf > 0`` and no error makes that url a
        ready worker; one with ``error_msg`` makes it an error worker; a later
        healthy report makes it ready again.  A loading report (``max_perf``
        0) registers a loading worker.
        """
        _, answer = yield self.route({"endpoint": "demo-endpoint", "cost": 1})
        self.assertNotIn("url", answer)

        yield self.post_json("/worker_status/", report(1, WORKER_B, max_perf=0.0))
        _, answer = yield self.route({"endpoint": "demo-endpoint", "cost": 1})
        self.assertNotIn("url", answer)
        self.assertTrue(answer["status"].startswith("total workers: 1, loading workers: 1,"))

        yield self.post_json("/worker_status/", report(1, WORKER_B, max_perf=12.5))
        _, answer = yield self.route({"endpoint": "demo-endpoint", "cost": 1})
        self.assertEqual(answer["url"], WORKER_B)

        # Without a url, the report applies to the url this id reported before.
        yield self.post_json("/worker_status/", report(1, None, error_msg="backend died"))
        _, answer = yield self.route({"endpoint": "demo-endpoint", "cost": 1})
        self.assertNotIn("url", answer)
        self.assertEqual(
            answer["status"],
            "total workers: 1, loading workers: 0, standby workers: 0, error workers: 1",
        )
        self.assertEqual(self.autoscaler.workers, {WORKER_B: "error"})

        yield self.post_json("/worker_status/", report(1, WORKER_B))
        _, answer = yield self.route({"endpoint": "demo-endpoint", "cost": 1})
        self.assertEqual(answer["url"], WORKER_B)

    @inlineCallbacks
    def test_loading_report_keeps_registered_worker(self) -> Gen:
        """A ``max_perf`` 0 report does not unready a worker the test registered."""
        self.autoscaler.register_worker(WORKER_A)
        yield self.post_json("/worker_status/", report(1, WORKER_A, max_perf=0.0))
        self.assertEqual(self.autoscaler.workers, {WORKER_A: "ready"})


class FailureTests(StandinTestCase):
    """Failure injection with :meth:`Autoscaler.fail`."""

    @inlineCallbacks
    def test_500_everywhere_then_recovery(self) -> Gen:
        """
        ``fail("500")`` answers every route 500 without handling it (nothing
        recorded); ``fail(None)`` brings normal answers back.
        """
        self.autoscaler.register_worker(WORKER_A)
        self.autoscaler.fail("500")
        response = yield self.get("/pubkey/")
        self.assertEqual(response.code, 500)
        yield treq.content(response)
        code, _ = yield self.post_json("/route/", {"endpoint": "demo-endpoint", "cost": 1})
        self.assertEqual(code, 500)
        code, _ = yield self.post_json("/worker_status/", report(1, WORKER_B))
        self.assertEqual(code, 500)
        code, _ = yield self.post_json("/delete_requests/", {"request_idxs": [1]})
        self.assertEqual(code, 500)
        self.assertEqual(self.autoscaler.status_reports, [])
        self.assertEqual(self.autoscaler.delete_reports, [])
        self.assertEqual(self.autoscaler.route_requests, [])
        self.assertEqual(
            [(f.path, f.mode) for f in self.autoscaler.injected_failures],
            [(name, "500") for name in PATHS],
        )

        self.autoscaler.fail(None)
        code, answer = yield self.route({"endpoint": "demo-endpoint", "cost": 1})
        self.assertEqual((code, answer["url"]), (200, WORKER_A))
        code, _ = yield self.post_json("/worker_status/", report(1, WORKER_B))
        self.assertEqual(code, 200)
        self.assertEqual(len(self.autoscaler.status_reports), 1)

    @inlineCallbacks
    def test_times_then_recovery(self) -> Gen:
        """
        ``times=2`` fails the next two matching requests only; other paths
        are untouched.
        """
        self.autoscaler.fail("500", paths=["worker_status"], times=2)
        response = yield self.get("/pubkey/")
        self.assertEqual(response.code, 200)
        yield treq.content(response)
        codes = []
        for n in range(3):
            code, _ = yield self.post_json("/worker_status/", report(n, None))
            codes.append(code)
        self.assertEqual(codes, [500, 500, 200])
        self.assertEqual([r["id"] for r in self.autoscaler.status_reports], [2])
        count = yield self.autoscaler.wait_for_failure("worker_status", count=2)
        self.assertEqual(count, 2)

    @inlineCallbacks
    def test_times_shared_across_paths(self) -> Gen:
        """One ``times`` count is shared by the paths of one call."""
        self.autoscaler.fail("500", paths=["worker_status", "delete_requests"], times=1)
        code, _ = yield self.post_json("/delete_requests/", {"request_idxs": [1]})
        self.assertEqual(code, 500)
        code, _ = yield self.post_json("/worker_status/", report(1, None))
        self.assertEqual(code, 200)

    @inlineCallbacks
    def test_hang_client_timeout(self) -> Gen:
        """
        ``hang`` never answers: a client with a timeout gives up, and the
        stand-in lets go of the request when the client goes away.
        """
        self.autoscaler.fail("hang", paths=["route"])
        attempt = self.post("/route/", {"endpoint": "demo-endpoint", "cost": 1}, timeout=0.2)
        yield self.autoscaler.wait_for_failure("route")
        self.assertEqual(self.autoscaler.hanging, 1)
        error = yield self.assertFailure(attempt, ResponseNeverReceived)
        self.assertTrue(error.reasons[0].check(CancelledError))
        self.assertEqual(self.autoscaler.route_requests, [])

    @inlineCallbacks
    def test_hang_closed(self) -> Gen:
        """
        ``close()`` drops the connections of hanging requests: the client sees
        its connection lost with no response.
        """
        self.autoscaler.fail("hang", paths=["worker_status"])
        attempt = self.post("/worker_status/", report(1, None))
        yield self.autoscaler.wait_for_failure("worker_status")
        self.assertEqual(self.autoscaler.hanging, 1)
        yield self.autoscaler.close()
        self.assertEqual(self.autoscaler.hanging, 0)
        yield self.assertFailure(attempt, ResponseNeverReceived)
        self.assertEqual(self.autoscaler.status_reports, [])

    @inlineCallbacks
    def test_refuse(self) -> Gen:
        """``refuse`` closes the connection at once, with no response."""
        self.autoscaler.fail("refuse", paths=["pubkey"], times=1)
        yield self.assertFailure(self.get("/pubkey/"), ResponseNeverReceived)
        response = yield self.get("/pubkey/")
        self.assertEqual(response.code, 200)
        yield treq.content(response)
        self.assertEqual(
            [(f.path, f.mode) for f in self.autoscaler.injected_failures], [("pubkey", "refuse")]
        )

    def test_bad_arguments(self) -> None:
        """Unknown modes and paths, and ``times < 1``, are refused."""
        self.assertRaises(ValueError, self.autoscaler.fail, "404")
        self.assertRaises(ValueError, self.autoscaler.fail, "500", paths=["/route/"])
        self.assertRaises(ValueError, self.autoscaler.fail, "500", times=0)


class SigningTests(SynchronousTestCase):
    """:func:`sign_auth` and the signing-mode setting, without a server."""

    def test_sign_auth_full(self) -> None:
        """``sign_auth`` signs the five fields and ignores any others."""
        auth = {
            "cost": 2.5,
            "endpoint": "ep",
            "reqnum": 7,
            "request_idx": 9,
            "url": "https://1.2.3.4:5",
            "signature": "ignored",
            "__request_id": "ignored",
        }
        signature = sign_auth(KEY, auth)
        message = (
            b'{\n    "cost": 2.5,\n    "endpoint": "ep",\n    "reqnum": 7,\n'
            b'    "request_idx": 9,\n    "url": "https://1.2.3.4:5"\n}'
        )
        verify(KEY.public_key().export_key(), message, signature)

    def test_sign_auth_errors(self) -> None:
        """An unknown mode is a ``ValueError``; a missing field a ``KeyError``."""
        self.assertRaises(ValueError, sign_auth, KEY, {"url": "u"}, "url_only")
        self.assertRaises(KeyError, sign_auth, KEY, {"url": "u"}, "full")
        self.assertRaises(KeyError, sign_auth, KEY, {"cost": 1}, "url")

    def test_bad_signing_mode(self) -> None:
        """The stand-in refuses an unknown signing mode."""
        self.assertRaises(ValueError, Autoscaler, Clock(), key=KEY, signing_mode="off")

    def test_status_times_from_clock(self) -> None:
        """Arrival times come from the clock the stand-in was given."""
        clock = Clock()
        clock.advance(12.5)
        autoscaler = Autoscaler(clock, key=KEY)
        autoscaler._accept_status(report(1, None))
        self.assertEqual(autoscaler.status_times, [12.5])


class ReportCheckTests(SynchronousTestCase):
    """The stand-in's own reading of the report fields and their JSON types."""

    def test_a_well_formed_report_passes(self) -> None:
        self.assertIsNone(report_problem("worker_status", report(1, WORKER_A), "records"))
        body = {"worker_id": 1, "mtoken": "t", "requests": [record(1, True)]}
        self.assertIsNone(report_problem("delete_requests", body, "records"))

    def test_every_field_is_checked(self) -> None:
        """A value no field takes (an object) is named, in any field of either report."""
        for field in STATUS_FIELDS:
            problem = report_problem("worker_status", {**report(1, WORKER_A), field: {}}, "records")
            self.assertIn(f"{field} has the wrong type", problem or "")
        for field in RECORD_FIELDS:
            body = {"worker_id": 1, "mtoken": "t", "requests": [{**record(1, True), field: {}}]}
            problem = report_problem("delete_requests", body, "records")
            self.assertIn(f"{field} must be", problem or "")

    def test_near_misses_are_refused(self) -> None:
        """An int given as a float, a bool as an int, an infinite load, a negative time."""
        for fields in ({"id": 1.0}, {"num_requests_working": True}, {"cur_load": math.inf},
                       {"working_request_idxs": [1.5]}, {"url": 3}):  # fmt: skip
            body = {**report(1, WORKER_A), **fields}
            self.assertIsNotNone(report_problem("worker_status", body, "records"), fields)
        for fields in ({"request_idx": True}, {"success": 1}, {"work_started_at": -1.0},
                       {"status": "Done"}):  # fmt: skip
            body = {"worker_id": 1, "mtoken": "t", "requests": [{**record(1, True), **fields}]}
            self.assertIsNotNone(report_problem("delete_requests", body, "records"), fields)


class CommandLineTests(SynchronousTestCase):
    """``python -m vespa.testing.autoscaler``."""

    def test_defaults(self) -> None:
        """With no arguments: port 8080 on 127.0.0.1, url signing, the demo names."""
        self.assertEqual(parse_args([]), StandinConfig())
        self.assertEqual(StandinConfig().port, 8080)

    def test_options(self) -> None:
        """Every option reaches the config; ``--worker`` repeats."""
        config = parse_args(
            [
                "--port=0",
                "--worker",
                WORKER_A,
                "--worker",
                WORKER_B,
                "--key-file",
                "k.pem",
                "--signing-mode",
                "url",
                "--endpoint",
                "ep",
                "--api-key",
                "secret",
            ]
        )
        self.assertEqual(
            config,
            StandinConfig(
                port=0,
                workers=(WORKER_A, WORKER_B),
                key_file="k.pem",
                signing_mode="url",
                endpoint="ep",
                api_key="secret",
            ),
        )

    def test_report_format_option(self) -> None:
        """``--report-format legacy`` reaches the config and the stand-in it builds."""
        config = parse_args(["--report-format", "legacy"])
        self.assertEqual(config.report_format, "legacy")
        self.assertEqual(build_autoscaler(config, Clock()).report_format, "legacy")
        self.assertEqual(StandinConfig().report_format, "records")

    def test_usage_errors(self) -> None:
        """A bad signing mode, port or worker url is a usage error (exit status 2)."""
        self.patch(sys, "stderr", open(os.devnull, "w"))
        self.addCleanup(sys.stderr.close)
        for argv in (
            ["--signing-mode", "off"],
            ["--port", "70000"],
            ["--port", "x"],
            ["--worker", "127.0.0.1:3000"],
        ):
            with self.assertRaises(SystemExit) as raised:
                parse_args(argv)
            self.assertEqual(raised.exception.code, 2, argv)

    def test_build(self) -> None:
        """
        ``build_autoscaler`` registers the workers, and creates the key file
        (private, mode 0600) on the first run and reuses it on the next.
        """
        path = self.mktemp()
        config = StandinConfig(workers=(WORKER_A,), key_file=path, signing_mode="url")
        first = build_autoscaler(config, Clock())
        self.assertEqual(first.workers, {WORKER_A: "ready"})
        self.assertEqual(first.signing_mode, "url")
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
        second = build_autoscaler(config, Clock())
        self.assertEqual(second.public_key_pem, first.public_key_pem)

    def test_public_key_file_refused(self) -> None:
        """A key file holding only a public key cannot sign: ``ValueError``."""
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(KEY.public_key().export_key())
        self.assertRaises(ValueError, build_autoscaler, StandinConfig(key_file=path), Clock())

    def test_help(self) -> None:
        """``python -m vespa.testing.autoscaler --help`` runs and names its options."""
        result = subprocess.run(
            [sys.executable, "-m", "vespa.testing.autoscaler", "--help"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        for option in ("--port", "--worker", "--key-file", "--signing-mode"):
            self.assertIn(option, result.stdout)

    def test_serves_until_stopped(self) -> None:
        """
        ``python -m vespa.testing.autoscaler --port P`` serves (``/pubkey/``
        answers its key) until SIGTERM, then exits cleanly.
        """
        port = free_port()
        process = spawn(
            self,
            [sys.executable, "-m", "vespa.testing.autoscaler", "--port", str(port)],
            env=dict(os.environ),
        )
        wait_for_port(port, process)
        status, _, body = http("GET", f"http://127.0.0.1:{port}/pubkey/")
        self.assertEqual(status, 200)
        self.assertIn(b"BEGIN PUBLIC KEY", body)
        stop(process)
        self.assertEqual(process.returncode, 0)
