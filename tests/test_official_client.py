"""
The official Vast client (``vastai`` 1.9.1) drives a Vespa worker with its
default settings through an autoscaler that signs the way Vast signs today:
end to end, every socket real.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.trial.unittest import TestCase

from tests.official import (
    API_KEY,
    official_client,
    official_endpoint,
    run_official,
    start_official_stack,
)
from vespa.worker.ledger import Outcome

CHAT = "/v1/chat/completions"


def _chat(text: str, **extra: Any) -> dict[str, Any]:
    return {"model": "fake-model", "messages": [{"role": "user", "content": text}], **extra}


class OfficialClientTests(TestCase):
    """Unary requests with the cached url signature, and a stream."""

    timeout = 60

    async def test_unary_requests_with_the_cached_signature(self) -> None:
        """
        Several requests, each routed by the stand-in with the same url
        signature, all answered 200; the worker never passes the endpoint key
        on, and logs requests as served.
        """
        stack = await start_official_stack(self)

        async def work() -> list[dict[str, Any]]:
            async with official_client(stack.autoscaler_url) as client:
                endpoint = official_endpoint(client)
                return [
                    await endpoint.request(CHAT, _chat(f"hello {n}", max_tokens=3))
                    for n in range(4)
                ]

        results = await run_official(work)
        self.assertEqual([r["status"] for r in results], [200] * 4)
        for result in results:
            self.assertTrue(result["ok"])
            self.assertEqual(result["response"]["object"], "chat.completion")
            self.assertEqual(result["url"], stack.worker_url)
        signatures = {r["auth_data"]["signature"] for r in results}
        self.assertEqual(len(signatures), 1)  # one cached signature, admitted 4 times
        self.assertEqual(len({r["request_idx"] for r in results}), 4)
        self.assertEqual(stack.worker.resource.verifier.form_seen, "url")
        self.assertEqual(stack.worker.ledger.totals[Outcome.SERVED].requests, 4)
        self.assert_no_endpoint_key(stack)
        bodies = [json.loads(b) if isinstance(b, bytes) else b for b in stack.model.bodies]
        self.assertEqual(bodies[-1], _chat("hello 3", max_tokens=3))

    async def test_stream(self) -> None:
        """A streamed chat completion arrives through the worker as the model sent it."""
        stack = await start_official_stack(self)

        async def work() -> tuple[dict[str, Any], list[Any]]:
            async with official_client(stack.autoscaler_url) as client:
                endpoint = official_endpoint(client)
                result = await endpoint.request(
                    CHAT, _chat("stream please", max_tokens=5, stream=True), stream=True
                )
                events = [event async for event in result["response"]]
                return result, events

        result, events = await run_official(work)
        self.assertEqual(result["status"], 200)
        deltas = [e["choices"][0]["delta"].get("content", "") for e in events if e.get("choices")]
        self.assertGreaterEqual(len(deltas), 5)
        self.assertTrue(all(e["object"] == "chat.completion.chunk" for e in events))
        self.assert_no_endpoint_key(stack)

    async def test_five_field_signatures_too(self) -> None:
        """An autoscaler still signing the five fields is served by the same defaults."""
        stack = await start_official_stack(self)
        stack.autoscaler.signing_mode = "full"

        async def work() -> list[int]:
            async with official_client(stack.autoscaler_url) as client:
                endpoint = official_endpoint(client)
                return [(await endpoint.request(CHAT, _chat("x")))["status"] for _ in range(2)]

        self.assertEqual(await run_official(work), [200, 200])
        self.assertEqual(stack.worker.resource.verifier.form_seen, "full")

    def assert_no_endpoint_key(self, stack: Any) -> None:
        """What the model server received: no Authorization, no api_key, no routing data."""
        generations = [r for r in stack.backend.received if r[1] != b"/health"]
        self.assertTrue(generations)
        for method, uri, headers in generations:
            self.assertEqual((method, uri), (b"POST", CHAT.encode()))
            self.assertNotIn(b"authorization", headers)
            flat = b" ".join(v for values in headers.values() for v in values)
            self.assertNotIn(API_KEY.encode(), flat)


class DebugWorkerUrlTests(TestCase):
    """The official client's ``VAST_DEBUG_WORKER_URL`` path against an unsecured worker."""

    timeout = 60

    async def test_partial_auth_data_is_unwrapped(self) -> None:
        """
        With ``VAST_DEBUG_WORKER_URL`` the client skips ``/route/`` and sends
        ``auth_data`` holding only a url and an index: an unsecured worker
        relays the payload.
        """
        import os

        stack = await start_official_stack(self, unsecured=True)
        self.patch(os, "environ", {**os.environ, "VAST_DEBUG_WORKER_URL": stack.worker_url})

        async def work() -> dict[str, Any]:
            async with official_client(stack.autoscaler_url) as client:
                return await official_endpoint(client).request(CHAT, _chat("debug", max_tokens=2))

        result = await run_official(work)
        self.assertEqual(result["status"], 200, result)
        self.assertEqual(result["auth_data"], {"request_idx": 1, "url": stack.worker_url})
        self.assertEqual(stack.autoscaler.route_requests, [])
        self.assertEqual(stack.model.bodies[-1], _chat("debug", max_tokens=2))
