# -*- test-case-name: tests.test_client_tap -*-
"""
``twistd vespa-client``: the client's options and the service tree. Wiring only.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from twisted.application.service import IService, MultiService
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.python import usage

from vespa import _typing
from vespa._typing import Service
from vespa.client.config import CLIENT_SETTINGS, ClientConfig, with_backlog
from vespa.client.core import ClientParts, build_parts
from vespa.client.resource import ClientResource
from vespa.client.tls import load_ca_file
from vespa.http.site import ProxySite
from vespa.listening import Listener
from vespa.log import get_logger, set_log_level
from vespa.reactor import install_for_daemon
from vespa.service import OrderedMultiService
from vespa.settings import ConfigError, option_lists

log = get_logger(__name__)


class Options(_typing.Options):
    """Command-line options of ``twistd vespa-client``; each also reads its environment names."""

    synopsis = "--endpoint NAME --api-key KEY [options]  (or VAST_ENDPOINT, VAST_API_KEY)"
    optParameters, optFlags = option_lists(CLIENT_SETTINGS)

    #: Where ``.vast_api_key`` is looked for; tests point it elsewhere.
    home: str | None = None
    #: The environment read; the process's when ``None``.
    environ: Mapping[str, str] | None = None

    def postOptions(self) -> None:
        environ = dict(os.environ if self.environ is None else self.environ)
        try:
            self.config = ClientConfig.from_sources(self, environ, home=self.home)
            if self.config.ca_file:
                load_ca_file(self.config.ca_file)  # a bad file is a usage error, now
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None


class _Closer(Service):
    """Closes the client's connection pools at shutdown."""

    def __init__(self, parts: ClientParts) -> None:
        self.parts = parts

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return self.parts.close()


class _KeyLookup(Service):
    """Looks the endpoint key up at start, so a bad account key shows at once."""

    def __init__(self, parts: ClientParts) -> None:
        self.parts = parts

    def startService(self) -> None:
        super().startService()
        if self.parts.keys.known:
            return

        def failed(reason: Any) -> None:
            log.error(
                "looking up the endpoint key failed: {error} (retried with the next request)",
                error=getattr(reason.value, "message", reason.getErrorMessage()),
            )

        self.parts.keys.get().addErrback(failed)


@dataclass
class Client:
    """
    The parts of a built client daemon, for twistd (``service``) and for tests.

    :ivar service: the whole service tree.
    :ivar listener: the service listening for callers.
    :ivar resource: the proxy resource.
    :ivar parts: router, dispatcher and the rest.
    """

    service: MultiService
    listener: Listener
    resource: ClientResource
    parts: ClientParts

    async def port(self) -> int:
        """The TCP port the proxy listens on, once the service has started."""
        return await self.listener.port()


def build_client(config: ClientConfig, reactor: Any, clock: Any = None) -> Client:
    """
    Build the client daemon from its config, starting nothing.

    :param config: the validated settings.
    :param reactor: for network I/O.
    :param clock: for every timer (polls, backoff, hedges, deadlines);
        ``reactor`` when ``None``. Tests pass a ``Clock``.
    :raise ConfigError: an unusable ``--ca-file``.
    """
    clock = clock or reactor
    parts = build_parts(config, reactor, clock)
    root = OrderedMultiService()
    _Closer(parts).setServiceParent(root)
    _KeyLookup(parts).setServiceParent(root)
    resource = ClientResource(parts.core, parts)
    site = ProxySite(
        resource,
        max_body_size=config.max_body_size,
        access_log=config.access_log,
        reactor=clock,
    )
    listener = Listener(serverFromString(reactor, with_backlog(config.listen)), site)
    listener.setServiceParent(root)
    log.info(
        "vespa-client on {listen} for endpoint {endpoint} via {autoscaler}",
        listen=config.listen,
        endpoint=config.endpoint,
        autoscaler=config.autoscaler_url,
    )
    return Client(root, listener, resource, parts)


def makeService(options: Options) -> IService:
    """
    The ``IServiceMaker`` entry point: build the client for twistd.
    """
    install_for_daemon()  # before anything imports twisted.internet.reactor
    from twisted.internet import reactor

    set_log_level(options.config.log_level)  # the entry point's, once
    try:
        return build_client(options.config, reactor).service
    except ConfigError as e:
        raise usage.UsageError(str(e)) from None
