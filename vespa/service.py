# -*- test-case-name: tests.test_worker_protocol -*-
"""
A service container that stops its children one at a time.

Twisted's ``MultiService`` stops every child at once. A worker needs order:
stop listening, then flush the last reports, then close the connection pools
those reports use, then stop the demo servers they talk to.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred, maybeDeferred

from vespa._typing import MultiService


class OrderedMultiService(MultiService):
    """
    Starts children in the order they were added and stops them in reverse,
    each after the previous one has finished stopping.
    """

    def stopService(self) -> Deferred[None]:
        async def stop_in_turn() -> None:
            self.running = 0
            for child in reversed(list(self)):
                try:
                    await maybeDeferred(child.stopService)
                except Exception:  # one child failing to stop must not keep the rest up
                    from vespa.log import get_logger

                    get_logger(__name__).failure("stopping {child} failed", child=child)

        return ensureDeferred(stop_in_turn())

    def __repr__(self) -> str:
        names: list[Any] = [type(child).__name__ for child in self]
        return f"<OrderedMultiService {names}>"
