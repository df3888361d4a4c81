"""
The ``vespa-client`` console script: asking for what is missing, then
running the proxy in the foreground.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys

from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from tests.support_process import free_port, http, spawn, stop, wait_for_port
from vespa.client.cli import parse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env() -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("VESPA_", "PYWORKER_", "VAST_")) and k != "HOME"
    }
    env["HOME"] = "/nonexistent"
    env["PYTHONPATH"] = ROOT
    return env


class PromptTests(SynchronousTestCase):
    def test_asks_for_the_endpoint_then_the_key(self) -> None:
        asked: list[str] = []
        environ: dict[str, str] = {"HOME": "/nonexistent"}

        def ask(prompt: str) -> str:
            asked.append(prompt)
            return "my-endpoint"

        def ask_secret(prompt: str) -> str:
            asked.append(prompt)
            return "typed-key"

        options = parse(
            ["--port", "8123"],
            environ,
            interactive=True,
            ask=ask,
            ask_secret=ask_secret,
            out=io.StringIO(),
        )
        self.assertEqual(asked, ["Endpoint name: ", "Endpoint API key: "])
        self.assertEqual(options.config.endpoint, "my-endpoint")
        self.assertEqual(options.config.api_key, "typed-key")
        self.assertEqual(environ["VAST_API_KEY"], "typed-key")

    def test_nothing_typed_is_the_usage_error(self) -> None:
        with self.assertRaises(usage.UsageError):
            parse(
                [],
                {},
                interactive=True,
                ask=lambda p: "",
                ask_secret=lambda p: "",
                out=io.StringIO(),
            )

    def test_not_interactive_does_not_ask(self) -> None:
        def never(prompt: str) -> str:
            raise AssertionError("asked")

        with self.assertRaises(usage.UsageError) as caught:
            parse(["--endpoint", "e"], {}, interactive=False, ask=never, ask_secret=never)
        self.assertIn("no API key", str(caught.exception))


class ScriptTests(SynchronousTestCase):
    def test_usage_message_not_a_traceback(self) -> None:
        result = subprocess.run(
            [sys.executable, "-m", "vespa.client.cli"],
            capture_output=True,
            text=True,
            timeout=30,
            env=_env(),
            stdin=subprocess.DEVNULL,
        )
        self.assertEqual(result.returncode, 2)
        self.assertIn("--endpoint is required", result.stderr)
        self.assertNotIn("Traceback", result.stderr + result.stdout)

    def test_interactive_start_then_serves(self) -> None:
        """Asks, serves, and stops on Ctrl-C (``SIGINT``) without a traceback."""
        port = free_port()
        process = spawn(
            self,
            [sys.executable, "-m", "vespa.client.cli", "-i", "--port", str(port)],
            env=_env(),
            stdin=subprocess.PIPE,
        )
        assert process.stdin is not None
        process.stdin.write("typed-endpoint\ntyped-key\n")
        process.stdin.flush()
        wait_for_port(port, process)
        status, _, body = http("GET", f"http://127.0.0.1:{port}/health")
        self.assertEqual(status, 200)
        self.assertEqual(json.loads(body)["endpoint"], "typed-endpoint")
        output = stop(process, signal.SIGINT)
        self.assertEqual(process.returncode, 0, output)
        self.assertIn("Endpoint name:", output)
        self.assertNotIn("typed-key", output)
        self.assertNotIn("Traceback", output)
