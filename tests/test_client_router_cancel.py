"""
A request abandoned while its ``/route/`` call is on the wire stops routing
(found by ``vespa-loadtest``'s second Ctrl-C, which abandons requests in
flight).
"""

from __future__ import annotations

import random
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web._newclient import RequestGenerationFailed, ResponseNeverReceived

from vespa.client.router import KeySource, Router


class AgentLikeHTTP:
    """An HTTP client that, cancelled mid-request, fails as Agent does: wrapped."""

    def __init__(self, wrapper: type[Exception]) -> None:
        self.wrapper = wrapper
        self.calls = 0

    def request(self, *args: Any, **kwargs: Any) -> Deferred[Any]:
        self.calls += 1

        def cancel(d: Deferred[Any]) -> None:
            d.errback(Failure(self.wrapper([Failure(CancelledError())])))

        return Deferred(cancel)


class CancelMidCallTests(SynchronousTestCase):
    def check(self, wrapper: type[Exception]) -> None:
        clock = Clock()
        http = AgentLikeHTTP(wrapper)
        router = Router(
            http,
            clock,
            autoscaler_url="http://autoscaler.test",
            endpoint="demo-endpoint",
            keys=KeySource("demo-key"),
            rng=random.Random(0),
        )
        d = router.route(1)
        self.assertEqual(http.calls, 1)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        clock.advance(60)
        self.assertEqual(http.calls, 1)  # not tried again
        self.assertEqual(router.stats.errors, 0)

    def test_request_generation_failed(self) -> None:
        self.check(RequestGenerationFailed)

    def test_response_never_received(self) -> None:
        self.check(ResponseNeverReceived)
