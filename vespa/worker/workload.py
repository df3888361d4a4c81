# -*- test-case-name: tests.test_workload -*-
"""
Each request's workload, computed by the worker from its payload.

The autoscaler compares a worker's load with its ``max_perf``, so a request's
workload must be in the unit of the benchmark that measured ``max_perf``.
The autoscaler's ``cost`` is no longer signed (only the
url is), so the worker computes the workload itself, as the official worker
does. ``--workload`` chooses how:

``auto`` (the default), by the benchmark kind:

- ``openai_chat``, ``openai_completions``, ``tgi``, ``ollama``: one unit per
  generated token, as those benchmarks count. A request's workload is the
  tokens it asks for, in whichever spelling its API uses:
  ``max_completion_tokens`` or ``max_tokens`` (OpenAI, times ``n`` choices),
  ``parameters.max_new_tokens`` (TGI), ``options.num_predict`` (Ollama).
  When none is given (or Ollama's ``-1``/``-2``, "until done"), the request
  counts :data:`DEFAULT_MAX_TOKENS`, the tokens of one benchmark request.
- ``comfyui``: :data:`~vespa.benchmarks.comfyui.JOB_UNITS` per job, the
  benchmark's unit.
- a benchmark of the user's (``module:function``): its unit is unknown here,
  so the autoscaler's ``cost`` is used, as with ``cost``.

``cost``: the autoscaler's ``cost`` (a cost of 1 or less counts
``--default-cost`` when set), as Vespa did before.

``module:function``: the user's calculator, called with the payload (the
parsed JSON, or ``None`` when the body is not JSON or there is none) and
returning a number.

Whatever the source, the result is a finite number in ``[0, MAX_WORKLOAD]``.
A calculator that raises, or a value that is NaN, infinite, negative or over
:data:`MAX_WORKLOAD`, counts the default instead, with one warning for the
first one (the rest are counted in :attr:`Workload.fallbacks`): never a 500,
never a number that poisons the reports.

Only payloads up to :data:`MAX_PARSED_PAYLOAD` bytes are parsed, so that no
request holds the reactor for long; a larger one counts the default.
"""

from __future__ import annotations

import importlib
import json
import math
from collections.abc import Callable
from typing import Any

from vespa.benchmarks import built_in_name
from vespa.benchmarks.comfyui import JOB_UNITS
from vespa.benchmarks.settings import OpenAISettings
from vespa.log import get_logger
from vespa.protocol.envelope import NOT_PARSED

log = get_logger(__name__)

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "MAX_PARSED_PAYLOAD",
    "MAX_WORKLOAD",
    "Calculator",
    "Workload",
    "WorkloadError",
    "comfyui_jobs",
    "generated_tokens",
    "load_calculator",
]

#: The workload of a token request that does not say how many it wants: the
#: tokens of one benchmark request (``VESPA_BENCHMARK_MAX_TOKENS``' default).
DEFAULT_MAX_TOKENS: float = float(OpenAISettings.max_tokens)

#: The most one request may weigh (a billion units); anything above is a
#: mistake or an attack, and counts the default.
MAX_WORKLOAD = 1e9

#: The largest payload parsed for its workload: parsing a JSON document costs
#: about 20 ms per MiB on the reactor thread in the worst shapes.
MAX_PARSED_PAYLOAD = 1 << 20

#: The workload when nothing better is known, for a benchmark of the user's
#: (the official worker's ``DEFAULT_WORKLOAD``).
DEFAULT_WORKLOAD = 100.0

#: A calculator: the payload (parsed JSON, or ``None``) to a workload.
Calculator = Callable[[Any], float]


class WorkloadError(ValueError):
    """``--workload`` names a calculator that cannot be loaded."""


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        return float(value)
    except OverflowError:  # an int too large for a float: as good as infinite
        return math.inf


def generated_tokens(payload: Any) -> float:
    """
    The tokens a text-generation request asks for, in any API's spelling
    (see the module docstring); :data:`DEFAULT_MAX_TOKENS` when it does not say.

    :param payload: the parsed payload, or ``None``.
    """
    if not isinstance(payload, dict):
        return DEFAULT_MAX_TOKENS
    for name in ("max_completion_tokens", "max_tokens"):
        tokens = _number(payload.get(name))
        if tokens is not None:
            choices = _number(payload.get("n"))
            return tokens * choices if choices is not None and choices >= 1 else tokens
    parameters = payload.get("parameters")
    if isinstance(parameters, dict):
        tokens = _number(parameters.get("max_new_tokens"))
        if tokens is not None:
            return tokens
    options = payload.get("options")
    if isinstance(options, dict):
        tokens = _number(options.get("num_predict"))
        # Ollama's -1 (until the end) and -2 (fill the context) ask for no number.
        if tokens is not None and tokens not in (-1.0, -2.0):
            return tokens
    return DEFAULT_MAX_TOKENS


def comfyui_jobs(payload: Any) -> float:
    """
    One ComfyUI job: :data:`~vespa.benchmarks.comfyui.JOB_UNITS`, the unit of
    the ``comfyui`` benchmark.

    :param payload: the parsed payload, or ``None`` (not read).
    """
    return JOB_UNITS


#: The ``auto`` calculator of each built-in benchmark.
_BY_BENCHMARK: dict[str, Calculator] = {
    "openai_chat": generated_tokens,
    "openai_completions": generated_tokens,
    "tgi": generated_tokens,
    "ollama": generated_tokens,
    "comfyui": comfyui_jobs,
}


#: The default workload of each built-in benchmark's unit: one benchmark
#: request. A benchmark of the user's has :data:`DEFAULT_WORKLOAD`.
_DEFAULTS: dict[str, float] = {
    kind: JOB_UNITS if calculator is comfyui_jobs else DEFAULT_MAX_TOKENS
    for kind, calculator in _BY_BENCHMARK.items()
}


def load_calculator(spec: str) -> Calculator:
    """
    Import the user's calculator ``module:function``.

    :raises WorkloadError: saying what to fix.
    """
    module_name, _, function_name = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:
        raise WorkloadError(
            f"--workload {spec!r}: cannot import {module_name}: {type(e).__name__}: {e}"
        ) from None
    function = getattr(module, function_name, None)
    if not callable(function):
        raise WorkloadError(f"--workload {spec!r}: {module_name} has no function {function_name!r}")
    return function  # type: ignore[no-any-return]


class Workload:
    """
    Computes the workload of each request (see the module docstring).

    :param source: ``auto``, ``cost`` or ``module:function``.
    :param benchmark: the ``--benchmark`` that measured ``max_perf``.
    :param default_cost: with ``cost``, the workload of a cost of 1 or less.
    :raises WorkloadError: if a ``module:function`` cannot be loaded.
    :ivar fallbacks: how many requests counted the default because the
        calculator failed or gave an unusable value.
    """

    def __init__(self, source: str, benchmark: str, default_cost: float | None = None) -> None:
        kind = built_in_name(benchmark)
        self._default = _DEFAULTS.get(kind or "", DEFAULT_WORKLOAD)
        self._default_cost = default_cost
        self._calculator: Calculator | None
        if source == "cost" or (source == "auto" and kind is None):
            self._calculator = None
            self.description = "the autoscaler's cost"
        elif source == "auto":
            assert kind is not None
            self._calculator = _BY_BENCHMARK[kind]
            self.description = f"{self._calculator.__name__} (the {kind} benchmark's unit)"
        else:
            self._calculator = load_calculator(source)
            self.description = source
        self.fallbacks = 0

    @property
    def default(self) -> float:
        """The workload counted when the calculator cannot say."""
        return self._default

    @property
    def uses_cost(self) -> bool:
        """Whether the workload is the autoscaler's ``cost``, not the payload."""
        return self._calculator is None

    def of(self, payload: bytes | None, cost: float | None, parsed: Any = NOT_PARSED) -> float:
        """
        The workload of one request, finite and in ``[0, MAX_WORKLOAD]``.

        :param payload: the payload's bytes as relayed, or ``None`` (a request
            without a body, or a passthrough whose body is read later).
        :param cost: the ``cost`` the autoscaler attached, or ``None``.
        :param parsed: the payload's value when the envelope parser built it
            (:attr:`~vespa.protocol.envelope.Envelope.payload`): then
            ``payload`` is not parsed again.
        """
        if self._calculator is None:
            claimed = 1.0 if cost is None else cost
            if claimed <= 1 and self._default_cost is not None:
                claimed = self._default_cost
            return self._checked(claimed)
        try:
            value = self._calculator(self._parse(payload) if parsed is NOT_PARSED else parsed)
        except Exception as e:
            return self._fallback(f"the calculator raised {type(e).__name__}: {e}")
        return self._checked(value)

    def _parse(self, payload: bytes | None) -> Any:
        if payload is None or len(payload) > MAX_PARSED_PAYLOAD:
            return None
        try:
            return json.loads(payload)
        except Exception:
            # Not JSON (or too deep): the calculator decides what that weighs.
            return None

    def _checked(self, value: object) -> float:
        number = _number(value)
        if number is None:
            return self._fallback(f"it gave {value!r:.40}, not a number")
        # NaN fails this test too.
        if not 0.0 <= number <= MAX_WORKLOAD:
            return self._fallback(f"it gave {number!r}, not in [0, {MAX_WORKLOAD:g}]")
        return number

    def _fallback(self, why: str) -> float:
        self.fallbacks += 1
        if self.fallbacks == 1:
            log.warn(
                "The workload of a request cannot be computed with {source}: {why}; "
                "counting {default:g} for it and for every such request "
                "(logged once)",
                source=self.description,
                why=why,
                default=self._default,
            )
        return self._default
