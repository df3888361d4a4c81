# -*- test-case-name: tests.test_loadtest_e2e -*-
"""
Where a load test's requests go, always through Vespa's client core.

* :class:`EndpointTarget` (``--endpoint``): the client core as the
  ``vespa-client`` daemon builds it (:func:`vespa.client.core.build_parts`):
  ``/route/`` at the autoscaler, the routing data wrapped around the payload,
  retries and hedges as the client's settings say.
* :class:`DirectTarget` (``--url``): one origin, requests sent as they are
  (no routing data) by the client core's worker sender
  (:class:`vespa.client.upstream.Sender`): a running ``vespa-client``, or a
  worker started with ``--unsecured``. Nothing is retried: there is no other
  worker to try, and a ``vespa-client`` retries by itself.

Both answer a request with a :class:`Started` (its first byte is in, the
rest streams) or fail with :class:`~vespa.client.policy.DispatchFailed`
saying which error, where.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers

from vespa.benchmarks.runner import json_answer
from vespa.client.config import ClientConfig
from vespa.client.core import ClientParts, Reply, build_parts
from vespa.client.policy import DispatchFailed
from vespa.client.tls import worker_tls_policy
from vespa.client.upstream import Answer, Sender, WorkerRequest
from vespa.client.wrapping import COST_HEADER
from vespa.errors import VespaError
from vespa.loadtest.payloads import RequestSpec

__all__ = ["DirectTarget", "EndpointTarget", "Started", "Target", "fetch_json"]


@dataclass
class Started:
    """
    An answer whose first byte is in.

    :ivar code: the status code.
    :ivar headers: the response headers.
    :ivar worker: the worker (or origin) that answered.
    :ivar attempts: worker requests made for it (retries and hedges count).
    :ivar answer: the answer to stream; ``None`` when ``body`` holds it all.
    :ivar body: the whole body, when ``answer`` is ``None`` (a merged batch).
    """

    code: int
    headers: Headers
    worker: str | None
    attempts: int
    answer: Answer | None
    body: bytes = b""


class Target(Protocol):
    """Sends the requests of a load test."""

    #: What is loaded, for the report: ``endpoint NAME via URL`` or the url.
    description: str

    def send(self, spec: RequestSpec) -> Deferred[Started]:
        """
        Send one request.

        :return: fires with the :class:`Started` answer, or fails with
            :class:`~vespa.client.policy.DispatchFailed`; cancel it to abandon.
        """

    def close(self) -> Deferred[None]:
        """Close the connections."""


def _caller_headers(spec: RequestSpec) -> Headers:
    headers = Headers()
    if spec.payload is not None:
        headers.setRawHeaders(b"Content-Type", [b"application/json"])
    if spec.cost is not None:
        headers.setRawHeaders(COST_HEADER, [repr(float(spec.cost)).encode()])
    return headers


class EndpointTarget:
    """
    A Vast endpoint through the client core: routed, wrapped, retried.

    :param config: the client's settings (endpoint, key, autoscaler, timeouts).
    :param reactor: for network I/O.
    :param clock: for the client's timers; ``reactor`` if ``None``.
    """

    def __init__(self, config: ClientConfig, reactor: Any, clock: IReactorTime | None = None):
        self.parts: ClientParts = build_parts(config, reactor, clock)
        self.description = f"endpoint {config.endpoint} via {config.autoscaler_url}"

    def send(self, spec: RequestSpec) -> Deferred[Started]:
        core = self.parts.core
        try:
            method, target = spec.method.encode("ascii"), spec.path.encode("utf-8")
            headers = _caller_headers(spec)
            if spec.payload is None:
                call = core.call(method, target, headers, b"", proto=None)
            else:
                call = core.call(method, target, headers, b"", proto=None, payload=spec.payload)
        except VespaError as error:
            return _failed(error, None)
        prefs = core.defaults
        return core.send(call, prefs, core.deadline(prefs)).addCallback(_from_reply)

    def close(self) -> Deferred[None]:
        return self.parts.close()


def _from_reply(reply: Reply) -> Started:
    return Started(
        reply.code,
        reply.headers,
        ",".join(reply.workers),
        reply.attempts,
        reply.answer,
        reply.body or b"",
    )


class DirectTarget:
    """
    One origin (a ``vespa-client``, an unsecured worker), requests sent as
    they are by the client core's sender.

    :param url: the origin, ``http://127.0.0.1:8010``.
    :param config: the client's settings (timeouts, connections, CA file).
    :param reactor: for network I/O.
    :param clock: for the sender's timers; ``reactor`` if ``None``.
    """

    def __init__(
        self, url: str, config: ClientConfig, reactor: Any, clock: IReactorTime | None = None
    ) -> None:
        self.url = url.rstrip("/")
        self.description = self.url
        self.sender = Sender(
            reactor,
            clock=clock or reactor,
            tls=worker_tls_policy(config.ca_file),
            max_connections=config.max_connections,
            connect_timeout=config.connect_timeout,
            first_byte_timeout=config.first_byte_timeout,
            idle_timeout=config.idle_timeout,
        )

    def send(self, spec: RequestSpec) -> Deferred[Started]:
        headers = _caller_headers(spec)
        headers.setRawHeaders(b"Host", [self.url.split("//", 1)[1].encode("idna")])
        body = None if spec.payload is None else json.dumps(spec.payload).encode()
        request = WorkerRequest(
            spec.method.encode("ascii"), (self.url + spec.path).encode("utf-8"), headers, body
        )

        def started(answer: Answer) -> Started:
            return Started(answer.code, answer.headers, answer.worker, 1, answer)

        def failed(reason: Failure) -> Failure:
            if isinstance(reason.value, VespaError):
                return Failure(DispatchFailed(reason.value, 1, 0.0, self.url))
            return reason

        return self.sender.send(request, self.url, peek=False).addCallbacks(started, failed)

    def close(self) -> Deferred[None]:
        return self.sender.close()


def _failed(error: VespaError, worker: str | None) -> Deferred[Started]:
    d: Deferred[Started] = Deferred()
    d.errback(Failure(DispatchFailed(error, 0, 0.0, worker)))
    return d


class _Collect:
    """A body sink that keeps the whole body."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.done: Deferred[bytes] = Deferred()

    def chunk(self, data: bytes) -> None:
        self.chunks.append(data)

    def end(self, error: VespaError | None) -> None:
        if error is not None:
            self.done.errback(Failure(error))
        else:
            self.done.callback(b"".join(self.chunks))


async def fetch_json(target: Target, path: str) -> Any:
    """
    ``GET path`` through ``target``, its answer parsed (a model listing).

    :raise VespaError: the request failed, or did not answer 200 with JSON.
    """
    try:
        started = await target.send(RequestSpec(path, None, None, "GET"))
    except DispatchFailed as failed:
        raise failed.error from None
    if started.answer is None:
        body = started.body
    else:
        sink = _Collect()
        started.answer.attach(sink)
        body = await sink.done
    return json_answer(path, started.code, body, VespaError)
