"""
What a caller's request becomes for a worker: the payload, the cost, the
wrapped body or the routing query, the forwarded headers.
"""

from __future__ import annotations

import json
from urllib.parse import parse_qsl

from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers

from vespa.client.errors import UnsupportedBody
from vespa.client.wrapping import (
    Call,
    build_worker_request,
    detect_cost,
    forwarded_headers,
    read_payload,
)
from vespa.errors import BadRequest
from vespa.protocol.envelope import parse_envelope

AUTH = {
    "cost": 20,
    "endpoint": "ep",
    "reqnum": 3,
    "request_idx": 9,
    "signature": "c2ln",
    "url": "http://1.2.3.4:5000",
    "__request_id": "extra",
}


class PayloadTests(SynchronousTestCase):
    def test_json(self) -> None:
        self.assertEqual(read_payload(b"application/json", b'{"a": [1, true]}'), {"a": [1, True]})

    def test_empty_body_is_an_empty_object(self) -> None:
        self.assertEqual(read_payload(None, b""), {})

    def test_json_without_a_json_content_type(self) -> None:
        """curl -d sends a form content type; the body decides."""
        self.assertEqual(read_payload(b"application/x-www-form-urlencoded", b"[1]"), [1])

    def test_not_json_is_415(self) -> None:
        with self.assertRaises(UnsupportedBody) as caught:
            read_payload(b"text/plain; charset=utf-8", b"hello")
        self.assertEqual(caught.exception.status, 415)
        self.assertIn("text/plain", caught.exception.message)

    def test_broken_json_that_says_json_is_400(self) -> None:
        for media in (b"application/json", b"application/vnd.x+json"):
            with self.assertRaises(BadRequest):
                read_payload(media, b'{"a":')


class CostTests(SynchronousTestCase):
    def cost(self, payload: object, header: bytes | None = None, default: float = 1.0) -> object:
        headers = Headers({b"X-Serverless-Cost": [header]} if header is not None else {})
        return detect_cost(headers, payload, default)

    def test_header_wins(self) -> None:
        self.assertEqual(self.cost({"max_tokens": 5}, b"250"), 250)
        self.assertEqual(self.cost({}, b"2.5"), 2.5)

    def test_bad_header_is_400(self) -> None:
        for bad in (b"lots", b"-1", b"nan", b"inf"):
            with self.assertRaises(BadRequest):
                self.cost({}, bad)

    def test_body_fields(self) -> None:
        cases = [
            ({"max_tokens": 100}, 100),
            ({"max_completion_tokens": 64}, 64),
            ({"max_new_tokens": 32}, 32),
            ({"parameters": {"max_new_tokens": 12}}, 12),
            ({"options": {"num_predict": 7}}, 7),
            ({"n_predict": 9}, 9),
            ({"steps": 30}, 30),
            ({"prompt": {"3": {"inputs": {"steps": 20}}, "9": {"inputs": {"steps": 5}}}}, 25),
            ({"input": ["a", "b", "c"]}, 3),
            ({"texts": ["a", "b"]}, 2),
            ({"input": [1, 2, 3]}, 1.0),  # one tokenized input: the default
            ({"max_tokens": True}, 1.0),  # not a number
            ({"max_tokens": None, "max_new_tokens": 4}, 4),
            ({"prompt": "a string prompt"}, 1.0),
        ]
        for payload, expected in cases:
            self.assertEqual(self.cost(payload), expected, payload)

    def test_default(self) -> None:
        self.assertEqual(self.cost(None, default=10.0), 10)
        self.assertEqual(self.cost([1, 2], default=0.5), 0.5)


def _call(method: bytes, target: bytes, payload: object = None, body: bytes | None = None) -> Call:
    return Call(method, target, Headers({b"X-Keep": [b"1"]}), payload, body, 20)


class WorkerRequestTests(SynchronousTestCase):
    def test_body_method_is_wrapped(self) -> None:
        """POST: {"auth_data", "payload"}, which the worker's own parser accepts."""
        request = build_worker_request(
            _call(b"POST", b"/v1/x?q=1", {"a": 1}), "http://1.2.3.4:5000/", AUTH, 2
        )
        self.assertEqual(request.url, b"http://1.2.3.4:5000/v1/x?q=1")
        body = json.loads(request.body or b"")
        self.assertEqual(body["payload"], {"a": 1})
        self.assertEqual(set(body["auth_data"]), set(AUTH) - {"__request_id"})
        self.assertEqual(request.headers.getRawHeaders(b"content-type"), [b"application/json"])
        self.assertEqual(request.headers.getRawHeaders(b"host"), [b"1.2.3.4:5000"])
        self.assertEqual(request.headers.getRawHeaders(b"x-vespa-attempt"), [b"2"])
        self.assertEqual(request.headers.getRawHeaders(b"x-keep"), [b"1"])
        envelope = parse_envelope(b"POST", b"/v1/x?q=1", request.body or b"", unsecured=False)
        self.assertEqual(envelope.auth and envelope.auth.request_idx, 9)

    def test_query_method_keeps_the_callers_query(self) -> None:
        """GET: serverless_* appended; the caller's query untouched, repeats and all."""
        target = b"/v1/models?a=1&a=2&flag=true&x=%5B1%5D"
        request = build_worker_request(_call(b"GET", target), "http://1.2.3.4:5000", AUTH, 1)
        path, _, query = request.url.partition(b"?")
        self.assertEqual(path, b"http://1.2.3.4:5000/v1/models")
        self.assertTrue(query.startswith(b"a=1&a=2&flag=true&x=%5B1%5D&serverless_cost=20"))
        pairs = dict(parse_qsl(query.decode()))
        self.assertEqual(pairs["serverless_request_idx"], "9")
        envelope = parse_envelope(
            b"GET", request.url[len(b"http://1.2.3.4:5000") :], b"", unsecured=False
        )
        self.assertEqual(envelope.target, target)
        self.assertIsNone(request.body)

    def test_query_method_without_a_query(self) -> None:
        for target, joined in ((b"/x", b"/x?serverless_"), (b"/x?", b"/x?serverless_")):
            request = build_worker_request(_call(b"DELETE", target), "http://h:1", AUTH, 1)
            self.assertTrue(request.url.startswith(b"http://h:1" + joined), request.url)

    def test_a_query_method_body_passes_as_it_is(self) -> None:
        request = build_worker_request(_call(b"GET", b"/x", body=b"raw"), "http://h:1", AUTH, 1)
        self.assertEqual(request.body, b"raw")


class ForwardedHeaderTests(SynchronousTestCase):
    def test_control_and_hop_by_hop_headers_stay_behind(self) -> None:
        incoming = Headers(
            {
                b"Host": [b"localhost:8010"],
                b"Connection": [b"keep-alive, X-Drop"],
                b"X-Drop": [b"1"],
                b"X-Vespa-Request-Preferences": [b"{}"],
                b"X-Serverless-Cost": [b"5"],
                b"Content-Type": [b"text/plain"],
                b"Authorization": [b"Bearer k"],
                b"Accept": [b"text/event-stream"],
            }
        )
        out = forwarded_headers(incoming, client_ip=b"127.0.0.1", proto=b"http")
        names = {name.lower() for name, _ in out.getAllRawHeaders()}
        self.assertEqual(
            names,
            {
                b"authorization",
                b"accept",
                b"x-forwarded-for",
                b"x-forwarded-host",
                b"x-forwarded-proto",
            },
        )
