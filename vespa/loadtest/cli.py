# -*- test-case-name: tests.test_loadtest_cli,tests.test_loadtest_e2e -*-
"""
``vespa-loadtest`` (also ``python -m vespa.loadtest``): load an endpoint
the way real callers do, watch it live, and get a report.

::

    vespa-loadtest --endpoint my-endpoint --api-key-file key.txt \\
        --payload openai_chat --rate 5 --duration 120 --html report.html

Ctrl-C once stops sending and waits for the requests in flight; twice
abandons them. The report is written either way. The exit status is 0 once
a report is written (failed requests are results, not errors), 2 for a
usage error, 1 when the run could not start.
"""

from __future__ import annotations

import argparse
import random
import signal
import sys
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any, TextIO

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import LoopingCall

from vespa.errors import VespaError
from vespa.loadtest.config import SETTINGS, LoadtestConfig
from vespa.loadtest.html import html_report
from vespa.loadtest.live import make_view
from vespa.loadtest.payloads import MODEL_LISTINGS, configured_model, load_source
from vespa.loadtest.report import text_summary, write_file, write_json
from vespa.loadtest.runner import LoadRun
from vespa.loadtest.schedule import arrival_offsets
from vespa.loadtest.target import DirectTarget, EndpointTarget, Target, fetch_json
from vespa.settings import ConfigError

__all__ = ["main", "parse", "run"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vespa-loadtest",
        description="Load a Vast endpoint (or one worker or vespa-client) at a set rate, "
        "watch it live, and get a text, JSON and HTML report.",
    )
    for setting in SETTINGS:
        names = f"--{setting.name}"
        if setting.flag:
            parser.add_argument(
                names, action="store_true", default=None, help=setting.option_help()
            )
        else:
            parser.add_argument(
                names,
                metavar=setting.name.upper().replace("-", "_"),
                default=None,
                help=setting.option_help(),
            )
    return parser


def parse(argv: list[str], environ: Mapping[str, str]) -> LoadtestConfig:
    """
    The config of ``argv`` and ``environ``.

    :raise ConfigError: a bad or missing value; :class:`SystemExit` for ``--help``.
    """
    namespace = _parser().parse_args(argv)
    given = {s.name: getattr(namespace, s.name.replace("-", "_")) for s in SETTINGS}
    return LoadtestConfig.from_sources(given, environ)


def _build_target(config: LoadtestConfig, reactor: Any) -> Target:
    if config.url is not None:
        return DirectTarget(config.url, config.client, reactor)
    return EndpointTarget(config.client, reactor)


async def _model(config: LoadtestConfig, target: Target, environ: Mapping[str, str]) -> str | None:
    """The model the probe's payloads name: given, configured, else listed by the endpoint."""
    name = config.payload
    if name not in MODEL_LISTINGS:
        return None
    model = config.model or configured_model(name, environ)
    if model:
        return str(model)
    path, list_key, name_key = MODEL_LISTINGS[name]
    listing = await fetch_json(target, path)
    models = listing.get(list_key) if isinstance(listing, dict) else None
    first = models[0] if isinstance(models, list) and models else None
    found = first.get(name_key) if isinstance(first, dict) else None
    if not isinstance(found, str) or not found:
        raise ConfigError(f"GET {path} through {target.description} lists no model; give --model")
    return found


def _asked(config: LoadtestConfig) -> dict[str, Any]:
    profile = config.profile
    if profile.ramp_s:
        rate = f"{profile.start:g} to {profile.end:g}/s over {profile.ramp_s:g} s"
    else:
        rate = f"{profile.end:g}/s"
    return {
        "payload": config.payload or config.requests_file,
        "arrivals": config.arrivals,
        "rate": rate,
        "rate_start_rps": profile.start,
        "rate_end_rps": profile.end,
        "ramp_s": profile.ramp_s,
        "requests": config.requests,
        "duration_s": config.duration,
        "max_in_flight": config.max_in_flight,
        "timeout_s": config.timeout,
    }


async def run(
    reactor: Any,
    config: LoadtestConfig,
    environ: Mapping[str, str],
    *,
    out: TextIO,
    err: TextIO,
    on_start: Any = None,
) -> dict[str, Any]:
    """
    Run the load test ``config`` describes, print the summary to ``out`` and
    write the files asked for.

    :param reactor: for network I/O and every timer.
    :param on_start: called with the :class:`LoadRun` once it runs (the CLI
        hooks Ctrl-C there).
    :return: the report's document (what ``--json`` holds).
    :raise ConfigError: the run cannot start (no model, a bad payload file).
    """
    target = _build_target(config, reactor)
    try:
        rng = random.Random(config.seed)
        source = load_source(
            config.payload,
            config.requests_file,
            environ,
            model=await _model(config, target, environ),
            max_tokens=config.max_tokens,
            stream=config.stream,
            rng=rng,
        )
        load = LoadRun(
            target,
            source,
            reactor,
            offsets=arrival_offsets(config.profile, config.arrivals, rng),
            profile=config.profile,
            requests=config.requests,
            duration=config.duration,
            max_in_flight=config.max_in_flight,
            timeout=config.timeout,
        )
        view = make_view(out, f"vespa-loadtest: {target.description}", plain=config.plain)
        ticker = LoopingCall(lambda: view.update(load.stats.snapshot(load.now())))
        ticker.clock = reactor
        started_at = datetime.now(timezone.utc)
        finished = load.start()
        ticker.start(config.interval, now=False)
        if on_start is not None:
            on_start(load)
        stats = await finished
        ticker.stop()
        view.update(stats.snapshot(load.now()))
        view.close()
    finally:
        await target.close()
    doc: dict[str, Any] = {
        "target": target.description,
        "started_at": started_at.isoformat(timespec="seconds"),
        "interrupted": load.stopping,
        "asked": _asked(config),
        **stats.summary(load.elapsed),
    }
    out.write("\n" + text_summary(doc))
    if config.json:
        write_json(config.json, doc)
        err.write(f"wrote {config.json}\n")
    if config.html:
        write_file(config.html, html_report(doc))
        err.write(f"wrote {config.html}\n")
    return doc


def _interrupts(reactor: Any, err: TextIO) -> Any:
    """Ctrl-C handling: the first stops sending, the second abandons."""

    def hook(load: LoadRun) -> None:
        def interrupted(signum: int, frame: Any) -> None:
            def stop() -> None:
                if not load.stopping:
                    err.write(
                        f"\nstopping: waiting for {load.stats.in_flight} in flight "
                        "(Ctrl-C again to abandon them)\n"
                    )
                elif not load.abandoning:
                    err.write("\nabandoning the requests in flight\n")
                load.stop()

            reactor.callFromThread(stop)

        signal.signal(signal.SIGINT, interrupted)

    return hook


def main(argv: list[str] | None = None) -> None:
    """The console script."""
    import os

    from twisted.internet import reactor
    from twisted.internet.task import react
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
        textFileLogObserver,
    )

    environ = dict(os.environ)
    try:
        config = parse(sys.argv[1:] if argv is None else argv, environ)
    except ConfigError as e:
        sys.stderr.write(f"vespa-loadtest: {e}\n")
        raise SystemExit(2) from None

    # Errors only on stderr: the client core warns once per failed attempt,
    # which would drown the live view; the report counts those failures.
    errors = LogLevelFilterPredicate(defaultLogLevel=LogLevel.error)
    observer = FilteringLogObserver(textFileLogObserver(sys.stderr), [errors])
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)

    def start(_: Any) -> Deferred[None]:
        async def go() -> None:
            try:
                await run(
                    reactor,
                    config,
                    environ,
                    out=sys.stdout,
                    err=sys.stderr,
                    on_start=_interrupts(reactor, sys.stderr),
                )
            except (ConfigError, VespaError) as e:
                sys.stderr.write(f"vespa-loadtest: {e}\n")
                raise SystemExit(1) from None

        return ensureDeferred(go())

    react(start)
