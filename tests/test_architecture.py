"""
The import rules of ``docs/architecture.md``, read from the source with
:mod:`ast`: which room of :mod:`vespa` may import which.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

import vespa

PACKAGE = Path(vespa.__file__).parent
DOCUMENT = Path(__file__).parent.parent / "docs" / "architecture.md"

#: The rooms a room must never import (each a ``vespa.<room>`` package or
#: module), as the architecture document draws them.
FORBIDDEN: dict[str, frozenset[str]] = {
    # The wire protocol is pure: no HTTP machinery, no worker, no client.
    "protocol": frozenset({"http", "worker", "client", "demo", "testing", "config"}),
    # Generic HTTP: nothing of Vast's protocol or of either side.
    "http": frozenset({"protocol", "vast", "worker", "client", "demo", "testing", "config"}),
    "worker": frozenset({"client", "testing", "loadtest"}),
    "client": frozenset({"worker", "demo", "testing", "config"}),
    "benchmarks": frozenset({"worker", "client", "demo", "testing"}),
    "loadtest": frozenset({"worker", "demo", "testing"}),
    "testing": frozenset({"worker", "client", "demo"}),
}

#: The top-level modules shared by every room; they import no room above them.
SHARED_FORBIDDEN = frozenset({"worker", "client", "demo", "testing", "loadtest"})


def imported_names(path: Path) -> Iterator[str]:
    """Every ``vespa`` name ``path`` imports (``from vespa import x`` gives ``vespa.x``)."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def rooms_imported(path: Path) -> set[str]:
    """The rooms of :mod:`vespa` (``vespa.<room>``) that ``path`` imports."""
    return {name.split(".")[1] for name in imported_names(path) if name.startswith("vespa.")}


def room_of(relative: str) -> str:
    """``worker`` for ``worker/tap.py``, ``config`` for ``config.py``."""
    return relative.split("/")[0].removesuffix(".py")


def modules() -> Iterator[tuple[str, Path]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        yield path.relative_to(PACKAGE).as_posix(), path


def packages() -> set[str]:
    """The rooms that are packages: ``worker``, ``client``, ..."""
    return {path.name for path in PACKAGE.iterdir() if (path / "__init__.py").exists()}


#: One arrow of the document's drawing: ``worker/  ──► protocol/, http/  why``.
ARROW = re.compile(r"^(?P<source>[\w/.]+)\s+(?:──►|┄►)\s+(?P<targets>.+?)(?:\s{2,}.*)?$")


def drawn_arrows() -> set[tuple[str, str]]:
    """The arrows between rooms that the document draws, as (room, room)."""
    section = DOCUMENT.read_text().split("## Who may import whom")[1]
    drawing = section.split("```")[1]
    arrows = set()
    for line in drawing.splitlines():
        match = ARROW.match(line)
        if match is None or match["targets"].startswith("("):
            continue
        for target in match["targets"].split(","):
            arrows.add((room_of(match["source"]), target.strip().removesuffix("/")))
    return arrows


class ImportRulesTests(SynchronousTestCase):
    """Each room imports only what the architecture allows it."""

    def test_rooms_import_only_what_they_may(self) -> None:
        """No module of a room imports a room that room must not know."""
        crossings = {
            (relative, forbidden)
            for relative, path in modules()
            for forbidden in rooms_imported(path) & FORBIDDEN.get(room_of(relative), frozenset())
        }
        self.assertEqual(crossings, set())

    def test_shared_modules_import_no_room_above_them(self) -> None:
        """settings.py, errors.py, log.py, ... serve every room and import none of the sides."""
        crossings = {
            (relative, forbidden)
            for relative, path in modules()
            if "/" not in relative
            for forbidden in rooms_imported(path) & SHARED_FORBIDDEN
        }
        self.assertEqual(crossings, set())

    def test_production_never_imports_the_fakes(self) -> None:
        """Only vespa.testing itself and vespa.demo import vespa.testing."""
        importers = {
            room_of(relative) for relative, path in modules() if "testing" in rooms_imported(path)
        }
        self.assertEqual(importers - {"testing"}, {"demo"})

    def test_only_the_demo_joins_worker_and_client(self) -> None:
        """The one room that imports the client and the worker's side (config) is vespa.demo."""
        joining = {
            room_of(relative)
            for relative, path in modules()
            if "client" in rooms_imported(path) and rooms_imported(path) & {"worker", "config"}
        }
        self.assertEqual(joining, {"demo"})

    def test_the_document_draws_every_arrow(self) -> None:
        """
        The arrows drawn in docs/architecture.md are exactly those between the
        packages (and to the worker's config) in the source: no arrow missing,
        none stale.
        """
        rooms = packages()
        actual = {
            (room_of(relative), target)
            for relative, path in modules()
            if room_of(relative) in rooms
            for target in rooms_imported(path) & (rooms | {"config"})
            if target != room_of(relative)
        }
        self.assertEqual(drawn_arrows(), actual)

    def test_the_rules_name_real_rooms(self) -> None:
        """Every room the rules and the document name exists in the tree (no stale rule)."""
        tree = {room_of(relative) for relative, _ in modules()}
        named = set(FORBIDDEN).union(*FORBIDDEN.values(), SHARED_FORBIDDEN)
        self.assertEqual(named - tree, set())
        text = DOCUMENT.read_text()
        self.assertEqual({p for p in packages() if f"`{p}/`" not in text}, set())


class TestModulesTests(SynchronousTestCase):
    """What tests share lives in ``tests/support*.py``, never in a test module."""

    def test_no_test_module_imports_another(self) -> None:
        here = Path(__file__).parent
        importing = {
            path.name: sorted(
                name for name in imported_names(path) if name.startswith("tests.test_")
            )
            for path in sorted(here.glob("*.py"))
        }
        self.assertEqual({name: found for name, found in importing.items() if found}, {})
