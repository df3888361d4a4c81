"""
Where a request body waits (:mod:`vespa.http.body_file`): memory for a small
one, a temporary file for a large one, closed by a worker thread so that
freeing tens of megabytes never stalls the reactor.
"""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Callable
from typing import Any

import psutil
from twisted.internet import reactor
from twisted.internet.interfaces import IReactorThreads
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import Request
from zope.interface import implementer

from vespa.http.body_file import CLOSED_HERE, IN_MEMORY, body_file
from vespa.http.site import ProxySite

from .support import connect_in_memory, listen, until
from .support_raw import exchange, post_head


@implementer(IReactorThreads)
class _HandingReactor:
    """A reactor's threads that keep what they are handed, to run when the test says."""

    def __init__(self, handed: list[Callable[[], None]]) -> None:
        self.callInThread = handed.append


class BodyFileTests(SynchronousTestCase):
    """What :func:`body_file` gives for a body, and how its file closes."""

    def setUp(self) -> None:
        self.handed: list[Callable[[], None]] = []
        self.reactor = _HandingReactor(self.handed)
        # Run last: what the test's files handed over is closed.
        self.addCleanup(lambda: [close() for close in self.handed])

    def test_small_body_in_memory(self) -> None:
        """A body of a known length under 100 kB stays in memory."""
        self.assertIsInstance(body_file(IN_MEMORY - 1, self.reactor), io.BytesIO)

    def test_large_or_unknown_body_in_a_file(self) -> None:
        """A large body, or one of unknown length (chunked), goes to a real file."""
        for length in (IN_MEMORY, None):
            content = body_file(length, self.reactor)
            self.addCleanup(content.close)
            content.write(b"x" * 10)
            content.seek(0)
            self.assertEqual(content.read(), b"x" * 10)
            self.assertIsInstance(content.fileno(), int)

    def test_close_is_handed_to_the_thread(self) -> None:
        """
        Closing the file hands the close over: the file stays open until the
        handed function runs; a second close hands over nothing.
        """
        content = body_file(None, self.reactor)
        content.write(b"x" * CLOSED_HERE)
        fd = content.fileno()
        content.close()
        content.close()
        self.assertEqual(len(self.handed), 1)
        self.assertFalse(content.closed)
        self.handed[0]()
        self.assertTrue(content.closed)
        with self.assertRaises(OSError):
            os.fstat(fd)

    def test_small_file_closed_at_once(self) -> None:
        """A file under :data:`CLOSED_HERE` closes at once: a thread would cost more."""
        content = body_file(None, self.reactor)
        content.write(b"x" * (CLOSED_HERE - 1))
        content.close()
        self.assertTrue(content.closed)
        self.assertEqual(self.handed, [])

    def test_without_threads_closed_where_closed(self) -> None:
        """Without a thread to close it, the file closes at once."""
        content = body_file(None, Clock())
        content.close()
        self.assertTrue(content.closed)


class _Keeper(Resource):
    """Keeps each request's body file, and answers once it is read."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.contents: list[Any] = []

    def render(self, request: Request) -> bytes:
        assert request.content is not None
        self.contents.append(request.content)
        return b"%d" % (len(request.content.read()),)


class SiteBodyFileTests(TestCase):
    """A site's large request bodies are closed by the reactor's threads."""

    async def test_large_bodies_are_closed_off_the_reactor_thread(self) -> None:
        """
        After each large request, its file is closed by a thread other than
        the reactor's, and no file descriptor is left open.
        """
        closers: list[int] = []
        call_in_thread = reactor.callInThread

        def recording(function: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
            def run() -> None:
                closers.append(threading.get_ident())
                function(*args, **kwargs)

            call_in_thread(run)

        self.patch(reactor, "callInThread", recording)
        keeper = _Keeper()
        port = listen(self, ProxySite(keeper, reactor=reactor))
        body = b"v" * (2 * CLOSED_HERE)
        head = post_head(b"/upload", b"text/plain", len(body))
        descriptors = 0
        for sent in range(1, 6):
            answer = await exchange(port, head, body)
            self.assertTrue(answer.endswith(b"\r\n\r\n%d" % (len(body),)), answer[-40:])
            if sent == 1:
                # What the first use of the reactor's threads sets up for good
                # (a pipe) stays; what each request leaves shows from here.
                await until(lambda: bool(closers))
                descriptors = psutil.Process().num_fds()
        await until(lambda: all(content.closed for content in keeper.contents))
        self.assertEqual(len(closers), 5)
        self.assertNotIn(threading.get_ident(), closers)
        # The server's side of the last connection closes a turn after the client's.
        await until(lambda: psutil.Process().num_fds() <= descriptors)

    def test_a_reactor_without_threads_closes_at_once(self) -> None:
        """A site on a reactor without threads (a test's ``Clock``) still gets its files closed."""
        keeper = _Keeper()
        connection, transport = connect_in_memory(ProxySite(keeper, reactor=Clock()))
        body = b"v" * (4 * IN_MEMORY)
        connection.dataReceived(post_head(b"/upload", b"text/plain", len(body)) + body)
        self.assertTrue(transport.value().endswith(b"\r\n\r\n%d" % (len(body),)))
        self.assertTrue(keeper.contents[0].closed)
