"""
The Python API, :class:`vespa.client.api.VespaClient`, end to end over loopback.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.trial.unittest import TestCase

from tests.support import until
from tests.support_client import ENDPOINT, advance_until, start_chain
from vespa.client.api import VespaClient, VespaHTTPError
from vespa.client.policy import MAX_BACKOFF

CHAT = {"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 8}


class APITestCase(TestCase):
    timeout = 30

    async def client(self, **chain: Any) -> VespaClient:
        self.env = await start_chain(self, start_client=False, **chain)
        client = VespaClient(config=self.env.config, reactor=reactor, clock=self.env.clock)
        self.addCleanup(client.close)
        return client


class RequestTests(APITestCase):
    async def test_post_json(self) -> None:
        """``await client.post(path, json=...)`` gives the worker's response."""
        client = await self.client()
        response = await client.post("/v1/chat/completions", json=CHAT)
        self.assertEqual(response.code, 200)
        self.assertEqual((await response.json())["object"], "chat.completion")
        self.assertEqual(response.worker, self.env.a.url)
        self.assertEqual(response.attempts, 1)
        self.assertEqual(response.header("X-Vespa-Attempts"), "1")
        self.assertIsNone(response.origin)

    async def test_streaming(self) -> None:
        """A streamed answer is read chunk by chunk with ``async for``."""
        client = await self.client()
        response = await client.post("/v1/chat/completions", json={**CHAT, "stream": True})
        self.assertEqual(response.header("Content-Type"), "text/event-stream")
        chunks = [chunk async for chunk in response.iter_chunks()]
        self.assertGreater(len(chunks), 1)
        self.assertTrue(b"".join(chunks).rstrip().endswith(b"data: [DONE]"))

    async def test_get_with_params(self) -> None:
        """Query parameters: lists repeat the key; booleans and null as JSON spells them."""
        client = await self.client()
        response = await client.get("/echo?x=0", params={"a": [1, 2], "flag": True, "n": None})
        echo = await response.json()
        self.assertEqual(echo["uri"], "/echo?x=0&a=1&a=2&flag=true&n=null")
        self.assertEqual(echo["method"], "GET")

    async def test_headers_and_cost(self) -> None:
        """Given headers reach the model server; ``cost`` goes to /route/."""
        client = await self.client()
        response = await client.post("/echo", json={"k": 1}, headers={"X-Custom": "yes"}, cost=250)
        echo = await response.json()
        self.assertEqual(echo["headers"]["x-custom"], ["yes"])
        self.assertEqual(echo["headers"]["content-type"], ["application/json"])
        self.assertEqual(self.env.autoscaler.route_requests[-1]["cost"], 250)

    async def test_retried_on_another_worker(self) -> None:
        """
        The API retries like the daemon: an idempotent request (its
        ``preferences`` argument) whose worker dies before the first byte.
        """
        client = await self.client()
        self.env.a.backend.mode = "hold"
        call = client.post("/v1/chat/completions", json=CHAT, preferences={"idempotent": True})
        answered = ensureDeferred(_call(call))
        await self.env.a.backend.wait("request")
        self.env.a.switch.kill()
        dispatcher = client.parts.core.dispatcher
        await until(lambda: dispatcher.stats.retries == 1)
        self.env.clock.advance(MAX_BACKOFF)
        response = await answered
        self.assertEqual(response.code, 200)
        self.assertEqual(response.worker, self.env.b.url)
        self.assertEqual(response.attempts, 2)
        await response.content()
        self.assertEqual(len(self.env.b.backend.received), 1)

    async def test_failures_are_responses(self) -> None:
        """No worker ready: a 503 response from the autoscaler; raise_for_status raises."""
        client = await self.client(ready=False, route_timeout=5.0)
        answered = ensureDeferred(_call(client.post("/v1/chat/completions", json=CHAT)))
        await advance_until(self.env.clock, lambda: answered.called)
        response = await answered
        self.assertEqual(response.code, 503)
        self.assertEqual(response.origin, "autoscaler")
        error = await self.assertFailure(ensureDeferred(_check(response)), VespaHTTPError)
        self.assertEqual(error.origin, "autoscaler")

    async def test_cancelling_closes_the_worker_request(self) -> None:
        """Cancelling the await cancels the worker's request."""
        client = await self.client()
        self.env.a.backend.mode = "hold"
        pending: Deferred[Any] = client.post("/v1/chat/completions", json=CHAT)  # type: ignore[assignment]
        await self.env.a.backend.wait("request")
        pending.cancel()
        await self.assertFailure(pending, CancelledError)
        await self.env.a.backend.wait("disconnect")
        self.assertEqual(client.parts.core.limiter.in_flight, 0)

    async def test_batching(self) -> None:
        """The API splits batches as the daemon does."""
        client = await self.client()
        texts = [f"t{i}" for i in range(7)]
        response = await client.post(
            "/v1/embeddings", json={"input": texts}, preferences={"batch_size": 2}
        )
        answer = await response.json()
        self.assertEqual([row["index"] for row in answer["data"]], list(range(7)))
        self.assertEqual(response.attempts, 4)

    async def test_reading_after_close_is_empty(self) -> None:
        """A closed response reads as empty, and frees its place at once."""
        client = await self.client()
        response = await client.post("/v1/chat/completions", json={**CHAT, "stream": True})
        response.close()
        self.assertEqual(client.parts.core.limiter.in_flight, 0)


class ArgumentTests(APITestCase):
    async def test_non_json_data_is_refused(self) -> None:
        """A body method's data must be JSON (workers take nothing else)."""
        client = await self.client()
        with self.assertRaises(ValueError):
            client.post("/v1/completions", data=b"prompt=hi")

    async def test_bad_preferences_are_refused(self) -> None:
        """Unknown or ill-typed preferences raise, naming them."""
        client = await self.client()
        with self.assertRaises(ValueError) as caught:
            client.post("/x", json={}, preferences={"max_retries": -1})
        self.assertIn("max_retries", str(caught.exception))
        with self.assertRaises(TypeError):
            VespaClient(config=self.env.config, reactor=reactor, colour="red")

    def test_settings_from_the_environment(self) -> None:
        """Without arguments, the endpoint and key come from VAST_ENDPOINT and VAST_API_KEY."""
        self.patch(__import__("os"), "environ", {"VAST_ENDPOINT": ENDPOINT, "VAST_API_KEY": "k"})
        client = VespaClient(reactor=reactor)
        self.assertEqual(client.config.endpoint, ENDPOINT)
        self.assertEqual(client.config.api_key, "k")
        self.assertEqual(client.config.autoscaler_url, "https://run.vast.ai")

    def test_missing_key_is_a_value_error(self) -> None:
        """No key anywhere: a ValueError that says what to pass."""
        self.patch(__import__("os"), "environ", {})
        self.patch(__import__("os.path").path, "expanduser", lambda p: self.mktemp())
        with self.assertRaises(ValueError) as caught:
            VespaClient("ep", reactor=reactor)
        self.assertIn("--api-key", str(caught.exception))


async def _call(awaitable: Any) -> Any:
    return await awaitable


async def _check(response: Any) -> None:
    await response.raise_for_status()
