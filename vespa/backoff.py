# -*- test-case-name: tests.test_backoff,tests.test_client_policy,tests.test_startup -*-
"""
The one backoff: capped exponential delays, built on Twisted's
:func:`~twisted.application.internet.backoffPolicy`.

Twisted's policy adds its jitter; spreading a crowd of clients that fail
together needs the jitter to scale with the delay, so :func:`equal_jitter`
draws each delay between half and all of the capped exponential value
("equal jitter"). Without an ``rng`` the delays are exact, for a daemon
that retries alone (the worker's startup).
"""

from __future__ import annotations

import random
from collections.abc import Callable

from twisted.application.internet import backoffPolicy

__all__ = ["Backoff", "equal_jitter"]

#: Seconds to wait before retry number ``attempt + 1`` (``attempt`` 0-based).
Backoff = Callable[[int], float]


def _no_jitter() -> float:
    return 0.0


def equal_jitter(
    initial: float, cap: float, rng: random.Random | None = None, *, factor: float = 2.0
) -> Backoff:
    """
    Delays from ``initial`` seconds, multiplied by ``factor`` per attempt up
    to ``cap``, each drawn between half and all of its value by ``rng``.

    :param initial: the first delay, in seconds.
    :param cap: the longest delay, in seconds.
    :param rng: the jitter's randomness; ``None`` for exact delays.
    :param factor: the growth per attempt.
    :return: the delay before retry number ``attempt + 1``, ``attempt`` 0-based.
    """
    capped = backoffPolicy(initial, cap, factor, jitter=_no_jitter)
    if rng is None:
        return capped

    def delay(attempt: int) -> float:
        return float(capped(attempt) * (0.5 + rng.random() / 2))

    return delay
