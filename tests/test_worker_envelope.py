"""
End to end, what the worker hands the model server of a request, and what a
large envelope costs everyone else: real sockets on loopback.
"""

from __future__ import annotations

import gc
import json
import time
from typing import Any

from twisted.internet import reactor
from twisted.internet.task import LoopingCall, deferLater
from twisted.trial.unittest import TestCase

from tests.support import (
    PUBLIC_URL,
    HTTPClient,
    raw_connect,
    shared_key,
    start_echo_backend,
    start_secured_worker,
    start_worker,
    until,
)
from vespa.protocol.envelope import wrap_body
from vespa.testing.autoscaler import sign_auth
from vespa.worker.ledger import Outcome


def _auth(mode: str = "url", **changes: Any) -> dict[str, Any]:
    auth: dict[str, Any] = {
        "cost": 100,
        "endpoint": "demo-endpoint",
        "reqnum": 1,
        "request_idx": 1,
        "url": PUBLIC_URL,
        **changes,
    }
    auth["signature"] = sign_auth(shared_key(), auth, mode)
    return auth


def _headers(echo: dict[str, Any]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, value in echo["headers"]:
        out.setdefault(name.lower(), []).append(value)
    return out


class CallerKeyTests(TestCase):
    """The endpoint key the official client sends never reaches the model server."""

    timeout = 30

    async def test_secured_drops_authorization_and_api_key(self) -> None:
        """Secured: no Authorization header, no api_key parameter, other parameters kept."""
        env = await start_secured_worker(self, signing_mode="url", signature_mode="auto")
        response, body = await env.client.request(
            b"POST",
            b"/echo/v1/chat?api_key=endpoint-secret&x=1",
            headers={b"Authorization": [b"Bearer endpoint-secret"]},
            body=wrap_body(_auth(), {"p": 1}),
        )
        self.assertEqual(response.code, 200)
        echo = json.loads(body)
        self.assertEqual(echo["uri"], "/echo/v1/chat?x=1")
        self.assertNotIn("authorization", _headers(echo))
        self.assertNotIn("endpoint-secret", body.decode())

    async def test_backend_api_key_in_secured_mode(self) -> None:
        """--backend-api-key is the model server's one Authorization."""
        env = await start_secured_worker(
            self, signing_mode="url", signature_mode="auto", backend_api_key="sk-model"
        )
        _, body = await env.client.request(
            b"POST",
            b"/echo?api_key=endpoint-secret",
            headers={b"Authorization": [b"Bearer endpoint-secret"]},
            body=wrap_body(_auth(), {}),
        )
        echo = json.loads(body)
        self.assertEqual(_headers(echo)["authorization"], ["Bearer sk-model"])
        self.assertEqual(echo["uri"], "/echo")

    async def test_backend_api_key_in_unsecured_mode(self) -> None:
        """Unsecured, the caller's headers pass, but the backend key still replaces its key."""
        _, backend_port = start_echo_backend(self)
        _, port = start_worker(self, backend_port, backend_api_key="sk-model")
        _, body = await HTTPClient(self, port).request(
            b"POST",
            b"/echo?api_key=k",
            headers={b"Authorization": [b"Bearer caller"], b"X-Other": [b"kept"]},
            body=b'{"prompt": 1}',
        )
        echo = json.loads(body)
        headers = _headers(echo)
        self.assertEqual(headers["authorization"], ["Bearer sk-model"])
        self.assertEqual(headers["x-other"], ["kept"])
        self.assertEqual(echo["uri"], "/echo?api_key=k")


class PayloadRelayTests(TestCase):
    """The payload arrives byte for byte; unsecured mode unwraps any auth_data."""

    timeout = 30

    async def test_payload_bytes_reach_the_backend_as_written(self) -> None:
        """1e400, duplicate keys and odd spacing arrive untouched; NaN is refused 422."""
        env = await start_secured_worker(self, signing_mode="url", signature_mode="auto")
        auth = json.dumps(_auth()).encode()
        payload = b'{"a": 1e400,  "a": [1.0, -0],\n "deep": ' + b"[" * 900 + b"]" * 900 + b"}"
        body = b'{"auth_data": %s, "session_id": null, "payload": %s}' % (auth, payload)
        response, answer = await env.client.request(b"POST", b"/echo", body=body)
        self.assertEqual(response.code, 200, answer[:300])
        self.assertEqual(json.loads(answer)["body"].encode("latin-1"), payload)
        nan = b'{"auth_data": %s, "payload": {"t": NaN}}' % (auth,)
        response, answer = await env.client.request(b"POST", b"/echo", body=nan)
        self.assertEqual(response.code, 422)
        self.assertEqual(json.loads(answer), {"error": "invalid JSON", "origin": "vespa"})

    async def test_large_payload_reaches_the_backend_whole(self) -> None:
        """
        A 6 MB payload (relayed in pieces, as the backend reads them) arrives
        byte for byte, and so does one sent to an unsecured worker.
        """
        payload = json.dumps({"prompt": "x" * (6 << 20), "n": 1}).encode()
        secured = await start_secured_worker(self, signing_mode="url", signature_mode="auto")
        _, backend_port = start_echo_backend(self)
        _, port = start_worker(self, backend_port)
        for client in (secured.client, HTTPClient(self, port)):
            body = b'{"auth_data": %s, "payload": %s}' % (json.dumps(_auth()).encode(), payload)
            response, answer = await client.request(b"POST", b"/echo", body=body)
            self.assertEqual(response.code, 200, answer[:300])
            self.assertTrue(json.loads(answer)["body"].encode("latin-1") == payload)

    async def test_unsecured_unwraps_partial_auth_data(self) -> None:
        """The official client's debug path (url and index only) gets its payload relayed."""
        _, backend_port = start_echo_backend(self)
        _, port = start_worker(self, backend_port)
        body = json.dumps(
            {
                "auth_data": {"request_idx": 1, "url": "http://127.0.0.1:1"},
                "session_id": None,
                "payload": {"prompt": "hi"},
            }
        ).encode()
        response, answer = await HTTPClient(self, port).request(b"POST", b"/echo", body=body)
        self.assertEqual(response.code, 200)
        self.assertEqual(json.loads(json.loads(answer)["body"]), {"prompt": "hi"})


#: The longest stall of the reactor a 60 MB envelope may cause.
MAX_STALL = 0.100


class LargeEnvelopeTests(TestCase):
    """A large envelope is parsed off the reactor thread: others are barely delayed."""

    timeout = 120

    async def test_60_mb_unsigned_envelope_delays_others_under_100_ms(self) -> None:
        """
        While a 60 MB envelope with a forged signature is read, parsed and
        refused (401), the reactor never stalls 100 ms: a timer due every 5 ms
        is never that much later than it is at worst on the same machine just
        before. The payload is a million small objects, the shape
        that took 3 s on the reactor thread.

        What stalls the reactor at all is the one step of the parse that holds
        the interpreter lock throughout: decoding the body's 60 MB of text
        (27-33 ms measured on an idle machine, 52-73 ms with both its cores
        busy with other work).
        """
        env = await start_secured_worker(
            self, signing_mode="url", signature_mode="auto", max_body_size=128 << 20
        )
        item = b'{"role": "user", "content": "hello world", "n": 12345, "x": 1.5}, '
        count = (60 << 20) // len(item)
        payload = b"[" + item * count + b"{}]"
        forged = dict(_auth(), signature=_auth(url="http://elsewhere:1")["signature"])
        body = b'{"auth_data": %s, "payload": %s}' % (json.dumps(forged).encode(), payload)
        del payload
        self.assertGreater(len(body), 60 << 20)
        # As twistd does after building the worker (makeService): what lives
        # for the whole process is left out of the collector's full scans.
        gc.freeze()
        self.addCleanup(gc.unfreeze)
        # Two cores shared with other work can deschedule any thread for a
        # while: the best of five runs is what the worker itself costs. A
        # parse on the reactor thread stalls every run by most of a second.
        runs = []
        for _ in range(5):
            response, answer, elapsed, worst = await self.timed_post(env, body)
            self.assertEqual(response.code, 401, answer[:200])
            runs.append((worst, elapsed))
            if worst < MAX_STALL:
                break
        worst, elapsed = min(runs)
        print(f"\n60 MB envelope: {elapsed:.2f} s, reactor delay added {worst * 1000:.1f} ms")
        self.assertLess(worst, MAX_STALL)

    async def timed_post(self, env: Any, body: bytes) -> tuple[Any, bytes, float, float]:
        """
        POST ``body``; the response, the seconds it took, and how much later
        than its worst over the half second before a timer due every 5 ms was
        at worst meanwhile: the stall the request caused, apart from what a
        busy machine adds to any timer.
        """
        gaps: list[float] = []
        last = [time.perf_counter()]

        def tick() -> None:
            now = time.perf_counter()
            gaps.append(now - last[0])
            last[0] = now

        ticker = LoopingCall(tick)
        ticker.clock = reactor
        ticker.start(0.005)
        try:
            await deferLater(reactor, 0.5, lambda: None)
            baseline = max(gaps)
            del gaps[:]
            started = time.perf_counter()
            response, answer = await env.client.request(b"POST", b"/echo", body=body)
            elapsed = time.perf_counter() - started
        finally:
            ticker.stop()
        return response, answer, elapsed, max(max(gaps) - baseline, 0.0)

    async def test_caller_gone_while_parsing_is_never_admitted(self) -> None:
        """
        A caller that sends a large signed envelope and hangs up while it is
        parsed is never admitted: nothing accounted, nothing relayed.
        """
        env = await start_secured_worker(self, signing_mode="url", signature_mode="auto")
        resource = env.worker.resource
        parsed: list[object] = []
        real = resource._envelope

        def recording(*args: Any, **kwargs: Any) -> Any:
            try:
                return real(*args, **kwargs)
            finally:
                parsed.append(True)

        self.patch(resource, "_envelope", recording)
        body = wrap_body(_auth(), {"prompt": "x" * (4 << 20)})
        client = await raw_connect(env.port)
        client.transport.write(
            b"POST /echo HTTP/1.1\r\nHost: w\r\nContent-Length: %d\r\n\r\n" % len(body)
            + body
        )
        client.transport.loseConnection()
        await client.closed
        await until(lambda: bool(parsed))
        await deferLater(reactor, 0.01, lambda: None)  # the parse's callback, on the reactor
        totals = env.worker.ledger.totals
        self.assertEqual((totals.received.requests, totals[Outcome.REJECTED].requests), (0, 0))
        self.assertEqual([r for r in env.backend.received if r[1] != b"/health"], [])

    async def test_small_bodies_stay_on_the_reactor_thread(self) -> None:
        """A body under the threshold is parsed at once: no thread pool is involved."""
        env = await start_secured_worker(self, signing_mode="url", signature_mode="auto")
        calls: list[Any] = []
        real = reactor.getThreadPool

        def counting() -> Any:
            calls.append(1)
            return real()

        self.patch(reactor, "getThreadPool", counting)
        response, _ = await env.client.request(b"POST", b"/echo", body=wrap_body(_auth(), {}))
        self.assertEqual(response.code, 200)
        self.assertEqual(calls, [])
        response, _ = await env.client.request(
            b"POST", b"/echo", body=wrap_body(_auth(), "x" * (300 << 10))
        )
        self.assertEqual(response.code, 200)
        self.assertEqual(calls, [1])
