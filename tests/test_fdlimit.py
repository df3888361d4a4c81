"""
The open-file limit: raised at start, and more connections than it allows
cannot deny service. The attack runs against ``twistd vespa`` in a process of
its own, under ``ulimit -n 1024``.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import DeferredList, ensureDeferred
from twisted.internet.task import LoopingCall, deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase

from vespa.fdlimit import MIN_RESERVE, connection_budget

from .support import HTTPClient, raw_connect
from .test_worker_tap import TWISTD, _clean_env, free_port


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


def _limit_child(soft: int, hard: int) -> Any:
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    return limit


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
            preexec_fn=_limit_child(soft, hard),
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        returned, in_force = result.stdout.split()
        return returned, int(in_force)

    def test_soft_is_raised_to_hard(self) -> None:
        self.assertEqual(self.raised(1024, 4096), ("4096", 4096))

    def test_nothing_to_raise(self) -> None:
        self.assertEqual(self.raised(1024, 1024), ("1024", 1024))


#: Connections the attacker holds open, each trickling its headers.
ATTACKERS = 1100
#: The worker's open-file limit, soft and hard: raising it cannot help.
FD_LIMIT = 1024


class SlowClientAttackTests(TestCase):
    """
    ``twistd vespa`` under ``ulimit -n 1024``: 1,100 connections trickling
    their headers do not stop it answering a normal request.
    """

    timeout = 60

    async def start_worker(self) -> int:
        """Start ``twistd vespa --demo --unsecured`` under the fd limit; its port once ready."""
        port = free_port()
        cwd = self.mktemp()
        os.makedirs(cwd)
        env = {
            **_clean_env(),
            "VESPA_BACKEND_URL": f"http://127.0.0.1:{free_port()}",
            "REPORT_ADDR": "",
        }
        process = subprocess.Popen(
            [
                TWISTD,
                "-n",
                "--pidfile=",
                "vespa",
                "--demo",
                "--unsecured",
                "--listen",
                f"tcp:{port}:interface=127.0.0.1:backlog=1024",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=cwd,
            preexec_fn=_limit_child(FD_LIMIT, FD_LIMIT),
        )
        self.process = process

        def stop() -> None:
            process.kill()
            process.wait()
            assert process.stdout is not None
            self.output = process.stdout.read()
            process.stdout.close()

        self.addCleanup(stop)
        client = HTTPClient(self, port)
        deadline = reactor.seconds() + 30
        while True:
            self.assertIsNone(process.poll(), "the worker exited")
            self.assertLess(reactor.seconds(), deadline, "the worker never became ready")
            try:
                response, _ = await client.request(b"GET", b"/ready")
                if response.code == 200:
                    return port
            except Exception:  # not listening yet
                pass
            await deferLater(reactor, 0.05, lambda: None)

    def open_files(self) -> tuple[int, int]:
        """The worker's open file descriptors, and its soft limit."""
        pid = self.process.pid
        with open(f"/proc/{pid}/limits") as limits:
            line = next(line for line in limits if line.startswith("Max open files"))
        return len(os.listdir(f"/proc/{pid}/fd")), int(line.split()[3])

    async def test_a_normal_request_is_answered_under_1100_trickling_connections(self) -> None:
        port = await self.start_worker()
        self.assertEqual(self.open_files()[1], FD_LIMIT)
        attackers = [
            result
            for ok, result in await DeferredList(
                [ensureDeferred(raw_connect(port)) for _ in range(ATTACKERS)], consumeErrors=True
            )
            if ok
        ]
        self.assertEqual(len(attackers), ATTACKERS)
        for attacker in attackers:
            attacker.transport.write(b"POST /v1/chat/completions HTTP/1.1\r\n")

        def trickle() -> None:
            for attacker in attackers:
                attacker.transport.write(b"X")

        trickling = LoopingCall(trickle)
        trickling.start(0.5)
        self.addCleanup(trickling.stop)
        self.addCleanup(lambda: [a.transport.abortConnection() for a in attackers])

        started = reactor.seconds()
        body = json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
        response, answer = await HTTPClient(self, port).request(
            b"POST",
            b"/v1/chat/completions",
            headers={b"content-type": [b"application/json"]},
            body=body.encode(),
        )
        took = reactor.seconds() - started
        self.assertEqual(response.code, 200, answer)
        self.assertIn("choices", json.loads(answer))
        # Answered at once, not when the header deadline (15 s) frees connections.
        self.assertLess(took, 5)
        open_files, _ = self.open_files()
        self.assertLess(open_files, FD_LIMIT)
        closed = sum(1 for a in attackers if a.closed.called)
        self.assertGreaterEqual(closed, ATTACKERS - connection_budget(FD_LIMIT))  # type: ignore[operator]
