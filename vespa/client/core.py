# -*- test-case-name: tests.test_client_e2e,tests.test_client_api -*-
"""
What the local proxy and the Python API share: turning a caller's request
into a :class:`~vespa.client.wrapping.Call`, then getting its
:class:`Reply` through the dispatcher (or the batcher, for a list input that
is split).
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import KW_ONLY, asdict, dataclass, replace
from typing import Any

from treq.client import HTTPClient
from twisted.internet.defer import Deferred, DeferredList, ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers
from zope.interface import implementer

from vespa.client.batch import plan_batch, run_batch
from vespa.client.config import ClientConfig
from vespa.client.policy import SAFE_METHODS, Budget, Dispatcher, Limiter, Outcome, Preferences
from vespa.client.router import KeySource, Router
from vespa.client.tls import worker_tls_policy
from vespa.client.upstream import Answer, Sender, WorkerRequest
from vespa.client.wrapping import (
    Call,
    build_worker_request,
    detect_cost,
    forwarded_headers,
    read_payload,
)
from vespa.http.endpoints import quiet_pool
from vespa.interfaces import IHealthDocument
from vespa.protocol.envelope import BODY_METHODS

#: No JSON body was given (``None`` is JSON ``null``).
_UNSET: Any = object()


@dataclass
class Reply:
    """
    The answer to a caller: a worker's (to stream), or a merged batch.

    :ivar code: the status code.
    :ivar phrase: the reason phrase.
    :ivar headers: the response headers to give (end-to-end ones of the worker).
    :ivar workers: the worker(s) that answered.
    :ivar attempts: worker requests made.
    :ivar route_ms: milliseconds spent routing.
    :ivar answer: the worker's answer, its body still to stream; or ``None``.
    :ivar body: the whole body, when ``answer`` is ``None``.
    """

    code: int
    phrase: bytes
    headers: Headers
    workers: list[str]
    attempts: int
    route_ms: float
    answer: Answer | None = None
    body: bytes | None = None

    @classmethod
    def from_outcome(cls, outcome: Outcome) -> Reply:
        """The reply for a single worker's answer."""
        answer = outcome.answer
        return cls(
            answer.code,
            answer.phrase,
            answer.headers,
            [answer.worker],
            outcome.attempts,
            outcome.route_ms,
            answer=answer,
        )

    def discard(self) -> None:
        """Drop the answer, unread (the caller went away)."""
        if self.answer is not None:
            self.answer.discard()


@dataclass(eq=False, repr=False)
class ClientCore:
    """
    Requests of one endpoint, from call to reply.

    :ivar dispatcher: routes, sends, retries and hedges.
    :ivar clock: for deadlines.
    :ivar defaults: the preferences a request starts from.
    :ivar default_cost: the cost when nothing gives one.
    :ivar limiter: the in-flight limit and its queue.
    :ivar endpoint: the endpoint name.
    """

    dispatcher: Dispatcher
    clock: IReactorTime
    _: KW_ONLY
    defaults: Preferences
    default_cost: float
    limiter: Limiter
    endpoint: str

    def call(
        self,
        method: bytes,
        target: bytes,
        headers: Headers,
        body: bytes,
        *,
        client_ip: bytes | None = None,
        proto: bytes | None = None,
        payload: Any = _UNSET,
    ) -> Call:
        """
        The :class:`Call` for a request.

        :param method: the HTTP method.
        :param target: ``/path?query``.
        :param headers: the caller's headers, as received.
        :param body: the raw body.
        :param client_ip: the caller's address, for ``X-Forwarded-For``.
        :param proto: how the caller connected (``http``/``https``), for
            ``X-Forwarded-Proto``; ``None`` to send no forwarding headers.
        :param payload: an already parsed JSON body (the API's ``json=``).
        :raise VespaError: 415 for a body method's non-JSON body, 400 for a
            bad cost header.
        """
        forward = forwarded_headers(headers, client_ip=client_ip, proto=proto or b"http")
        if proto is None:
            forward.removeHeader(b"x-forwarded-proto")
        if method in BODY_METHODS:
            if payload is _UNSET:
                content_type = headers.getRawHeaders(b"content-type")
                payload = read_payload(content_type[0] if content_type else None, body)
            cost = detect_cost(headers, payload, self.default_cost)
            return Call(method, target, forward, payload, None, cost)
        cost = detect_cost(headers, None, self.default_cost)
        return Call(method, target, forward, None, body or None, cost)

    def deadline(self, prefs: Preferences) -> float | None:
        """The ``clock.seconds()`` time a request arriving now must be over by."""
        if prefs.timeout_s is None:
            return None
        return self.clock.seconds() + prefs.timeout_s

    def send(self, call: Call, prefs: Preferences, deadline: float | None) -> Deferred[Reply]:
        """
        Get the reply for ``call``: one dispatch, or a split batch.

        :return: fires with the :class:`Reply`; fails with
            :class:`~vespa.client.policy.DispatchFailed` or a
            :class:`~vespa.errors.VespaError`; cancel it to abandon the request.
        """
        plan = plan_batch(call.method, call.path, call.payload, prefs.batch_size)
        if plan is None:
            return self.dispatch(call, prefs, deadline).addCallback(Reply.from_outcome)

        def part(payload: dict[str, Any], cost: float) -> Deferred[Outcome]:
            return self.dispatch(call.with_payload(payload, _as_cost(cost)), prefs, deadline)

        async def batch() -> Reply:
            result = await run_batch(plan, part, float(call.cost), prefs)
            headers = Headers({b"Content-Type": [b"application/json"]})
            return Reply(
                200,
                b"OK",
                headers,
                result.workers,
                result.attempts,
                result.route_ms,
                body=result.body,
            )

        return ensureDeferred(batch())

    def dispatch(self, call: Call, prefs: Preferences, deadline: float | None) -> Deferred[Outcome]:
        """One request through the dispatcher, no batching."""
        if call.method in SAFE_METHODS and not prefs.idempotent:
            prefs = replace(prefs, idempotent=True)

        def build(worker: str, auth: Mapping[str, Any], attempt: int) -> WorkerRequest:
            return build_worker_request(call, worker, auth, attempt)

        return self.dispatcher.dispatch(build, call.cost, prefs, deadline)


def _as_cost(cost: float) -> int | float:
    return int(cost) if float(cost).is_integer() else cost


@implementer(IHealthDocument)
@dataclass
class ClientParts:
    """
    The parts of a client built from its config, for the daemon and the API.

    :ivar core: turns requests into replies.
    :ivar router: the ``/route/`` client.
    :ivar keys: the endpoint key.
    :ivar sender: the worker connections.
    :ivar pools: every connection pool, to close at the end.
    """

    core: ClientCore
    router: Router
    keys: KeySource
    sender: Sender
    pools: list[HTTPConnectionPool]

    def health(self) -> dict[str, Any]:
        """The ``/health`` document: who this client serves, and its counters."""
        dispatcher = self.core.dispatcher
        return {
            "status": "healthy",
            "endpoint": self.core.endpoint,
            "autoscaler": self.router.autoscaler_url,
            "key": "ready" if self.keys.known else "pending look-up",
            "in_flight": self.core.limiter.in_flight,
            "queued": self.core.limiter.queued,
            "requests": asdict(dispatcher.stats),
            "routing": asdict(self.router.stats),
            "retry_budget_spent": dispatcher.retry_budget.spent,
            "hedge_budget_spent": dispatcher.hedge_budget.spent,
        }

    def close(self) -> Deferred[None]:
        """Close every pooled connection."""
        closing = [pool.closeCachedConnections() for pool in self.pools]
        return DeferredList(closing, consumeErrors=True).addCallback(lambda _: None)


def build_parts(
    config: ClientConfig,
    reactor: Any,
    clock: IReactorTime | None = None,
    *,
    rng: random.Random | None = None,
) -> ClientParts:
    """
    Build the router, sender, dispatcher and core of a client, starting nothing.

    :param config: the validated settings.
    :param reactor: for network I/O.
    :param clock: for every timer; ``reactor`` if ``None``.
    :param rng: the jitter's randomness.
    :raise ConfigError: an unusable ``--ca-file``.
    """
    clock = clock or reactor
    rng = rng or random.Random()
    # The autoscaler and the console: few calls, so few kept connections.
    control_pool = quiet_pool(reactor, keepalive=20.0, max_connections=8)
    http = HTTPClient(Agent(reactor, pool=control_pool))
    keys = KeySource(
        config.api_key,
        account_key=config.account_key,
        endpoint=config.endpoint,
        console_url=config.console_url,
        instance=config.instance,
        http=http,
        clock=clock,
    )
    router = Router(
        http,
        clock,
        autoscaler_url=config.autoscaler_url,
        endpoint=config.endpoint,
        keys=keys,
        route_timeout=config.route_timeout,
        rng=rng,
    )
    sender = Sender(
        reactor,
        clock=clock,
        tls=worker_tls_policy(config.ca_file),
        max_connections=config.max_connections,
        connect_timeout=config.connect_timeout,
        first_byte_timeout=config.first_byte_timeout,
        idle_timeout=config.idle_timeout,
    )
    dispatcher = Dispatcher(
        router,
        sender,
        clock,
        retry_budget=Budget(clock, reserve=config.retry_budget_min),
        hedge_budget=Budget(clock, reserve=1),
        rng=rng,
    )
    core = ClientCore(
        dispatcher,
        clock,
        defaults=config.defaults,
        default_cost=config.default_cost,
        limiter=Limiter(config.max_in_flight, config.max_queue),
        endpoint=config.endpoint,
    )
    return ClientParts(core, router, keys, sender, [control_pool, sender.pool])
