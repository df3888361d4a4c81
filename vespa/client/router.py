# -*- test-case-name: tests.test_client_router -*-
"""
Asking the Vast autoscaler for a worker: ``POST /route/``, keys, instances.

:meth:`Router.route` sends ``{"endpoint", "cost"}`` (plus ``request_idx`` on a
retry, so the autoscaler counts one request, not two) with the endpoint key as
``Authorization: Bearer``, and answers with a :class:`Route`: the worker's URL
and the signed routing fields. The autoscaler's other answers
(``reference/vast-protocol.md`` 9.1):

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

import json
import random
from dataclasses import dataclass, field
from typing import Any, TypeVar

import treq
from twisted.internet.defer import CancelledError, Deferred, TimeoutError, ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.python.failure import Failure

from vespa.backoff import Backoff, equal_jitter
from vespa.client.errors import (
    AutoscalerError,
    AutoscalerUnauthorized,
    EndpointNotFound,
    NoWorkerReady,
)
from vespa.client.worker_url import UnusableURL, check_worker_url
from vespa.errors import VespaError
from vespa.http.stream import BoundedBuffer, Discard
from vespa.log import get_logger
from vespa.protocol.envelope import AUTH_FIELDS

log = get_logger(__name__)

T = TypeVar("T")

#: The autoscaler of each Vast instance, and its console (for key look-ups).
INSTANCES: dict[str, tuple[str, str]] = {
    "prod": ("https://run.vast.ai", "https://console.vast.ai"),
    "alpha": ("https://run-alpha.vast.ai", "https://alpha.vast.ai"),
    "candidate": ("https://run-candidate.vast.ai", "https://candidate.vast.ai"),
    "local": ("http://localhost:8080", "https://alpha.vast.ai"),
}

#: Attempts of one ``/route/`` call that fails (5xx, no connection, timeout).
ROUTE_ATTEMPTS = 3
#: Attempts of the console key look-up.
KEY_ATTEMPTS = 4
#: The largest ``/route/`` answer read (a real one is a few hundred bytes).
ROUTE_ANSWER_LIMIT = 1 << 20
#: The largest console answer read (it lists every endpoint of the account).
CONSOLE_ANSWER_LIMIT = 16 << 20

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


class AnswerTooLarge(Exception):
    """An answer's body is over the limit; it was not read any further."""


async def _json_answer(
    http: Any, method: str, url: str, headers: dict[str, list[str]], body: Any, *, limit: int
) -> tuple[int, Any, bytes]:
    """
    One HTTP exchange: status, the parsed JSON (or ``None``), the raw body.

    :param limit: the most bytes of body read; past it the connection is
        closed and :class:`AnswerTooLarge` raised, so a huge answer costs no memory.
    """
    data = None if body is None else json.dumps(body).encode("utf-8")
    response = await http.request(method, url, headers=headers, data=data, allow_redirects=False)
    too_large = AnswerTooLarge(f"answered more than {limit} bytes")
    if isinstance(response.length, int) and response.length > limit:
        response.original.deliverBody(Discard(abort=True))
        raise too_large
    kept = BoundedBuffer(limit, too_large)
    await treq.collect(response, kept)
    raw = kept.joined()
    try:
        parsed = json.loads(raw)
    except ValueError:
        parsed = None
    return int(response.code), parsed, raw


def _timeout(d: Deferred[T], seconds: float, clock: IReactorTime) -> Deferred[T]:
    """
    ``d``, cancelled after ``seconds``, then failing with :class:`TimeoutError`
    whatever failure the cancellation caused (Agent reports a cancelled
    request as ``ResponseNeverReceived``, which ``addTimeout`` lets through).
    """
    expired: list[bool] = []

    def expire() -> None:
        expired.append(True)
        d.cancel()

    call = clock.callLater(seconds, expire)

    def done(result: Any) -> Any:
        if call.active():
            call.cancel()
        if expired and isinstance(result, Failure):
            raise TimeoutError(seconds, "Deferred")
        return result

    return d.addBoth(done)


def _cancelled(error: Exception) -> bool:
    """
    Whether a failed call is our caller's cancellation: Agent reports a
    request cancelled mid-flight as ``RequestGenerationFailed`` or
    ``ResponseNeverReceived`` wrapping the ``CancelledError``, which must end
    the routing, not be tried again.
    """
    reasons = getattr(error, "reasons", None) or ()
    return any(isinstance(r, Failure) and r.check(CancelledError) for r in reasons)


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


def _excerpt(parsed: Any, raw: bytes, secret: str | None) -> str:
    """
    What an answer says, for an error message: its error text, else the
    start of its body; ``secret`` (the key it was asked with) masked, should
    the answer echo it.
    """
    said = raw.decode("utf-8", "replace").strip()
    if isinstance(parsed, dict):
        for key in ("error", "msg", "message", "detail"):
            if isinstance(parsed.get(key), str):
                said = str(parsed[key])
                break
    # Masked before it is cut, so no part of the secret is left at the cut.
    return (said.replace(secret, "***") if secret else said)[:300]


class KeySource:
    """
    The endpoint key: given, or looked up once with the account key.

    :param key: the endpoint key, if known.
    :param account_key: the account key to look the endpoint key up with.
    :param endpoint: the endpoint name.
    :param console_url: the console API base, ``https://console.vast.ai``.
    :param instance: the autoscaler instance named in the look-up.
    :param http: a treq ``HTTPClient``.
    :param clock: for timeouts and backoff.
    :param timeout: seconds per look-up attempt.
    """

    def __init__(
        self,
        key: str | None,
        *,
        account_key: str | None = None,
        endpoint: str = "",
        console_url: str = INSTANCES["prod"][1],
        instance: str = "prod",
        http: Any = None,
        clock: IReactorTime | None = None,
        timeout: float = 8.0,
    ) -> None:
        if key is None and (account_key is None or http is None or clock is None):
            raise ValueError("an endpoint key, or an account key with http and clock, is needed")
        self._key = key
        self._account_key = account_key
        self._endpoint = endpoint
        self._console_url = console_url.rstrip("/")
        self._instance = instance
        self._http = http
        self._clock = clock
        self._timeout = timeout
        self._fetching: list[Deferred[str]] = []

    @property
    def known(self) -> bool:
        """Whether the endpoint key is at hand."""
        return self._key is not None

    def get(self) -> Deferred[str]:
        """
        The endpoint key; the first call without one looks it up, later calls
        share that look-up. A failed look-up is not remembered: the next call
        tries again.
        """
        if self._key is not None:
            return _succeed(self._key)
        waiter: Deferred[str] = Deferred()
        self._fetching.append(waiter)
        if len(self._fetching) == 1:
            ensureDeferred(self._fetch()).addBoth(self._fetched)
        return waiter

    def _fetched(self, result: Any) -> None:
        waiters, self._fetching = self._fetching, []
        if isinstance(result, str):
            self._key = result
        for waiter in waiters:
            if isinstance(result, str):
                waiter.callback(result)
            else:
                waiter.errback(result)

    async def _fetch(self) -> str:
        assert self._clock is not None
        url = f"{self._console_url}/api/v0/endptjobs/?autoscaler_instance={self._instance}"
        headers = {"Authorization": [f"Bearer {self._account_key}"], "Accept": ["application/json"]}
        last: VespaError = AutoscalerError("the console API could not be reached")
        for attempt in range(KEY_ATTEMPTS):
            if attempt:
                await deferLater(self._clock, 0.3 * attempt, lambda: None)
            try:
                d = ensureDeferred(
                    _json_answer(self._http, "GET", url, headers, None, limit=CONSOLE_ANSWER_LIMIT)
                )
                code, parsed, raw = await _timeout(d, self._timeout, self._clock)
            except TimeoutError:
                last = AutoscalerError(f"the console API ({url}) did not answer in time")
                continue
            except AnswerTooLarge as e:
                last = AutoscalerError(f"the console API ({url}) {e}")
                continue
            except CancelledError:
                raise
            except Exception as e:  # a connection failure of any kind: try again
                last = AutoscalerError(f"the console API ({url}) could not be reached: {e}")
                continue
            if code in (401, 403):
                raise AutoscalerUnauthorized(
                    "the console API refused the account key "
                    f"({code}: {_excerpt(parsed, raw, self._account_key)}); check --account-key"
                )
            if code != 200 or not isinstance(parsed, dict):
                said = _excerpt(parsed, raw, self._account_key)
                last = AutoscalerError(f"the console API answered {code}: {said}")
                if code < 500:
                    raise last
                continue
            results = parsed.get("results")
            for item in results if isinstance(results, list) else []:
                if isinstance(item, dict) and item.get("endpoint_name") == self._endpoint:
                    key = item.get("api_key")
                    if isinstance(key, str) and key:
                        log.info(
                            "looked up the key of endpoint {endpoint} (id {id})",
                            endpoint=self._endpoint,
                            id=item.get("id"),
                        )
                        return key
            raise EndpointNotFound(
                f"the account has no endpoint named {self._endpoint!r} on the "
                f"{self._instance} instance"
            )
        raise last


def _succeed(value: str) -> Deferred[str]:
    d: Deferred[str] = Deferred()
    d.callback(value)
    return d


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
                    _json_answer(
                        self.http, "POST", self.url, headers, body, limit=ROUTE_ANSWER_LIMIT
                    )
                )
                code, parsed, raw = await _timeout(call, max(timeout, 0.001), self.clock)
            except TimeoutError:
                code, parsed, raw = 0, None, b""
                problem = f"did not answer within {timeout:g} s"
            except AnswerTooLarge as e:
                code, parsed, raw = 0, None, b""
                problem = str(e)
            except CancelledError:
                raise
            except Exception as e:  # refused, reset, DNS: the autoscaler is unreachable
                if _cancelled(e):
                    raise CancelledError() from None
                code, parsed, raw = 0, None, b""
                problem = f"unreachable ({e.__class__.__name__}: {e})"
            else:
                problem = f"answered {code}: {_excerpt(parsed, raw, key)}"
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
            self._refuse(code, _excerpt(parsed, raw, key), not_a_route=not_a_route)
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

        :param said: what the answer says (:func:`_excerpt`).
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
