# -*- test-case-name: tests.test_config -*-
"""
Settings: command line, environment and defaults, turned into one frozen config.

Each setting is declared once, in a table, with its option name, its
environment name and its parser. A value comes from the command line, else from
``VESPA_<NAME>``, else from ``PYWORKER_<NAME>`` (so an existing Vast template
works unchanged), else from the default. A value that does not parse is a
:class:`ConfigError` naming the option and where the value came from.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar
from urllib.parse import urlsplit

from constantly import NamedConstant  # type: ignore[import-untyped]
from twisted.logger import LogLevel

from vespa.http.endpoints import Origin, parse_origin
from vespa.log import LEVELS

T = TypeVar("T")

ENV_PREFIXES = ("VESPA_", "PYWORKER_")


class ConfigError(ValueError):
    """A setting has a value that cannot be used; the message names the setting."""


@dataclass(frozen=True)
class Setting(Generic[T]):
    """
    One setting of a daemon.

    :ivar name: the long option name, ``backend-url``.
    :ivar env: the environment name without prefix, ``BACKEND_URL``.
    :ivar parse: turns the text form into the value; raises ``ValueError``.
    :ivar default: the value when nothing is given (already parsed).
    :ivar help: one line for ``--help``.
    :ivar flag: a command-line switch that takes no value.
    """

    name: str
    env: str
    parse: Callable[[str], T]
    default: T
    help: str
    flag: bool = False

    def env_names(self) -> list[str]:
        """
        The environment variables read for this setting, first one wins.
        """
        return [prefix + self.env for prefix in ENV_PREFIXES]

    def option_help(self) -> str:
        """
        The ``--help`` text, with the environment names and the default.
        """
        default = "" if self.flag or self.default is None else f" [default: {_show(self.default)}]"
        return f"{self.help}{default} (env {' / '.join(self.env_names())})"


def _show(value: object) -> str:
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value) or "none"
    if isinstance(value, NamedConstant):
        return str(value.name)
    return str(value)


def resolve(
    settings: Iterable[Setting[Any]],
    given: Mapping[str, Any],
    environ: Mapping[str, str],
) -> dict[str, Any]:
    """
    Resolve every setting to its value.

    :param settings: the table of settings.
    :param given: command-line values by option name; ``None`` (or ``0`` for a
        flag) means "not given".
    :param environ: the process environment.
    :return: values by option name.
    :raise ConfigError: naming the option, the source and the reason.
    """
    values: dict[str, Any] = {}
    for setting in settings:
        raw = given.get(setting.name)
        if setting.flag:
            raw = "true" if raw else None
        source = f"--{setting.name}"
        if raw is None:
            for env_name in setting.env_names():
                if environ.get(env_name, "").strip() != "":
                    raw, source = environ[env_name], f"{env_name} (for --{setting.name})"
                    break
        if raw is None:
            values[setting.name] = setting.default
            continue
        try:
            values[setting.name] = setting.parse(str(raw))
        except ValueError as e:
            raise ConfigError(f"{source}: {e}") from None
    return values


# Parsers. Each takes the text form and raises ValueError with a reason.

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def parse_bool(text: str) -> bool:
    """
    Parse ``true/false``, ``yes/no``, ``on/off`` or ``1/0``, in any case.
    """
    word = text.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def parse_port(text: str) -> int:
    """
    Parse a TCP port number, 1 to 65535.
    """
    try:
        port = int(text)
    except ValueError:
        raise ValueError(f"not a port number: {text!r}") from None
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} is out of range (1-65535)")
    return port


def parse_port_or_off(text: str) -> int:
    """
    Parse a TCP port number as :func:`parse_port`, or ``0``/``off`` for none (0).
    """
    if text.strip().lower() in ("0", "off", "none"):
        return 0
    return parse_port(text)


def parse_seconds(text: str) -> float | None:
    """
    Parse a duration in seconds; ``0`` or ``off`` means no limit (``None``).
    """
    word = text.strip().lower()
    if word in ("off", "none", "0"):
        return None
    return _seconds(text) or None


def _seconds(text: str) -> float:
    try:
        seconds = float(text.strip().lower().removesuffix("s"))
    except ValueError:
        raise ValueError(f"not a number of seconds: {text!r}") from None
    if seconds < 0 or seconds != seconds or seconds == float("inf"):
        raise ValueError(f"must be a positive number of seconds, got {text!r}")
    return seconds


_SIZE = re.compile(r"^\s*(\d+)\s*([kmg]i?b?|b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def parse_size(text: str) -> int:
    """
    Parse a byte size: ``1048576``, ``512k``, ``64MB``, ``1GiB`` (binary units).
    """
    match = _SIZE.match(text)
    if match is None:
        raise ValueError(f"not a size: {text!r} (examples: 1048576, 512k, 64MB)")
    number, unit = match.groups()
    size = int(number) * _UNITS[(unit or "")[:1].lower()]
    if size <= 0:
        raise ValueError("must be more than 0 bytes")
    return size


def parse_positive_float(text: str) -> float:
    """
    Parse a number greater than zero.
    """
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"not a number: {text!r}") from None
    if not 0 < value < float("inf"):
        raise ValueError(f"must be more than 0, got {text!r}")
    return value


def parse_positive_int(text: str) -> int:
    """
    Parse a whole number of 1 or more.
    """
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise ValueError(f"must be 1 or more, got {value}")
    return value


def parse_wait_limit(text: str) -> float | None:
    """
    Parse a wait limit in seconds: ``0`` is a limit (nothing may wait),
    ``off`` or ``none`` is no limit (``None``).
    """
    if text.strip().lower() in ("off", "none"):
        return None
    return _seconds(text)


def parse_workload(text: str) -> str:
    """
    Parse a workload source: ``auto``, ``cost`` or ``module:function``.
    """
    word = text.strip()
    if word.lower() in ("auto", "cost"):
        return word.lower()
    if not _CALCULATOR.match(word):
        raise ValueError(f"expected auto, cost or module:function, got {text!r}")
    return word


_CALCULATOR = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def parse_count_or_off(text: str) -> int | None:
    """
    Parse a whole number of 1 or more, or ``0``/``off`` for none.
    """
    if text.strip().lower() in ("0", "off", "none"):
        return None
    return parse_positive_int(text)


def parse_secret(text: str) -> str:
    """
    Parse a secret given as is, or as ``@/path/to/file`` to read it from a file
    (one line; surrounding whitespace is dropped).
    """
    if text.startswith("@"):
        path = text[1:]
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"cannot read the key file {path!r}: {e}") from None
    secret = text.strip()
    if not secret:
        raise ValueError("the key is empty")
    if any(ord(c) < 0x21 or ord(c) > 0x7E for c in secret):
        raise ValueError("the key must be printable ASCII without spaces")
    return secret


def parse_choice(*choices: str) -> Callable[[str], str]:
    """
    A parser accepting one of ``choices`` (case-insensitive).
    """

    def parse(text: str) -> str:
        word = text.strip().lower()
        if word not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {text!r}")
        return word

    return parse


_BENCHMARK = re.compile(r"^([A-Za-z_][\w.]*)(:[A-Za-z_]\w*)?$")


def parse_benchmark(text: str) -> str:
    """
    Check a benchmark reference: a built-in name or ``module:function``.
    """
    if not _BENCHMARK.match(text.strip()):
        raise ValueError(f"expected a built-in name or module:function, got {text!r}")
    return text.strip()


def parse_list(text: str) -> tuple[str, ...]:
    """
    Parse a comma-separated list; blanks are dropped.
    """
    return tuple(item.strip() for item in text.split(",") if item.strip())


def parse_log_level(text: str) -> LogLevel:
    """
    Parse a log level name: debug, info, warning, error or critical.
    """
    try:
        level: LogLevel = LEVELS[text.strip().lower()]
        return level
    except KeyError:
        raise ValueError(f"unknown log level {text!r} (one of {', '.join(LEVELS)})") from None


def parse_listen(text: str) -> str:
    """
    Check a Twisted strports server description, such as ``tcp:3000:interface=127.0.0.1``.
    """
    from twisted.internet.endpoints import serverFromString
    from twisted.internet.testing import MemoryReactor

    try:
        serverFromString(MemoryReactor(), text)
    except (ValueError, KeyError, TypeError, OSError) as e:
        raise ValueError(f"not a listening description: {text!r} ({e})") from None
    return text


def parse_optional_listen(text: str) -> str | None:
    """
    A listening description as :func:`parse_listen`, or ``none``/``off`` for none.
    """
    if text.strip().lower() in ("none", "off", "0", ""):
        return None
    return parse_listen(text)


WORKER_SETTINGS: tuple[Setting[Any], ...] = (
    Setting(
        "backend-url",
        "BACKEND_URL",
        parse_origin,
        None,
        "Origin of the model server, e.g. http://127.0.0.1:8000 (required unless --demo)",
    ),
    Setting("port", "WORKER_PORT", parse_port, 3000, "TCP port to serve on (all interfaces)"),
    Setting(
        "listen",
        "LISTEN",
        parse_listen,
        None,
        "Twisted endpoint description to serve on; overrides --port "
        "(e.g. tcp:3000:interface=127.0.0.1)",
    ),
    Setting(
        "http-port",
        "WORKER_HTTP_PORT",
        parse_port_or_off,
        None,
        "Plain-HTTP port for local /session/end, on --listen's interface "
        "(default: the worker port + 1; 0 or off for none)",
    ),
    Setting(
        "unsecured",
        "UNSECURED",
        parse_bool,
        False,
        "Forward every request as it is, without signature checks (local development)",
        flag=True,
    ),
    Setting(
        "blocked-paths",
        "BLOCKED_PATHS",
        parse_list,
        (),
        "Comma-separated path patterns answered 403 (* and ? wildcards), e.g. /admin/*,/debug",
    ),
    Setting(
        "max-body-size",
        "MAX_BODY_SIZE",
        parse_size,
        64 << 20,
        "Largest request body accepted (bytes, or 512k, 64MB); larger gets 413",
    ),
    Setting(
        "header-timeout",
        "HEADER_TIMEOUT",
        parse_seconds,
        15.0,
        "Seconds for a client's request line and headers to arrive, however slowly they "
        "trickle; later gets 408 (0 = only the 60 s idle timeout)",
    ),
    Setting(
        "keepalive-timeout",
        "KEEPALIVE_TIMEOUT",
        parse_seconds,
        60.0,
        "Seconds a client connection may wait between requests (0 = the 60 s idle timeout)",
    ),
    Setting(
        "connect-timeout",
        "CONNECT_TIMEOUT",
        parse_seconds,
        10.0,
        "Seconds to connect to the backend (0 = no limit)",
    ),
    Setting(
        "first-byte-timeout",
        "FIRST_BYTE_TIMEOUT",
        parse_seconds,
        600.0,
        "Seconds from sending a request to the backend's response headers (0 = no limit)",
    ),
    Setting(
        "idle-timeout",
        "IDLE_TIMEOUT",
        parse_seconds,
        300.0,
        "Seconds the backend may stay silent mid-response (0 = no limit)",
    ),
    Setting(
        "total-timeout",
        "TOTAL_TIMEOUT",
        parse_seconds,
        None,
        "Seconds for a whole exchange; off by default, generations can be long",
    ),
    Setting(
        "backend-keepalive",
        "BACKEND_KEEPALIVE",
        parse_seconds,
        4.0,
        "Seconds an idle backend connection is kept; keep it below the backend's own "
        "keep-alive (uvicorn, used by vLLM, closes after 5 s)",
    ),
    Setting(
        "max-backend-connections",
        "MAX_BACKEND_CONNECTIONS",
        parse_positive_int,
        256,
        "Idle backend connections kept for reuse; size it to the concurrency",
    ),
    Setting(
        "access-log",
        "ACCESS_LOG",
        str,
        None,
        "Write an access log line per request to this file (- for the daemon log)",
    ),
    Setting(
        "log-level",
        "LOG_LEVEL",
        parse_log_level,
        LogLevel.info,
        "debug, info, warning, error or critical",
    ),
    Setting(
        "demo",
        "DEMO",
        parse_bool,
        False,
        "Also run the built-in demo model server on the --backend-url port "
        "(default 127.0.0.1:8000)",
        flag=True,
    ),
    # Admission
    Setting(
        "max-sessions",
        "MAX_SESSIONS",
        parse_count_or_off,
        10,
        "Sessions open at once; /session/create beyond is refused (429) (0 or off: no limit)",
    ),
    Setting(
        "max-wait-time",
        "MAX_WAIT_TIME",
        parse_wait_limit,
        30.0,
        "Refuse (429) when the estimated wait is over this many seconds "
        "(0 = while anything is in flight, off = never)",
    ),
    Setting(
        "allow-parallel",
        "ALLOW_PARALLEL",
        parse_bool,
        True,
        "Relay several requests at once; false gives one slot",
    ),
    Setting(
        "max-concurrency",
        "MAX_CONCURRENCY",
        parse_count_or_off,
        None,
        "At most this many requests at the backend at once; the rest queue in order",
    ),
    Setting(
        "default-cost",
        "DEFAULT_COST",
        parse_positive_float,
        None,
        "Workload counted for a request whose signed cost is 1 or less (--workload cost)",
    ),
    Setting(
        "workload",
        "WORKLOAD",
        parse_workload,
        "auto",
        "Each request's workload: auto (from the payload, in the benchmark's unit), "
        "cost (the autoscaler's, unsigned today) or module:function",
    ),
    # Signatures
    Setting(
        "signature-mode",
        "SIGNATURE_MODE",
        parse_choice("auto", "url", "full"),
        "auto",
        "What the autoscaler signs: url (today's cached signature), full (cost, endpoint, "
        "reqnum, request_idx, url), or auto for either",
    ),
    Setting(
        "replay-window",
        "REPLAY_WINDOW",
        parse_count_or_off,
        10000,
        "Refuse a reused five-field signature or a reqnum this far behind the newest (0 = off)",
    ),
    Setting(
        "url-binding",
        "URL_BINDING",
        parse_bool,
        True,
        "Refuse requests signed for another worker's url (when the public url is known)",
    ),
    Setting(
        "backend-api-key",
        "BACKEND_API_KEY",
        parse_secret,
        None,
        "Send Authorization: Bearer KEY to the model server (@/path/to/file reads the key "
        "from a file, keeping it out of the process list)",
    ),
    Setting(
        "pubkey-timeout",
        "PUBKEY_TIMEOUT",
        parse_seconds,
        10.0,
        "Seconds per attempt to fetch the autoscaler's public key",
    ),
    # Startup and health
    Setting(
        "healthcheck-endpoint",
        "HEALTHCHECK_ENDPOINT",
        str,
        "auto",
        "Path on the backend that answers 200 when it is ready; auto: the "
        "benchmark's native route, the next one when the server answers 404",
    ),
    Setting(
        "healthcheck-interval",
        "HEALTHCHECK_POLL_INTERVAL",
        parse_positive_float,
        10.0,
        "Seconds between health checks once loaded",
    ),
    Setting(
        "healthcheck-retry-interval",
        "HEALTHCHECK_RETRY_INTERVAL",
        parse_positive_float,
        5.0,
        "Seconds between readiness polls while the backend starts",
    ),
    Setting(
        "healthcheck-timeout",
        "HEALTHCHECK_TIMEOUT",
        parse_positive_float,
        30.0,
        "Seconds per health check",
    ),
    Setting(
        "healthcheck-failures",
        "HEALTHCHECK_CONSECUTIVE_FAILURES",
        parse_positive_int,
        3,
        "Consecutive failed health checks that mark the worker errored",
    ),
    Setting(
        "ready-timeout-initial",
        "READY_TIMEOUT_INITIAL",
        parse_positive_float,
        1200.0,
        "Seconds to wait for the backend on a first start",
    ),
    Setting(
        "ready-timeout-resume",
        "READY_TIMEOUT_RESUME",
        parse_positive_float,
        300.0,
        "Seconds to wait for the backend when a benchmark result is cached",
    ),
    Setting(
        "startup-retry",
        "STARTUP_RETRY",
        parse_positive_float,
        30.0,
        "Seconds before a failed startup is tried again",
    ),
    Setting(
        "benchmark",
        "BENCHMARK",
        parse_benchmark,
        "openai_chat",
        "Throughput benchmark: a built-in name or module:function",
    ),
    Setting(
        "benchmark-cache",
        "BENCHMARK_CACHE_FILE",
        str,
        ".has_benchmark",
        "File caching the measured throughput (delete it to measure again)",
    ),
    # Reports
    Setting(
        "report-interval",
        "METRICS_UPDATE_INTERVAL",
        parse_positive_float,
        1.0,
        "Seconds between reports to the autoscaler when something changed",
    ),
    Setting(
        "report-heartbeat",
        "REPORT_HEARTBEAT",
        parse_positive_float,
        10.0,
        "Seconds between reports when nothing changed",
    ),
    Setting(
        "report-timeout",
        "METRICS_TIMEOUT",
        parse_positive_float,
        60.0,
        "Seconds per report attempt; long, so a slow autoscaler is not sent the same counts twice",
    ),
    Setting(
        "delete-requests-format",
        "DELETE_REQUESTS_FORMAT",
        parse_choice("records", "legacy"),
        "records",
        "records (one POST of per-request records, as vastai 1.9.1) or legacy (2024-2025)",
    ),
    # Operation
    Setting(
        "use-ssl",
        "USE_SSL",
        parse_bool,
        False,
        "Serve HTTPS (TLS 1.2+, HTTP/2 by ALPN) with --tls-cert and --tls-key",
        flag=True,
    ),
    Setting(
        "tls-cert",
        "TLS_CERT",
        str,
        "/etc/instance.crt",
        "TLS certificate (chain) in PEM, as Vast's start script installs it",
    ),
    Setting("tls-key", "TLS_KEY", str, "/etc/instance.key", "TLS private key in PEM"),
    Setting(
        "drain-timeout",
        "DRAIN_TIMEOUT",
        parse_positive_float,
        30.0,
        "On SIGTERM, seconds to let in-flight requests finish before exiting",
    ),
    Setting(
        "metrics-listen",
        "METRICS_LISTEN",
        parse_optional_listen,
        "tcp:9464:interface=127.0.0.1",
        "Endpoint for Prometheus metrics, or none to disable",
    ),
    Setting(
        "log-format",
        "LOG_FORMAT",
        parse_choice("text", "json"),
        "text",
        "text, or json for one JSON object per line (log shippers)",
    ),
)

DEMO_BACKEND = Origin("http", "127.0.0.1", 8000)


@dataclass(frozen=True)
class VastEnvironment:
    """
    What the Vast platform tells an instance through its environment.

    Nothing here is required: without ``REPORT_ADDR`` the worker does not
    report, and without the public address it does not bind signatures to its
    url. That is local use.

    :ivar report_addresses: autoscaler base URLs from ``REPORT_ADDR`` (comma list).
    :ivar master_token: ``MASTER_TOKEN``, the credential of every report.
    :ivar container_id: ``CONTAINER_ID``, the worker id in reports.
    :ivar public_url: ``http://PUBLIC_IPADDR:VAST_TCP_PORT_<port>``, when both are set.
    """

    report_addresses: tuple[str, ...] = ()
    master_token: str = ""
    container_id: int = 0
    public_url: str | None = None

    @classmethod
    def from_environ(
        cls, environ: Mapping[str, str], port: int | None, *, https: bool = False
    ) -> VastEnvironment:
        """
        Read the Vast variables.

        :param environ: the process environment.
        :param port: the worker's internal port (``VAST_TCP_PORT_<port>`` maps it).
        :param https: the worker serves TLS, so its public url is ``https``.
        :raise ConfigError: for a malformed value, naming the variable.
        """
        addresses = tuple(a.rstrip("/") for a in parse_list(environ.get("REPORT_ADDR", "")))
        for address in addresses:
            if urlsplit(address).scheme not in ("http", "https"):
                raise ConfigError(f"REPORT_ADDR: not an http(s) URL: {address!r}")
        container = environ.get("CONTAINER_ID", "").strip() or "0"
        try:
            container_id = int(container)
        except ValueError:
            raise ConfigError(f"CONTAINER_ID: not a number: {container!r}") from None
        public_ip = environ.get("PUBLIC_IPADDR", "").strip()
        external = environ.get(f"VAST_TCP_PORT_{port}", "").strip() if port else ""
        public_url = None
        if public_ip and external:
            try:
                parse_port(external)
            except ValueError as e:
                raise ConfigError(f"VAST_TCP_PORT_{port}: {e}") from None
            host = f"[{public_ip}]" if ":" in public_ip else public_ip
            public_url = f"{'https' if https else 'http'}://{host}:{external}"
        return cls(addresses, environ.get("MASTER_TOKEN", ""), container_id, public_url)


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


@dataclass(frozen=True)
class WorkerConfig:
    """
    The worker daemon's settings, validated.

    :ivar backend: the model server's origin.
    :ivar listen: the strports description to serve on.
    :ivar unsecured: forward requests without signature checks.
    :ivar blocked_paths: path patterns answered 403.
    :ivar max_body_size: the largest request body, in bytes.
    :ivar header_timeout: seconds for a request line and headers, or ``None``.
    :ivar keepalive_timeout: seconds a client connection may idle between requests, or ``None``.
    :ivar connect_timeout: seconds to connect to the backend, or ``None``.
    :ivar first_byte_timeout: seconds to the backend's response headers, or ``None``.
    :ivar idle_timeout: seconds of backend silence mid-response, or ``None``.
    :ivar total_timeout: seconds for a whole exchange, or ``None``.
    :ivar backend_keepalive: seconds an idle backend connection is kept, or ``None``.
    :ivar max_backend_connections: idle backend connections kept for reuse.
    :ivar access_log: access log path, ``-`` for the daemon log, or ``None``.
    :ivar log_level: the lowest level of Vespa's events that is logged.
    :ivar demo: also run the demo model server at ``backend``.
    :ivar max_wait_time: refuse with 429 over this estimated wait (0: while
        anything is in flight), or ``None``.
    :ivar slots: requests relayed at once, ``None`` for no limit.
    :ivar default_cost: workload for a signed cost of 1 or less, or ``None``.
    :ivar workload: ``auto``, ``cost`` or a ``module:function`` calculator.
    :ivar delete_requests_format: ``records`` or ``legacy``.
    :ivar signature_mode: ``auto``, ``url`` or ``full``: what the autoscaler signs.
    :ivar replay_window: reqnum window of the replay check, ``None`` for off.
    :ivar url_binding: refuse requests signed for another worker's url.
    :ivar backend_api_key: the model server's own bearer key, or ``None``.
    :ivar http_port: the plain-HTTP ``/session/end`` port; ``None`` for the
        worker's port + 1, ``0`` for none (see :meth:`session_listen`).
    :ivar max_sessions: sessions open at once, ``None`` for no limit.
    :ivar vast: what the Vast platform told this instance.
    (The other fields are the startup, health-check, benchmark and report
    settings of the same names; see ``WORKER_SETTINGS``.)
    """

    backend: Origin
    listen: str = "tcp:3000:backlog=1024"
    unsecured: bool = False
    blocked_paths: tuple[str, ...] = ()
    max_body_size: int = 64 << 20
    header_timeout: float | None = 15.0
    keepalive_timeout: float | None = 60.0
    connect_timeout: float | None = 10.0
    first_byte_timeout: float | None = 600.0
    idle_timeout: float | None = 300.0
    total_timeout: float | None = None
    backend_keepalive: float | None = 4.0
    max_backend_connections: int = 256
    access_log: str | None = None
    log_level: LogLevel = LogLevel.info
    demo: bool = False
    max_wait_time: float | None = 30.0
    slots: int | None = None
    default_cost: float | None = None
    workload: str = "auto"
    signature_mode: str = "auto"
    replay_window: int | None = 10000
    url_binding: bool = True
    backend_api_key: str | None = None
    pubkey_timeout: float | None = 10.0
    healthcheck_endpoint: str = "auto"
    healthcheck_interval: float = 10.0
    healthcheck_retry_interval: float = 5.0
    healthcheck_timeout: float = 30.0
    healthcheck_failures: int = 3
    ready_timeout_initial: float = 1200.0
    ready_timeout_resume: float = 300.0
    startup_retry: float = 30.0
    benchmark: str = "openai_chat"
    benchmark_cache: str = ".has_benchmark"
    report_interval: float = 1.0
    report_heartbeat: float = 10.0
    report_timeout: float = 60.0
    delete_requests_format: str = "records"
    use_ssl: bool = False
    tls_cert: str = "/etc/instance.crt"
    tls_key: str = "/etc/instance.key"
    drain_timeout: float = 30.0
    metrics_listen: str | None = "tcp:9464:interface=127.0.0.1"
    http_port: int | None = None
    max_sessions: int | None = 10
    log_format: str = "text"
    vast: VastEnvironment = field(default_factory=lambda: VastEnvironment())

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
            unsecured=v["unsecured"],
            blocked_paths=v["blocked-paths"],
            max_body_size=v["max-body-size"],
            header_timeout=v["header-timeout"],
            keepalive_timeout=v["keepalive-timeout"],
            connect_timeout=v["connect-timeout"],
            first_byte_timeout=v["first-byte-timeout"],
            idle_timeout=v["idle-timeout"],
            total_timeout=v["total-timeout"],
            backend_keepalive=v["backend-keepalive"],
            max_backend_connections=v["max-backend-connections"],
            access_log=v["access-log"],
            log_level=v["log-level"],
            demo=v["demo"],
            max_wait_time=v["max-wait-time"],
            slots=slots,
            default_cost=v["default-cost"],
            workload=v["workload"],
            signature_mode=v["signature-mode"],
            replay_window=v["replay-window"],
            url_binding=v["url-binding"],
            backend_api_key=v["backend-api-key"],
            pubkey_timeout=v["pubkey-timeout"],
            healthcheck_endpoint=v["healthcheck-endpoint"],
            healthcheck_interval=v["healthcheck-interval"],
            healthcheck_retry_interval=v["healthcheck-retry-interval"],
            healthcheck_timeout=v["healthcheck-timeout"],
            healthcheck_failures=v["healthcheck-failures"],
            ready_timeout_initial=v["ready-timeout-initial"],
            ready_timeout_resume=v["ready-timeout-resume"],
            startup_retry=v["startup-retry"],
            benchmark=v["benchmark"],
            benchmark_cache=v["benchmark-cache"],
            report_interval=v["report-interval"],
            report_heartbeat=v["report-heartbeat"],
            report_timeout=v["report-timeout"],
            delete_requests_format=v["delete-requests-format"],
            use_ssl=v["use-ssl"],
            tls_cert=v["tls-cert"],
            tls_key=v["tls-key"],
            drain_timeout=v["drain-timeout"],
            metrics_listen=v["metrics-listen"],
            http_port=v["http-port"],
            max_sessions=v["max-sessions"],
            log_format=v["log-format"],
            vast=VastEnvironment.from_environ(environ, _listen_port(v), https=v["use-ssl"]),
        )
