# -*- test-case-name: tests.test_benchmarks -*-
"""
The settings of the built-in benchmarks: one small frozen object per probe,
each setting declared once with :func:`vespa.settings.setting` (name,
environment names, parser, default, help), as every Vespa setting is.

Every field can be given explicitly (``OpenAISettings(max_tokens=32)``), which
is what tests and custom benchmarks do. The worker resolves the probe's
settings with its own (:func:`probe_settings`: its ``--benchmark-*`` options,
then the environment) and passes them to the probe; ``from_env()`` reads them
from the environment alone, as ``python -m vespa.benchmarks`` and a probe
called with no settings do. A bad value raises
:class:`~vespa.benchmarks.errors.SettingsError` naming the variable (or the
field) and what it expects; an empty variable counts as unset, because Vast
templates often carry ``MODEL_NAME=`` with nothing after it.

The first name of each setting is Vespa's; the others are the names the
original PyWorker benchmarks read, accepted so an existing template keeps
working.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from vespa.benchmarks.errors import SettingsError
from vespa.parsers import parse_bool, parse_text
from vespa.settings import ConfigError, Setting, resolve, setting, setting_fields

__all__ = [
    "SETTINGS",
    "WORKER_OPTIONS",
    "ComfyUISettings",
    "OllamaSettings",
    "OpenAISettings",
    "RunSettings",
    "TGISettings",
    "describe_settings",
    "probe_settings",
]

S = TypeVar("S", bound="RunSettings")


class _Checked:
    """
    The parser of a probe's number: ``convert`` reads the text (a failure is
    ``expected``), then ``test`` accepts the value or ``why`` says what is
    expected. :meth:`check` says the same of a value given in code.
    """

    def __init__(
        self, convert: Callable[[str], Any], expected: str, test: Callable[[Any], bool], why: str
    ) -> None:
        self.convert, self.expected, self.test, self.why = convert, expected, test, why

    def __call__(self, text: str) -> Any:
        try:
            value = self.convert(text)
        except ValueError:
            raise ValueError(self.expected) from None
        if not self.test(value):
            raise ValueError(self.why)
        return value

    def check(self, value: Any) -> str | None:
        """Why ``value`` is unacceptable, or ``None``."""
        return None if self.test(value) else self.why


def _at_least(minimum: int) -> _Checked:
    return _Checked(
        int,
        "expected a whole number",
        lambda value: value >= minimum,
        f"expected a whole number, at least {minimum}",
    )


_SECONDS = _Checked(
    float,
    "expected a number",
    lambda value: value > 0 and math.isfinite(value),
    "expected a positive number of seconds",
)

# Latent diffusion works on 8x8 blocks: ComfyUI's EmptyLatentImage only
# takes multiples of 8, so anything else would fail every job.
_PIXELS = _Checked(
    int,
    "expected a whole number",
    lambda value: value >= 64 and value % 8 == 0,
    "expected a size in pixels, a multiple of 8, at least 64",
)


# One declaration per setting, shared by the probes that read it.


def _concurrency(default: int) -> Any:
    return setting(
        "concurrency", "", _at_least(1), default, "Concurrent requests per benchmark run",
        envs=("VESPA_BENCHMARK_CONCURRENCY",),
    )


def _timeout(default: float) -> Any:
    return setting(
        "timeout", "", _SECONDS, default, "Seconds per benchmark request",
        envs=("VESPA_BENCHMARK_TIMEOUT",),
    )


def _model() -> Any:
    return setting(
        "model", "", parse_text, None,
        "Model name the benchmark requests (default: discovered from the server)",
        envs=("VESPA_BENCHMARK_MODEL", "MODEL_NAME"),
    )


def _max_tokens() -> Any:
    return setting(
        "max-tokens", "", _at_least(1), 256,
        "Tokens per benchmark request (max_tokens, max_new_tokens, num_predict)",
        envs=("VESPA_BENCHMARK_MAX_TOKENS",),
    )


def _prompt_words() -> Any:
    return setting(
        "prompt-words", "", _at_least(1), 250,
        "Random words in each benchmark prompt (about 1.3 tokens each)",
        envs=("VESPA_BENCHMARK_PROMPT_WORDS",),
    )


@dataclass(frozen=True)
class RunSettings:
    """
    How the shared run loop (:func:`vespa.benchmarks.runner.measure`) measures:
    one warm-up request, then ``runs`` runs of ``concurrency`` requests at
    once, each request failing after ``timeout`` seconds.

    :raise SettingsError: when a value is out of range.
    """

    concurrency: int = _concurrency(8)
    runs: int = setting(
        "runs", "", _at_least(1), 3, "Benchmark runs after the warm-up; the best one counts",
        envs=("VESPA_BENCHMARK_RUNS",),
    )
    timeout: float = _timeout(300.0)

    def __post_init__(self) -> None:
        for name, declared in setting_fields(type(self)):
            value = getattr(self, name)
            check = getattr(declared.parse, "check", None)
            why = check(value) if check is not None and value is not None else None
            if why is not None:
                raise SettingsError(f"{type(self).__name__}.{name}={value!r}: {why}")

    @classmethod
    def from_env(
        cls: type[S],
        environ: Mapping[str, str] | None = None,
        given: Mapping[str, Any] | None = None,
    ) -> S:
        """
        Read the settings from ``given`` values (by setting name, ``None``:
        not given), then environment variables; the rest keep their defaults.

        :param environ: the variables, :data:`os.environ` by default.
        :raise SettingsError: naming the variable whose value is unusable.
        """
        environ = os.environ if environ is None else environ
        declared = setting_fields(cls)
        try:
            values = resolve([d for _, d in declared], given or {}, environ)
        except ConfigError as e:
            raise SettingsError(f"{e.source}={e.text!r}: {e.reason}") from None
        return cls(**{name: values[d.name] for name, d in declared})


@dataclass(frozen=True)
class OpenAISettings(RunSettings):
    """
    Settings of the ``openai_chat`` and ``openai_completions`` probes.
    """

    model: str | None = _model()
    max_tokens: int = _max_tokens()
    prompt_words: int = _prompt_words()
    stream: bool = setting(
        "stream", "", parse_bool, True,
        "openai: stream, counting `usage` or else the content deltas",
        envs=("VESPA_BENCHMARK_STREAM",),
    )


@dataclass(frozen=True)
class TGISettings(RunSettings):
    """
    Settings of the ``tgi`` probe (text-generation-inference ``/generate``).
    """

    max_tokens: int = _max_tokens()
    prompt_words: int = _prompt_words()


@dataclass(frozen=True)
class OllamaSettings(RunSettings):
    """
    Settings of the ``ollama`` probe (``/api/generate``).
    """

    model: str | None = _model()
    max_tokens: int = _max_tokens()
    prompt_words: int = _prompt_words()


@dataclass(frozen=True)
class ComfyUISettings(RunSettings):
    """
    Settings of the ``comfyui`` probe (the API wrapper's ``/generate/sync``).

    ComfyUI runs one job at a time, so the default is one job per run, as the
    original benchmark did; a workflow file replaces the built-in
    text-to-image job, and then ``steps``, ``width`` and ``height`` are the
    file's business.
    """

    concurrency: int = _concurrency(1)
    timeout: float = _timeout(600.0)
    workflow_file: str | None = setting(
        "workflow-file", "", parse_text, None,
        "comfyui: a workflow (API format) or a whole `/generate/sync` payload to time",
        envs=("VESPA_COMFYUI_BENCHMARK_FILE", "PYWORKER_COMFYUI_BENCHMARK_FILE"),
    )
    steps: int = setting(
        "steps", "", _at_least(1), 20, "comfyui: sampling steps of the built-in text-to-image job",
        envs=("VESPA_BENCHMARK_STEPS", "BENCHMARK_TEST_STEPS"),
    )
    width: int = setting(
        "width", "", _PIXELS, 512, "comfyui: image width of the built-in job",
        envs=("VESPA_BENCHMARK_WIDTH", "BENCHMARK_TEST_WIDTH"),
    )
    height: int = setting(
        "height", "", _PIXELS, 512, "comfyui: image height of the built-in job",
        envs=("VESPA_BENCHMARK_HEIGHT", "BENCHMARK_TEST_HEIGHT"),
    )


#: The settings each built-in reads.
SETTINGS: dict[str, type[RunSettings]] = {
    "openai_chat": OpenAISettings,
    "openai_completions": OpenAISettings,
    "tgi": TGISettings,
    "ollama": OllamaSettings,
    "comfyui": ComfyUISettings,
}

#: The benchmark settings the worker takes on its command line too, as
#: ``--benchmark-<name>``: the probes' own declarations, without a default
#: (each probe has its own).
WORKER_OPTIONS: tuple[Setting[Any], ...] = tuple(
    replace(declared, name=f"benchmark-{declared.name}", default=None)
    for _, declared in setting_fields(OpenAISettings)
    if declared.name in ("model", "max-tokens", "concurrency", "runs", "timeout")
)


def probe_settings(
    built_in: str | None, given: Mapping[str, Any], environ: Mapping[str, str]
) -> RunSettings | None:
    """
    The settings of the built-in probe ``built_in`` (``None``: a benchmark
    of the user's own, which has none), for the worker to pass it.

    :param given: the worker's resolved values by option name; its
        ``--benchmark-*`` ones win over the environment.
    :param environ: the environment, for the probe's other settings.
    :raise SettingsError: naming the variable whose value is unusable.
    """
    if built_in is None:
        return None
    prefix = "benchmark-"
    chosen = {
        option.name.removeprefix(prefix): given.get(option.name) for option in WORKER_OPTIONS
    }
    return SETTINGS[built_in].from_env(environ, chosen)


def describe_settings(cls: type[RunSettings]) -> list[tuple[str, tuple[str, ...], Any, str]]:
    """
    The settings of ``cls`` for documentation: ``(field, variables, default,
    description)`` for each one.
    """
    return [
        (name, declared.envs, declared.default, declared.help)
        for name, declared in setting_fields(cls)
    ]
