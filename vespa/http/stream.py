# -*- test-case-name: tests.test_stream,tests.test_worker_relay,tests.test_client_upstream -*-
"""
The streaming core shared by the worker's relay and the client's attempts:
reading a response body with backpressure and an idle deadline, ending the
response streamed to a caller, and the two trivial body readers.

- :class:`BodyReader` is the protocol an ``IResponse`` delivers its body to.
  It is also the push producer of whoever it writes to: pausing it pauses
  the body's transport, so the sender's TCP window closes instead of our
  memory growing. Its idle deadline runs only while reading, so a slow
  reader is never taken for a silent sender.
- :func:`end_response` ends the response a ``twisted.web`` request streams:
  complete, a clean JSON error while nothing has been written, or else an
  abnormal end.
- :class:`Discard` throws a body away; :class:`Collector` hands it to a
  callback; both are cancellable.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import error as ierror
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.server import Request
from zope.interface import implementer

from vespa.errors import VespaError, write_error

__all__ = [
    "BodyReader",
    "BoundedBuffer",
    "Collector",
    "Discard",
    "end_response",
    "ended_cleanly",
]

CONNECTION_DONE = Failure(ierror.ConnectionDone())


def ended_cleanly(reason: Failure) -> bool:
    """
    Whether a body that ended with ``reason`` is complete.

    ``PotentialDataLoss`` is how twisted.web ends a body that had neither a
    length nor chunked framing: it is the normal end of such a body.
    """
    return reason.check(ResponseDone, PotentialDataLoss) is not None


def cancel_call(call: IDelayedCall | None) -> None:
    """
    Cancel ``call`` if it is still pending.
    """
    if call is not None and call.active():
        call.cancel()


@implementer(IPushProducer)
class BodyReader(Protocol):
    """
    A response body, read as it arrives; subclasses say where it goes.

    The idle deadline counts only once :meth:`start_timing` was called, and
    only while the reader is not paused.

    :param clock: runs the idle deadline.
    :param idle: seconds the sender may stay silent mid-body; ``None`` for
        no limit.
    """

    def __init__(self, clock: IReactorTime, idle: float | None) -> None:
        self.idle_seconds = idle
        self._clock = clock
        # The timer is a delayed call, not an object holding a bound method:
        # a reader must not be a reference cycle, so that it and the request
        # it writes to are freed by reference counting, not by the cycle
        # collector (whose full collections set the tail latency under load).
        self._idle_call: IDelayedCall | None = None
        # When the sender was last heard from, while the timer runs: the timer
        # checks it when it fires instead of being moved at every chunk (a
        # heap move per SSE event).
        self._heard_at = 0.0
        self._timing = False
        self._paused = False

    # What a subclass does with the body.

    def received(self, data: bytes) -> None:
        """
        A chunk of the body arrived.
        """

    def ended(self, reason: Failure) -> None:
        """
        The body is over: complete if :func:`ended_cleanly`.
        """

    def idle_expired(self) -> None:
        """
        The sender stayed silent past the idle deadline.
        """

    # Protocol, called by the response.

    def dataReceived(self, data: bytes) -> None:
        if self._idle_call is not None:
            self._heard_at = self._clock.seconds()
        self.received(data)

    def connectionLost(self, reason: Failure = CONNECTION_DONE) -> None:
        self._disarm()
        self.ended(reason)

    # IPushProducer, called by the reader's consumer.

    def pauseProducing(self) -> None:
        self._disarm()
        self.pause_transport()

    def resumeProducing(self) -> None:
        if self._timing:
            self._arm()
        self.resume_transport()

    def stopProducing(self) -> None:
        self.stop()

    # Control

    def start_timing(self) -> None:
        """
        From now on, silence while reading counts against the idle deadline.
        """
        self._timing = True
        self._arm()

    def stop_timing(self) -> None:
        """
        Silence no longer counts (the body has found its end).
        """
        self._timing = False
        self._disarm()

    def stop(self) -> None:
        """
        Abort the response: the sender sees its connection close.
        """
        self._disarm()
        transport: Any = self.transport
        if transport is not None:
            transport.stopProducing()

    def pause_transport(self) -> None:
        """
        Stop reading from the body's connection.
        """
        transport: Any = self.transport
        if not self._paused and transport is not None:
            self._paused = True
            transport.pauseProducing()

    def resume_transport(self) -> None:
        """
        Read from the body's connection again.
        """
        transport: Any = self.transport
        if self._paused and transport is not None:
            self._paused = False
            transport.resumeProducing()

    def _arm(self) -> None:
        if self.idle_seconds is not None and self._idle_call is None:
            self._heard_at = self._clock.seconds()
            self._idle_call = self._clock.callLater(self.idle_seconds, self._idle_fired)

    def _disarm(self) -> None:
        cancel_call(self._idle_call)
        self._idle_call = None

    def _idle_fired(self) -> None:
        self._idle_call = None
        assert self.idle_seconds is not None
        left = self._heard_at + self.idle_seconds - self._clock.seconds()
        if left > 0:  # heard from since: wait out the rest of the deadline
            self._idle_call = self._clock.callLater(left, self._idle_fired)
            return
        self.idle_expired()


def end_response(request: Request, error: VespaError | None) -> None:
    """
    End the response streamed to ``request`` (its producer unregistered).

    Without ``error`` it is finished. With one, while nothing has reached the
    caller, the caller gets a clean JSON error instead. Once the status line
    is gone, the only honest signal left is to end the stream abnormally (no
    terminating chunk, connection closed), so that the caller cannot take a
    truncated body for a complete one.

    :param request: the caller's request.
    :param error: why the body was cut short, or ``None`` if it is complete.
    """
    request.unregisterProducer()
    if error is None:
        request.finish()
    elif not request.startedWriting:
        request.responseHeaders = Headers()
        request.write(write_error(request, error))
        request.finish()
    else:
        request.loseConnection()


class Discard(Protocol):
    """
    Throws a body away: reads it to its end, or with ``abort``, closes its
    connection at once (a body nobody wants any more).

    :ivar done: fires when the body is over; cancelling it closes the
        connection.
    """

    def __init__(self, *, abort: bool = False) -> None:
        self._abort = abort
        self.done: Deferred[None] = Deferred(self._cancel)

    def connectionMade(self) -> None:
        if self._abort:
            self._close()

    def dataReceived(self, data: bytes) -> None:
        pass

    def connectionLost(self, reason: Failure = CONNECTION_DONE) -> None:
        if not self.done.called:
            self.done.callback(None)

    def _cancel(self, _: Deferred[None]) -> None:
        self._close()

    def _close(self) -> None:
        # The body's transport is twisted.web's producer proxy: stopping it
        # closes the connection (it has no abortConnection).
        transport: Any = self.transport
        if transport is not None:
            transport.stopProducing()


class Collector(Protocol):
    """
    Hands each chunk of a body to ``collector``; :attr:`finished` fires at
    the end, or fails with why the body was cut short.

    Like ``treq.collect``'s protocol, but cancellable: cancelling
    :attr:`finished`, or an exception from ``collector``, aborts the body.
    It reads a body delivered to a protocol (``IResponse.deliverBody``) or to
    a sink (``chunk``/``end``, as :meth:`vespa.client.upstream.Answer.attach`
    gives it; ``abort`` then says how to drop it).

    :param collector: called with each chunk.
    :param abort: drops the body; closing the protocol's transport if ``None``.
    """

    def __init__(
        self, collector: Callable[[bytes], None], abort: Callable[[], None] | None = None
    ) -> None:
        self._collector = collector
        self._abort = abort
        self.finished: Deferred[None] | None = Deferred(self._cancel)

    def dataReceived(self, data: bytes) -> None:
        if self.finished is None:
            return
        try:
            self._collector(data)
        except BaseException:
            finished, self.finished = self.finished, None
            self._close()
            finished.errback(Failure())

    def connectionLost(self, reason: Failure = CONNECTION_DONE) -> None:
        self._end(None if ended_cleanly(reason) else reason)

    # The sink face.

    def chunk(self, data: bytes) -> None:
        """
        A chunk of the body.
        """
        self.dataReceived(data)

    def end(self, error: VespaError | None) -> None:
        """
        The body is over: complete (``None``) or cut short by ``error``.
        """
        self._end(None if error is None else Failure(error))

    def _end(self, failure: Failure | None) -> None:
        finished, self.finished = self.finished, None
        if finished is None:
            return
        if failure is None:
            finished.callback(None)
        else:
            finished.errback(failure)

    def _cancel(self, _: Deferred[None]) -> None:
        # The Deferred fails with CancelledError by itself once this returns.
        self.finished = None
        self._close()

    def _close(self) -> None:
        if self._abort is not None:
            self._abort()
            return
        transport: Any = self.transport
        if transport is not None:
            transport.stopProducing()


class BoundedBuffer:
    """
    A body kept in memory, at most ``limit`` bytes: a :class:`Collector`'s
    (or ``treq.collect``'s) callback that raises ``too_large`` past it, so
    a huge body aborts instead of costing memory.

    :param limit: the most bytes kept.
    :param too_large: the exception raised past ``limit``.
    """

    def __init__(self, limit: int, too_large: Exception) -> None:
        self._limit = limit
        self._too_large = too_large
        self._chunks: list[bytes] = []
        self._size = 0

    def __call__(self, data: bytes) -> None:
        self._size += len(data)
        if self._size > self._limit:
            raise self._too_large
        self._chunks.append(data)

    def joined(self) -> bytes:
        """
        The body kept so far.
        """
        return b"".join(self._chunks)
