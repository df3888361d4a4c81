# -*- test-case-name: tests.test_client_policy -*-
"""
How hard the client tries: preferences, retries, hedging, budgets, deadlines.

Two rules make retries safe. **Nothing is retried once a byte of the answer
has reached the caller** (a partial answer cannot be taken back). And **a request is
sent again only if it provably never reached a model server**, unless it is
idempotent (the ``idempotent`` preference, or a safe method: ``GET``,
``HEAD``, ``OPTIONS``). A retry goes to a freshly routed worker, with the
same ``request_idx`` (so the autoscaler counts one request), after a capped,
jittered exponential backoff. :func:`judge` sorts the failures:

* :attr:`Retry.SAFE`, retried for every request: the worker could not be
  reached (connection refused, connect timeout, TLS handshake failed: see
  :func:`vespa.client.upstream.never_sent`), or it refused the request
  itself before relaying it: its own 429 or 503 (full, loading, draining),
  marked as its own by ``X-Vespa-Origin: vespa`` or a JSON
  ``"origin": "vespa"``, or the bodiless 429 of the original PyWorker.
* :attr:`Retry.IF_IDEMPOTENT`, retried for idempotent requests only,
  because the model server may have the request already: the connection
  failed after the request was written to it, the worker went silent past
  ``--first-byte-timeout``, the worker answered a 5xx of its own (its 502
  or 504 says the backend failed or timed out *with* the request; the
  original PyWorker's empty 500 too), or a model server's own 429/503.
* :attr:`Retry.NEVER`: every other answer, the model server's 4xx and 5xx
  above all: a request that fails there would fail again, and cost twice.

A request that is not retried for want of idempotence gets the worker's
answer, or a 502/504 JSON error saying the worker may have received it.

Retries are bounded twice: ``max_retries`` per request, and a **retry
budget** shared by all requests (:class:`Budget`): over the last
:data:`BUDGET_WINDOW` seconds, retries may add at most ``retry_budget_pct``
of the requests received, plus a small reserve, so a bad minute cannot
multiply the load on an endpoint that is already failing.

**Hedging** (opt-in, ``hedge_delay``): when a worker has been sent the
request and ``hedge_delay`` seconds pass with no first byte, a second worker
is routed and raced; the first to produce a byte wins and the other is
cancelled (its worker sees the connection close). Hedging is at-least-once
by design: both workers may have started the request. Hedges spend their own
budget (``hedge_budget_pct``). Only the first attempt and the first retry hedge.

The :class:`Dispatcher` does all this for one request and hands back an
:class:`Outcome` (the winning :class:`~vespa.client.upstream.Answer`, not yet
streamed) or a :class:`~vespa.errors.VespaError`; cancelling it (the caller
went away) cancels routing, backoff and every attempt at once.
"""

from vespa.client.budgets import BUDGET_WINDOW, Budget, Limiter
from vespa.client.dispatch import (
    Builder,
    Dispatcher,
    DispatchFailed,
    DispatchStats,
    Outcome,
)
from vespa.client.preferences import PREFERENCE_CHECKS, Preferences, parse_preferences
from vespa.client.retries import MAX_BACKOFF, SAFE_METHODS, Retry, judge
from vespa.gate import Slot

__all__ = [
    "BUDGET_WINDOW",
    "MAX_BACKOFF",
    "PREFERENCE_CHECKS",
    "SAFE_METHODS",
    "Budget",
    "Builder",
    "DispatchFailed",
    "DispatchStats",
    "Dispatcher",
    "Limiter",
    "Outcome",
    "Preferences",
    "Retry",
    "Slot",
    "judge",
    "parse_preferences",
]
