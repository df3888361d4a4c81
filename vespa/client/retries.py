# -*- test-case-name: tests.test_client_policy -*-
"""
Whether a failed attempt may be sent again (see :mod:`vespa.client.policy`).
"""

from __future__ import annotations

import enum
import json

from vespa.client.errors import WorkerUnavailable
from vespa.client.upstream import Answer
from vespa.errors import VespaError


class Retry(enum.Enum):
    """Whether a failed attempt may be sent again (see the module's docstring)."""

    #: The request never reached a model server: retry it.
    SAFE = "safe"
    #: A model server may have the request: retry only an idempotent one.
    IF_IDEMPOTENT = "if idempotent"
    #: The answer is the caller's: never retry.
    NEVER = "never"


#: Methods that are safe (RFC 9110, 9.2.1): always idempotent.
SAFE_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS"})


def judge(failure: Answer | VespaError) -> Retry:
    """
    Whether an attempt that ended in ``failure`` (a worker's answer, or the
    error of an attempt that got none) may be sent again.
    """
    if isinstance(failure, VespaError):
        if isinstance(failure, WorkerUnavailable) and not failure.maybe_delivered:
            return Retry.SAFE
        return Retry.IF_IDEMPOTENT
    code = failure.code
    if code not in (429, 503) and code < 500:
        return Retry.NEVER
    own = _workers_own(failure)
    if code in (429, 503):
        return Retry.SAFE if own else Retry.IF_IDEMPOTENT
    return Retry.IF_IDEMPOTENT if own else Retry.NEVER


def _workers_own(answer: Answer) -> bool:
    """
    Whether an answer is the worker's own, not its model server's: a Vespa
    worker says so (``X-Vespa-Origin``, or ``"origin"`` in its JSON error);
    the original PyWorker's own answers have no body (429 queue full, 500).
    """
    origin = answer.headers.getRawHeaders(b"x-vespa-origin")
    if origin:
        return origin[0].strip().lower() != b"backend"
    if not answer.complete:
        return False
    body = answer.first.strip()
    if not body:
        return answer.code in (429, 500)
    try:
        parsed = json.loads(body)
    except ValueError:
        return False
    return isinstance(parsed, dict) and parsed.get("origin") == "vespa"
