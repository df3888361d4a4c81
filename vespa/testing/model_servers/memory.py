# -*- test-case-name: tests.test_benchmarks -*-
"""
A fake served in memory, in the manner of :mod:`treq.testing`, with every
timer on its :class:`~twisted.internet.task.Clock`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from vespa.benchmarks.session import BackendSession
from vespa.testing.model_servers.base import FakeModelServer


class InMemoryBackend:
    """
    A fake served in memory (``treq.testing``), with every timer on its
    :class:`~twisted.internet.task.Clock`.

    :meth:`run` is a discrete-event simulation: it moves every byte that can
    move, and only when nothing can advances the clock to the next timer (a
    token, a job's end, a timeout). A benchmark's ``session.clock`` is that
    clock, so it measures the fake's configured speed exactly, in no real time.

    :param server: a fake whose clock is a ``Clock``.
    :ivar session: the session to give a benchmark.
    """

    #: The base URL of the in-memory backend.
    URL = "http://backend.invalid"

    def __init__(self, server: FakeModelServer) -> None:
        from treq.testing import StubTreq

        if not isinstance(server.clock, Clock):
            raise TypeError("the fake needs a twisted.internet.task.Clock")
        self.server = server
        self.clock: Clock = server.clock
        self._stub = StubTreq(server)
        self.session = BackendSession(self._stub, self.URL, self.clock)

    def settle(self) -> None:
        """Deliver every byte in flight, and those their delivery causes."""
        # treq's flush() moves what is buffered now; a response can start new
        # requests on new connections, so repeat until every pump is empty.
        for _ in range(10_000):
            self._stub.flush()
            pumps = self._stub._agent._pumps
            if not any(p.clientIO.stream or p.serverIO.stream for p in pumps):
                return
        raise AssertionError("the in-memory connections never went quiet")

    def run(self, work: Callable[[BackendSession], Any], max_steps: int = 1_000_000) -> Any:
        """
        Run ``work(session)`` (a benchmark call: a coroutine, a Deferred or a
        value) to its end.

        :return: its result.
        :raise: its exception, or ``AssertionError`` when it waits for
            something that can never happen.
        """
        d = Deferred.fromCoroutine(_awaited(work(self.session)))
        for _ in range(max_steps):
            self.settle()
            if d.called:
                break
            calls = self.clock.getDelayedCalls()
            if not calls:
                raise AssertionError("the benchmark waits, and nothing is scheduled to happen")
            due = min(call.getTime() for call in calls)
            self.clock.advance(max(0.0, due - self.clock.seconds()))
        else:
            raise AssertionError(f"the benchmark did not finish in {max_steps} steps")
        outcome: list[Any] = []
        d.addBoth(outcome.append)
        if isinstance(outcome[0], Failure):
            outcome[0].raiseException()
        return outcome[0]


async def _awaited(value: Any) -> Any:
    import inspect

    if inspect.isawaitable(value):
        return await value
    return value
