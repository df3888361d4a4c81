# -*- test-case-name: tests.test_client_router -*-
"""
Asking the Vast autoscaler for a worker: ``POST /route/``, keys, instances.

:meth:`Router.route` sends ``{"endpoint", "cost"}`` (plus ``request_idx`` on a
retry, so the autoscaler counts one request, not two) with the endpoint key as
``Authorization: Bearer``, and answers with a :class:`Route`: the worker's URL
and the signed routing fields. The autoscaler's other answers:

* no ``url`` ("no worker ready": scaling from zero, all workers loading) is
  polled again with the ``request_idx`` it returned, with jittered
  exponential backoff, until the routing deadline; then
  :class:`~vespa.client.errors.NoWorkerReady` (503) with the autoscaler's
  status text. The original answered 500 ``Proxy error: 'url'``.
* 401/403: :class:`~vespa.client.errors.AutoscalerUnauthorized`, with a hint
  about endpoint keys and account keys; 404: the endpoint is unknown.
* a 5xx, a connection failure or a timeout is tried again, up to
  :data:`ROUTE_ATTEMPTS` times, then :class:`~vespa.client.errors.AutoscalerError`;
  so is a worker url that must not be used
  (:func:`~vespa.client.worker_url.check_worker_url`) and an answer over
  :data:`ROUTE_ANSWER_LIMIT` bytes (not read past it). Errors quote the
  autoscaler's text with the key masked.

The endpoint key is given, or looked up with the account key
(:class:`KeySource`) at ``https://console.vast.ai/api/v0/endptjobs/``, as the
original client did (9.4).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, TimeoutError, ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater

from vespa.backoff import Backoff, equal_jitter
from vespa.client.control import (
    INSTANCES,
    AnswerTooLarge,
    cancelled_by_caller,
    excerpt,
    json_answer,
    with_timeout,
)
from vespa.client.errors import (
    AutoscalerError,
    AutoscalerUnauthorized,
    EndpointNotFound,
    NoWorkerReady,
)
from vespa.client.keys import KeySource
from vespa.client.worker_url import UnusableURL, check_worker_url
from vespa.log import get_logger
from vespa.protocol.envelope import AUTH_FIELDS

log = get_logger(__name__)

# INSTANCES and KeySource are also reached through this module.
__all__ = [
    "INSTANCES",
    "ROUTE_ANSWER_LIMIT",
    "ROUTE_ATTEMPTS",
    "KeySource",
    "Route",
    "Router",
    "RouterStats",
]


#: Attempts of one ``/route/`` call that fails (5xx, no connection, timeout).
ROUTE_ATTEMPTS = 3
#: The largest ``/route/`` answer read (a real one is a few hundred bytes).
ROUTE_ANSWER_LIMIT = 1 << 20
_KEY_HINT = (
    "use the endpoint's own API key (console.vast.ai, Serverless, the endpoint's key), "
    "not the account key; or pass the account key with --account-key (or "
    "VAST_ACCOUNT_KEY, or ~/.vast_api_key) to have the endpoint key looked up"
)


@dataclass(frozen=True)
class Route:
    """
    A worker assignment from ``/route/``.

    :ivar url: the worker's base URL.
    :ivar auth: the routing fields to send with the request (the six of the
        protocol, as the autoscaler signed them).
    :ivar request_idx: the autoscaler's id of the request; pass it again on a retry.
    :ivar waited: seconds spent routing (polls included).
    :ivar polls: "no worker ready" answers seen before this one.
    """

    url: str
    auth: dict[str, Any]
    request_idx: int | None
    waited: float = 0.0
    polls: int = 0


@dataclass
class RouterStats:
    """Counters of the router, for ``/health``."""

    route_calls: int = 0
    routed: int = 0
    waiting_answers: int = 0
    no_worker_ready: int = 0
    errors: int = 0
    last_status: str = field(default="")


def _unusable(url: Any) -> str | None:
    """Why the ``url`` of a route answer cannot be used, or ``None`` (none, or a good one)."""
    if url is None or url == "":
        return None
    if not isinstance(url, str):
        return "the worker url is not a string"
    try:
        check_worker_url(url)
    except UnusableURL as e:
        return str(e)
    return None


class Router:
    """
    Routes requests of one endpoint through the autoscaler.

    :param http: a treq ``HTTPClient`` for the autoscaler.
    :param clock: for deadlines, timeouts and polls.
    :param autoscaler_url: the autoscaler's base URL, ``https://run.vast.ai``.
    :param endpoint: the endpoint name.
    :param keys: where the endpoint key comes from.
    :param route_timeout: seconds to wait for a worker to be ready, or ``None``
        for no limit (other than the request's own deadline).
    :param call_timeout: seconds per ``/route/`` call.
    :param poll_initial: seconds before the first poll after "no worker ready".
    :param poll_cap: the longest delay between polls.
    :param rng: the jitter's randomness.
    """

    def __init__(
        self,
        http: Any,
        clock: IReactorTime,
        *,
        autoscaler_url: str,
        endpoint: str,
        keys: KeySource,
        route_timeout: float | None = 120.0,
        call_timeout: float = 10.0,
        poll_initial: float = 0.25,
        poll_cap: float = 5.0,
        rng: random.Random | None = None,
    ) -> None:
        self.http = http
        self.clock = clock
        self.url = autoscaler_url.rstrip("/") + "/route/"
        self.autoscaler_url = autoscaler_url.rstrip("/")
        self.endpoint = endpoint
        self.keys = keys
        self.route_timeout = route_timeout
        self.call_timeout = call_timeout
        #: The delay before poll (or retry) number ``n + 1``.
        self.poll_delay: Backoff = equal_jitter(poll_initial, poll_cap, rng or random.Random())
        self.stats = RouterStats()

    def route(
        self,
        cost: int | float,
        request_idx: int | None = None,
        deadline: float | None = None,
    ) -> Deferred[Route]:
        """
        Get a worker for a request of workload ``cost``.

        :param cost: the workload.
        :param request_idx: the request's id from an earlier route, to retry it.
        :param deadline: a ``clock.seconds()`` time after which to give up
            (the earlier of it and ``route_timeout`` applies).
        :return: fires with the :class:`Route`, or fails with a
            :class:`VespaError` whose origin is ``autoscaler``; cancelling it
            stops waiting at once.
        """
        return ensureDeferred(self._route(cost, request_idx, deadline))

    def _deadline(self, start: float, deadline: float | None) -> float | None:
        ends = [t for t in (deadline,) if t is not None]
        if self.route_timeout is not None:
            ends.append(start + self.route_timeout)
        return min(ends) if ends else None

    async def _route(
        self, cost: int | float, request_idx: int | None, deadline: float | None
    ) -> Route:
        start = self.clock.seconds()
        end = self._deadline(start, deadline)
        key = await self.keys.get()
        headers = {
            "Authorization": [f"Bearer {key}"],
            "Content-Type": ["application/json"],
            "Accept": ["application/json"],
        }
        polls = 0
        failures = 0
        status = ""
        while True:
            body: dict[str, Any] = {"endpoint": self.endpoint, "cost": cost}
            if request_idx is not None:
                body["request_idx"] = request_idx
            self.stats.route_calls += 1
            remaining = None if end is None else end - self.clock.seconds()
            timeout = self.call_timeout if remaining is None else min(self.call_timeout, remaining)
            try:
                call = ensureDeferred(
                    json_answer(
                        self.http, "POST", self.url, headers, body, limit=ROUTE_ANSWER_LIMIT
                    )
                )
                code, parsed, raw = await with_timeout(call, max(timeout, 0.001), self.clock)
            except TimeoutError:
                code, parsed, raw = 0, None, b""
                problem = f"did not answer within {timeout:g} s"
            except AnswerTooLarge as e:
                code, parsed, raw = 0, None, b""
                problem = str(e)
            except CancelledError:
                raise
            except Exception as e:  # refused, reset, DNS: the autoscaler is unreachable
                if cancelled_by_caller(e):
                    raise CancelledError() from None
                code, parsed, raw = 0, None, b""
                problem = f"unreachable ({e.__class__.__name__}: {e})"
            else:
                problem = f"answered {code}: {excerpt(parsed, raw, key)}"
            if code == 200 and isinstance(parsed, dict):
                url = parsed.get("url")
                idx = parsed.get("request_idx")
                if isinstance(idx, int) and not isinstance(idx, bool):
                    request_idx = idx
                unusable = _unusable(url)
                if unusable is None and url:
                    self.stats.routed += 1
                    return self._answer(parsed, str(url), cost, request_idx, start, polls)
                if unusable is not None:
                    # A failed attempt: asked again (same request_idx), up to ROUTE_ATTEMPTS.
                    problem = f"answered an unusable route: {unusable}"
                else:
                    # No worker ready: wait and ask again with the same request_idx.
                    polls += 1
                    self.stats.waiting_answers += 1
                    status = str(parsed.get("status") or "no worker is ready")
                    self.stats.last_status = status
                    if polls == 1:
                        log.info(
                            "no worker of {endpoint} is ready yet ({status}); waiting",
                            endpoint=self.endpoint,
                            status=status,
                        )
                    delay = self.poll_delay(polls - 1)
                    if end is not None and self.clock.seconds() + delay >= end:
                        self.stats.no_worker_ready += 1
                        waited = self.clock.seconds() - start
                        raise NoWorkerReady(
                            f"no worker of endpoint {self.endpoint!r} became ready within "
                            f"{waited:.1f} s ({status})",
                            headers={"Retry-After": "5"},
                            details={"status": status, "waited_s": round(waited, 3)},
                        )
                    await deferLater(self.clock, delay, lambda: None)
                    continue
            not_a_route = code == 200 and not isinstance(parsed, dict)
            self._refuse(code, excerpt(parsed, raw, key), not_a_route=not_a_route)
            failures += 1
            self.stats.errors += 1
            now = self.clock.seconds()
            if failures >= ROUTE_ATTEMPTS or (end is not None and now >= end):
                raise AutoscalerError(
                    f"the autoscaler at {self.autoscaler_url} {problem}",
                    details={"attempts": failures},
                )
            log.warn("route: the autoscaler {problem}; trying again", problem=problem)
            delay = self.poll_delay(failures - 1)
            if end is not None:
                delay = min(delay, max(0.0, end - now))
            await deferLater(self.clock, delay, lambda: None)

    def _refuse(self, code: int, said: str, *, not_a_route: bool) -> None:
        """
        Raise for the answers that no retry can fix.

        :param said: what the answer says (:func:`~vespa.client.control.excerpt`).
        :param not_a_route: a 200 that is not a JSON object.
        """
        if code in (401, 403):
            self.stats.errors += 1
            raise AutoscalerUnauthorized(
                f"the autoscaler refused the key ({code}: {said}); {_KEY_HINT}",
                details={"hint": _KEY_HINT},
            )
        if code == 404:
            self.stats.errors += 1
            raise EndpointNotFound(
                f"the autoscaler does not know endpoint {self.endpoint!r} ({said})"
            )
        if 400 <= code < 500 or not_a_route:
            self.stats.errors += 1
            raise AutoscalerError(f"the autoscaler answered {code}: {said}")

    def _answer(
        self,
        parsed: dict[str, Any],
        url: str,
        cost: int | float,
        request_idx: int | None,
        start: float,
        polls: int,
    ) -> Route:
        auth = {name: parsed[name] for name in AUTH_FIELDS if name in parsed}
        # As the original client: the autoscaler's values win, ours fill gaps.
        auth.setdefault("cost", cost)
        auth.setdefault("endpoint", self.endpoint)
        auth.setdefault("reqnum", 0)
        auth.setdefault("request_idx", request_idx if request_idx is not None else 0)
        auth.setdefault("signature", "")
        auth["url"] = url
        return Route(url, auth, request_idx, self.clock.seconds() - start, polls)
