"""
Profile the worker under the hot-path loads: where its CPU goes per relayed
POST and per relayed SSE event.

Starts the same backends and Vespa (unsecured, metrics off) as
``run_hotpath.py``, puts one load on it (wrk c=32 POSTs of a small envelope,
or 300 SSE streams of 100 events at 10 ms), and records the worker with
``py-spy`` (sampling from outside, ``--nonblocking``, so the worker is never
paused). For each load it writes the raw collapsed stacks and a speedscope
file, and prints the costs three ways: by function and line where the CPU was
spent (self), by function including its callees, and by the innermost line in
``vespa/`` on the stack (the call site in our code that caused the cost).

Run: ``.venv/bin/python benchmarks/profile_hotpath.py [--seconds 15] [--out DIR]``
(``py-spy`` must be installed beside the interpreter or on the PATH, and be
allowed to read the worker's memory: root, or ptrace_scope 0).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

from backends import start_json_backend, start_sse_backend
from payloads import ONE_EVENT, POST_PAYLOAD, envelope, probe_request
from processes import LOAD_CPU, ProcessSet, pinned
from run_hotpath import JSON_ROUTE, SSE_ROUTE, start_secured, start_vespa
from run_relay import sse_load
from wrk import post_script, run_wrk

# A frame of py-spy's raw format: "function (path:line)".
_FRAME = re.compile(r"^(?P<function>.*) \((?P<path>.*?)(?::(?P<line>\d+))?\)$")
TOP = 25

# Where a sample's CPU was spent, by the file of its innermost frame (first
# match wins): an exclusive breakdown that adds up to 100 %.
CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("reactor: epoll, socket reads and writes, writer (un)registration", (
        "twisted/internet/epollreactor.py", "twisted/internet/tcp.py",
        "twisted/internet/abstract.py", "twisted/internet/posixbase.py",
        "twisted/python/util.py", "twisted/internet/_newtls.py", "socket.py",
    )),
    ("reactor: callWithLogger / context wrapper per I/O event", (
        "twisted/python/log.py", "twisted/python/context.py",
    )),
    ("timers: callLater, DelayedCall reset/cancel, timeouts", (
        "twisted/internet/base.py", "twisted/protocols/policies.py",
    )),
    ("Deferreds", ("twisted/internet/defer.py",)),
    ("HTTP client (Agent, pool, _newclient)", (
        "twisted/web/_newclient.py", "twisted/web/client.py",
        "twisted/internet/endpoints.py", "urllib/parse.py",
    )),
    ("headers (twisted.web Headers, token checks)", (
        "twisted/web/http_headers.py", "twisted/web/_abnf.py",
    )),
    ("HTTP server and chunked coding (twisted.web http/server, LineReceiver)", (
        "twisted/web/http.py", "twisted/web/server.py", "twisted/protocols/basic.py",
        "twisted/web/resource.py",
    )),
    ("request envelope: JSON parse", ("vespa/protocol/envelope.py", "json/")),
    ("metrics (prometheus_client)", ("prometheus_client/", "vespa/worker/metrics.py")),
    ("request id (uuid4)", ("uuid.py",)),
    ("logging (twisted.logger)", ("twisted/logger/", "vespa/log.py")),
    ("vespa/ proxy (site, relay, headers)", ("vespa/proxy/",)),
    ("vespa/ worker (resource, admission, ledger, workload, sessions)", (
        "vespa/worker/", "vespa/protocol/",
    )),
)  # fmt: skip


def category(path: str) -> str:
    """The cost category of a frame's file."""
    for name, markers in CATEGORIES:
        if any(marker in path for marker in markers):
            return name
    return "other (interpreter, dataclasses, stdlib)"


def py_spy() -> str:
    """The py-spy binary."""
    beside = Path(sys.executable).parent / "py-spy"
    found = str(beside) if beside.exists() else shutil.which("py-spy")
    if found is None:
        raise FileNotFoundError("py-spy not found: pip install py-spy")
    return found


def record(pid: int, seconds: int, out: Path, load: Callable[[], object]) -> Path:
    """
    Record ``pid`` for ``seconds`` while ``load()`` runs; write ``out``.raw
    (collapsed stacks) and ``out``.speedscope.json; return the raw file.
    """
    raw, speedscope = out.with_suffix(".raw"), out.with_suffix(".speedscope.json")

    def spy(fmt: str, path: Path) -> subprocess.Popen[bytes]:
        command = [
            py_spy(), "record", "--pid", str(pid), "--duration", str(seconds),
            "--rate", "250", "--nonblocking", "--format", fmt, "--output", str(path),
        ]  # fmt: skip
        return subprocess.Popen(pinned(command, LOAD_CPU), stdout=subprocess.DEVNULL)

    spies = [spy("raw", raw), spy("speedscope", speedscope)]
    worker = threading.Thread(target=load)
    worker.start()
    worker.join()
    for s in spies:
        s.wait(timeout=seconds + 30)
    return raw


def _frames(stack: str) -> list[tuple[str, str, str]]:
    frames = []
    for text in stack.split(";"):
        match = _FRAME.match(text)
        if match is None:
            frames.append((text, "", ""))
        else:
            frames.append((match["function"], match["path"], match["line"] or ""))
    return frames


def _short(path: str) -> str:
    """A path from ``vespa/`` or the package root, not the whole site-packages path."""
    for marker in ("/site-packages/", "/lib/python3.11/"):
        if marker in path:
            return path.split(marker, 1)[1]
    index = path.rfind("/vespa/")
    return path[index + 1 :] if index >= 0 else path


def _ours(text: str) -> bool:
    """True for a frame in the ``vespa`` package (py-spy names it by its module path)."""
    return text.startswith("vespa/") or "(vespa/" in text or "/vespa/" in text


def summarise(raw: Path, label: str = "") -> str:
    """
    The top costs of a raw profile as text: self, inclusive, and per ``vespa/`` call site.
    """
    self_cost: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    vespa_site: Counter[str] = Counter()
    vespa_inclusive: Counter[str] = Counter()
    categories: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = _frames(stack)
        # The first frames are the thread's name and process, not Python.
        frames = [f for f in frames if f[1]]
        if not frames:
            continue
        total += count
        function, path, lineno = frames[-1]
        self_cost[f"{function} ({_short(path)}:{lineno})"] += count
        categories[category(_short(path))] += count
        for name in {f"{f} ({_short(p)})" for f, p, _ in frames}:
            inclusive[name] += count
            if _ours(name):
                vespa_inclusive[name] += count
        site = next(
            (f"{f} ({_short(p)}:{n})" for f, p, n in reversed(frames) if _ours(_short(p))),
            "(no vespa/ frame: the reactor, Twisted, the standard library)",
        )
        vespa_site[site] += count
    lines = [f"== {label}: {total} samples of CPU =="]
    for title, counter in (
        ("by category of the innermost frame (adds up to 100 %)", categories),
        ("self (where the CPU was spent)", self_cost),
        ("inclusive (function and its callees)", inclusive),
        ("inclusive, vespa/ functions only", vespa_inclusive),
        ("innermost vespa/ line on the stack (the call site that caused it)", vespa_site),
    ):
        lines.append(f"-- {title}")
        for name, count in counter.most_common(TOP):
            lines.append(f"  {count / total * 100:5.1f}%  {name}")
    return "\n".join(lines)


def profile_post(procs: ProcessSet, out: Path, seconds: int, *, secured: bool = False) -> str:
    """
    Vespa in front of nginx, wrk c=32 POSTs for ``seconds``, recorded; with
    ``secured``, a secured Vespa and a signed envelope (``run_hotpath.py``'s
    ``secured`` column).
    """
    body = envelope(POST_PAYLOAD)
    nginx = start_json_backend(procs)
    if secured:
        signed = start_secured(procs, nginx, "vespa-secured", POST_PAYLOAD)
        vespa, body = signed.server, signed.body
    else:
        vespa = start_vespa(procs, nginx, "vespa-json", probe_request(JSON_ROUTE, body))
    script = post_script(procs.workdir / "post.lua", body)
    run_wrk(vespa.url + JSON_ROUTE, 32, 2, script=script)  # warm-up
    raw = record(
        vespa.child.pid, seconds, out / ("post-secured" if secured else "post"),
        lambda: run_wrk(vespa.url + JSON_ROUTE, 32, seconds + 1, script=script),
    )  # fmt: skip
    procs.stop(vespa.child)
    procs.stop(nginx.child)
    return summarise(raw, label=f"POST c=32, small JSON{', secured' if secured else ''}")


def profile_sse(procs: ProcessSet, out: Path, seconds: int) -> str:
    """Vespa in front of the SSE backend, 300 streams for ``seconds``, recorded."""
    backend = start_sse_backend(procs)
    probe = probe_request(SSE_ROUTE, envelope(ONE_EVENT))
    vespa = start_vespa(procs, backend, "vespa-sse", probe)
    raw = record(
        vespa.child.pid, seconds, out / "sse",
        lambda: sse_load(
            vespa.port, streams=300, events=100, interval=0.01, seconds=seconds,
            mode="window", post=SSE_ROUTE,
        ),
    )  # fmt: skip
    procs.stop(vespa.child)
    procs.stop(backend.child)
    return summarise(raw, label="SSE, 300 streams x 100 events at 10 ms")


def main(argv: Sequence[str] | None = None) -> int:
    """Profile both paths; print the summaries."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=15, help="recording length per load")
    parser.add_argument("--out", type=Path, default=Path("profiles"), help="where to write")
    parser.add_argument(
        "--summarise", type=Path, nargs="+", metavar="RAW",
        help="only print the summary of raw files already recorded",
    )  # fmt: skip
    parser.add_argument(
        "--secured", action="store_true",
        help="profile a secured worker under the POST load only (signed envelopes)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.summarise:
        for raw in args.summarise:
            print(summarise(raw, label=raw.name))
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="vespa-profile-") as tmp:
        with ProcessSet(Path(tmp)) as procs:
            print(profile_post(procs, args.out, args.seconds, secured=args.secured), flush=True)
            if not args.secured:
                print(profile_sse(procs, args.out, args.seconds), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
