# -*- test-case-name: tests.test_client_cli -*-
"""
``vespa-client``: the local proxy in the foreground, without twistd.

Takes the same options as ``twistd -n vespa-client`` (and the same
environment). Run from a terminal without an endpoint or a key, it asks for
them, as the original ``python client.py`` did; ``--interactive`` (``-i``)
asks even when standard input is not a terminal. The key typed in is
never echoed and never put in the process list.
"""

from __future__ import annotations

import getpass
import os
import sys
from collections.abc import Callable
from typing import Any, TextIO

from twisted.python import usage

from vespa.client.config import MISSING_ENDPOINT, MISSING_KEY
from vespa.client.tap import Options

Ask = Callable[[str], str]


def prompt_missing(
    argv: list[str],
    environ: dict[str, str],
    error: str,
    *,
    ask: Ask,
    ask_secret: Ask,
    out: TextIO,
) -> bool:
    """
    Ask for what ``error`` says is missing, adding it to ``argv`` (the
    endpoint) or ``environ`` (the key, as ``VAST_API_KEY``).

    :return: whether something was asked for (so parsing is worth another try).
    """
    asked = False
    if error.startswith(MISSING_ENDPOINT):
        print("vespa-client routes your requests to a Vast serverless endpoint.", file=out)
        endpoint = ask("Endpoint name: ").strip()
        if not endpoint:
            return False
        argv += ["--endpoint", endpoint]
        asked = True
    elif error.startswith(MISSING_KEY):
        print(
            "The endpoint's API key is on console.vast.ai, under Serverless "
            "(or use --account-key to look it up).",
            file=out,
        )
        key = ask_secret("Endpoint API key: ").strip()
        if not key:
            return False
        environ["VAST_API_KEY"] = key
        asked = True
    return asked


def parse(
    argv: list[str],
    environ: dict[str, str],
    *,
    interactive: bool,
    ask: Ask = input,
    ask_secret: Ask = getpass.getpass,
    out: TextIO = sys.stdout,
) -> Options:
    """
    Parse ``argv``, asking for a missing endpoint or key when ``interactive``.

    :raise usage.UsageError: what is still wrong.
    """
    argv = list(argv)
    for _ in range(3):  # the endpoint, then the key, then give up
        options = Options()
        options.environ = environ
        try:
            options.parseOptions(argv)
            return options
        except usage.UsageError as e:
            if not interactive or not prompt_missing(
                argv, environ, str(e), ask=ask, ask_secret=ask_secret, out=out
            ):
                raise
    raise usage.UsageError("--endpoint and an API key are required")


def run(options: Options, reactor: Any = None) -> int:
    """Run the proxy in the foreground until interrupted; the exit status."""
    from twisted.internet.error import CannotListenError
    from twisted.logger import globalLogBeginner, textFileLogObserver

    from vespa.client.tap import build_client
    from vespa.log import set_log_level
    from vespa.settings import ConfigError

    if reactor is None:
        from vespa.reactor import install_for_daemon

        install_for_daemon()  # as twistd vespa-client runs: on Vespa's reactor
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)], redirectStandardIO=False)
    config = options.config
    set_log_level(config.log_level)
    try:
        client = build_client(config, reactor)
        client.service.startService()
    except (CannotListenError, ConfigError) as e:
        print(f"vespa-client: {e}", file=sys.stderr)
        return 1
    reactor.addSystemEventTrigger("before", "shutdown", client.service.stopService)
    reactor.run()
    return 0


def main(argv: list[str] | None = None) -> None:
    """The ``vespa-client`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    interactive = sys.stdin.isatty()
    for flag in ("-i", "--interactive"):
        while flag in argv:
            argv.remove(flag)
            interactive = True
    # getpass reads the terminal, not a pipe: with a piped -i, read the pipe.
    secret = getpass.getpass if sys.stdin.isatty() else input
    try:
        options = parse(argv, dict(os.environ), interactive=interactive, ask_secret=secret)
    except usage.UsageError as e:
        print(f"vespa-client: {e}", file=sys.stderr)
        print("Try vespa-client --help for usage details.", file=sys.stderr)
        raise SystemExit(2) from None
    except (EOFError, KeyboardInterrupt):
        print(file=sys.stderr)
        raise SystemExit(2) from None
    raise SystemExit(run(options))


if __name__ == "__main__":
    main()
