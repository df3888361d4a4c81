"""
Helpers for the worker's end-to-end protocol tests (no tests here): a
:class:`Harness` that signs requests as the autoscaler does, and
:class:`ProtocolTestCase`, a secured worker started per test.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

from twisted.trial.unittest import TestCase

from tests.support import PUBLIC_URL, HTTPClient, shared_key, start_secured_worker
from vespa.protocol.envelope import auth_query, wrap_body
from vespa.testing.autoscaler import sign_auth
from vespa.worker.ledger import Outcome

AUTH_KEYS = ("cost", "endpoint", "reqnum", "request_idx", "signature", "url")


class Harness:
    """Signs requests like the autoscaler and sends them to the worker."""

    def __init__(self, env: Any) -> None:
        self.env = env
        self.reqnum = 1000
        self.request_idx = 5000

    def auth(
        self, cost: Any = 10, *, url: str = PUBLIC_URL, mode: str = "full", **fields: Any
    ) -> dict[str, Any]:
        self.reqnum += 1
        self.request_idx += 1
        auth = {
            "cost": cost,
            "endpoint": "demo-endpoint",
            "reqnum": self.reqnum,
            "request_idx": self.request_idx,
            "url": url,
            **fields,
        }
        auth["signature"] = sign_auth(shared_key(), auth, mode)
        return auth

    async def post(
        self, path: bytes, payload: Any, auth: dict[str, Any] | None = None, **kw: Any
    ) -> tuple[Any, bytes]:
        body = wrap_body(auth if auth is not None else self.auth(**kw), payload)
        return await self.env.client.request(b"POST", path, body=body)

    async def get(
        self, path: bytes, auth: dict[str, Any] | None = None, **kw: Any
    ) -> tuple[Any, bytes]:
        query = urlencode(auth_query(auth if auth is not None else self.auth(**kw))).encode()
        separator = b"&" if b"?" in path else b"?"
        return await self.env.client.request(b"GET", path + separator + query)

    async def routed(self, cost: Any) -> dict[str, Any]:
        """Ask the stand-in for a worker, as a client would."""
        client = HTTPClient(self.env.testcase, self.env.autoscaler_port)
        _, body = await client.request(
            b"POST",
            b"/route/",
            headers={b"Authorization": [b"Bearer demo-key"]},
            body=json.dumps({"endpoint": "demo-endpoint", "cost": cost}).encode(),
        )
        return {k: v for k, v in json.loads(body).items() if k in AUTH_KEYS}


class ProtocolTestCase(TestCase):
    timeout = 30

    async def start(self, **kw: Any) -> Harness:
        # A metrics port (ephemeral), so that refusals are counted: see refused().
        kw.setdefault("metrics_listen", "tcp:0:interface=127.0.0.1")
        self.env = await start_secured_worker(self, **kw)
        self.env.testcase = self
        addresses = self.env.config.vast.report_addresses
        self.env.autoscaler_port = int(addresses[0].rsplit(":", 1)[1]) if addresses else None
        self.ledger = self.env.worker.ledger
        self.h = Harness(self.env)
        return self.h

    def refused(self, status: str) -> float:
        """The worker's local count of refusals with ``status``."""
        registry = self.env.worker.resource.metrics.registry
        return registry.get_sample_value("vespa_refused_requests_total", {"status": status}) or 0.0

    def deleted(self) -> list[int]:
        """Every request_idx in the accepted /delete_requests/ records, in order."""
        return [r["request_idx"] for d in self.env.autoscaler.delete_reports for r in d["requests"]]

    def assert_invariant(self) -> None:
        totals = self.ledger.totals
        self.assertEqual(
            totals.received.requests,
            totals[Outcome.SERVED].requests
            + totals[Outcome.ERRORED].requests
            + totals[Outcome.CANCELLED].requests
            + self.ledger.in_flight_count,
        )

    async def report(self, predicate: Any = lambda r: True) -> dict[str, Any]:
        """Advance the clock one report interval and wait for a matching report."""
        reports = self.env.autoscaler.status_reports
        seen = len(reports)
        for _ in range(20):
            self.env.clock.advance(1)
            await self.env.worker.reporter.flush()
            for report in reports[seen:]:
                if predicate(report):
                    return report
            seen = len(reports)
        raise AssertionError("no matching report within 20 simulated seconds")
