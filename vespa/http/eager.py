# -*- test-case-name: tests.test_hotpath -*-
"""
Sending a streamed response's bytes at once instead of at the end of the turn.

A Twisted TCP transport only buffers what is written and asks the reactor
to write it; :class:`vespa.epoll_reactor.VespaReactor` has the transport
write once the turn's events are dispatched (``doWrite``: its buffers
joined, ``send``, the writer removed again). For a relayed SSE event, which
is always alone in its turn, that machinery is the larger part of the
relay's Python per event. When nothing is buffered, :func:`send_now` calls
``send`` itself and buffers only what the kernel did not take; the
transport's own machinery (flow control, producers, closing, errors)
handles the rest as before. Measured interleaved against the end-of-turn
write alone (``benchmarks/reactor_ab.py --trees``): 18.8 → 17.2 µs of
worker CPU per event at 300 streams.

Only the writes that follow a response's first one are sent this way (see
:class:`vespa.http.site.ProxyChannel`): the head and a whole unary response
are left to the end of the turn, so that what one turn writes leaves in one
``send``.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import tcp

__all__ = ["send_now"]


def send_now(transport: Any, data: bytes) -> None:
    """
    Write ``data`` to ``transport``, sent at once when it can be.

    Only a plain TCP server connection (no TLS layer) with nothing buffered,
    not closing, is sent to directly; anything else, and whatever the socket
    does not take, goes through ``transport.write``. A socket error
    is left for the reactor to report, as it would have been: the bytes are
    buffered and its next write attempt fails the connection.

    :param transport: the connection's transport.
    :param data: the bytes to send.
    """
    if (
        type(transport) is tcp.Server
        and transport.connected
        and not transport.disconnecting
        and not transport._writeDisconnected
        and not transport._tempDataLen
        and transport.offset == len(transport.dataBuffer)
    ):
        try:
            sent: int = transport.socket.send(data)
        except OSError:  # EAGAIN, or an error the reactor reports on its next write
            sent = 0
        if sent == len(data):
            return
        data = data[sent:]
    transport.write(data)
