# -*- test-case-name: tests.test_worker_tap -*-
"""
``twistd vespa``: the worker's options and the service tree. Wiring only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Any

import treq
from twisted.application.service import IService, MultiService
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python import usage
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.iweb import IAgent
from twisted.web.server import Site

from vespa import __version__, _typing
from vespa._typing import Service
from vespa.benchmarks import BenchmarkError, built_in_name, load_benchmark
from vespa.config import WORKER_SETTINGS, ConfigError, WorkerConfig, listen_port
from vespa.fdlimit import connection_budget, raise_fd_limit
from vespa.http.authorized import AuthorizedAgent
from vespa.http.endpoints import quiet_pool
from vespa.http.relay import BackendRelay, RelayTimeouts
from vespa.http.site import ProxySite
from vespa.http.target import PathBlocklist
from vespa.listening import Listener
from vespa.log import get_logger, set_log_level
from vespa.protocol.reports import WorkerIdentity
from vespa.reactor import install_for_daemon
from vespa.service import OrderedMultiService
from vespa.settings import option_lists
from vespa.tls import server_options
from vespa.worker.admission import Admission
from vespa.worker.drain import Drain
from vespa.worker.health import HealthChecker, HealthRoute
from vespa.worker.ledger import Ledger
from vespa.worker.reporter import Reporter, ReportSettings
from vespa.worker.resource import WorkerResource
from vespa.worker.sessions import SessionEndResource, Sessions
from vespa.worker.startup import BenchmarkCache, Startup, health_check
from vespa.worker.state import WorkerState
from vespa.worker.workload import Workload, WorkloadError

log = get_logger(__name__)

#: Where the public key comes from when ``REPORT_ADDR`` is not set.
DEFAULT_AUTOSCALER = "https://run.vast.ai"

VERSION = f"vespa-{__version__}"

class Options(_typing.Options):
    """Command-line options of ``twistd vespa``; each also reads ``VESPA_*``/``PYWORKER_*``."""

    synopsis = "[options]  (e.g. twistd -n vespa --backend-url http://127.0.0.1:8000)"
    optParameters, optFlags = option_lists(WORKER_SETTINGS)

    def postOptions(self) -> None:
        environ = dict(os.environ)
        if self["demo"] or environ.get("VESPA_DEMO", "").lower() in ("1", "true", "yes", "on"):
            from vespa.demo import AUTOSCALER_PORT

            environ.setdefault("REPORT_ADDR", f"http://127.0.0.1:{AUTOSCALER_PORT}")
            # The demo model server makes 50 tokens/s: a short benchmark keeps
            # the demo's startup to a second.
            environ.setdefault("VESPA_BENCHMARK_MAX_TOKENS", "16")
            environ.setdefault("VESPA_BENCHMARK_RUNS", "1")
        try:
            config = WorkerConfig.from_sources(self, environ)
            # A benchmark that cannot load is a mistake to fix now, not a
            # failure to retry every 30 s.
            load_benchmark(config.benchmark, environ)
            Workload(config.workload, config.benchmark)
        except (ConfigError, BenchmarkError, WorkloadError) as e:
            raise usage.UsageError(str(e)) from None
        if (
            config.log_format == "json"
            and self.parent is not None
            and not self.parent.get("logger")
        ):
            # twistd builds its log observer from --logger after parsing options.
            self.parent["logger"] = "vespa.log.json_observer"
        if config.demo and config.vast.public_url is None:
            # The demo's autoscaler routes callers to this worker's own address.
            port = listen_port(config.listen)
            config = replace(
                config, vast=replace(config.vast, public_url=f"http://127.0.0.1:{port}")
            )
        self.config = config


class _PoolCloser(Service):
    """Closes the relay's and the connection pools' idle connections at shutdown."""

    def __init__(self, relay: BackendRelay, *pools: HTTPConnectionPool) -> None:
        self.relay = relay
        self.pools = pools

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        from twisted.internet.defer import DeferredList

        closed = [pool.closeCachedConnections() for pool in self.pools]
        return DeferredList([self.relay.close(), *closed])


def _http(
    reactor: Any, connections: int, authorization: bytes | None = None
) -> tuple[Any, HTTPConnectionPool]:
    pool = quiet_pool(reactor, keepalive=4.0, max_connections=connections)
    agent: IAgent = Agent(reactor, pool=pool)
    if authorization is not None:
        agent = AuthorizedAgent(agent, authorization)
    return treq.client.HTTPClient(agent), pool


def _backend_authorization(config: WorkerConfig) -> bytes | None:
    """``Authorization`` for the model server: ``--backend-api-key`` as a bearer key."""
    if config.backend_api_key is None:
        return None
    return b"Bearer " + config.backend_api_key.encode()


@dataclass
class Worker:
    """
    The parts of a built worker, for twistd (``service``) and for tests.

    :ivar service: the whole service tree; starting it starts everything.
    :ivar listener: the service listening for requests.
    """

    service: MultiService
    listener: Listener
    resource: WorkerResource
    state: WorkerState
    ledger: Ledger
    startup: Startup
    health: HealthChecker
    reporter: Reporter
    autoscaler: Any = None
    sessions: Sessions | None = None
    session_listener: Listener | None = None

    async def port(self) -> int:
        """The TCP port the worker listens on, once the service has started."""
        return await self.listener.port()

    async def session_port(self) -> int:
        """The port of the plain-HTTP ``/session/end`` listener, once started."""
        assert self.session_listener is not None, "no --session-listen"
        return await self.session_listener.port()


def build_relay(config: WorkerConfig, reactor: Any, clock: Any = None) -> BackendRelay:
    """
    The relay to the backend, as the config sets it up.
    """
    return BackendRelay(
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
        # The caller's key is the endpoint's, for the autoscaler: never the model server's.
        drop_authorization=not config.unsecured,
        authorization=_backend_authorization(config),
    )


def build_worker(config: WorkerConfig, reactor: Any, clock: Any = None) -> Worker:
    """
    Build the worker from its config, starting nothing.

    :param config: the validated settings.
    :param reactor: the reactor for network I/O.
    :param clock: for every timer (reports, health checks, deadlines);
        ``reactor`` when ``None``. Tests pass a ``Clock``.
    """
    clock = clock or reactor
    # Stopped in reverse order, one at a time: the listener, the reporter's
    # last flush, the startup chain, the pools, then the demo servers.
    root = OrderedMultiService()
    vast = config.vast
    autoscaler = None
    if config.demo:
        # Imported only here: the demo is the one package with the client and
        # the fakes in it, and no production path needs it.
        from vespa.demo import demo_services

        demo, autoscaler = demo_services(config, reactor, os.environ)
        demo.setServiceParent(root)

    state = WorkerState(clock)
    ledger = Ledger(now=clock.seconds)
    verifier = None
    if not config.unsecured:
        # Imported only here: an unsecured worker has no RSA code in memory.
        from vespa.protocol.signing import SignatureVerifier

        verifier = SignatureVerifier(
            mode=config.signature_mode,
            replay_window=config.replay_window,
            own_url=vast.public_url,
            bind_url=config.url_binding,
        )
    relay = build_relay(config, reactor, clock)
    # The worker's own calls (health, benchmark, on_close) carry the model
    # server's key as the relayed requests do.
    backend_http, backend_pool = _http(reactor, 32, _backend_authorization(config))
    report_http, report_pool = _http(reactor, 4)
    _PoolCloser(relay, backend_pool, report_pool).setServiceParent(root)

    route = HealthRoute(
        config.backend.url, config.healthcheck_endpoint, built_in_name(config.benchmark)
    )
    health = HealthChecker(
        clock,
        state,
        health_check(backend_http, route, clock, config.healthcheck_timeout),
        interval=config.healthcheck_interval,
        threshold=config.healthcheck_failures,
    )
    pubkey_base = vast.report_addresses[0] if vast.report_addresses else DEFAULT_AUTOSCALER
    startup = Startup(
        clock,
        state,
        backend_http,
        config.backend.url,
        health,
        benchmark=config.benchmark,
        cache=BenchmarkCache(config.benchmark_cache),
        verifier=verifier,
        pubkey_url=pubkey_base + "/pubkey/",
        settings=config,
        route=route,
    )
    startup.setServiceParent(root)

    # Built even without REPORT_ADDR: with no address it sends nothing (and
    # says so once) and acknowledges everything, so the ledger stays drained.
    reporter = Reporter(
        clock,
        report_http,
        ReportSettings(
            addresses=vast.report_addresses,
            interval=config.report_interval,
            heartbeat=config.report_heartbeat,
            timeout=config.report_timeout,
            delete_format=config.delete_requests_format,
        ),
        WorkerIdentity(
            worker_id=vast.container_id,
            mtoken=vast.master_token,
            url=vast.public_url or "",
            version=VERSION,
        ),
        state,
        ledger,
    )
    reporter.setServiceParent(root)

    admission = Admission(max_wait_time=config.max_wait_time, slots=config.slots)
    metrics = None
    if config.metrics_listen is not None:
        # Imported only here: without a metrics port, no prometheus_client in
        # memory and no histogram observed per request.
        from vespa.worker.metrics import WorkerMetrics

        metrics = WorkerMetrics(ledger, state, admission, health, reporter)
        # Not through strports: a busy metrics port is logged, never fatal.
        Listener(
            serverFromString(reactor, config.metrics_listen),
            _quiet_site(metrics.resource(), clock),
            fatal=False,
        ).setServiceParent(root)
    sessions = Sessions(
        clock, ledger, backend_http, config.backend.url, max_sessions=config.max_sessions
    )
    resource = WorkerResource(
        relay,
        state=state,
        ledger=ledger,
        admission=admission,
        metrics=metrics,
        verifier=verifier,
        blocklist=PathBlocklist(config.blocked_paths),
        workload=Workload(config.workload, config.benchmark, config.default_cost),
        sessions=sessions,
        reactor=reactor,
    )
    site = ProxySite(
        resource,
        max_body_size=config.max_body_size,
        access_log=config.access_log,
        reactor=clock,
        header_timeout=config.header_timeout,
        keepalive_timeout=config.keepalive_timeout,
        max_connections=connection_budget(raise_fd_limit()),
    )
    factory: Any = site
    if config.use_ssl:
        factory = TLSMemoryBIOFactory(server_options(config.tls_cert, config.tls_key), False, site)
    session_listener = None
    session_listen = config.session_listen()
    if session_listen is not None:
        # Plain HTTP even with --use-ssl: it is for processes on this machine.
        # Not through strports: a busy port is logged, never fatal. Before the
        # main listener, so a worker that accepts requests has it too.
        session_listener = Listener(
            serverFromString(reactor, session_listen),
            ProxySite(SessionEndResource(sessions), max_body_size=1 << 20, reactor=clock),
            fatal=False,
        )
        session_listener.setServiceParent(root)
    listener = Listener(serverFromString(reactor, config.listen), factory)
    listener.setServiceParent(root)
    # Added last but for the sessions, so it stops next to first: nothing else
    # stops until the drain is over. It runs on the reactor's own time even in
    # tests: shutting down is real.
    Drain(reactor, state, ledger, config.drain_timeout, reactor).setServiceParent(root)
    # Last, so it stops first: open sessions close (idle ones at once, busy
    # ones with their last request) rather than hold the drain to their expiry.
    sessions.setServiceParent(root)
    log.info(
        "Vespa worker on {listen}{tls}, relaying to {backend} ({mode}){demo}",
        listen=config.listen,
        tls=" (TLS)" if config.use_ssl else "",
        backend=config.backend.url,
        mode="unsecured" if config.unsecured else f"signatures: {config.signature_mode}",
        demo=" with the demo model server and autoscaler stand-in" if config.demo else "",
    )
    return Worker(
        root,
        listener,
        resource,
        state,
        ledger,
        startup,
        health,
        reporter,
        autoscaler,
        sessions,
        session_listener,
    )


def _quiet_site(resource: Any, clock: Any) -> Site:
    site = Site(resource, reactor=clock)
    site.noisy = False
    site.log = lambda request: None  # type: ignore[method-assign]
    return site


def makeService(options: Options) -> IService:
    """
    The ``IServiceMaker`` entry point: build the worker for twistd.
    """
    import gc

    install_for_daemon()  # before anything imports twisted.internet.reactor
    from twisted.internet import reactor

    # Logging is the entry point's to set up, once: the builders leave it be,
    # so the demo's client cannot change the worker's level.
    set_log_level(options.config.log_level)
    service = build_worker(options.config, reactor).service
    # Everything imported and built so far lives as long as the process: keep
    # it out of the cycle collector's scans, which otherwise cost tens of ms
    # per full collection under load.
    gc.freeze()
    return service
