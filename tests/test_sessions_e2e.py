"""
Sessions end to end with the official Vast client (``vastai`` 1.9.1): its
``Endpoint.session()`` against the autoscaler stand-in (signing the url only,
as Vast does today) and a secured Vespa worker, all on loopback.

The official client is asyncio: each test runs its part in a thread with its
own event loop (``deferToThread``), while the worker, the stand-in and the
echo backend run in the trial reactor. The worker's timers are on a ``Clock``
that the client's thread advances through ``blockingCallFromThread``, so the
expiry happens exactly when the test says. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import deferLater
from twisted.internet.threads import blockingCallFromThread, deferToThread
from twisted.trial.unittest import TestCase

from tests.support import PUBLIC_URL, HTTPClient, shared_key, start_secured_worker
from vespa.testing.autoscaler import sign_auth
from vespa.worker.drain import Drain
from vespa.worker.ledger import Outcome

#: Seconds any one official-client script may take.
SCRIPT_TIMEOUT = 30.0


def unallocated_port() -> int:
    """
    A free port below the kernel's ephemeral range: the worker must listen on
    a port known before it starts (the stand-in signs its url), and a port
    the kernel hands out for ``listen(0)`` could be taken meanwhile by the
    test's own backend or stand-in.
    """
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    for _ in range(100):
        port = random.randrange(max(low - 12000, 1024), low)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below the ephemeral range")


def deleted_request_idxs(reports: list[dict[str, Any]]) -> list[int]:
    """Every request_idx the worker reported deleted, whatever the body form."""
    idxs: list[int] = []
    for report in reports:
        if "requests" in report:  # vastai 1.9.1: one POST of records
            idxs.extend(record["request_idx"] for record in report["requests"])
        else:  # the 2024-2025 form: request_idxs + success
            idxs.extend(report.get("request_idxs", []))
    return idxs


class OfficialClientSessionTests(TestCase):
    """``Endpoint.session()`` of vastai 1.9.1 against a Vespa worker."""

    timeout = 60

    async def start(self, **overrides: Any) -> Any:
        """A secured worker in url signature mode, reachable at the url the stand-in signs."""
        port = unallocated_port()
        url = f"http://127.0.0.1:{port}"
        self.env = await start_secured_worker(
            self,
            signing_mode="url",
            public_url=url,
            listen=f"tcp:{port}:interface=127.0.0.1",
            **overrides,
        )
        return self.env

    def official(self, script: Callable[[Any], Awaitable[Any]]) -> Deferred[Any]:
        """
        Run ``script(endpoint)`` with the official client in a thread of its
        own; fires with what it returns.
        """
        autoscaler_url = self.env.config.vast.report_addresses[0]

        async def main() -> Any:
            from vastai.serverless.client.client import CoroutineServerless
            from vastai.serverless.client.endpoint import Endpoint

            client = CoroutineServerless(
                api_key="account-key", autoscaler_url=autoscaler_url, max_poll_interval=0.2
            )
            # Offline: the client would otherwise download Vast's root CA.
            client._ssl_context = ssl.create_default_context()
            try:
                endpoint = Endpoint(client, name="demo-endpoint", id=1, api_key="demo-key")
                return await asyncio.wait_for(script(endpoint), SCRIPT_TIMEOUT)
            finally:
                await client.close()

        return deferToThread(asyncio.run, main()).addTimeout(SCRIPT_TIMEOUT + 5, reactor)

    def in_reactor(self, function: Callable[[], Any]) -> Awaitable[Any]:
        """From the client's thread: run ``function`` in the reactor and wait for it."""
        return asyncio.to_thread(blockingCallFromThread, reactor, function)

    async def reported_deleted(self, request_idx: int) -> None:
        """Run report ticks until the stand-in got a deletion of ``request_idx``."""
        await ticked_until(
            self.env,
            self.env.autoscaler.wait_for_delete(
                lambda report: request_idx in deleted_request_idxs([report])
            ),
        )

    async def test_create_request_health_end(self) -> None:
        """
        A session is created through /route/ and /session/create, carries
        requests (relayed with their payload), is healthy, and ends: it is
        gone from the worker, on_close_route got its payload, and the
        session's request_idx is reported deleted, once.
        """
        env = await self.start()

        async def script(endpoint: Any) -> Any:
            from vastai.serverless.client.connection import _make_request

            session = await endpoint.session(
                lifetime=30, on_close_route="/echo/closed", on_close_payload={"job": 1}
            )
            answers = [
                await session.request("/echo/one", {"n": 1}),
                await session.request("/echo/two", {"n": 2}),
            ]
            open_before = await session.is_open()
            health = await _make_request(
                client=endpoint.client,
                url=session.url,
                route="/session/health",
                api_key="",
                body={"session_id": session.session_id, "session_auth": session.auth_data},
                method="POST",
                retries=1,
                timeout=10,
                stream=False,
            )
            in_worker = await self.in_reactor(lambda: len(env.worker.sessions))
            await session.close()
            return session, answers, open_before, health, in_worker

        session, answers, open_before, health, in_worker = await self.official(script)
        self.assertEqual([a["status"] for a in answers], [200, 200])
        # The path only: what the worker does with the client's api_key
        # query parameter is issue 9 item 7, tested on its own.
        self.assertEqual(
            [(a["response"]["uri"].split("?")[0], a["response"]["body"]) for a in answers],
            [("/echo/one", '{"n": 1}'), ("/echo/two", '{"n": 2}')],
        )
        self.assertTrue(open_before)
        self.assertEqual((health["status"], health["json"]), (200, {"ok": True}))
        self.assertEqual(in_worker, 1)
        self.assertFalse(session.open)
        self.assertEqual(len(env.worker.sessions), 0)
        await env.backend.wait_for_request(b"/echo/closed").addTimeout(10, reactor)
        self.assertIn((b"POST", b"/echo/closed"), env.backend.received)
        self.assertEqual(env.worker.ledger.in_flight_count, 0)
        request_idx = session.auth_data["request_idx"]
        await self.reported_deleted(request_idx)
        # The session's two requests carried its request_idx: not deletions of their own.
        self.assertEqual(deleted_request_idxs(env.autoscaler.delete_reports), [request_idx])
        self.assertEqual(env.worker.ledger.totals[Outcome.SERVED].requests, 3)

    async def test_expiry(self) -> None:
        """
        Unused for its lifetime, the session expires: the worker forgets it
        (and reports it deleted), posts on_close_route, and the official
        client's next request in it gets 410 and marks it closed.
        """
        env = await self.start()

        async def script(endpoint: Any) -> Any:
            session = await endpoint.session(lifetime=10, on_close_route="/echo/expired")
            used = await session.request("/echo/in", {"n": 1})
            await self.in_reactor(lambda: env.clock.advance(9.9))
            alive = await self.in_reactor(lambda: len(env.worker.sessions))
            await self.in_reactor(lambda: env.clock.advance(0.1))
            left = await self.in_reactor(lambda: len(env.worker.sessions))
            try:
                await session.request("/echo/late", {"n": 2})
            except ValueError as e:
                refused = str(e)
            return session, used, alive, left, refused

        session, used, alive, left, refused = await self.official(script)
        self.assertEqual(used["status"], 200)
        self.assertEqual((alive, left), (1, 0))
        self.assertEqual(refused, "Cannot make request on closed session.")
        self.assertFalse(session.open)
        self.assertNotIn((b"POST", b"/echo/late"), env.backend.received)
        await env.backend.wait_for_request(b"/echo/expired").addTimeout(10, reactor)
        await self.reported_deleted(session.auth_data["request_idx"])
        self.assertEqual(env.worker.ledger.in_flight_count, 0)

    async def test_expiry_cancels_requests_in_flight(self) -> None:
        """A request still running when its session expires is cut: the
        backend sees its client go, and the worker counts it cancelled."""
        env = await self.start()

        def expire_once_hanging() -> Deferred[None]:
            async def expire() -> None:
                await env.backend.wait_for_request(b"/hang").addTimeout(10, reactor)
                env.clock.advance(10)

            return ensureDeferred(expire())

        async def script(endpoint: Any) -> Any:
            session = await endpoint.session(lifetime=10)
            hanging = asyncio.ensure_future(session.request("/hang", {"n": 1}))
            await self.in_reactor(expire_once_hanging)
            try:
                await hanging
            except (ConnectionError, ValueError) as e:
                return type(e).__name__
            return "answered"

        outcome = await self.official(script)
        self.assertIn(outcome, ("ConnectionError", "ValueError"))
        await env.backend.wait_for_disconnect(b"/hang").addTimeout(10, reactor)
        await env.worker.ledger.when_idle()
        self.assertEqual(env.worker.ledger.totals[Outcome.CANCELLED].requests, 1)
        self.assertEqual(len(env.worker.sessions), 0)

    async def test_full(self) -> None:
        """With --max-sessions 1 and one session open, /session/create is 429
        (which the official client retries unless told not to)."""
        env = await self.start(max_sessions=1)

        async def script(endpoint: Any) -> Any:
            first = await endpoint.session(lifetime=30)
            refused = await endpoint.request("/session/create", {"lifetime": 30}, retry=False)
            await first.close()
            second = await endpoint.session(lifetime=30)
            await second.close()
            return refused

        refused = await self.official(script)
        self.assertEqual(refused["status"], 429)
        self.assertEqual(refused["response"]["origin"], "vespa")
        self.assertEqual(env.worker.ledger.totals[Outcome.REJECTED].requests, 1)
        self.assertEqual(len(env.worker.sessions), 0)


async def ticked_until(env: Any, reported: Deferred[Any]) -> Any:
    """
    Advance the worker's clock one report interval at a time, letting the
    reports reach the stand-in, until ``reported`` fires (at most 100 ticks).
    """
    for _ in range(100):
        if reported.called:
            return await reported
        env.clock.advance(env.config.report_interval)
        await deferLater(reactor, 0.01, lambda: None)
    raise AssertionError("the report never came")


def signed(request_idx: int = 5, reqnum: int = 1, cost: int = 100) -> dict[str, Any]:
    """Routing data for the worker at :data:`PUBLIC_URL`, signed over the url as Vast does."""
    auth: dict[str, Any] = {
        "cost": cost,
        "endpoint": "demo-endpoint",
        "reqnum": reqnum,
        "request_idx": request_idx,
        "url": PUBLIC_URL,
    }
    auth["signature"] = sign_auth(shared_key(), auth, "url")
    return auth


class WorkerSessionTests(TestCase):
    """The worker's session routes over HTTP, with hand-made signed requests."""

    timeout = 30

    async def start(self, **overrides: Any) -> Any:
        self.env = await start_secured_worker(self, signing_mode="url", **overrides)
        return self.env

    async def post(self, path: bytes, body: object, port: int | None = None) -> tuple[int, Any]:
        client = self.env.client if port is None else HTTPClient(self, port)
        response, answer = await client.json(b"POST", path, body=json.dumps(body).encode())
        return response.code, answer

    async def create(self, auth: dict[str, Any], **settings: Any) -> str:
        status, answer = await self.post(
            b"/session/create", {"auth_data": auth, "payload": {"lifetime": 30, **settings}}
        )
        self.assertEqual(status, 201, answer)
        session_id: str = answer["session_id"]
        return session_id

    async def test_create_is_verified(self) -> None:
        """A /session/create whose signature does not verify: 401, no session,
        and nothing it claims reaches the reports."""
        await self.start()
        auth = {**signed(), "signature": signed(request_idx=1)["signature"][::-1]}
        status, answer = await self.post(b"/session/create", {"auth_data": auth, "payload": {}})
        self.assertEqual((status, answer["origin"]), (401, "vespa"))
        self.assertEqual(len(self.env.worker.sessions), 0)
        self.assertEqual(self.env.worker.ledger.totals[Outcome.REJECTED].requests, 0)
        self.assertEqual(self.env.worker.ledger.pending_deletions, 0)

    async def test_session_id_must_be_a_string(self) -> None:
        await self.start()
        status, answer = await self.post(
            b"/echo", {"auth_data": signed(), "payload": {}, "session_id": 5}
        )
        self.assertEqual(status, 422)
        self.assertEqual(answer["session_id"], "must be a string")

    async def test_unknown_session(self) -> None:
        """A request in a session that does not exist: 410, never relayed,
        and not reported as a deletion (its request_idx is a session's)."""
        await self.start()
        status, answer = await self.post(
            b"/echo/x", {"auth_data": signed(), "payload": {}, "session_id": "gone"}
        )
        self.assertEqual((status, answer["origin"]), (410, "vespa"))
        self.assertNotIn((b"POST", b"/echo/x"), self.env.backend.received)
        self.assertEqual(self.env.worker.ledger.pending_deletions, 0)

    async def test_other_auth_data_in_a_session(self) -> None:
        """Another caller's signed auth_data with a session's id: 401."""
        await self.start()
        session_id = await self.create(signed(request_idx=5))
        status, _ = await self.post(
            b"/echo/x",
            {"auth_data": signed(request_idx=6), "payload": {}, "session_id": session_id},
        )
        self.assertEqual(status, 401)
        self.assertNotIn((b"POST", b"/echo/x"), self.env.backend.received)

    async def test_a_session_is_not_queued_work(self) -> None:
        """A session's workload is held, not waiting: with a wait limit its
        hold alone would pass (100 units at 100/s is 1 s > 0.5 s), requests
        are still admitted, in the session and outside it."""
        await self.start(max_wait_time=0.5)
        auth = signed(cost=100)
        session_id = await self.create(auth)
        self.assertEqual(self.env.worker.ledger.in_flight_workload, 100.0)
        in_session = {"auth_data": auth, "payload": {"n": 1}, "session_id": session_id}
        self.assertEqual((await self.post(b"/echo/in", in_session))[0], 200)
        outside = {"auth_data": signed(request_idx=9, cost=10), "payload": {}}
        self.assertEqual((await self.post(b"/echo/out", outside))[0], 200)

    async def test_session_routes_take_post(self) -> None:
        await self.start()
        for path in (b"/session/create", b"/session/get", b"/session/end"):
            response, answer = await self.env.client.json(b"GET", path)
            self.assertEqual((response.code, answer["origin"]), (405, "vespa"), path)
            self.assertEqual(response.headers.getRawHeaders(b"allow"), [b"POST"])
        relayed = [uri for _, uri in self.env.backend.received if uri.startswith(b"/session")]
        self.assertEqual(relayed, [])

    async def test_local_end_on_the_plain_http_port(self) -> None:
        """The plain-HTTP listener (WORKER_HTTP_PORT) ends a session with the
        same body as /session/end, and serves nothing else."""
        await self.start(http_port=unallocated_port())
        port = await self.env.worker.session_port()
        auth = signed()
        session_id = await self.create(auth, on_close_route="/echo/closed")
        mine = {"session_id": session_id, "session_auth": auth}
        self.assertEqual((await self.post(b"/session/get", mine, port))[0], 404)
        self.assertEqual(
            (await self.post(b"/session/end", {"session_id": session_id}, port))[0], 401
        )
        self.assertEqual(
            await self.post(b"/session/end", mine, port),
            (200, {"ended": True, "removed_session": session_id}),
        )
        self.assertEqual(len(self.env.worker.sessions), 0)
        await self.env.backend.wait_for_request(b"/echo/closed").addTimeout(10, reactor)
        self.assertEqual((await self.post(b"/session/end", mine, port))[0], 400)

    async def test_shutdown_is_not_held_by_sessions(self) -> None:
        """At shutdown an open session closes (its on_close_route is posted)
        instead of holding the drain until its expiry."""
        await self.start()
        await self.create(signed(), on_close_route="/echo/shutdown")
        self.assertEqual(self.env.worker.ledger.in_flight_count, 1)
        await self.env.worker.service.stopService()
        drains = [s for s in self.env.worker.service if isinstance(s, Drain)]
        self.assertEqual([drain.drained for drain in drains], [True])
        self.assertEqual(len(self.env.worker.sessions), 0)
        self.assertEqual(self.env.worker.ledger.in_flight_count, 0)
        await self.env.backend.wait_for_request(b"/echo/shutdown").addTimeout(10, reactor)

    async def report_matching(self, predicate: Callable[[dict[str, Any]], bool]) -> Any:
        """Run report ticks until a /worker_status/ report matches ``predicate``."""
        return await ticked_until(self.env, self.env.autoscaler.wait_for_status(predicate))

    async def test_session_load_in_reports(self) -> None:
        """An open session's cost is in cur_load, and its request_idx is
        working; once it expired, neither is in the next reports."""
        await self.start()
        await self.create(signed(request_idx=5, cost=100))
        report = await self.report_matching(lambda r: r["cur_load"] == 100.0)
        self.assertEqual(report["working_request_idxs"], [5])
        self.env.clock.advance(30)
        self.assertEqual(len(self.env.worker.sessions), 0)
        report = await self.report_matching(lambda r: r["cur_load"] == 0.0)
        self.assertEqual(report["working_request_idxs"], [])
        self.assertEqual(report["num_requests_working"], 0)

    async def test_unsecured(self) -> None:
        """With --unsecured a bare payload opens a session, and any
        session_auth names it (there is nothing to match)."""
        await self.start(unsecured=True)
        status, answer = await self.post(b"/session/create", {"lifetime": 5})
        self.assertEqual(status, 201, answer)
        mine = {"session_id": answer["session_id"]}
        self.assertEqual(await self.post(b"/session/health", mine), (200, {"ok": True}))
        self.assertEqual((await self.post(b"/session/end", mine))[0], 200)
        self.assertEqual(len(self.env.worker.sessions), 0)
