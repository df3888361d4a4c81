# -*- test-case-name: tests.test_loadtest_cli -*-
"""
The settings of ``vespa-loadtest``: command line, then environment, then
default, as every Vespa program reads them (:func:`vespa.settings.resolve`).

The endpoint and key settings are the client's own rows
(:data:`vespa.client.config.CLIENT_SETTINGS`: ``--endpoint``,
``--api-key``, ``--api-key-file``, ``--account-key``, ``--instance``,
``--autoscaler-url``, ``--ca-file``, with their ``VAST_*``/``VESPA_*``
environment names); the load test's own are read from ``VESPA_LOADTEST_*``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from vespa.client.config import CLIENT_SETTINGS, ClientConfig
from vespa.loadtest.schedule import ARRIVALS, RateProfile, parse_ramp
from vespa.parsers import (
    parse_bool,
    parse_choice,
    parse_positive_float,
    parse_positive_int,
    parse_seconds,
    parse_text,
    parse_url,
)
from vespa.settings import ConfigError, Setting, resolve

__all__ = ["LOADTEST_SETTINGS", "SETTINGS", "LoadtestConfig"]

#: The client's settings a load test takes as they are.
_CLIENT_ROWS = (
    "endpoint",
    "api-key",
    "api-key-file",
    "account-key",
    "instance",
    "autoscaler-url",
    "ca-file",
)


def _ramp(text: str) -> str:
    parse_ramp(text)  # checked now, kept as given
    return text.strip()


def _row(name: str, parse: Any, default: Any, help: str, *, flag: bool = False) -> Setting[Any]:
    env = "VESPA_LOADTEST_" + name.upper().replace("-", "_")
    return Setting(name, "", parse, default, help, flag=flag, envs=(env,))


#: The load test's own settings.
LOADTEST_SETTINGS: tuple[Setting[Any], ...] = (
    _row(
        "url", parse_url, None, "Load this origin directly (a vespa-client, an --unsecured worker)",
    ),
    _row(
        "payload",
        parse_text,
        None,
        "Requests from a probe (openai_chat, openai_completions, tgi, ollama, comfyui) "
        "or module:function returning (route, payload, cost)",
    ),
    _row("requests-file", parse_text, None, "Requests from a JSONL file, one per line, in turn"),
    _row(
        "model",
        parse_text,
        None,
        "The model the probe's payloads name [default: the first listed]",
    ),
    _row("max-tokens", parse_positive_int, None, "Tokens each probe request asks for"),
    _row("stream", parse_bool, None, "Ask the OpenAI probes for streamed answers (true/false)"),
    _row("rate", parse_positive_float, None, "Requests per second to send (open loop)"),
    _row("arrivals", parse_choice(*ARRIVALS), "fixed", "fixed (evenly spaced) or poisson"),
    _row("ramp", _ramp, None, "Ramp the rate FROM:TO:SECONDS (10:100:60s), then hold TO"),
    _row("requests", parse_positive_int, None, "Requests to send in all"),
    _row("duration", parse_seconds, None, "Seconds to send for"),
    _row("max-in-flight", parse_positive_int, 256, "At most this many in flight; more skipped"),
    _row("timeout", parse_seconds, 600.0, "Seconds a request may take in all (0 = no limit)"),
    _row("interval", parse_positive_float, 1.0, "Seconds between refreshes of the live view"),
    _row("json", parse_text, None, "Write every figure to this JSON file"),
    _row("html", parse_text, None, "Write the report with its charts to this HTML file"),
    _row("plain", parse_bool, False, "Plain progress lines even on a terminal", flag=True),
    _row("seed", parse_positive_int, None, "Seed of the Poisson arrivals and the prompts"),
)

#: Every setting, in ``--help`` order.
SETTINGS: tuple[Setting[Any], ...] = (
    tuple(s for s in CLIENT_SETTINGS if s.name in _CLIENT_ROWS) + LOADTEST_SETTINGS
)


@dataclass(frozen=True)
class LoadtestConfig:
    """
    A load test's settings, validated.

    :ivar client: the client's settings (endpoint and key, or defaults for ``url``).
    :ivar url: the origin to load directly, or ``None`` for the endpoint.
    :ivar profile: the asked rate over time.
    :ivar values: every other setting by option name.
    """

    client: ClientConfig
    url: str | None
    profile: RateProfile
    values: Mapping[str, Any]

    def __getitem__(self, name: str) -> Any:
        return self.values[name]

    @classmethod
    def from_sources(cls, given: Mapping[str, Any], environ: Mapping[str, str]) -> LoadtestConfig:
        """
        Build the config from command-line values and the environment.

        :raise ConfigError: a bad, missing or contradictory value, naming the option.
        """
        v = resolve(LOADTEST_SETTINGS, given, environ)
        if v["rate"] is not None and v["ramp"] is not None:
            raise ConfigError("give --rate or --ramp, not both")
        if v["ramp"] is not None:
            profile = parse_ramp(v["ramp"])
        elif v["rate"] is not None:
            profile = RateProfile.fixed(v["rate"])
        else:
            raise ConfigError("--rate (requests per second) or --ramp FROM:TO:SECONDS is needed")
        if v["requests"] is None and v["duration"] is None:
            raise ConfigError("--requests N or --duration SECONDS is needed")
        if (v["payload"] is None) == (v["requests-file"] is None):
            raise ConfigError("give one of --payload or --requests-file")
        if v["url"] is not None:
            if given.get("endpoint"):
                raise ConfigError("give --endpoint or --url, not both")
            ca_file = resolve([s for s in SETTINGS if s.name == "ca-file"], given, environ)
            client = ClientConfig(endpoint=v["url"], ca_file=ca_file["ca-file"] or None)
            if client.ca_file is not None and not os.path.isfile(client.ca_file):
                raise ConfigError(f"--ca-file: no such file: {client.ca_file}")
        else:
            client = ClientConfig.from_sources(given, environ)
        return cls(client, v["url"], profile, v)
