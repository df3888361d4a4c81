# -*- test-case-name: tests.test_site -*-
"""
The connection limit of a :class:`vespa.http.site.ProxySite`.

With ``max_connections`` set (the worker derives it from its open-file
limit), a connection beyond the limit closes the one idle the longest (or
still sending its headers) instead of running the process out of file
descriptors; with none to close, it is refused with 503. The connections
tell the site when they open, close, wait for a request and serve one.
"""

from __future__ import annotations

from typing import Protocol

from vespa.log import get_logger

log = get_logger(__name__)


class _Evictable(Protocol):
    def evict(self) -> None: ...


class ConnectionLimit:
    """
    Counts a site's connections and keeps its idle ones in the order they
    went idle, to close the oldest when a new one needs the room.

    :param max_connections: connections open at once, ``None`` for no limit.
    """

    def __init__(self, max_connections: int | None) -> None:
        self.max_connections = max_connections
        #: Connections open now.
        self.connections = 0
        # Idle connections (or still in their headers), the longest idle first.
        self._idle: dict[_Evictable, None] = {}
        self._at_limit = False

    def opened(self) -> bool:
        """
        Count a new connection; make room for it if the site is at its limit.

        :return: whether it may be served (``False``: nothing could be closed for it).
        """
        self.connections += 1
        limit = self.max_connections
        if limit is None or self.connections <= limit:
            self._at_limit = False
            return True
        if not self._at_limit:
            self._at_limit = True
            log.warn(
                "{count} connections: at the limit of {limit}, each new one closes the one "
                "idle the longest (slow or idle clients)",
                count=self.connections,
                limit=limit,
            )
        if not self._idle:
            return False
        oldest = next(iter(self._idle))
        self.forget(oldest)
        oldest.evict()
        return True

    def closed(self) -> None:
        """Count a connection gone."""
        self.connections -= 1

    def idle(self, channel: _Evictable) -> None:
        """``channel`` waits for a request (it may be closed to make room), from now."""
        self._idle.pop(channel, None)
        self._idle[channel] = None

    def forget(self, channel: _Evictable) -> None:
        """``channel`` is serving a request, or gone: it is not closed to make room."""
        self._idle.pop(channel, None)
