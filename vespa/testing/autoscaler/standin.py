# -*- test-case-name: tests.test_autoscaler_standin -*-
"""
The autoscaler stand-in's state: keys, workers, routing, received reports and
injected failures. :mod:`vespa.testing.autoscaler.site` serves it over HTTP.
"""

from __future__ import annotations

import hmac
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from Crypto.PublicKey import RSA
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IReactorTime, ITCPTransport
from twisted.web.server import Request

from vespa._typing import Resource
from vespa.log import get_logger
from vespa.testing.autoscaler.wire import (
    FAILURE_MODES,
    PATHS,
    REPORT_FORMATS,
    SIGNING_MODES,
    is_number,
    sign_auth,
)

log = get_logger("vespa.testing.autoscaler")  # filtered by --log-level like the rest of Vespa

_T = TypeVar("_T")


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
            abort(request)
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
        elif is_number(max_perf) and max_perf > 0:
            self._workers[url] = _Worker(True)
        elif url not in self._workers:
            self._workers[url] = _Worker(False)
        after = self.workers[url]
        if after != before:
            log.info("worker {url} is {state}", url=url, state=after)

    def _accept_delete(self, body: dict[str, Any]) -> None:
        self.delete_reports.append(body)
        self.delete_times.append(self.clock.seconds())

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
        if not is_number(cost):
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
        from vespa.testing.autoscaler.site import AutoscalerResource

        return AutoscalerResource(self)


def abort(request: Request) -> None:
    """Drop the connection of ``request`` at once, with no response."""
    transport = getattr(request.channel, "transport", None)
    if ITCPTransport.providedBy(transport):
        transport.abortConnection()
    elif transport is not None:
        transport.loseConnection()
