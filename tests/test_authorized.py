"""
``--backend-api-key`` on the worker's own calls to the model server: health
checks, the benchmark and a session's ``on_close_route`` carry the key as the
relayed requests do (a vLLM started with ``--api-key`` refuses them otherwise).
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import succeed
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from tests.support import listen, until
from vespa.config import WorkerConfig
from vespa.http.authorized import AuthorizedAgent
from vespa.http.endpoints import Origin
from vespa.testing.model_servers import OpenAIServer
from vespa.worker.tap import build_worker

KEY = "model-server-key"


class _Recording:
    """An agent that records what it is asked to send."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, bytes, Headers]] = []

    def request(self, method: bytes, uri: bytes, headers: Any = None, body: Any = None) -> Any:
        self.sent.append((method, uri, headers))
        return succeed(None)


class AgentTests(SynchronousTestCase):
    def test_every_request_carries_the_key(self) -> None:
        """Set when absent, replacing the caller's; the caller's headers untouched."""
        recording = _Recording()
        agent = AuthorizedAgent(recording, b"Bearer k")  # type: ignore[arg-type]
        agent.request(b"GET", b"http://x/health")
        mine = Headers({b"authorization": [b"Bearer caller"], b"x-a": [b"1"]})
        agent.request(b"POST", b"http://x/v1", mine)
        for _, _, headers in recording.sent:
            self.assertEqual(headers.getRawHeaders(b"authorization"), [b"Bearer k"])
        self.assertEqual(recording.sent[1][2].getRawHeaders(b"x-a"), [b"1"])
        self.assertEqual(mine.getRawHeaders(b"authorization"), [b"Bearer caller"])


class _KeyRequired(Resource):
    """A model server that answers 401 to any request without its key, as vLLM does."""

    isLeaf = True

    def __init__(self, server: Resource) -> None:
        super().__init__()
        self.server = server
        self.refused: list[bytes] = []
        self.authorized: list[bytes] = []

    def render(self, request: Request) -> Any:
        if request.getHeader(b"authorization") != b"Bearer " + KEY.encode():
            self.refused.append(request.uri)
            request.setResponseCode(401)
            return b'{"error": "Unauthorized"}'
        self.authorized.append(request.uri)
        return self.server.render(request)


class WorkerTests(TestCase):
    async def test_a_keyed_model_server_is_health_checked_and_benchmarked(self) -> None:
        """With ``--backend-api-key``, a server that refuses calls without the
        key still becomes ready: every call the worker makes carries it."""
        keyed = _KeyRequired(OpenAIServer(reactor, tokens_per_second=1000.0))
        port = listen(self, Site(keyed))
        config = WorkerConfig(
            backend=Origin("http", "127.0.0.1", port),
            unsecured=True,
            backend_api_key=KEY,
            listen="tcp:0:interface=127.0.0.1",
            metrics_listen=None,
            http_port=0,
            benchmark_cache=self.mktemp(),
        )
        worker = build_worker(config, reactor)
        worker.service.startService()
        self.addCleanup(worker.service.stopService)
        await until(lambda: worker.state.is_loaded, timeout=30)
        self.assertEqual(keyed.refused, [])
        self.assertTrue(any(uri.startswith(b"/health") for uri in keyed.authorized))
        self.assertTrue(any(uri.startswith(b"/v1/chat/completions") for uri in keyed.authorized))
