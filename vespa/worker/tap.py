# -*- test-case-name: tests.test_worker_tap -*-
"""
``twistd vespa``: the worker's options and the service tree. Wiring only.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.application import strports
from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred
from twisted.python import usage

from vespa.config import WORKER_SETTINGS, ConfigError, WorkerConfig
from vespa.log import get_logger, set_log_level
from vespa.proxy.relay import BackendRelay, RelayTimeouts
from vespa.proxy.site import ProxySite
from vespa.proxy.target import PathBlocklist
from vespa.worker.resource import WorkerResource

log = get_logger(__name__)


class Options(usage.Options):
    """Command-line options of ``twistd vespa``; each also reads ``VESPA_*``/``PYWORKER_*``."""

    synopsis = "[options]  (e.g. twistd -n vespa --backend-url http://127.0.0.1:8000)"
    optParameters = [[s.name, None, None, s.option_help()] for s in WORKER_SETTINGS if not s.flag]
    optFlags = [[s.name, None, s.option_help()] for s in WORKER_SETTINGS if s.flag]

    def postOptions(self) -> None:
        try:
            self.config = WorkerConfig.from_sources(self, os.environ)
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None


class _RelayService(Service):
    """Closes the relay's idle backend connections at shutdown."""

    def __init__(self, relay: BackendRelay) -> None:
        self.relay = relay

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return self.relay.close()


def build_worker(config: WorkerConfig, reactor: Any) -> MultiService:
    """
    Build the worker's service tree from its config, starting nothing.

    :param config: the validated settings.
    :param reactor: the reactor everything runs on.
    """
    set_log_level(config.log_level)
    root = MultiService()
    if config.demo:
        from vespa.testing.demo_backend import demo_site

        backend = config.backend
        strports.service(
            f"tcp:{backend.port}:interface={backend.host}", demo_site(reactor)
        ).setServiceParent(root)
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
    )
    _RelayService(relay).setServiceParent(root)
    resource = WorkerResource(relay, PathBlocklist(config.blocked_paths))
    site = ProxySite(
        resource,
        max_body_size=config.max_body_size,
        access_log=config.access_log,
        reactor=reactor,
    )
    strports.service(config.listen, site, reactor=reactor).setServiceParent(root)
    log.info(
        "Vespa worker on {listen}, relaying to {backend}{demo}",
        listen=config.listen,
        backend=config.backend.url,
        demo=" (demo model server)" if config.demo else "",
    )
    return root


def makeService(options: Options) -> IService:
    """
    The ``IServiceMaker`` entry point: build the worker for twistd.
    """
    from twisted.internet import reactor

    return build_worker(options.config, reactor)
