"""
The examples in ``examples/`` run, as a user runs them, against the whole
chain on loopback: ``use_proxy.py`` through the daemon, ``use_module.py``
with the Python API on asyncio (Twisted's asyncio reactor).
"""

from __future__ import annotations

import os
import sys
from typing import Any

from twisted.internet import reactor
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from tests.support_client import API_KEY, ENDPOINT, start_chain

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


async def run_example(name: str, env: dict[str, str]) -> tuple[str, str, int]:
    """Run ``examples/<name>`` with ``env``; its stdout, stderr and exit code."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("VAST_", "VESPA_"))}
    clean["PYTHONPATH"] = ROOT + os.pathsep + clean.get("PYTHONPATH", "")
    out, err, code = await getProcessOutputAndValue(
        sys.executable,
        [os.path.join(ROOT, "examples", name)],
        env={**clean, **env},
        path=ROOT,
        reactor=reactor,
    )
    return out.decode(), err.decode(), code


class ExampleTests(TestCase):
    timeout = 60

    async def test_use_proxy(self) -> None:
        """use_proxy.py: a completion and a stream through the daemon."""
        env: Any = await start_chain(self)
        out, err, code = await run_example(
            "use_proxy.py", {"VESPA_CLIENT_URL": f"http://127.0.0.1:{env.port}"}
        )
        self.assertEqual(code, 0, err)
        self.assertIn(f"worker: {env.a.url}", out)
        self.assertIn("attempts: 1", out)
        answer = out.split("answer: ", 1)[1].splitlines()[0]
        streamed = out.split("streamed:", 1)[1].splitlines()[0]
        self.assertTrue(answer.strip())
        self.assertEqual(streamed.strip(), answer.strip())

    async def test_use_module(self) -> None:
        """use_module.py: the Python API on asyncio, plain and streaming."""
        env: Any = await start_chain(self, start_client=False)
        out, err, code = await run_example(
            "use_module.py",
            {
                "VAST_ENDPOINT": ENDPOINT,
                "VAST_API_KEY": API_KEY,
                "VESPA_AUTOSCALER_URL": env.autoscaler_url,
            },
        )
        self.assertEqual(code, 0, err)
        self.assertIn("attempts: 1", out)
        answer = out.split("answer: ", 1)[1].splitlines()[0]
        streamed = out.split("streamed:", 1)[1].splitlines()[0]
        self.assertTrue(answer.strip())
        self.assertEqual(streamed.strip(), answer.strip())
