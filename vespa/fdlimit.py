# -*- test-case-name: tests.test_fdlimit -*-
"""
The open-file limit, and how many client connections fit under it.

Every connection is a file descriptor. A worker that runs out of them cannot
accept, cannot reach its backend and cannot report: one slow-client attack
with the common soft limit of 1024 denied all service. So the worker raises
its soft limit to the hard one at start, and serves at most
:func:`connection_budget` client connections, keeping the rest for backend
connections, reports, request bodies spooled to files and logs.
"""

from __future__ import annotations

from vespa.log import get_logger

log = get_logger(__name__)

#: File descriptors kept for everything but client connections, at least.
MIN_RESERVE = 64
#: ... and at least this share of the limit (backend connections grow with load).
RESERVE_SHARE = 4
#: Linux refuses a soft limit above ``fs.nr_open`` (1048576 by default), even
#: under an unlimited hard limit.
_LINUX_NR_OPEN = 1 << 20


def raise_fd_limit() -> int | None:
    """
    Raise the soft ``RLIMIT_NOFILE`` to the hard limit.

    :return: the soft limit in force afterwards, or ``None`` where the
        platform has no such limit.
    """
    try:
        import resource
    except ImportError:  # not a POSIX system
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = _LINUX_NR_OPEN if hard == resource.RLIM_INFINITY else hard
    if soft == resource.RLIM_INFINITY or soft >= target:
        return None if soft == resource.RLIM_INFINITY else soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as e:
        log.warn(
            "could not raise the open-file limit from {soft} to {target}: {error}",
            soft=soft,
            target=target,
            error=e,
        )
        return soft
    log.info("raised the open-file limit from {soft} to {target}", soft=soft, target=target)
    return target


def connection_budget(fd_limit: int | None) -> int | None:
    """
    How many client connections to serve at once under ``fd_limit``.

    :param fd_limit: the soft open-file limit, or ``None`` for none.
    :return: the limit minus a reserve of a quarter of it (at least
        :data:`MIN_RESERVE`), never below 1; ``None`` without a limit.
    """
    if fd_limit is None:
        return None
    reserve = max(MIN_RESERVE, fd_limit // RESERVE_SHARE)
    return max(1, fd_limit - reserve)
