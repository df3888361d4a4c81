# -*- test-case-name: tests.test_benchmarks -*-
"""
The HTTP session a benchmark uses: paths relative to the backend, kept-alive
connections, treq responses (``.code``, ``.json()``, ``.content()``, streaming
with ``treq.collect``).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime


class BackendSession:
    """
    Requests to one backend, for benchmarks and health checks.

    :param http: a ``treq.client.HTTPClient`` (its agent's pool is reused).
    :param base_url: the backend origin, e.g. ``http://127.0.0.1:8000``.
    :param clock: for timing measurements (``session.clock.seconds()``).
    """

    def __init__(self, http: Any, base_url: str, clock: IReactorTime) -> None:
        self.http = http
        self.base_url = base_url.rstrip("/")
        self.clock = clock

    def request(self, method: str, path: str, **kwargs: Any) -> Deferred[Any]:
        """
        Send a request to ``path`` on the backend; keyword arguments as treq's.
        """
        if not path.startswith("/"):
            path = "/" + path
        d: Deferred[Any] = self.http.request(method, self.base_url + path, **kwargs)
        return d

    def get(self, path: str, **kwargs: Any) -> Deferred[Any]:
        """``GET path``."""
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> Deferred[Any]:
        """``POST path`` (``json=`` sends a JSON body)."""
        return self.request("POST", path, **kwargs)
