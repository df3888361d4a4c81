"""
Typed faces of the unannotated Twisted classes that vespa subclasses.

mypy runs with ``disallow_untyped_calls``. A call into an unannotated Twisted
class by that class's own name (``Failure(...)``, ``request.setHeader``) is
let through by ``untyped_calls_exclude`` in ``mypy.ini``. A call on a
subclass of ours (``reporter.setServiceParent(root)``, ``super().__init__()``)
is named after our class, which no exclusion should cover; so vespa's
services, resources and option parsers derive from these bases, which
annotate the inherited methods once. This is the one module allowed to make
the untyped calls (see ``mypy.ini``).

The HTTP connection, request and site classes at the bottom are typed for mypy
only: at run time they are twisted.web's own classes, because their methods
run for every request and every streamed write, where a forwarding frame per
call would cost time for no behaviour.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from twisted.application import service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress, IDelayedCall
from twisted.internet.protocol import connectionDone
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.web import http, resource, server
from twisted.web.resource import IResource


class Service(service.Service):
    """:class:`twisted.application.service.Service`, annotated."""

    def startService(self) -> None:
        super().startService()

    def stopService(self) -> Deferred[None] | None:
        result: Deferred[None] | None = super().stopService()
        return result

    def setServiceParent(self, parent: service.IServiceCollection) -> None:
        super().setServiceParent(parent)


class MultiService(Service, service.MultiService):
    """
    :class:`twisted.application.service.MultiService`, annotated: the
    lifecycle methods come from :class:`Service` above, whose ``super()``
    calls reach ``MultiService``'s own (they follow the method resolution order).
    """

    def __init__(self) -> None:
        super().__init__()


class Resource(resource.Resource):
    """:class:`twisted.web.resource.Resource`, annotated."""

    def __init__(self) -> None:
        super().__init__()


class Options(usage.Options):
    """:class:`twisted.python.usage.Options`, annotated."""

    def __init__(self) -> None:
        super().__init__()

    def parseOptions(self, options: Sequence[str] | None = None) -> None:
        super().parseOptions(options)


if TYPE_CHECKING:

    class Request(server.Request):
        """:class:`twisted.web.server.Request`, annotated (for mypy only)."""

        def gotLength(self, length: int | None) -> None:
            super().gotLength(length)

        def handleContentChunk(self, data: bytes) -> None:
            super().handleContentChunk(data)

        def setHeader(self, name: bytes | str, value: bytes | str) -> None:
            super().setHeader(name, value)

        def render(self, resrc: IResource) -> None:
            super().render(resrc)

        def write(self, data: bytes) -> None:
            super().write(data)

        def finish(self) -> None:
            super().finish()

        def loseConnection(self) -> None:
            super().loseConnection()

    class HTTPChannel(http.HTTPChannel):
        """:class:`twisted.web.http.HTTPChannel`, annotated (for mypy only)."""

        def __init__(self) -> None:
            super().__init__()

        def connectionMade(self) -> None:
            super().connectionMade()

        def connectionLost(self, reason: Failure = connectionDone) -> None:
            super().connectionLost(reason)

        def dataReceived(self, data: bytes) -> None:
            super().dataReceived(data)

        def allHeadersReceived(self) -> None:
            super().allHeadersReceived()

        def requestDone(self, request: http.Request) -> None:
            super().requestDone(request)

        def setTimeout(self, period: float | None) -> float | None:
            previous: float | None = super().setTimeout(period)
            return previous

        def resetTimeout(self) -> None:
            super().resetTimeout()

        def timeoutConnection(self) -> None:
            super().timeoutConnection()

        def callLater(self, period: float, func: Callable[[], object]) -> IDelayedCall:
            call: IDelayedCall = super().callLater(period, func)
            return call

        def loseConnection(self) -> None:
            super().loseConnection()

    class GenericHTTPChannelProtocol(http._GenericHTTPChannelProtocol):
        """twisted.web's protocol choosing HTTP/1.x or HTTP/2, annotated (for mypy only)."""

        def dataReceived(self, data: bytes) -> None:
            super().dataReceived(data)

    class Site(server.Site):
        """:class:`twisted.web.server.Site`, annotated (for mypy only)."""

        def __init__(
            self,
            resource: IResource,
            *,
            logPath: str | None = None,  # noqa: N803 (twisted.web's keyword)
            reactor: Any = None,
            logFormatter: Callable[[str, Any], str] | None = None,  # noqa: N803
        ) -> None:
            super().__init__(
                resource, logPath=logPath, reactor=reactor, logFormatter=logFormatter
            )

        def getResourceFor(self, request: server.Request) -> IResource:
            found: IResource = super().getResourceFor(request)
            return found

        def buildProtocol(self, addr: IAddress | None) -> GenericHTTPChannelProtocol:
            built: GenericHTTPChannelProtocol = super().buildProtocol(addr)
            return built

else:
    Request = server.Request
    HTTPChannel = http.HTTPChannel
    GenericHTTPChannelProtocol = http._GenericHTTPChannelProtocol
    Site = server.Site
