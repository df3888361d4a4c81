"""
Tests for :mod:`vespa.worker.sessions`: lifetimes, expiry, extension, the
control routes' answers, ``--max-sessions``, the ``on_close_route`` POST and
that a closed session leaves nothing behind. Time is a ``Clock``.
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict, replace
from typing import Any

from treq.testing import StubTreq
from twisted.internet.defer import fail
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import Request
from twisted.web.test.requesthelper import DummyRequest

from vespa.config import ConfigError, WorkerConfig
from vespa.errors import VespaError
from vespa.protocol.envelope import AuthData, Envelope
from vespa.worker.ledger import Ledger, Outcome
from vespa.worker.session_fields import SessionRequestInvalid
from vespa.worker.sessions import (
    SessionAuthInvalid,
    SessionEndResource,
    SessionGone,
    Sessions,
    SessionsFull,
)

AUTH = AuthData(
    cost=100,
    endpoint="demo-endpoint",
    reqnum=3,
    request_idx=42,
    signature="c2lnbmF0dXJl",
    url="http://203.0.113.7:41000",
)
#: What the official client sends as ``session_auth``: the whole /route/ answer.
SESSION_AUTH = {**asdict(AUTH), "__request_id": "0f9c6a8e-0000-4000-8000-000000000000"}


class _Recorder(Resource):
    """A backend that records the on_close POSTs (or answers them ``code``)."""

    isLeaf = True

    def __init__(self, code: int = 200) -> None:
        super().__init__()
        self.code = code
        self.posts: list[tuple[bytes, Any]] = []

    def render_POST(self, request: Request) -> bytes:
        assert request.content is not None
        self.posts.append((request.path, json.loads(request.content.read())))
        request.setResponseCode(self.code)
        return b"{}"


class _Transport:
    """The transport of a request in flight: aborting it fails the request, as a real one does."""

    def __init__(self, request: DummyRequest) -> None:
        self.request = request
        self.aborted = False

    def abortConnection(self) -> None:
        self.aborted = True
        self.request.processingFailed(Failure(ConnectionDone()))


def _request(path: bytes = b"/session/create", body: bytes = b"") -> Any:
    request = DummyRequest(path.lstrip(b"/").split(b"/"))
    request.path = path
    request.method = b"POST"
    request.content = io.BytesIO(body)
    request.transport = _Transport(request)
    return request


def _warnings(testcase: SynchronousTestCase) -> list[str]:
    """The text of every warning the sessions module logs during the test."""
    seen: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_namespace") == "vespa.worker.sessions" and event.get("log_level") in (
            LogLevel.warn,
            LogLevel.error,
            LogLevel.critical,
        ):
            seen.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    testcase.addCleanup(globalLogPublisher.removeObserver, observe)
    return seen


def _create_envelope(payload: object, auth: AuthData | None = AUTH) -> Envelope:
    return Envelope(auth=auth, body=json.dumps(payload).encode(), target=b"/session/create")


class SessionsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_765_000_000)
        self.ledger = Ledger()
        self.backend = _Recorder()
        self.http = StubTreq(self.backend)
        self.sessions = Sessions(
            self.clock, self.ledger, self.http, "http://127.0.0.1:8000", max_sessions=2
        )

    def create(self, payload: object = None, workload: float = 100.0) -> dict[str, Any]:
        if payload is None:
            payload = {"lifetime": 30, "on_close_route": None, "on_close_payload": None}
        request = _request()
        body = self.sessions.create(request, _create_envelope(payload), workload)
        self.assertEqual(request.responseCode, 201)
        answer: dict[str, Any] = json.loads(body)
        return answer

    def control(self, path: bytes, body: object) -> tuple[int, Any]:
        """Answer a control route; return the status and the JSON body, as the resource would."""
        request = _request(path, json.dumps(body).encode() if not isinstance(body, bytes) else body)
        try:
            answer = self.sessions.control(request, path, request.content.read())
        except VespaError as error:
            return error.status, error.body()
        assert answer is not None
        return request.responseCode or 200, json.loads(answer)

    def test_create_answers_id_and_expiration(self) -> None:
        """201 with a session_id and the expiry, lifetime seconds from now."""
        answer = self.create({"lifetime": 30})
        self.assertEqual(set(answer), {"session_id", "expiration"})
        self.assertEqual(answer["expiration"], self.clock.seconds() + 30)
        self.assertIsNotNone(self.sessions.get(answer["session_id"]))

    def test_default_lifetime(self) -> None:
        """No lifetime in the payload: 60 s, the official default."""
        answer = self.create({"on_close_route": None})
        self.assertEqual(answer["expiration"], self.clock.seconds() + 60)

    def test_session_ids_are_unique_and_unguessable(self) -> None:
        ids = {self.create()["session_id"], self.create()["session_id"]}
        self.assertEqual(len(ids), 2)
        self.assertTrue(all(len(i) == 32 for i in ids))

    def test_session_load_is_in_flight_until_it_ends(self) -> None:
        """The session's workload counts in flight (cur_load), held, not queued."""
        answer = self.create(workload=100.0)
        self.assertEqual(self.ledger.in_flight_workload, 100.0)
        self.assertEqual(self.ledger.working_request_idxs(), [42])
        self.assertEqual(self.sessions.held_workload, 100.0)
        self.assertEqual(
            self.control(
                b"/session/end", {"session_id": answer["session_id"], "session_auth": SESSION_AUTH}
            )[0],
            200,
        )
        self.assertEqual(self.ledger.in_flight_workload, 0.0)
        self.assertEqual(self.sessions.held_workload, 0.0)

    def test_max_sessions(self) -> None:
        """Beyond --max-sessions: SessionsFull (429), and nothing is held for it."""
        self.create()
        self.create()
        with self.assertRaises(SessionsFull) as raised:
            self.sessions.create(_request(), _create_envelope({"lifetime": 5}), 100.0)
        self.assertEqual(raised.exception.status, 429)
        self.assertEqual(len(self.sessions), 2)
        self.assertEqual(self.ledger.in_flight_count, 2)

    def test_no_limit(self) -> None:
        self.sessions.max_sessions = None
        for _ in range(5):
            self.create()
        self.assertEqual(len(self.sessions), 5)

    def test_bad_settings(self) -> None:
        """A lifetime that is not a positive finite number, or an on_close_route
        that is not a path on the backend: 422, and no session."""
        for payload in (
            {"lifetime": -1},
            {"lifetime": 0},
            {"lifetime": "60"},
            {"lifetime": True},
            {"lifetime": float("inf")},
            {"lifetime": 5, "on_close_route": "http://169.254.169.254/latest"},
            {"lifetime": 5, "on_close_route": "//elsewhere/x"},
            {"lifetime": 5, "on_close_route": 7},
            ["lifetime"],
        ):
            with self.assertRaises(SessionRequestInvalid, msg=payload) as raised:
                self.sessions.create(_request(), _create_envelope(payload), 1.0)
            self.assertEqual(raised.exception.status, 422)
        self.assertEqual(len(self.sessions), 0)
        self.assertEqual(self.ledger.in_flight_count, 0)

    def test_expiry_removes_everything(self) -> None:
        """At its expiry the session is gone from memory, from the in-flight
        set and the held workload, and its end waits for /delete_requests/
        as a success; nothing is left for it afterwards."""
        answer = self.create({"lifetime": 30})
        self.clock.advance(29.9)
        self.assertEqual(len(self.sessions), 1)
        self.clock.advance(0.1)
        self.assertEqual(len(self.sessions), 0)
        self.assertIsNone(self.sessions.get(answer["session_id"]))
        self.assertEqual(self.ledger.in_flight_count, 0)
        self.assertEqual(self.ledger.working_request_idxs(), [])
        self.assertEqual(self.sessions.held_workload, 0.0)
        deletions = self.ledger.take_deletions()
        self.assertEqual(deletions.request_idxs(True), [42])
        self.assertEqual(deletions.request_idxs(False), [])
        self.assertEqual(self.ledger.totals[Outcome.SERVED].requests, 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_many_sessions_expire_without_a_leak(self) -> None:
        self.sessions.max_sessions = None
        for lifetime in range(1, 101):
            self.create({"lifetime": lifetime})
        self.clock.advance(100)
        self.assertEqual(len(self.sessions), 0)
        self.assertEqual(self.ledger.in_flight_count, 0)
        self.assertEqual(self.ledger.pending_deletions, 100)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_use_extends_the_lifetime(self) -> None:
        """A request in the session pushes its expiry to lifetime seconds from
        its start, and again from its end."""
        answer = self.create({"lifetime": 30})
        session_id = answer["session_id"]
        self.clock.advance(20)
        session = self.sessions.join(session_id, AUTH)
        self.assertEqual(session.expiration, self.clock.seconds() + 30)
        request = _request(b"/v1/chat/completions")
        self.sessions.attach(session, request)
        self.clock.advance(25)  # 45 s in: alive, thanks to the request
        self.assertIsNotNone(self.sessions.get(session_id))
        request.finish()
        self.assertEqual(session.expiration, self.clock.seconds() + 30)
        self.clock.advance(29)
        self.assertIsNotNone(self.sessions.get(session_id))
        self.clock.advance(1)
        self.assertIsNone(self.sessions.get(session_id))

    def test_join_refusals(self) -> None:
        """An unknown session: 410; another auth_data than the session's: 401."""
        with self.assertRaises(SessionGone) as gone:
            self.sessions.join("nope", AUTH)
        self.assertEqual(gone.exception.status, 410)
        session_id = self.create()["session_id"]
        with self.assertRaises(SessionAuthInvalid) as bad:
            self.sessions.join(session_id, replace(AUTH, request_idx=43))
        self.assertEqual(bad.exception.status, 401)
        with self.assertRaises(SessionAuthInvalid):
            self.sessions.join(session_id, None)

    def test_expiry_cancels_requests_in_flight(self) -> None:
        """Requests still running when the session closes have their connection
        cut (the relay then cancels the backend call)."""
        session_id = self.create({"lifetime": 10})["session_id"]
        session = self.sessions.join(session_id, AUTH)
        running = [_request(b"/hang"), _request(b"/hang")]
        for request in running:
            self.sessions.attach(session, request)
        self.clock.advance(10)
        self.assertEqual([r.transport.aborted for r in running], [True, True])
        self.assertIsNone(self.sessions.get(session_id))
        self.assertEqual(session.requests, set())

    def test_requests_in_a_session_are_not_deletions(self) -> None:
        """A request in a session is accounted, but only the session's end is
        a deletion of its request_idx."""
        session_id = self.create()["session_id"]
        self.sessions.join(session_id, AUTH)
        ticket = self.ledger.receive(42, 3, 10.0)
        self.ledger.finish_in_session(ticket, Outcome.SERVED)
        self.assertEqual(self.ledger.totals[Outcome.SERVED].requests, 1)
        self.assertEqual(self.ledger.pending_deletions, 0)
        self.control(b"/session/end", {"session_id": session_id, "session_auth": SESSION_AUTH})
        self.assertEqual(self.ledger.take_deletions().request_idxs(True), [42])

    def test_get(self) -> None:
        answer = self.create(
            {"lifetime": 30, "on_close_route": "/closed", "on_close_payload": {"a": 1}}
        )
        status, body = self.control(
            b"/session/get", {"session_id": answer["session_id"], "session_auth": SESSION_AUTH}
        )
        self.assertEqual(status, 200)
        self.assertEqual(
            body,
            {
                "session_id": answer["session_id"],
                "auth_data": asdict(AUTH),
                "lifetime": 30.0,
                "expiration": answer["expiration"],
                "created_at": self.clock.seconds(),
                "on_close_route": "/closed",
                "on_close_payload": {"a": 1},
            },
        )

    def test_control_answers(self) -> None:
        """The official worker's status codes, route by route."""
        session_id = self.create()["session_id"]
        wrong = {**SESSION_AUTH, "signature": "b3RoZXI="}
        for path in (b"/session/get", b"/session/health", b"/session/end"):
            self.assertEqual(self.control(path, b"{not json")[0], 422, path)
            self.assertEqual(self.control(path, {"session_auth": SESSION_AUTH})[0], 422, path)
            self.assertEqual(self.control(path, [session_id])[0], 422, path)
            self.assertEqual(self.control(path, {"session_id": session_id})[0], 401, path)
            self.assertEqual(
                self.control(path, {"session_id": session_id, "session_auth": wrong})[0], 401, path
            )
            self.assertEqual(
                self.control(path, {"session_id": session_id, "session_auth": "x"})[0], 401, path
            )
        unknown = {"session_id": "unknown", "session_auth": SESSION_AUTH}
        self.assertEqual(
            self.control(b"/session/get", unknown),
            (400, {"error": "session does not exist", "origin": "vespa"}),
        )
        self.assertEqual(self.control(b"/session/health", unknown), (200, {"ok": False}))
        self.assertEqual(self.control(b"/session/end", unknown)[0], 400)
        mine = {"session_id": session_id, "session_auth": SESSION_AUTH}
        self.assertEqual(self.control(b"/session/health", mine), (200, {"ok": True}))
        self.assertEqual(
            self.control(b"/session/end", mine),
            (200, {"ended": True, "removed_session": session_id}),
        )
        self.assertEqual(self.control(b"/session/health", mine), (200, {"ok": False}))
        self.assertEqual(self.control(b"/session/end", mine)[0], 400)
        self.assertIsNone(self.sessions.control(_request(b"/other"), b"/other", b"{}"))

    def test_unsecured_session_takes_any_session_auth(self) -> None:
        """Created without auth_data (unsecured): nothing to match."""
        request = _request()
        answer = json.loads(self.sessions.create(request, _create_envelope({}, auth=None), 1.0))
        status, body = self.control(b"/session/health", {"session_id": answer["session_id"]})
        self.assertEqual((status, body), (200, {"ok": True}))
        self.assertIs(self.sessions.join(answer["session_id"], None).auth, None)

    def test_on_close_posts_to_the_backend(self) -> None:
        """Ended or expired: on_close_payload is POSTed to on_close_route on
        the backend, with the session_id added."""
        first = self.create(
            {"lifetime": 30, "on_close_route": "/closed", "on_close_payload": {"job": 7}}
        )["session_id"]
        second = self.create(
            {"lifetime": 5, "on_close_route": "/expired", "on_close_payload": "text"}
        )["session_id"]
        self.control(b"/session/end", {"session_id": first, "session_auth": SESSION_AUTH})
        self.clock.advance(5)
        self.http.flush()
        self.assertEqual(
            self.backend.posts,
            [
                (b"/closed", {"job": 7, "session_id": first}),
                (b"/expired", {"payload": "text", "session_id": second}),
            ],
        )

    def test_no_on_close_route_no_post(self) -> None:
        self.create({"lifetime": 1, "on_close_payload": {"ignored": True}})
        self.clock.advance(1)
        self.http.flush()
        self.assertEqual(self.backend.posts, [])

    def test_on_close_failure_is_logged_not_raised(self) -> None:
        """A backend that refuses the on_close POST: one warning, nothing else."""
        self.backend.code = 500
        warnings = _warnings(self)
        self.create({"lifetime": 1, "on_close_route": "/closed"})
        self.clock.advance(1)
        self.http.flush()
        self.assertEqual(len(self.backend.posts), 1)
        self.assertEqual(len(self.sessions), 0)
        self.assertEqual(len(warnings), 1)
        self.assertIn("on_close_route /closed answered 500", warnings[0])

    def test_on_close_unreachable_is_logged_not_raised(self) -> None:
        """A backend that cannot be reached at all: the session still closes."""

        class _Down:
            def post(self, *args: Any, **kwargs: Any) -> Any:
                return fail(ConnectionRefusedError())

        self.sessions = Sessions(
            self.clock,
            self.ledger,
            _Down(),  # type: ignore[arg-type]
            "http://127.0.0.1:8000",
        )
        warnings = _warnings(self)
        self.create({"lifetime": 1, "on_close_route": "/closed"})
        self.clock.advance(1)
        self.assertEqual(len(self.sessions), 0)
        self.assertEqual(self.ledger.in_flight_count, 0)
        self.assertEqual(len(warnings), 1)
        self.assertIn("on_close_route /closed failed", warnings[0])

    def test_stop_closes_idle_sessions_and_busy_ones_when_done(self) -> None:
        """At shutdown an idle session closes at once; a busy one as its last
        request ends, so the drain is not held by sessions."""
        idle = self.create()["session_id"]
        busy = self.create()["session_id"]
        request = _request(b"/v1/chat/completions")
        self.sessions.attach(self.sessions.join(busy, AUTH), request)
        self.sessions.stopService()
        self.assertIsNone(self.sessions.get(idle))
        self.assertIsNotNone(self.sessions.get(busy))
        request.finish()
        self.assertIsNone(self.sessions.get(busy))
        self.assertEqual(self.ledger.in_flight_count, 0)


class SessionEndResourceTests(SynchronousTestCase):
    """The plain-HTTP listener's resource: /session/end and nothing else."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.ledger = Ledger()
        self.sessions = Sessions(self.clock, self.ledger, None, "http://127.0.0.1:8000")
        request = _request()
        self.session_id = json.loads(
            self.sessions.create(request, _create_envelope({"lifetime": 9}), 1.0)
        )["session_id"]
        self.resource = SessionEndResource(self.sessions)

    def render(self, method: bytes, path: bytes, body: object) -> tuple[int, Any]:
        request = _request(path, json.dumps(body).encode())
        request.method = method
        answer = self.resource.render(request)
        return request.responseCode or 200, json.loads(answer)

    def test_end(self) -> None:
        mine = {"session_id": self.session_id, "session_auth": SESSION_AUTH}
        self.assertEqual(self.render(b"POST", b"/session/get", mine)[0], 404)
        self.assertEqual(self.render(b"GET", b"/session/end", mine)[0], 405)
        no_auth = {"session_id": self.session_id}
        self.assertEqual(self.render(b"POST", b"/session/end", no_auth)[0], 401)
        self.assertEqual(
            self.render(b"POST", b"/session/end", mine),
            (200, {"ended": True, "removed_session": self.session_id}),
        )
        self.assertEqual(self.render(b"POST", b"/session/end", mine)[0], 400)
        self.assertEqual(self.ledger.in_flight_count, 0)


class SessionSettingsTests(SynchronousTestCase):
    """--max-sessions and --http-port, from the command line and the environment."""

    BACKEND = {"backend-url": "http://127.0.0.1:8000"}

    def config(self, environ: dict[str, str] | None = None, **given: Any) -> WorkerConfig:
        return WorkerConfig.from_sources({**self.BACKEND, **given}, environ or {})

    def test_defaults(self) -> None:
        """Ten sessions, as the official worker; /session/end also on port + 1."""
        config = self.config()
        self.assertEqual(config.max_sessions, 10)
        self.assertEqual(config.session_listen(), "tcp:3001")

    def test_max_sessions(self) -> None:
        self.assertEqual(self.config(**{"max-sessions": "3"}).max_sessions, 3)
        self.assertEqual(self.config({"VESPA_MAX_SESSIONS": "off"}).max_sessions, None)
        self.assertEqual(self.config({"PYWORKER_MAX_SESSIONS": "0"}).max_sessions, None)
        with self.assertRaises(ConfigError):
            self.config(**{"max-sessions": "-1"})

    def test_http_port_follows_the_worker_port_and_interface(self) -> None:
        self.assertEqual(self.config(port="8080").session_listen(), "tcp:8081")
        listen = "tcp:3000:interface=127.0.0.1"
        self.assertEqual(
            self.config(listen=listen).session_listen(), "tcp:3001:interface=127.0.0.1"
        )
        ipv6 = r"tcp6:3000:interface=\:\:1"
        self.assertEqual(self.config(listen=ipv6).session_listen(), r"tcp:3001:interface=\:\:1")

    def test_http_port_given(self) -> None:
        self.assertEqual(
            self.config({"VESPA_WORKER_HTTP_PORT": "9001"}).session_listen(), "tcp:9001"
        )
        self.assertIsNone(self.config(**{"http-port": "off"}).session_listen())
        with self.assertRaises(ConfigError):
            self.config(**{"http-port": "70000"})

    def test_no_port_to_add_one_to(self) -> None:
        """An ephemeral worker port (tests) or 65535: no plain-HTTP listener."""
        self.assertIsNone(self.config(listen="tcp:0").session_listen())
        self.assertIsNone(self.config(port="65535").session_listen())
