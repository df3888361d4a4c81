# -*- test-case-name: tests.test_worker_relay,tests.test_client_upstream,tests.test_config -*-
"""
Where HTTP goes: origins, client endpoints and the kept-alive connection pool.

The worker's relay reaches one backend, fixed at start
(:func:`backend_endpoint`, through :mod:`vespa.http.backend_pool`); the
client reaches whichever worker the autoscaler names
(:class:`WorkerEndpoints`, cached per origin, through a :func:`quiet_pool`
sized to its concurrency). Both connect with ``TCP_NODELAY`` (small SSE
events must not wait).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    wrapClientTLS,
)
from twisted.internet.interfaces import IProtocolFactory, IStreamClientEndpoint, ITCPTransport
from twisted.internet.ssl import optionsForClientTLS
from twisted.web.client import HTTPConnectionPool, _HTTP11ClientFactory
from twisted.web.iweb import IAgentEndpointFactory, IPolicyForHTTPS
from zope.interface import implementer

#: Worker endpoints cached at most; workers come and go, the cache is cleared when full.
_ENDPOINT_CACHE = 1024


@dataclass(frozen=True)
class Origin:
    """
    A backend's origin: scheme, host and port, and nothing else.

    :ivar scheme: ``http`` or ``https``.
    :ivar host: a host name or an IP address (IPv6 without brackets).
    :ivar port: the TCP port.
    """

    scheme: str
    host: str
    port: int

    @property
    def netloc(self) -> str:
        """The ``Host`` header value: the port is left out when it is the default."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"

    @property
    def url(self) -> str:
        """The origin as a URL, without a trailing slash."""
        return f"{self.scheme}://{self.netloc}"

    @property
    def is_ip(self) -> bool:
        """True when the host is an IP address literal."""
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return True


def parse_origin(text: str) -> Origin:
    """
    Parse an origin URL such as ``http://127.0.0.1:8000``.

    A path (other than ``/``), query, fragment or user info is refused: the
    backend receives the caller's own path, so a base path would be ambiguous.
    """
    try:
        parts = urlsplit(text.strip())
        port = parts.port
    except ValueError as e:
        raise ValueError(f"not a URL: {text!r} ({e})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected an origin like http://127.0.0.1:8000, got {text!r}")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(
            f"must be an origin without a path, got {text!r}: the caller's path is "
            "appended as it is"
        )
    if parts.username or parts.password:
        raise ValueError("must not carry user info")
    if port is None:
        port = 443 if parts.scheme == "https" else 80
    elif not 1 <= port <= 65535:
        raise ValueError(f"port {port} is out of range (1-65535)")
    return Origin(parts.scheme, parts.hostname, port)


class _QuietClientFactory(_HTTP11ClientFactory):
    """The pool's connection factory, without a log line per backend connection."""

    noisy = False


def quiet_pool(
    reactor: Any, *, keepalive: float | None, max_connections: int
) -> HTTPConnectionPool:
    """
    A connection pool that keeps ``max_connections`` idle connections for
    ``keepalive`` seconds (none when ``None``) and logs nothing per connection.

    Twisted's default of 2 idle connections per host halves throughput under
    concurrency; keep ``keepalive`` below the server's own keep-alive timeout,
    because a POST on a connection the server has just closed cannot be
    retried safely.
    """
    pool = HTTPConnectionPool(reactor, persistent=keepalive is not None)
    pool._factory = _QuietClientFactory
    pool.maxPersistentPerHost = max_connections
    # Typed int in Twisted, but it only goes to callLater: fractions work.
    pool.cachedConnectionTimeout = keepalive or 0  # type: ignore[assignment]
    pool.retryAutomatically = True  # idempotent methods only, once
    return pool


@implementer(IStreamClientEndpoint)
class _NoDelayEndpoint:
    """Sets ``TCP_NODELAY`` on each new connection: small SSE events must not wait."""

    def __init__(self, inner: IStreamClientEndpoint) -> None:
        self._inner = inner

    def connect(self, factory: IProtocolFactory) -> Deferred[Any]:
        def no_delay(protocol: Any) -> Any:
            transport = protocol.transport
            if ITCPTransport.providedBy(transport):
                transport.setTcpNoDelay(True)
            return protocol

        return self._inner.connect(factory).addCallback(no_delay)


def backend_endpoint(
    reactor: Any, origin: Origin, connect_timeout: float | None
) -> IStreamClientEndpoint:
    """
    The endpoint for ``origin``: TCP (TLS for https), with ``TCP_NODELAY``.

    :param reactor: the reactor to connect with.
    :param origin: the backend.
    :param connect_timeout: seconds to connect, or ``None`` for an hour.
    """
    timeout = connect_timeout or 3600.0
    tcp: IStreamClientEndpoint
    if origin.is_ip and ":" in origin.host:
        tcp = TCP6ClientEndpoint(reactor, origin.host, origin.port, timeout=timeout)
    elif origin.is_ip:
        tcp = TCP4ClientEndpoint(reactor, origin.host, origin.port, timeout=timeout)
    else:
        tcp = HostnameEndpoint(reactor, origin.host, origin.port, timeout=timeout)
    endpoint: IStreamClientEndpoint = _NoDelayEndpoint(tcp)
    if origin.scheme == "https":
        endpoint = wrapClientTLS(optionsForClientTLS(origin.host), endpoint)
    return endpoint


@implementer(IAgentEndpointFactory)
class WorkerEndpoints:
    """
    Endpoints per worker origin, built once (building one costs an IDNA
    encoding): TCP with no delay, TLS verified by ``tls`` for https.

    :param reactor: provides TCP.
    :param tls: verifies ``https`` workers.
    :param connect_timeout: seconds to connect, or ``None`` for an hour.
    """

    def __init__(self, reactor: Any, tls: IPolicyForHTTPS, connect_timeout: float | None) -> None:
        self._reactor = reactor
        self._tls = tls
        self._timeout = connect_timeout
        self._cache: dict[tuple[bytes, str, int], IStreamClientEndpoint] = {}

    def endpointForURI(self, uri: Any) -> IStreamClientEndpoint:
        host = uri.host.decode("idna") if isinstance(uri.host, bytes) else str(uri.host)
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        key = (uri.scheme, host, int(uri.port))
        endpoint = self._cache.get(key)
        if endpoint is None:
            if len(self._cache) >= _ENDPOINT_CACHE:
                self._cache.clear()
            endpoint = backend_endpoint(self._reactor, Origin("http", host, key[2]), self._timeout)
            if uri.scheme == b"https":
                creator = self._tls.creatorForNetloc(host.encode("idna"), key[2])
                endpoint = wrapClientTLS(creator, endpoint)
            self._cache[key] = endpoint
        return endpoint
