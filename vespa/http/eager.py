# -*- test-case-name: tests.test_hotpath -*-
"""
Sending bytes at once instead of on the reactor's next turn.

A Twisted TCP transport only buffers what is written: it registers the
socket for writability (``epoll_ctl``), and the bytes leave on a later
reactor turn (``epoll_wait``, a dispatch, ``send``, ``epoll_ctl`` again).
That costs CPU per write (about a fifth of the worker's CPU per relayed SSE
event) and, worse, latency under a burst: the reactor handles every socket
that became readable before it sends anything, so 128 requests arriving
together were each relayed to the backend only after the worker had read
all 128 (the backend then started on all of them at once, ~30 ms late), and
each caller's first byte waited for the whole batch of responses.

When nothing is buffered, the bytes are ``send`` at once and only what the
kernel does not take is buffered; the transport's own machinery (flow
control, producers, closing, errors) handles the rest exactly as before.

- :func:`send_now` is the server side: a response write (see
  :class:`vespa.http.site.ProxyChannel`), status line, headers and data in
  one ``send``.
- :class:`EagerTCPConnector` is the client side: the backend connections,
  whose request head and body leave as the relay writes them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from twisted.internet import tcp
from twisted.internet.interfaces import IConnector
from twisted.internet.protocol import ClientFactory

__all__ = ["EagerTCPConnector", "send_now"]


def _idle(transport: Any) -> bool:
    """Whether ``transport`` may send now: connected, not closing, nothing buffered."""
    return bool(
        transport.connected
        and not transport.disconnecting
        and not transport._writeDisconnected
        and not transport._tempDataLen
        and transport.offset == len(transport.dataBuffer)
    )


def _send(transport: Any, data: bytes) -> bytes:
    """Send what the socket takes of ``data`` now; return the rest."""
    try:
        sent: int = transport.socket.send(data)
    except OSError:  # EAGAIN, or an error the reactor reports on its next write
        return data
    return data[sent:]


def send_now(transport: Any, pieces: Sequence[bytes]) -> None:
    """
    Write ``pieces`` to ``transport``, sent at once when it can be.

    Only a plain TCP server connection (no TLS layer) with nothing buffered,
    not closing, is sent to directly; anything else, and whatever the socket
    does not take, goes through ``transport.writeSequence``. A socket error
    is left for the reactor to report, as it would have been: the bytes are
    buffered and its next write attempt fails the connection.

    :param transport: the connection's transport.
    :param pieces: the bytes to send, in order.
    """
    if type(transport) is tcp.Server and _idle(transport):
        rest = _send(transport, b"".join(pieces))
        if not rest:
            return
        pieces = [rest]
    transport.writeSequence(pieces)


class _EagerClient(tcp.Client):
    """A TCP client connection whose writes are sent at once when nothing is buffered."""

    def write(self, data: bytes) -> None:
        if data and _idle(self):
            data = _send(self, data)
        super().write(data)

    def writeSequence(self, iovec: Iterable[bytes]) -> None:
        if _idle(self):
            rest = _send(self, b"".join(iovec))
            iovec = [rest] if rest else []
        super().writeSequence(iovec)


class _Connector(tcp.Connector):
    def _makeTransport(self) -> _EagerClient:
        return _EagerClient(self.host, self.port, self.bindAddress, self, self.reactor)


class EagerTCPConnector:
    """
    The ``connectTCP`` of ``reactor``, for a TCP client endpoint
    (``TCP4ClientEndpoint(EagerTCPConnector(reactor), ...)``), making
    connections that send their writes at once.

    :param reactor: the reactor the connections run on.
    """

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor

    def connectTCP(
        self,
        host: str,
        port: int,
        factory: ClientFactory,
        timeout: float = 30.0,
        bindAddress: tuple[str, int] | None = None,  # noqa: N803 (the reactor's keyword)
    ) -> IConnector:
        connector = _Connector(host, port, factory, timeout, bindAddress, self._reactor)
        connector.connect()
        return connector
