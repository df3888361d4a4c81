"""
The backends the relay is measured against, and the Vespa worker itself.

Each ``start_*`` function starts its process through a :class:`ProcessSet`
(which stops it, whatever happens) and returns once its port accepts
connections.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from payloads import COMPLETION_JSON, FIXED_JSON, MODELS_JSON
from processes import (
    LOAD_CPU,
    LOCALHOST,
    PROXY_CPU,
    Child,
    ProcessSet,
    free_port,
    wait_for_http_ok,
    wait_for_port,
)

HERE = Path(__file__).resolve().parent
SSE_BACKEND = HERE / "sse_backend.py"



@dataclass(frozen=True)
class Server:
    """
    A started server.

    :ivar name: what it is, for the report.
    :ivar child: its process.
    :ivar port: where it listens on 127.0.0.1.
    """

    name: str
    child: Child
    port: int

    @property
    def url(self) -> str:
        """Its origin URL."""
        return f"http://{LOCALHOST}:{self.port}"


def nginx_path() -> str | None:
    """The nginx binary, or ``None`` when it is not installed."""
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )


def nginx_config(prefix: Path, port: int) -> str:
    """
    An nginx configuration that answers every request with ``FIXED_JSON``,
    except the two OpenAI routes a worker may call at startup (see payloads.py).

    One worker (it shares the load core), no access log, and keep-alive
    connections that are never closed during a run, so nginx costs as little
    as possible per request and the figures are the proxy's. Every path it
    could write to is inside ``prefix``.
    """
    # nginx started as root would switch its worker to "nobody", whose group
    # does not exist on every system; the worker has no reason to change user.
    user = "user root;\n" if os.geteuid() == 0 else ""
    temp = "\n".join(
        f"    {kind}_temp_path {prefix / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""{user}worker_processes 1;
daemon off;
master_process on;
pid {prefix / "nginx.pid"};
error_log {prefix / "error.log"} warn;
events {{
    worker_connections 4096;
}}
http {{
    access_log off;
    keepalive_requests 10000000;
    keepalive_timeout 120s;
{temp}
    server {{
        listen {LOCALHOST}:{port} backlog=2048;
        default_type application/json;
        location / {{
            return 200 '{_quoted(FIXED_JSON)}';
        }}
        location = /v1/models {{
            return 200 '{_quoted(MODELS_JSON)}';
        }}
        location = /v1/chat/completions {{
            return 200 '{_quoted(COMPLETION_JSON)}';
        }}
    }}
}}
"""


def _quoted(body: bytes) -> str:
    """``body`` inside an nginx single-quoted string."""
    return body.decode().replace("\\", "\\\\").replace("'", "\\'")


def start_nginx(procs: ProcessSet, binary: str) -> Server:
    """
    Start nginx with a generated configuration, pinned to the load CPU.
    """
    prefix = procs.workdir / "nginx"
    prefix.mkdir(exist_ok=True)
    port = free_port()
    config = prefix / "nginx.conf"
    config.write_text(nginx_config(prefix, port))
    command = [
        binary,
        "-p", str(prefix),
        "-c", str(config),
        "-e", str(prefix / "error.log"),  # not the packaged log path, which may be unwritable
    ]  # fmt: skip
    child = procs.start("nginx", command, cpu=LOAD_CPU)
    wait_for_port(child, port)
    return Server("nginx", child, port)


def start_fallback_json(procs: ProcessSet) -> Server:
    """
    Start the fallback fast backend (``sse_backend.py --json-only``: asyncio,
    fixed JSON), pinned to the load CPU.
    """
    port = free_port()
    command = [sys.executable, str(SSE_BACKEND), "--port", str(port), "--json-only"]
    child = procs.start("json-backend", command, cpu=LOAD_CPU)
    wait_for_port(child, port)
    return Server("sse_backend.py --json-only (nginx not found)", child, port)


def start_json_backend(procs: ProcessSet) -> Server:
    """
    Start the fixed-response backend: nginx if installed, else the asyncio fallback.
    """
    binary = nginx_path()
    if binary is None:
        return start_fallback_json(procs)
    return start_nginx(procs, binary)


def start_sse_backend(procs: ProcessSet) -> Server:
    """
    Start the SSE backend (:mod:`sse_backend`), pinned to the load CPU.
    """
    port = free_port()
    child = procs.start(
        "sse-backend", [sys.executable, str(SSE_BACKEND), "--port", str(port)], cpu=LOAD_CPU
    )
    wait_for_port(child, port)
    return Server("sse_backend.py", child, port)


def twistd_path() -> str:
    """
    The ``twistd`` of the running interpreter's environment (where Vespa is installed).
    """
    beside = Path(sys.executable).parent / "twistd"
    if beside.exists():
        return str(beside)
    found = shutil.which("twistd")
    if found is None:
        raise FileNotFoundError("twistd not found: run with the virtualenv's python")
    return found


def start_vespa(
    procs: ProcessSet,
    backend: Server,
    probe: str,
    *,
    name: str = "vespa",
    extra_args: Sequence[str] = (),
) -> Server:
    """
    Start the real worker, ``twistd -n vespa``, in front of ``backend``, on the proxy CPU.

    It runs ``--unsecured``: requests here carry no autoscaler signature, and
    what is measured is the relay. It is ready once ``GET probe`` through it
    answers 200 (a worker checks its backend before it serves).

    :param probe: a path the backend answers 200.
    :param extra_args: more ``twistd vespa`` options.
    """
    port = free_port()
    command = [
        twistd_path(), "-n", "--pidfile=", "vespa",
        "--backend-url", backend.url,
        "--listen", f"tcp:{port}:interface={LOCALHOST}",
        "--unsecured",
        *extra_args,
    ]  # fmt: skip
    child = procs.start(name, command, cpu=PROXY_CPU)
    wait_for_port(child, port)
    wait_for_http_ok(child, port, probe)
    return Server(name, child, port)
