"""
``BENCHMARKS.md`` stays true: its complete example loads with ``--benchmark
tei_benchmark:benchmark`` and measures a fake exactly, as its testing section
shows.
"""

from __future__ import annotations

import os
import re
import sys
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from vespa.benchmarks import SETTINGS, BenchmarkError, RunSettings, resolve_benchmark
from vespa.benchmarks.settings import describe_settings
from vespa.testing.model_servers import InMemoryBackend

GUIDE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "BENCHMARKS.md")


def code_blocks() -> list[str]:
    """The guide's Python code blocks."""
    with open(GUIDE, encoding="utf-8") as f:
        text = f.read()
    return re.findall(r"```python\n(.*?)```", text, re.DOTALL)


def block_with(marker: str) -> str:
    (block,) = [b for b in code_blocks() if marker in b]
    return block


class GuideTests(SynchronousTestCase):
    """The example and the testing recipe, run as written."""

    def setUp(self) -> None:
        directory = self.mktemp()
        os.makedirs(directory)
        with open(os.path.join(directory, "tei_benchmark.py"), "w", encoding="utf-8") as f:
            f.write(block_with("async def benchmark("))
        sys.path.insert(0, directory)
        self.addCleanup(sys.path.remove, directory)
        self.addCleanup(sys.modules.pop, "tei_benchmark", None)
        self.benchmark = resolve_benchmark("tei_benchmark:benchmark")
        self.module = sys.modules["tei_benchmark"]

    def recipe(self) -> dict[str, Any]:
        """Run the testing section with the example in scope."""
        namespace: dict[str, Any] = {"benchmark": self.benchmark, "RunSettings": RunSettings}
        exec(block_with("InMemoryBackend("), namespace)
        return namespace

    def test_example_is_short(self) -> None:
        """About 30 lines, as promised."""
        lines = [line for line in block_with("async def benchmark(").splitlines() if line.strip()]
        self.assertLessEqual(len(lines), 32)

    def test_recipe_measures_exactly(self) -> None:
        """The guide's own assertion holds; the requests were batches of 32."""
        namespace = self.recipe()
        self.assertAlmostEqual(namespace["measured"], 4 * 640.0)
        server = namespace["server"]
        self.assertEqual(server.requests, 1 + 3 * (1 + 2 + 4))
        self.assertEqual({len(body["inputs"]) for body in server.bodies}, {32})

    def test_example_reports_a_wrong_answer(self) -> None:
        """A server answering the wrong number of vectors: the example's error."""
        server_class = self.recipe()["EmbedServer"]
        server = server_class(Clock())
        server.finished = lambda job: b"[[0.0]]"
        backend = InMemoryBackend(server)
        with self.assertRaises(BenchmarkError) as caught:
            backend.run(lambda session: self.benchmark(backend.URL, session))
        self.assertIn("POST /embed: expected 32 vectors, got [[0.0]]", str(caught.exception))


class SettingsTableTests(SynchronousTestCase):
    """The guide's settings table names every variable the probes read."""

    def test_every_variable_is_documented(self) -> None:
        with open(GUIDE, encoding="utf-8") as f:
            guide = f.read()
        for cls in set(SETTINGS.values()):
            for field, names, _default, _doc in describe_settings(cls):
                for name in names:
                    # The table writes `X_WIDTH` / `_HEIGHT` on one row.
                    documented = f"`{name}`" in guide or (
                        name.endswith("_HEIGHT") and f"`{name[:-6]}WIDTH` / `_HEIGHT`" in guide
                    )
                    self.assertTrue(
                        documented, f"{cls.__name__}.{field}: {name} is not in BENCHMARKS.md"
                    )
