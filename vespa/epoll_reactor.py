# -*- test-case-name: tests.test_reactor -*-
"""
:class:`VespaReactor`: Twisted's epoll reactor, minus the legacy log context
around every I/O event, writing at the end of the turn that wrote.

Twisted's :class:`~twisted.internet.epollreactor.EPollReactor` calls each ready
descriptor's ``doRead``/``doWrite`` through ``log.callWithLogger``: it asks the
descriptor for its ``logPrefix()``, copies the legacy log context and pushes it
on the context tracker, for every readable or writable event. That context only
labels *legacy* log lines (``twisted.python.log.msg``/``err``) with a "system"
prefix; Vespa logs through :mod:`twisted.logger`, whose events never read it.
Under 300 relayed SSE streams that wrapping was 12 % of the worker's CPU
(``benchmarks/PROFILE.md``). :class:`VespaReactor` dispatches the event
directly and keeps Twisted's handling of what goes wrong: a descriptor whose
``doRead``/``doWrite`` raises, or returns a reason, is disconnected, the error
is logged once (with the descriptor's ``logPrefix()`` as its system, computed
on that path only), and the reactor runs on.

What changes in the logs: a legacy ``log.msg``/``log.err`` line emitted inside
an I/O callback is labelled ``[-]`` instead of, say,
``[ProxyChannel,12,127.0.0.1]``. Vespa's own lines (``vespa.log``) are
:mod:`twisted.logger` events, labelled by namespace (``[vespa.http.site#info]``)
either way; of Twisted's legacy lines, only rare error paths run inside I/O
callbacks (``tcp.Connection``'s half-close errors), and an exception escaping
``doRead``/``doWrite`` keeps its label, see above.

Writes: Twisted's reactor registers a socket that was written to for
writability (``epoll_ctl``) and sends on a later turn; :class:`VespaReactor`
sends once the turn's events are dispatched, and leaves to ``epoll`` only
the bytes the socket does not take (see :meth:`VespaReactor.addWriter`).

Linux only (this module imports epoll); :mod:`vespa.reactor` installs it.
"""

from __future__ import annotations

import select
from typing import Any

from twisted.internet import error
from twisted.internet.abstract import FileDescriptor
from twisted.internet.epollreactor import EPollReactor
from twisted.internet.main import CONNECTION_DONE, CONNECTION_LOST
from twisted.python.failure import Failure

from vespa.log import get_logger

log = get_logger(__name__)

_HANGUP = select.EPOLLHUP | select.EPOLLERR
_READABLE = select.EPOLLIN
_WRITABLE = select.EPOLLOUT

#: The longest a poll waits for a timer: epoll_wait's limit in milliseconds,
#: as Twisted's ``timeout()`` bounds it.
_LONGEST_WAIT = 2147483.0

#: Bytes a writer may have buffered in a turn and still be flushed at its
#: end: what one ``send`` of Twisted's transports takes at most.
_FLUSH_LIMIT = FileDescriptor.SEND_LIMIT

#: A marker for "not in the dict".
_ABSENT = object()

#: The reason a descriptor whose ``fileno()`` says -1 is disconnected with.
_DESCRIPTOR_GONE = error.ConnectionFdescWentAway("File descriptor lost")


def _system_of(selectable: Any) -> str:
    """The descriptor's ``logPrefix()``, for the system of an error it caused."""
    try:
        return str(selectable.logPrefix())
    except Exception:
        return "(buggy logPrefix method)"


def _log_callback_failure(selectable: Any) -> None:
    """Log, once, the exception a descriptor's ``doRead``/``doWrite`` just raised."""
    log.failure(
        "I/O callback of {log_system} failed; disconnecting it",
        Failure(),
        log_system=_system_of(selectable),
    )


class VespaReactor(EPollReactor):
    """
    An :class:`EPollReactor` dispatching I/O events without the legacy log
    context around each.
    """

    def __init__(self) -> None:
        super().__init__()  # a typed constructor: EPollReactor's is unannotated
        # Writers that asked to write since the last poll, in order: each is
        # written to once before the next poll, and registered with epoll
        # only if its bytes did not all leave (see addWriter).
        self._unflushed: dict[Any, None] = {}
        # The writers of the flush under way not yet flushed: one removed
        # meanwhile (another's flush closed it) is left out.
        self._batch: dict[Any, None] = {}
        # The writer being flushed; None once it has stopped writing.
        self._flushing: Any = None

    # Writers

    def addWriter(self, writer: Any) -> None:
        """
        Have ``writer`` write before the next poll; epoll watches it only if
        it cannot write everything then.

        A transport asks for this when bytes are written to it. Twisted's
        reactor registers the socket for writability at once (``epoll_ctl``),
        the bytes leave on the next turn (``epoll_wait`` reports it, a
        dispatch, ``send``) and the socket is unregistered (``epoll_ctl``).
        A socket with room in its buffer is nearly always writable, so here
        the writer is tried at the end of the turn that wrote to it: the same
        ``send``, with everything written in that turn still sent together,
        but no ``epoll_ctl`` and no extra turn. A request's head reaches the
        backend, and a response's head the caller, a turn sooner.
        """
        if writer is self._flushing or writer in self._unflushed or writer in self._batch:
            return
        if writer.fileno() in self._writes:  # epoll already watches it
            return
        self._unflushed[writer] = None

    def removeWriter(self, writer: Any) -> None:
        """Stop watching ``writer`` for writability, or forget it before its flush."""
        if self._unflushed.pop(writer, _ABSENT) is not _ABSENT:
            return
        if self._batch.pop(writer, _ABSENT) is not _ABSENT:
            return
        if writer is self._flushing:
            self._flushing = None
            return
        super().removeWriter(writer)

    def getWriters(self) -> list[Any]:
        """Every writer, the ones waiting for their flush included."""
        writers: list[Any] = super().getWriters()
        waiting = [*self._batch, *self._unflushed]
        return writers + [w for w in waiting if w not in writers]

    def removeAll(self) -> list[Any]:
        """Remove every reader and writer (at shutdown); return them."""
        pending = [*self._batch, *self._unflushed]
        self._batch.clear()
        self._unflushed.clear()
        removed: list[Any] = super().removeAll()
        return removed + [w for w in pending if w not in removed]

    def _flush(self) -> None:
        """
        Let each writer of this turn write; register with epoll the ones
        that still have bytes to write (their socket's buffer is full, or a
        connect is still under way).
        """
        batch = self._batch = self._unflushed
        self._unflushed = {}
        for writer in list(batch):
            if batch.pop(writer, _ABSENT) is _ABSENT:  # removed by an earlier one's flush
                continue
            if getattr(writer, "_tempDataLen", 0) > _FLUSH_LIMIT:
                # Megabytes written in this turn (a large body relayed): joined
                # and sent on a turn of their own, as Twisted does, so that one
                # turn does not both make them and copy them (a stream's events
                # wait for the whole turn).
                super().addWriter(writer)
                continue
            self._flushing = writer
            try:
                why = _DESCRIPTOR_GONE if writer.fileno() == -1 else writer.doWrite()
            except BaseException as e:
                why = e
                _log_callback_failure(writer)
            still_writing = self._flushing is writer
            self._flushing = None
            if why:
                self._disconnect(writer, why, False)
            elif still_writing:
                super().addWriter(writer)

    # The loop

    def doPoll(self, timeout: float | None) -> None:
        """
        Wait for I/O events (at most ``timeout`` seconds, forever if ``None``),
        dispatch each ready descriptor's events, then flush the writers they
        wrote to.
        """
        if self._unflushed:
            # Written to outside a dispatch (a timer, or before the reactor
            # ran): what the flush did (a timer set, a stop) is only seen
            # once this poll returns, so it does not wait.
            self._flush()
            timeout = 0
        try:
            # As many events as descriptors tracked, as Twisted's doPoll asks.
            events = self._poller.poll(-1 if timeout is None else timeout, len(self._selectables))
        except InterruptedError:
            return
        selectables = self._selectables
        # Each descriptor's events are handled here, not in a method called
        # per event: under relayed SSE streams nearly every event is one
        # backend socket readable, and a call per event is a measurable share.
        for fd, event in events:
            selectable = selectables.get(fd)
            if selectable is None:
                continue
            why: object = None
            in_read = False
            if event & _HANGUP and not event & _READABLE:
                # Hung up with no input left: a clean end if we were reading from
                # it (maybe a half-close, hence in_read), an error otherwise.
                in_read = fd in self._reads
                why = CONNECTION_DONE if in_read else CONNECTION_LOST
            else:
                try:
                    # fileno() first, as Twisted does: a descriptor already closed
                    # says -1 (or raises) before it is asked to read.
                    if selectable.fileno() == -1:
                        why = _DESCRIPTOR_GONE
                    else:
                        if event & _READABLE:
                            why = selectable.doRead()
                            in_read = True
                        if not why and event & _WRITABLE:
                            why = selectable.doWrite()
                            in_read = False
                except BaseException as e:
                    why = e
                    _log_callback_failure(selectable)
            if why:
                # A reason returned or an exception raised disconnects it.
                self._disconnect(selectable, why, in_read)
        if self._unflushed:
            self._flush()

    doIteration = doPoll

    def mainLoop(self) -> None:
        """
        Twisted's main loop (``runUntilCurrent``, ``timeout``, a poll), with a
        turn in which no timer is due and nothing new is scheduled done here:
        the next timer's delay read off the heap, no call for either step.
        Under relayed SSE streams nearly every turn is such a turn, with one
        or two events in it. An exception escaping a turn is logged, and the
        loop goes on, as Twisted's does.
        """
        while self._started:
            try:
                self._turns()
            except BaseException:
                log.failure("Unexpected error in main loop")

    def _turns(self) -> None:
        seconds = self.seconds
        poll = self.doIteration
        while self._started:
            timeout: float | None = None
            calls = self._pendingTimedCalls
            if self.threadCallQueue or self._newTimedCalls or self._justStopped:
                due = True
            elif not calls:
                due = False
            else:
                delay = calls[0].time - seconds()
                due = delay <= 0
                timeout = min(delay, _LONGEST_WAIT)
            if due:
                self.runUntilCurrent()
                timeout = self.timeout()
            poll(self.running and timeout)

    def _disconnect(self, selectable: Any, why: object, in_read: bool) -> None:
        """Disconnect ``selectable``; an error while doing so is logged, not raised."""
        try:
            self._disconnectSelectable(selectable, why, in_read)
        except KeyboardInterrupt:
            raise
        except BaseException:
            log.failure(
                "disconnecting {log_system} failed",
                Failure(),
                log_system=_system_of(selectable),
            )
