"""
The relay's Python cost per relayed SSE event and per relayed POST, in-process.

The worker's HTTP layer with no sockets and no reactor: a
:class:`~vespa.http.site.ProxySite` on a ``StringTransport`` and a ``Clock``,
a resource relaying to :class:`~vespa.http.relay.BackendRelay`, whose backend
connection is a :class:`~vespa.http.backend_client.BackendConnection` on a
``StringTransport`` too (no worker resource: ``render_cost.py`` measures that
part).

- *per event*: one stream; the backend's chunked response is fed to its
  connection one event per read, as the reactor hands it over under load.
  Timed: every Python call from the backend connection's ``dataReceived`` to
  the caller's transport, the per-event cost above the reactor and sockets.
- *per POST*: a small POST on a kept-alive caller connection, relayed, and
  nginx's answer (60 bytes of JSON) fed back in one read: the site, the relay
  and the backend client for one exchange, above the reactor and sockets.

Run it with two trees in turn and compare the minima::

    PYTHONPATH=/work/main .tox/tests/bin/python benchmarks/relay_cost.py
    PYTHONPATH=$PWD .tox/tests/bin/python benchmarks/relay_cost.py
"""

from __future__ import annotations

import sys
import timeit
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.web.server import NOT_DONE_YET, Request

from vespa._typing import Resource
from vespa.http.endpoints import Origin
from vespa.http.relay import BackendRelay
from vespa.http.site import ProxySite

EVENT = b'data: {"choices":[{"delta":{"content":"token"}}],"id":"chatcmpl-123456"}\n\n'
CHUNK = b"%x\r\n%s\r\n" % (len(EVENT), EVENT)
HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
)
REQUEST = b"POST /sse HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\n\r\n{}"
POST_BODY = b'{"model":"bench","prompt":"hello","max_tokens":16}'
POST = (
    b"POST /generate HTTP/1.1\r\nHost: 127.0.0.1:3000\r\nUser-Agent: wrk\r\nAccept: */*\r\n"
    b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(POST_BODY), POST_BODY)
)
ANSWER_BODY = b'{"id":"cmpl-1","object":"text_completion","choices":[],"x":1}'
ANSWER = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Mon, 30 Nov 2026 09:40:00 GMT\r\n"
    b"Content-Type: application/json\r\nContent-Length: %d\r\nConnection: keep-alive\r\n\r\n%s"
    % (len(ANSWER_BODY), ANSWER_BODY)
)


class _Endpoint:
    """Connects the pool's connections to a ``StringTransport`` at once."""

    def __init__(self) -> None:
        self.connections: list[Any] = []

    def connect(self, factory: Factory) -> Deferred[Any]:
        protocol = factory.buildProtocol(None)
        assert protocol is not None
        protocol.makeConnection(StringTransport())
        self.connections.append(protocol)
        return succeed(protocol)


class _Relay(Resource):
    isLeaf = True

    def __init__(self, relay: BackendRelay) -> None:
        super().__init__()
        self.relay = relay

    def render(self, request: Request) -> int:
        self.relay.forward(request, request.uri)
        return NOT_DONE_YET


def _worker() -> tuple[Clock, _Endpoint, Any, StringTransport]:
    """A site relaying to a backend on string transports, and a caller connected to it."""
    clock = Clock()
    endpoint = _Endpoint()
    relay = BackendRelay(clock, Origin("http", "127.0.0.1", 8000), endpoint=endpoint, clock=clock)  # type: ignore[arg-type]
    site = ProxySite(_Relay(relay), reactor=clock, header_timeout=15.0, keepalive_timeout=60.0)
    caller = site.buildProtocol(None)
    caller_transport = StringTransport()
    caller.makeConnection(caller_transport)
    return clock, endpoint, caller, caller_transport


def per_event(count: int = 100_000, runs: int = 7) -> float:
    """The fastest run's microseconds per relayed event, ``count`` events a run."""
    _, endpoint, caller, caller_transport = _worker()
    caller.dataReceived(REQUEST)
    backend = endpoint.connections[0]
    backend.dataReceived(HEAD)

    def run() -> None:
        for i in range(count):
            backend.dataReceived(CHUNK)
            if i % 1000 == 0:
                caller_transport.clear()

    best = min(timeit.repeat(run, "gc.enable()", number=1, repeat=runs)) / count * 1e6
    assert caller_transport.value().endswith(CHUNK), "the events did not reach the caller"
    return best


def per_post(count: int = 20_000, runs: int = 7) -> float:
    """The fastest run's microseconds per relayed POST, ``count`` POSTs a run."""
    clock, endpoint, caller, caller_transport = _worker()

    def run() -> None:
        for i in range(count):
            caller.dataReceived(POST)
            backend = endpoint.connections[-1]  # the same one, kept alive, after the first
            backend.transport.clear()
            backend.dataReceived(ANSWER)
            if i % 100 == 0:
                caller_transport.clear()
                clock.advance(0.01)

    best = min(timeit.repeat(run, "gc.enable()", number=1, repeat=runs)) / count * 1e6
    assert caller_transport.value().endswith(ANSWER_BODY), "the answers did not reach the caller"
    assert len(endpoint.connections) == 1, "the backend connection was not kept alive"
    return best


if __name__ == "__main__":
    print(f"{per_event():.3f} us per event (Python, above the reactor and the sockets)")
    print(f"{per_post():.2f} us per POST (Python, above the reactor and the sockets)")
    sys.exit(0)
