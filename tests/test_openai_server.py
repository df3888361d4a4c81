"""
Tests for :class:`vespa.testing.model_servers.OpenAIServer`, the fake OpenAI-compatible server.

Most tests drive :class:`OpenAIServer` in memory with
:class:`treq.testing.StubTreq` and a :class:`twisted.internet.task.Clock`:
``clock.advance`` produces tokens and ``stub.flush`` moves the bytes the server
wrote to the client.  One test serves it on a real socket.
"""

from __future__ import annotations

import json
from typing import Any

import treq
from treq.testing import StubTreq
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList, inlineCallbacks
from twisted.internet.interfaces import IAddress, IListeningPort
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import HTTPConnectionPool
from twisted.web.iweb import IResponse
from twisted.web.server import Site
from twisted.web.test.requesthelper import DummyRequest

from vespa.testing.model_servers import MAX_MODEL_LEN, OpenAIServer, fake_site

BASE = "http://demo.invalid"
CHAT = BASE + "/v1/chat/completions"
COMPLETIONS = BASE + "/v1/completions"

#: The clock starts here so that ``created`` fields are distinguishable from 0.
START = 1000.0


def parse_events(data: bytes) -> list[Any]:
    """
    Parse a server-sent event stream as the OpenAI clients do.

    :param data: The raw body received so far.
    :return: The decoded ``data:`` payloads, with ``[DONE]`` kept as the
        string ``"[DONE]"``.  A trailing incomplete event is ignored.
    """
    events: list[Any] = []
    *complete, _rest = data.split(b"\n\n")
    for block in complete:
        assert block.startswith(b"data: "), block
        payload = block[len(b"data: ") :]
        events.append("[DONE]" if payload == b"[DONE]" else json.loads(payload))
    return events


class StreamCollector:
    """
    Record the body of a streamed response as it arrives.

    :param response: A response whose headers have arrived.
    """

    def __init__(self, response: IResponse) -> None:
        self.chunks: list[bytes] = []
        self.done: Deferred[None] = treq.collect(response, self.chunks.append)

    @property
    def events(self) -> list[Any]:
        """
        The events received so far.
        """
        return parse_events(b"".join(self.chunks))


class OpenAIServerTestCase(SynchronousTestCase):
    """
    Tests for :class:`OpenAIServer` driven in memory.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(START)

    def make(self, **kwargs: Any) -> tuple[OpenAIServer, StubTreq]:
        """
        Create a server on the test clock and an in-memory client for it.

        :param kwargs: Keyword arguments for :class:`OpenAIServer`.
        :return: The server and the client.
        """
        kwargs.setdefault("tokens_per_second", 4.0)
        kwargs.setdefault("model", "vespa-demo")
        server = OpenAIServer(self.clock, **kwargs)
        return server, StubTreq(server)

    def post(self, stub: StubTreq, url: str, body: object) -> Deferred[IResponse]:
        """
        POST a JSON body (or raw bytes) and deliver whatever the server
        writes at once.

        :param stub: The client.
        :param url: Where to post.
        :param body: A JSON-serialisable value, or raw ``bytes`` sent as is.
        :return: The response Deferred.
        """
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        d: Deferred[IResponse] = stub.post(
            url, data=data, headers={"Content-Type": ["application/json"]}
        )
        stub.flush()
        return d

    def advance(self, stub: StubTreq, seconds: float) -> None:
        """
        Move time forward and deliver what the server wrote meanwhile.

        :param stub: The client.
        :param seconds: How far to move the clock.
        """
        self.clock.advance(seconds)
        stub.flush()

    def json_of(self, stub: StubTreq, d: Deferred[IResponse]) -> tuple[int, Any]:
        """
        :param stub: The client.
        :param d: A response Deferred that has fired.
        :return: The status code and decoded JSON body of the response.
        """
        return self.read_json(stub, self.successResultOf(d))

    def read_json(self, stub: StubTreq, response: IResponse) -> tuple[int, Any]:
        """
        :param stub: The client.
        :param response: A response.
        :return: Its status code and decoded JSON body.
        """
        body = treq.json_content(response)
        stub.flush()
        return response.code, self.successResultOf(body)

    def assert_error(
        self,
        stub: StubTreq,
        d: Deferred[IResponse],
        code: int,
        param: str | None = None,
        error_code: str | None = None,
    ) -> dict[str, Any]:
        """
        Assert that a response is an OpenAI-shaped error.  The Deferred still
        has the response as its result afterwards.

        :param stub: The client.
        :param d: A response Deferred that has fired.
        :param code: The expected HTTP status.
        :param param: The expected ``param`` field.
        :param error_code: The expected ``code`` field.
        :return: The ``error`` object.
        """
        response = self.successResultOf(d)
        d.addCallback(lambda _: response)
        self.assertEqual(response.headers.getRawHeaders("content-type"), ["application/json"])
        status, body = self.read_json(stub, response)
        self.assertEqual(status, code)
        self.assertEqual(set(body), {"error"})
        error: dict[str, Any] = body["error"]
        self.assertEqual(set(error), {"message", "type", "param", "code"})
        self.assertIsInstance(error["message"], str)
        self.assertTrue(error["message"])
        self.assertEqual(error["type"], "invalid_request_error")
        self.assertEqual(error["param"], param)
        self.assertEqual(error["code"], error_code)
        return error

    def assert_idle(self, server: OpenAIServer) -> None:
        """
        Assert that the server has nothing running, queued or scheduled.

        :param server: The server.
        """
        self.assertEqual((server.active, server.waiting), (0, 0))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def start_stream(
        self, stub: StubTreq, url: str, body: dict[str, Any]
    ) -> tuple[IResponse, StreamCollector]:
        """
        Start a streaming request and begin collecting its body.

        :param stub: The client.
        :param url: Where to post.
        :param body: The request body; ``stream`` is set to true.
        :return: The response (its headers have arrived) and a collector.
        """
        d = self.post(stub, url, {**body, "stream": True})
        response = self.successResultOf(d)
        collector = StreamCollector(response)
        stub.flush()
        return response, collector

    # -- health and models --------------------------------------------------

    def test_health(self) -> None:
        """
        ``GET /health`` answers 200 with ``{"status": "ok"}``.
        """
        _, stub = self.make()
        d = stub.get(BASE + "/health")
        self.assertEqual(self.json_of(stub, d), (200, {"status": "ok"}))

    def test_models(self) -> None:
        """
        ``GET /v1/models`` lists exactly the served model, owned by vespa.
        """
        _, stub = self.make(model="my-model")
        d = stub.get(BASE + "/v1/models")
        status, body = self.json_of(stub, d)
        self.assertEqual(status, 200)
        self.assertEqual(
            body,
            {
                "object": "list",
                "data": [
                    {
                        "id": "my-model",
                        "object": "model",
                        "created": int(START),
                        "owned_by": "vespa",
                    }
                ],
            },
        )

    def test_trailing_slash_and_query(self) -> None:
        """
        A trailing slash or a query string do not change the endpoint.
        """
        _, stub = self.make()
        d = stub.get(BASE + "/v1/models/?x=1")
        status, body = self.json_of(stub, d)
        self.assertEqual(status, 200)
        self.assertEqual(body["data"][0]["id"], "vespa-demo")

    def test_head_health(self) -> None:
        """
        ``HEAD /health`` answers 200 with no body, like ``GET``.
        """
        _, stub = self.make()
        d = stub.head(BASE + "/health")
        stub.flush()
        self.assertEqual(self.successResultOf(d).code, 200)

    # -- non-streaming -------------------------------------------------------

    def test_chat_completion(self) -> None:
        """
        A chat completion is answered only once all its tokens have been
        generated, with the ``chat.completion`` shape, ``max_tokens`` words
        from the vocabulary and whitespace-counted usage.
        """
        server, stub = self.make(tokens_per_second=4.0)
        d = self.post(
            stub,
            CHAT,
            {
                "model": "vespa-demo",
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "How are  you\ttoday?"},
                ],
                "max_tokens": 6,
            },
        )
        self.assertEqual((server.active, server.waiting), (1, 0))
        # Six tokens at four per second take 1.5 seconds.
        self.advance(stub, 1.25)
        self.assertNoResult(d)
        self.advance(stub, 0.25)
        response = self.successResultOf(d)
        d.addCallback(lambda _: response)
        self.assertEqual(response.headers.getRawHeaders("content-type"), ["application/json"])
        status, body = self.read_json(stub, response)
        self.assertEqual(status, 200)
        content = body["choices"][0]["message"]["content"]
        self.assertEqual(
            body,
            {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "created": int(START),
                "model": "vespa-demo",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": content},
                        "logprobs": None,
                        "finish_reason": "length",
                    }
                ],
                "usage": {"prompt_tokens": 6, "completion_tokens": 6, "total_tokens": 12},
            },
        )
        words = content.split(" ")
        self.assertEqual(words[0], "")
        self.assertEqual(len(words), 7)
        self.assertTrue(all(w.isalpha() for w in words[1:]), words)
        self.assertEqual(server.completed, 1)
        self.assert_idle(server)

    def test_completion(self) -> None:
        """
        A legacy completion has the ``text_completion`` shape with the text in
        ``choices[0].text``.
        """
        server, stub = self.make(tokens_per_second=4.0)
        d = self.post(stub, COMPLETIONS, {"prompt": "Once upon a time", "max_tokens": 4})
        self.advance(stub, 0.75)
        self.assertNoResult(d)
        self.advance(stub, 0.25)
        status, body = self.json_of(stub, d)
        self.assertEqual(status, 200)
        self.assertEqual(body["id"], "cmpl-1")
        self.assertEqual(body["object"], "text_completion")
        self.assertEqual(body["created"], int(START))
        self.assertEqual(body["model"], "vespa-demo")
        [choice] = body["choices"]
        self.assertEqual(choice["index"], 0)
        self.assertEqual(choice["finish_reason"], "length")
        self.assertEqual(len(choice["text"].split()), 4)
        self.assertTrue(choice["text"].startswith(" "))
        self.assertEqual(
            body["usage"], {"prompt_tokens": 4, "completion_tokens": 4, "total_tokens": 8}
        )
        self.assertEqual(server.completed, 1)

    def test_completion_prompt_list(self) -> None:
        """
        A list of prompts is a batch: one choice per prompt, each with
        ``max_tokens`` tokens, generated side by side.
        """
        _, stub = self.make(tokens_per_second=4.0)
        d = self.post(stub, COMPLETIONS, {"prompt": ["one two", "three"], "max_tokens": 2})
        self.advance(stub, 0.5)
        _, body = self.json_of(stub, d)
        self.assertEqual([c["index"] for c in body["choices"]], [0, 1])
        self.assertEqual([len(c["text"].split()) for c in body["choices"]], [2, 2])
        self.assertEqual(
            body["usage"], {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
        )

    def test_default_max_tokens(self) -> None:
        """
        Without ``max_tokens`` 16 tokens are generated.
        """
        _, stub = self.make(tokens_per_second=16.0)
        d = self.post(stub, CHAT, {"messages": [{"role": "user", "content": "hi"}]})
        self.advance(stub, 0.9375)
        self.assertNoResult(d)
        self.advance(stub, 0.0625)
        _, body = self.json_of(stub, d)
        self.assertEqual(body["usage"]["completion_tokens"], 16)
        self.assertEqual(len(body["choices"][0]["message"]["content"].split()), 16)

    def test_max_completion_tokens(self) -> None:
        """
        For chat, ``max_completion_tokens`` is honoured and wins over
        ``max_tokens``.
        """
        _, stub = self.make(tokens_per_second=4.0)
        d = self.post(
            stub,
            CHAT,
            {
                "messages": [{"role": "user", "content": "hi"}],
                "max_completion_tokens": 3,
                "max_tokens": 10,
            },
        )
        self.advance(stub, 0.75)
        _, body = self.json_of(stub, d)
        self.assertEqual(body["usage"]["completion_tokens"], 3)

    def test_multipart_message_content(self) -> None:
        """
        Text parts of multi-part contents count towards the prompt; null
        contents and other parts are accepted and count for nothing.
        """
        _, stub = self.make(tokens_per_second=4.0)
        d = self.post(
            stub,
            CHAT,
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "describe this"},
                            {"type": "image_url", "image_url": {"url": "http://x"}},
                            {"type": "text", "text": "please"},
                        ],
                    },
                    {"role": "assistant", "content": None},
                ],
                "max_tokens": 1,
            },
        )
        self.advance(stub, 0.25)
        _, body = self.json_of(stub, d)
        self.assertEqual(body["usage"]["prompt_tokens"], 3)

    def test_deterministic(self) -> None:
        """
        The same prompt always produces the same text, on any server; a
        different prompt starts somewhere else in the vocabulary.
        """

        def generate(prompt: str) -> str:
            _, stub = self.make(tokens_per_second=4.0)
            d = self.post(stub, COMPLETIONS, {"prompt": prompt, "max_tokens": 8})
            self.advance(stub, 2.0)
            text: str = self.json_of(stub, d)[1]["choices"][0]["text"]
            return text

        self.assertEqual(generate("hello world"), generate("hello world"))
        self.assertNotEqual(generate("hello world"), generate("goodbye world"))

    def test_ids_count_up(self) -> None:
        """
        Response ids come from one per-server counter and ``created`` is the
        clock time at which the request arrived.
        """
        _, stub = self.make(tokens_per_second=4.0)
        first = self.post(stub, CHAT, {"messages": [{"role": "user", "content": "a"}]})
        self.advance(stub, 10.5)
        second = self.post(stub, COMPLETIONS, {"prompt": "b", "max_tokens": 1})
        self.advance(stub, 0.25)
        body1 = self.json_of(stub, first)[1]
        body2 = self.json_of(stub, second)[1]
        self.assertEqual((body1["id"], body1["created"]), ("chatcmpl-1", int(START)))
        self.assertEqual((body2["id"], body2["created"]), ("cmpl-2", int(START) + 10))

    # -- streaming -------------------------------------------------------------

    def test_chat_stream_event_sequence(self) -> None:
        """
        A streamed chat opens with SSE headers and a role chunk at once, then
        sends one ``chat.completion.chunk`` per token, a final chunk with
        ``finish_reason: "length"`` and ``data: [DONE]``.
        """
        server, stub = self.make(tokens_per_second=4.0)
        response, collector = self.start_stream(
            stub, CHAT, {"messages": [{"role": "user", "content": "Tell me"}], "max_tokens": 3}
        )
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders("content-type"), ["text/event-stream"])
        self.assertEqual(response.headers.getRawHeaders("cache-control"), ["no-cache"])
        common = {
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "created": int(START),
            "model": "vespa-demo",
        }
        role = {
            **common,
            "choices": [
                {
                    "index": 0,
                    "delta": {"role": "assistant", "content": ""},
                    "logprobs": None,
                    "finish_reason": None,
                }
            ],
        }
        self.assertEqual(collector.events, [role])

        self.advance(stub, 0.5)
        self.assertNoResult(collector.done)
        self.advance(stub, 0.25)
        self.successResultOf(collector.done)
        events = collector.events
        self.assertEqual(len(events), 6)
        tokens = [e["choices"][0]["delta"]["content"] for e in events[1:4]]
        for token, event in zip(tokens, events[1:4], strict=True):
            self.assertEqual(
                event,
                {
                    **common,
                    "choices": [
                        {
                            "index": 0,
                            "delta": {"content": token},
                            "logprobs": None,
                            "finish_reason": None,
                        }
                    ],
                },
            )
            self.assertRegex(token, r"^ [a-z]+$")

        # The final chunk and [DONE] follow the last token immediately.
        self.assertEqual(
            events[4:],
            [
                {
                    **common,
                    "choices": [
                        {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "length"}
                    ],
                },
                "[DONE]",
            ],
        )
        self.assertTrue(b"".join(collector.chunks).endswith(b"data: [DONE]\n\n"))
        self.assertEqual(server.completed, 1)
        self.assert_idle(server)

    def test_stream_matches_non_stream(self) -> None:
        """
        The streamed tokens join up to the same text a non-streamed request
        for the same prompt returns.
        """
        request = {"messages": [{"role": "user", "content": "same"}], "max_tokens": 5}
        _, stub = self.make(tokens_per_second=4.0)
        d = self.post(stub, CHAT, request)
        _, collector = self.start_stream(stub, CHAT, request)
        self.advance(stub, 1.25)
        text = self.json_of(stub, d)[1]["choices"][0]["message"]["content"]
        streamed = "".join(e["choices"][0]["delta"]["content"] for e in collector.events[1:-2])
        self.assertEqual(streamed, text)

    def test_stream_tokens_arrive_over_time(self) -> None:
        """
        Tokens are paced at ``tokens_per_second``: halfway through, half of
        them have arrived, and each is delivered as soon as it is generated.
        """
        _, stub = self.make(tokens_per_second=4.0)
        _, collector = self.start_stream(
            stub, CHAT, {"messages": [{"role": "user", "content": "x"}], "max_tokens": 8}
        )
        arrived = []
        for _ in range(8):
            self.advance(stub, 0.25)
            arrived.append(len(collector.events) - 1)
        self.assertEqual(arrived[:7], [1, 2, 3, 4, 5, 6, 7])
        # The last step also carries the final chunk and [DONE].
        self.assertEqual(arrived[7], 10)
        self.successResultOf(collector.done)

    def test_stream_halfway(self) -> None:
        """
        Advancing half the generation time in one step delivers half the
        tokens, not all or none of them.
        """
        _, stub = self.make(tokens_per_second=4.0)
        _, collector = self.start_stream(stub, COMPLETIONS, {"prompt": "x", "max_tokens": 8})
        self.advance(stub, 1.0)
        self.assertEqual(len(collector.events), 4)
        self.assertNoResult(collector.done)
        self.advance(stub, 1.0)
        self.assertEqual(len(collector.events), 10)
        self.successResultOf(collector.done)

    def test_completion_stream(self) -> None:
        """
        A streamed completion sends its headers at once, then
        ``text_completion`` chunks with ``choices[0].text``, a final chunk
        with ``finish_reason: "length"`` and ``[DONE]``.
        """
        _, stub = self.make(tokens_per_second=4.0)
        response, collector = self.start_stream(
            stub, COMPLETIONS, {"prompt": "Once upon", "max_tokens": 2}
        )
        self.assertEqual(response.headers.getRawHeaders("content-type"), ["text/event-stream"])
        self.assertEqual(collector.events, [])
        self.advance(stub, 0.5)
        self.successResultOf(collector.done)
        events = collector.events
        self.assertEqual(len(events), 4)
        for event in events[:3]:
            self.assertEqual(event["id"], "cmpl-1")
            self.assertEqual(event["object"], "text_completion")
            self.assertEqual(event["model"], "vespa-demo")
            self.assertNotIn("usage", event)
        self.assertEqual(
            [e["choices"] for e in events[:2]],
            [
                [{"index": 0, "text": t, "logprobs": None, "finish_reason": None}]
                for t in (events[0]["choices"][0]["text"], events[1]["choices"][0]["text"])
            ],
        )
        self.assertEqual(
            events[2]["choices"],
            [{"index": 0, "text": "", "logprobs": None, "finish_reason": "length"}],
        )
        self.assertEqual(events[3], "[DONE]")

    def test_include_usage(self) -> None:
        """
        With ``stream_options.include_usage`` every chunk carries
        ``usage: null`` and a last chunk with empty ``choices`` carries the
        usage, just before ``[DONE]``.
        """
        _, stub = self.make(tokens_per_second=4.0)
        _, collector = self.start_stream(
            stub,
            CHAT,
            {
                "messages": [{"role": "user", "content": "count these three"}],
                "max_tokens": 2,
                "stream_options": {"include_usage": True},
            },
        )
        self.advance(stub, 0.5)
        self.successResultOf(collector.done)
        events = collector.events
        self.assertEqual(len(events), 6)
        for event in events[:4]:
            self.assertIsNone(event["usage"])
            self.assertEqual(len(event["choices"]), 1)
        self.assertEqual(events[3]["choices"][0]["finish_reason"], "length")
        self.assertEqual(
            events[4],
            {
                "id": "chatcmpl-1",
                "object": "chat.completion.chunk",
                "created": int(START),
                "model": "vespa-demo",
                "choices": [],
                "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
            },
        )
        self.assertEqual(events[5], "[DONE]")

    def test_include_usage_false(self) -> None:
        """
        ``include_usage: false`` streams no usage chunk.
        """
        _, stub = self.make(tokens_per_second=4.0)
        _, collector = self.start_stream(
            stub,
            COMPLETIONS,
            {"prompt": "p", "max_tokens": 1, "stream_options": {"include_usage": False}},
        )
        self.advance(stub, 0.25)
        events = collector.events
        self.assertEqual(len(events), 3)
        self.assertTrue(all("usage" not in e for e in events[:-1]))

    # -- concurrency -------------------------------------------------------------

    def test_saturate_at_queues_in_order(self) -> None:
        """
        With ``saturate_at=1`` requests run one after the other in arrival
        order, each starting as soon as the previous one finishes.
        """
        server, stub = self.make(tokens_per_second=4.0, saturate_at=1)
        finished: list[tuple[int, float]] = []
        for i in range(3):
            d = self.post(stub, COMPLETIONS, {"prompt": f"p{i}", "max_tokens": 4})
            d.addCallback(lambda _, i=i: finished.append((i, self.clock.seconds() - START)))
        self.assertEqual((server.active, server.waiting), (1, 2))
        self.advance(stub, 0.75)
        self.assertEqual(finished, [])
        self.advance(stub, 0.25)
        self.assertEqual(finished, [(0, 1.0)])
        # The second request started at once: it is running, one still waits.
        self.assertEqual((server.active, server.waiting, server.completed), (1, 1, 1))
        self.advance(stub, 1.0)
        self.advance(stub, 1.0)
        self.assertEqual(finished, [(0, 1.0), (1, 2.0), (2, 3.0)])
        self.assertEqual(server.completed, 3)
        self.assert_idle(server)

    def test_concurrent_throughput(self) -> None:
        """
        Requests running together each get the full ``tokens_per_second``.
        """
        server, stub = self.make(tokens_per_second=4.0, saturate_at=3)
        ds = [self.post(stub, COMPLETIONS, {"prompt": f"p{i}", "max_tokens": 4}) for i in range(3)]
        self.assertEqual((server.active, server.waiting), (3, 0))
        self.advance(stub, 0.75)
        for d in ds:
            self.assertNoResult(d)
        self.advance(stub, 0.25)
        for d in ds:
            self.assertEqual(self.successResultOf(d).code, 200)
        self.assertEqual(server.completed, 3)

    def test_queued_stream_starts_when_slot_frees(self) -> None:
        """
        A streamed request waiting for a slot gets its headers at once but no
        events; its role chunk arrives the moment the running request ends
        and its tokens follow at full speed.
        """
        server, stub = self.make(tokens_per_second=4.0, saturate_at=1)
        first = self.post(stub, COMPLETIONS, {"prompt": "first", "max_tokens": 2})
        response, collector = self.start_stream(
            stub, CHAT, {"messages": [{"role": "user", "content": "second"}], "max_tokens": 2}
        )
        self.assertEqual(response.code, 200)
        self.assertEqual(collector.events, [])
        self.assertEqual((server.active, server.waiting), (1, 1))
        self.advance(stub, 0.5)
        self.successResultOf(first)
        self.assertEqual(len(collector.events), 1)
        self.assertEqual(collector.events[0]["choices"][0]["delta"]["role"], "assistant")
        self.assertEqual((server.active, server.waiting), (1, 0))
        self.advance(stub, 0.5)
        self.assertEqual(len(collector.events), 5)
        self.successResultOf(collector.done)
        self.assert_idle(server)

    # -- disconnects ---------------------------------------------------------

    def test_stream_disconnect_stops_generation(self) -> None:
        """
        When a streaming client hangs up, generation stops at once: nothing
        is left scheduled, the slot is freed and ``cancelled`` goes up.
        """
        server, stub = self.make(tokens_per_second=4.0)
        response = self.successResultOf(
            self.post(
                stub,
                CHAT,
                {"messages": [{"role": "user", "content": "x"}], "max_tokens": 100, "stream": True},
            )
        )
        received: list[bytes] = []

        def collect(data: bytes) -> None:
            received.append(data)
            if len(parse_events(b"".join(received))) >= 3:
                # treq.collect closes the connection when the collector fails.
                raise RuntimeError("client gives up")

        done = treq.collect(response, collect)
        stub.flush()
        self.advance(stub, 0.5)
        self.failureResultOf(done, RuntimeError)
        self.assertEqual(server.cancelled, 1)
        self.assertEqual(server.completed, 0)
        self.assert_idle(server)
        seen = len(parse_events(b"".join(received)))
        self.advance(stub, 30.0)
        self.assertEqual(len(parse_events(b"".join(received))), seen)

    def test_non_stream_disconnect_stops_generation(self) -> None:
        """
        Cancelling a non-streamed request before it is answered stops its
        generation.
        """
        server, stub = self.make(tokens_per_second=4.0)
        d = self.post(stub, COMPLETIONS, {"prompt": "x", "max_tokens": 100})
        self.advance(stub, 1.0)
        self.assertEqual(server.active, 1)
        d.cancel()
        stub.flush()
        self.failureResultOf(d)
        self.assertEqual((server.cancelled, server.completed), (1, 0))
        self.assert_idle(server)

    def test_disconnect_frees_slot_for_waiting_request(self) -> None:
        """
        Cancelling the running request starts the next waiting one at once.
        """
        server, stub = self.make(tokens_per_second=4.0, saturate_at=1)
        running = self.post(stub, COMPLETIONS, {"prompt": "a", "max_tokens": 100})
        waiting = self.post(stub, COMPLETIONS, {"prompt": "b", "max_tokens": 2})
        self.advance(stub, 1.0)
        self.assertEqual((server.active, server.waiting), (1, 1))
        running.cancel()
        stub.flush()
        self.failureResultOf(running)
        self.assertEqual((server.active, server.waiting, server.cancelled), (1, 0, 1))
        self.advance(stub, 0.5)
        self.assertEqual(self.successResultOf(waiting).code, 200)
        self.assertEqual(server.completed, 1)
        self.assert_idle(server)

    def test_disconnect_while_waiting(self) -> None:
        """
        A waiting request whose client hangs up leaves the queue and never
        starts.
        """
        server, stub = self.make(tokens_per_second=4.0, saturate_at=1)
        running = self.post(stub, COMPLETIONS, {"prompt": "a", "max_tokens": 2})
        waiting = self.post(stub, COMPLETIONS, {"prompt": "b", "max_tokens": 2})
        self.assertEqual(server.waiting, 1)
        waiting.cancel()
        stub.flush()
        self.failureResultOf(waiting)
        self.assertEqual((server.active, server.waiting, server.cancelled), (1, 0, 1))
        self.advance(stub, 0.5)
        self.successResultOf(running)
        self.assertEqual(server.completed, 1)
        self.assert_idle(server)

    # -- errors ----------------------------------------------------------------

    def test_invalid_json(self) -> None:
        """
        A body that is not JSON is a 400.
        """
        server, stub = self.make()
        self.assert_error(stub, self.post(stub, CHAT, b"{not json"), 400)
        self.assert_error(stub, self.post(stub, COMPLETIONS, b"\xff\xfe"), 400)
        self.assert_idle(server)

    def test_body_not_object(self) -> None:
        """
        A JSON body that is not an object is a 400.
        """
        _, stub = self.make()
        self.assert_error(stub, self.post(stub, CHAT, [1, 2]), 400)

    def test_missing_messages(self) -> None:
        """
        A chat request without a non-empty ``messages`` list is a 400.
        """
        server, stub = self.make()
        for body in (
            {},
            {"messages": "hello"},
            {"messages": []},
            {"messages": ["hello"]},
            {"messages": [{"content": "no role"}]},
            {"messages": [{"role": "user", "content": 3}]},
            {"messages": [{"role": "user", "content": [{"type": "text"}]}]},
        ):
            self.assert_error(stub, self.post(stub, CHAT, body), 400, param="messages")
        self.assert_idle(server)

    def test_missing_prompt(self) -> None:
        """
        A completion request without a string or list-of-strings ``prompt`` is
        a 400.
        """
        _, stub = self.make()
        for body in ({}, {"prompt": 3}, {"prompt": []}, {"prompt": [1, 2]}):
            self.assert_error(stub, self.post(stub, COMPLETIONS, body), 400, param="prompt")

    def test_bad_max_tokens(self) -> None:
        """
        ``max_tokens`` that is not a positive integer is a 400 naming the
        field.
        """
        server, stub = self.make()
        for value in (0, -1, "16", 1.5, True, [4]):
            self.assert_error(
                stub,
                self.post(stub, COMPLETIONS, {"prompt": "x", "max_tokens": value}),
                400,
                param="max_tokens",
            )
        self.assert_error(
            stub,
            self.post(
                stub,
                CHAT,
                {"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 0},
            ),
            400,
            param="max_completion_tokens",
        )
        self.assert_idle(server)

    def test_max_tokens_beyond_context(self) -> None:
        """
        Asking for more tokens than the model's context holds is a 400, like a
        real server.
        """
        _, stub = self.make()
        self.assert_error(
            stub,
            self.post(stub, COMPLETIONS, {"prompt": "two words", "max_tokens": MAX_MODEL_LEN - 1}),
            400,
            param="max_tokens",
        )

    def test_wrong_model(self) -> None:
        """
        Naming a model this server does not serve is a 404
        ``model_not_found``.
        """
        server, stub = self.make()
        error = self.assert_error(
            stub,
            self.post(
                stub, CHAT, {"model": "gpt-4", "messages": [{"role": "user", "content": "x"}]}
            ),
            404,
            param="model",
            error_code="model_not_found",
        )
        self.assertIn("gpt-4", error["message"])
        self.assert_error(
            stub,
            self.post(stub, COMPLETIONS, {"model": 7, "prompt": "x"}),
            400,
            param="model",
        )
        self.assert_idle(server)

    def test_bad_stream_fields(self) -> None:
        """
        A non-boolean ``stream`` or malformed ``stream_options`` is a 400, and
        so is ``stream_options`` without streaming.
        """
        _, stub = self.make()
        for body, param in (
            ({"prompt": "x", "stream": "yes"}, "stream"),
            ({"prompt": "x", "stream_options": {"include_usage": True}}, "stream_options"),
            ({"prompt": "x", "stream": True, "stream_options": []}, "stream_options"),
            (
                {"prompt": "x", "stream": True, "stream_options": {"include_usage": 1}},
                "stream_options",
            ),
            ({"prompt": "x", "n": 2}, "n"),
        ):
            self.assert_error(stub, self.post(stub, COMPLETIONS, body), 400, param=param)

    def test_unknown_path(self) -> None:
        """
        An unknown path is a JSON 404.
        """
        _, stub = self.make()
        error = self.assert_error(stub, stub.get(BASE + "/v2/nothing"), 404)
        self.assertIn("/v2/nothing", error["message"])
        self.assert_error(stub, self.post(stub, BASE + "/", {}), 404)

    def test_wrong_method(self) -> None:
        """
        A known path with the wrong method is a JSON 405 with an ``Allow``
        header.
        """
        _, stub = self.make()
        d = stub.get(CHAT)
        self.assert_error(stub, d, 405, error_code="method_not_allowed")
        self.assertEqual(self.successResultOf(d).headers.getRawHeaders("allow"), ["POST"])
        d = self.post(stub, BASE + "/health", {})
        self.assert_error(stub, d, 405, error_code="method_not_allowed")
        self.assertEqual(self.successResultOf(d).headers.getRawHeaders("allow"), ["GET, HEAD"])
        self.assert_error(
            stub, stub.delete(BASE + "/v1/models"), 405, error_code="method_not_allowed"
        )

    # -- construction ------------------------------------------------------------

    def test_bad_tokens_per_second(self) -> None:
        """
        A ``tokens_per_second`` of zero, below zero or NaN is a ValueError.
        """
        for value in (0.0, -1.0, float("nan")):
            self.assertRaises(ValueError, OpenAIServer, self.clock, tokens_per_second=value)

    def test_bad_saturate_at(self) -> None:
        """
        A ``saturate_at`` below 1 is a ValueError.
        """
        self.assertRaises(ValueError, OpenAIServer, self.clock, saturate_at=0)

    def test_counters_read_only(self) -> None:
        """
        The counters cannot be assigned to.
        """
        server = OpenAIServer(self.clock)
        for name in ("active", "waiting", "completed", "cancelled"):
            self.assertEqual(getattr(server, name), 0)
            self.assertRaises(AttributeError, setattr, server, name, 1)

    def test_fake_site(self) -> None:
        """
        :func:`fake_site` serves the given :class:`OpenAIServer` and logs
        nothing.
        """
        site = fake_site(OpenAIServer(self.clock, model="m", tokens_per_second=2.0, saturate_at=3))
        self.assertIsInstance(site, Site)
        self.assertIsInstance(site.resource, OpenAIServer)
        self.assertEqual(site.resource.model, "m")
        # HTTPFactory.log writes to _logFile; give it one that records lines.
        written: list[str] = []
        site._logFile = type("F", (), {"write": staticmethod(written.append)})()
        site.log(DummyRequest([b"health"]))
        self.assertEqual(written, [])


class RealSocketTests(TestCase):
    """
    Serve :func:`fake_site` on a real socket and talk to it with treq.
    """

    def listen(self, site: Site) -> IListeningPort:
        """
        Listen on an ephemeral local port, cleaning up after the test: the
        client's pooled connections are closed and the server side of every
        connection has gone away before the port stops listening.

        :param site: The site to serve.
        :return: The listening port.
        """
        lost: list[Deferred[None]] = []
        build = site.buildProtocol

        def build_protocol(addr: IAddress) -> Protocol | None:
            protocol = build(addr)
            if protocol is None:
                return None
            connection_lost = protocol.connectionLost
            d: Deferred[None] = Deferred()
            lost.append(d)

            def on_lost(reason: Failure) -> None:
                connection_lost(reason)
                d.callback(None)

            protocol.connectionLost = on_lost
            return protocol

        site.buildProtocol = build_protocol
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.pool = HTTPConnectionPool(reactor)
        self.addCleanup(port.stopListening)
        self.addCleanup(lambda: DeferredList(lost))
        self.addCleanup(self.pool.closeCachedConnections)
        return port

    @inlineCallbacks
    def test_stream_over_tcp(self) -> Any:
        """
        A streamed chat over TCP delivers the role chunk, ``max_tokens``
        content chunks, the final chunk, the usage chunk and ``[DONE]``.
        """
        site = fake_site(OpenAIServer(reactor, model="vespa-demo", tokens_per_second=1000.0))
        port = self.listen(site)
        url = f"http://127.0.0.1:{port.getHost().port}/v1/chat/completions"
        response = yield treq.post(
            url,
            json={
                "model": "vespa-demo",
                "messages": [{"role": "user", "content": "stream over a socket"}],
                "max_tokens": 20,
                "stream": True,
                "stream_options": {"include_usage": True},
            },
            pool=self.pool,
        )
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders("content-type"), ["text/event-stream"])
        chunks: list[bytes] = []
        yield treq.collect(response, chunks.append)
        events = parse_events(b"".join(chunks))
        self.assertEqual(len(events), 24)
        self.assertEqual(events[0]["choices"][0]["delta"], {"role": "assistant", "content": ""})
        content = [e["choices"][0]["delta"]["content"] for e in events[1:21]]
        self.assertTrue(all(t.startswith(" ") for t in content))
        self.assertEqual(events[21]["choices"][0]["finish_reason"], "length")
        self.assertEqual(
            events[22]["usage"], {"prompt_tokens": 4, "completion_tokens": 20, "total_tokens": 24}
        )
        self.assertEqual(events[23], "[DONE]")
        self.assertEqual({e["id"] for e in events[:23]}, {"chatcmpl-1"})
        self.assertEqual(site.resource.completed, 1)
