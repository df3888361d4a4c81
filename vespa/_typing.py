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
"""

from __future__ import annotations

from collections.abc import Sequence

from twisted.application import service
from twisted.internet.defer import Deferred
from twisted.python import usage
from twisted.web import resource


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
