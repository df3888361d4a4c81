# -*- test-case-name: tests.test_loadtest_payloads -*-
"""
What each request of a load test is: a benchmark probe's payloads, a
function of yours, or the lines of a JSONL file.

* ``--payload openai_chat|openai_completions|tgi|ollama|comfyui``: the
  requests the worker's startup benchmark sends (:mod:`vespa.benchmarks`),
  each with a fresh prompt, read from the same ``VESPA_BENCHMARK_*``
  settings (``--model``, ``--max-tokens`` and ``--stream`` override them).
  The OpenAI and Ollama payloads name a model: the one given, else the first
  the endpoint lists (``/v1/models``, ``/api/tags``).
* ``--payload module:function``: ``function(index)`` returns ``(route,
  payload, cost)`` (``cost`` may be ``None``: then it is read from the body
  as the client reads it); a function of no argument is called as it is,
  so the original PyWorker's ``get_test_request()`` works unchanged.
* ``--requests-file FILE``: one JSON object a line, ``{"route": "/v1/...",
  "payload": {...}, "cost": 100, "method": "POST"}`` (``path`` for
  ``route`` and ``body`` for ``payload`` are read too; only ``route`` is
  required); the lines are used in turn, again from the first when more
  requests are asked than there are lines.
"""

from __future__ import annotations

import importlib
import inspect
import json
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal, TypedDict, Unpack

from vespa.benchmarks import BUILT_IN, SETTINGS
from vespa.benchmarks.errors import SettingsError
from vespa.benchmarks.runner import Request as ProbeRequest
from vespa.benchmarks.settings import ComfyUISettings, OllamaSettings, OpenAISettings, TGISettings
from vespa.settings import ConfigError

__all__ = [
    "MODEL_LISTINGS",
    "ProbeOverrides",
    "RequestSpec",
    "Source",
    "configured_model",
    "file_source",
    "function_source",
    "load_source",
    "probe_source",
]


@dataclass(frozen=True)
class RequestSpec:
    """
    One request to send.

    :ivar path: the path (and query) at the model server.
    :ivar payload: the JSON body (``None`` for a method without one).
    :ivar cost: the workload for ``/route/``, or ``None`` to detect it.
    :ivar method: the HTTP method.
    """

    path: str
    payload: Any = None
    cost: float | None = None
    method: str = "POST"

    @property
    def streams(self) -> bool:
        """Whether the request asks for a streamed answer."""
        return isinstance(self.payload, dict) and self.payload.get("stream") is True


#: Makes request number ``index`` (from 0).
Source = Callable[[int], RequestSpec]

#: Where each probe that names a model finds the served one: path, list key, name key.
MODEL_LISTINGS: dict[str, tuple[str, str, str]] = {
    "openai_chat": ("/v1/models", "data", "id"),
    "openai_completions": ("/v1/models", "data", "id"),
    "ollama": ("/api/tags", "models", "name"),
}


def _from_probe(request: ProbeRequest) -> RequestSpec:
    return RequestSpec(request.path, request.json, request.units or None, request.method)


def probe_source(
    name: str,
    environ: Mapping[str, str],
    *,
    model: str | None = None,
    max_tokens: int | None = None,
    stream: bool | None = None,
    rng: random.Random | None = None,
) -> Source:
    """
    The payloads of built-in probe ``name``.

    :param environ: where the probe's ``VESPA_BENCHMARK_*`` settings are read.
    :param model: the model to name (required by the probes in :data:`MODEL_LISTINGS`).
    :param max_tokens: overrides ``VESPA_BENCHMARK_MAX_TOKENS``.
    :param stream: overrides ``VESPA_BENCHMARK_STREAM`` (OpenAI probes only).
    :raise ConfigError: an unknown probe, a bad setting, a missing model.
    """
    # The probes build their requests with these; one request each, from a seed.
    from vespa.benchmarks import comfyui, ollama, openai_api, tgi

    if name not in BUILT_IN:
        raise ConfigError(f"--payload: no probe {name!r}; one of {', '.join(BUILT_IN)}")
    try:
        settings: Any = SETTINGS[name].from_env(environ)
    except SettingsError as e:
        raise ConfigError(f"--payload {name}: {e}") from None
    if max_tokens is not None and hasattr(settings, "max_tokens"):
        settings = replace(settings, max_tokens=max_tokens)
    if stream is not None and isinstance(settings, OpenAISettings):
        settings = replace(settings, stream=stream)
    if name in MODEL_LISTINGS:
        model = model or settings.model
        if not model:
            raise ConfigError(f"--payload {name}: no model: give --model")
    base = (rng or random.Random()).randrange(1 << 30)

    if isinstance(settings, OpenAISettings):
        kind: Literal["chat", "completions"] = "chat" if name == "openai_chat" else "completions"
        opts = settings
        return lambda i: _from_probe(
            openai_api._request(kind, opts, str(model), opts.max_tokens, base + i)
        )
    if isinstance(settings, TGISettings):
        tgi_opts = settings
        return lambda i: _from_probe(tgi._request(tgi_opts, tgi_opts.max_tokens, base + i))
    if isinstance(settings, OllamaSettings):
        ollama_opts = settings
        return lambda i: _from_probe(
            ollama._request(ollama_opts, str(model), ollama_opts.max_tokens, base + i)
        )
    assert isinstance(settings, ComfyUISettings)
    try:
        workflow = comfyui.load_workflow(settings.workflow_file) if settings.workflow_file else None
    except SettingsError as e:
        raise ConfigError(f"--payload comfyui: {e}") from None
    comfy_opts = settings
    return lambda i: _from_probe(comfyui._request(comfy_opts, workflow, base + i))


def configured_model(name: str, environ: Mapping[str, str]) -> str | None:
    """The model probe ``name``'s settings name (``VESPA_BENCHMARK_MODEL``), if any."""
    try:
        settings = SETTINGS[name].from_env(environ) if name in SETTINGS else None
    except SettingsError as e:
        raise ConfigError(f"--payload {name}: {e}") from None
    model = getattr(settings, "model", None)
    return model if isinstance(model, str) and model else None


def _spec(value: Any, where: str) -> RequestSpec:
    """A request from a function's ``(route, payload, cost)`` or a file's object."""
    if isinstance(value, (tuple, list)) and len(value) in (2, 3):
        route, payload = value[0], value[1]
        cost = value[2] if len(value) == 3 else None
        method = "POST"
    elif isinstance(value, dict):
        route = value.get("route", value.get("path"))
        payload = value.get("payload", value.get("body"))
        cost = value.get("cost")
        method = value.get("method") or ("POST" if payload is not None else "GET")
    else:
        raise ConfigError(f"{where}: expected (route, payload, cost), got {value!r:.200}")
    if not isinstance(route, str) or not route.startswith("/"):
        raise ConfigError(f"{where}: the route must be a path such as /v1/completions")
    if cost is not None and (isinstance(cost, bool) or not isinstance(cost, (int, float))):
        raise ConfigError(f"{where}: the cost must be a number, got {cost!r:.50}")
    if not isinstance(method, str):
        raise ConfigError(f"{where}: the method must be a string")
    return RequestSpec(route, payload, None if cost is None else float(cost), method.upper())


def function_source(spec: str) -> Source:
    """
    The payloads of ``module:function``.

    :raise ConfigError: the function cannot be found.
    """
    module_name, _, function_name = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"--payload {spec}: cannot import {module_name}: {e}") from None
    function = getattr(module, function_name, None)
    if not callable(function):
        raise ConfigError(f"--payload {spec}: {module_name} has no function {function_name!r}")
    try:
        inspect.signature(function).bind(0)
    except TypeError:
        # No index: get_test_request(), as the original PyWorker's benchmarks define it.
        return lambda i: _spec(function(), f"--payload {spec} (request {i})")
    except ValueError:
        pass  # no signature to read (a builtin): pass the index
    return lambda i: _spec(function(i), f"--payload {spec} (request {i})")


def file_source(path: str) -> Source:
    """
    The requests of a JSONL file, in turn.

    :raise ConfigError: the file cannot be read, or a line is not a request.
    """
    specs: list[RequestSpec] = []
    try:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                where = f"--requests-file {path}, line {number}"
                try:
                    value = json.loads(line)
                except ValueError as e:
                    raise ConfigError(f"{where}: not JSON: {e}") from None
                specs.append(_spec(value, where))
    except OSError as e:
        raise ConfigError(f"--requests-file: cannot read {path}: {e.strerror or e}") from None
    if not specs:
        raise ConfigError(f"--requests-file {path}: no requests in it")
    return lambda i: specs[i % len(specs)]


class ProbeOverrides(TypedDict, total=False):
    """What :func:`load_source` passes on to :func:`probe_source` (see there)."""

    model: str | None
    max_tokens: int | None
    stream: bool | None
    rng: random.Random | None


def load_source(
    payload: str | None,
    requests_file: str | None,
    environ: Mapping[str, str],
    **overrides: Unpack[ProbeOverrides],
) -> Source:
    """
    The request source the options name: a file, a function or a probe.

    :param overrides: for a probe, the keyword arguments of :func:`probe_source`.
    :raise ConfigError: none or both given, or what the source itself raises.
    """
    if (payload is None) == (requests_file is None):
        raise ConfigError("give one of --payload (a probe or module:function) or --requests-file")
    if requests_file is not None:
        return file_source(requests_file)
    assert payload is not None
    if ":" in payload:
        return function_source(payload)
    return probe_source(payload, environ, **overrides)
