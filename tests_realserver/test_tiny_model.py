"""
The tiny model, served by llama-cpp-python, costs the same for every request
of a given shape: what lets a throughput measured by one client be compared
with one measured by another.
"""

from __future__ import annotations

import http.client
import json

from twisted.internet import threads
from twisted.trial.unittest import TestCase

from tests_realserver.llama_server import LlamaServer, start_llama_server
from vespa.benchmarks.prompts import text_prompt


def stream_deltas(server: LlamaServer, max_tokens: int) -> tuple[list[str], str | None]:
    """
    One streamed chat completion shaped as the benchmark's (a 250-word
    prompt, temperature 0.7), straight to the server: its non-empty content
    deltas and its finish reason. Runs in a thread.
    """
    body = {
        "messages": [{"role": "user", "content": text_prompt(250, 7)}],
        "max_tokens": max_tokens,
        "temperature": 0.7,
        "stream": True,
    }
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


class TinyModelTests(TestCase):
    """The test model, as llama-cpp-python's server streams it."""

    timeout = 300

    async def test_every_token_streams_as_it_is_generated(self) -> None:
        """
        Each of the 256 tokens comes as its own content delta. A token that
        does not decode alone (a byte-fallback piece, half a UTF-8
        character) makes llama-cpp-python hold back the rest of the stream
        and decode every held token again at each step: the request's cost
        then depends on where that byte fell (up to 3 times), and two
        throughputs measured on different requests disagree by as much.
        """
        server = await start_llama_server(self)
        deltas, finish = await threads.deferToThread(stream_deltas, server, 256)
        self.assertEqual(len(deltas), 256)
        self.assertEqual(finish, "length")
