# -*- test-case-name: tests.test_client_policy -*-
"""
Preferences: how one request is handled, from the daemon's defaults and the
``X-Vespa-Request-Preferences`` header.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from vespa.errors import BadRequest


@dataclass(frozen=True)
class Preferences:
    """
    How one request is handled. The daemon's options give the defaults; the
    ``X-Vespa-Request-Preferences`` header (JSON) overrides them per request.

    :ivar timeout_s: seconds for the whole request, from arrival to the end of
        the answer; ``None`` for no limit.
    :ivar max_retries: attempts after the first, at most.
    :ivar retry_budget_pct: the share of recent requests retries may add, as a
        fraction (``0.2`` is 20 %), as Baseten's header has it.
    :ivar hedge_delay: seconds without a first byte before a second worker is
        raced; ``None`` for no hedging.
    :ivar hedge_budget_pct: the share of recent requests hedges may add, a fraction.
    :ivar initial_backoff_ms: the first backoff; each retry doubles it, up to
        :data:`~vespa.client.retries.MAX_BACKOFF`, with jitter.
    :ivar max_concurrent_requests: parts of one split batch in flight at once.
    :ivar batch_size: inputs per part when a batch is split.
    :ivar idempotent: the request may reach a model server twice without
        harm: retry it also after failures that may have delivered it (a
        safe method, ``GET``, ``HEAD`` or ``OPTIONS``, always is).
    """

    timeout_s: float | None = None
    max_retries: int = 3
    retry_budget_pct: float = 0.2
    hedge_delay: float | None = None
    hedge_budget_pct: float = 0.1
    initial_backoff_ms: float = 125.0
    max_concurrent_requests: int = 32
    batch_size: int = 128
    idempotent: bool = False


def _flag(value: Any) -> str | None:
    """A checker for a JSON boolean."""
    return None if isinstance(value, bool) else "must be true or false"


def _number(low: float, high: float, *, nullable: bool = False, whole: bool = False) -> Any:
    """A checker for a JSON number in ``[low, high]``: returns a reason, or ``None`` if fine."""

    def check(value: Any) -> str | None:
        if value is None and nullable:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            kind = "a whole number" if whole else "a number"
            return f"must be {kind}{' or null' if nullable else ''}"
        if whole and not isinstance(value, int):
            return "must be a whole number"
        if not (math.isfinite(value) and low <= value <= high):
            return f"must be between {low:g} and {high:g}"
        return None

    return check


#: Every preference a request may set, and what it accepts.
PREFERENCE_CHECKS: Mapping[str, Callable[[Any], str | None]] = {
    "timeout_s": _number(0.001, 86400, nullable=True),
    "max_retries": _number(0, 10, whole=True),
    "retry_budget_pct": _number(0, 3),
    "hedge_delay": _number(0.001, 3600, nullable=True),
    "hedge_budget_pct": _number(0, 3),
    "initial_backoff_ms": _number(0, 60000),
    "max_concurrent_requests": _number(1, 1024, whole=True),
    "batch_size": _number(1, 4096, whole=True),
    "idempotent": _flag,
}
assert set(PREFERENCE_CHECKS) == {f.name for f in fields(Preferences)}


def parse_preferences(raw: bytes | None, defaults: Preferences) -> Preferences:
    """
    The preferences of a request: ``defaults`` with the header's fields applied.

    :param raw: the ``X-Vespa-Request-Preferences`` header value, or ``None``.
    :param defaults: the daemon's defaults.
    :raise BadRequest: invalid JSON, not an object, or unknown or ill-typed
        fields (all of them named, in ``details["fields"]``).
    """
    if raw is None or not raw.strip():
        return defaults
    try:
        given = json.loads(raw)
    except ValueError:
        raise BadRequest("X-Vespa-Request-Preferences is not valid JSON") from None
    if not isinstance(given, dict):
        raise BadRequest("X-Vespa-Request-Preferences must be a JSON object")
    problems: dict[str, str] = {}
    for name, value in given.items():
        check = PREFERENCE_CHECKS.get(name)
        if check is None:
            problems[name] = "unknown preference"
            continue
        reason = check(value)
        if reason is not None:
            problems[name] = reason
    if problems:
        said = "; ".join(f"{name}: {reason}" for name, reason in problems.items())
        raise BadRequest(
            f"X-Vespa-Request-Preferences has bad fields ({said}); known fields: "
            + ", ".join(PREFERENCE_CHECKS),
            details={"fields": problems},
        )
    values: dict[str, Any] = {
        name: float(value)
        if isinstance(value, int) and not isinstance(value, bool) and name not in _WHOLE
        else value
        for name, value in given.items()
    }
    return replace(defaults, **values)


_WHOLE = frozenset({"max_retries", "max_concurrent_requests", "batch_size"})
