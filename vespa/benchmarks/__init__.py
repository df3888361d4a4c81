# -*- test-case-name: tests.test_benchmarks -*-
"""
Startup throughput benchmarks: how much work the model server does per second.

A benchmark is ``benchmark(backend_url, session)`` returning the maximum
throughput in workload units per second (the units of the autoscaler's
``cost``), as a plain number, a Deferred, or a coroutine. ``--benchmark``
names a built-in (:data:`BUILT_IN`) or any ``module:function``; the seed
documents' spelling ``benchmarks.openai_chat:benchmark`` finds the built-in too.

The pieces for writing one (see ``BENCHMARKS.md``):

- :class:`BackendSession`: requests relative to the backend, kept-alive;
- :func:`measure` with :class:`Request`: the shared warm-up and timed runs;
- the settings classes, read from ``VESPA_BENCHMARK_*`` variables;
- :class:`BenchmarkError`: a failure, with a reason the autoscaler is told.
"""

from __future__ import annotations

import importlib
import inspect
import os
from collections.abc import Callable, Mapping
from typing import Any, cast

from twisted.internet.defer import Deferred, maybeDeferred

from vespa.benchmarks.errors import BenchmarkError, SettingsError, positive_number
from vespa.benchmarks.runner import Request, RunResult, measure, measure_runs, read_json, send
from vespa.benchmarks.session import BackendResponse, BackendSession
from vespa.benchmarks.settings import (
    SETTINGS,
    ComfyUISettings,
    OllamaSettings,
    OpenAISettings,
    RunSettings,
    TGISettings,
)

__all__ = [
    "BUILT_IN",
    "SETTINGS",
    "BackendResponse",
    "BackendSession",
    "Benchmark",
    "BenchmarkError",
    "ComfyUISettings",
    "OllamaSettings",
    "OpenAISettings",
    "Request",
    "RunResult",
    "RunSettings",
    "SettingsError",
    "TGISettings",
    "load_benchmark",
    "measure",
    "measure_runs",
    "read_json",
    "resolve_benchmark",
    "run_benchmark",
    "send",
    "unit_of",
]

Benchmark = Callable[[str, BackendSession], Any]

#: The built-in benchmarks: name → ``module:function``.
BUILT_IN = {
    "openai_chat": "vespa.benchmarks.openai_chat:benchmark",
    "openai_completions": "vespa.benchmarks.openai_completions:benchmark",
    "tgi": "vespa.benchmarks.tgi:benchmark",
    "ollama": "vespa.benchmarks.ollama:benchmark",
    "comfyui": "vespa.benchmarks.comfyui:benchmark",
}

#: The workload unit of each built-in, for the log.
UNITS = {
    "openai_chat": "tokens",
    "openai_completions": "tokens",
    "tgi": "tokens",
    "ollama": "tokens",
    "comfyui": "units",
}


def unit_of(spec: str) -> str:
    """
    The workload unit of the benchmark ``spec`` names: ``units`` for one of
    the user's own.
    """
    return UNITS.get(built_in_name(spec) or "", "units")


def built_in_name(spec: str) -> str | None:
    """
    The built-in ``spec`` names, if any: ``tgi``, ``tgi:benchmark``,
    ``benchmarks.tgi`` and ``benchmarks.tgi:benchmark`` all name ``tgi``.
    """
    name = spec.strip().removeprefix("benchmarks.").removesuffix(":benchmark")
    return name if name in BUILT_IN else None


def _import(spec: str, module_name: str) -> Any:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        missing = e.name or ""
        if module_name == missing or module_name.startswith(missing + "."):
            raise BenchmarkError(
                f"--benchmark {spec!r}: cannot import {missing!r}: there is no such module "
                f"on the Python path; put it in the working directory ({os.getcwd()}) or "
                "add its directory to PYTHONPATH"
            ) from e
        raise BenchmarkError(
            f"--benchmark {spec!r}: {module_name} imports {missing!r}, which is not "
            "installed; install it in the worker's environment"
        ) from e
    except Exception as e:
        raise BenchmarkError(
            f"--benchmark {spec!r}: importing {module_name} failed: {type(e).__name__}: {e}"
        ) from e


def resolve_benchmark(spec: str) -> Benchmark:
    """
    Load the benchmark function named by ``spec``.

    :param spec: a built-in name (``openai_chat``), ``module:function``, or the
        seed spelling ``benchmarks.<name>:benchmark``.
    :raise BenchmarkError: saying what to fix.
    """
    target = BUILT_IN.get(built_in_name(spec) or "", spec.strip())
    module_name, _, function_name = target.partition(":")
    if not function_name or not module_name:
        raise BenchmarkError(
            f"--benchmark {spec!r}: not a built-in ({', '.join(BUILT_IN)}); "
            "name your own as module:function, e.g. mybench:benchmark"
        )
    module = _import(spec, module_name)
    function = getattr(module, function_name, None)
    if function is None:
        defined = sorted(
            name
            for name, value in vars(module).items()
            if inspect.isfunction(value)
            and value.__module__ == module.__name__
            and not name.startswith("_")
        )
        hint = f" (it defines: {', '.join(defined[:10])})" if defined else ""
        raise BenchmarkError(f"--benchmark {spec!r}: {module_name} has no {function_name!r}{hint}")
    if not callable(function):
        raise BenchmarkError(
            f"--benchmark {spec!r}: {module_name}.{function_name} is a "
            f"{type(function).__name__}, not a function"
        )
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        signature = None  # none to check (a builtin): calling it will tell
    if signature is not None:
        try:
            signature.bind("http://backend", None)
        except TypeError:
            parameters = ", ".join(str(p) for p in signature.parameters.values())
            raise BenchmarkError(
                f"--benchmark {spec!r}: {module_name}.{function_name}({parameters}) "
                "cannot be called as benchmark(backend_url, session)"
            ) from None
    return function  # type: ignore[no-any-return]


def load_benchmark(spec: str, environ: Mapping[str, str] | None = None) -> Benchmark:
    """
    Resolve ``spec`` and, for a built-in, check its settings in ``environ``
    now, so a typo is a startup error and not a failure minutes later.

    :raise BenchmarkError: saying what to fix.
    """
    function = resolve_benchmark(spec)
    name = built_in_name(spec)
    if name is not None:
        settings = SETTINGS[name].from_env(environ)
        if isinstance(settings, ComfyUISettings) and settings.workflow_file:
            from vespa.benchmarks.comfyui import load_workflow

            load_workflow(settings.workflow_file)
    return function


def run_benchmark(
    benchmark: Benchmark,
    backend_url: str,
    session: BackendSession,
    settings: RunSettings | None = None,
) -> Deferred[float]:
    """
    Run ``benchmark`` and check its result.

    :param settings: the built-in probe's settings, passed to it as its third
        argument; ``None`` calls ``benchmark(backend_url, session)`` (a
        benchmark of the user's own, or a probe reading the environment).

    :return: fires with the throughput, or fails with :class:`BenchmarkError`
        when it is not a positive finite number: a wrong number is worse than
        none, so a failed measurement is never passed on.
    """

    def call() -> Any:
        if settings is None:
            result = benchmark(backend_url, session)
        else:
            # A built-in probe: benchmark(backend_url, session, settings=None).
            result = cast(Callable[..., Any], benchmark)(backend_url, session, settings)
        if inspect.iscoroutine(result):
            return Deferred.fromCoroutine(result)
        return result

    def check(value: Any) -> float:
        return positive_number(
            value,
            f"the benchmark returned {value!r}, not a number",
            f"the benchmark measured {value!r}, not a positive throughput",
        )

    return maybeDeferred(call).addCallback(check)
