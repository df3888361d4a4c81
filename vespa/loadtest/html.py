# -*- test-case-name: tests.test_loadtest_report -*-
"""
``--html FILE``: the report as one self-contained page, its charts inline
SVG drawn here (no script, no network: it opens anywhere, offline, and can
be mailed as it is).

The charts: latency percentiles over time, time to first token percentiles
over time, throughput asked vs achieved, errors over time by cause, and
requests per worker. Each is an ``<svg>`` in a ``<figure>`` with its
``id`` (``latency``, ``ttft``, ``throughput``, ``errors``, ``workers``).
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from typing import Any

from vespa.loadtest.report import text_summary
from vespa.loadtest.stats import CAUSES

__all__ = ["CHARTS", "html_report"]

#: The charts of the page: id and title.
CHARTS = {
    "latency": "Latency percentiles over time (ms)",
    "ttft": "Time to first token percentiles over time (ms)",
    "throughput": "Throughput: asked vs achieved (requests/s)",
    "errors": "Errors over time (per bucket)",
    "workers": "Requests per worker",
}

_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2")
_W, _H = 720, 260
_LEFT, _RIGHT, _TOP, _BOTTOM = 60, 150, 16, 36

_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 2em auto; max-width: 760px; color: #222; }
pre { background: #f6f6f6; padding: 1em; overflow-x: auto; font-size: 12px; }
figure { margin: 2em 0; }
figcaption { font-weight: 600; margin-bottom: .5em; }
svg text { font: 11px system-ui, sans-serif; fill: #444; }
.axis { stroke: #888; } .grid { stroke: #eee; } .empty { fill: #999; }
"""


def _nice_max(value: float) -> float:
    if value <= 0:
        return 1.0
    magnitude = 10 ** len(str(int(value))) / 10
    for step in (1.0, 2.0, 2.5, 5.0, 10.0):
        if value <= step * magnitude:
            return float(step * magnitude)
    return value


def _fmt(value: float) -> str:
    return f"{value:g}" if value < 10000 else f"{value:,.0f}"


def line_chart(
    chart_id: str, xs: Sequence[float], series: dict[str, Sequence[float | None]]
) -> str:
    """An SVG line chart of ``series`` over ``xs`` (seconds); gaps where ``None``."""
    points = [v for values in series.values() for v in values if v is not None]
    if not xs or not points:
        return _empty(chart_id)
    x_max = max(xs[-1], 1e-9)
    y_max = _nice_max(max(points))
    plot_w, plot_h = _W - _LEFT - _RIGHT, _H - _TOP - _BOTTOM

    def x(t: float) -> float:
        return _LEFT + plot_w * t / x_max

    def y(v: float) -> float:
        return _TOP + plot_h * (1 - v / y_max)

    parts = [_open(chart_id)]
    for i in range(5):
        value = y_max * i / 4
        parts.append(
            f'<line class="grid" x1="{_LEFT}" x2="{_LEFT + plot_w}" y1="{y(value):.1f}" '
            f'y2="{y(value):.1f}"/><text x="{_LEFT - 6}" y="{y(value) + 4:.1f}" '
            f'text-anchor="end">{_fmt(value)}</text>'
        )
    parts.append(
        f'<line class="axis" x1="{_LEFT}" x2="{_LEFT + plot_w}" y1="{_TOP + plot_h}" '
        f'y2="{_TOP + plot_h}"/><text x="{_LEFT + plot_w / 2}" y="{_H - 6}" '
        f'text-anchor="middle">seconds from the start</text>'
    )
    for i in range(6):
        t = x_max * i / 5
        label = f"{t:.1f}" if x_max < 10 else f"{t:.0f}"
        parts.append(
            f'<text x="{x(t):.1f}" y="{_TOP + plot_h + 14}" text-anchor="middle">{label}</text>'
        )
    for n, (name, values) in enumerate(series.items()):
        colour = _COLOURS[n % len(_COLOURS)]
        runs: list[list[str]] = [[]]
        for t, v in zip(xs, values, strict=True):
            if v is None:
                runs.append([])
            else:
                runs[-1].append(f"{x(t):.1f},{y(v):.1f}")
        for run in runs:
            if len(run) == 1:
                cx, cy = run[0].split(",")
                parts.append(f'<circle cx="{cx}" cy="{cy}" r="2.5" fill="{colour}"/>')
            elif run:
                parts.append(
                    f'<polyline fill="none" stroke="{colour}" stroke-width="1.8" '
                    f'points="{" ".join(run)}"/>'
                )
        ly = _TOP + 14 + 16 * n
        parts.append(
            f'<rect x="{_W - _RIGHT + 12}" y="{ly - 9}" width="10" height="10" fill="{colour}"/>'
            f'<text x="{_W - _RIGHT + 28}" y="{ly}">{escape(name)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def bar_chart(chart_id: str, bars: dict[str, float]) -> str:
    """An SVG chart of horizontal bars, one per label."""
    if not bars:
        return _empty(chart_id)
    height = _TOP + 24 * len(bars) + 8
    label_w = 260
    plot_w = _W - label_w - 70
    top = max(bars.values()) or 1.0
    parts = [_open(chart_id, height)]
    for i, (label, value) in enumerate(bars.items()):
        y = _TOP + 24 * i
        width = plot_w * value / top
        shown = label if len(label) <= 40 else "…" + label[-39:]
        parts.append(
            f'<text x="{label_w - 8}" y="{y + 13}" text-anchor="end">{escape(shown)}</text>'
            f'<rect x="{label_w}" y="{y}" width="{width:.1f}" height="18" '
            f'fill="{_COLOURS[i % len(_COLOURS)]}"/>'
            f'<text x="{label_w + width + 6:.1f}" y="{y + 13}">{_fmt(value)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _open(chart_id: str, height: int = _H) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" width="{_W}" height="{height}" '
        f'viewBox="0 0 {_W} {height}" aria-label="{escape(CHARTS[chart_id])}">'
    )


def _empty(chart_id: str) -> str:
    return (
        _open(chart_id, 60)
        + '<text class="empty" x="10" y="30">no data for this chart in this run</text></svg>'
    )


def html_report(doc: dict[str, Any]) -> str:
    """The whole page for a run's summary document."""
    timeline = doc["timeline"]
    xs = timeline["t"]
    charts = {
        "latency": line_chart(
            "latency", xs, {f"p{p}": timeline[f"latency_p{p}_ms"] for p in (50, 95, 99)}
        ),
        "ttft": line_chart("ttft", xs, {f"p{p}": timeline[f"ttft_p{p}_ms"] for p in (50, 95)}),
        "throughput": line_chart(
            "throughput",
            xs,
            {
                "asked": timeline["asked_rps"],
                "sent": timeline["sent_rps"],
                "succeeded": timeline["succeeded_rps"],
            },
        ),
        "errors": line_chart(
            "errors",
            xs,
            {CAUSES.get(k, k): [float(n) for n in v] for k, v in timeline["errors"].items()},
        ),
        "workers": bar_chart(
            "workers", {url: float(w["requests"]) for url, w in doc["workers"].items()}
        ),
    }
    figures = "\n".join(
        f'<figure id="{chart_id}"><figcaption>{escape(CHARTS[chart_id])}</figcaption>{svg}</figure>'
        for chart_id, svg in charts.items()
    )
    title = f"Load test of {doc['target']}"
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
        f"<style>{_STYLE}</style></head><body>\n"
        f"<h1>{escape(title)}</h1>\n"
        f"<p>Buckets of {timeline['bucket_s']:g} s. Every figure is in the JSON report "
        "(<code>--json</code>).</p>\n"
        f"<pre>{escape(text_summary(doc))}</pre>\n{figures}\n</body></html>\n"
    )
