# -*- test-case-name: tests.test_benchmarks -*-
"""
Startup throughput benchmarks: how much work the model server does per second.

A benchmark is ``benchmark(backend_url, session)`` returning the maximum
throughput in workload units per second (the units of the autoscaler's
``cost``), as a plain number, a Deferred, or a coroutine. ``--benchmark``
names a built-in (``openai_chat``) or any ``module:function``; the seed
documents' spelling ``benchmarks.openai_chat:benchmark`` finds the built-in too.
"""

from __future__ import annotations

import importlib
import inspect
import math
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred

from vespa.benchmarks.session import BackendSession

Benchmark = Callable[[str, BackendSession], Any]

BUILT_IN = {
    "openai_chat": "vespa.benchmarks.openai_chat:benchmark",
}


class BenchmarkError(Exception):
    """The benchmark could not be loaded or did not produce a measurement."""


def resolve_benchmark(spec: str) -> Benchmark:
    """
    Load the benchmark function named by ``spec``.

    :param spec: a built-in name (``openai_chat``), ``module:function``, or the
        seed spelling ``benchmarks.<name>:benchmark``.
    :raise BenchmarkError: saying what to fix.
    """
    name = spec.removeprefix("benchmarks.").removesuffix(":benchmark")
    target = BUILT_IN.get(name, spec)
    module_name, _, function_name = target.partition(":")
    if not function_name:
        raise BenchmarkError(
            f"--benchmark {spec!r}: not a built-in ({', '.join(BUILT_IN)}); give module:function"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise BenchmarkError(f"--benchmark {spec!r}: cannot import {module_name!r}: {e}") from e
    function = getattr(module, function_name, None)
    if not callable(function):
        raise BenchmarkError(
            f"--benchmark {spec!r}: {module_name} has no callable {function_name!r}"
        )
    return function  # type: ignore[no-any-return]


def run_benchmark(
    benchmark: Benchmark, backend_url: str, session: BackendSession
) -> Deferred[float]:
    """
    Run ``benchmark`` and check its result.

    :return: fires with the throughput, or fails with :class:`BenchmarkError`
        when it is not a positive finite number: a wrong number is worse than
        none, so a failed measurement is never passed on.
    """

    def call() -> Any:
        result = benchmark(backend_url, session)
        if inspect.iscoroutine(result):
            return Deferred.fromCoroutine(result)
        return result

    def check(value: Any) -> float:
        try:
            throughput = float(value)
        except (TypeError, ValueError):
            raise BenchmarkError(f"the benchmark returned {value!r}, not a number") from None
        if not (throughput > 0 and math.isfinite(throughput)):
            raise BenchmarkError(f"the benchmark measured {value!r}, not a positive throughput")
        return throughput

    return maybeDeferred(call).addCallback(check)
