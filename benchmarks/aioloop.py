"""
The event loop of the benchmarks' asyncio tools (``sse_load.py``,
``sse_backend.py``): uvloop when it is installed, else asyncio's own.

Both run on the load CPU beside each other, and what they cost per event is
taken from the load's share of that core: on uvloop each costs about 7 us
per event, on asyncio's selector loop about 10-18. ``pip install uvloop``
before measuring (``benchmarks/README.md``); :func:`name` says which ran.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def name() -> str:
    """``uvloop`` or ``asyncio``: the loop :func:`run_loop` runs on here."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` to its end on the loop :func:`name` names."""
    if name() == "uvloop":
        import uvloop

        result: T = uvloop.run(main)
        return result
    return asyncio.run(main)
