"""
The worker in front of a real llama.cpp server (``llama-cpp-python[server]``,
default settings) serving a tiny random-weight model: what a new user meets
in the first minute, checked against the real thing.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from typing import Any

from twisted.internet import reactor, threads
from twisted.internet.error import CannotListenError
from twisted.trial.unittest import TestCase

from tests.logcapture import CapturedLog, capture_log
from tests.support import raw_connect, shared_key, until
from tests_realserver.llama_server import (
    LlamaServer,
    benchmark_shaped,
    free_port,
    start_llama_server,
    stream_chat,
)
from vespa.worker.ledger import Outcome
from vespa.worker.state import Phase
from vespa.worker.tap import Options, Worker, build_worker

#: Seconds a worker may take to be ready: the wait, the warm-up and the ramp.
READY_LIMIT = 240.0

#: The stand-in's endpoint and key, as the client is configured with them.
ENDPOINT, API_KEY = "demo-endpoint", "demo-key"

MESSAGES = [{"role": "user", "content": "Tell me about the amber lighthouse and the violin"}]


async def start_worker(
    testcase: TestCase, argv: list[str], environ: dict[str, str]
) -> tuple[Worker, int]:
    """
    Build the worker as ``twistd vespa <argv>`` would, in an environment of
    ``environ`` (what Vast sets), on the real reactor; return it and its port.
    """
    env = dict(os.environ)
    for name in list(env):
        if name.startswith(("VESPA_", "PYWORKER_")):
            del env[name]  # the developer's own settings must not leak in
    env.update(environ)
    env.setdefault("VESPA_METRICS_LISTEN", "off")
    env.setdefault("VESPA_BENCHMARK_CACHE_FILE", os.path.abspath(testcase.mktemp()))
    testcase.patch(os, "environ", env)
    options = Options()
    options.parseOptions(argv)
    worker = build_worker(options.config, reactor)
    try:
        worker.service.startService()
    except BaseException:
        # A busy port: what had started stops again, and the caller may retry.
        await worker.service.stopService()
        raise
    testcase.addCleanup(worker.service.stopService)
    return worker, await worker.port()


async def until_loaded(worker: Worker) -> None:
    """Wait (bounded) until the startup chain has loaded the worker."""
    await until(lambda: worker.state.is_loaded, timeout=READY_LIMIT)


def sdk(base_url: str) -> Any:
    """The openai SDK, with nothing but a base URL and a placeholder key."""
    from openai import OpenAI

    return OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=120)


def chat_both_ways(client: Any, model: str) -> tuple[str, str, list[str], Any]:
    """
    One chat completion non-streamed and the same one streamed, at
    temperature 0; returns the text of each, the streamed pieces and the raw
    non-streamed response's headers. Runs in a thread (the SDK blocks).
    """
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=MESSAGES, max_tokens=24, temperature=0
    )
    whole = raw.parse().choices[0].message.content or ""
    pieces = []
    with client.chat.completions.create(
        model=model, messages=MESSAGES, max_tokens=24, temperature=0, stream=True
    ) as stream:
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                pieces.append(chunk.choices[0].delta.content)
    client.close()
    return whole, "".join(pieces), pieces, raw.headers


def assert_both_ended_well(testcase: TestCase, worker: Worker) -> None:
    """
    The two calls of :func:`chat_both_ways` were accounted and none as an
    error: the whole one served; the streamed one served, or cancelled when
    the SDK closed its connection at ``[DONE]`` before llama.cpp's last
    chunk-terminator came through (the caller left before the response was
    complete, which the worker counts as a cancellation).
    """
    totals = worker.ledger.totals
    testcase.assertEqual(totals[Outcome.ERRORED].requests, 0)
    testcase.assertGreaterEqual(totals[Outcome.SERVED].requests, 1)
    testcase.assertEqual(totals[Outcome.SERVED].requests + totals[Outcome.CANCELLED].requests, 2)


def sequential_throughput(server: LlamaServer, requests: int = 3) -> float:
    """
    Tokens per second of streamed chat completions sent one after another,
    straight to the server, shaped as the benchmark's (256 tokens, a 250-word
    prompt), each token one content event; the best of ``requests``, the
    same statistic as the benchmark's (the best of its three runs at
    concurrency 1), so noise from a busy machine biases neither side. Runs in
    a thread.
    """
    best = 0.0
    for seed in range(requests):
        started = time.monotonic()
        deltas, _ = stream_chat(server, benchmark_shaped(1000 + seed))
        best = max(best, len(deltas) / (time.monotonic() - started))
    return best


class LlamaCppTests(TestCase):
    """llama-cpp-python's server, default settings, behind the worker."""

    timeout = 600

    async def start_secured(self) -> Any:
        """
        The llama server; the autoscaler stand-in; a worker started with only
        ``--backend-url`` in the environment Vast gives a worker (its report
        address, its public address and port, both sides signing in full
        form); the client daemon in front. Returns a namespace of the parts.
        """
        from types import SimpleNamespace

        from tests.support import listen
        from vespa.client.config import ClientConfig
        from vespa.client.tap import build_client
        from vespa.testing.autoscaler import Autoscaler, autoscaler_site

        server = await start_llama_server(self)
        autoscaler = Autoscaler(reactor, key=shared_key(), signing_mode="full")
        autoscaler_port = listen(self, autoscaler_site(autoscaler))
        self.addCleanup(autoscaler.close)
        with capture_log() as log:
            # The worker must know its public port before it listens (the
            # autoscaler signs its url): a port picked free can be taken by
            # another process meanwhile, so a few tries.
            for attempt in range(3):
                port = free_port()
                url = f"http://127.0.0.1:{port}"
                try:
                    worker, _ = await start_worker(
                        self,
                        ["--backend-url", server.url],
                        {
                            "REPORT_ADDR": f"http://127.0.0.1:{autoscaler_port}",
                            "CONTAINER_ID": "11",
                            "MASTER_TOKEN": "master-token",
                            "PUBLIC_IPADDR": "127.0.0.1",
                            f"VAST_TCP_PORT_{port}": str(port),
                            "VESPA_LISTEN": f"tcp:{port}:interface=127.0.0.1",
                            "VESPA_WORKER_HTTP_PORT": "off",
                            "VESPA_SIGNATURE_MODE": "full",
                        },
                    )
                    break
                except CannotListenError:
                    if attempt == 2:
                        raise
            autoscaler.register_worker(url)
            await until_loaded(worker)
        client = build_client(
            ClientConfig(
                endpoint=ENDPOINT,
                api_key=API_KEY,
                autoscaler_url=f"http://127.0.0.1:{autoscaler_port}",
                listen="tcp:0:interface=127.0.0.1",
            ),
            reactor,
        )
        client.service.startService()
        self.addCleanup(client.service.stopService)
        return SimpleNamespace(
            server=server, worker=worker, log=log, client_port=await client.port()
        )

    async def start_unsecured(self) -> tuple[LlamaServer, Worker, int]:
        server = await start_llama_server(self)
        worker, port = await start_worker(
            self,
            ["--unsecured", "--backend-url", server.url],
            {"VESPA_LISTEN": "tcp:0:interface=127.0.0.1"},
        )
        await until_loaded(worker)
        return server, worker, port

    async def test_only_backend_url_is_ready_with_an_honest_capacity(self) -> None:
        """
        With only ``--backend-url``: the health route finds itself
        (llama-cpp-python has no /health), the ramp stops where the server
        cuts streams short, and max_perf is within 25% of the sequential
        throughput measured here against the same server.
        """
        env = await self.start_secured()
        log: CapturedLog = env.log
        self.assertIn("/health answered 404: the model server has no such route", log.text)
        self.assertIn("health checks use /v1/models (auto)", log.text)
        self.assertRegex(
            log.text,
            r"openai_chat: at concurrency 2, 1 of 2 requests failed \(.*cut short.*\): "
            r"measured at 1",
        )
        self.assertRegex(log.text, r"loaded in [\d.]+ s: [\d.]+ tokens/s")
        measured = await threads.deferToThread(sequential_throughput, env.server)
        max_perf = env.worker.state.max_perf
        self.assertLess(
            abs(max_perf - measured) / measured,
            0.25,
            f"max_perf {max_perf:.1f} tokens/s, measured sequentially {measured:.1f} tokens/s",
        )

    async def test_openai_sdk_through_the_secured_chain(self) -> None:
        """
        The openai SDK with no extra headers, through the client, the
        stand-in's signatures and the worker: streamed text equals the
        non-streamed text at temperature 0.
        """
        env = await self.start_secured()
        client = sdk(f"http://127.0.0.1:{env.client_port}/v1")
        whole, streamed, pieces, _ = await threads.deferToThread(
            chat_both_ways, client, env.server.model
        )
        self.assertTrue(whole)
        self.assertGreater(len(pieces), 1)
        self.assertEqual(streamed, whole)
        # The SDK returns at [DONE]; the worker counts once the body's end
        # has come through, which may be a moment later.
        await until(lambda: env.worker.ledger.in_flight_count == 0)
        assert_both_ended_well(self, env.worker)

    async def test_openai_sdk_through_the_unsecured_worker(self) -> None:
        """
        Unsecured: the SDK's calls reach llama.cpp and come back, the request
        id the worker made (a UUID4: llama.cpp refuses others) visible to the
        caller; streamed text equals non-streamed at temperature 0.
        """
        server, worker, port = await self.start_unsecured()
        client = sdk(f"http://127.0.0.1:{port}/v1")
        whole, streamed, pieces, headers = await threads.deferToThread(
            chat_both_ways, client, server.model
        )
        self.assertTrue(whole)
        self.assertGreater(len(pieces), 1)
        self.assertEqual(streamed, whole)
        self.assertEqual(uuid.UUID(headers["x-request-id"]).version, 4)
        await until(lambda: worker.ledger.in_flight_count == 0)
        assert_both_ended_well(self, worker)

    async def test_caller_leaving_mid_stream_stops_generation(self) -> None:
        """
        A caller that leaves a long stream: llama.cpp notices and stops
        generating (it says so), the worker counts the request cancelled, and
        the server's next request is served at once instead of after the
        abandoned one's tokens.
        """
        server, worker, port = await self.start_unsecured()
        request = {"messages": MESSAGES, "max_tokens": 1500, "stream": True, "temperature": 0}
        # The request run to its end: how long the server's next request
        # would wait if generation went on after the caller left.
        started = reactor.seconds()
        await threads.deferToThread(stream_chat, server, request)
        full_length = reactor.seconds() - started
        body = json.dumps(request).encode()
        caller = await raw_connect(port)
        caller.transport.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: worker\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        await caller.wait_for(b'"content"')
        caller.transport.abortConnection()
        await until(lambda: "Disconnected from client" in server.output, timeout=60)
        await until(lambda: worker.ledger.totals[Outcome.CANCELLED].requests == 1, timeout=60)
        # Made before the clock starts: building the SDK's client (its TLS
        # context, its connection pool) takes a while and is not the server's.
        client = sdk(f"http://127.0.0.1:{port}/v1")
        started = reactor.seconds()
        answer = await threads.deferToThread(
            client.chat.completions.create,
            model=server.model,
            messages=MESSAGES,
            max_tokens=8,
        )
        await threads.deferToThread(client.close)
        elapsed = reactor.seconds() - started
        self.assertEqual(answer.usage.completion_tokens, 8)
        self.assertLess(elapsed, full_length / 3, f"{elapsed:.1f} s, full {full_length:.1f} s")
        self.assertEqual(worker.state.phase, Phase.READY)
