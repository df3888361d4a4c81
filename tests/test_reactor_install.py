"""
Which reactor the daemons run on: a real ``twistd -n vespa`` (and
``vespa-client``) says it in twistd's own "reactor class:" line, and
:func:`vespa.reactor.install_for_daemon` leaves an installed reactor be.
"""

from __future__ import annotations

import os
import re
import select
import sys
import time
from typing import Any

from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests.support_process import TWISTD, clean_env, free_port, spawn, stop
from vespa.reactor import install_for_daemon

if not sys.platform.startswith("linux"):
    raise SkipTest("VespaReactor is Linux only (epoll)")

OURS = "vespa.epoll_reactor.VespaReactor"
TWISTEDS = "twisted.internet.epollreactor.EPollReactor"

#: How long a daemon may take to log the reactor it runs on.
STARTUP = 30.0


def reactor_line(testcase: SynchronousTestCase, *argv: str) -> tuple[str, str]:
    """
    Start ``twistd -n --pidfile= ARGV``, read its log up to twistd's
    "reactor class:" line, stop it; the reactor named there and the log.
    """
    process = spawn(testcase, [TWISTD, "-n", "--pidfile=", *argv], env=clean_env())
    assert process.stdout is not None
    # Raw reads of the pipe: a buffered readline could hold the line while
    # select() says there is nothing more to read.
    fd = process.stdout.fileno()
    log = ""
    deadline = time.monotonic() + STARTUP
    while time.monotonic() < deadline:
        if not select.select([fd], [], [], deadline - time.monotonic())[0]:
            break
        chunk = os.read(fd, 65536)
        if not chunk:
            break  # it exited
        log += chunk.decode(errors="replace")
        found = re.search(r"reactor class: (\S+)\.\n", log)
        if found:
            stop(process)
            return found[1], log
    raise AssertionError(f"no 'reactor class:' line:\n{log}{stop(process)}")


def worker_argv() -> list[str]:
    """A worker on a free loopback port, in front of a backend nobody serves."""
    return [
        "vespa",
        "--backend-url", "http://127.0.0.1:9",
        "--listen", f"tcp:{free_port()}:interface=127.0.0.1",
        "--unsecured",
    ]  # fmt: skip


class TwistdTests(SynchronousTestCase):
    def test_the_worker_runs_on_vespas_reactor(self) -> None:
        """``twistd vespa`` as the README starts it, no reactor option."""
        name, log = reactor_line(self, *worker_argv())
        self.assertEqual(name, OURS)
        self.assertNotIn("Traceback", log)

    def test_the_client_runs_on_vespas_reactor(self) -> None:
        name, log = reactor_line(
            self,
            "vespa-client",
            "--endpoint", "ep",
            "--api-key", "k",
            "--port", str(free_port()),
            "--autoscaler-url", "http://127.0.0.1:9",
        )  # fmt: skip
        self.assertEqual(name, OURS)
        self.assertNotIn("Traceback", log)

    def test_the_reactor_plugin(self) -> None:
        """``twistd --reactor vespa-epoll`` installs it before the plugin runs."""
        name, log = reactor_line(self, "--reactor", "vespa-epoll", *worker_argv())
        self.assertEqual(name, OURS)
        self.assertNotIn("was installed already", log)

    def test_a_reactor_chosen_with_twistd_stays(self) -> None:
        """``--reactor epoll``: Twisted's own runs, and one log line says so."""
        name, log = reactor_line(self, "--reactor", "epoll", *worker_argv())
        self.assertEqual(name, TWISTEDS)
        self.assertEqual(log.count(f"reactor {TWISTEDS} was installed already; keeping it"), 1)


class InstallTests(SynchronousTestCase):
    def test_an_installed_reactor_stays(self) -> None:
        """In this process the test runner's reactor is installed: it stays, said once."""
        from twisted.internet import reactor

        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        install_for_daemon()
        from twisted.internet import reactor as after

        self.assertIs(after, reactor)
        said = [e for e in events if e.get("log_namespace") == "vespa.reactor"]
        self.assertEqual(len(said), 1)

    def test_off_linux_nothing_is_done(self) -> None:
        """No epoll: the default reactor, without a word."""
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        self.patch(sys, "platform", "darwin")
        install_for_daemon()
        self.assertEqual([e for e in events if e.get("log_namespace") == "vespa.reactor"], [])
