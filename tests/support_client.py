"""
Helpers for the client's end-to-end tests (no tests here): the whole chain on
loopback, every socket real. The autoscaler stand-in signs routes, two or
more real workers (built as ``twistd vespa`` builds them) verify and relay to
scripted backends, each worker behind a kill switch, and the client daemon
(or the Python API) in front, its timers on a ``Clock``.
"""

from __future__ import annotations

import json
from dataclasses import fields, replace
from types import SimpleNamespace
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.protocols import portforward
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from tests.support import FIXED_THROUGHPUT, HTTPClient, listen, shared_key, until
from vespa.client.config import ClientConfig
from vespa.client.policy import Preferences
from vespa.client.tap import build_client
from vespa.config import Origin, VastEnvironment, WorkerConfig
from vespa.testing.autoscaler import Autoscaler, autoscaler_site
from vespa.testing.model_servers import OpenAIServer

ENDPOINT = "demo-endpoint"
API_KEY = "demo-key"


class Console(Resource):
    """The console API's ``/api/v0/endptjobs/``, as far as the key look-up uses it."""

    isLeaf = True

    def __init__(self, account_key: str = "acct", keys: dict[str, str] | None = None) -> None:
        super().__init__()
        self.account_key = account_key
        self.keys = keys or {"other": "other-key", "demo-endpoint": "the-key"}
        self.requests: list[bytes] = []
        self.status = 200

    def render_GET(self, request: Request) -> bytes:
        self.requests.append(request.uri)
        request.setHeader(b"content-type", b"application/json")
        auth = request.getHeader(b"authorization")
        if auth != b"Bearer " + self.account_key.encode():
            request.setResponseCode(401)
            return b'{"error": "bad key"}'
        request.setResponseCode(self.status)
        results = [
            {"endpoint_name": name, "api_key": key, "id": i}
            for i, (name, key) in enumerate(self.keys.items())
        ]
        return json.dumps({"results": results}).encode()


class ScriptedBackend(Resource):
    """
    A model server whose behaviour a test sets: the demo model server
    (OpenAI-compatible, fast, on real time), plus a few scripted modes.

    ``mode``: ``"pass"`` (the demo server), ``"hold"`` (never answer),
    ``"first-then-hold"`` (an SSE response with one event, then silence),
    ``"die"`` (the connection drops before any answer),
    ``"status"`` (answer ``status`` with a JSON body). ``/health`` always
    answers 200; ``/echo`` echoes the request; ``/v1/embeddings`` embeds.

    :ivar received: ``(method, uri)`` of each request, in order.
    :ivar disconnects: uris whose caller left before the answer ended.
    """

    isLeaf = True

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.demo = OpenAIServer(reactor, model="vespa-demo", tokens_per_second=2000.0)
        self.mode = "pass"
        self.status = 503
        self.fail_input = "FAIL"
        self.received: list[tuple[bytes, bytes]] = []
        self.bodies: list[bytes] = []
        self.disconnects: list[bytes] = []
        self._waiters: list[tuple[str, int, Deferred[None]]] = []

    def wait(self, what: str, count: int = 1) -> Deferred[None]:
        """Fires once ``count`` requests (``"request"``) or disconnects have happened."""
        d: Deferred[None] = Deferred()
        self._waiters.append((what, count, d))
        self._notify()
        return d

    def _notify(self) -> None:
        for waiter in list(self._waiters):
            seen = len(self.received if waiter[0] == "request" else self.disconnects)
            if seen >= waiter[1]:
                self._waiters.remove(waiter)
                waiter[2].callback(None)

    def render(self, request: Request) -> bytes | int:
        if request.path == b"/health":
            return self.demo.render(request)
        assert request.content is not None
        body = request.content.read()
        request.content.seek(0)
        self.received.append((request.method, request.uri))
        self.bodies.append(body)
        request.notifyFinish().addErrback(self._lost, request.uri)
        self._notify()
        request.setHeader(b"x-backend", self.name.encode())
        if request.path == b"/echo":
            request.setHeader(b"content-type", b"application/json")
            return json.dumps(
                {
                    "method": request.method.decode(),
                    "uri": request.uri.decode("latin-1"),
                    "headers": {
                        k.decode().lower(): [v.decode("latin-1") for v in vs]
                        for k, vs in request.requestHeaders.getAllRawHeaders()
                    },
                    "body": body.decode("latin-1"),
                }
            ).encode()
        if self.mode == "hold":
            return NOT_DONE_YET
        if self.mode == "die":
            request.channel.transport.abortConnection()  # type: ignore[union-attr]
            return NOT_DONE_YET
        if self.mode == "first-then-hold":
            request.setHeader(b"content-type", b"text/event-stream")
            request.write(b'data: {"n": 0}\n\n')
            return NOT_DONE_YET
        if self.mode == "status":
            request.setResponseCode(self.status)
            request.setHeader(b"content-type", b"application/json")
            return json.dumps({"error": f"backend {self.name} says {self.status}"}).encode()
        if request.path == b"/v1/embeddings":
            return self._embeddings(request, json.loads(body))
        return self.demo.render(request)

    def _embeddings(self, request: Request, payload: dict[str, Any]) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        inputs = payload["input"]
        if self.fail_input in inputs:
            request.setResponseCode(400)
            return json.dumps({"error": f"input {self.fail_input!r} is not allowed"}).encode()
        return json.dumps(
            {
                "object": "list",
                "model": payload.get("model", "demo"),
                # Answered in reverse order, as servers may: the merge must sort.
                "data": [
                    {"object": "embedding", "index": i, "embedding": [len(text), ord(text[-1])]}
                    for i, text in reversed(list(enumerate(inputs)))
                ],
                "usage": {"prompt_tokens": len(inputs), "total_tokens": 2 * len(inputs)},
            }
        ).encode()

    def _lost(self, reason: Any, uri: bytes) -> None:
        self.disconnects.append(uri)
        self._notify()


class _TrackedProxyServer(portforward.ProxyServer):
    def connectionMade(self) -> None:
        self.factory.live.add(self)  # type: ignore[attr-defined]
        super().connectionMade()

    def connectionLost(self, reason: Any = None) -> None:
        self.factory.live.discard(self)  # type: ignore[attr-defined]
        super().connectionLost(reason)


class KillSwitch:
    """
    A TCP forwarder in front of a worker: :meth:`kill` makes the worker look
    dead to its callers (no more connections, the open ones reset).
    """

    def __init__(self, testcase: TestCase, target_port: int) -> None:
        factory = portforward.ProxyFactory("127.0.0.1", target_port)
        factory.protocol = _TrackedProxyServer
        factory.live = set()  # type: ignore[attr-defined]
        factory.noisy = False
        self.factory = factory
        self.listening = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.port: int = self.listening.getHost().port
        self.dead = False
        testcase.addCleanup(self.kill)

    def kill(self) -> Deferred[None] | None:
        if self.dead:
            return None
        self.dead = True
        for proxy in list(self.factory.live):  # type: ignore[attr-defined]
            proxy.transport.abortConnection()
            if proxy.peer is not None and proxy.peer.transport is not None:
                proxy.peer.transport.abortConnection()
        stopped: Deferred[None] = self.listening.stopListening()  # type: ignore[assignment]
        return stopped


async def start_worker(
    testcase: TestCase,
    autoscaler_port: int,
    backend: ScriptedBackend,
    *,
    worker_clock: Clock,
    index: int,
    throughput: float = 1000.0,
    **overrides: Any,
) -> SimpleNamespace:
    """A secured worker in front of ``backend``, behind a kill switch; loaded on return."""
    from vespa.worker.tap import build_worker

    backend_port = listen(testcase, Site(backend))
    FIXED_THROUGHPUT["value"] = throughput
    known = {f.name for f in fields(WorkerConfig)}
    # No metrics port (a fixed port would collide), a short drain.
    extra = {k: v for k, v in (("metrics_listen", None), ("drain_timeout", 1.0)) if k in known}
    config = replace(
        WorkerConfig(
            backend=Origin("http", "127.0.0.1", backend_port),
            listen="tcp:0:interface=127.0.0.1",
            benchmark="tests.support:fixed_benchmark",
            benchmark_cache=testcase.mktemp(),
            vast=VastEnvironment(
                report_addresses=(f"http://127.0.0.1:{autoscaler_port}",),
                master_token="master-token",
                container_id=100 + index,
            ),
        ),
        **{**extra, **overrides},
    )
    worker = build_worker(config, reactor, worker_clock)
    worker.service.startService()
    testcase.addCleanup(stop_on_clock, worker.service, worker_clock)
    port = await worker.port()
    await until(lambda: worker.state.is_loaded)
    switch = KillSwitch(testcase, port)
    return SimpleNamespace(
        worker=worker,
        backend=backend,
        switch=switch,
        url=f"http://127.0.0.1:{switch.port}",
    )


async def stop_on_clock(service: Any, clock: Clock) -> None:
    """Stop ``service``, advancing ``clock`` while it waits (its drain runs on it)."""
    from twisted.internet.task import deferLater

    stopping = service.stopService()
    for _ in range(1000):
        if stopping is None or stopping.called:
            break
        clock.advance(0.1)
        await deferLater(reactor, 0.001, lambda: None)
    if stopping is not None:
        await stopping


async def start_chain(
    testcase: TestCase,
    *,
    workers: int = 2,
    ready: bool = True,
    prefs: Preferences | None = None,
    worker_overrides: list[dict[str, Any]] | None = None,
    start_client: bool = True,
    **client_overrides: Any,
) -> SimpleNamespace:
    """
    The whole chain: the stand-in, ``workers`` workers (``a``, ``b``, ...),
    each with its own scripted backend and registered at the stand-in
    (``ready`` or loading), and the client daemon. Returns a namespace with
    ``clock`` (the client's), ``autoscaler``, ``workers`` (and ``a``, ``b``),
    ``client`` (the built daemon), ``port``, ``http`` (an HTTP client to it)
    and ``config``.
    """
    clock = Clock()
    worker_clock = Clock()
    autoscaler = Autoscaler(worker_clock, key=shared_key())
    autoscaler_port = listen(testcase, autoscaler_site(autoscaler))
    testcase.addCleanup(autoscaler.close)
    env = SimpleNamespace(clock=clock, worker_clock=worker_clock, autoscaler=autoscaler)
    env.autoscaler_url = f"http://127.0.0.1:{autoscaler_port}"
    env.workers = []
    for i in range(workers):
        name = "abcdefgh"[i]
        overrides = (worker_overrides or [{}] * workers)[i]
        w = await start_worker(
            testcase,
            autoscaler_port,
            ScriptedBackend(name),
            worker_clock=worker_clock,
            index=i,
            **overrides,
        )
        autoscaler.register_worker(w.url, ready=ready)
        env.workers.append(w)
        setattr(env, name, w)
    env.config = replace(
        ClientConfig(
            endpoint=ENDPOINT,
            api_key=API_KEY,
            autoscaler_url=env.autoscaler_url,
            listen="tcp:0:interface=127.0.0.1",
            defaults=prefs or Preferences(initial_backoff_ms=100.0),
        ),
        **client_overrides,
    )
    if start_client:
        env.client = build_client(env.config, reactor, clock)
        env.client.service.startService()
        testcase.addCleanup(env.client.service.stopService)
        env.port = await env.client.port()
        env.http = HTTPClient(testcase, env.port)
        env.dispatcher = env.client.parts.core.dispatcher
    return env


def vespa_headers(response: Any) -> dict[str, str]:
    """The ``X-Vespa-*`` headers of a response, by lower-case name."""
    out = {}
    for name in (b"x-vespa-worker", b"x-vespa-attempts", b"x-vespa-route-ms"):
        values = response.headers.getRawHeaders(name)
        if values:
            out[name.decode()] = values[0].decode()
    return out


async def advance_until(clock: Clock, condition: Any, step: float = 1.0, limit: int = 600) -> None:
    """
    Advance ``clock`` ``step`` at a time, letting the reactor run between
    steps, until ``condition()`` holds.
    """
    from twisted.internet.task import deferLater

    for _ in range(limit):
        if condition():
            return
        clock.advance(step)
        await deferLater(reactor, 0.002, lambda: None)
    raise AssertionError("condition not reached")
