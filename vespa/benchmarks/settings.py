# -*- test-case-name: tests.test_benchmarks -*-
"""
The settings of the built-in benchmarks: one small frozen object per probe,
read from the environment in one place.

Every field can be given explicitly (``OpenAISettings(max_tokens=32)``), which
is what tests and custom benchmarks do, or read with ``from_env()``, which is
what the built-in probes do when called with no settings. A bad value raises
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
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar, get_type_hints

from vespa.benchmarks.errors import SettingsError

__all__ = [
    "ComfyUISettings",
    "OllamaSettings",
    "OpenAISettings",
    "RunSettings",
    "TGISettings",
    "describe_settings",
]

S = TypeVar("S", bound="RunSettings")

Check = Callable[[Any], "str | None"]


def _at_least(minimum: int) -> Check:
    def check(value: Any) -> str | None:
        return None if value >= minimum else f"expected a whole number, at least {minimum}"

    return check


def _positive_seconds(value: Any) -> str | None:
    if value > 0 and math.isfinite(value):
        return None
    return "expected a positive number of seconds"


def _pixels(value: Any) -> str | None:
    # Latent diffusion works on 8x8 blocks: ComfyUI's EmptyLatentImage only
    # takes multiples of 8, so anything else would fail every job.
    if value >= 64 and value % 8 == 0:
        return None
    return "expected a size in pixels, a multiple of 8, at least 64"


def setting(default: Any, *env: str, check: Check | None = None, doc: str = "") -> Any:
    """
    Declare one setting of a settings class.

    :param default: its value when no variable is set.
    :param env: the environment variables it is read from, first match wins.
    :param check: returns why a value is unacceptable, or ``None``.
    :param doc: one line for the documentation table.
    """
    return field(default=default, metadata={"env": env, "check": check, "doc": doc})


def _parse(kind: Any, text: str) -> Any:
    """
    Turn the text of a variable into the type of its field.

    :raise ValueError: saying what was expected.
    """
    if kind is bool:
        word = text.lower()
        if word in ("1", "true", "yes", "on"):
            return True
        if word in ("0", "false", "no", "off"):
            return False
        raise ValueError("expected true or false")
    if kind is int:
        try:
            return int(text)
        except ValueError:
            raise ValueError("expected a whole number") from None
    if kind is float:
        try:
            return float(text)
        except ValueError:
            raise ValueError("expected a number") from None
    return text


@dataclass(frozen=True)
class RunSettings:
    """
    How the shared run loop (:func:`vespa.benchmarks.runner.measure`) measures:
    one warm-up request, then ``runs`` runs of ``concurrency`` requests at
    once, each request failing after ``timeout`` seconds.

    :raise SettingsError: when a value is out of range.
    """

    concurrency: int = setting(
        8,
        "VESPA_BENCHMARK_CONCURRENCY",
        check=_at_least(1),
        doc="requests in flight at once in each run",
    )
    runs: int = setting(
        3,
        "VESPA_BENCHMARK_RUNS",
        check=_at_least(1),
        doc="measured runs after the warm-up; the best one is the result",
    )
    timeout: float = setting(
        300.0,
        "VESPA_BENCHMARK_TIMEOUT",
        check=_positive_seconds,
        doc="seconds before one benchmark request counts as failed",
    )

    def __post_init__(self) -> None:
        for f in fields(self):
            check: Check | None = f.metadata.get("check")
            value = getattr(self, f.name)
            why = check(value) if check is not None else None
            if why is not None:
                raise SettingsError(f"{type(self).__name__}.{f.name}={value!r}: {why}")

    @classmethod
    def from_env(cls: type[S], environ: Mapping[str, str] | None = None) -> S:
        """
        Read the settings from environment variables; unset ones keep their
        defaults.

        :param environ: the variables, :data:`os.environ` by default.
        :raise SettingsError: naming the variable whose value is unusable.
        """
        environ = os.environ if environ is None else environ
        kinds = get_type_hints(cls)
        values: dict[str, Any] = {}
        for f in fields(cls):
            for name in f.metadata.get("env", ()):
                text = environ.get(name, "").strip()
                if not text:
                    continue
                try:
                    value = _parse(kinds[f.name], text)
                except ValueError as e:
                    raise SettingsError(f"{name}={text!r}: {e}") from None
                check: Check | None = f.metadata.get("check")
                why = check(value) if check is not None else None
                if why is not None:
                    raise SettingsError(f"{name}={text!r}: {why}")
                values[f.name] = value
                break
        return cls(**values)


@dataclass(frozen=True)
class OpenAISettings(RunSettings):
    """
    Settings of the ``openai_chat`` and ``openai_completions`` probes.
    """

    model: str | None = setting(
        None,
        "VESPA_BENCHMARK_MODEL",
        "MODEL_NAME",
        doc="model name sent with each request (default: discovered from the server)",
    )
    max_tokens: int = setting(
        256,
        "VESPA_BENCHMARK_MAX_TOKENS",
        check=_at_least(1),
        doc="tokens to generate per request (`max_tokens`, `max_new_tokens`, `num_predict`)",
    )
    prompt_words: int = setting(
        250,
        "VESPA_BENCHMARK_PROMPT_WORDS",
        check=_at_least(1),
        doc="random words in each prompt (about 1.3 tokens each)",
    )
    stream: bool = setting(
        True,
        "VESPA_BENCHMARK_STREAM",
        doc="openai: stream, counting `usage` or else the content deltas",
    )


@dataclass(frozen=True)
class TGISettings(RunSettings):
    """
    Settings of the ``tgi`` probe (text-generation-inference ``/generate``).
    """

    max_tokens: int = setting(256, "VESPA_BENCHMARK_MAX_TOKENS", check=_at_least(1))
    prompt_words: int = setting(250, "VESPA_BENCHMARK_PROMPT_WORDS", check=_at_least(1))


@dataclass(frozen=True)
class OllamaSettings(RunSettings):
    """
    Settings of the ``ollama`` probe (``/api/generate``).
    """

    model: str | None = setting(None, "VESPA_BENCHMARK_MODEL", "MODEL_NAME")
    max_tokens: int = setting(256, "VESPA_BENCHMARK_MAX_TOKENS", check=_at_least(1))
    prompt_words: int = setting(250, "VESPA_BENCHMARK_PROMPT_WORDS", check=_at_least(1))


@dataclass(frozen=True)
class ComfyUISettings(RunSettings):
    """
    Settings of the ``comfyui`` probe (the API wrapper's ``/generate/sync``).

    ComfyUI runs one job at a time, so the default is one job per run, as the
    original benchmark did; a workflow file replaces the built-in
    text-to-image job, and then ``steps``, ``width`` and ``height`` are the
    file's business.
    """

    concurrency: int = setting(1, "VESPA_BENCHMARK_CONCURRENCY", check=_at_least(1))
    timeout: float = setting(600.0, "VESPA_BENCHMARK_TIMEOUT", check=_positive_seconds)
    workflow_file: str | None = setting(
        None,
        "VESPA_COMFYUI_BENCHMARK_FILE",
        "PYWORKER_COMFYUI_BENCHMARK_FILE",
        doc="comfyui: a workflow (API format) or a whole `/generate/sync` payload to time",
    )
    steps: int = setting(
        20,
        "VESPA_BENCHMARK_STEPS",
        "BENCHMARK_TEST_STEPS",
        check=_at_least(1),
        doc="comfyui: sampling steps of the built-in text-to-image job",
    )
    width: int = setting(
        512,
        "VESPA_BENCHMARK_WIDTH",
        "BENCHMARK_TEST_WIDTH",
        check=_pixels,
        doc="comfyui: image width of the built-in job",
    )
    height: int = setting(
        512,
        "VESPA_BENCHMARK_HEIGHT",
        "BENCHMARK_TEST_HEIGHT",
        check=_pixels,
        doc="comfyui: image height of the built-in job",
    )


def describe_settings(cls: type[RunSettings]) -> list[tuple[str, tuple[str, ...], Any, str]]:
    """
    The settings of ``cls`` for documentation: ``(field, variables, default,
    description)`` for each one read from the environment.
    """
    return [
        (f.name, f.metadata["env"], f.default, f.metadata.get("doc", ""))
        for f in fields(cls)
        if f.metadata.get("env")
    ]
