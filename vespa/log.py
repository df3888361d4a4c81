# -*- test-case-name: tests.test_log -*-
"""Logging for Vespa: one ``Logger`` per module, filtered by ``--log-level``.

Every Vespa logger emits through one filtering observer, so the level chosen on
the command line applies to Vespa's own events (namespace ``vespa``) without
touching how ``twistd`` sets up its observers. The level is set once, by the
entry point (``makeService`` of each twistd plugin, ``vespa-client``'s
``main``), never by the code that builds a daemon: ``--demo`` builds a worker
and a client in one process, and they share it.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    formatEvent,
    globalLogPublisher,
)
from zope.interface import implementer

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
    Emit Vespa's events at ``level`` and above; drop the rest. For entry
    points only (see the module's documentation).

    :param level: the lowest level to emit.
    """
    _PREDICATE.setLogLevelForNamespace("vespa", level)


def json_observer() -> ILogObserver:
    """
    A log observer writing one compact JSON object per line to stdout, for
    log shippers: ``time``, ``level``, ``namespace``, ``message``, and the
    event's own simple fields (``request_id``, ``method``, ...).

    ``twistd vespa --log-format json`` installs it (as ``twistd --logger``).
    """
    import sys

    return _JSONLinesObserver(sys.__stdout__)


_SKIP = {
    "log_logger",
    "log_source",
    "log_observer",
    "log_format",
    "log_level",
    "log_time",
    "log_namespace",
    "log_trace",
    "log_io",
    "format",
    "message",
    "isError",
    "system",
    "time",
    "log_system",
    "log_flattened",
    "log_text",
    "log_legacy",
    "log_failure",
    "why",
    "failure",
}


@implementer(ILogObserver)
class _JSONLinesObserver:
    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def __call__(self, event: dict[str, Any]) -> None:
        level = event.get("log_level")
        record: dict[str, Any] = {
            "time": datetime.fromtimestamp(event.get("log_time", 0), timezone.utc).isoformat(
                timespec="milliseconds"
            ),
            "level": level.name if level is not None else "info",
            "namespace": event.get("log_namespace", "-"),
            "message": formatEvent(event),
        }
        failure = event.get("log_failure")
        if failure is not None:
            record["traceback"] = failure.getTraceback()
        for key, value in event.items():
            if (
                key not in _SKIP
                and not key.startswith("_")
                and isinstance(value, (str, int, float, bool, type(None)))
            ):
                record.setdefault(key, value)
        self._stream.write(json.dumps(record, default=str) + "\n")
        self._stream.flush()
