# -*- test-case-name: tests.test_config -*-
"""
The worker's settings: command line, environment and defaults, turned into one
frozen :class:`WorkerConfig`.

Each setting is declared once, as a field of :class:`WorkerConfig` (or, when it
only feeds a derived field, in :data:`_INPUTS`), with the one settings system
of :mod:`vespa.settings`. A value comes from the command line, else from
``VESPA_<NAME>``, else from ``PYWORKER_<NAME>`` (so an existing Vast template
works unchanged), else from the default. A value that does not parse is a
:class:`ConfigError` naming the option and where the value came from.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from twisted.logger import LogLevel
from zope.interface import implementer

from vespa.benchmarks import built_in_name
from vespa.benchmarks.errors import SettingsError
from vespa.benchmarks.settings import WORKER_OPTIONS, RunSettings, probe_settings
from vespa.http.endpoints import Origin, parse_origin
from vespa.interfaces import IStartupSettings
from vespa.parsers import (
    parse_benchmark,
    parse_bool,
    parse_choice,
    parse_count_or_off,
    parse_list,
    parse_listen,
    parse_log_level,
    parse_optional_listen,
    parse_port,
    parse_port_or_off,
    parse_positive_float,
    parse_positive_int,
    parse_seconds,
    parse_secret,
    parse_size,
    parse_wait_limit,
    parse_workload,
)
from vespa.settings import ConfigError, Setting, config_fields, option, resolve, settings_of
from vespa.vast import VastEnvironment

__all__ = [
    "DEMO_BACKEND",
    "WORKER_SETTINGS",
    "ConfigError",
    "Origin",
    "VastEnvironment",
    "WorkerConfig",
    "listen_port",
    "parse_origin",
]


#: The settings that only feed a derived field of :class:`WorkerConfig`.
_INPUTS: tuple[Setting[Any], ...] = (
    Setting(
        "backend-url", "BACKEND_URL", parse_origin, None,
        "Origin of the model server, e.g. http://127.0.0.1:8000 (required unless --demo)",
    ),
    Setting("port", "WORKER_PORT", parse_port, 3000, "TCP port to serve on (all interfaces)"),
    Setting(
        "listen", "LISTEN", parse_listen, None,
        "Twisted endpoint description to serve on; overrides --port "
        "(e.g. tcp:3000:interface=127.0.0.1)",
    ),
    Setting(
        "allow-parallel", "ALLOW_PARALLEL", parse_bool, True,
        "Relay several requests at once; false gives one slot",
    ),
    Setting(
        "max-concurrency", "MAX_CONCURRENCY", parse_count_or_off, None,
        "At most this many requests at the backend at once; the rest queue in order",
    ),
)

DEMO_BACKEND = Origin("http", "127.0.0.1", 8000)


def _listen(values: Mapping[str, Any], given: Mapping[str, Any]) -> str:
    """--listen wins over --port, unless --port is on the command line and --listen is not."""
    if values["listen"] is None or (given.get("port") is not None and given.get("listen") is None):
        # A deep accept queue: the default of 50 drops SYNs when a burst of
        # clients connects at once, and each dropped one waits a second.
        return f"tcp:{values['port']}:backlog=1024"
    return str(values["listen"])


def _listen_port(values: Mapping[str, Any]) -> int | None:
    return listen_port(values["listen"] or f"tcp:{values['port']}")


def listen_port(listen: str) -> int | None:
    """
    The TCP port of a listening description (``tcp:3000:...``), if it has one.
    """
    match = re.match(r"^(?:tcp6?:|ssl:)?(?:port=)?(\d+)", listen)
    return int(match.group(1)) if match else None


@implementer(IStartupSettings)
@dataclass(frozen=True)
class WorkerConfig:
    """
    The worker daemon's settings, validated: one field per setting, declared
    with its option, environment name, parser, default and help (see
    :mod:`vespa.settings`), and the fields derived from several settings.

    :ivar backend: the model server's origin (``--backend-url``).
    :ivar listen: the strports description to serve on (``--listen``, ``--port``).
    :ivar slots: requests relayed at once, ``None`` for no limit
        (``--allow-parallel``, ``--max-concurrency``).
    :ivar vast: what the Vast platform told this instance.
    :ivar benchmark_settings: the settings passed to the built-in ``--benchmark``
        (``--benchmark-*``, ``VESPA_BENCHMARK_*``), ``None`` for one of the user's own.
    """

    backend: Origin
    listen: str = "tcp:3000:backlog=1024"
    slots: int | None = None
    vast: VastEnvironment = field(default_factory=lambda: VastEnvironment())
    benchmark_settings: RunSettings | None = None
    http_port: int | None = option(
        "http-port", parse_port_or_off, None,
        "Plain-HTTP port for local /session/end, on --listen's interface "
        "(default: the worker port + 1; 0 or off for none)",
        env="WORKER_HTTP_PORT",
    )
    unsecured: bool = option(
        "unsecured", parse_bool, False,
        "Forward every request as it is, without signature checks (local development)",
        flag=True,
    )
    blocked_paths: tuple[str, ...] = option(
        "blocked-paths", parse_list, (),
        "Comma-separated path patterns answered 403 (* and ? wildcards), e.g. /admin/*,/debug",
    )
    max_body_size: int = option(
        "max-body-size", parse_size, 64 << 20,
        "Largest request body accepted (bytes, or 512k, 64MB); larger gets 413",
    )
    header_timeout: float | None = option(
        "header-timeout", parse_seconds, 15.0,
        "Seconds for a client's request line and headers to arrive, however slowly they "
        "trickle; later gets 408 (0 = only the 60 s idle timeout)",
    )
    keepalive_timeout: float | None = option(
        "keepalive-timeout", parse_seconds, 60.0,
        "Seconds a client connection may wait between requests (0 = the 60 s idle timeout)",
    )
    connect_timeout: float | None = option(
        "connect-timeout", parse_seconds, 10.0,
        "Seconds to connect to the backend (0 = no limit)",
    )
    first_byte_timeout: float | None = option(
        "first-byte-timeout", parse_seconds, 600.0,
        "Seconds from sending a request to the backend's response headers (0 = no limit)",
    )
    idle_timeout: float | None = option(
        "idle-timeout", parse_seconds, 300.0,
        "Seconds the backend may stay silent mid-response (0 = no limit)",
    )
    total_timeout: float | None = option(
        "total-timeout", parse_seconds, None,
        "Seconds for a whole exchange; off by default, generations can be long",
    )
    backend_keepalive: float | None = option(
        "backend-keepalive", parse_seconds, 4.0,
        "Seconds an idle backend connection is kept; keep it below the backend's own "
        "keep-alive (uvicorn, used by vLLM, closes after 5 s)",
    )
    max_backend_connections: int = option(
        "max-backend-connections", parse_positive_int, 256,
        "Idle backend connections kept for reuse; size it to the concurrency",
    )
    access_log: str | None = option(
        "access-log", str, None,
        "Write an access log line per request to this file (- for the daemon log)",
    )
    log_level: LogLevel = option(
        "log-level", parse_log_level, LogLevel.info,
        "debug, info, warning, error or critical",
    )
    demo: bool = option(
        "demo", parse_bool, False,
        "Also run the built-in demo model server on the --backend-url port "
        "(default 127.0.0.1:8000)",
        flag=True,
    )
    # Admission
    max_sessions: int | None = option(
        "max-sessions", parse_count_or_off, 10,
        "Sessions open at once; /session/create beyond is refused (429) (0 or off: no limit)",
    )
    max_wait_time: float | None = option(
        "max-wait-time", parse_wait_limit, 30.0,
        "Refuse (429) when the estimated wait is over this many seconds "
        "(0 = while anything is in flight, off = never)",
    )
    default_cost: float | None = option(
        "default-cost", parse_positive_float, None,
        "Workload counted for a request whose signed cost is 1 or less (--workload cost)",
    )
    workload: str = option(
        "workload", parse_workload, "auto",
        "Each request's workload: auto (from the payload, in the benchmark's unit), "
        "cost (the autoscaler's, unsigned today) or module:function",
    )
    # Signatures
    signature_mode: str = option(
        "signature-mode", parse_choice("auto", "url", "full"), "auto",
        "What the autoscaler signs: url (today's cached signature), full (cost, endpoint, "
        "reqnum, request_idx, url), or auto for either",
    )
    replay_window: int | None = option(
        "replay-window", parse_count_or_off, 10000,
        "Refuse a reused five-field signature or a reqnum this far behind the newest (0 = off)",
    )
    url_binding: bool = option(
        "url-binding", parse_bool, True,
        "Refuse requests signed for another worker's url (when the public url is known)",
    )
    backend_api_key: str | None = option(
        "backend-api-key", parse_secret, None,
        "Send Authorization: Bearer KEY to the model server (@/path/to/file reads the key "
        "from a file, keeping it out of the process list)",
    )
    pubkey_timeout: float | None = option(
        "pubkey-timeout", parse_seconds, 10.0,
        "Seconds per attempt to fetch the autoscaler's public key",
    )
    # Startup and health
    healthcheck_endpoint: str = option(
        "healthcheck-endpoint", str, "auto",
        "Path on the backend that answers 200 when it is ready; auto: the "
        "benchmark's native route, the next one when the server answers 404",
    )
    healthcheck_interval: float = option(
        "healthcheck-interval", parse_positive_float, 10.0,
        "Seconds between health checks once loaded",
        env="HEALTHCHECK_POLL_INTERVAL",
    )
    healthcheck_retry_interval: float = option(
        "healthcheck-retry-interval", parse_positive_float, 5.0,
        "Seconds between readiness polls while the backend starts",
    )
    healthcheck_timeout: float = option(
        "healthcheck-timeout", parse_positive_float, 30.0,
        "Seconds per health check",
    )
    healthcheck_failures: int = option(
        "healthcheck-failures", parse_positive_int, 3,
        "Consecutive failed health checks that mark the worker errored",
        env="HEALTHCHECK_CONSECUTIVE_FAILURES",
    )
    ready_timeout_initial: float = option(
        "ready-timeout-initial", parse_positive_float, 1200.0,
        "Seconds to wait for the backend on a first start",
    )
    ready_timeout_resume: float = option(
        "ready-timeout-resume", parse_positive_float, 300.0,
        "Seconds to wait for the backend when a benchmark result is cached",
    )
    startup_retry: float = option(
        "startup-retry", parse_positive_float, 30.0,
        "Seconds before a failed startup is tried again",
    )
    benchmark: str = option(
        "benchmark", parse_benchmark, "openai_chat",
        "Throughput benchmark: a built-in name or module:function",
    )
    benchmark_cache: str = option(
        "benchmark-cache", str, ".has_benchmark",
        "File caching the measured throughput (delete it to measure again)",
        env="BENCHMARK_CACHE_FILE",
    )
    # Reports
    report_interval: float = option(
        "report-interval", parse_positive_float, 1.0,
        "Seconds between reports to the autoscaler when something changed",
        env="METRICS_UPDATE_INTERVAL",
    )
    report_heartbeat: float = option(
        "report-heartbeat", parse_positive_float, 10.0,
        "Seconds between reports when nothing changed",
    )
    report_timeout: float = option(
        "report-timeout", parse_positive_float, 60.0,
        "Seconds per report attempt; long, so a slow autoscaler is not sent the same counts twice",
        env="METRICS_TIMEOUT",
    )
    delete_requests_format: str = option(
        "delete-requests-format", parse_choice("records", "legacy"),
        "records",
        "records (one POST of per-request records, as vastai 1.9.1) or legacy (2024-2025)",
    )
    # Operation
    use_ssl: bool = option(
        "use-ssl", parse_bool, False,
        "Serve HTTPS (TLS 1.2+, HTTP/2 by ALPN) with --tls-cert and --tls-key",
        flag=True,
    )
    tls_cert: str = option(
        "tls-cert", str, "/etc/instance.crt",
        "TLS certificate (chain) in PEM, as Vast's start script installs it",
    )
    tls_key: str = option("tls-key", str, "/etc/instance.key", "TLS private key in PEM")
    drain_timeout: float = option(
        "drain-timeout", parse_positive_float, 30.0,
        "On SIGTERM, seconds to let in-flight requests finish before exiting",
    )
    metrics_listen: str | None = option(
        "metrics-listen", parse_optional_listen, "tcp:9464:interface=127.0.0.1",
        "Endpoint for Prometheus metrics, or none to disable",
    )
    log_format: str = option(
        "log-format", parse_choice("text", "json"), "text",
        "text, or json for one JSON object per line (log shippers)",
    )

    def session_listen(self) -> str | None:
        """
        Where the plain-HTTP ``/session/end`` listens: :attr:`http_port`, else
        the worker's port + 1 (as the official worker's ``WORKER_HTTP_PORT``),
        on the interface of :attr:`listen`; ``None`` when off, or when there is
        no port to add 1 to (an ephemeral ``tcp:0``).
        """
        port = self.http_port
        if port is None:
            main = listen_port(self.listen)
            port = main + 1 if main and main < 65535 else 0
        if not port:
            return None
        interface = re.search(r":interface=((?:\\.|[^:\\])+)", self.listen)
        return f"tcp:{port}" + (f":interface={interface.group(1)}" if interface else "")

    @classmethod
    def from_sources(cls, given: Mapping[str, Any], environ: Mapping[str, str]) -> WorkerConfig:
        """
        Build the config from command-line values and the environment.

        :param given: command-line values by option name (``None`` = not given).
        :param environ: the process environment.
        :raise ConfigError: for a bad or missing value, naming the option.
        """
        v = resolve(WORKER_SETTINGS, given, environ)
        backend = v["backend-url"]
        if backend is None:
            if not v["demo"]:
                raise ConfigError(
                    "--backend-url is required (or VESPA_BACKEND_URL), "
                    "e.g. --backend-url http://127.0.0.1:8000; or try --demo"
                )
            backend = DEMO_BACKEND
        if v["demo"] and (backend.scheme != "http" or not backend.is_ip):
            raise ConfigError("--demo needs an http://<ip>:<port> --backend-url to serve on")
        if v["healthcheck-endpoint"] != "auto" and not v["healthcheck-endpoint"].startswith("/"):
            raise ConfigError("--healthcheck-endpoint: must be auto or a path starting with /")
        slots = 1 if not v["allow-parallel"] else v["max-concurrency"]
        try:
            benchmark_settings = probe_settings(built_in_name(v["benchmark"]), v, environ)
        except SettingsError as e:
            raise ConfigError(str(e)) from None
        if v["use-ssl"]:
            from vespa.tls import TLSFilesError, server_options

            try:
                server_options(v["tls-cert"], v["tls-key"])
            except TLSFilesError as e:
                raise ConfigError(
                    f"--use-ssl: {e} (see --tls-cert, --tls-key, vespa-certs)"
                ) from None
        return cls(
            backend=backend,
            listen=_listen(v, given),
            slots=slots,
            vast=VastEnvironment.from_environ(environ, _listen_port(v), https=v["use-ssl"]),
            benchmark_settings=benchmark_settings,
            **config_fields(cls, v),
        )


#: Every setting of the worker, in ``--help`` order.
WORKER_SETTINGS: tuple[Setting[Any], ...] = _INPUTS + settings_of(WorkerConfig) + WORKER_OPTIONS
