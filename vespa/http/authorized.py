# -*- test-case-name: tests.test_authorized -*-
"""
An agent that sends one ``Authorization`` header on every request: the model
server's own key (``--backend-api-key``), for the worker's calls of its own to
the model server (health checks, the benchmark, a session's ``on_close_route``),
as the relay sends it on every relayed request.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IBodyProducer, IResponse
from zope.interface import implementer


@implementer(IAgent)
class AuthorizedAgent:
    """
    Wraps ``agent``: every request gets ``authorization`` as its
    ``Authorization`` header, replacing any the caller set.

    :param agent: the agent that sends the requests.
    :param authorization: the header's value, e.g. ``b"Bearer KEY"``.
    """

    def __init__(self, agent: IAgent, authorization: bytes) -> None:
        self._agent = agent
        self._authorization = authorization

    def request(
        self,
        method: bytes,
        uri: bytes,
        headers: Headers | None = None,
        bodyProducer: IBodyProducer | None = None,  # noqa: N803 (IAgent.request's name)
    ) -> Deferred[IResponse]:
        """Send the request with the key; see :meth:`IAgent.request`."""
        headers = headers.copy() if headers is not None else Headers()
        headers.setRawHeaders(b"authorization", [self._authorization])
        return self._agent.request(method, uri, headers, bodyProducer)
