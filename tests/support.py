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
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse

from vespa.config import Origin, WorkerConfig
from vespa.http.site import ProxySite
from vespa.http.target import PathBlocklist
from vespa.testing.echo_backend import EchoBackend, echo_site
from vespa.worker.admission import Admission
from vespa.worker.ledger import Ledger
from vespa.worker.resource import WorkerResource
from vespa.worker.state import WorkerState
from vespa.worker.tap import build_relay


def listen(testcase: TestCase, site: Any) -> int:
    """Serve ``site`` on 127.0.0.1, stopped at cleanup; return the port."""
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    testcase.addCleanup(port.stopListening)
    return port.getHost().port  # type: ignore[no-any-return]


def connect_in_memory(site: Any) -> tuple[Any, StringTransport]:
    """A new connection of ``site`` on an in-memory transport: the channel, and that transport."""
    connection = site.buildProtocol(None)
    transport = StringTransport()
    connection.makeConnection(transport)
    return connection, transport


def start_echo_backend(testcase: TestCase, clock: Any = None) -> tuple[EchoBackend, int]:
    """Start an :class:`EchoBackend` (paced by ``clock``); return it and its port."""
    site = echo_site(clock or reactor)
    return site.resource, listen(testcase, site)


def start_worker(
    testcase: TestCase, backend_port: int, *, clock: Any = None, **overrides: Any
) -> tuple[WorkerResource, int]:
    """
    Start an unsecured, loaded worker in front of ``backend_port`` with config overrides
    (``blocked_paths``, ``max_body_size``, timeouts...), its deadlines run by
    ``clock``; return it and its port.
    """
    config = replace(
        WorkerConfig(backend=Origin("http", "127.0.0.1", backend_port), unsecured=True),
        **overrides,
    )
    relay = build_relay(config, reactor, clock)
    testcase.addCleanup(relay.close)
    state = WorkerState(reactor)
    state.loaded(1e6)
    resource = WorkerResource(
        relay,
        state=state,
        ledger=Ledger(),
        admission=Admission(max_wait_time=config.max_wait_time, slots=config.slots),
        verifier=None,
        blocklist=PathBlocklist(config.blocked_paths),
        reactor=reactor,
    )
    site = ProxySite(
        resource, max_body_size=config.max_body_size, access_log=config.access_log, reactor=reactor
    )
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
        from vespa.http.outbound import body_producer

        producer = body_producer(body) if body is not None else None
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


#: What :func:`fixed_benchmark` reports; tests change it before a worker starts.
FIXED_THROUGHPUT = {"value": 100.0}


BENCHMARK_CALLS = {"count": 0}


async def failing_benchmark(backend_url: str, session: Any) -> float:
    """A benchmark whose every request fails, for the startup tests."""
    raise RuntimeError("no benchmark request succeeded: every request answered 500")


async def fixed_benchmark(backend_url: str, session: Any) -> float:
    """
    A benchmark for tests: checks the backend answers, then reports the
    throughput the test chose (so admission decisions are predictable).
    """
    BENCHMARK_CALLS["count"] += 1
    response = await session.get("/health")
    await response.content()
    if response.code != 200:
        raise RuntimeError(f"/health answered {response.code}")
    return FIXED_THROUGHPUT["value"]


_KEY: list[Any] = []


def shared_key() -> Any:
    """One RSA key for the whole test run (generating one is slow)."""
    if not _KEY:
        from Crypto.PublicKey import RSA

        _KEY.append(RSA.generate(2048))
    return _KEY[0]


PUBLIC_URL = "http://203.0.113.7:41000"


def loopback_config(
    testcase: TestCase,
    backend_port: int,
    autoscaler_port: int,
    *,
    container_id: int,
    public_url: str | None = None,
    **overrides: Any,
) -> WorkerConfig:
    """
    A worker's config for tests: its backend and the autoscaler stand-in on
    loopback, listening on an ephemeral port, loaded by
    :func:`fixed_benchmark`, no metrics port; ``overrides`` on top (e.g.
    ``unsecured``, ``signature_mode``).
    """
    from vespa.config import VastEnvironment

    return replace(
        WorkerConfig(
            backend=Origin("http", "127.0.0.1", backend_port),
            listen="tcp:0:interface=127.0.0.1",
            benchmark="tests.support:fixed_benchmark",
            benchmark_cache=testcase.mktemp(),
            metrics_listen=None,
            drain_timeout=1.0,
            vast=VastEnvironment(
                report_addresses=(f"http://127.0.0.1:{autoscaler_port}",),
                master_token="master-token",
                container_id=container_id,
                public_url=public_url,
            ),
        ),
        **overrides,
    )


async def start_secured_worker(
    testcase: TestCase,
    *,
    signing_mode: str = "full",
    throughput: float = 100.0,
    unsecured: bool = False,
    wait_until_loaded: bool = True,
    before_start: Any = None,
    public_url: str = PUBLIC_URL,
    **overrides: Any,
) -> Any:
    """
    The whole worker as ``twistd vespa`` builds it, secured, on loopback, with
    an echo backend and the autoscaler stand-in on real sockets and every timer
    on a ``Clock``. It advertises ``public_url`` (:data:`PUBLIC_URL`, as behind Vast's port
    mapping), so the stand-in signs for that url. Returns a namespace with
    ``worker`` (the built parts), ``port``, ``clock``, ``backend``,
    ``autoscaler``, ``client`` and ``config``; the worker is loaded when this returns.
    """
    from types import SimpleNamespace

    from twisted.internet.task import Clock

    from vespa.testing.autoscaler import Autoscaler, autoscaler_site
    from vespa.worker.tap import build_worker

    clock = Clock()
    backend, backend_port = start_echo_backend(testcase, clock)
    autoscaler = Autoscaler(clock, key=shared_key(), signing_mode=signing_mode)
    autoscaler_port = listen(testcase, autoscaler_site(autoscaler))
    testcase.addCleanup(autoscaler.close)
    autoscaler.register_worker(public_url)
    FIXED_THROUGHPUT["value"] = throughput
    config = loopback_config(
        testcase,
        backend_port,
        autoscaler_port,
        container_id=7,
        public_url=public_url,
        **{"unsecured": unsecured, "signature_mode": signing_mode, **overrides},
    )
    worker = build_worker(config, reactor, clock)
    env = SimpleNamespace(backend=backend, autoscaler=autoscaler, clock=clock, config=config)
    if before_start is not None:
        before_start(env)
    worker.service.startService()
    testcase.addCleanup(worker.service.stopService)
    port = await worker.port()
    if wait_until_loaded:
        await until(lambda: worker.state.is_loaded)
    return SimpleNamespace(
        worker=worker,
        port=port,
        clock=clock,
        backend=backend,
        autoscaler=autoscaler,
        client=HTTPClient(testcase, port),
        config=config,
    )


async def start_tls_worker(testcase: TestCase) -> tuple[Any, Any]:
    """
    An unsecured worker (:func:`start_secured_worker`) serving TLS with a
    self-signed pair for 127.0.0.1; returns its namespace and the
    ``Certificate`` a client must trust.
    """
    from twisted.internet.ssl import Certificate

    from vespa.tls import make_self_signed

    cert, key = testcase.mktemp(), testcase.mktemp()
    make_self_signed(cert, key, ("127.0.0.1",))
    env = await start_secured_worker(
        testcase, unsecured=True, use_ssl=True, tls_cert=cert, tls_key=key
    )
    with open(cert, "rb") as f:
        return env, Certificate.loadPEM(f.read())


async def until(condition: Any, timeout: float = 10.0) -> None:
    """Let the reactor run until ``condition()`` is true (bounded, polled)."""
    from twisted.internet.task import deferLater

    deadline = reactor.seconds() + timeout
    while not condition():
        if reactor.seconds() > deadline:
            raise AssertionError("condition not reached in time")
        await deferLater(reactor, 0.002, lambda: None)


async def wake_startup(worker: Any, clock: Any) -> float:
    """
    Once the startup chain is waiting between attempts, advance ``clock`` to
    the end of that wait; return how long the wait was.
    """
    startup = worker.startup
    await until(lambda: startup.sleeping_until is not None)
    delay: float = startup.sleeping_until - clock.seconds()
    clock.advance(delay)
    return delay
