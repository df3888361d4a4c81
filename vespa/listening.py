# -*- test-case-name: tests.test_listening -*-
"""
A service that listens on an endpoint while it runs, and tells which port it got.

Twisted's ``StreamServerEndpointService`` keeps the listening port in private
attributes; this one is built on the public endpoint API only
(:meth:`IStreamServerEndpoint.listen`), so the worker, the client and their
tests can ask :meth:`Listener.listening` for the bound address (``tcp:0``).
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import CancelledError, Deferred, fail, maybeDeferred, succeed
from twisted.internet.interfaces import (
    IListeningPort,
    IProtocolFactory,
    IStreamServerEndpoint,
)
from twisted.python.failure import Failure

from vespa._typing import Service
from vespa.log import get_logger

log = get_logger(__name__)


class Listener(Service):
    """
    Listens on ``endpoint`` with ``factory`` from start to stop.

    :param endpoint: where to listen (kept as ``endpoint``).
    :param factory: what serves each connection (kept as ``factory``).
    :param fatal: if listening fails at once (a busy port), raise it from
        ``startService``, so ``twistd`` stops with the error; otherwise log it
        and run without (for the optional listeners).
    """

    def __init__(
        self, endpoint: IStreamServerEndpoint, factory: IProtocolFactory, *, fatal: bool = True
    ) -> None:
        self.endpoint = endpoint
        self.factory = factory
        self._fatal = fatal
        # The port once listening, or why not; None until then.
        self._result: IListeningPort | Failure | None = None
        self._waiters: list[Deferred[IListeningPort]] = []
        self._pending: Deferred[None] | None = None
        self._starting = False

    def startService(self) -> None:
        super().startService()
        self._result = None
        self._starting = True
        try:
            self._pending = self.endpoint.listen(self.factory).addCallbacks(
                self._listened, self._failed
            )
        finally:
            self._starting = False
        failure = self._failure()
        if self._fatal and failure is not None:
            # Synchronous, as a TCP bind is: the caller sees the busy port.
            failure.raiseException()

    def _failure(self) -> Failure | None:
        return self._result if isinstance(self._result, Failure) else None

    def _listened(self, port: IListeningPort) -> None:
        self._pending = None
        self._result = port
        self._tell()

    def _failed(self, reason: Failure) -> None:
        self._pending = None
        self._result = reason
        # A fatal failure at start is raised there; any other one is told here.
        if not (self._fatal and self._starting) and not reason.check(CancelledError):
            log.failure("Listening on {endpoint} failed", reason, endpoint=self.endpoint)
        self._tell()

    def _tell(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            self._answer(waiter)

    def _answer(self, waiter: Deferred[IListeningPort]) -> None:
        if isinstance(self._result, Failure):
            waiter.errback(self._result)
        elif self._result is not None:
            waiter.callback(self._result)

    def listening(self) -> Deferred[IListeningPort]:
        """
        The listening port (``.getHost().port`` is the bound port), once the
        service started and listens; fails as listening did.
        """
        if isinstance(self._result, Failure):
            return fail(self._result)
        if self._result is not None:
            return succeed(self._result)
        waiter: Deferred[IListeningPort] = Deferred(self._waiters.remove)
        self._waiters.append(waiter)
        return waiter

    async def port(self) -> int:
        """
        The bound TCP port, once listening.

        :raises TypeError: if the endpoint is not TCP (a UNIX socket has none).
        """
        host = (await self.listening()).getHost()
        if not isinstance(host, (IPv4Address, IPv6Address)):
            raise TypeError(f"{self.endpoint!r} listens on {host!r}, not a TCP port")
        return host.port

    def stopService(self) -> Deferred[None]:
        super().stopService()
        if self._pending is not None:
            # Still binding: give up on it (it fails with CancelledError).
            self._pending.cancel()
        result, self._result = self._result, None
        if isinstance(result, Failure) or result is None:
            return succeed(None)
        return maybeDeferred(result.stopListening).addCallback(lambda _: None)
