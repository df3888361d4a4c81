# -*- test-case-name: tests.test_loadtest_report -*-
"""
The live view while a load test runs, refreshed each ``--interval``: in
flight (still routing or waiting for a first byte, or answering), done,
failed by cause (with a 429's ``Retry-After``), the rate achieved against
the rate asked, latency percentiles so far, and the workers seen with the
share of requests each got.

On a terminal it is a ``rich`` panel redrawn in place; when standard output
is not a terminal (a pipe, a CI log) it is one plain line per refresh.
Both are fed the same :meth:`~vespa.loadtest.stats.Stats.snapshot`.
"""

from __future__ import annotations

from typing import Any, Protocol, TextIO

from vespa.loadtest.stats import CAUSES

__all__ = ["PlainView", "RichView", "View", "make_view", "progress_line"]


class View(Protocol):
    """Shows the run's progress."""

    def update(self, snapshot: dict[str, Any]) -> None:
        """Show the figures so far."""

    def close(self) -> None:
        """The run is over: leave the last figures on screen."""


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}ms"


def _failed(snapshot: dict[str, Any]) -> str:
    failed = snapshot["failed"]
    if not failed:
        return "0"
    parts = []
    for cause, count in failed.items():
        label = CAUSES.get(cause, cause)
        if cause == "429" and snapshot["retry_after"]:
            label += " (Retry-After " + ",".join(sorted(snapshot["retry_after"])) + ")"
        parts.append(f"{label} {count}")
    return f"{sum(failed.values())} [{', '.join(parts)}]"


def _split(snapshot: dict[str, Any]) -> str:
    """In flight: routing or waiting for a first byte, and answering."""
    waiting = snapshot["waiting"]
    return f"{waiting} waiting, {snapshot['in_flight'] - waiting} answering"


def _spread(workers: dict[str, int]) -> str:
    total = sum(workers.values()) or 1
    return " ".join(f"{100 * n / total:.0f}%" for n in workers.values())


def progress_line(snapshot: dict[str, Any]) -> str:
    """One line of progress, for a log."""
    lat, ttft = snapshot["latency_ms"], snapshot["ttft_ms"]
    line = (
        f"[{snapshot['elapsed_s']:6.1f}s] sent {snapshot['sent']} "
        f"in flight {snapshot['in_flight']} ({_split(snapshot)}) ok {snapshot['succeeded']} "
        f"failed {_failed(snapshot)} "
        f"rate {snapshot['sent_rps']:.1f}/s of {snapshot['asked_rps']:.1f}/s "
        f"p50 {_ms(lat['p50'])} p95 {_ms(lat['p95'])} p99 {_ms(lat['p99'])}"
    )
    if ttft["p50"] is not None:
        line += f" ttft p50 {_ms(ttft['p50'])}"
    if snapshot["skipped"]:
        line += f" skipped {snapshot['skipped']}"
    workers = snapshot["workers"]
    return line + f" workers {len(workers)}" + (f" ({_spread(workers)})" if workers else "")


class PlainView:
    """One progress line per refresh, for output that is not a terminal."""

    def __init__(self, out: TextIO) -> None:
        self.out = out

    def update(self, snapshot: dict[str, Any]) -> None:
        self.out.write(progress_line(snapshot) + "\n")
        self.out.flush()

    def close(self) -> None:
        pass


class RichView:
    """A ``rich`` panel redrawn in place on a terminal."""

    def __init__(self, out: TextIO, title: str) -> None:
        from rich.console import Console
        from rich.live import Live

        self.title = title
        # Redrawn when we say (each refresh of the run's clock), not by a thread.
        self.live = Live(console=Console(file=out), auto_refresh=False, transient=False)
        self.live.start()

    def update(self, snapshot: dict[str, Any]) -> None:
        self.live.update(self.render(snapshot), refresh=True)

    def render(self, snapshot: dict[str, Any]) -> Any:
        """The panel for ``snapshot``."""
        from rich.panel import Panel
        from rich.table import Table

        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold")
        table.add_column()
        lat, ttft = snapshot["latency_ms"], snapshot["ttft_ms"]
        table.add_row("elapsed", f"{snapshot['elapsed_s']:.1f} s")
        table.add_row(
            "requests",
            f"sent {snapshot['sent']}  in flight {snapshot['in_flight']} ({_split(snapshot)})  "
            f"ok [green]{snapshot['succeeded']}[/]  skipped {snapshot['skipped']}",
        )
        table.add_row("failed", _failed(snapshot))
        table.add_row(
            "rate", f"{snapshot['sent_rps']:.1f}/s sent, {snapshot['asked_rps']:.1f}/s asked"
        )
        table.add_row(
            "latency", f"p50 {_ms(lat['p50'])}  p95 {_ms(lat['p95'])}  p99 {_ms(lat['p99'])}"
        )
        table.add_row("first token", f"p50 {_ms(ttft['p50'])}  p95 {_ms(ttft['p95'])}")
        workers = snapshot["workers"]
        total = sum(workers.values()) or 1
        table.add_row("workers", str(len(workers)))
        for url, count in list(workers.items())[:8]:
            table.add_row("", f"{url}  {count} ({100 * count / total:.0f}%)")
        return Panel(table, title=self.title)

    def close(self) -> None:
        self.live.stop()


def make_view(out: TextIO, title: str, *, plain: bool = False) -> View:
    """The rich view on a terminal, else (or when ``plain``) plain lines."""
    isatty = getattr(out, "isatty", None)
    if not plain and isatty is not None and isatty():
        return RichView(out, title)
    return PlainView(out)
