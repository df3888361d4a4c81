"""
``deploy/supervisord.conf`` under the real supervisord: the worker is started,
restarted when it dies, and stopped with supervisord.

The worker runs ``--demo --unsecured`` (it serves the demo model server and the
autoscaler stand-in itself) on free ports, in a temporary workspace holding a
benchmark cache so that every start is quick. Skipped when the ``supervisor``
package is not installed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import TypeVar

from twisted.trial.unittest import SkipTest, SynchronousTestCase

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONF = os.path.join(REPO, "deploy", "supervisord.conf")
BIN = os.path.dirname(sys.executable)
_T = TypeVar("_T")


def free_port() -> int:
    """A port nothing listens on now (the kernel picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def alive(pid: int) -> bool:
    """Whether a process with this pid exists (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


def poll(what: str, probe: Callable[[], _T | None], deadline: float = 15.0) -> _T:
    """Call ``probe`` until it returns something other than ``None``; bounded."""
    end = time.monotonic() + deadline
    while True:
        result = probe()
        if result is not None:
            return result
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class SupervisordTests(SynchronousTestCase):
    """The worker under supervisord, end to end."""

    def setUp(self) -> None:
        self.supervisord = os.path.join(BIN, "supervisord")
        self.supervisorctl = os.path.join(BIN, "supervisorctl")
        if not os.path.exists(self.supervisord):
            raise SkipTest("supervisor is not installed (pip install supervisor)")
        self.root = os.path.abspath(self.mktemp())
        workspace = os.path.join(self.root, "workspace")
        os.makedirs(workspace)
        # Not under the trial directory: a unix socket path is limited to 107 bytes.
        self.supervisor_dir = tempfile.mkdtemp(prefix="vespa-supervisor-")
        self.addCleanup(shutil.rmtree, self.supervisor_dir, ignore_errors=True)
        with open(os.path.join(workspace, ".has_benchmark"), "w") as f:
            f.write("100.0\n")
        self.port = free_port()
        self.log_file = os.path.join(self.root, "vespa.log")
        self.env = {
            k: v for k, v in os.environ.items() if not k.startswith(("VESPA_", "PYWORKER_"))
        }
        self.env.update(
            {
                # What deploy/supervisord.conf reads.
                "VESPA_VENV": sys.prefix,
                "WORKSPACE_DIR": workspace,
                "VESPA_SUPERVISOR_DIR": self.supervisor_dir,
                "VESPA_LOG_FILE": self.log_file,
                "VESPA_LOG_MAXBYTES": "1MB",
                # What the worker reads.
                "VESPA_DEMO": "true",
                "VESPA_UNSECURED": "true",
                "VESPA_BACKEND_URL": f"http://127.0.0.1:{free_port()}",
                "REPORT_ADDR": f"http://127.0.0.1:{free_port()}",
                "VESPA_LISTEN": f"tcp:{self.port}:interface=127.0.0.1",
                "VESPA_METRICS_LISTEN": "none",
                "VESPA_CLIENT_PORT": str(free_port()),
                "VESPA_DRAIN_TIMEOUT": "5",
            }
        )
        self.worker_pids: list[int] = []
        self.output = open(os.path.join(self.root, "supervisord.out"), "wb")
        self.addCleanup(self.output.close)
        self.process = subprocess.Popen(
            [self.supervisord, "--nodaemon", "--configuration", CONF],
            env=self.env,
            stdout=self.output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.addCleanup(self.kill_everything)

    def kill_everything(self) -> None:
        """After a failure: no supervisord, no worker left behind."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        # supervisord puts each program in a process group of its own.
        for pid in self.worker_pids:
            if alive(pid):
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.supervisorctl, "--configuration", CONF, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=15,
        )

    def worker_pid(self, other_than: int = 0) -> int | None:
        """The worker's pid from ``supervisorctl pid vespa``, once it is a new one."""
        if self.process.poll() is not None:
            raise AssertionError(f"supervisord exited with {self.process.returncode}")
        text = self.ctl("pid", "vespa").stdout.strip()
        if not text.isdigit() or int(text) in (0, other_than):
            return None
        pid = int(text)
        self.worker_pids.append(pid)
        return pid

    def completion(self) -> dict[str, object] | None:
        """A chat completion through the worker, or ``None`` while it is not serving."""
        body = json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/v1/chat/completions",
            data=body.encode(),
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                answer: dict[str, object] = json.loads(response.read())
                return answer
        except (urllib.error.URLError, ConnectionError):
            return None

    def stream(self, first: threading.Event, result: list[bytes]) -> None:
        """A streamed completion of 40 tokens (about 1 s); ``first`` is set at its first bytes."""
        body = json.dumps(
            {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 40, "stream": True}
        )
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/v1/chat/completions",
            data=body.encode(),
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=15) as response:
                chunks = [response.read1()]
                first.set()
                while chunk := response.read1():
                    chunks.append(chunk)
                result.append(b"".join(chunks))
        finally:
            first.set()

    def read(self, path: str) -> str:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def test_restarted_when_killed_and_stopped_with_supervisord(self) -> None:
        """
        supervisord starts the worker, which serves; SIGKILL the worker and
        supervisord starts a new one, which serves; ``supervisorctl shutdown``
        stops the worker with SIGTERM, which finishes the stream in flight and
        exits 0, then supervisord (0), leaving no worker process.
        """
        first = poll("the worker to start", self.worker_pid)
        answer = poll("a completion", self.completion)
        self.assertEqual(answer["object"], "chat.completion")

        os.kill(first, signal.SIGKILL)
        second = poll("a new worker", lambda: self.worker_pid(other_than=first))
        self.assertFalse(alive(first))
        answer = poll("a completion from the new worker", self.completion)
        self.assertEqual(answer["object"], "chat.completion")

        # A request in flight when supervisord stops the worker is finished first.
        first_bytes, streamed = threading.Event(), list[bytes]()
        client = threading.Thread(target=self.stream, args=(first_bytes, streamed))
        client.start()
        self.addCleanup(client.join, 20)
        self.assertTrue(first_bytes.wait(15))
        result = self.ctl("shutdown")
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertEqual(self.process.wait(timeout=20), 0)
        client.join(15)
        self.assertEqual(len(streamed), 1, "the stream in flight did not complete")
        self.assertTrue(streamed[0].endswith(b"data: [DONE]\n\n"), streamed[0][-200:])
        self.assertFalse(alive(second))
        log = self.read(os.path.join(self.supervisor_dir, "supervisord.log"))
        self.assertIn("exited: vespa (terminated by SIGKILL", log)
        self.assertIn("stopped: vespa (exit status 0)", log)
        worker_log = self.read(self.log_file)
        self.assertEqual(worker_log.count("Vespa worker on"), 2, worker_log)
        self.assertIn("draining: 1 requests in flight", worker_log)
        self.assertIn("Server Shut Down", worker_log)
        self.assertFalse(os.path.exists(os.path.join(self.supervisor_dir, "supervisor.sock")))
