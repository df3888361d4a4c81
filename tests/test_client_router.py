"""
The router and the key look-up, against the autoscaler stand-in (and a fake
console API) in memory, with a ``Clock``.
"""

from __future__ import annotations

import json
import random
from typing import Any

from treq.testing import StubTreq
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from tests.support import shared_key
from tests.support_client import Console
from vespa.client.errors import (
    AutoscalerError,
    AutoscalerUnauthorized,
    EndpointNotFound,
    NoWorkerReady,
)
from vespa.client.router import ROUTE_ANSWER_LIMIT, ROUTE_ATTEMPTS, KeySource, Router
from vespa.testing.autoscaler import Autoscaler

WORKER = "http://203.0.113.9:4000"


class RouterTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.autoscaler = Autoscaler(self.clock, key=shared_key())
        self.stub = StubTreq(self.autoscaler.resource())

    def router(self, key: str = "demo-key", **kw: Any) -> Router:
        return Router(
            self.stub,
            self.clock,
            autoscaler_url="http://autoscaler.test",
            endpoint=kw.pop("endpoint", "demo-endpoint"),
            keys=KeySource(key),
            rng=random.Random(0),
            **kw,
        )

    def settle(self, d: Deferred[Any], *, step: float = 0.5, limit: int = 400) -> None:
        """Flush the in-memory HTTP and advance the clock until ``d`` fires."""
        for _ in range(limit):
            self.stub.flush()
            if d.called:
                return
            self.clock.advance(step)
        self.fail("never fired")


class RouteTests(RouterTestCase):
    def test_routed(self) -> None:
        """A ready worker: its url and the six signed fields, as the autoscaler gave them."""
        self.autoscaler.register_worker(WORKER)
        d = self.router().route(100)
        self.settle(d)
        route = self.successResultOf(d)
        self.assertEqual(route.url, WORKER)
        self.assertEqual(
            set(route.auth), {"cost", "endpoint", "reqnum", "request_idx", "signature", "url"}
        )
        self.assertEqual(route.auth["cost"], 100)
        self.assertEqual(route.request_idx, route.auth["request_idx"])
        self.assertEqual(
            self.autoscaler.route_requests, [{"endpoint": "demo-endpoint", "cost": 100}]
        )

    def test_retry_sends_the_request_idx(self) -> None:
        self.autoscaler.register_worker(WORKER)
        d = self.router().route(5, request_idx=77)
        self.settle(d)
        self.assertEqual(self.successResultOf(d).auth["request_idx"], 77)
        self.assertEqual(self.autoscaler.route_requests[0]["request_idx"], 77)

    def test_waiting_then_routed(self) -> None:
        """No worker ready: polled with backoff and the same request_idx until one is."""
        self.autoscaler.register_worker(WORKER, ready=False)
        router = self.router()
        d = router.route(1)
        self.stub.flush()
        self.assertNoResult(d)
        for _ in range(5):
            self.clock.advance(5)
            self.stub.flush()
        self.assertNoResult(d)
        self.autoscaler.set_worker_ready(WORKER, True)
        self.settle(d)
        route = self.successResultOf(d)
        self.assertEqual(route.url, WORKER)
        self.assertGreater(route.polls, 3)
        self.assertGreater(route.waited, 0)
        idxs = {r.get("request_idx") for r in self.autoscaler.route_requests[1:]}
        self.assertEqual(idxs, {route.request_idx})
        self.assertIn("loading workers: 1", router.stats.last_status)

    def test_no_worker_ready_until_the_deadline(self) -> None:
        self.autoscaler.register_worker(WORKER, ready=False)
        d = self.router(route_timeout=30.0).route(1)
        self.settle(d)
        error = self.failureResultOf(d, NoWorkerReady).value
        self.assertEqual(error.status, 503)
        self.assertEqual(error.origin, "autoscaler")
        self.assertIn("total workers: 1", error.details["status"])
        self.assertLessEqual(error.details["waited_s"], 30.0)
        self.assertLessEqual(self.clock.seconds(), 31)

    def test_a_request_deadline_shortens_the_wait(self) -> None:
        self.autoscaler.register_worker(WORKER, ready=False)
        d = self.router(route_timeout=None).route(1, deadline=4.0)
        self.settle(d, step=0.1)
        self.failureResultOf(d, NoWorkerReady)
        self.assertLess(self.clock.seconds(), 4.5)

    def test_wrong_key(self) -> None:
        d = self.router(key="account-key").route(1)
        self.settle(d)
        error = self.failureResultOf(d, AutoscalerUnauthorized).value
        self.assertEqual(error.status, 401)
        self.assertIn("account key", error.message)
        self.assertEqual(len(self.autoscaler.route_requests), 1)  # never retried

    def test_unknown_endpoint(self) -> None:
        d = self.router(endpoint="other").route(1)
        self.settle(d)
        self.assertEqual(self.failureResultOf(d, EndpointNotFound).value.status, 404)

    def test_5xx_is_retried(self) -> None:
        self.autoscaler.register_worker(WORKER)
        self.autoscaler.fail("500", paths=["route"], times=2)
        d = self.router().route(1)
        self.settle(d)
        self.assertEqual(self.successResultOf(d).url, WORKER)

    def test_5xx_gives_up_after_three_attempts(self) -> None:
        self.autoscaler.fail("500", paths=["route"])
        router = self.router()
        d = router.route(1)
        self.settle(d)
        error = self.failureResultOf(d, AutoscalerError).value
        self.assertEqual(error.status, 502)
        self.assertIn("answered 500", error.message)
        self.assertEqual(len(self.autoscaler.injected_failures), 3)

    def test_a_hung_autoscaler_times_out(self) -> None:
        self.autoscaler.fail("hang", paths=["route"])
        d = self.router(call_timeout=2.0).route(1)
        self.settle(d)
        error = self.failureResultOf(d, AutoscalerError).value
        self.assertIn("did not answer within 2 s", error.message)

    def test_cancel_stops_waiting(self) -> None:
        self.autoscaler.register_worker(WORKER, ready=False)
        d = self.router().route(1)
        self.stub.flush()
        calls = len(self.autoscaler.route_requests)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.clock.advance(60)
        self.stub.flush()
        self.assertEqual(len(self.autoscaler.route_requests), calls)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class HostileAnswerTests(RouterTestCase):
    """Route answers that must not be used: each is a failed attempt, named, never a hang."""

    def test_unusable_url_is_asked_again_then_refused(self) -> None:
        self.autoscaler.register_worker("http://user:secret@203.0.113.9:4000")
        d = self.router().route(1)
        self.settle(d)
        error = self.failureResultOf(d, AutoscalerError).value
        self.assertEqual((error.status, error.origin), (502, "autoscaler"))
        self.assertIn("unusable route", error.message)
        self.assertIn("credentials", error.message)
        self.assertNotIn("secret", error.message)
        self.assertEqual(len(self.autoscaler.route_requests), ROUTE_ATTEMPTS)
        idxs = {r.get("request_idx") for r in self.autoscaler.route_requests[1:]}
        self.assertEqual(len(idxs), 1)  # asked again for the same request

    def test_a_good_url_after_a_bad_one(self) -> None:
        self.autoscaler.register_worker("http://203.0.113.9:4000\r\n")
        router = self.router()
        d = router.route(1)
        self.stub.flush()
        self.autoscaler.remove_worker("http://203.0.113.9:4000\r\n")
        self.autoscaler.register_worker(WORKER)
        self.settle(d)
        self.assertEqual(self.successResultOf(d).url, WORKER)

    def route_with_answer(self, resource: Resource) -> AutoscalerError:
        """Route against ``resource`` as the autoscaler; the error it ends in."""
        self.stub = StubTreq(resource)
        d = self.router().route(1)
        self.settle(d)
        return self.failureResultOf(d, AutoscalerError).value

    def test_an_answer_over_the_limit_is_not_read(self) -> None:
        """A route answer with a Content-Length over the cap: refused before reading."""
        error = self.route_with_answer(_Huge(chunked=False))
        self.assertIn(f"answered more than {ROUTE_ANSWER_LIMIT} bytes", error.message)

    def test_a_streamed_answer_is_cut_at_the_limit(self) -> None:
        """A chunked route answer (no length): reading stops past the cap."""
        error = self.route_with_answer(_Huge(chunked=True))
        self.assertIn(f"answered more than {ROUTE_ANSWER_LIMIT} bytes", error.message)


    def test_an_echoed_key_is_masked(self) -> None:
        """An autoscaler that echoes the key in its errors: the key is not passed on."""
        for status in (401, 500):
            error = self.route_with_answer(_Echo(status))
            self.assertNotIn("demo-key", error.message)
            self.assertIn("key *** is", error.message)


class _Echo(Resource):
    """An autoscaler that echoes the caller's bearer key in an error."""

    isLeaf = True

    def __init__(self, status: int) -> None:
        super().__init__()
        self.status = status

    def render_POST(self, request: Request) -> bytes:
        key = (request.getHeader(b"authorization") or b"").split()[-1].decode()
        request.setResponseCode(self.status)
        return json.dumps({"error": f"key {key} is no good"}).encode()


class _Huge(Resource):
    """An autoscaler whose route answer is 2 MiB of JSON, with or without a length."""

    isLeaf = True

    def __init__(self, chunked: bool) -> None:
        super().__init__()
        self.chunked = chunked

    def render_POST(self, request: Request) -> bytes | int:
        body = json.dumps({"url": WORKER, "pad": "x" * (2 << 20)}).encode()
        if not self.chunked:
            return body
        for i in range(0, len(body), 65536):
            request.write(body[i : i + 65536])
        request.finish()
        return NOT_DONE_YET




class KeySourceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.console = Console()
        self.stub = StubTreq(self.console)

    def keys(self, account: str = "acct", endpoint: str = "demo-endpoint") -> KeySource:
        return KeySource(
            None,
            account_key=account,
            endpoint=endpoint,
            console_url="https://console.test",
            instance="alpha",
            http=self.stub,
            clock=self.clock,
        )

    def test_given_key(self) -> None:
        keys = KeySource("k")
        self.assertTrue(keys.known)
        self.assertEqual(self.successResultOf(keys.get()), "k")

    def test_looked_up_once_and_shared(self) -> None:
        keys = self.keys()
        first, second = keys.get(), keys.get()
        self.stub.flush()
        self.assertEqual(self.successResultOf(first), "the-key")
        self.assertEqual(self.successResultOf(second), "the-key")
        self.assertEqual(self.successResultOf(keys.get()), "the-key")
        self.assertEqual(self.console.requests, [b"/api/v0/endptjobs/?autoscaler_instance=alpha"])

    def test_unknown_endpoint(self) -> None:
        d = self.keys(endpoint="nope").get()
        self.stub.flush()
        self.assertIn("'nope'", self.failureResultOf(d, EndpointNotFound).value.message)

    def test_bad_account_key_then_a_new_attempt(self) -> None:
        """A refused look-up is not remembered: the next one asks again."""
        keys = self.keys(account="acct")
        self.console.account_key = "rotated"  # the console refuses the key for now
        d = keys.get()
        self.stub.flush()
        self.failureResultOf(d, AutoscalerUnauthorized)
        self.assertFalse(keys.known)
        self.console.account_key = "acct"
        d = keys.get()
        self.stub.flush()
        self.assertEqual(self.successResultOf(d), "the-key")

    def test_console_errors_are_retried(self) -> None:
        self.console.status = 503
        d = self.keys().get()
        for _ in range(10):
            self.stub.flush()
            self.clock.advance(1)
        error = self.failureResultOf(d, AutoscalerError).value
        self.assertIn("503", error.message)
        self.assertEqual(len(self.console.requests), 4)

    def test_needs_a_key_or_an_account_key(self) -> None:
        with self.assertRaises(ValueError):
            KeySource(None)
