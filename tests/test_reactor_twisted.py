"""
Twisted's own reactor tests (``twisted.internet.test``'s ``ReactorBuilder``
suites) run against :class:`vespa.epoll_reactor.VespaReactor`: TCP
connections, ports, clients, connectors and aborts, timers, threads
(``callFromThread`` waking it), startup and shutdown events, and the
descriptor set. If it passes what Twisted asks of its own reactors, it
behaves as one. Two tests are skipped, each saying why.
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.internet.test import test_core, test_fdset, test_tcp, test_threads, test_time
from twisted.trial.unittest import SkipTest

if not sys.platform.startswith("linux"):
    raise SkipTest("VespaReactor is Linux only (epoll)")

#: The reactor each suite runs against, as ``ReactorBuilder`` names it.
REACTORS = ["vespa.epoll_reactor.VespaReactor"]

#: Twisted's suites, as Twisted runs them against its own reactors.
SUITES: list[Any] = [
    test_tcp.TCPConnectionTestsBuilder,
    test_tcp.TCPPortTestsBuilder,
    test_tcp.TCP4ClientTestsBuilder,
    test_tcp.TCP4ConnectorTestsBuilder,
    test_tcp.TCPTransportTestsBuilder,
    test_tcp.AbortConnectionTests,
    test_time.TimeTestsBuilder,
    test_threads.ThreadTestsBuilder,
    test_core.SystemEventTestsBuilder,
    test_fdset.ReactorFDSetTestsBuilder,
]

#: Tests that do not apply, and why.
NOT_APPLICABLE = {
    # What this reactor gives up by design (tests.test_reactor shows it).
    "test_logPrefix": "no legacy log context around I/O callbacks: the point of VespaReactor",
    # Twisted skips it for EPollReactor by class name, for this reason.
    "test_lostFileDescriptor": "epoll cannot detect lost file descriptors (as EPollReactor)",
}


def _not_applicable(reason: str) -> Any:
    def test(self: object) -> None:
        raise SkipTest(reason)

    return test


for _suite in SUITES:
    _overrides: dict[str, Any] = {
        name: _not_applicable(reason)
        for name, reason in NOT_APPLICABLE.items()
        if hasattr(_suite, name)
    }
    _ours = type(
        _suite.__name__,
        (_suite,),
        {"_reactors": REACTORS, "__module__": __name__, **_overrides},
    )
    globals().update(_ours.makeTestCaseClasses())
