# -*- test-case-name: tests.test_worker_relay -*-
"""
The worker's HTTP surface: local routes first, then everything else relayed.

``GET /ping`` is answered by Vespa itself (for load balancers) and never
forwarded. Every other request is checked (target, method, blocked paths, body
size) and relayed to the backend.
"""

from __future__ import annotations

from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from vespa.errors import (
    BodyTooLarge,
    MethodNotAllowed,
    PathBlocked,
    VespaError,
    write_error,
)
from vespa.log import get_logger
from vespa.proxy.relay import BackendRelay, RelayResult
from vespa.proxy.site import ProxyRequest
from vespa.proxy.target import PathBlocklist, origin_form

log = get_logger(__name__)

# A tunnel or a trace is not a model-server request; relaying either would
# turn the worker into an open proxy or leak headers.
_REFUSED_METHODS = frozenset({b"CONNECT", b"TRACE"})


class WorkerResource(Resource):
    """
    The root resource of the worker.

    :param relay: relays requests to the backend.
    :param blocklist: paths answered 403.
    """

    isLeaf = True

    def __init__(self, relay: BackendRelay, blocklist: PathBlocklist | None = None) -> None:
        super().__init__()
        self.relay = relay
        self.blocklist = blocklist or PathBlocklist(())

    def render(self, request: Request) -> bytes | int:
        """
        Answer a local route, refuse a request that cannot be relayed, or relay it.
        """
        try:
            target = origin_form(request.uri)
            if request.path == b"/ping" and request.method in (b"GET", b"HEAD"):
                request.setHeader(b"content-type", b"text/plain")
                return b"pong"
            self._check(request, target)
        except VespaError as error:
            log.info(
                "refused {method} {uri}: {error}",
                method=request.method.decode("ascii", "replace"),
                uri=request.uri[:200].decode("ascii", "replace"),
                error=error.message,
            )
            return write_error(request, error)
        self.relay.forward(request, target).addCallback(self._relayed)
        return NOT_DONE_YET

    def _check(self, request: Request, target: bytes) -> None:
        if request.method in _REFUSED_METHODS:
            raise MethodNotAllowed(
                f"{request.method.decode('ascii', 'replace')} is not relayed",
                headers={"Allow": "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"},
            )
        if isinstance(request, ProxyRequest) and request.body_too_large:
            raise BodyTooLarge("the request body is over the limit")
        if self.blocklist.blocks(target):
            raise PathBlocked("this path is blocked on this worker")

    def _relayed(self, result: RelayResult) -> None:
        """The exchange is over; accounting hooks in here."""
