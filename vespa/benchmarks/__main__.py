# -*- test-case-name: tests.test_benchmarks -*-
"""
Run a benchmark by hand against a running server, without a worker and
without touching the cache::

    python -m vespa.benchmarks openai_chat http://127.0.0.1:8000
    VESPA_BENCHMARK_RUNS=1 python -m vespa.benchmarks mybench:benchmark http://127.0.0.1:8188

It prints the throughput the worker would use as its capacity, and exits 1
with the reason when the benchmark fails.
"""

from __future__ import annotations

import sys
from typing import Any, cast

from twisted.internet.task import react
from twisted.logger import ILogObserver, globalLogBeginner, textFileLogObserver

from vespa.benchmarks import BenchmarkError, load_benchmark, run_benchmark
from vespa.benchmarks.session import BackendSession

USAGE = "usage: python -m vespa.benchmarks BENCHMARK BACKEND_URL"


async def _main(reactor: Any, spec: str, backend_url: str) -> None:
    benchmark = load_benchmark(spec)
    session = BackendSession.create(reactor, backend_url)
    try:
        throughput = await run_benchmark(benchmark, backend_url, session)
    finally:
        await session.close()
    print(f"{throughput:.6g} units/s")


def main(argv: list[str]) -> int:
    """
    The command: ``argv`` is ``[benchmark, backend_url]``.

    :return: the exit status.
    """
    if len(argv) != 2:
        print(USAGE, file=sys.stderr)
        return 2
    printer = textFileLogObserver(sys.stderr)

    def vespa_only(event: dict[str, Any]) -> None:
        # The benchmark's own progress, without twisted.web's factory chatter.
        if str(event.get("log_namespace", "")).startswith("vespa"):
            printer(event)

    globalLogBeginner.beginLoggingTo([cast(ILogObserver, vespa_only)], redirectStandardIO=False)
    status = 0

    def run(reactor: Any) -> Any:
        from twisted.internet.defer import Deferred

        def failed(reason: Any) -> None:
            nonlocal status
            status = 1
            if reason.check(BenchmarkError):
                print(f"benchmark failed: {reason.getErrorMessage()}", file=sys.stderr)
            else:
                print(f"benchmark failed: {reason.getTraceback()}", file=sys.stderr)

        return Deferred.fromCoroutine(_main(reactor, argv[0], argv[1])).addErrback(failed)

    try:
        react(run)
    except SystemExit as e:
        return status or int(e.code or 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
