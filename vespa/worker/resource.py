# -*- test-case-name: tests.test_worker_relay,tests.test_worker_protocol -*-
"""
The worker's HTTP surface: local routes first, then every other request
checked, verified, admitted, accounted and relayed.

For each proxied request, in order:

0. ``/ping``, ``/health`` (alive: the state as JSON) and ``/ready`` (200 only
   when loaded, healthy and not draining, else 503) are answered locally;
   so are ``/session/get``, ``/session/health`` and ``/session/end``, and a
   verified ``/session/create`` opens a session (:mod:`vespa.worker.sessions`);
1. target, method, body size and blocked paths (400, 405, 413, 403);
2. the envelope: routing data in the body or the query (400, 422), or, in
   unsecured mode, none at all. A body over
   :data:`~vespa.protocol.envelope.LARGE_BODY` is read and parsed in the
   reactor's thread pool, so other streams keep flowing meanwhile;
3. the signature (401), unless unsecured;
4. whether the worker serves now (503 with ``Retry-After`` while loading or
   errored) and the wait estimate (429);
5. a concurrency slot, waiting in line if needed;
6. the relay, whose outcome closes the request in the ledger.

Refusals from step 4 on are counted as rejected and reported with the
request's index and workload; a refusal before the signature verified (steps
1 to 3) is only counted in the local metrics: nothing an unverified caller
claims reaches the reports. Everything admitted ends as served, errored
(backend 5xx, relay failure, timeout) or cancelled (client gone).
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import KW_ONLY, dataclass, field, replace
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.web.server import NOT_DONE_YET, Request

from vespa import __version__
from vespa._typing import Resource
from vespa.errors import BodyTooLarge, PathBlocked, ServiceUnavailable, VespaError
from vespa.http.relay import BackendRelay, RelayOutcome, RelayResult
from vespa.http.target import PathBlocklist, check_relayable, origin_form
from vespa.log import get_logger
from vespa.protocol.envelope import (
    BODY_METHODS,
    LARGE_BODY,
    Envelope,
    NestedTooDeep,
    parse_envelope,
)
from vespa.worker.admission import Admission, Slot
from vespa.worker.ledger import Ledger, Outcome, Ticket
from vespa.worker.refusal import refuse
from vespa.worker.request_ids import new_request_id
from vespa.worker.sessions import CREATE_PATH, Sessions
from vespa.worker.state import Phase, WorkerState
from vespa.worker.workload import Workload

if TYPE_CHECKING:
    # Imported by tap.py only when used: the RSA code by a secured worker,
    # prometheus_client by one that serves its metrics.
    from vespa.protocol.signing import SignatureVerifier
    from vespa.worker.metrics import WorkerMetrics

log = get_logger(__name__)

# The endpoint key the official client sends in the query: for the
# autoscaler, never for the model server.
_CALLER_KEY_PARAMS = frozenset({"api_key"})

#: Seconds a caller should wait before retrying, by phase.
RETRY_AFTER = {Phase.LOADING: 10, Phase.BENCHMARKING: 10, Phase.ERRORED: 30, Phase.DRAINING: 30}


@dataclass(eq=False, repr=False)
class WorkerResource(Resource):
    """
    The root resource of the worker.

    :ivar relay: relays requests to the backend.
    :ivar state: whether the worker serves now, and its capacity.
    :ivar ledger: accounts every request.
    :ivar admission: the wait estimate and the concurrency slots.
    :ivar verifier: checks signatures; ``None`` in unsecured mode.
    :ivar blocklist: paths answered 403.
    :ivar workload: computes each request's workload; by default the
        autoscaler's cost.
    :ivar metrics: observes queue waits and backend times, when given.
    :ivar sessions: answers ``/session/*`` and holds the sessions; without
        it, those paths are relayed like any other.
    :ivar reactor: whose thread pool parses large bodies; ``None`` parses
        every body on the calling thread.
    """

    isLeaf = True

    relay: BackendRelay
    _: KW_ONLY
    state: WorkerState
    ledger: Ledger
    admission: Admission
    verifier: SignatureVerifier | None
    blocklist: PathBlocklist = field(default_factory=lambda: PathBlocklist(()))
    workload: Workload = field(default_factory=lambda: Workload("cost", ""))
    metrics: WorkerMetrics | None = None
    sessions: Sessions | None = None
    reactor: Any = None

    def __post_init__(self) -> None:
        Resource.__init__(self)

    def render(self, request: Request) -> bytes | int:
        """
        Answer a local route, refuse what cannot be served, or admit and relay.
        """
        request_id = _request_id(request)
        request.responseHeaders.setRawHeaders(b"x-request-id", [request_id])
        try:
            target = origin_form(request.uri)
            if request.method in (b"GET", b"HEAD"):
                local = self._local_route(request)
                if local is not None:
                    return local
            self._check(request, target)
            if self.sessions is not None and request.path.startswith(b"/session/"):
                answer = self._session_control(request)
                if answer is not None:
                    return answer
            if self.reactor is not None and _body_size(request) > LARGE_BODY:
                return self._parse_in_thread(request, target)
            envelope = self._envelope(request, target)
        except NestedTooDeep as error:
            if self.reactor is None:
                return self._refuse(request, error)
            # The reactor's stack is deep already; a thread's is not.
            return self._parse_in_thread(request, target)
        except VespaError as error:
            return self._refuse(request, error)
        return self._admit(request, envelope)

    def _session_control(self, request: Request) -> bytes | None:
        """
        ``/session/get``, ``/session/health`` and ``/session/end``, or ``None``
        for any other path. Their bodies are small JSON, parsed here; a large
        one is refused rather than parsed on the reactor thread.
        """
        assert self.sessions is not None
        if _body_size(request) > LARGE_BODY and request.path != CREATE_PATH:
            raise BodyTooLarge("a session request's body is over the limit")
        body = b"" if request.path == CREATE_PATH else self._body(request)
        return self.sessions.control(request, request.path, body)

    def _envelope(self, request: Request, target: bytes, *, in_thread: bool = False) -> Envelope:
        """
        Read the body and parse the envelope: it touches nothing shared, so it
        may run in a thread. There, a body in a file is read, and its payload
        read again, with ``os.pread``: the copies and the page faults of tens
        of megabytes then happen without the interpreter lock, which the
        reactor thread needs.
        """
        fd = _file_descriptor(request.content) if in_thread else None
        if fd is None:
            body = self._body(request)
            read_span = None
        else:
            body = _pread_all(fd)

            def read_span(start: int, end: int) -> bytes:
                return _pread_all(fd, start, end)

        secured = self.verifier is not None
        envelope = parse_envelope(
            request.method,
            target,
            body,
            unsecured=not secured,
            drop_params=_CALLER_KEY_PARAMS if secured else frozenset(),
            read_span=read_span,
        )
        if envelope.body is None and request.method in BODY_METHODS and fd is None:
            # A small passthrough: the body is already in memory, so the relay
            # sends these bytes rather than reading request.content again. A
            # large one, read here in a thread, is relayed from its file: this
            # copy is dropped now instead of held for the whole relay.
            envelope = replace(envelope, body=body)
        return envelope

    def _parse_in_thread(self, request: Request, target: bytes) -> int:
        """
        Parse a large body in the reactor's thread pool, then admit it here. A
        caller that leaves meanwhile is never admitted, so never accounted.
        """
        gone: list[Failure] = []
        request.notifyFinish().addErrback(gone.append)
        pool = self.reactor.getThreadPool()
        parsed: Deferred[Envelope] = deferToThreadPool(
            self.reactor, pool, self._envelope, request, target, in_thread=True
        )

        def parsed_or_failed(result: Envelope | Failure) -> None:
            if gone:
                return
            if not isinstance(result, Failure):
                answer = self._admit(request, result)
            elif isinstance(result.value, VespaError):
                answer = self._refuse(request, result.value)
            else:
                log.failure("parsing a request body failed", result)
                answer = self._refuse(request, VespaError("the request could not be read"))
            if isinstance(answer, bytes):
                request.write(answer)
                request.finish()

        parsed.addBoth(parsed_or_failed)
        return NOT_DONE_YET

    def _local_route(self, request: Request) -> bytes | None:
        """``/ping``, ``/health`` and ``/ready``: answered here, never forwarded."""
        path = request.path
        if path == b"/ping":
            request.setHeader(b"content-type", b"text/plain")
            return b"pong"
        if path not in (b"/health", b"/ready"):
            return None
        ready = self.state.accepting
        if path == b"/ready" and not ready:
            request.setResponseCode(503)
            request.setHeader(b"retry-after", str(RETRY_AFTER.get(self.state.phase, 10)).encode())
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        return json.dumps(self.status(ready)).encode("utf-8")

    def status(self, ready: bool | None = None) -> dict[str, object]:
        """
        The worker's state as ``/health`` and ``/ready`` show it.
        """
        state = self.state
        return {
            "ready": state.accepting if ready is None else ready,
            "phase": state.phase.value,
            "error": state.error or None,
            "max_perf": state.max_perf,
            "in_flight": self.ledger.in_flight_count,
            "in_flight_workload": self.ledger.in_flight_workload,
            "queued": self.admission.queued,
            "version": __version__,
            "uptime": round(state.uptime, 3),
        }

    def _check(self, request: Request, target: bytes) -> None:
        check_relayable(request, "relayed")
        if self.blocklist.blocks(target):
            raise PathBlocked("this path is blocked on this worker")

    def _body(self, request: Request) -> bytes:
        if request.method not in BODY_METHODS or request.content is None:
            return b""
        request.content.seek(0)
        body: bytes = request.content.read()
        request.content.seek(0)
        return body

    def _admit(self, request: Request, envelope: Envelope) -> bytes | int:
        auth = envelope.auth
        request_idx = auth.request_idx if auth is not None else 0
        reqnum = auth.reqnum if auth is not None else 0
        session = None
        try:
            if envelope.session_id is not None and self.sessions is not None:
                # Verified when the session was created; it must be the same auth_data.
                session = self.sessions.join(envelope.session_id, auth)
            elif self.verifier is not None and auth is not None:
                self.verifier.verify(auth)
        except VespaError as error:
            # Unverified: its claimed request_idx and cost never reach the reports.
            return self._refuse(request, error)
        workload = self.workload.of(
            envelope.body, auth.workload if auth is not None else None, envelope.payload
        )
        try:
            # Unsecured (local development) relays in every phase but
            # draining; the startup chain still runs and shows its phase on /ready.
            if not self.state.accepting and (
                self.verifier is not None or self.state.phase is Phase.DRAINING
            ):
                raise ServiceUnavailable(
                    self._unavailable_reason(),
                    headers={"Retry-After": str(RETRY_AFTER.get(self.state.phase, 10))},
                    details={"phase": self.state.phase.value},
                )
            if self.sessions is not None and request.path == CREATE_PATH:
                return self.sessions.create(request, envelope, workload)
            if self.state.is_loaded:  # no capacity to estimate a wait from before
                self.admission.check(
                    self._queued_workload(), self.state.max_perf, self._queued_count()
                )
        except VespaError as error:
            if envelope.session_id is None:
                # A request in a session carries the session's request_idx:
                # only the session's own end is reported for it.
                self.ledger.reject(request_idx, reqnum, workload)
            return self._refuse(request, error)
        ticket = self.ledger.receive(request_idx, reqnum, workload)
        if session is not None and self.sessions is not None:
            self.sessions.attach(session, request)
        _Admitted(self, request, envelope, ticket, in_session=session is not None).start()
        return NOT_DONE_YET

    def _queued_workload(self) -> float:
        """The workload in flight, less what open sessions merely hold."""
        if self.sessions is None:
            return self.ledger.in_flight_workload
        return max(self.ledger.in_flight_workload - self.sessions.held_workload, 0.0)

    def _queued_count(self) -> int:
        """The requests in flight, less the open sessions (each holds a ticket)."""
        if self.sessions is None:
            return self.ledger.in_flight_count
        return max(self.ledger.in_flight_count - len(self.sessions), 0)

    def _unavailable_reason(self) -> str:
        phase = self.state.phase
        if phase is Phase.ERRORED:
            return f"the worker is not serving: {self.state.error}"
        if phase is Phase.DRAINING:
            return "the worker is shutting down"
        return f"the worker is not ready yet ({phase.value})"

    def _refuse(self, request: Request, error: VespaError) -> bytes:
        if self.metrics is not None:
            self.metrics.refused.labels(str(error.status)).inc()
        return refuse(request, error)


class _Admitted:
    """One admitted request: waits for a slot, is relayed, and is closed in the ledger."""

    def __init__(
        self,
        resource: WorkerResource,
        request: Request,
        envelope: Envelope,
        ticket: Ticket,
        *,
        in_session: bool = False,
    ) -> None:
        ledger = resource.ledger
        self._finish = ledger.finish_in_session if in_session else ledger.finish
        self._resource = resource
        self._request = request
        # Not the envelope: its parsed payload need not live as long as the relay.
        self._target = envelope.target
        self._body = envelope.body
        self._ticket = ticket
        self._waiting: Deferred[Slot] | None = None
        # Only the metrics read the time spent queued.
        self._queued_at = resource.relay.clock.seconds() if resource.metrics is not None else 0.0

    def start(self) -> None:
        admission = self._resource.admission
        slot = admission.take()
        if slot is not None:
            self._relay(slot)
            return
        self._waiting = admission.acquire()
        # Queued: a client that leaves while waiting leaves the queue at once.
        self._request.notifyFinish().addErrback(self._left_queue)
        self._waiting.addCallbacks(self._relay, self._not_relayed)

    def _left_queue(self, reason: Failure) -> None:
        if self._waiting is not None:
            self._waiting.cancel()

    def _not_relayed(self, reason: Failure) -> None:
        self._waiting = None
        if reason.check(CancelledError):
            self._finish(self._ticket, Outcome.CANCELLED)
            return
        log.failure("waiting for a slot failed", reason)
        self._finish(self._ticket, Outcome.ERRORED)

    def _relay(self, slot: Slot) -> Deferred[None]:
        self._waiting = None
        self._resource.ledger.started(self._ticket)
        metrics = self._resource.metrics
        if metrics is not None:
            metrics.queue_wait.observe(self._resource.relay.clock.seconds() - self._queued_at)
        d = self._resource.relay.forward(self._request, self._target, body=self._body)
        return d.addBoth(self._relayed, slot)

    def _relayed(self, result: RelayResult | Failure, slot: Slot) -> None:
        slot.release()
        if isinstance(result, Failure):
            log.failure("relaying failed unexpectedly", result)
            self._finish(self._ticket, Outcome.ERRORED)
            return
        self._finish(self._ticket, _outcome(result))
        metrics = self._resource.metrics
        if metrics is not None:
            metrics.backend_time.observe(result.duration)
            if result.first_byte is not None:
                metrics.first_byte.observe(result.first_byte)


def _file_descriptor(content: Any) -> int | None:
    """The descriptor of a body kept in a real file (twisted.web's temporary file), if so."""
    try:
        fd = content.fileno()
        content.flush()  # what a buffered file still holds is not in the file yet
    except (AttributeError, OSError, ValueError):  # BytesIO: io.UnsupportedOperation
        return None
    return fd if isinstance(fd, int) else None


def _pread_all(fd: int, start: int = 0, end: int | None = None) -> bytes:
    """``[start:end]`` of the file ``fd`` (to its end when ``end`` is ``None``)."""
    if end is None:
        end = os.fstat(fd).st_size
    pieces = []
    while start < end:
        piece = os.pread(fd, end - start, start)
        if not piece:
            break
        pieces.append(piece)
        start += len(piece)
    return pieces[0] if len(pieces) == 1 else b"".join(pieces)


def _body_size(request: Request) -> int:
    """The size of a body method's request body, without reading it."""
    content = request.content
    if request.method not in BODY_METHODS or content is None:
        return 0
    size: int = content.seek(0, io.SEEK_END)
    content.seek(0)
    return size


def _request_id(request: Request) -> bytes:
    """
    The request's id: the caller's ``X-Request-Id`` when it is sane (1 to 128
    visible ASCII characters), else a new UUID4. It is forwarded to the backend
    and returned to the caller: llama.cpp's server answers 400 to an id that is
    not a UUID, so the ids made here are UUIDs.
    """
    given = request.requestHeaders.getRawHeaders(b"x-request-id")
    if given and 0 < len(given[0]) <= 128 and all(0x21 <= c <= 0x7E for c in given[0]):
        return given[0]
    request_id = new_request_id()
    request.requestHeaders.setRawHeaders(b"x-request-id", [request_id])
    return request_id


def _outcome(result: RelayResult) -> Outcome:
    """The ledger outcome of a relay: a backend 5xx is an error, not a service."""
    if result.outcome is RelayOutcome.CANCELLED:
        return Outcome.CANCELLED
    if result.outcome is RelayOutcome.ERRORED:
        return Outcome.ERRORED
    if result.status is not None and result.status >= 500:
        return Outcome.ERRORED
    return Outcome.SERVED
