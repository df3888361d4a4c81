# -*- test-case-name: tests.test_loadtest_report -*-
"""
The reports of a load test, made from the summary document
(:meth:`vespa.loadtest.stats.Stats.summary` plus what was asked): the plain
text summary printed at the end, and ``--json FILE`` (the document itself).
The HTML page is :mod:`vespa.loadtest.html`.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

from vespa.loadtest.stats import CAUSES

__all__ = ["text_summary", "write_file", "write_json"]


def _ms(value: Any) -> str:
    return "-" if value is None else f"{value:,.0f} ms" if value >= 100 else f"{value:.1f} ms"


def _rate(value: Any) -> str:
    return "-" if value is None else f"{value:.2f}/s"


def _distribution(label: str, d: dict[str, Any]) -> str:
    if not d.get("count"):
        return f"  {label:<16} -"
    cells = "  ".join(f"{k} {_ms(d[k])}" for k in ("p50", "p90", "p95", "p99", "max"))
    return f"  {label:<16} {cells}"


def text_summary(doc: dict[str, Any]) -> str:
    """The plain-text summary of a run."""
    counts, rate = doc["counts"], doc["rate"]
    asked = doc["asked"]
    lines = [
        f"Load test of {doc['target']}",
        f"  payload {asked['payload']}, {asked['arrivals']} arrivals at {asked['rate']}"
        + (f", at most {asked['max_in_flight']} in flight" if asked.get("max_in_flight") else ""),
        f"  {doc['elapsed_s']:.1f} s" + (", interrupted" if doc.get("interrupted") else ""),
        "",
        "Requests",
        f"  sent {counts['sent']}   succeeded {counts['succeeded']}   failed {counts['failed']}"
        + (
            f"   skipped (max in flight) {counts['skipped_max_in_flight']}"
            if counts["skipped_max_in_flight"]
            else ""
        )
        + (f"   unfinished {counts['unfinished']}" if counts["unfinished"] else ""),
    ]
    failures = {k: v for k, v in doc["failures"].items() if v}
    if failures:
        lines.append(
            "  failed by cause: "
            + ", ".join(f"{CAUSES.get(k, k)} {v}" for k, v in failures.items())
        )
    if doc.get("retry_after"):
        lines.append(
            "  429 Retry-After: "
            + ", ".join(f"{k} s x{v}" for k, v in sorted(doc["retry_after"].items()))
        )
    codes = doc.get("status_codes") or {}
    if codes:
        lines.append("  status codes: " + ", ".join(f"{k} x{v}" for k, v in codes.items()))
    lines += [
        "",
        "Rate",
        f"  asked {_rate(rate['asked_rps'])}   sent {_rate(rate['sent_rps'])}"
        f"   succeeded {_rate(rate['succeeded_rps'])}",
        "",
        "Latency (succeeded requests)",
        _distribution("total", doc["latency_ms"]),
        _distribution("first token", doc["ttft_ms"]),
        _distribution("between tokens", doc["inter_token_ms"]),
    ]
    workers = doc.get("workers") or {}
    if workers:
        lines += ["", f"Workers ({len(workers)})"]
        total = sum(w["requests"] for w in workers.values()) or 1
        width = max(len(url) for url in workers)
        for url, w in workers.items():
            lines.append(
                f"  {url:<{width}}  {w['requests']:>6} ({100 * w['requests'] / total:4.1f} %)"
                f"  ok {w['succeeded']:>6}  failed {w['failed']:>5}"
                f"  p50 {_ms(w['latency_p50_ms'])}"
            )
    return "\n".join(lines) + "\n"


def write_file(path: str, text: str) -> None:
    """Write ``text`` to ``path`` whole: a new file, renamed over the old one."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, temporary = tempfile.mkstemp(dir=directory, prefix=".vespa-loadtest-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def write_json(path: str, doc: dict[str, Any]) -> None:
    """``--json FILE``: every figure of the run."""
    write_file(path, json.dumps(doc, indent=2) + "\n")
