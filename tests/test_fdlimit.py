"""
The open-file limit: raised at start; the client connections it allows.
(The attack under ``ulimit -n 1024`` is in test_daemon_attacks.)
"""

from __future__ import annotations

import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

from tests.support_process import limit_child
from vespa.fdlimit import MIN_RESERVE, connection_budget


class BudgetTests(SynchronousTestCase):
    """How many client connections fit under a limit."""

    def test_a_quarter_is_kept_for_everything_else(self) -> None:
        self.assertEqual(connection_budget(1024), 768)
        self.assertEqual(connection_budget(1 << 20), 786432)

    def test_a_small_limit_keeps_the_minimum_reserve(self) -> None:
        self.assertEqual(connection_budget(100), 100 - MIN_RESERVE)
        self.assertEqual(connection_budget(10), 1)

    def test_no_limit_no_budget(self) -> None:
        self.assertIsNone(connection_budget(None))


class RaiseTests(SynchronousTestCase):
    """The soft limit is raised to the hard one (in a child process, so this one is untouched)."""

    def raised(self, soft: int, hard: int) -> tuple[str, int]:
        code = (
            "import resource; from vespa.fdlimit import raise_fd_limit; "
            "print(raise_fd_limit(), resource.getrlimit(resource.RLIMIT_NOFILE)[0])"
        )
        result = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=30,
            preexec_fn=limit_child(soft, hard),
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        returned, in_force = result.stdout.split()
        return returned, int(in_force)

    def test_soft_is_raised_to_hard(self) -> None:
        self.assertEqual(self.raised(1024, 4096), ("4096", 4096))

    def test_nothing_to_raise(self) -> None:
        self.assertEqual(self.raised(1024, 1024), ("1024", 1024))
