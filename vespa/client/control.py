# -*- test-case-name: tests.test_client_router -*-
"""
JSON calls to Vast's control plane (the autoscaler's ``/route/``, the
console's key look-up): bounded answers, timeouts, quotable errors.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

import treq
from twisted.internet.defer import CancelledError, Deferred, TimeoutError
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from vespa.http.stream import BoundedBuffer, Discard

T = TypeVar("T")

#: The autoscaler of each Vast instance, and its console (for key look-ups).
INSTANCES: dict[str, tuple[str, str]] = {
    "prod": ("https://run.vast.ai", "https://console.vast.ai"),
    "alpha": ("https://run-alpha.vast.ai", "https://alpha.vast.ai"),
    "candidate": ("https://run-candidate.vast.ai", "https://candidate.vast.ai"),
    "local": ("http://localhost:8080", "https://alpha.vast.ai"),
}


class AnswerTooLarge(Exception):
    """An answer's body is over the limit; it was not read any further."""


async def json_answer(
    http: Any, method: str, url: str, headers: dict[str, list[str]], body: Any, *, limit: int
) -> tuple[int, Any, bytes]:
    """
    One HTTP exchange: status, the parsed JSON (or ``None``), the raw body.

    :param limit: the most bytes of body read; past it the connection is
        closed and :class:`AnswerTooLarge` raised, so a huge answer costs no memory.
    """
    data = None if body is None else json.dumps(body).encode("utf-8")
    response = await http.request(method, url, headers=headers, data=data, allow_redirects=False)
    too_large = AnswerTooLarge(f"answered more than {limit} bytes")
    if isinstance(response.length, int) and response.length > limit:
        response.original.deliverBody(Discard(abort=True))
        raise too_large
    kept = BoundedBuffer(limit, too_large)
    await treq.collect(response, kept)
    raw = kept.joined()
    try:
        parsed = json.loads(raw)
    except ValueError:
        parsed = None
    return int(response.code), parsed, raw


def with_timeout(d: Deferred[T], seconds: float, clock: IReactorTime) -> Deferred[T]:
    """
    ``d``, cancelled after ``seconds``, then failing with :class:`TimeoutError`
    whatever failure the cancellation caused (Agent reports a cancelled
    request as ``ResponseNeverReceived``, which ``addTimeout`` lets through).
    """
    expired: list[bool] = []

    def expire() -> None:
        expired.append(True)
        d.cancel()

    call = clock.callLater(seconds, expire)

    def done(result: Any) -> Any:
        if call.active():
            call.cancel()
        if expired and isinstance(result, Failure):
            raise TimeoutError(seconds, "Deferred")
        return result

    return d.addBoth(done)


def cancelled_by_caller(error: Exception) -> bool:
    """
    Whether a failed call is our caller's cancellation: Agent reports a
    request cancelled mid-flight as ``RequestGenerationFailed`` or
    ``ResponseNeverReceived`` wrapping the ``CancelledError``, which must end
    the routing, not be tried again.
    """
    reasons = getattr(error, "reasons", None) or ()
    return any(isinstance(r, Failure) and r.check(CancelledError) for r in reasons)


def excerpt(parsed: Any, raw: bytes, secret: str | None) -> str:
    """
    What an answer says, for an error message: its error text, else the
    start of its body; ``secret`` (the key it was asked with) masked, should
    the answer echo it.
    """
    said = raw.decode("utf-8", "replace").strip()
    if isinstance(parsed, dict):
        for key in ("error", "msg", "message", "detail"):
            if isinstance(parsed.get(key), str):
                said = str(parsed[key])
                break
    # Masked before it is cut, so no part of the secret is left at the cut.
    return (said.replace(secret, "***") if secret else said)[:300]
