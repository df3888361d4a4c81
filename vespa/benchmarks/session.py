# -*- test-case-name: tests.test_benchmarks -*-
"""
The HTTP session a benchmark uses: paths relative to the backend, kept-alive
connections, responses with ``.code``, ``.json()``, ``.content()`` and
streaming (``.collect(callback)``, or ``treq.collect(response, callback)``).

Every body read can be cancelled, and cancelling it closes the connection: the
run loop's per-request timeout cancels whatever the benchmark is waiting on,
and a backend that hangs half-way through a body must not keep a connection
(or a slot of the backend's) after the benchmark gave up on it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime

from vespa.http.stream import Collector

__all__ = ["BackendResponse", "BackendSession"]


class BackendResponse:
    """
    A response from the backend.

    It provides what ``IResponse`` does (``code``, ``phrase``, ``headers``,
    ``length``, ``deliverBody``), so ``treq.collect(response, f)`` works on it,
    plus body readers whose Deferreds close the connection when cancelled. The
    body can be read once; :meth:`content` (and so :meth:`text` and
    :meth:`json`) keep it, so those may be called again.

    :param original: the ``IResponse`` (a treq response) to wrap.
    """

    def __init__(self, original: Any) -> None:
        self.original = original
        self.code: int = original.code
        self.phrase: bytes = original.phrase
        self.headers: Any = original.headers
        self.length: Any = original.length
        self._body: bytes | None = None
        self._claimed = False

    def deliverBody(self, protocol: Any) -> None:
        """
        Deliver the body to ``protocol`` (``IResponse.deliverBody``).
        """
        if self._claimed:
            raise RuntimeError("the body of this response was already read")
        self._claimed = True
        self.original.deliverBody(protocol)

    def collect(self, collector: Callable[[bytes], None]) -> Deferred[None]:
        """
        Call ``collector`` with each chunk of the body as it arrives.

        :return: fires when the body has ended; cancelling it (or an exception
            from ``collector``) closes the connection.
        """
        protocol = Collector(collector)
        finished = protocol.finished
        assert finished is not None
        self.deliverBody(protocol)
        return finished

    def content(self) -> Deferred[bytes]:
        """
        The whole body.
        """
        if self._body is not None:
            return succeed(self._body)
        parts: list[bytes] = []

        def joined(_: None) -> bytes:
            self._body = b"".join(parts)
            return self._body

        return self.collect(parts.append).addCallback(joined)

    def text(self, encoding: str = "utf-8") -> Deferred[str]:
        """
        The whole body, decoded (undecodable bytes replaced).
        """
        return self.content().addCallback(lambda body: body.decode(encoding, "replace"))

    def json(self) -> Deferred[Any]:
        """
        The whole body, parsed as JSON.

        :return: fails with ``ValueError`` when the body is not JSON.
        """

        def parse(body: bytes) -> Any:
            return json.loads(body)

        return self.content().addCallback(parse)


class BackendSession:
    """
    Requests to one backend, for benchmarks and health checks.

    :param http: a ``treq.client.HTTPClient`` (its agent's pool is reused).
    :param base_url: the backend origin, e.g. ``http://127.0.0.1:8000``.
    :param clock: for timing measurements (``session.clock.seconds()``) and
        request timeouts.
    """

    def __init__(self, http: Any, base_url: str, clock: IReactorTime) -> None:
        self.http = http
        self.base_url = base_url.rstrip("/")
        self.clock = clock
        self._pool: Any = None

    @classmethod
    def create(
        cls,
        reactor: Any,
        base_url: str,
        *,
        clock: IReactorTime | None = None,
        max_connections: int = 32,
    ) -> BackendSession:
        """
        A session with a pool of its own, keeping up to ``max_connections``
        connections alive (the default pool keeps only two, which would make
        a concurrent benchmark reconnect on every request). :meth:`close`
        closes them.

        :param reactor: for connections (and for time, unless ``clock``).
        :param base_url: the backend origin.
        """
        from treq.client import HTTPClient
        from twisted.web.client import Agent, HTTPConnectionPool

        pool = HTTPConnectionPool(reactor, persistent=True)
        pool.maxPersistentPerHost = max_connections
        session = cls(HTTPClient(Agent(reactor, pool=pool)), base_url, clock or reactor)
        session._pool = pool
        return session

    def close(self) -> Deferred[None]:
        """
        Close the kept-alive connections of a session made by :meth:`create`.
        """
        if self._pool is None:
            return succeed(None)
        d: Deferred[None] = self._pool.closeCachedConnections()
        return d

    def request(self, method: str, path: str, **kwargs: Any) -> Deferred[BackendResponse]:
        """
        Send a request to ``path`` on the backend; keyword arguments as
        treq's (``json=``, ``data=``, ``headers=``, ``params=``).

        :return: fires with the response once its headers have arrived;
            cancelling it closes the connection.
        """
        if not path.startswith("/"):
            path = "/" + path
        d: Deferred[Any] = self.http.request(method, self.base_url + path, **kwargs)
        return d.addCallback(BackendResponse)

    def get(self, path: str, **kwargs: Any) -> Deferred[BackendResponse]:
        """``GET path``."""
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> Deferred[BackendResponse]:
        """``POST path`` (``json=`` sends a JSON body)."""
        return self.request("POST", path, **kwargs)
