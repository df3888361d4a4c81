# -*- test-case-name: tests.test_outbound,tests.test_worker_relay,tests.test_client_upstream -*-
"""
What the worker's relay and the client's attempts both send out: a request
body (a small one in one write, a large one, from memory or its file, a
piece at a time), and the error for a request that got no response.
"""

from __future__ import annotations

import io
from typing import IO

from twisted.internet import error as ierror
from twisted.internet import task
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IConsumer
from twisted.python.failure import Failure
from twisted.web.client import (
    FileBodyProducer,
    RequestTransmissionFailed,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

from vespa.errors import BackendTimeout, BackendUnavailable, VespaError
from vespa.http.backend_response import MalformedResponse

#: Bodies up to this size are written in one go; a larger one in pieces, as
#: the connection takes them: written in one piece, tens of megabytes are
#: copied at once on the reactor thread (30 ms for 60 MB).
ONE_WRITE = 256 * 1024


def body_producer(data: bytes, cooperator: task.Cooperator | None = None) -> IBodyProducer:
    """
    The producer of a request body already in memory.

    :param data: the body.
    :param cooperator: paces a large body's pieces (Twisted's global one by default).
    """
    if len(data) <= ONE_WRITE:
        return BytesBodyProducer(data)
    return pieces_producer(io.BytesIO(data), cooperator)


def pieces_producer(body: IO[bytes], cooperator: task.Cooperator | None = None) -> FileBodyProducer:
    """
    A large body, from its file or from memory, written a piece at a time
    from where the file is; the file is closed at the end.
    """
    if cooperator is None:
        return FileBodyProducer(body)
    return FileBodyProducer(body, cooperator=cooperator)


@implementer(IBodyProducer)
class BytesBodyProducer:
    """
    A small request body already in memory, written in one go (see
    :func:`body_producer`).

    :param data: the body.
    """

    def __init__(self, data: bytes) -> None:
        self._data = data
        self.length = len(data)

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        consumer.write(self._data)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


def connection_error(
    reason: Failure,
    peer: str,
    where: str,
    *,
    unavailable: type[VespaError] = BackendUnavailable,
    timeout: type[VespaError] = BackendTimeout,
) -> VespaError:
    """
    The answer for a request that failed before its response headers.

    :param reason: why the request failed (Agent's or the backend client's).
    :param peer: who was called, for the message: ``backend``, ``worker``.
    :param where: its URL, for the message.
    :param unavailable: the error type for refused, unreachable or dropped.
    :param timeout: the error type for a connect timeout.
    """
    the = f"the {peer} at {where}"
    if reason.check(ierror.ConnectionRefusedError):
        return unavailable(f"{the} refused the connection")
    if reason.check(ierror.TimeoutError, ierror.TCPTimedOutError):
        return timeout(f"connecting to {the} timed out")
    if reason.check(ierror.DNSLookupError):
        return unavailable(f"the {peer} host of {where} could not be resolved")
    if reason.check(ierror.ConnectError):
        return unavailable(f"{the} is unreachable: {reason.value}")
    if reason.check(MalformedResponse):
        return unavailable(f"{the} sent a malformed response: {reason.getErrorMessage()}")
    if reason.check(ierror.ConnectionDone, ierror.ConnectionLost):
        return unavailable(f"{the} closed the connection without a response")
    if reason.check(ResponseNeverReceived, RequestTransmissionFailed, ResponseFailed):
        inner = _inner_reason(reason)
        if inner:
            return unavailable(f"{the} failed: {inner}")
        return unavailable(f"{the} closed the connection without a response")
    return unavailable(f"the request to {where} failed: {reason.getErrorMessage()}")


def _inner_reason(reason: Failure) -> str:
    """
    What really went wrong inside one of Agent's wrapper errors, when it is
    more than a closed connection (a TLS verification failure, above all).
    """
    reasons = getattr(reason.value, "reasons", None) or []
    for inner in reasons:
        if isinstance(inner, Failure) and not inner.check(
            ierror.ConnectionDone, ierror.ConnectionLost, CancelledError
        ):
            return inner.getErrorMessage()
    return ""
