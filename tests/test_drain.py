"""
The drain's exit status: twistd exits 0 after a clean drain, by the signal
after a cut one. These tests run Twisted's own SIGTERM handler and twistd's
own runner, so they fail if Twisted changes the private name
(``_exitSignal``) that :func:`vespa.worker.drain.forget_exit_signal` clears.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from typing import Any

from twisted.application.app import ApplicationRunner
from twisted.internet.base import ReactorBase
from twisted.internet.interfaces import _ISupportsExitSignalCapturing
from twisted.internet.testing import MemoryReactor
from twisted.scripts.twistd import ServerOptions
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from vespa.worker.drain import forget_exit_signal


@implementer(_ISupportsExitSignalCapturing)
class SignalledReactor(MemoryReactor):
    """
    A reactor whose run receives SIGTERM through Twisted's own handler, then
    does what the worker does before the reactor stops.
    """

    _exitSignal: int | None = None

    def __init__(self, before_stop: Callable[[Any], None]) -> None:
        super().__init__()
        self._before_stop = before_stop

    def callFromThread(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        f(*args, **kwargs)

    def run(self) -> None:
        self.running = True
        ReactorBase.sigTerm(self, signal.SIGTERM)
        self._before_stop(self)


class Runner(ApplicationRunner):
    """twistd's runner, without an application: only its reactor step runs."""

    def preApplication(self) -> None:
        pass

    def postApplication(self) -> None:
        pass


def exit_signal_after(before_stop: Callable[[Any], None]) -> int | None:
    """The signal twistd would end by, after SIGTERM and ``before_stop``."""
    config = ServerOptions()
    config.parseOptions(["--nodaemon"])
    runner = Runner(config)
    runner.startReactor(SignalledReactor(before_stop), sys.stdout, sys.stderr)
    return runner._exitSignal


class ExitStatusTests(TestCase):
    def test_sigterm_is_the_exit_status_unless_forgotten(self) -> None:
        """
        Twisted records SIGTERM where twistd's runner reads it (so twistd
        would end by it: status 143) ...
        """
        self.assertEqual(exit_signal_after(lambda reactor: None), signal.SIGTERM)

    def test_a_clean_drain_makes_twistd_exit_0(self) -> None:
        """... and forgetting it, as a clean drain does, leaves twistd nothing to re-raise."""
        self.assertIsNone(exit_signal_after(forget_exit_signal))

    def test_a_reactor_that_caught_nothing_is_left_alone(self) -> None:
        reactor = MemoryReactor()
        forget_exit_signal(reactor)
        self.assertFalse(hasattr(reactor, "_exitSignal"))
