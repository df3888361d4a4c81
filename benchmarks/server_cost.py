"""
twisted.web's server-side cost per kept-alive POST, in-process.

A :class:`~vespa.http.site.ProxySite` on a ``StringTransport`` and a
``Clock`` (no sockets, no reactor), with a resource that answers at once:
what is left is the site's own work per request (reading the head and body,
the ``Request``, deadlines, writing the response, keep-alive). Run it with
two trees in turn and compare the minima::

    PYTHONPATH=/work/main .tox/tests/bin/python benchmarks/server_cost.py
    PYTHONPATH=$PWD .tox/tests/bin/python benchmarks/server_cost.py
"""

from __future__ import annotations

import json
import sys
import timeit

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.web.server import Request

from vespa._typing import Resource
from vespa.http.site import ProxySite

BODY = json.dumps(
    {"auth_data": {"cost": 1, "endpoint": "x", "reqnum": 1, "url": ""}, "payload": {"p": "hi"}}
).encode()
REQUEST = (
    b"POST /generate HTTP/1.1\r\nHost: 127.0.0.1:3000\r\nUser-Agent: wrk\r\nAccept: */*\r\n"
    b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % (len(BODY),)
) + BODY


class _Answer(Resource):
    isLeaf = True

    def render(self, request: Request) -> bytes:
        assert request.content is not None
        request.content.read()
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"content-length", b"11")
        return b'{"ok":true}'


def per_request(count: int = 20000, runs: int = 7) -> float:
    """The fastest run's microseconds per request, ``count`` requests a run."""
    clock = Clock()
    site = ProxySite(_Answer(), reactor=clock, header_timeout=15.0, keepalive_timeout=60.0)
    connection = site.buildProtocol(None)
    transport = StringTransport()
    connection.makeConnection(transport)

    def run() -> None:
        for i in range(count):
            connection.dataReceived(REQUEST)
            if i % 100 == 0:
                transport.clear()
                clock.advance(0.01)

    return min(timeit.repeat(run, "gc.enable()", number=1, repeat=runs)) / count * 1e6


if __name__ == "__main__":
    print(f"{per_request():.2f} us per request")
    sys.exit(0)
