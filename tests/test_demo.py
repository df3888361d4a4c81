"""
The demo package (:mod:`vespa.demo`) and where it sits: the one place the
worker, the client and the fakes meet, reached by the worker only through
``--demo``.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

import vespa
from vespa.demo import MODEL, TOKENS_PER_SECOND, demo_site
from vespa.testing.model_servers import OpenAIServer

PACKAGE = Path(vespa.__file__).parent


def imports(path: Path) -> list[tuple[str, bool]]:
    """
    The modules ``path`` imports, each with whether the import is at module
    level (rather than inside a function, run only when called).
    """
    tree = ast.parse(path.read_text(), str(path))
    nested: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            nested.update(id(n) for n in ast.walk(node) if n is not node)
    found: list[tuple[str, bool]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        else:
            continue
        found += [(name, id(node) not in nested) for name in names]
    return found


def modules(*rooms: str) -> dict[str, list[tuple[str, bool]]]:
    """The imports of every module of ``vespa`` outside ``rooms``, by path."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        if not relative.startswith(rooms):
            found[relative] = imports(path)
    return found


def under(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


class LayoutTests(SynchronousTestCase):
    """Who may import the demo and the fakes."""

    def test_production_never_imports_the_fakes(self) -> None:
        """No module outside vespa.demo and vespa.testing imports vespa.testing."""
        offenders = {
            path: name
            for path, found in modules("demo/", "testing/").items()
            for name, _ in found
            if under(name, "vespa.testing")
        }
        self.assertEqual(offenders, {})

    def test_only_the_demo_flag_imports_the_demo(self) -> None:
        """vespa.demo is imported by the worker's tap alone, and only when called."""
        importers = {
            (path, top_level)
            for path, found in modules("demo/").items()
            for name, top_level in found
            if under(name, "vespa.demo")
        }
        self.assertEqual(importers, {("worker/tap.py", False)})

    def test_worker_and_client_apart(self) -> None:
        """Outside vespa.demo, the worker never imports the client, nor the client the worker."""
        crossings = {
            (path, name)
            for path, found in modules("demo/").items()
            for name, _ in found
            if (path.startswith("worker/") and under(name, "vespa.client"))
            or (path.startswith("client/") and under(name, "vespa.worker"))
        }
        self.assertEqual(crossings, set())


class DemoSiteTests(SynchronousTestCase):
    """The demo's model server."""

    def test_serves_the_demo_model_at_its_speed(self) -> None:
        """The demo model, at 50 tokens per second: 10 tokens take 0.2 s."""
        clock = Clock()
        site = demo_site(clock)
        self.assertIsInstance(site.resource, OpenAIServer)
        stub = StubTreq(site.resource)
        body = {"model": MODEL, "prompt": "hello", "max_tokens": 10}
        d = stub.post("http://demo.invalid/v1/completions", data=json.dumps(body).encode())
        stub.flush()
        clock.advance(10 / TOKENS_PER_SECOND - 0.01)
        stub.flush()
        self.assertNoResult(d)
        clock.advance(0.01)
        stub.flush()
        response = self.successResultOf(d)
        answer = self.successResultOf(response.json())
        stub.flush()
        self.assertEqual((response.code, answer["model"]), (200, MODEL))
        self.assertEqual(len(answer["choices"][0]["text"].split()), 10)
