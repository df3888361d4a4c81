"""
Twisted's own reactor tests (``twisted.internet.test``'s ``ReactorBuilder``
suites) run against :class:`vespa.epoll_reactor.VespaReactor`, without and
with event batching: TCP connections, timers, threads (``callFromThread``
waking it), system events and the descriptor set. If it passes what Twisted
asks of its own reactors, it behaves as one.
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.internet.test import test_core, test_fdset, test_tcp, test_threads, test_time
from twisted.trial.unittest import SkipTest

if not sys.platform.startswith("linux"):
    raise SkipTest("VespaReactor is Linux only (epoll)")

from vespa.epoll_reactor import VespaReactor  # noqa: E402


def batching_reactor(builder: object) -> VespaReactor:
    """A reactor batching events (a 0.5 ms pause); a builder's ``reactorFactory``."""
    return VespaReactor(batch_pause=0.0005)


#: The reactors each suite runs against, as ``ReactorBuilder`` names them.
REACTORS = [
    "vespa.epoll_reactor.VespaReactor",
    f"{__name__}.batching_reactor",
]

#: Twisted's suites: connections, timers, threads, startup/shutdown, readers/writers.
SUITES: list[Any] = [
    test_tcp.TCPConnectionTestsBuilder,
    test_tcp.TCPPortTestsBuilder,
    test_tcp.TCP4ClientTestsBuilder,
    test_tcp.AbortConnectionTests,
    test_time.TimeTestsBuilder,
    test_threads.ThreadTestsBuilder,
    test_core.SystemEventTestsBuilder,
    test_fdset.ReactorFDSetTestsBuilder,
]

for _suite in SUITES:
    _ours = type(_suite.__name__, (_suite,), {"_reactors": REACTORS, "__module__": __name__})
    globals().update(_ours.makeTestCaseClasses())
