"""
Helpers for tests that run the daemons as a user does: real processes on
127.0.0.1 ports. Not a test module: test modules import it, never each other.

Every child starts in a process group of its own with ``SIGINT`` at its
default (a parent started in the background ignores ``SIGINT``, and a child
inherits that), is stopped with bounded waits, and is killed, group and all,
at cleanup, so no test can hang on a child or leave one listening.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

#: The ``twistd`` of the interpreter running the tests.
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")

#: How long a child may take to stop once signalled before it is killed.
STOP_TIMEOUT = 10.0


def free_port() -> int:
    """A port nothing listens on now (the kernel picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def clean_env() -> dict[str, str]:
    """This run's environment minus ``VESPA_``/``PYWORKER_`` settings, for ``twistd vespa``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VESPA_", "PYWORKER_"))}
    env["VESPA_METRICS_LISTEN"] = "none"  # the default port may be taken on this machine
    env["VESPA_CLIENT_PORT"] = str(free_port())  # the demo's client, likewise
    return env


def wait_for_port(port: int, process: subprocess.Popen[str], deadline: float = 20.0) -> None:
    """Poll until ``port`` accepts connections, or fail if the process exits or time runs out."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if process.poll() is not None:
            output = process.stdout.read() if process.stdout else ""
            raise AssertionError(f"the process exited with {process.returncode}: {output}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listened on {port} within {deadline} s")


def http(method: str, url: str, body: Any = None) -> tuple[int, dict[str, str], bytes]:
    """A plain HTTP request; returns status, headers and body, errors included."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def limit_child(soft: int, hard: int) -> Callable[[], None]:
    """A ``preexec`` for :func:`spawn`: the child's open-file limit, soft and hard."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    return limit


def spawn(
    testcase: SynchronousTestCase,
    argv: Sequence[str],
    *,
    env: dict[str, str],
    cwd: str | None = None,
    stdin: int | None = None,
    preexec: Callable[[], None] | None = None,
) -> subprocess.Popen[str]:
    """
    Start ``argv`` with its output (stdout and stderr) in a text pipe, in a
    process group of its own with ``SIGINT`` at its default, then ``preexec``
    (if any) run in the child; its whole group is killed at cleanup.
    """

    def in_child() -> None:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        if preexec is not None:
            preexec()

    process = subprocess.Popen(
        list(argv),
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=cwd,
        start_new_session=True,
        preexec_fn=in_child,
    )
    testcase.addCleanup(kill, process)
    return process


def _signal_group(process: subprocess.Popen[str], signum: int) -> None:
    try:
        os.killpg(process.pid, signum)
    except ProcessLookupError:
        pass  # the group is gone already


def stop(
    process: subprocess.Popen[str], signum: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT
) -> str:
    """
    Send ``signum`` to the process group of ``process`` and return its output
    once it exits; if it has not within ``timeout`` seconds, kill the group
    and fail, with the output.
    """
    _signal_group(process, signum)
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _signal_group(process, signal.SIGKILL)
        output, _ = process.communicate()
        raise AssertionError(
            f"still running {timeout} s after signal {signum}; killed. Output:\n{output}"
        ) from None
    return output or ""


def kill(process: subprocess.Popen[str]) -> None:
    """Kill what is left of the process group of ``process`` and reap it."""
    # Even once the leader has exited, its group id stays reserved while a
    # member (a grandchild) lives, so this reaches only what the test started.
    _signal_group(process, signal.SIGKILL)
    process.wait()
    if process.stdout is not None:
        process.stdout.close()
