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
from vespa.settings import ConfigError, config_fields, env_name, resolve, setting, settings_of

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


def _setting(name: str, parse: Any, default: Any, help: str, *, flag: bool = False) -> Any:
    """A load-test setting, read from ``VESPA_LOADTEST_<NAME>``."""
    envs = ("VESPA_LOADTEST_" + env_name(name),)
    return setting(name, "", parse, default, help, flag=flag, envs=envs)


@dataclass(frozen=True)
class LoadtestConfig:
    """
    A load test's settings, validated: one field per setting of its own,
    declared with its option, parser, default and help (see
    :mod:`vespa.settings`), and the fields derived from several settings.

    :ivar client: the client's settings (endpoint and key, or defaults for ``url``).
    :ivar profile: the asked rate over time (``--rate`` or ``--ramp``).
    """

    client: ClientConfig
    profile: RateProfile
    url: str | None = _setting(
        "url", parse_url, None, "Load this origin directly (a vespa-client, an --unsecured worker)"
    )
    payload: str | None = _setting(
        "payload", parse_text, None,
        "Requests from a probe (openai_chat, openai_completions, tgi, ollama, comfyui) "
        "or module:function returning (route, payload, cost)",
    )
    requests_file: str | None = _setting(
        "requests-file", parse_text, None, "Requests from a JSONL file, one per line, in turn"
    )
    model: str | None = _setting(
        "model", parse_text, None, "The model the probe's payloads name [default: the first listed]"
    )
    max_tokens: int | None = _setting(
        "max-tokens", parse_positive_int, None, "Tokens each probe request asks for"
    )
    stream: bool | None = _setting(
        "stream", parse_bool, None, "Ask the OpenAI probes for streamed answers (true/false)"
    )
    rate: float | None = _setting(
        "rate", parse_positive_float, None, "Requests per second to send (open loop)"
    )
    arrivals: str = _setting(
        "arrivals", parse_choice(*ARRIVALS), "fixed", "fixed (evenly spaced) or poisson"
    )
    ramp: str | None = _setting(
        "ramp", _ramp, None, "Ramp the rate FROM:TO:SECONDS (10:100:60s), then hold TO"
    )
    requests: int | None = _setting("requests", parse_positive_int, None, "Requests to send in all")
    duration: float | None = _setting("duration", parse_seconds, None, "Seconds to send for")
    max_in_flight: int = _setting(
        "max-in-flight", parse_positive_int, 256, "At most this many in flight; more skipped"
    )
    timeout: float | None = _setting(
        "timeout", parse_seconds, 600.0, "Seconds a request may take in all (0 = no limit)"
    )
    interval: float = _setting(
        "interval", parse_positive_float, 1.0, "Seconds between refreshes of the live view"
    )
    json: str | None = _setting("json", parse_text, None, "Write every figure to this JSON file")
    html: str | None = _setting(
        "html", parse_text, None, "Write the report with its charts to this HTML file"
    )
    plain: bool = _setting(
        "plain", parse_bool, False, "Plain progress lines even on a terminal", flag=True
    )
    seed: int | None = _setting(
        "seed", parse_positive_int, None, "Seed of the Poisson arrivals and the prompts"
    )

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
        return cls(client, profile, **config_fields(cls, v))


#: The load test's own settings.
LOADTEST_SETTINGS = settings_of(LoadtestConfig)

#: Every setting, in ``--help`` order.
SETTINGS = tuple(s for s in CLIENT_SETTINGS if s.name in _CLIENT_ROWS) + LOADTEST_SETTINGS
