"""
A worker keeps out of memory what its configuration does not use: the
modules a fresh ``twistd vespa`` process imports (its base memory, which
every open stream adds to).
"""

from __future__ import annotations

import json
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

from tests.support_process import clean_env

# Builds the worker as twistd does (options, then the service tree) and
# prints the watched modules it imported. Nothing is started or listened on.
_BUILD = """
import json, sys
from twisted.internet import reactor
from vespa.worker.tap import Options, makeService
options = Options()
options.parseOptions(sys.argv[1:])
makeService(options)
watched = ("Crypto", "prometheus_client", "psutil", "hypothesis", "twisted.trial.unittest")
print(json.dumps([name for name in watched if name in sys.modules]))
"""


def imported(*args: str) -> set[str]:
    """The watched modules a worker built with ``args`` imports."""
    result = subprocess.run(
        [sys.executable, "-c", _BUILD, "--backend-url", "http://127.0.0.1:9", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(),
        check=True,
    )
    return set(json.loads(result.stdout.splitlines()[-1]))


class BaseMemoryTests(SynchronousTestCase):
    def test_unsecured_without_metrics(self) -> None:
        """No RSA code, no Prometheus client, no psutil, no test framework."""
        self.assertEqual(imported("--unsecured", "--metrics-listen", "none"), set())

    def test_what_a_secured_worker_with_metrics_needs(self) -> None:
        """The same check sees the modules when they are used."""
        self.assertEqual(
            imported("--metrics-listen", "tcp:0:interface=127.0.0.1"),
            {"Crypto", "prometheus_client"},
        )
