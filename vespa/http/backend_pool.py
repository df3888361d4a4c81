# -*- test-case-name: tests.test_backend_pool -*-
"""
The kept-alive connections to the worker's one fixed backend.

:class:`BackendPool` hands a request to the connection idle the most recently
(LIFO: the warmest, and the oldest ones expire), or opens one through the
backend endpoint. At most ``max_connections`` idle connections are kept, each
for ``keepalive`` seconds, expired by one timer for the whole pool (armed for
the oldest idle one) rather than a timer per connection reset per exchange.

A kept-alive connection may have been closed by the backend just as a request
went out on it. As twisted.web's ``Agent`` does, such a request is sent again
once, on a new connection, only when that is safe: an idempotent method with
no body, and no byte of a response seen. A POST is never sent twice.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import error as ierror
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IDelayedCall, IProtocol, IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import ClientFactory
from twisted.python.failure import Failure

from vespa.http.backend_client import BackendConnection, OutgoingRequest, ResponseHandler
from vespa.http.backend_response import ResponseHead

__all__ = ["BackendCall", "BackendPool"]


class BackendPool:
    """
    Kept-alive connections to one backend.

    :param clock: runs the idle expiry.
    :param endpoint: opens a connection to the backend (its connect timeout
        included).
    :param keepalive: seconds an idle connection is kept; ``None`` keeps none.
    :param max_connections: idle connections kept at most.
    """

    def __init__(
        self,
        clock: IReactorTime,
        endpoint: IStreamClientEndpoint,
        *,
        keepalive: float | None,
        max_connections: int,
    ) -> None:
        self._clock = clock
        self._endpoint = endpoint
        self._keepalive = keepalive
        self._max = max_connections
        self._factory = _ConnectionFactory(self)
        # Idle connections, the longest idle first.
        self._idle: list[BackendConnection] = []
        self._expiry: IDelayedCall | None = None
        self._closed = False

    @property
    def idle_connections(self) -> tuple[BackendConnection, ...]:
        """The connections waiting for a request, the longest idle first."""
        return tuple(self._idle)

    def send(self, request: OutgoingRequest, handler: ResponseHandler) -> BackendCall:
        """
        Send ``request`` on an idle connection, or a new one.

        :param request: the request.
        :param handler: hears of the response, or of the failure to get one.
        :return: the request in flight, to abort it.
        """
        call = BackendCall(self, request, handler)
        if self._idle:
            connection = self._idle.pop()
            connection.reused = True
            call.connection = connection
            connection.send(request, call)
        else:
            self.connect(call)
        return call

    def connect(self, call: BackendCall) -> None:
        """Send ``call``'s request on a new connection."""
        connecting: Deferred[Any] = self._endpoint.connect(self._factory)
        call.connecting = connecting
        connecting.addCallbacks(call.connected, call.response_failed)

    def close(self) -> Deferred[Any]:
        """
        Close the idle connections (at shutdown); none is kept after.

        :return: fires once they are closed.
        """
        self._closed = True
        self._stop_expiry()
        idle, self._idle = self._idle, []
        return DeferredList([connection.close() for connection in idle])

    # ConnectionOwner, called by the connections.

    def release(self, connection: BackendConnection) -> None:
        """``connection`` may carry another request: keep it, if there is room."""
        if self._keepalive is None or self._closed or len(self._idle) >= self._max:
            connection.close()
            return
        connection.idle_since = self._clock.seconds()
        self._idle.append(connection)
        if self._expiry is None:
            self._expiry = self._clock.callLater(self._keepalive, self._expire)

    def forget(self, connection: BackendConnection) -> None:
        """``connection`` is closed."""
        if connection in self._idle:
            self._idle.remove(connection)

    def _expire(self) -> None:
        self._expiry = None
        assert self._keepalive is not None
        now = self._clock.seconds()
        idle = self._idle
        count = 0
        while count < len(idle) and idle[count].idle_since + self._keepalive <= now:
            count += 1
        expired, self._idle = idle[:count], idle[count:]
        for connection in expired:
            connection.close()
        if self._idle:
            wait = self._idle[0].idle_since + self._keepalive - now
            self._expiry = self._clock.callLater(wait, self._expire)

    def _stop_expiry(self) -> None:
        if self._expiry is not None and self._expiry.active():
            self._expiry.cancel()
        self._expiry = None


class BackendCall:
    """
    One request on the pool, until its response starts: it retries once on
    a new connection when that is safe (see the module), and can be aborted.

    :ivar connection: the connection it is sent on, once there is one.
    :ivar connecting: the connection being opened for it, meanwhile.
    """

    def __init__(self, pool: BackendPool, request: OutgoingRequest, handler: ResponseHandler):
        self._pool = pool
        self._request = request
        self._handler = handler
        self.connection: BackendConnection | None = None
        self.connecting: Deferred[Any] | None = None
        self._aborted = False
        self._retried = False

    def abort(self) -> None:
        """
        Abandon the request: a connection being opened is cancelled, one
        carrying it closed at once (the backend sees it); the handler hears
        of it as a failure.
        """
        self._aborted = True
        if self.connecting is not None:
            self.connecting.cancel()
        elif self.connection is not None:
            self.connection.abort()

    def connected(self, connection: BackendConnection) -> None:
        """The new connection is open: send the request on it."""
        self.connecting = None
        self.connection = connection
        connection.send(self._request, self)

    # ResponseHandler, called by the connection.

    def response_started(self, head: ResponseHead) -> tuple[IProtocol, bool]:
        return self._handler.response_started(head)

    def response_failed(self, reason: Failure) -> None:
        self.connecting = None
        connection, self.connection = self.connection, None
        if (
            connection is not None
            and connection.reused
            and not connection.received_any
            and not self._aborted
            and not self._retried
            and self._request.retryable
            and reason.check(ierror.ConnectionDone, ierror.ConnectionLost)
        ):
            # The backend had closed the kept-alive connection: no harm done.
            self._retried = True
            self._pool.connect(self)
            return
        self._handler.response_failed(reason)


class _ConnectionFactory(ClientFactory):
    """Builds the pool's connections, without a log line for each."""

    noisy = False

    def __init__(self, pool: BackendPool) -> None:
        self._pool = pool

    def buildProtocol(self, addr: Any) -> BackendConnection:
        connection = BackendConnection(self._pool)
        connection.factory = self
        return connection
