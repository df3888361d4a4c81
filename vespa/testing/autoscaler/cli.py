# -*- test-case-name: tests.test_autoscaler_standin -*-
"""
``python -m vespa.testing.autoscaler``: the stand-in on its own.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from typing import Any

from Crypto.PublicKey import RSA
from twisted.internet.interfaces import IReactorTime

from vespa.testing.autoscaler.site import autoscaler_site
from vespa.testing.autoscaler.standin import Autoscaler
from vespa.testing.autoscaler.wire import REPORT_FORMATS, SIGNING_MODES


@dataclass(frozen=True)
class StandinConfig:
    """
    What ``python -m vespa.testing.autoscaler`` was asked to do.

    :ivar port: the TCP port to listen on (0: any free one).
    :ivar interface: the address to listen on.
    :ivar workers: worker urls registered as ready at start.
    :ivar key_file: a PEM private key to sign with, created if missing;
        ``None``: a fresh key for this run only.
    :ivar signing_mode: ``"url"`` or ``"full"``.
    :ivar endpoint: the endpoint name ``/route/`` accepts.
    :ivar api_key: the key ``/route/`` requires.
    :ivar report_format: ``"records"`` or ``"legacy"``: the reports expected.
    :ivar verbose: log every request handled.
    """

    port: int = 8080
    interface: str = "127.0.0.1"
    workers: tuple[str, ...] = ()
    key_file: str | None = None
    signing_mode: str = "url"
    endpoint: str = "demo-endpoint"
    api_key: str = "demo-key"
    report_format: str = "records"
    verbose: bool = False


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m vespa.testing.autoscaler",
        description="A stand-in for the Vast.ai autoscaler (run.vast.ai): signs /route/ "
        "answers with a real RSA key, records /worker_status/ and /delete_requests/.",
    )
    defaults = StandinConfig()
    parser.add_argument("--port", type=int, default=defaults.port, help="default %(default)s")
    parser.add_argument("--interface", default=defaults.interface, help="default %(default)s")
    parser.add_argument(
        "--worker",
        dest="workers",
        action="append",
        default=[],
        metavar="URL",
        help="a ready worker to route to, e.g. http://127.0.0.1:3000 (repeatable; "
        "workers that report max_perf > 0 are added by themselves)",
    )
    parser.add_argument(
        "--key-file",
        metavar="K",
        help="PEM RSA private key to sign with; created if it does not exist "
        "(default: a new key each run)",
    )
    parser.add_argument("--signing-mode", choices=SIGNING_MODES, default=defaults.signing_mode)
    parser.add_argument("--endpoint", default=defaults.endpoint, help="default %(default)s")
    parser.add_argument("--api-key", default=defaults.api_key, help="default %(default)s")
    parser.add_argument(
        "--report-format",
        choices=REPORT_FORMATS,
        default=defaults.report_format,
        help="reports expected: records (vastai 1.9.1, 18 status fields) or legacy "
        "(2024-2025); default %(default)s",
    )
    parser.add_argument("--verbose", action="store_true", help="log every request")
    return parser


def parse_args(argv: list[str] | None = None) -> StandinConfig:
    """
    Parse the command line.

    :param argv: the arguments, without the program name; ``sys.argv[1:]`` if
        ``None``.
    :raises SystemExit: a usage error (status 2) or ``--help`` (status 0).
    """
    parser = _parser()
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        parser.error(f"--port must be between 0 and 65535, not {args.port}")
    for url in args.workers:
        if not url.startswith(("http://", "https://")):
            parser.error(f"--worker must be an http:// or https:// url, not {url!r}")
    # Each option's destination is the field it sets.
    return StandinConfig(**{**vars(args), "workers": tuple(args.workers)})


def load_or_create_key(path: str) -> RSA.RsaKey:
    """
    The RSA private key in the PEM file ``path``; a new 2048-bit one, written
    there (mode 0600), if the file does not exist.

    :raises ValueError: the file does not hold an RSA private key.
    """
    if os.path.exists(path):
        with open(path, "rb") as f:
            key = RSA.import_key(f.read())
        if not key.has_private():
            raise ValueError(f"{path} holds a public key; a private key is needed to sign")
        return key
    key = RSA.generate(2048)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.export_key("PEM"))
    return key


def build_autoscaler(config: StandinConfig, clock: IReactorTime | None = None) -> Autoscaler:
    """
    The :class:`Autoscaler` that ``config`` describes, its workers registered.

    :raises ValueError: an unusable ``key_file``.
    """
    key = load_or_create_key(config.key_file) if config.key_file else None
    autoscaler = Autoscaler(
        clock,
        key=key,
        signing_mode=config.signing_mode,
        endpoint=config.endpoint,
        api_key=config.api_key,
        report_format=config.report_format,
    )
    for url in config.workers:
        autoscaler.register_worker(url)
    return autoscaler


def main(argv: list[str] | None = None) -> None:
    """
    Run the stand-in until interrupted: parse ``argv``, listen, print what a
    worker and a client need to know, run the reactor.

    :param argv: the arguments, without the program name; ``sys.argv[1:]`` if
        ``None``.
    """
    from twisted.internet import reactor as global_reactor
    from twisted.internet.error import CannotListenError
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
        textFileLogObserver,
    )

    reactor: Any = global_reactor
    config = parse_args(argv)
    try:
        autoscaler = build_autoscaler(config, reactor)
    except (OSError, ValueError) as e:
        print(f"error: --key-file {config.key_file}: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    level = LogLevel.debug if config.verbose else LogLevel.info
    globalLogBeginner.beginLoggingTo(
        [
            FilteringLogObserver(
                textFileLogObserver(sys.stdout),
                [LogLevelFilterPredicate(defaultLogLevel=level)],
            )
        ],
        redirectStandardIO=False,
    )
    try:
        port = reactor.listenTCP(
            config.port, autoscaler_site(autoscaler), interface=config.interface
        )
    except CannotListenError as e:
        print(f"error: cannot listen on {config.interface}:{config.port}: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    base = f"http://{config.interface}:{port.getHost().port}"
    lines = [
        f"autoscaler stand-in listening on {base}",
        f"  public key:   {base}/pubkey/"
        + (f"  (key file {config.key_file})" if config.key_file else ""),
        f"  endpoint:     {config.endpoint}",
        f"  api key:      {config.api_key}",
        f"  signing mode: {config.signing_mode}",
        f"  workers:      {', '.join(config.workers) or '(none yet; they register by reporting)'}",
        f"  worker env:   REPORT_ADDR={base}",
        f"  try:          curl -s {base}/route/ -H 'Authorization: Bearer {config.api_key}'"
        f' -d \'{{"endpoint": "{config.endpoint}", "cost": 1}}\'',
    ]
    print("\n".join(lines), flush=True)
    reactor.addSystemEventTrigger("before", "shutdown", autoscaler.close)
    reactor.run()
