"""
Helpers for end-to-end tests: real servers on 127.0.0.1 ephemeral ports.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse

from vespa.config import Origin, WorkerConfig
from vespa.proxy.relay import BackendRelay, RelayTimeouts
from vespa.proxy.site import ProxySite
from vespa.proxy.target import PathBlocklist
from vespa.testing.echo_backend import EchoBackend, echo_site
from vespa.worker.resource import WorkerResource


def listen(testcase: TestCase, site: Any) -> int:
    """Serve ``site`` on 127.0.0.1, stopped at cleanup; return the port."""
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    testcase.addCleanup(port.stopListening)
    return port.getHost().port  # type: ignore[no-any-return]


def start_echo_backend(testcase: TestCase, clock: Any = None) -> tuple[EchoBackend, int]:
    """Start an :class:`EchoBackend` (paced by ``clock``); return it and its port."""
    site = echo_site(clock or reactor)
    return site.resource, listen(testcase, site)


def start_worker(
    testcase: TestCase, backend_port: int, *, clock: Any = None, **overrides: Any
) -> tuple[WorkerResource, int]:
    """
    Start the worker's site in front of ``backend_port`` with config overrides
    (``blocked_paths``, ``max_body_size``, timeouts...), its deadlines run by
    ``clock``; return it and its port.
    """
    config = replace(WorkerConfig(backend=Origin("http", "127.0.0.1", backend_port)), **overrides)
    relay = BackendRelay(
        reactor,
        config.backend,
        timeouts=RelayTimeouts(
            connect=config.connect_timeout,
            first_byte=config.first_byte_timeout,
            idle=config.idle_timeout,
            total=config.total_timeout,
        ),
        keepalive=config.backend_keepalive,
        max_connections=config.max_backend_connections,
        clock=clock,
    )
    testcase.addCleanup(relay.close)
    resource = WorkerResource(relay, PathBlocklist(config.blocked_paths))
    site = ProxySite(resource, max_body_size=config.max_body_size, reactor=reactor)
    return resource, listen(testcase, site)


class HTTPClient:
    """
    A plain Agent: no redirects followed, no decoding, no cookie jar; each
    request on a connection of its own (closed at the end) unless pooled.
    """

    def __init__(self, testcase: TestCase, port: int, *, pooled: bool = False) -> None:
        self.base = b"http://127.0.0.1:%d" % (port,)
        self.pool = HTTPConnectionPool(reactor, persistent=pooled)
        testcase.addCleanup(self.pool.closeCachedConnections)
        self.agent = Agent(reactor, pool=self.pool)

    async def request(
        self,
        method: bytes,
        target: bytes,
        headers: dict[bytes, list[bytes]] | None = None,
        body: bytes | None = None,
    ) -> tuple[IResponse, bytes]:
        from vespa.proxy.relay import BytesBodyProducer

        producer = BytesBodyProducer(body) if body is not None else None
        response = await self.agent.request(
            method, self.base + target, Headers(headers or {}), producer
        )
        return response, await readBody(response)

    async def json(self, method: bytes, target: bytes, **kw: Any) -> tuple[IResponse, Any]:
        response, body = await self.request(method, target, **kw)
        return response, json.loads(body)


class RawClient(Protocol):
    """
    A raw TCP client: sends bytes, records what arrives and when, and tells
    how the connection ended. For checks a parsing client would hide
    (chunk framing, an abnormal end, arrival times).
    """

    def __init__(self) -> None:
        self.chunks: list[tuple[float, int]] = []
        self.buffer = bytearray()
        self.closed: Deferred[None] = Deferred()
        self.reason: Failure | None = None
        self._waiters: list[tuple[bytes, Deferred[None]]] = []

    @property
    def data(self) -> bytes:
        return bytes(self.buffer)

    def dataReceived(self, data: bytes) -> None:
        self.chunks.append((reactor.seconds(), len(data)))
        self.buffer += data
        for marker, waiter in list(self._waiters):
            # Only the newly arrived tail can hold a marker not seen before.
            if self.buffer.find(marker, max(0, len(self.buffer) - len(data) - len(marker))) >= 0:
                self._waiters.remove((marker, waiter))
                waiter.callback(None)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.reason = reason
        self.closed.callback(None)

    def wait_for(self, marker: bytes) -> Deferred[None]:
        """Fires once ``marker`` has arrived."""
        d: Deferred[None] = Deferred()
        if marker in self.buffer:
            d.callback(None)
        else:
            self._waiters.append((marker, d))
        return d


async def raw_connect(port: int) -> RawClient:
    """Connect a :class:`RawClient` to 127.0.0.1:``port``."""
    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

    client = RawClient()
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
    return client


