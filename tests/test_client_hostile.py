"""
Hostile autoscaler answers against the client daemon, end to end on
loopback (issue 10 items 6, 7 and 8, the client's parts): route urls that
cannot or must not be requested, and a route answer of hundreds of
megabytes. Each is answered with a 502 naming the cause, frees its place in
flight, and leaves the client serving.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, ensureDeferred, succeed
from twisted.internet.interfaces import IPullProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from zope.interface import implementer

from tests.support import listen
from tests.support_client import advance_until, start_chain
from vespa.client.core import Reply
from vespa.client.router import ROUTE_ANSWER_LIMIT

CHAT = {"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 8}


class _Counted(Protocol):
    def connectionMade(self) -> None:
        self.factory.connections += 1  # type: ignore[attr-defined]
        self.transport.loseConnection()  # type: ignore[union-attr]


def counting_listener(testcase: TestCase) -> tuple[Factory, int]:
    """A TCP listener that counts the connections made to it."""
    factory = Factory.forProtocol(_Counted)
    factory.connections = 0  # type: ignore[attr-defined]
    factory.noisy = False
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    testcase.addCleanup(port.stopListening)
    return factory, port.getHost().port


class BugTests(TestCase):
    timeout = 30

    async def test_a_reply_that_breaks_the_proxy_still_answers(self) -> None:
        """A bug while answering (a reply the proxy cannot write): 500 JSON, the place freed."""
        env = await start_chain(self, workers=0, max_in_flight=1)
        broken = Reply(200, b"OK", None, [], 0, 0.0, body=b"")  # type: ignore[arg-type]
        env.client.parts.core.send = lambda *a: succeed(broken)
        for _ in range(2):  # the second proves the one place was freed
            response, body = await env.http.request(b"GET", b"/v1/models")
            self.assertEqual(response.code, 500, body)
            self.assertEqual(json.loads(body)["origin"], "vespa")
        self.assertEqual(env.client.parts.core.limiter.in_flight, 0)
        self.assertEqual(len(self.flushLoggedErrors(AttributeError)), 2)


class RouteURLTests(TestCase):
    timeout = 60

    async def post_twice(self) -> list[tuple[Any, bytes]]:
        """Two POSTs at once (the client's whole --max-in-flight); their answers."""
        env = self.env
        calls = [
            ensureDeferred(
                env.http.request(b"POST", b"/v1/chat/completions", body=json.dumps(CHAT).encode())
            )
            for _ in range(2)
        ]
        await advance_until(env.clock, lambda: all(d.called for d in calls), step=1.0)
        return [await d for d in calls]

    async def test_unusable_urls_answer_and_free_the_client(self) -> None:
        """
        Every route url that hung the client (CR/LF, a space, NUL, a tab, a
        non-ASCII host) or must not be used (``ftp://``, credentials) gets a
        502 naming it; the two places in flight are free again after each.
        """
        self.env = await start_chain(self, workers=1, max_in_flight=2, max_queue=0)
        autoscaler, good = self.env.autoscaler, self.env.a.url
        listener, port = counting_listener(self)
        autoscaler.remove_worker(good)
        hostile = [
            f"http://127.0.0.1:{port}\r\nX-Injected: yes",
            f"http://127.0.0.1:{port}/a b",
            f"http://127.0.0.1:{port}\x00",
            f"http://127.0.0.1:{port}/\tx",
            f"http://wörker.example:{port}",
            f"ftp://127.0.0.1:{port}",
            f"http://user:secret@127.0.0.1:{port}",
        ]
        for url in hostile:
            autoscaler.register_worker(url)
            for response, body in await self.post_twice():
                self.assertEqual(response.code, 502, (url, body))
                error = json.loads(body)
                self.assertEqual(error["origin"], "autoscaler")
                self.assertIn("unusable route", error["error"])
                self.assertNotIn(b"secret", body)
                self.assertEqual(response.headers.getRawHeaders(b"x-vespa-worker"), [b"none"])
            self.assertEqual(self.env.client.parts.core.limiter.in_flight, 0, url)
            autoscaler.remove_worker(url)
        self.assertEqual(listener.connections, 0)  # type: ignore[attr-defined]
        autoscaler.register_worker(good)
        for response, body in await self.post_twice():
            self.assertEqual(response.code, 200, body)


@implementer(IPullProducer)
class _Flood:
    """Writes a route answer that never ends, 64 KiB whenever the socket can take it."""

    def __init__(self, autoscaler: _FloodingAutoscaler, request: Request) -> None:
        self.autoscaler = autoscaler
        self.request = request
        self.stopped = False

    def resumeProducing(self) -> None:
        if self.stopped:
            return
        if self.autoscaler.sent >= self.autoscaler.cap:
            self.stopProducing()
            self.request.unregisterProducer()
            self.request.finish()
            return
        self.request.write(b"x" * 65536)
        self.autoscaler.sent += 65536

    def stopProducing(self) -> None:
        self.stopped = True


class _FloodingAutoscaler(Resource):
    """An autoscaler whose every route answer is 200 MB of JSON, chunked (no length)."""

    isLeaf = True
    cap = 200 << 20

    def __init__(self) -> None:
        super().__init__()
        self.sent = 0
        self.answers = 0

    def render_POST(self, request: Request) -> int:
        self.answers += 1
        request.setHeader(b"content-type", b"application/json")
        request.write(b'{"url": "http://127.0.0.1:1", "pad": "')
        flood = _Flood(self, request)
        request.registerProducer(flood, False)
        request.notifyFinish().addErrback(lambda _: flood.stopProducing())
        return NOT_DONE_YET


class RouteAnswerSizeTests(TestCase):
    timeout = 60

    async def test_a_200_mb_route_answer_is_not_read(self) -> None:
        """Each answer is read to 1 MiB, then closed; the caller gets a 502 saying so."""
        flood = _FloodingAutoscaler()
        port = listen(self, Site(flood))
        self.env = await start_chain(self, workers=0, autoscaler_url=f"http://127.0.0.1:{port}")
        answered: Deferred[Any] = ensureDeferred(
            self.env.http.request(b"POST", b"/v1/chat/completions", body=json.dumps(CHAT).encode())
        )
        await advance_until(self.env.clock, lambda: answered.called, step=1.0)
        response, body = await answered
        self.assertEqual(response.code, 502, body)
        error = json.loads(body)
        self.assertEqual(error["origin"], "autoscaler")
        self.assertIn(f"answered more than {ROUTE_ANSWER_LIMIT} bytes", error["error"])
        self.assertEqual(flood.answers, 3)
        # What the flood got out before the client closed: socket buffers at
        # most, not the 600 MB it had to give.
        self.assertLess(flood.sent, flood.answers * (16 << 20), flood.sent)
        self.assertEqual(self.env.client.parts.core.limiter.in_flight, 0)
