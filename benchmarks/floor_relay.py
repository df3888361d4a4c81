"""
The floor under any relay on Twisted's reactor: bytes from a socket to a
socket, nothing else.

A TCP relay with no HTTP at all. Each accepted connection gets its own
connection to the backend; what one side sends is written to the other as
it arrives (to the caller with ``vespa.http.eager.send_now``, as the worker
writes a streamed response). No parsing, no headers, no accounting, no
flow control (the benchmark's backends are paced), no timers.

``run_hotpath.py`` runs it as the ``floor`` column, under the same loads as
the worker: its CPU per relayed event is what the reactor itself costs per
event (an ``epoll`` turn, ``callWithLogger``, a ``recv`` and a ``send``), the
part of the worker's cost that no change above the reactor can remove.

Run: ``python benchmarks/floor_relay.py LISTEN_PORT BACKEND_PORT``; with
``FLOOR_REACTOR=vespa`` in the environment it runs on the daemons' own reactor
(:mod:`vespa.reactor`) instead of Twisted's default.
"""

from __future__ import annotations

import inspect
import os
import sys

if os.environ.get("FLOOR_REACTOR") == "vespa":
    from vespa.reactor import install

    install()

from twisted.internet import reactor as _reactor
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.python.failure import Failure

from vespa.http.eager import send_now

LOCALHOST = "127.0.0.1"
reactor: object = _reactor

# A tree from before issue 14's round four (PYTHONPATH set to it, in an A/B)
# has a send_now taking a sequence of pieces, not one bytes.
if "pieces" in inspect.signature(send_now).parameters:

    def _send(transport: object, data: bytes) -> None:
        send_now(transport, (data,))  # type: ignore[arg-type]

else:
    _send = send_now


class Caller(Protocol):
    """One caller's connection; opens its own connection to the backend."""

    def __init__(self, backend_port: int) -> None:
        self.backend_port = backend_port
        self.backend: Backend | None = None
        self.pending: list[bytes] = []

    def connectionMade(self) -> None:
        self.transport.setTcpNoDelay(True)  # type: ignore[union-attr]  # as the worker does
        factory = ClientFactory.forProtocol(lambda: Backend(self))
        reactor.connectTCP(LOCALHOST, self.backend_port, factory)  # type: ignore[attr-defined]

    def dataReceived(self, data: bytes) -> None:
        if self.backend is None:
            self.pending.append(data)
        else:
            self.backend.transport.write(data)  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure | None = None) -> None:
        if self.backend is not None:
            self.backend.transport.loseConnection()  # type: ignore[union-attr]


class Backend(Protocol):
    """The backend side of one caller's connection."""

    def __init__(self, caller: Caller) -> None:
        self.caller = caller

    def connectionMade(self) -> None:
        self.caller.backend = self
        self.transport.setTcpNoDelay(True)  # type: ignore[union-attr]
        self.transport.writeSequence(self.caller.pending)  # type: ignore[union-attr]
        self.caller.pending = []

    def dataReceived(self, data: bytes) -> None:
        _send(self.caller.transport, data)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.caller.transport.loseConnection()  # type: ignore[union-attr]


def main(argv: list[str]) -> None:
    """Relay 127.0.0.1:LISTEN_PORT to 127.0.0.1:BACKEND_PORT until killed."""
    listen_port, backend_port = int(argv[0]), int(argv[1])
    factory = Factory.forProtocol(lambda: Caller(backend_port))
    reactor.listenTCP(listen_port, factory, backlog=1024, interface=LOCALHOST)  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main(sys.argv[1:])
