# -*- test-case-name: tests.test_client_config -*-
"""
The settings of ``vespa-client``: command line, environment, defaults.

Built on :mod:`vespa.settings` (the same declarations and parsers as the
worker, the same precedence: command line, then the environment, then
the default), with environment names of their own: the Vast ones as the
original client read them (``VAST_API_KEY``, ``VAST_ENDPOINT``,
``VAST_ACCOUNT_KEY``), ``VESPA_TIMEOUT`` and ``VESPA_MAX_CONNECTIONS`` (with
their ``PYWORKER_`` aliases), and ``VESPA_*`` for the rest, with ``CLIENT_``
in the name where a worker setting already has the plain one (so one
environment can hold both daemons' settings).

Keys: the endpoint key is
``--api-key``, else the file ``--api-key-file`` (which keeps the key out of
the process list), else ``VAST_API_KEY``, else the file
``VESPA_API_KEY_FILE``. Without one, an account key (``--account-key``, else
``VAST_ACCOUNT_KEY``, else the file ``~/.vast_api_key``) is used to look the
endpoint key up in the console API when the client starts.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from twisted.logger import LogLevel

from vespa.client.policy import Preferences
from vespa.client.router import INSTANCES
from vespa.parsers import (
    parse_bool,
    parse_bounded_int,
    parse_choice,
    parse_count,
    parse_fraction,
    parse_listen,
    parse_log_level,
    parse_non_negative_float,
    parse_port,
    parse_positive_int,
    parse_seconds,
    parse_size,
    parse_text,
    parse_url,
)
from vespa.settings import (
    ConfigError,
    Setting,
    config_fields,
    env_name,
    resolve,
    setting,
    settings_of,
)

#: How the usage errors for a missing endpoint and a missing key begin
#: (the interactive start asks for what they name).
MISSING_ENDPOINT = "--endpoint is required"
MISSING_KEY = "no API key"

#: Where the daemon listens when nothing else is said.
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8010
#: The listen backlog: Twisted's default of 50 made a burst of 2,000 callers
#: wait a second each for 37 connects (SYN retransmits); the kernel caps it
#: at ``net.core.somaxconn`` anyway.
LISTEN_BACKLOG = max(1024, socket.SOMAXCONN)
#: The strports endpoint types that take a ``backlog``.
_BACKLOG_TYPES = frozenset({"tcp", "tcp6", "ssl", "unix"})


def with_backlog(description: str, backlog: int = LISTEN_BACKLOG) -> str:
    """
    A strports ``description`` with ``backlog=`` added, unless it sets one
    or its endpoint type takes none.
    """
    args = re.split(r"(?<!\\):", description)
    if args[0].strip().lower() not in _BACKLOG_TYPES:
        return description
    if any(arg.strip().lower().startswith("backlog=") for arg in args[1:]):
        return description
    return f"{description}:backlog={backlog}"


def _vespa(name: str, *, legacy: bool = False) -> tuple[str, ...]:
    """``VESPA_<name>``, and ``PYWORKER_<name>`` where the original client read that."""
    return (f"VESPA_{name}", f"PYWORKER_{name}") if legacy else (f"VESPA_{name}",)


def _setting(
    name: str, parse: Any, default: Any, help: str, *, env: str = "", legacy: bool = False
) -> Any:
    """
    A field of :class:`ClientConfig` declared as a setting read from
    ``VESPA_<env>`` (:func:`_vespa`); ``env`` is the option's own name
    (``max-queue``: ``MAX_QUEUE``) unless given.
    """
    envs = _vespa(env or env_name(name), legacy=legacy)
    return setting(name, "", parse, default, help, envs=envs)


#: The settings that only feed a derived field of :class:`ClientConfig`.
_INPUTS: tuple[Setting[Any], ...] = (
    Setting(
        "endpoint", "", parse_text, None, "The Vast endpoint name (required)",
        envs=("VAST_ENDPOINT",),
    ),
    Setting("api-key", "", parse_text, None, "The endpoint's API key", envs=("VAST_API_KEY",)),
    Setting(
        "api-key-file", "", parse_text, None,
        "A file holding the endpoint's API key (keeps it out of the process list)",
        envs=("VESPA_API_KEY_FILE",),
    ),
    Setting(
        "account-key", "", parse_text, None,
        "Your Vast account key, to look up the endpoint key when none is given "
        "(default: ~/.vast_api_key)",
        envs=("VAST_ACCOUNT_KEY",),
    ),
    Setting(
        "autoscaler-url", "", parse_url, None,
        "The autoscaler's URL; overrides --instance [default: https://run.vast.ai]",
        envs=_vespa("AUTOSCALER_URL"),
    ),
    Setting(
        "console-url", "", parse_url, None,
        "The console API for key look-ups; overrides --instance [default: https://console.vast.ai]",
        envs=_vespa("CONSOLE_URL"),
    ),
    Setting(
        "host", "", parse_text, DEFAULT_HOST, "Address to listen on", envs=_vespa("CLIENT_HOST"),
    ),
    Setting("port", "", parse_port, DEFAULT_PORT, "Port to listen on", envs=_vespa("CLIENT_PORT")),
    Setting(
        "listen", "", parse_listen, None,
        "Twisted endpoint description to listen on; overrides --host and --port",
        envs=_vespa("CLIENT_LISTEN"),
    ),
)


def _preference(
    name: str, parse: Any, default: Any, help: str, *, legacy: bool = False
) -> Setting[Any]:
    """The default of a per-request preference, read from ``VESPA_<NAME>``."""
    return Setting(name, "", parse, default, help, envs=_vespa(env_name(name), legacy=legacy))


#: The settings giving the per-request preferences' defaults, by the field of
#: :class:`Preferences` each one sets.
_PREFERENCES: dict[str, Setting[Any]] = {
    "timeout_s": _preference(
        "timeout", parse_seconds, None,
        "Seconds for a whole request, answer included (0 = no limit); preference timeout_s",
        legacy=True,
    ),
    "max_retries": _preference(
        "max-retries", parse_bounded_int(0, 10), 3,
        "Retries per request, before its first byte (preference max_retries)",
    ),
    "retry_budget_pct": _preference(
        "retry-budget-pct", parse_fraction, 0.2,
        "Retries may add this share of recent requests, a fraction (preference retry_budget_pct)",
    ),
    "initial_backoff_ms": _preference(
        "initial-backoff-ms", parse_non_negative_float, 125.0,
        "Milliseconds before the first retry; doubled per retry up to 5 s, jittered "
        "(preference initial_backoff_ms)",
    ),
    "idempotent": _preference(
        "idempotent", parse_bool, False,
        "Requests may reach a model server twice without harm: retry them also after "
        "failures that may have delivered them (preference idempotent)",
    ),
    "hedge_delay": _preference(
        "hedge-delay", parse_seconds, None,
        "Seconds without a first byte before a second worker is raced (0 = off; "
        "preference hedge_delay)",
    ),
    "hedge_budget_pct": _preference(
        "hedge-budget-pct", parse_fraction, 0.1,
        "Hedges may add this share of recent requests, a fraction (preference hedge_budget_pct)",
    ),
    "batch_size": _preference(
        "batch-size", parse_bounded_int(1, 4096), 128,
        "Inputs per part when a list input is split (preference batch_size)",
    ),
    "max_concurrent_requests": _preference(
        "max-concurrent-requests", parse_bounded_int(1, 1024), 32,
        "Parts of one split batch in flight at once (preference max_concurrent_requests)",
    ),
}


@dataclass(frozen=True)
class ClientConfig:
    """
    The client's settings, validated: one field per setting, declared with
    its option, environment names, parser, default and help (see
    :mod:`vespa.settings`), and the fields derived from several settings.

    :ivar endpoint: the endpoint name.
    :ivar api_key: the endpoint key, or ``None`` to look it up.
    :ivar account_key: the account key to look it up with, or ``None``.
    :ivar autoscaler_url: the autoscaler's base URL (``--instance``, ``--autoscaler-url``).
    :ivar console_url: the console API's base URL (``--instance``, ``--console-url``).
    :ivar listen: the strports description to listen on (``--listen``, ``--host``, ``--port``).
    :ivar defaults: the per-request preferences when the header sets none.
    """

    endpoint: str
    api_key: str | None = field(default=None, repr=False)
    account_key: str | None = field(default=None, repr=False)
    autoscaler_url: str = INSTANCES["prod"][0]
    console_url: str = INSTANCES["prod"][1]
    listen: str = f"tcp:{DEFAULT_PORT}:interface={DEFAULT_HOST}"
    defaults: Preferences = field(default_factory=Preferences)
    instance: str = _setting(
        "instance", parse_choice(*INSTANCES), "prod",
        "The Vast instance: prod, alpha, candidate or local; sets the autoscaler and console",
    )
    route_timeout: float | None = _setting(
        "route-timeout", parse_seconds, 120.0,
        "Seconds to wait for a worker to be ready before answering 503 (0 = no limit)",
    )
    connect_timeout: float | None = _setting(
        "connect-timeout", parse_seconds, 10.0, "Seconds to connect to a worker (0 = no limit)",
        env="CLIENT_CONNECT_TIMEOUT",
    )
    first_byte_timeout: float | None = _setting(
        "first-byte-timeout", parse_seconds, 600.0,
        "Seconds from sending to a worker to its first byte; then another worker "
        "is tried (0 = no limit)",
        env="CLIENT_FIRST_BYTE_TIMEOUT",
    )
    idle_timeout: float | None = _setting(
        "idle-timeout", parse_seconds, 300.0,
        "Seconds a worker may stay silent mid-answer (0 = no limit)",
        env="CLIENT_IDLE_TIMEOUT",
    )
    max_connections: int = _setting(
        "max-connections", parse_positive_int, 100, "Idle worker connections kept for reuse",
        legacy=True,
    )
    max_in_flight: int = _setting(
        "max-in-flight", parse_positive_int, 256, "Requests handled at once; more wait in a queue"
    )
    max_queue: int = _setting(
        "max-queue", parse_count, 1024,
        "Requests waiting for a place at most; more are refused with 429",
    )
    retry_budget_min: int = _setting(
        "retry-budget-min", parse_count, 3, "Retries always allowed per 10 s, whatever the share"
    )
    default_cost: float = _setting(
        "default-cost", parse_non_negative_float, 1.0,
        "Cost sent to /route/ when neither X-Serverless-Cost nor the body gives one",
        env="CLIENT_DEFAULT_COST",
    )
    ca_file: str | None = _setting(
        "ca-file", parse_text, None,
        "PEM file of extra CA certificates to trust for https workers (Vast's root CA: "
        "https://console.vast.ai/static/jvastai_root.cer)",
    )
    max_body_size: int = _setting(
        "max-body-size", parse_size, 64 << 20, "Largest request body accepted; larger gets 413",
        env="CLIENT_MAX_BODY_SIZE",
    )
    access_log: str | None = _setting(
        "access-log", parse_text, None,
        "Write an access log line per request to this file (- for the daemon log)",
        env="CLIENT_ACCESS_LOG",
    )
    log_level: LogLevel = _setting(
        "log-level", parse_log_level, LogLevel.info, "debug, info, warning, error or critical",
        env="CLIENT_LOG_LEVEL",
    )

    @classmethod
    def from_sources(
        cls,
        given: Mapping[str, Any],
        environ: Mapping[str, str],
        *,
        home: str | None = None,
    ) -> ClientConfig:
        """
        Build the config from command-line values and the environment.

        :param given: command-line values by option name (``None``: not given).
        :param environ: the process environment.
        :param home: the home directory holding ``.vast_api_key``; the user's if ``None``.
        :raise ConfigError: a bad or missing value, naming the option.
        """
        v = resolve(CLIENT_SETTINGS, given, environ)
        if not v["endpoint"]:
            raise ConfigError(
                f"{MISSING_ENDPOINT} (or VAST_ENDPOINT): the name of your Vast "
                "serverless endpoint, e.g. --endpoint my-endpoint"
            )
        api_key = _endpoint_key(given, environ)
        account_key = None
        if api_key is None:
            account_key = v["account-key"] or _home_key(home)
            if not account_key:
                raise ConfigError(
                    f"{MISSING_KEY}: pass the endpoint's key with --api-key (or VAST_API_KEY, "
                    "or --api-key-file), or your account key with --account-key (or "
                    "VAST_ACCOUNT_KEY, or ~/.vast_api_key) to look the endpoint key up"
                )
        instance = v["instance"]
        autoscaler, console = INSTANCES[instance]
        # --listen wins, unless only --host/--port are on the command line.
        cli_address = given.get("host") is not None or given.get("port") is not None
        if v["listen"] is not None and (given.get("listen") is not None or not cli_address):
            listen = v["listen"]
        else:
            listen = f"tcp:{v['port']}:interface={_escape(v['host'] or DEFAULT_HOST)}"
        defaults = Preferences(**{name: v[s.name] for name, s in _PREFERENCES.items()})
        ca_file = v["ca-file"] or None
        if ca_file is not None and not os.path.isfile(ca_file):
            raise ConfigError(f"--ca-file: no such file: {ca_file}")
        return cls(
            **{**config_fields(cls, v), "ca_file": ca_file},
            endpoint=v["endpoint"],
            api_key=api_key,
            account_key=account_key,
            autoscaler_url=v["autoscaler-url"] or autoscaler,
            console_url=v["console-url"] or console,
            listen=listen,
            defaults=defaults,
        )


def _escape(host: str) -> str:
    """A host for a strports description: colons (IPv6) escaped."""
    return host.strip("[]").replace(":", "\\:")


def _read_key(path: str, source: str) -> str:
    try:
        with open(os.path.expanduser(path), encoding="utf-8") as f:
            key = f.read().strip()
    except OSError as e:
        raise ConfigError(f"{source}: cannot read {path}: {e.strerror or e}") from None
    if not key:
        raise ConfigError(f"{source}: {path} is empty")
    return key


def _endpoint_key(given: Mapping[str, Any], environ: Mapping[str, str]) -> str | None:
    """The endpoint key by its precedence, or ``None`` when none is given."""
    if given.get("api-key"):
        return str(given["api-key"]).strip()
    if given.get("api-key-file"):
        return _read_key(str(given["api-key-file"]), "--api-key-file")
    if environ.get("VAST_API_KEY", "").strip():
        return environ["VAST_API_KEY"].strip()
    if environ.get("VESPA_API_KEY_FILE", "").strip():
        return _read_key(environ["VESPA_API_KEY_FILE"].strip(), "VESPA_API_KEY_FILE")
    return None


def _home_key(home: str | None) -> str | None:
    path = os.path.join(home if home is not None else os.path.expanduser("~"), ".vast_api_key")
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip() or None
    except OSError:
        return None


#: Every setting of the client, in ``--help`` order.
CLIENT_SETTINGS: tuple[Setting[Any], ...] = (
    _INPUTS + tuple(_PREFERENCES.values()) + settings_of(ClientConfig)
)
