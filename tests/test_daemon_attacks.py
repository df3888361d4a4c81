"""
Attacks on ``twistd vespa`` as a user runs it, in a process of its own:
more slow connections than its open-file limit allows, and a huge form body.
"""

from __future__ import annotations

import json
import os
import subprocess

from twisted.internet import reactor
from twisted.internet.defer import DeferredList, ensureDeferred
from twisted.internet.task import LoopingCall, deferLater
from twisted.trial.unittest import TestCase

from vespa.fdlimit import connection_budget

from .support import HTTPClient, raw_connect
from .support_process import TWISTD, clean_env, free_port, limit_child

#: Connections the attacker holds open, each trickling its headers.
ATTACKERS = 1100
#: The worker's open-file limit, soft and hard: raising it cannot help.
FD_LIMIT = 1024


class DaemonAttackTests(TestCase):
    """Attacks on ``twistd vespa --demo --unsecured``."""

    timeout = 60

    async def start_worker(self, fd_limit: int | None = None) -> int:
        """Start ``twistd vespa --demo --unsecured`` (under ``fd_limit``); its port once ready."""
        port = free_port()
        cwd = self.mktemp()
        os.makedirs(cwd)
        env = {
            **clean_env(),
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
            preexec_fn=None if fd_limit is None else limit_child(fd_limit, fd_limit),
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
        """
        Under ``ulimit -n 1024`` (soft and hard: raising cannot help), 1,100
        connections trickling their headers do not stop the worker answering
        a normal request at once.
        """
        port = await self.start_worker(FD_LIMIT)
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

    def peak_memory(self) -> int:
        """The worker's peak resident memory so far, in bytes."""
        with open(f"/proc/{self.process.pid}/status") as status:
            line = next(line for line in status if line.startswith("VmHWM:"))
        return int(line.split()[1]) * 1024

    async def test_memory_for_a_form_body_is_a_small_multiple_of_its_size(self) -> None:
        """
        A 60 MB urlencoded form (parsed, it took a worker to 1.1 GB) raises
        the worker's peak memory by at most three times its size while it is
        received and relayed.
        """
        from .support_raw import FORM_SIZE, URLENCODED, exchange, parse, post_head, urlencoded_form

        port = await self.start_worker()
        body = urlencoded_form(FORM_SIZE)
        before = self.peak_memory()
        answer = await exchange(port, post_head(b"/upload", URLENCODED, len(body)), body)
        grown = self.peak_memory() - before
        # Relayed to the demo model server, which has no such route.
        self.assertEqual(parse(answer)[0], b"HTTP/1.1 404 Not Found")
        self.assertLess(grown, 3 * len(body), f"grew {grown >> 20} MB")
