"""
The official Vast client (``vastai`` 1.9.1, ``vastai.serverless.client``)
against a Vespa worker with its default settings, for end-to-end tests.

:func:`start_official_stack` starts, on 127.0.0.1 ephemeral ports, the
autoscaler stand-in (signing today's way), a fake OpenAI model server that
records every request it receives, and a secured worker built as ``twistd
vespa`` builds it, all on the trial reactor's real time. :func:`run_official`
runs a coroutine of the official client (asyncio and aiohttp) on a thread of
its own with its own event loop, so the reactor keeps serving meanwhile.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any, TypeVar

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import Request

from tests.support import listen, shared_key, until
from vespa.config import Origin, VastEnvironment, WorkerConfig
from vespa.testing.autoscaler import Autoscaler, autoscaler_site
from vespa.testing.model_servers import OpenAIServer, fake_site
from vespa.worker.tap import build_worker

T = TypeVar("T")

ENDPOINT = "demo-endpoint"
API_KEY = "endpoint-key-not-for-the-model"


class Recording(Resource):
    """
    Wraps a model server: records what each request carried, then lets the
    server answer it.

    :ivar received: ``(method, uri, {lower-case header name: [values]})`` per request.
    """

    isLeaf = True

    def __init__(self, inner: Resource) -> None:
        super().__init__()
        self.inner = inner
        self.received: list[tuple[bytes, bytes, dict[bytes, list[bytes]]]] = []

    def render(self, request: Request) -> bytes | int:
        headers: dict[bytes, list[bytes]] = {}
        for name, values in request.requestHeaders.getAllRawHeaders():
            headers.setdefault(name.lower(), []).extend(values)
        self.received.append((request.method, request.uri, headers))
        result: bytes | int = self.inner.render(request)
        return result


async def start_official_stack(testcase: TestCase, **overrides: Any) -> SimpleNamespace:
    """
    The autoscaler stand-in (default: url signatures), a recording fake OpenAI
    server, and a loaded worker with default settings between them; stopped
    at cleanup. The worker's public url is its loopback address, so url
    binding is on as on Vast.

    :param overrides: ``WorkerConfig`` fields to change from the defaults.
    :return: ``autoscaler``, ``autoscaler_url``, ``model`` (the fake),
        ``backend`` (its recorder), ``worker`` and ``worker_url``.
    """
    model = OpenAIServer(reactor, tokens_per_second=2000.0)
    backend = Recording(model)
    site = fake_site(model, reactor)
    site.resource = backend
    backend_port = listen(testcase, site)

    autoscaler = Autoscaler(reactor, key=shared_key(), endpoint=ENDPOINT, api_key=API_KEY)
    testcase.addCleanup(autoscaler.close)
    autoscaler_url = f"http://127.0.0.1:{listen(testcase, autoscaler_site(autoscaler))}"

    cache = testcase.mktemp()
    with open(cache, "w") as f:
        f.write("100.0")  # a measured throughput: no benchmark run at start
    config = WorkerConfig(
        backend=Origin("http", "127.0.0.1", backend_port),
        listen="tcp:0:interface=127.0.0.1",
        benchmark_cache=cache,
        metrics_listen=None,
        drain_timeout=1.0,
        vast=VastEnvironment(
            report_addresses=(autoscaler_url,),
            master_token="master-token",
            container_id=7,
        ),
    )
    for name, value in overrides.items():
        config = _replace(config, name, value)
    worker = build_worker(config, reactor)
    worker.service.startService()
    testcase.addCleanup(worker.service.stopService)
    port = await worker.port()
    worker_url = f"http://127.0.0.1:{port}"
    # What Vast tells a worker through PUBLIC_IPADDR and VAST_TCP_PORT_*: its url.
    if worker.resource.verifier is not None:
        worker.resource.verifier.own_url = worker_url
    await until(lambda: worker.state.is_loaded)
    autoscaler.register_worker(worker_url)
    return SimpleNamespace(
        autoscaler=autoscaler,
        autoscaler_url=autoscaler_url,
        model=model,
        backend=backend,
        worker=worker,
        worker_url=worker_url,
    )


def _replace(config: WorkerConfig, name: str, value: Any) -> WorkerConfig:
    from dataclasses import replace

    return replace(config, **{name: value})


def official_client(autoscaler_url: str) -> Any:
    """
    An official ``CoroutineServerless`` client that asks ``autoscaler_url`` for
    workers and never reaches the internet: its TLS context is set locally
    (it downloads Vast's root CA on first use otherwise).
    """
    from vastai.serverless.client import CoroutineServerless

    client = CoroutineServerless(api_key=API_KEY, autoscaler_url=autoscaler_url)
    client._ssl_context = ssl.create_default_context()
    return client


def official_endpoint(client: Any) -> Any:
    """The official ``Endpoint`` of :data:`ENDPOINT`, without asking the Vast console."""
    from vastai.serverless.client import Endpoint

    return Endpoint(client, name=ENDPOINT, id=1, api_key=API_KEY)


def run_official(work: Callable[[], Awaitable[T]]) -> Deferred[T]:
    """
    Run the coroutine ``work()`` on a thread with its own event loop; the
    Deferred fires with its result (or its exception) on the reactor thread.
    """

    def in_thread() -> T:
        async def main() -> T:
            return await work()

        return asyncio.run(main())

    return deferToThread(in_thread)
