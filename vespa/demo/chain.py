# -*- test-case-name: tests.test_demo,tests.test_worker_tap -*-
"""
The services of the demo chain, built from the worker's config.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from twisted.application import strports
from twisted.application.service import IService, MultiService
from twisted.internet.interfaces import IReactorTime
from twisted.logger import LogLevel
from twisted.web.server import Site

from vespa.client.config import ClientConfig
from vespa.client.tap import build_client
from vespa.config import WorkerConfig
from vespa.testing.autoscaler import Autoscaler, autoscaler_site
from vespa.testing.model_servers import OpenAIServer, fake_site

#: Where the demo runs the autoscaler stand-in (``REPORT_ADDR``'s default).
AUTOSCALER_PORT = 8080
#: Where the demo runs the client, unless ``VESPA_CLIENT_PORT`` says otherwise.
CLIENT_LISTEN = "tcp:8010:interface=127.0.0.1"
#: The model the demo's model server serves.
MODEL = "vespa-demo"
#: The demo model's speed: slow enough to watch a stream arrive.
TOKENS_PER_SECOND = 50.0


def demo_site(clock: IReactorTime | None = None) -> Site:
    """
    The demo's model server: the fake OpenAI-compatible server serving
    :data:`MODEL` at :data:`TOKENS_PER_SECOND`, without an access log.

    :param clock: paces generation; the global reactor when ``None``.
    """
    return fake_site(OpenAIServer(clock, model=MODEL, tokens_per_second=TOKENS_PER_SECOND))


def demo_client(
    reactor: Any,
    autoscaler_url: str,
    *,
    endpoint: str = "demo-endpoint",
    api_key: str = "demo-key",
    listen: str = CLIENT_LISTEN,
    log_level: LogLevel = LogLevel.info,
    clock: Any = None,
) -> IService:
    """
    The client for the demo chain: in front of the autoscaler stand-in, with
    its endpoint and key, on 127.0.0.1:8010.

    :param reactor: for network I/O.
    :param autoscaler_url: the stand-in's URL.
    :param endpoint: the stand-in's endpoint name.
    :param api_key: the stand-in's key.
    :param listen: where to listen.
    :param log_level: the worker's, so the demo's client does not change it.
    :param clock: for timers; ``reactor`` if ``None``.
    """
    config = ClientConfig(
        endpoint=endpoint,
        api_key=api_key,
        autoscaler_url=autoscaler_url,
        listen=listen,
        log_level=log_level,
    )
    return build_client(config, reactor, clock).service


def demo_services(
    config: WorkerConfig, reactor: Any, environ: Mapping[str, str]
) -> tuple[MultiService, Autoscaler | None]:
    """
    The demo model server on the ``--backend-url`` port and, when
    ``REPORT_ADDR`` is an http address on 127.0.0.1, the autoscaler stand-in
    there and the client in front of it.

    :param config: the worker's config, ``demo`` set.
    :param reactor: for network I/O and the model server's pace.
    :param environ: where ``VESPA_CLIENT_PORT`` is read.
    :return: the services, not started, and the stand-in if it runs.
    """
    demo = MultiService()
    backend = config.backend
    strports.service(
        f"tcp:{backend.port}:interface={backend.host}", demo_site(reactor)
    ).setServiceParent(demo)
    address = urlsplit(config.vast.report_addresses[0] if config.vast.report_addresses else "")
    if not (address.scheme == "http" and address.hostname == "127.0.0.1" and address.port):
        return demo, None
    autoscaler = Autoscaler(reactor)
    strports.service(
        f"tcp:{address.port}:interface=127.0.0.1", autoscaler_site(autoscaler)
    ).setServiceParent(demo)
    # And the client in front of it, so `curl localhost:8010/...` works at once.
    client_port = environ.get("VESPA_CLIENT_PORT")
    listen = CLIENT_LISTEN if client_port is None else f"tcp:{client_port}:interface=127.0.0.1"
    demo_client(
        reactor,
        f"http://127.0.0.1:{address.port}",
        listen=listen,
        log_level=config.log_level,
    ).setServiceParent(demo)
    return demo, autoscaler
