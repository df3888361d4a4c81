# -*- test-case-name: tests.test_log -*-
"""Logging for Vespa: one ``Logger`` per module, filtered by ``--log-level``.

Every Vespa logger emits through one filtering observer, so the level chosen on
the command line applies to Vespa's own events (namespace ``vespa``) without
touching how ``twistd`` sets up its observers.
"""

from __future__ import annotations

from twisted.logger import (
    FilteringLogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogPublisher,
)

_PREDICATE = LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)
_OBSERVER = FilteringLogObserver(globalLogPublisher, [_PREDICATE])

LEVELS = {
    "debug": LogLevel.debug,
    "info": LogLevel.info,
    "warn": LogLevel.warn,
    "warning": LogLevel.warn,
    "error": LogLevel.error,
    "critical": LogLevel.critical,
}


def get_logger(namespace: str) -> Logger:
    """
    Return the logger for a Vespa module.

    :param namespace: the module's ``__name__``.
    """
    return Logger(namespace=namespace, observer=_OBSERVER)


def set_log_level(level: LogLevel) -> None:
    """
    Emit Vespa's events at ``level`` and above; drop the rest.

    :param level: the lowest level to emit.
    """
    _PREDICATE.setLogLevelForNamespace("vespa", level)
