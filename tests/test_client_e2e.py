"""
End to end, the client daemon: callers on one side, the autoscaler stand-in
and real workers on the other, every socket real, the client's timers on a
``Clock``.
"""

from __future__ import annotations

import json
import re
from typing import Any

from twisted.internet import threads
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import SkipTest, TestCase

from tests.support import listen, raw_connect, until
from tests.support_client import advance_until, start_chain, vespa_headers
from vespa.client.policy import MAX_BACKOFF, Preferences
from vespa.worker.ledger import Outcome

CHAT = {"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 8}


def _json_headers(**extra: str) -> dict[bytes, list[bytes]]:
    headers = {b"Content-Type": [b"application/json"]}
    headers.update({k.replace("_", "-").encode(): [v.encode()] for k, v in extra.items()})
    return headers


class E2ETestCase(TestCase):
    timeout = 30

    async def post(
        self, path: bytes, payload: Any, headers: dict[bytes, list[bytes]] | None = None
    ) -> Any:
        """Send a JSON POST through the client; the response and its parsed body."""
        return await self.env.http.request(
            b"POST",
            path,
            headers={**_json_headers(), **(headers or {})},
            body=json.dumps(payload).encode(),
        )


class RoutingTests(E2ETestCase):
    """Requests are routed, wrapped, signed, and answered by a worker."""

    async def test_chat_completion_through_the_chain(self) -> None:
        """A plain JSON POST comes back from a worker, with the X-Vespa headers."""
        self.env = await start_chain(self)
        response, body = await self.post(b"/v1/chat/completions", CHAT)
        self.assertEqual(response.code, 200, body)
        answer = json.loads(body)
        self.assertEqual(answer["object"], "chat.completion")
        headers = vespa_headers(response)
        self.assertEqual(headers["x-vespa-worker"], self.env.a.url)
        self.assertEqual(headers["x-vespa-attempts"], "1")
        self.assertEqual(headers["x-vespa-route-ms"], "0")  # the Clock did not move
        route = self.env.autoscaler.route_requests[-1]
        self.assertEqual(route, {"endpoint": "demo-endpoint", "cost": 8})

    async def test_waiting_then_routed(self) -> None:
        """A "no worker ready" answer is polled until a worker is ready, same request_idx."""
        self.env = await start_chain(self, ready=False)
        pending = self.post(b"/v1/chat/completions", CHAT)
        answered = ensureDeferred(pending)
        router = self.env.client.parts.router
        await until(lambda: router.stats.waiting_answers >= 1)
        await advance_until(self.env.clock, lambda: router.stats.waiting_answers >= 3)
        self.env.autoscaler.set_worker_ready(self.env.b.url, True)
        await advance_until(self.env.clock, lambda: answered.called)
        response, body = await answered
        self.assertEqual(response.code, 200, body)
        headers = vespa_headers(response)
        self.assertEqual(headers["x-vespa-worker"], self.env.b.url)
        self.assertGreater(int(headers["x-vespa-route-ms"]), 0)
        idxs = [r.get("request_idx") for r in self.env.autoscaler.route_requests]
        self.assertIsNone(idxs[0])
        self.assertEqual(len(set(idxs[1:])), 1)
        self.assertIsNotNone(idxs[1])

    async def test_no_worker_ready_times_out_with_503(self) -> None:
        """Past --route-timeout the caller gets a 503 JSON saying no worker is ready."""
        self.env = await start_chain(self, ready=False, route_timeout=20.0)
        answered = ensureDeferred(self.post(b"/v1/chat/completions", CHAT))
        await advance_until(self.env.clock, lambda: answered.called)
        response, body = await answered
        self.assertEqual(response.code, 503)
        error = json.loads(body)
        self.assertEqual(error["origin"], "autoscaler")
        self.assertIn("no worker", error["error"])
        self.assertIn("loading workers: 2", error["status"])
        self.assertEqual(vespa_headers(response)["x-vespa-attempts"], "0")

    async def test_wrong_key_is_401_with_a_hint(self) -> None:
        """The autoscaler's 401 becomes a 401 that explains endpoint vs account keys."""
        self.env = await start_chain(self, api_key="not-the-key")
        response, body = await self.post(b"/v1/chat/completions", CHAT)
        self.assertEqual(response.code, 401)
        error = json.loads(body)
        self.assertEqual(error["origin"], "autoscaler")
        self.assertIn("account key", error["error"])


class RetryTests(E2ETestCase):
    """Before the first byte a failed attempt goes to another worker; after it, never."""

    async def test_connection_refused_is_retried(self) -> None:
        """A worker that refuses the connection never had the request: another one is tried."""
        self.env = await start_chain(self)
        a, b = self.env.a, self.env.b
        await a.switch.kill()
        answered = ensureDeferred(self.post(b"/v1/chat/completions", CHAT))
        await until(lambda: self.env.dispatcher.stats.retries == 1)
        self.env.clock.advance(MAX_BACKOFF)
        response, body = await answered
        self.assertEqual(response.code, 200, body)
        headers = vespa_headers(response)
        self.assertEqual(headers["x-vespa-worker"], b.url)
        self.assertEqual(headers["x-vespa-attempts"], "2")
        self.assertEqual((len(a.backend.received), len(b.backend.received)), (0, 1))
        idxs = [r.get("request_idx") for r in self.env.autoscaler.route_requests]
        self.assertEqual(len(idxs), 2)
        self.assertIsNone(idxs[0])
        self.assertIsNotNone(idxs[1])

    async def test_worker_killed_after_first_byte_is_not_retried(self) -> None:
        """Once a byte reached the caller, a dying worker ends the stream abnormally."""
        self.env = await start_chain(self)
        a, b = self.env.a, self.env.b
        a.backend.mode = "first-then-hold"
        caller = await raw_connect(self.env.port)
        body = json.dumps({**CHAT, "stream": True}).encode()
        caller.transport.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        await caller.wait_for(b'data: {"n": 0}')
        self.assertIn(b"X-Vespa-Attempts: 1", caller.data)
        a.switch.kill()
        await caller.closed
        self.assertNotIn(b"0\r\n\r\n", caller.data)  # no final chunk: an abnormal end
        self.assertEqual(self.env.dispatcher.stats.retries, 0)
        self.assertEqual(b.backend.received, [])

    async def test_a_full_worker_429_is_routed_elsewhere(self) -> None:
        """A worker's 429 (its queue is full) sends the request to another worker."""
        self.env = await start_chain(self, worker_overrides=[{"throughput": 1.0}, {}])
        a, b = self.env.a, self.env.b
        self.env.autoscaler.set_worker_ready(b.url, False)
        a.backend.mode = "hold"
        # Fills worker a: 100 units of work at 1 unit/s is 100 s of queue.
        held = ensureDeferred(self.post(b"/v1/chat/completions", {**CHAT, "max_tokens": 100}))
        self.addCleanup(lambda: held.addErrback(lambda _: None).cancel())
        await a.backend.wait("request")
        second = ensureDeferred(self.post(b"/v1/chat/completions", CHAT))
        await until(lambda: self.env.dispatcher.stats.retries == 1)
        self.assertEqual(a.worker.ledger.totals[Outcome.REJECTED].requests, 1)
        self.env.autoscaler.set_worker_ready(b.url, True)
        self.env.clock.advance(MAX_BACKOFF)
        response, body = await second
        self.assertEqual(response.code, 200, body)
        self.assertEqual(vespa_headers(response)["x-vespa-worker"], b.url)
        self.assertEqual(vespa_headers(response)["x-vespa-attempts"], "2")

    async def test_retry_budget_exhausted(self) -> None:
        """With the budget spent, a failed attempt is not retried: the worker's answer is given."""
        self.env = await start_chain(self, workers=1, retry_budget_min=1)
        a = self.env.a
        a.backend.mode = "status"
        a.backend.status = 503
        prefs = {
            b"X-Vespa-Request-Preferences": [b'{"retry_budget_pct": 0, "idempotent": true}']
        }
        first = ensureDeferred(self.post(b"/v1/chat/completions", CHAT, prefs))
        await until(lambda: self.env.dispatcher.stats.retries == 1)
        self.env.clock.advance(MAX_BACKOFF)
        response, body = await first
        self.assertEqual(response.code, 503)
        self.assertEqual(json.loads(body)["error"], "backend a says 503")
        self.assertEqual(vespa_headers(response)["x-vespa-attempts"], "2")
        response, body = await self.post(b"/v1/chat/completions", CHAT, prefs)
        self.assertEqual(response.code, 503)
        self.assertEqual(vespa_headers(response)["x-vespa-attempts"], "1")
        self.assertEqual(self.env.dispatcher.stats.retries_refused_by_budget, 2)

    async def test_backend_4xx_is_never_retried(self) -> None:
        """A model server's own 4xx is the caller's answer, at once."""
        self.env = await start_chain(self)
        response, body = await self.post(b"/v1/chat/completions", {"messages": "nope"})
        self.assertEqual(response.code, 400, body)
        self.assertEqual(vespa_headers(response)["x-vespa-attempts"], "1")
        self.assertEqual(self.env.dispatcher.stats.retries, 0)

    async def test_caller_leaving_closes_the_worker_request(self) -> None:
        """A caller that disconnects cancels the worker's request (the backend sees it)."""
        self.env = await start_chain(self)
        a = self.env.a
        a.backend.mode = "hold"
        caller = await raw_connect(self.env.port)
        body = json.dumps(CHAT).encode()
        caller.transport.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
            % (len(body), body)
        )
        await a.backend.wait("request")
        caller.transport.loseConnection()
        await a.backend.wait("disconnect")
        await until(lambda: self.env.client.parts.core.limiter.in_flight == 0)


class LimitTests(E2ETestCase):
    async def test_a_full_queue_is_429_from_vespa(self) -> None:
        """Past --max-in-flight and --max-queue, a request is refused at once."""
        self.env = await start_chain(self, max_in_flight=1, max_queue=0)
        self.env.a.backend.mode = "hold"
        held = ensureDeferred(self.post(b"/v1/chat/completions", CHAT))
        self.addCleanup(lambda: held.addErrback(lambda _: None).cancel())
        await self.env.a.backend.wait("request")
        response, body = await self.post(b"/v1/chat/completions", CHAT)
        self.assertEqual(response.code, 429)
        self.assertEqual(json.loads(body)["origin"], "vespa")
        self.assertEqual(response.headers.getRawHeaders(b"retry-after"), [b"1"])

    async def test_timeout_before_the_first_byte_is_504(self) -> None:
        """timeout_s passes with no answer: 504 from vespa, the worker's request closed."""
        self.env = await start_chain(self)
        a = self.env.a
        a.backend.mode = "hold"
        prefs = {b"X-Vespa-Request-Preferences": [b'{"timeout_s": 2}']}
        answered = ensureDeferred(self.post(b"/v1/chat/completions", CHAT, prefs))
        await a.backend.wait("request")
        self.env.clock.advance(2)
        response, body = await answered
        self.assertEqual(response.code, 504)
        self.assertEqual(json.loads(body)["origin"], "vespa")
        self.assertEqual(vespa_headers(response)["x-vespa-worker"], a.url)
        await a.backend.wait("disconnect")


class HedgeTests(E2ETestCase):
    async def test_hedge_wins_and_the_loser_is_cancelled(self) -> None:
        """No first byte after hedge_delay: a second worker answers, the first is cancelled."""
        self.env = await start_chain(self)
        a, b = self.env.a, self.env.b
        a.backend.mode = "hold"
        prefs = {b"X-Vespa-Request-Preferences": [b'{"hedge_delay": 0.5}']}
        answered = ensureDeferred(self.post(b"/v1/chat/completions", CHAT, prefs))
        await a.backend.wait("request")
        self.env.clock.advance(0.5)
        response, body = await answered
        self.assertEqual(response.code, 200, body)
        self.assertEqual(vespa_headers(response)["x-vespa-worker"], b.url)
        self.assertEqual(vespa_headers(response)["x-vespa-attempts"], "2")
        await a.backend.wait("disconnect")
        stats = self.env.dispatcher.stats
        self.assertEqual((stats.hedges, stats.hedges_won), (1, 1))


class OpenAISDKTests(E2ETestCase):
    """The openai SDK, pointed at the client, works as against any OpenAI server."""

    def sdk(self) -> Any:
        try:
            from openai import OpenAI
        except ImportError:  # pragma: no cover - a test dependency
            raise SkipTest("the openai package is not installed") from None
        return OpenAI(
            base_url=f"http://127.0.0.1:{self.env.port}/v1", api_key="unused", max_retries=0
        )

    async def test_non_streaming(self) -> None:
        """A chat completion, with the X-Vespa headers visible to the SDK."""
        self.env = await start_chain(self)
        sdk = self.sdk()

        def call() -> Any:
            raw = sdk.chat.completions.with_raw_response.create(
                model="vespa-demo", messages=CHAT["messages"], max_tokens=8
            )
            return raw.headers, raw.parse()

        headers, completion = await threads.deferToThread(call)
        self.assertEqual(completion.object, "chat.completion")
        self.assertTrue(completion.choices[0].message.content)
        self.assertEqual(headers["x-vespa-attempts"], "1")
        self.assertIn(headers["x-vespa-worker"], {self.env.a.url, self.env.b.url})
        await threads.deferToThread(sdk.close)

    async def test_streaming(self) -> None:
        """A streamed chat completion arrives as many chunks, the same text as unstreamed."""
        self.env = await start_chain(self)
        sdk = self.sdk()

        def call() -> tuple[list[str], str]:
            pieces = []
            with sdk.chat.completions.create(
                model="vespa-demo", messages=CHAT["messages"], max_tokens=8, stream=True
            ) as stream:
                for chunk in stream:
                    if chunk.choices and chunk.choices[0].delta.content:
                        pieces.append(chunk.choices[0].delta.content)
            whole = sdk.chat.completions.create(
                model="vespa-demo", messages=CHAT["messages"], max_tokens=8
            )
            return pieces, whole.choices[0].message.content or ""

        pieces, whole = await threads.deferToThread(call)
        self.assertGreater(len(pieces), 1)
        self.assertEqual("".join(pieces), whole)
        await threads.deferToThread(sdk.close)


class RequestTests(E2ETestCase):
    """What reaches the worker's model server, and what is refused before."""

    async def test_get_query_is_kept_byte_for_byte(self) -> None:
        """Repeated parameters, JSON-looking values and encodings reach the backend as sent."""
        self.env = await start_chain(self)
        target = b"/echo?a=1&a=2&flag=true&none=null&q=x%20y&list=%5B1%2C2%5D"
        response, body = await self.env.http.request(b"GET", target)
        self.assertEqual(response.code, 200, body)
        self.assertEqual(json.loads(body)["uri"], target.decode())

    async def test_post_body_and_headers_are_forwarded(self) -> None:
        """The payload arrives as the body; end-to-end headers pass, control headers do not."""
        self.env = await start_chain(self)
        response, body = await self.post(
            b"/echo?x=1",
            {"n": [1, 2.5, True, None]},
            {
                b"X-Custom": [b"kept"],
                b"Authorization": [b"Bearer backend-key"],
                b"X-Vespa-Request-Preferences": [b"{}"],
                b"X-Serverless-Cost": [b"42"],
            },
        )
        self.assertEqual(response.code, 200, body)
        echo = json.loads(body)
        self.assertEqual(json.loads(echo["body"]), {"n": [1, 2.5, True, None]})
        self.assertEqual(echo["uri"], "/echo?x=1")
        self.assertEqual(echo["headers"]["x-custom"], ["kept"])
        # A secured worker keeps any caller's key from the model server (issue 9.7).
        self.assertNotIn("authorization", echo["headers"])
        self.assertNotIn("x-vespa-request-preferences", echo["headers"])
        self.assertNotIn("x-serverless-cost", echo["headers"])
        self.assertEqual(echo["headers"]["x-vespa-attempt"], ["1"])
        self.assertEqual(self.env.autoscaler.route_requests[-1]["cost"], 42)

    async def test_non_json_body_is_415(self) -> None:
        """A form body is refused with 415, never replaced by {}."""
        self.env = await start_chain(self)
        response, body = await self.env.http.request(
            b"POST",
            b"/v1/completions",
            headers={b"Content-Type": [b"application/x-www-form-urlencoded"]},
            body=b"prompt=hi&max_tokens=3",
        )
        self.assertEqual(response.code, 415)
        self.assertEqual(json.loads(body)["origin"], "vespa")
        self.assertEqual(self.env.autoscaler.route_requests, [])

    async def test_curl_style_json_without_content_type_is_accepted(self) -> None:
        """curl -d sends JSON as a form: a body that parses as JSON is JSON."""
        self.env = await start_chain(self)
        response, body = await self.env.http.request(
            b"POST",
            b"/v1/chat/completions",
            headers={b"Content-Type": [b"application/x-www-form-urlencoded"]},
            body=json.dumps(CHAT).encode(),
        )
        self.assertEqual(response.code, 200, body)

    async def test_bad_preferences_are_400_naming_the_fields(self) -> None:
        """Unknown and ill-typed preferences are named; nothing is routed."""
        self.env = await start_chain(self)
        response, body = await self.post(
            b"/v1/chat/completions",
            CHAT,
            {b"X-Vespa-Request-Preferences": [b'{"max_retries": "3", "colour": "red"}']},
        )
        self.assertEqual(response.code, 400)
        error = json.loads(body)
        self.assertEqual(error["origin"], "vespa")
        self.assertEqual(set(error["fields"]), {"max_retries", "colour"})
        self.assertEqual(self.env.autoscaler.route_requests, [])

    async def test_health_answers_locally(self) -> None:
        """GET /health names the endpoint and counts requests, without routing."""
        self.env = await start_chain(self)
        await self.post(b"/v1/chat/completions", CHAT)
        response, body = await self.env.http.request(b"GET", b"/health")
        self.assertEqual(response.code, 200)
        health = json.loads(body)
        self.assertEqual(health["endpoint"], "demo-endpoint")
        self.assertEqual(health["requests"]["answered"], 1)
        self.assertEqual(len(self.env.autoscaler.route_requests), 1)


class BatchTests(E2ETestCase):
    """Embeddings over batch_size are split across workers and merged in order."""

    async def test_order_and_usage(self) -> None:
        """Ten inputs in parts of three: one answer, in input order, usage summed."""
        self.env = await start_chain(self)
        texts = [f"text number {i}" + "x" * i for i in range(10)]
        response, body = await self.post(
            b"/v1/embeddings",
            {"model": "demo", "input": texts},
            {b"X-Vespa-Request-Preferences": [b'{"batch_size": 3}']},
        )
        self.assertEqual(response.code, 200, body)
        answer = json.loads(body)
        self.assertEqual([row["index"] for row in answer["data"]], list(range(10)))
        self.assertEqual([row["embedding"][0] for row in answer["data"]], [len(t) for t in texts])
        self.assertEqual(answer["usage"], {"prompt_tokens": 10, "total_tokens": 20})
        workers = vespa_headers(response)["x-vespa-worker"].split(",")
        self.assertEqual(set(workers), {self.env.a.url, self.env.b.url})
        self.assertEqual(vespa_headers(response)["x-vespa-attempts"], "4")
        self.assertEqual(len(self.env.a.backend.received) + len(self.env.b.backend.received), 4)

    async def test_a_failed_part_fails_the_request_and_is_named(self) -> None:
        """A part the model server refuses fails the whole request, naming the part."""
        self.env = await start_chain(self)
        texts = ["t0", "t1", "t2", "t3", "t4", "t5", "t6", "FAIL", "t8", "t9"]
        response, body = await self.post(
            b"/v1/embeddings",
            {"input": texts},
            {b"X-Vespa-Request-Preferences": [b'{"batch_size": 3}']},
        )
        self.assertEqual(response.code, 400)
        error = json.loads(body)
        self.assertIn("part 3 of 4 (inputs 6-8)", error["error"])
        self.assertEqual(error["part"], 3)
        self.assertEqual(error["part_status"], 400)

    async def test_small_batches_are_not_split(self) -> None:
        """Up to batch_size inputs go as one request."""
        self.env = await start_chain(self)
        response, body = await self.post(b"/v1/embeddings", {"input": ["a", "b"]})
        self.assertEqual(response.code, 200, body)
        self.assertEqual(vespa_headers(response)["x-vespa-attempts"], "1")


class DeliveredOnceTests(E2ETestCase):
    """
    The attacks of issue 10 item 5: each failure below happens after the
    worker relayed the POST to its model server; the model server must see
    it exactly once, and the caller get an answer naming the failure.
    """

    def delivered(self) -> list[int]:
        """How many times each model server received a request."""
        return [len(w.backend.received) for w in self.env.workers]

    async def held(self, prefs: bytes = b"{}", **chain: Any) -> Deferred[Any]:
        """
        Start the chain with ``chain``'s settings and POST through it; returns
        once worker a's model server holds the request, with the answer to come.
        """
        self.env = await start_chain(self, **chain)
        self.env.a.backend.mode = "hold"
        headers = {b"X-Vespa-Request-Preferences": [prefs]}
        answered = ensureDeferred(self.post(b"/v1/chat/completions", CHAT, headers))
        await self.env.a.backend.wait("request")
        return answered

    async def test_worker_reset_after_reading_the_body(self) -> None:
        """The worker's connection is reset with the request relayed: 502, no retry."""
        answered = await self.held()
        self.env.a.switch.kill()
        response, body = await answered
        self.assertEqual(response.code, 502, body)
        error = json.loads(body)
        self.assertEqual(error["origin"], "worker")
        self.assertIn("may have received the request", error["retry"])
        self.assertEqual(vespa_headers(response)["x-vespa-attempts"], "1")
        self.assertEqual(self.delivered(), [1, 0])
        self.assertEqual(self.env.dispatcher.stats.retries, 0)

    async def test_raw_worker_resets_after_reading_the_body(self) -> None:
        """A worker that reads the whole POST, then resets: it got the POST once."""
        self.env = await start_chain(self, workers=1)
        resetting = _ResettingWorker()
        port = listen(self, resetting)
        self.env.autoscaler.remove_worker(self.env.a.url)
        self.env.autoscaler.register_worker(f"http://127.0.0.1:{port}")
        response, body = await self.post(b"/v1/chat/completions", CHAT)
        self.assertEqual(response.code, 502, body)
        self.assertIn("may have received the request", json.loads(body)["retry"])
        self.assertEqual(resetting.deliveries, 1)
        self.assertEqual(len(self.env.autoscaler.route_requests), 1)

    async def test_workers_own_502(self) -> None:
        """The worker's backend died with the request: the worker's 502 is the answer."""
        self.env = await start_chain(self)
        self.env.a.backend.mode = "die"
        response, body = await self.post(b"/v1/chat/completions", CHAT)
        self.assertEqual(response.code, 502, body)
        self.assertEqual(json.loads(body)["origin"], "vespa")
        self.assertEqual(vespa_headers(response)["x-vespa-worker"], self.env.a.url)
        self.assertEqual(self.delivered(), [1, 0])

    async def test_workers_own_504(self) -> None:
        """The worker's backend was slower than the worker's timeout: its 504, no retry."""
        timeouts = [{"first_byte_timeout": 5.0}] * 2
        answered = await self.held(worker_overrides=timeouts)
        self.env.worker_clock.advance(5)
        response, body = await answered
        self.assertEqual(response.code, 504, body)
        self.assertEqual(json.loads(body)["origin"], "vespa")
        self.assertEqual(self.delivered(), [1, 0])
        self.assertEqual(self.env.dispatcher.stats.retries, 0)

    async def test_client_first_byte_timeout(self) -> None:
        """The backend is slower than the client's --first-byte-timeout: 504, no retry."""
        answered = await self.held(first_byte_timeout=30.0)
        self.env.clock.advance(30)
        response, body = await answered
        self.assertEqual(response.code, 504, body)
        error = json.loads(body)
        self.assertEqual(error["origin"], "worker")
        self.assertIn("sent nothing within 30 s", error["error"])
        await self.env.a.backend.wait("disconnect")
        self.assertEqual(self.delivered(), [1, 0])

    async def test_idempotent_requests_are_retried(self) -> None:
        """Marked idempotent, the same failures go to another worker (delivered twice)."""
        answered = await self.held(b'{"idempotent": true}', first_byte_timeout=30.0)
        self.env.clock.advance(30)
        await until(lambda: self.env.dispatcher.stats.retries == 1)
        self.env.clock.advance(MAX_BACKOFF)
        response, body = await answered
        self.assertEqual(response.code, 200, body)
        self.assertEqual(vespa_headers(response)["x-vespa-worker"], self.env.b.url)
        self.assertEqual(self.delivered(), [1, 1])

    async def test_idempotent_option(self) -> None:
        """--idempotent makes it the default: a worker's own 502 is retried."""
        self.env = await start_chain(self, prefs=Preferences(idempotent=True))
        self.env.a.backend.mode = "die"
        answered = ensureDeferred(self.post(b"/v1/chat/completions", CHAT))
        await until(lambda: self.env.dispatcher.stats.retries == 1)
        self.env.clock.advance(MAX_BACKOFF)
        response, body = await answered
        self.assertEqual(response.code, 200, body)
        self.assertEqual(self.delivered(), [1, 1])


class _ResettingProtocol(Protocol):
    """Reads one request to the end of its body, counts it, and resets the connection."""

    def connectionMade(self) -> None:
        self.data = b""

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        head, sep, body = self.data.partition(b"\r\n\r\n")
        if not sep:
            return
        length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
        if length is not None and len(body) >= int(length.group(1)):
            self.factory.deliveries += 1  # type: ignore[attr-defined]
            self.transport.abortConnection()  # type: ignore[union-attr]


class _ResettingWorker(Factory):
    protocol = _ResettingProtocol
    noisy = False
    deliveries = 0
