# -*- test-case-name: tests.test_sessions -*-
"""
Sessions, as the official Vast worker (vastai 1.9.1) implements them.

A caller opens a session with a signed ``POST /session/create`` whose payload is
``{"lifetime", "on_close_route", "on_close_payload"}``; the worker answers
``201 {"session_id", "expiration"}``. Requests that carry the ``session_id``
beside their ``auth_data`` then run *in* the session, and each one pushes its
expiry out to ``lifetime`` seconds from now (when it starts and when it ends,
so a long request is not cut by an expiry that its own start set). Three
control routes take ``{"session_id", "session_auth"}``, where ``session_auth``
is the ``auth_data`` the session was created with:

=====================  =====================================================
``/session/get``       200 with the session's fields; 400 if there is none
``/session/health``    200 ``{"ok": true}``, or ``{"ok": false}`` if none
``/session/end``       200 ``{"ended": true, "removed_session": id}``; 400 if none
=====================  =====================================================

All three answer 422 for a body that is not JSON or has no ``session_id``, and
401 when ``session_auth`` is not the session's. A request in a session that is
gone is answered 410; a new session beyond ``--max-sessions`` 429. These are
the official worker's answers; Vespa's carry a JSON ``{"error", "origin"}``
body as all its refusals do.

Accounting, through the ledger's public API: a session is one request to the
autoscaler (its ``request_idx``), in flight from create to close, so its
workload counts in ``cur_load`` and its end is reported once to
``/delete_requests/`` (as served, as the official worker does). Requests in a
session are accounted like any other while they run, but their end is not a
deletion of their own: they carry the session's ``request_idx``, which ends
with the session. The session's own workload is a reservation, not work
queued: it is left out of the wait estimate (as the official worker leaves it
out of its ``wait_time``), see :attr:`Sessions.held_workload`.

Closing a session (``/session/end``, expiry, or shutdown) removes it at once
from memory and from the reports, cancels its requests still in flight (their
connections are aborted, which the relay turns into a cancellation), and
POSTs ``on_close_payload`` (an object, with ``session_id`` added when absent)
to ``on_close_route`` on the backend: best effort, bounded, logged on failure,
never waited for.

Differences from the official worker, on purpose: ``/session/create`` is
verified like any signed request (the official does not check it); expiry is
exact (a timer per session, not a 5 s sweep) and sliding (``now + lifetime``
on use, where the official adds a whole ``lifetime`` per request, so a busy
session could outlive its last use by hours); ``on_close_route`` must be a
path on the backend (an absolute URL would make the worker POST anywhere).
"""

from __future__ import annotations

import json
import secrets
from dataclasses import KW_ONLY, asdict, dataclass, field
from typing import Any

from treq.client import HTTPClient
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure
from twisted.web.server import Request

from vespa._typing import Resource, Service
from vespa.errors import BadRequest, BodyTooLarge, MethodNotAllowed, VespaError
from vespa.http.site import ProxyRequest
from vespa.log import get_logger
from vespa.protocol.envelope import AuthData, Envelope
from vespa.worker.ledger import Ledger, Outcome, Ticket
from vespa.worker.refusal import refuse
from vespa.worker.session_fields import control_fields, create_settings, same_auth

log = get_logger(__name__)

#: The routes answered here. ``/session/create`` is a signed request and
#: comes through the resource's pipeline; the others are control routes.
CREATE_PATH = b"/session/create"
CONTROL_PATHS = (b"/session/get", b"/session/health", b"/session/end")

#: Seconds the best-effort ``on_close_route`` POST may take.
ON_CLOSE_TIMEOUT = 10.0


class SessionNotFound(BadRequest):
    """``/session/get`` or ``/session/end`` for a session that does not exist (400)."""


class SessionAuthInvalid(VespaError, status=401):
    """``session_auth`` (or a request's ``auth_data``) is not the session's (401)."""


class SessionGone(VespaError, status=410):
    """A request names a session that expired, ended or never existed (410)."""


class NotALocalRoute(VespaError, status=404):
    """Anything but ``/session/end`` on the plain-HTTP listener (404)."""


class SessionsFull(VespaError, status=429):
    """``--max-sessions`` sessions are open already (429)."""


@dataclass(eq=False)
class Session:
    """
    One open session.

    :ivar session_id: the id callers name it by.
    :ivar auth: the routing data it was created with (``None`` when unsecured
        and created without any), which ``session_auth`` must match.
    :ivar lifetime: seconds of idleness it survives.
    :ivar created_at: when it was created (``clock.seconds()``, epoch seconds).
    :ivar expiration: when it expires unless used again.
    :ivar on_close_route: the backend path POSTed when it closes, or ``None``.
    :ivar on_close_payload: the JSON body of that POST.
    :ivar ticket: the session's own entry in the ledger.
    :ivar requests: its requests in flight.
    :ivar timer: the pending expiry, rescheduled by every use.
    """

    session_id: str
    auth: AuthData | None
    lifetime: float
    created_at: float
    expiration: float
    on_close_route: str | None
    on_close_payload: Any
    ticket: Ticket
    requests: set[Request] = field(default_factory=set)
    timer: IDelayedCall | None = None

    def describe(self) -> dict[str, Any]:
        """The session as ``/session/get`` answers it."""
        return {
            "session_id": self.session_id,
            "auth_data": asdict(self.auth) if self.auth is not None else None,
            "lifetime": self.lifetime,
            "expiration": self.expiration,
            "created_at": self.created_at,
            "on_close_route": self.on_close_route,
            "on_close_payload": self.on_close_payload,
        }


@dataclass(eq=False, repr=False)
class Sessions(Service):
    """
    The open sessions of one worker (see the module docstring).

    A service: when it stops (first, at shutdown) every session closes, so
    none holds the drain or outlives the process without its ``on_close_route``.

    :ivar clock: times expiries and stamps ``expiration``.
    :ivar ledger: where sessions and their requests are accounted.
    :ivar http: a treq-like client (``post(url, json=..., timeout=...)``) for
        the ``on_close_route`` POSTs.
    :ivar backend_url: the backend's origin, which ``on_close_route`` is a path on.
    :ivar max_sessions: how many may be open at once; ``None`` for no limit.
    """

    clock: IReactorTime
    ledger: Ledger
    http: HTTPClient
    backend_url: str
    _: KW_ONLY
    max_sessions: int | None = 10
    _open: dict[str, Session] = field(default_factory=dict, init=False)
    _stopping: bool = field(default=False, init=False)

    def __len__(self) -> int:
        return len(self._open)

    def get(self, session_id: str) -> Session | None:
        """The open session with this id, if any."""
        return self._open.get(session_id)

    @property
    def held_workload(self) -> float:
        """The workload the open sessions hold in the ledger (not work queued)."""
        return sum(session.ticket.workload for session in self._open.values())

    # -- create ---------------------------------------------------------------

    def create(self, request: Request, envelope: Envelope, workload: float) -> bytes:
        """
        Open a session for a verified ``/session/create`` and answer it (201).

        :param request: the create request, answered here.
        :param envelope: its envelope; the payload holds the session's settings.
        :param workload: the session's workload, held until it closes.
        :raise SessionsFull: at ``max_sessions`` (429).
        :raise SessionRequestInvalid: for a payload that is not a valid
            settings object (422).
        """
        if self.max_sessions is not None and len(self._open) >= self.max_sessions:
            raise SessionsFull(f"this worker has {len(self._open)} sessions open, its maximum")
        lifetime, route, payload = create_settings(envelope.body)
        auth = envelope.auth
        ticket = self.ledger.receive(
            auth.request_idx if auth is not None else 0,
            auth.reqnum if auth is not None else 0,
            workload,
        )
        now = self.clock.seconds()
        session = Session(
            session_id=secrets.token_hex(16),
            auth=auth,
            lifetime=lifetime,
            created_at=now,
            expiration=now + lifetime,
            on_close_route=route,
            on_close_payload=payload,
            ticket=ticket,
        )
        session.timer = self.clock.callLater(lifetime, self._expire, session)
        self._open[session.session_id] = session
        request.setResponseCode(201)
        return _json(request, {"session_id": session.session_id, "expiration": session.expiration})

    # -- requests in a session ------------------------------------------------

    def join(self, session_id: str, auth: AuthData | None) -> Session:
        """
        The session a request names, extended by its use.

        :param session_id: the envelope's ``session_id``.
        :param auth: the request's routing data: it must be the session's own.
        :raise SessionGone: when there is no such session (410).
        :raise SessionAuthInvalid: when ``auth`` is not the session's (401).
        """
        session = self._open.get(session_id)
        if session is None:
            raise SessionGone("invalid session: it expired, ended or never existed")
        if session.auth is not None and (auth is None or not same_auth(asdict(auth), session.auth)):
            raise SessionAuthInvalid("auth_data is not the session's")
        self._touch(session)
        return session

    def attach(self, session: Session, request: Request) -> None:
        """
        ``request`` was admitted in ``session``: it is cancelled if the session
        closes first, and its end extends the session again.
        """
        session.requests.add(request)
        request.notifyFinish().addBoth(self._detach, session, request)

    def _detach(self, result: object, session: Session, request: Request) -> None:
        session.requests.discard(request)
        if self._open.get(session.session_id) is session:
            self._touch(session)
            if self._stopping and not session.requests:
                self.close(session, "shutdown")

    def _touch(self, session: Session) -> None:
        session.expiration = max(session.expiration, self.clock.seconds() + session.lifetime)
        if session.timer is not None and session.timer.active():
            session.timer.reset(session.expiration - self.clock.seconds())

    # -- control routes -------------------------------------------------------

    def control(self, request: Request, path: bytes, body: bytes) -> bytes | None:
        """
        Answer ``/session/get``, ``/session/health`` or ``/session/end``, or
        return ``None`` for any other path (and for a ``POST /session/create``,
        which the caller verifies and hands to :meth:`create`).

        :raise VespaError: for a refusal (422, 400, 401; 405 for a session
            route called with another method than ``POST``).
        """
        if path != CREATE_PATH and path not in CONTROL_PATHS:
            return None
        if request.method != b"POST":
            raise MethodNotAllowed(f"{path.decode('ascii')} takes POST", headers={"Allow": "POST"})
        if path == CREATE_PATH:
            return None
        session_id, session_auth = control_fields(body)
        session = self._open.get(session_id)
        if session is None:
            if path == b"/session/health":
                return _json(request, {"ok": False})
            if path == b"/session/get":
                raise SessionNotFound("session does not exist")
            raise SessionNotFound(f"session with id {session_id[:64]} not found")
        if session.auth is not None and not same_auth(session_auth, session.auth):
            raise SessionAuthInvalid("session_auth is not valid")
        if path == b"/session/health":
            return _json(request, {"ok": True})
        if path == b"/session/get":
            return _json(request, session.describe())
        self.close(session, "ended")
        return _json(request, {"ended": True, "removed_session": session_id})

    # -- closing --------------------------------------------------------------

    def _expire(self, session: Session) -> None:
        session.timer = None
        self.close(session, "expired")

    def close(self, session: Session, reason: str) -> None:
        """
        Close ``session`` now: forget it, cancel its requests in flight, end it
        in the ledger and POST its ``on_close_route`` (not waited for).

        :param reason: for the log: ``ended``, ``expired``, ``shutdown``.
        """
        if self._open.pop(session.session_id, None) is not session:
            return
        if session.timer is not None and session.timer.active():
            session.timer.cancel()
        session.timer = None
        requests, session.requests = session.requests, set()
        for request in requests:
            _abort(request)
        self.ledger.finish(session.ticket, Outcome.SERVED)
        log.debug(
            "session {id} {reason}; {n} requests in flight cancelled",
            id=session.session_id,
            reason=reason,
            n=len(requests),
        )
        if session.on_close_route is not None:
            self._on_close(session, session.on_close_route)

    def _on_close(self, session: Session, route: str) -> None:
        # As the official worker: an object is sent as it is, anything else
        # wrapped; either way with the session_id, to correlate the callback.
        payload = session.on_close_payload
        body: dict[str, Any]
        if isinstance(payload, dict):
            body = dict(payload)
        elif payload is None:
            body = {}
        else:
            body = {"payload": payload}
        body.setdefault("session_id", session.session_id)
        try:
            d: Deferred[Any] = self.http.post(
                self.backend_url + route, json=body, timeout=ON_CLOSE_TIMEOUT
            )
        except Exception:
            log.failure(
                "session {id}: on_close_route {route} failed", id=session.session_id, route=route
            )
            return
        d.addCallback(self._on_close_answered, session.session_id, route)
        d.addErrback(self._on_close_failed, session.session_id, route)

    def _on_close_answered(self, response: Any, session_id: str, route: str) -> Any:
        if response.code >= 400:
            log.warn(
                "session {id}: on_close_route {route} answered {code}",
                id=session_id,
                route=route,
                code=response.code,
            )
        # Read (and drop) the body, so the connection is released.
        return response.content()

    def _on_close_failed(self, reason: Failure, session_id: str, route: str) -> None:
        log.warn(
            "session {id}: on_close_route {route} failed: {error}",
            id=session_id,
            route=route,
            error=reason.getErrorMessage(),
        )

    def stopService(self) -> None:
        """Close every session with nothing in flight; the others as their last request ends."""
        super().stopService()
        self._stopping = True
        for session in list(self._open.values()):
            if not session.requests:
                self.close(session, "shutdown")


class SessionEndResource(Resource):
    """
    The plain-HTTP listener's one route, ``POST /session/end`` (the official
    worker's ``WORKER_HTTP_PORT``): a model server on the same machine ends a
    session without TLS. It takes the same body, and answers the same, as
    ``/session/end`` on the worker port; everything else is 404.

    :param sessions: the worker's sessions.
    """

    isLeaf = True

    def __init__(self, sessions: Sessions) -> None:
        super().__init__()
        self._sessions = sessions

    def render(self, request: Request) -> bytes:
        try:
            if request.path != b"/session/end":
                raise NotALocalRoute("this port only serves POST /session/end")
            if isinstance(request, ProxyRequest) and request.body_too_large:
                raise BodyTooLarge("the request body is over the limit")
            body = request.content.read() if request.content is not None else b""
            answer = self._sessions.control(request, b"/session/end", body)
        except VespaError as error:
            return refuse(request, error, where=" on the plain-HTTP port")
        assert answer is not None
        return answer


def _abort(request: Request) -> None:
    """
    Cut ``request``'s connection: the relay sees its client go away, cancels
    the backend call, and the request ends in the ledger as cancelled.
    """
    transport = request.transport
    if transport is None:
        return
    abort = getattr(transport, "abortConnection", None) or transport.loseConnection
    abort()


def _json(request: Request, body: object) -> bytes:
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(body).encode("utf-8")
