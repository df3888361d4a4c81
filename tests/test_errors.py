"""
Vespa's own error answers: JSON, with the right status line.
"""

from __future__ import annotations

import json

from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from vespa.client.errors import NoWorkerReady, WorkerTimeout
from vespa.errors import (
    BadRequest,
    RequestTimeout,
    ServiceUnavailable,
    VespaError,
    error_response,
    status_phrase,
    write_error,
)


class PhraseTests(SynchronousTestCase):
    """Every status Vespa sends has its RFC 9110 phrase (twisted.web knows no 422 or 429)."""

    def test_phrases(self) -> None:
        self.assertEqual(status_phrase(422), b"Unprocessable Content")
        self.assertEqual(status_phrase(413), b"Content Too Large")
        self.assertEqual(status_phrase(429), b"Too Many Requests")
        self.assertEqual(status_phrase(401), b"Unauthorized")
        self.assertEqual(status_phrase(599), b"")

    def test_write_error_sets_the_phrase(self) -> None:
        class Unprocessable(VespaError):
            status = 422

        request = DummyRequest([b""])
        body = write_error(request, Unprocessable("no", details={"payload": "field missing"}))
        self.assertEqual(
            (request.responseCode, request.responseMessage), (422, b"Unprocessable Content")
        )
        self.assertEqual(
            json.loads(body), {"error": "no", "origin": "vespa", "payload": "field missing"}
        )


class ErrorResponseTests(SynchronousTestCase):
    """A whole response written to a connection directly, then closed."""

    def test_status_line_headers_and_json(self) -> None:
        raw = error_response(ServiceUnavailable("full", headers={"Retry-After": "1"}))
        head, _, body = raw.partition(b"\r\n\r\n")
        self.assertEqual(
            head.split(b"\r\n"),
            [
                b"HTTP/1.1 503 Service Unavailable",
                b"Content-Type: application/json",
                b"Content-Length: %d" % (len(body),),
                b"X-Vespa-Origin: vespa",
                b"Retry-After: 1",
                b"Connection: close",
            ],
        )
        self.assertEqual(json.loads(body), {"error": "full", "origin": "vespa"})

    def test_statuses(self) -> None:
        self.assertTrue(error_response(BadRequest("x")).startswith(b"HTTP/1.1 400 Bad Request\r\n"))
        self.assertTrue(
            error_response(RequestTimeout("x")).startswith(b"HTTP/1.1 408 Request Timeout\r\n")
        )


class DeclarationTests(SynchronousTestCase):
    """An error states its status and origin in its class line; what it omits it inherits."""

    def test_class_line_sets_status_and_origin(self) -> None:
        class Upstream(VespaError, status=502, origin="worker"):
            """A worker failed."""

        class Late(Upstream, status=504):
            """A worker was late."""

        self.assertEqual(
            json.loads(write_error(DummyRequest([b""]), Late("slow"))),
            {
                "error": "slow",
                "origin": "worker",
            },
        )
        self.assertEqual((Upstream.status, Late.status, Late.origin), (502, 504, "worker"))
        self.assertEqual((VespaError.status, VespaError.origin), (500, "vespa"))

    def test_client_errors_keep_their_statuses(self) -> None:
        self.assertEqual((NoWorkerReady.status, NoWorkerReady.origin), (503, "autoscaler"))
        self.assertEqual((WorkerTimeout.status, WorkerTimeout.origin), (504, "worker"))
