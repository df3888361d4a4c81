"""
The tiny model, served by llama-cpp-python, costs the same for every request
of a given shape: what lets a throughput measured by one client be compared
with one measured by another.
"""

from __future__ import annotations

from twisted.internet import threads
from twisted.trial.unittest import TestCase

from tests_realserver.llama_server import benchmark_shaped, start_llama_server, stream_chat


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
        deltas, finish = await threads.deferToThread(stream_chat, server, benchmark_shaped(7))
        self.assertEqual(len(deltas), 256)
        self.assertEqual(finish, "length")
