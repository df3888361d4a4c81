"""
Capture the log lines a piece of code emits, as a test reads them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from twisted.logger import LogLevel, formatEvent, globalLogPublisher


class CapturedLog:
    """
    The events logged while capturing.

    :ivar events: every event, in order.
    """

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def __call__(self, event: dict[str, Any]) -> None:
        self.events.append(event)

    def lines(self, level: LogLevel | None = None) -> list[str]:
        """The formatted lines, of ``level`` only when given."""
        return [formatEvent(e) for e in self.events if level is None or e.get("log_level") is level]

    @property
    def text(self) -> str:
        """Every line, joined."""
        return "\n".join(self.lines())


@contextmanager
def capture_log() -> Iterator[CapturedLog]:
    """Capture what is logged inside the ``with`` block."""
    captured = CapturedLog()
    globalLogPublisher.addObserver(captured)
    try:
        yield captured
    finally:
        globalLogPublisher.removeObserver(captured)
