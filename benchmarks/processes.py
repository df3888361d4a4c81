"""
Child processes of the benchmark: started pinned, awaited on their port, always reaped.

Every child runs in its own session (so its own process group): a Ctrl-C in the
terminal reaches only the orchestrator, which then stops each group itself, and
stopping a group also stops whatever the child forked (nginx's worker).
"""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType

LOCALHOST = "127.0.0.1"

# CPU layout of a fair proxy benchmark on two cores: the proxy alone on one
# core, everything it is compared with (backend, load generator) on the other.
PROXY_CPU = 0
LOAD_CPU = 1


def free_port() -> int:
    """
    A TCP port on 127.0.0.1 that was free a moment ago (the kernel picks it).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOCALHOST, 0))
        port: int = sock.getsockname()[1]
        return port


def pinning_available() -> bool:
    """
    True when children can be pinned: ``taskset`` exists and there are two CPUs.
    """
    return shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2


def pinned(command: Sequence[str], cpu: int) -> list[str]:
    """
    ``command`` run on ``cpu`` only, or unchanged when pinning is not available.

    ``taskset`` execs the command, so the child's pid is the command's own.
    """
    if not pinning_available():
        return list(command)
    return ["taskset", "-c", str(cpu), *command]


class ProcessError(RuntimeError):
    """A child did not start, did not answer, or failed."""


@dataclass
class Child:
    """
    A long-running child process.

    :ivar name: for messages.
    :ivar popen: the process.
    :ivar log_path: where its stdout and stderr go (a file, never a pipe, so a
        chatty child can never block on a full pipe).
    """

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self.popen.pid

    def log_tail(self, lines: int = 20) -> str:
        """The last ``lines`` lines of the child's output, for error messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class ProcessSet:
    """
    The children of one benchmark run; leaving the ``with`` block stops them all.

    :param workdir: where the children's logs are written.
    """

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._children: list[Child] = []

    def __enter__(self) -> ProcessSet:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop_all()

    def start(
        self,
        name: str,
        command: Sequence[str],
        *,
        cpu: int | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Child:
        """
        Start ``command`` in its own process group, optionally pinned to ``cpu``.

        It runs in a directory of its own under ``workdir``, so whatever it
        writes relative to its working directory (a cache, a pid file) is
        removed with the run and never lands in the checkout.

        :param name: for messages, the log file and the directory.
        :param command: the program and its arguments.
        :param cpu: the CPU to pin it to, or ``None`` to leave it unpinned.
        :param env: its environment, or ``None`` for this process's.
        """
        argv = list(command) if cpu is None else pinned(command, cpu)
        home = self.workdir / name
        home.mkdir(exist_ok=True)
        log_path = self.workdir / f"{name}.log"
        with log_path.open("wb") as log_file:
            popen = subprocess.Popen(
                argv,
                cwd=home,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=None if env is None else dict(env),
            )
        child = Child(name, popen, log_path)
        self._children.append(child)
        return child

    def stop(self, child: Child) -> None:
        """
        Stop ``child``'s process group: SIGTERM, then SIGKILL after a grace period.
        """
        stop_group(child.popen)
        if child in self._children:
            self._children.remove(child)

    def stop_all(self) -> None:
        """
        Stop every child still running, newest first (the proxies before their backends).

        A second Ctrl-C while this runs is ignored: it would otherwise abort
        the clean-up and leave children behind.
        """
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            while self._children:
                self.stop(self._children[-1])
        finally:
            signal.signal(signal.SIGINT, previous)


def stop_group(popen: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """
    Stop the process group led by ``popen`` and reap the leader.

    The group is signalled even when the leader has already exited, because
    the leader may have left children behind (nginx's worker).

    :param popen: a process started with ``start_new_session=True``.
    :param grace: seconds between SIGTERM and SIGKILL.
    """
    _signal_group(popen.pid, signal.SIGTERM)
    try:
        popen.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    _signal_group(popen.pid, signal.SIGKILL)
    try:
        popen.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass  # the group is already gone


def wait_for_port(child: Child, port: int, timeout: float = 20.0) -> None:
    """
    Return once ``port`` on 127.0.0.1 accepts connections.

    Polls with short connect attempts up to a deadline instead of sleeping a
    fixed time, and gives up at once if the child has exited.

    :raise ProcessError: the child exited or the deadline passed.
    """
    deadline = time.monotonic() + timeout
    while True:
        if child.popen.poll() is not None:
            raise ProcessError(
                f"{child.name} exited with status {child.popen.returncode} before "
                f"listening on port {port}:\n{child.log_tail()}"
            )
        try:
            with socket.create_connection((LOCALHOST, port), timeout=0.5):
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise ProcessError(
                f"{child.name} did not listen on port {port} within {timeout:g} s:\n"
                f"{child.log_tail()}"
            )
        time.sleep(0.05)


def wait_for_http_ok(child: Child, port: int, path: str, timeout: float = 60.0) -> None:
    """
    Return once ``GET path`` on 127.0.0.1:``port`` answers 200.

    A proxy listening is not a proxy relaying: a worker may still be checking
    its backend (and answer 503) when its port opens.

    :raise ProcessError: the child exited or the deadline passed.
    """
    deadline = time.monotonic() + timeout
    last = "no answer"
    while True:
        if child.popen.poll() is not None:
            raise ProcessError(
                f"{child.name} exited with status {child.popen.returncode}:\n{child.log_tail()}"
            )
        connection = http.client.HTTPConnection(LOCALHOST, port, timeout=5.0)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            response.read()
            if response.status == 200:
                return
            last = f"{response.status} {response.reason}"
        except OSError as e:
            last = str(e)
        finally:
            connection.close()
        if time.monotonic() > deadline:
            raise ProcessError(
                f"{child.name} did not answer GET {path} with 200 within {timeout:g} s "
                f"(last: {last}):\n{child.log_tail()}"
            )
        time.sleep(0.1)


def run_bounded(
    command: Sequence[str],
    timeout: float,
    *,
    cpu: int | None = None,
    while_running: Callable[[], None] | None = None,
    every: float = 0.05,
) -> str:
    """
    Run a short-lived command to completion and return its standard output.

    It runs in its own process group, which is killed if the deadline passes
    or the orchestrator is interrupted, so no load generator outlives a run.

    :param command: the program and its arguments.
    :param timeout: seconds before it is killed.
    :param cpu: the CPU to pin it to, or ``None``.
    :param while_running: called about every ``every`` seconds until it exits
        (to sample another process while the load runs).
    :raise ProcessError: it failed or ran past ``timeout``.
    """
    argv = list(command) if cpu is None else pinned(command, cpu)
    popen = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    deadline = time.monotonic() + timeout
    try:
        while True:
            if while_running is not None:
                while_running()
            left = deadline - time.monotonic()
            if left <= 0:
                raise ProcessError(f"{command[0]} ran past its {timeout:g} s deadline")
            try:
                # communicate() keeps what it has read when it times out, so
                # it can be called again; the pipes never fill up meanwhile.
                out, err = popen.communicate(timeout=min(left, every))
                break
            except subprocess.TimeoutExpired:
                continue
    finally:
        stop_group(popen, grace=1.0)
    if popen.returncode != 0:
        raise ProcessError(
            f"{' '.join(command)} exited with status {popen.returncode}:\n"
            f"{err.decode(errors='replace')[-2000:]}"
        )
    return out.decode(errors="replace")


def memory_kib(pid: int) -> dict[str, int]:
    """
    ``VmRSS`` and ``VmHWM`` (peak RSS) of ``pid``, in KiB, from ``/proc``.
    """
    values: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0])
    return values


def run_with_processes(prefix: str, run: Callable[[ProcessSet], None]) -> int | None:
    """
    Run a benchmark's ``run`` with a fresh :class:`ProcessSet` in a temporary
    directory, SIGTERM handled as Ctrl-C, every process stopped at the end.

    :param prefix: the temporary directory's name prefix.
    :param run: starts the processes it needs and measures.
    :return: ``None`` once ``run`` finished; else the exit status, with the
        reason printed: 130 when interrupted, 2 when the run failed.
    """
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
            with ProcessSet(Path(tmp)) as procs:
                run(procs)
    except KeyboardInterrupt:
        print("\ninterrupted; every process started was stopped", file=sys.stderr)
        return 130
    except Exception as e:
        print(f"\nbenchmark failed: {e}", file=sys.stderr)
        return 2
    return None


def _interrupt(signum: int, frame: FrameType | None) -> None:
    # SIGTERM takes the same path as Ctrl-C, through every finally block.
    raise KeyboardInterrupt
