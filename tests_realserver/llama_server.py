"""
A real llama.cpp server (``python -m llama_cpp.server``) in a child process,
for the length of one test.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import sys
from typing import Any

import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from tests_realserver.tiny_model import write_tiny_llama
from vespa.benchmarks.prompts import text_prompt

#: Seconds the server may take to load the tiny model and listen.
START_LIMIT = 120.0


def free_port() -> int:
    """A port nothing listens on now (the OS picks it: port 0)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Output(ProcessProtocol):
    """Keeps what the server prints; fires ``ended`` when it exits."""

    def __init__(self) -> None:
        self.output = bytearray()
        self.ended: Deferred[None] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output += data

    def errReceived(self, data: bytes) -> None:
        self.output += data

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(None)


class LlamaServer:
    """
    One ``llama_cpp.server`` with default settings but the address, serving
    the tiny model.

    :ivar url: its origin, ``http://127.0.0.1:<port>``.
    """

    def __init__(self, model: str, port: int, *extra: str) -> None:
        self.model = model
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self._protocol = _Output()
        args = [sys.executable, "-m", "llama_cpp.server", "--model", model]
        args += ["--host", "127.0.0.1", "--port", str(port), *extra]
        self._process: Any = reactor.spawnProcess(
            self._protocol, sys.executable, args, env=dict(os.environ)
        )

    @property
    def output(self) -> str:
        """What it printed so far (stdout and stderr)."""
        return self._protocol.output.decode("utf-8", "replace")

    async def ready(self) -> None:
        """Wait until it answers ``GET /v1/models`` (it loads the model first)."""
        deadline = reactor.seconds() + START_LIMIT
        while True:
            if self._protocol.ended.called:
                raise AssertionError(f"llama_cpp.server exited:\n{self.output[-3000:]}")
            try:
                response = await treq.get(self.url + "/v1/models", persistent=False)
                await response.content()
                if response.code == 200:
                    return
            except Exception:
                pass  # not listening yet
            if reactor.seconds() > deadline:
                raise AssertionError(f"llama_cpp.server did not start:\n{self.output[-3000:]}")
            await deferLater(reactor, 0.1)

    async def stop(self) -> None:
        """Terminate it and wait for it to exit."""
        try:
            self._process.signalProcess("TERM")
        except ProcessExitedAlready:
            return
        killer = reactor.callLater(10, self._kill)
        await self._protocol.ended
        if killer.active():
            killer.cancel()

    def _kill(self) -> None:
        try:
            self._process.signalProcess("KILL")
        except ProcessExitedAlready:
            pass


_MODEL: list[str] = []


def tiny_model() -> str:
    """The tiny model's path, written once per test run."""
    if not _MODEL:
        directory = os.path.abspath("tiny-model")
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, "tiny-llama.gguf")
        write_tiny_llama(path)
        _MODEL.append(path)
    return _MODEL[0]


async def start_llama_server(testcase: TestCase, *extra: str) -> LlamaServer:
    """Start a server on a free port, stopped at cleanup; return it once ready."""
    server = LlamaServer(tiny_model(), free_port(), *extra)
    testcase.addCleanup(server.stop)
    await server.ready()
    return server


def benchmark_shaped(seed: int, max_tokens: int = 256) -> dict[str, Any]:
    """
    A streamed chat completion's body shaped as the benchmark's: a 250-word
    prompt made from ``seed``, temperature 0.7.
    """
    return {
        "messages": [{"role": "user", "content": text_prompt(250, seed)}],
        "max_tokens": max_tokens,
        "temperature": 0.7,
        "stream": True,
    }


def stream_chat(server: LlamaServer, body: dict[str, Any]) -> tuple[list[str], str | None]:
    """
    Send a streamed chat completion straight to the server with
    ``http.client`` and read it to its end: its non-empty content deltas and
    its finish reason. Blocks: run it in a thread.
    """
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
    connection.request(
        "POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"}
    )
    deltas: list[str] = []
    finish = None
    for line in connection.getresponse():
        if line.startswith(b"data: {"):
            for choice in json.loads(line[6:])["choices"]:
                content = choice.get("delta", {}).get("content")
                if content:
                    deltas.append(content)
                finish = choice.get("finish_reason") or finish
    connection.close()
    return deltas, finish
