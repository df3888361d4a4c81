# -*- test-case-name: tests.test_autoscaler_standin -*-
"""
A stand-in for the Vast.ai autoscaler (``run.vast.ai``): a real HTTP server.

It is the other side of the wire from the worker and the client, written
independently of :mod:`vespa.protocol` so that it can serve as a test oracle.
It signs with pycryptodome directly, exactly as the real autoscaler does
(``reference/vast-protocol.md`` sections 2, 5 and 9.1):

==========================  =================================================
``GET /pubkey/``            the PEM public key, ``text/plain`` (``/pubkey``
                            without the slash is a 404, as on the real one)
``POST /route/``            ``Authorization: Bearer <api key>`` and JSON
                            ``{"endpoint", "cost", "request_idx"?}``: a
                            signed worker assignment, or the "no worker
                            ready" answer (no ``url``, a ``status`` text);
                            a missing or ``0`` ``request_idx`` is a new
                            request and gets a fresh index
``POST /worker_status/``    a worker's status report: checked, recorded,
                            ``{"ok": true}``
``POST /delete_requests/``  finished requests: checked, recorded,
                            ``{"ok": true}``
==========================  =================================================

Which workers can be routed to is decided in two ways, and both apply:

* the test (or the person running it) says so: :meth:`Autoscaler.register_worker`,
  :meth:`Autoscaler.set_worker_ready`, :meth:`Autoscaler.remove_worker`;
* the status reports say so, as they do at the real autoscaler: a report with a
  ``url``, ``max_perf > 0`` and an empty ``error_msg`` registers that url as a
  ready worker (and clears an earlier error); a report with a non-empty
  ``error_msg`` makes it an error worker, not routable; a report with
  ``max_perf == 0`` and no error registers an unknown url as a loading worker
  and leaves a known one as it is.  A report without ``url`` applies to the url
  its ``id`` reported last.

Reports are checked as today's autoscaler reads them (``vast-2026.md`` 2, 3):
by default a status has the 18 fields of vastai 1.9.1 and a deletion is one
body of per-request records; with ``report_format="legacy"`` the 17 fields and
the two-POST ``request_idxs`` body of 2024-2025 are expected instead. A report
of another form, or with a value of the wrong JSON type, NaN or infinity, is
answered 422 and kept in :attr:`Autoscaler.refused_reports`, not recorded: a
worker that sends it would be misread by the real one.

Failures are injected with :meth:`Autoscaler.fail`: answer 500, hang (never
answer; :meth:`Autoscaler.close` drops those connections), or drop the
connection with no response.

Run it on its own::

    python -m vespa.testing.autoscaler --port 8080 --worker http://127.0.0.1:3000

Deliberate simplifications: ``mtoken`` in reports is recorded, never checked;
the api key is accepted only as a Bearer header (not in the body or query);
standby workers are always 0.
"""

from __future__ import annotations

import argparse
import base64
import hmac
import json
import math
import os
import sys
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeGuard, TypeVar

from Crypto.Hash import SHA256
from Crypto.PublicKey import RSA
from Crypto.Signature import pkcs1_15
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IReactorTime, ITCPTransport
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from vespa.log import get_logger

__all__ = [
    "DELETE_FIELDS",
    "FAILURE_MODES",
    "LEGACY_DELETE_FIELDS",
    "LEGACY_STATUS_FIELDS",
    "PATHS",
    "RECORD_FIELDS",
    "REPORT_FORMATS",
    "SIGNING_MODES",
    "STATUS_FIELDS",
    "Autoscaler",
    "InjectedFailure",
    "StandinConfig",
    "autoscaler_site",
    "build_autoscaler",
    "main",
    "parse_args",
    "sign_auth",
]

log = get_logger(__name__)  # filtered by --log-level like the rest of Vespa

#: The signed-message modes: ``url`` signs the url only, once per worker, as
#: Vast's autoscaler does today; ``full`` signs cost, endpoint, reqnum,
#: request_idx and url for every request (the 2024-2025 form).
SIGNING_MODES = ("url", "full")

#: What :meth:`Autoscaler.fail` can do to a request.
FAILURE_MODES = ("500", "hang", "refuse")

#: The routes, by the name :meth:`Autoscaler.fail` uses, and their HTTP paths.
PATHS: Mapping[str, bytes] = {
    "pubkey": b"/pubkey/",
    "route": b"/route/",
    "worker_status": b"/worker_status/",
    "delete_requests": b"/delete_requests/",
}

#: The 17 fields of a 2024-2025 ``/worker_status/`` report (protocol section
#: 5.1), with the wire's misspelling.
LEGACY_STATUS_FIELDS = frozenset(
    {
        "id",
        "mtoken",
        "version",
        "loadtime",
        "cur_load",
        "rej_load",
        "new_load",
        "error_msg",
        "max_perf",
        "cur_perf",
        "cur_capacity",
        "max_capacity",
        "num_requests_working",
        "num_requests_recieved",
        "additional_disk_usage",
        "working_request_idxs",
        "url",
    }
)

#: The 18 fields of a ``/worker_status/`` report from vastai 1.9.1.
STATUS_FIELDS = LEGACY_STATUS_FIELDS | {"disk_usage"}

#: The fields of a ``/delete_requests/`` body of records (vastai 1.9.1).
DELETE_FIELDS = frozenset({"worker_id", "mtoken", "requests"})

#: The fields of each record of a ``/delete_requests/`` body.
RECORD_FIELDS = frozenset(
    {
        "request_idx",
        "success",
        "status",
        "entered_queue_at",
        "work_started_at",
        "work_completed_at",
    }
)

#: The fields of a 2024-2025 ``/delete_requests/`` body (protocol section 5.3).
LEGACY_DELETE_FIELDS = frozenset({"worker_id", "mtoken", "request_idxs", "success"})

#: The report forms the stand-in can expect: today's, or 2024-2025's.
REPORT_FORMATS = ("records", "legacy")

#: The JSON types of the status fields that are not numbers.
_STATUS_TEXT = ("mtoken", "version", "error_msg", "url")
_STATUS_INTS = ("id", "num_requests_working", "num_requests_recieved")
_RECORD_STATUSES = ("Success", "Error", "Cancelled", "Rejected")

_FULL_FIELDS = ("cost", "endpoint", "reqnum", "request_idx", "url")
_T = TypeVar("_T")


def sign_auth(key: RSA.RsaKey, auth: Mapping[str, Any], mode: str = "full") -> str:
    """
    Sign routing data as the autoscaler does.

    The message is ``json.dumps(fields, indent=4, sort_keys=True)`` of the
    values as they are (an int cost stays ``100``, a float ``100.0``), signed
    with RSA PKCS#1 v1.5 over SHA-256.

    :param key: the private key.
    :param auth: holds at least the signed fields; other keys are ignored.
    :param mode: ``"full"`` (cost, endpoint, reqnum, request_idx, url) or
        ``"url"`` (url only).
    :return: the signature, standard base64.
    :raises KeyError: a signed field is missing from ``auth``.
    :raises ValueError: an unknown ``mode``.
    """
    if mode == "full":
        fields = {name: auth[name] for name in _FULL_FIELDS}
    elif mode == "url":
        fields = {"url": auth["url"]}
    else:
        raise ValueError(f"unknown signing mode {mode!r}; expected one of {SIGNING_MODES}")
    message = json.dumps(fields, indent=4, sort_keys=True).encode("utf-8")
    signature = pkcs1_15.new(key).sign(SHA256.new(message))
    return base64.b64encode(signature).decode("ascii")


@dataclass(frozen=True)
class InjectedFailure:
    """
    A request that :meth:`Autoscaler.fail` answered instead of the normal route.

    :ivar path: the route's name (``"route"``, ``"worker_status"``...).
    :ivar mode: ``"500"``, ``"hang"`` or ``"refuse"``.
    """

    path: str
    mode: str


class _Rule:
    """A failure mode and how many more requests it applies to (``None``: all)."""

    def __init__(self, mode: str, remaining: int | None) -> None:
        self.mode = mode
        self.remaining = remaining


class _Worker:
    """What the router knows of one worker url."""

    def __init__(self, ready: bool, errored: bool = False) -> None:
        self.ready = ready
        self.errored = errored


class _Waiters:
    """Deferreds waiting for the first past or future item matching a predicate."""

    def __init__(self) -> None:
        self._waiting: list[tuple[Callable[[Any], bool], Deferred[Any]]] = []

    def wait(self, seen: Iterable[_T], predicate: Callable[[_T], bool]) -> Deferred[_T]:
        for item in seen:
            if predicate(item):
                d: Deferred[_T] = Deferred()
                d.callback(item)
                return d

        def cancel(deferred: Deferred[_T]) -> None:
            self._waiting = [w for w in self._waiting if w[1] is not deferred]

        waiting: Deferred[_T] = Deferred(cancel)
        self._waiting.append((predicate, waiting))
        return waiting

    def notify(self, item: object) -> None:
        matched = [w for w in self._waiting if w[0](item)]
        self._waiting = [w for w in self._waiting if w not in matched]
        for _, d in matched:
            d.callback(item)


class Autoscaler:
    """
    The stand-in's state: keys, workers, counters, received reports, failures.

    :param clock: stamps the arrival of reports (:attr:`status_times`,
        :attr:`delete_times`); the global reactor if ``None``.
    :param key: the RSA private key to sign with; a fresh 2048-bit one if
        ``None`` (slow-ish: tests should make one and share it).
    :param signing_mode: ``"url"`` (the default: each worker's url signed once
        and the signature reused, as Vast does today) or ``"full"``, see
        :func:`sign_auth`.
    :param endpoint: the one endpoint name ``/route/`` knows.
    :param api_key: the key ``/route/`` requires as ``Authorization: Bearer``.
    :param report_format: ``"records"`` (today's reports) or ``"legacy"``
        (2024-2025's); see the module docstring.
    :ivar public_key_pem: what ``/pubkey/`` serves.
    :ivar status_reports: every accepted ``/worker_status/`` body, in order.
    :ivar status_times: ``clock.seconds()`` at the arrival of each of them.
    :ivar delete_reports: every accepted ``/delete_requests/`` body, in order.
    :ivar delete_times: ``clock.seconds()`` at the arrival of each of them.
    :ivar route_requests: every ``/route/`` JSON object received and not failed
        by :meth:`fail`, whatever the answer (401, 404, routed or not).
    :ivar injected_failures: every request answered by :meth:`fail`, in order.
    :ivar refused_reports: ``(path name, body, reason)`` of every report
        refused with 422 for its form.
    """

    def __init__(
        self,
        clock: IReactorTime | None = None,
        *,
        key: RSA.RsaKey | None = None,
        signing_mode: str = "url",
        endpoint: str = "demo-endpoint",
        api_key: str = "demo-key",
        report_format: str = "records",
    ) -> None:
        if report_format not in REPORT_FORMATS:
            raise ValueError(
                f"unknown report format {report_format!r}; expected one of {REPORT_FORMATS}"
            )
        self.report_format = report_format
        self.refused_reports: list[tuple[str, dict[str, Any], str]] = []
        if signing_mode not in SIGNING_MODES:
            raise ValueError(
                f"unknown signing mode {signing_mode!r}; expected one of {SIGNING_MODES}"
            )
        if clock is None:
            from twisted.internet import reactor

            clock = reactor
        self.clock: IReactorTime = clock
        self.key: RSA.RsaKey = key if key is not None else RSA.generate(2048)
        self.public_key_pem: bytes = self.key.public_key().export_key("PEM")
        self.signing_mode = signing_mode
        self.endpoint = endpoint
        self.api_key = api_key
        self.status_reports: list[dict[str, Any]] = []
        self.status_times: list[float] = []
        self.delete_reports: list[dict[str, Any]] = []
        self.delete_times: list[float] = []
        self.route_requests: list[dict[str, Any]] = []
        self.injected_failures: list[InjectedFailure] = []
        self._workers: dict[str, _Worker] = {}
        self._url_signatures: dict[str, str] = {}
        self._last_routed: str | None = None
        self._reqnum = 0
        self._request_idx = 0
        self._latest: dict[int, dict[str, Any]] = {}
        self._id_urls: dict[int, str] = {}
        self._rules: dict[str, _Rule] = {}
        self._hanging: set[Request] = set()
        self._status_waiters = _Waiters()
        self._delete_waiters = _Waiters()
        self._failure_waiters = _Waiters()

    # -- workers -----------------------------------------------------------

    def register_worker(self, url: str, *, ready: bool = True) -> None:
        """
        Make ``url`` a worker the router knows (again), clearing any error.

        :param url: as ``/route/`` hands it out, e.g. ``"http://127.0.0.1:3000"``.
        :param ready: routable now; ``False`` counts it as loading.
        """
        self._workers[url] = _Worker(ready)

    def set_worker_ready(self, url: str, ready: bool) -> None:
        """
        Make a known worker routable or not (loading).

        :raises KeyError: ``url`` is not a known worker.
        """
        worker = self._worker(url)
        worker.ready = ready
        if ready:
            worker.errored = False

    def remove_worker(self, url: str) -> None:
        """
        Forget a worker: it is neither routed to nor counted.

        :raises KeyError: ``url`` is not a known worker.
        """
        self._worker(url)
        del self._workers[url]

    def _worker(self, url: str) -> _Worker:
        try:
            return self._workers[url]
        except KeyError:
            raise KeyError(f"no such worker: {url!r}") from None

    @property
    def workers(self) -> dict[str, str]:
        """Each known worker url and its state: ``"ready"``, ``"loading"`` or ``"error"``."""
        return {
            url: "ready" if w.ready else "error" if w.errored else "loading"
            for url, w in self._workers.items()
        }

    def latest_status(self, worker_id: int) -> dict[str, Any] | None:
        """
        The last accepted status report whose ``id`` is ``worker_id``, if any.
        """
        return self._latest.get(worker_id)

    # -- failure injection -------------------------------------------------

    def fail(
        self,
        mode: str | None,
        *,
        paths: Iterable[str] = ("pubkey", "route", "worker_status", "delete_requests"),
        times: int | None = None,
    ) -> None:
        """
        Make requests to some routes fail, before any normal handling.

        A later call replaces the rule of the paths it names and leaves the
        others alone.

        :param mode: ``"500"`` (an HTTP 500 with a plain text body), ``"hang"``
            (never answer), ``"refuse"`` (close the connection with no
            response), or ``None`` (answer normally again).
        :param paths: names from :data:`PATHS`.
        :param times: fail only the next ``times`` requests to any of
            ``paths`` (one count shared by them), then answer normally;
            ``None``: until told otherwise.
        :raises ValueError: an unknown mode or path, or ``times < 1``.
        """
        if mode is not None and mode not in FAILURE_MODES:
            raise ValueError(f"unknown failure mode {mode!r}; expected one of {FAILURE_MODES}")
        names = [paths] if isinstance(paths, str) else list(paths)
        unknown = [name for name in names if name not in PATHS]
        if unknown:
            raise ValueError(f"unknown paths {unknown}; expected names from {sorted(PATHS)}")
        if times is not None and times < 1:
            raise ValueError(f"times must be at least 1 or None, not {times}")
        rule = None if mode is None else _Rule(mode, times)
        for name in names:
            if rule is None:
                self._rules.pop(name, None)
            else:
                self._rules[name] = rule

    def wait_for_failure(self, path: str | None = None, *, count: int = 1) -> Deferred[int]:
        """
        Fires once ``count`` requests (to ``path``, or to any path) have been
        answered by :meth:`fail`, counting those already answered.

        :return: fires with the number of such failures so far.
        """
        seen = 0

        def enough(failure: InjectedFailure) -> bool:
            nonlocal seen
            if path is None or failure.path == path:
                seen += 1
            return seen >= count

        d: Deferred[InjectedFailure] = self._failure_waiters.wait(self.injected_failures, enough)
        return d.addCallback(lambda _: seen)

    def _injected(self, name: str) -> str | None:
        rule = self._rules.get(name)
        if rule is None:
            return None
        if rule.remaining is not None:
            rule.remaining -= 1
            if rule.remaining == 0:
                self._rules = {n: r for n, r in self._rules.items() if r is not rule}
        return rule.mode

    @property
    def hanging(self) -> int:
        """How many requests are being held open by the ``"hang"`` mode."""
        return len(self._hanging)

    def close(self) -> Deferred[None]:
        """
        Drop the connections of every hanging request.

        :return: fires when they are all gone.
        """
        gone = [request.notifyFinish() for request in self._hanging]
        for request in list(self._hanging):
            _abort(request)
        return DeferredList(gone, consumeErrors=True).addCallback(lambda _: None)

    # -- reports -----------------------------------------------------------

    def wait_for_status(
        self, predicate: Callable[[dict[str, Any]], bool]
    ) -> Deferred[dict[str, Any]]:
        """
        Fires with the first accepted status report matching ``predicate``,
        already received or to come.  A future one fires after its 200 answer
        was handed to the connection.
        """
        return self._status_waiters.wait(self.status_reports, predicate)

    def wait_for_delete(
        self, predicate: Callable[[dict[str, Any]], bool]
    ) -> Deferred[dict[str, Any]]:
        """
        Fires with the first accepted ``/delete_requests/`` body matching
        ``predicate``, already received or to come.
        """
        return self._delete_waiters.wait(self.delete_reports, predicate)

    def _accept_status(self, report: dict[str, Any]) -> None:
        self.status_reports.append(report)
        self.status_times.append(self.clock.seconds())
        worker_id = report.get("id")
        url = report.get("url")
        if isinstance(worker_id, int) and not isinstance(worker_id, bool):
            self._latest[worker_id] = report
            if isinstance(url, str) and url:
                self._id_urls[worker_id] = url
            else:
                url = self._id_urls.get(worker_id)
        if not isinstance(url, str) or not url:
            return
        before = self.workers.get(url)
        max_perf = report.get("max_perf")
        if report.get("error_msg"):
            self._workers.setdefault(url, _Worker(False))
            self._workers[url].ready = False
            self._workers[url].errored = True
        elif _is_number(max_perf) and max_perf > 0:
            self._workers[url] = _Worker(True)
        elif url not in self._workers:
            self._workers[url] = _Worker(False)
        after = self.workers[url]
        if after != before:
            log.info("worker {url} is {state}", url=url, state=after)

    def _accept_delete(self, body: dict[str, Any]) -> None:
        self.delete_reports.append(body)
        self.delete_times.append(self.clock.seconds())

    def _report_problem(self, name: str, body: dict[str, Any]) -> str | None:
        """Why ``body`` is not a report of the expected form, or ``None``."""
        legacy = self.report_format == "legacy"
        if name == "worker_status":
            # A report without url applies to the last one its id gave (see above).
            required = (LEGACY_STATUS_FIELDS if legacy else STATUS_FIELDS) - {"url"}
            return _fields_problem(body, required, STATUS_FIELDS) or _status_problem(body)
        if legacy:
            problem = _fields_problem(body, LEGACY_DELETE_FIELDS, LEGACY_DELETE_FIELDS)
            if problem is None and not (
                isinstance(body["request_idxs"], list)
                and all(_is_int(i) for i in body["request_idxs"])
                and isinstance(body["success"], bool)
            ):
                problem = "request_idxs must be a list of integers and success a boolean"
            return problem
        problem = _fields_problem(body, DELETE_FIELDS, DELETE_FIELDS)
        if problem is not None:
            return problem
        if not isinstance(body["requests"], list):
            return "requests must be a list of records"
        for record in body["requests"]:
            if not isinstance(record, dict):
                return "requests must be a list of records"
            problem = _fields_problem(record, RECORD_FIELDS, RECORD_FIELDS) or _record_problem(
                record
            )
            if problem is not None:
                return f"record {record.get('request_idx')!r}: {problem}"
        return None

    # -- routing -----------------------------------------------------------

    def _pick(self) -> str | None:
        order = list(self._workers)
        if not order:
            return None
        start = order.index(self._last_routed) + 1 if self._last_routed in self._workers else 0
        for i in range(len(order)):
            url = order[(start + i) % len(order)]
            if self._workers[url].ready:
                self._last_routed = url
                return url
        return None

    def _route(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        endpoint = body.get("endpoint")
        if not isinstance(endpoint, str):
            return 400, {"error": "endpoint must be a string"}
        if endpoint != self.endpoint:
            return 404, {"error": f"endpoint not found: {endpoint}"}
        cost = body.get("cost")
        if not _is_number(cost):
            return 400, {"error": "cost must be a number"}
        request_idx = body.get("request_idx")
        # The official client asks with request_idx 0 for a new request.
        if request_idx is None or (request_idx == 0 and not isinstance(request_idx, bool)):
            self._request_idx += 1
            request_idx = self._request_idx
        elif not isinstance(request_idx, int) or isinstance(request_idx, bool):
            return 400, {"error": "request_idx must be an integer"}
        url = self._pick()
        if url is None:
            states = list(self.workers.values())
            status = (
                f"total workers: {len(states)}, loading workers: {states.count('loading')}, "
                f"standby workers: 0, error workers: {states.count('error')}"
            )
            return 200, {"endpoint": endpoint, "status": status, "request_idx": request_idx}
        self._reqnum += 1
        answer: dict[str, Any] = {
            "url": url,
            "reqnum": self._reqnum,
            "endpoint": endpoint,
            "cost": cost,
            "request_idx": request_idx,
        }
        answer["signature"] = self._signature(answer)
        answer["__request_id"] = str(uuid.uuid4())
        return 200, answer

    def _signature(self, answer: Mapping[str, Any]) -> str:
        """The five fields signed per request, or the worker's url signed once and reused."""
        if self.signing_mode == "full":
            return sign_auth(self.key, answer, "full")
        url = answer["url"]
        if url not in self._url_signatures:
            self._url_signatures[url] = sign_auth(self.key, answer, "url")
        return self._url_signatures[url]

    def _authorized(self, request: Request) -> bool:
        headers = request.requestHeaders.getRawHeaders(b"authorization") or [b""]
        scheme, _, token = headers[0].partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(
            token.strip(), self.api_key.encode("utf-8")
        )

    def resource(self) -> Resource:
        """The twisted.web resource serving this autoscaler."""
        return _AutoscalerResource(self)


class _AutoscalerResource(Resource):
    """Dispatches on the exact path, after failure injection."""

    isLeaf = True

    _METHODS: Mapping[bytes, bytes] = {
        b"/pubkey/": b"GET",
        b"/route/": b"POST",
        b"/worker_status/": b"POST",
        b"/delete_requests/": b"POST",
    }

    def __init__(self, autoscaler: Autoscaler) -> None:
        super().__init__()
        self._autoscaler = autoscaler

    def render(self, request: Request) -> bytes | int:
        scaler = self._autoscaler
        path = request.path
        name = next((n for n, p in PATHS.items() if p == path), None)
        if name is None:
            return _json(request, 404, {"error": "not found"})
        mode = scaler._injected(name)
        if mode is not None:
            return self._inject(request, name, mode)
        allowed = self._METHODS[path]
        # twisted.web answers HEAD by rendering GET and dropping the body.
        if request.method != allowed and not (allowed == b"GET" and request.method == b"HEAD"):
            request.setHeader(b"allow", allowed)
            return _json(request, 405, {"error": "method not allowed"})
        if name == "pubkey":
            request.setHeader(b"content-type", b"text/plain")
            return scaler.public_key_pem
        assert request.content is not None
        raw = request.content.read()
        body = _parse_object(raw)
        if name == "route":
            if body is not None:
                scaler.route_requests.append(body)
            if not scaler._authorized(request):
                return _json(request, 401, {"error": "invalid api key"})
            if body is None:
                return _json(request, 400, {"error": "invalid JSON"})
            code, answer = scaler._route(body)
            log.debug("route {code} {answer}", code=code, answer=answer)
            return _json(request, code, answer)
        if body is None:
            return _json(request, 400, {"error": "invalid JSON"})
        problem = scaler._report_problem(name, body)
        if problem is not None:
            log.info("refused {name} ({problem}): {body}", name=name, problem=problem, body=body)
            scaler.refused_reports.append((name, body, problem))
            return _json(request, 422, {"error": problem})
        _json(request, 200, {"ok": True}, finish=True)
        if name == "worker_status":
            log.debug("worker_status {body}", body=body)
            scaler._accept_status(body)
            scaler._status_waiters.notify(body)
        else:
            log.debug("delete_requests {body}", body=body)
            scaler._accept_delete(body)
            scaler._delete_waiters.notify(body)
        return NOT_DONE_YET

    def _inject(self, request: Request, name: str, mode: str) -> bytes | int:
        scaler = self._autoscaler
        failure = InjectedFailure(name, mode)
        scaler.injected_failures.append(failure)
        log.debug("injected {mode} on {path}", mode=mode, path=name)
        if mode == "500":
            request.setResponseCode(500)
            request.setHeader(b"content-type", b"text/plain")
            result: bytes | int = b"Internal Server Error\n"
        elif mode == "hang":
            scaler._hanging.add(request)
            request.notifyFinish().addBoth(lambda _: scaler._hanging.discard(request))
            result = NOT_DONE_YET
        else:
            _abort(request)
            result = NOT_DONE_YET
        scaler._failure_waiters.notify(failure)
        return result


def _json(request: Request, code: int, body: object, *, finish: bool = False) -> bytes:
    data = json.dumps(body).encode("utf-8")
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json")
    if finish:
        request.write(data)
        request.finish()
    return data


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _parse_object(raw: bytes) -> dict[str, Any] | None:
    """A JSON object, or ``None`` for anything else (NaN and Infinity included)."""
    try:
        value = json.loads(raw, parse_constant=_reject_constant)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _fields_problem(
    body: dict[str, Any], required: frozenset[str], allowed: frozenset[str]
) -> str | None:
    missing = sorted(required - set(body))
    unknown = sorted(set(body) - allowed)
    if missing or unknown:
        return f"missing fields {missing}, unknown fields {unknown}"
    return None


def _status_problem(body: dict[str, Any]) -> str | None:
    for field, value in body.items():
        if field in _STATUS_TEXT:
            ok = isinstance(value, str)
        elif field in _STATUS_INTS:
            ok = _is_int(value)
        elif field == "working_request_idxs":
            ok = isinstance(value, list) and all(_is_int(i) for i in value)
        else:
            ok = _is_number(value)
        if not ok:
            return f"{field} has the wrong type or is not finite: {value!r:.40}"
    return None


def _record_problem(record: dict[str, Any]) -> str | None:
    if not _is_int(record["request_idx"]):
        return "request_idx must be an integer"
    if not isinstance(record["success"], bool):
        return "success must be a boolean"
    if record["status"] not in _RECORD_STATUSES:
        return f"status must be one of {', '.join(_RECORD_STATUSES)}"
    for field in ("entered_queue_at", "work_started_at", "work_completed_at"):
        if not (_is_number(record[field]) and record[field] >= 0):
            return f"{field} must be a finite number of seconds"
    return None


def _abort(request: Request) -> None:
    transport = getattr(request.channel, "transport", None)
    if ITCPTransport.providedBy(transport):
        transport.abortConnection()
    elif transport is not None:
        transport.loseConnection()


def autoscaler_site(autoscaler: Autoscaler) -> Site:
    """
    A :class:`Site` serving ``autoscaler``, without an access log.
    """
    site = Site(autoscaler.resource())
    site.log = lambda request: None  # type: ignore[method-assign]
    return site


# -- command line ------------------------------------------------------------


@dataclass(frozen=True)
class StandinConfig:
    """
    What ``python -m vespa.testing.autoscaler`` was asked to do.

    :ivar port: the TCP port to listen on (0: any free one).
    :ivar interface: the address to listen on.
    :ivar workers: worker urls registered as ready at start.
    :ivar key_file: a PEM private key to sign with, created if missing;
        ``None``: a fresh key for this run only.
    :ivar signing_mode: ``"url"`` or ``"full"``.
    :ivar endpoint: the endpoint name ``/route/`` accepts.
    :ivar api_key: the key ``/route/`` requires.
    :ivar report_format: ``"records"`` or ``"legacy"``: the reports expected.
    :ivar verbose: log every request handled.
    """

    port: int = 8080
    interface: str = "127.0.0.1"
    workers: tuple[str, ...] = ()
    key_file: str | None = None
    signing_mode: str = "url"
    endpoint: str = "demo-endpoint"
    api_key: str = "demo-key"
    report_format: str = "records"
    verbose: bool = False


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m vespa.testing.autoscaler",
        description="A stand-in for the Vast.ai autoscaler (run.vast.ai): signs /route/ "
        "answers with a real RSA key, records /worker_status/ and /delete_requests/.",
    )
    defaults = StandinConfig()
    parser.add_argument("--port", type=int, default=defaults.port, help="default %(default)s")
    parser.add_argument("--interface", default=defaults.interface, help="default %(default)s")
    parser.add_argument(
        "--worker",
        action="append",
        default=[],
        metavar="URL",
        help="a ready worker to route to, e.g. http://127.0.0.1:3000 (repeatable; "
        "workers that report max_perf > 0 are added by themselves)",
    )
    parser.add_argument(
        "--key-file",
        metavar="K",
        help="PEM RSA private key to sign with; created if it does not exist "
        "(default: a new key each run)",
    )
    parser.add_argument("--signing-mode", choices=SIGNING_MODES, default=defaults.signing_mode)
    parser.add_argument("--endpoint", default=defaults.endpoint, help="default %(default)s")
    parser.add_argument("--api-key", default=defaults.api_key, help="default %(default)s")
    parser.add_argument(
        "--report-format",
        choices=REPORT_FORMATS,
        default=defaults.report_format,
        help="reports expected: records (vastai 1.9.1, 18 status fields) or legacy "
        "(2024-2025); default %(default)s",
    )
    parser.add_argument("--verbose", action="store_true", help="log every request")
    return parser


def parse_args(argv: list[str] | None = None) -> StandinConfig:
    """
    Parse the command line.

    :param argv: the arguments, without the program name; ``sys.argv[1:]`` if
        ``None``.
    :raises SystemExit: a usage error (status 2) or ``--help`` (status 0).
    """
    parser = _parser()
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        parser.error(f"--port must be between 0 and 65535, not {args.port}")
    for url in args.worker:
        if not url.startswith(("http://", "https://")):
            parser.error(f"--worker must be an http:// or https:// url, not {url!r}")
    return StandinConfig(
        port=args.port,
        interface=args.interface,
        workers=tuple(args.worker),
        key_file=args.key_file,
        signing_mode=args.signing_mode,
        endpoint=args.endpoint,
        api_key=args.api_key,
        report_format=args.report_format,
        verbose=args.verbose,
    )


def load_or_create_key(path: str) -> RSA.RsaKey:
    """
    The RSA private key in the PEM file ``path``; a new 2048-bit one, written
    there (mode 0600), if the file does not exist.

    :raises ValueError: the file does not hold an RSA private key.
    """
    if os.path.exists(path):
        with open(path, "rb") as f:
            key = RSA.import_key(f.read())
        if not key.has_private():
            raise ValueError(f"{path} holds a public key; a private key is needed to sign")
        return key
    key = RSA.generate(2048)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.export_key("PEM"))
    return key


def build_autoscaler(config: StandinConfig, clock: IReactorTime | None = None) -> Autoscaler:
    """
    The :class:`Autoscaler` that ``config`` describes, its workers registered.

    :raises ValueError: an unusable ``key_file``.
    """
    key = load_or_create_key(config.key_file) if config.key_file else None
    autoscaler = Autoscaler(
        clock,
        key=key,
        signing_mode=config.signing_mode,
        endpoint=config.endpoint,
        api_key=config.api_key,
        report_format=config.report_format,
    )
    for url in config.workers:
        autoscaler.register_worker(url)
    return autoscaler


def main(argv: list[str] | None = None) -> None:
    """
    Run the stand-in until interrupted: parse ``argv``, listen, print what a
    worker and a client need to know, run the reactor.

    :param argv: the arguments, without the program name; ``sys.argv[1:]`` if
        ``None``.
    """
    from twisted.internet import reactor as global_reactor
    from twisted.internet.error import CannotListenError
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
        textFileLogObserver,
    )

    reactor: Any = global_reactor
    config = parse_args(argv)
    try:
        autoscaler = build_autoscaler(config, reactor)
    except (OSError, ValueError) as e:
        print(f"error: --key-file {config.key_file}: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    level = LogLevel.debug if config.verbose else LogLevel.info
    globalLogBeginner.beginLoggingTo(
        [
            FilteringLogObserver(
                textFileLogObserver(sys.stdout),
                [LogLevelFilterPredicate(defaultLogLevel=level)],
            )
        ],
        redirectStandardIO=False,
    )
    try:
        port = reactor.listenTCP(
            config.port, autoscaler_site(autoscaler), interface=config.interface
        )
    except CannotListenError as e:
        print(f"error: cannot listen on {config.interface}:{config.port}: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    base = f"http://{config.interface}:{port.getHost().port}"
    lines = [
        f"autoscaler stand-in listening on {base}",
        f"  public key:   {base}/pubkey/"
        + (f"  (key file {config.key_file})" if config.key_file else ""),
        f"  endpoint:     {config.endpoint}",
        f"  api key:      {config.api_key}",
        f"  signing mode: {config.signing_mode}",
        f"  workers:      {', '.join(config.workers) or '(none yet; they register by reporting)'}",
        f"  worker env:   REPORT_ADDR={base}",
        f"  try:          curl -s {base}/route/ -H 'Authorization: Bearer {config.api_key}'"
        f' -d \'{{"endpoint": "{config.endpoint}", "cost": 1}}\'',
    ]
    print("\n".join(lines), flush=True)
    reactor.addSystemEventTrigger("before", "shutdown", autoscaler.close)
    reactor.run()


if __name__ == "__main__":
    main()
