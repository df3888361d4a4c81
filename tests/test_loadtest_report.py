"""
The load test's figures and reports: percentiles, the summary document, the
text summary, the JSON file, the HTML page, and the live view.
"""

from __future__ import annotations

import io
import json
import os

from twisted.trial.unittest import TestCase

from vespa.loadtest.html import CHARTS, html_report
from vespa.loadtest.live import PlainView, RichView, make_view, progress_line
from vespa.loadtest.report import text_summary, write_json
from vespa.loadtest.schedule import RateProfile
from vespa.loadtest.stats import Reservoir, Sample, Stats, percentile


def _stats() -> Stats:
    """Ten requests at 2/s: eight succeed (two streamed), one 429, one 5xx."""
    stats = Stats(RateProfile.fixed(2.0))
    for i in range(10):
        worker = "http://a" if i % 2 else "http://b"
        sample = Sample(i, due=i / 2, sent=i / 2, worker=worker, attempts=1, code=200)
        sample.ended = sample.sent + 0.1 * (i + 1)
        if i == 3:
            sample.code, sample.cause, sample.retry_after = 429, "429", "5"
        if i == 4:
            sample.code, sample.cause = 500, "worker_5xx"
        stats.sent(sample)
        if i in (6, 8):
            sample.ttft, sample.tokens = 0.05, 3
            stats.token_gaps(sample, [0.01, 0.02])
    stats.sending_ended = 4.5
    return stats


def _doc(stats: Stats, elapsed: float = 5.5) -> dict[str, object]:
    asked = {"payload": "openai_chat", "arrivals": "fixed", "rate": "2/s", "max_in_flight": 256}
    return {"target": "endpoint demo via http://as", "asked": asked, **stats.summary(elapsed)}


class ReservoirTests(TestCase):
    def test_bounded_and_uniform(self) -> None:
        """A million gaps kept as 1000: their median is the median of all."""
        reservoir = Reservoir(1000)
        for i in range(1_000_000):
            reservoir.add(i / 1_000_000)
        self.assertEqual(reservoir.count, 1_000_000)
        self.assertEqual(len(reservoir.values), 1000)
        median = percentile(sorted(reservoir.values), 50) or 0
        self.assertLess(abs(median - 0.5), 0.05)


class PercentileTests(TestCase):
    def test_interpolated(self) -> None:
        values = [1.0, 2.0, 3.0, 4.0]
        self.assertEqual(percentile(values, 50), 2.5)
        self.assertEqual(percentile(values, 0), 1.0)
        self.assertEqual(percentile(values, 100), 4.0)
        self.assertAlmostEqual(percentile(values, 90) or 0, 3.7)
        self.assertIsNone(percentile([], 50))


class SummaryTests(TestCase):
    def test_figures(self) -> None:
        doc = _doc(_stats())
        self.assertEqual(
            doc["counts"],
            {"arrivals": 10, "sent": 10, "succeeded": 8, "failed": 2,
             "skipped_max_in_flight": 0, "unfinished": 0},
        )  # fmt: skip
        failures = doc["failures"]
        assert isinstance(failures, dict)
        self.assertEqual({k: v for k, v in failures.items() if v}, {"429": 1, "worker_5xx": 1})
        self.assertEqual(doc["retry_after"], {"5": 1})
        self.assertEqual(doc["status_codes"], {"200": 8, "429": 1, "500": 1})
        rate = doc["rate"]
        assert isinstance(rate, dict)
        self.assertEqual(rate["asked_rps"], 2.0)
        self.assertEqual(rate["sent_rps"], 2.0)
        latency = doc["latency_ms"]
        assert isinstance(latency, dict)
        # The succeeded ones took 100, 200, 300, 600, 700, 800, 900, 1000 ms.
        self.assertEqual(latency["count"], 8)
        self.assertEqual(latency["min"], 100.0)
        self.assertEqual(latency["p50"], 650.0)
        self.assertEqual(latency["max"], 1000.0)
        self.assertEqual(doc["ttft_ms"]["count"], 2)  # type: ignore[index]
        self.assertEqual(doc["inter_token_ms"]["p50"], 15.0)  # type: ignore[index]
        workers = doc["workers"]
        assert isinstance(workers, dict)
        self.assertEqual(workers["http://a"]["requests"], 5)
        self.assertEqual(workers["http://a"]["failed"], 1)
        self.assertEqual(workers["http://b"]["failed"], 1)
        timeline = doc["timeline"]
        assert isinstance(timeline, dict)
        self.assertEqual(timeline["bucket_s"], 1.0)
        self.assertEqual(timeline["sent_rps"][:5], [2.0] * 5)
        self.assertEqual(timeline["asked_rps"][:4], [2.0] * 4)
        self.assertEqual(timeline["asked_rps"][5], 0.0)  # the schedule was over
        self.assertEqual(sum(timeline["errors"]["429"]), 1)
        self.assertEqual(len(doc["requests"]), 10)  # type: ignore[arg-type]

    def test_text_summary(self) -> None:
        text = text_summary(_doc(_stats()))
        self.assertIn("Load test of endpoint demo via http://as", text)
        self.assertIn("sent 10   succeeded 8   failed 2", text)
        self.assertIn("failed by cause: worker 5xx 1, 429 too many requests 1", text)
        self.assertIn("429 Retry-After: 5 s x1", text)
        self.assertIn("asked 2.00/s   sent 2.00/s", text)
        self.assertIn("total            p50 650 ms", text)
        self.assertIn("http://a       5 (50.0 %)", text)

    def test_json_file(self) -> None:
        doc = _doc(_stats())
        path = self.mktemp()
        write_json(path, doc)
        with open(path, encoding="utf-8") as f:
            self.assertEqual(json.load(f), json.loads(json.dumps(doc)))
        self.assertEqual(
            [n for n in os.listdir(os.path.dirname(path) or ".") if "vespa-loadtest" in n], []
        )

    def test_html_holds_every_chart_and_needs_no_network(self) -> None:
        page = html_report(_doc(_stats()))
        for chart_id, title in CHARTS.items():
            self.assertIn(f'<figure id="{chart_id}"><figcaption>{title}', page)
        self.assertEqual(page.count("<svg"), len(CHARTS))
        self.assertNotIn("<script", page)
        self.assertNotIn("src=", page)
        self.assertNotIn("<link", page)
        self.assertIn("<polyline", page)
        self.assertIn(">http://a</text>", page)  # a worker's bar

    def test_html_of_an_empty_run(self) -> None:
        page = html_report(_doc(Stats(RateProfile.fixed(1.0)), elapsed=0.0))
        self.assertEqual(page.count("no data for this chart"), len(CHARTS))

    def test_html_escapes(self) -> None:
        stats = _stats()
        stats.samples[0].worker = "http://<b>"
        page = html_report(_doc(stats))
        self.assertNotIn("<b>", page)
        self.assertIn("http://&lt;b&gt;", page)


class LiveViewTests(TestCase):
    def test_plain_line(self) -> None:
        stats = _stats()
        stats.samples[9].ended = None  # still in flight, answering
        stats.samples[8].ended = stats.samples[8].code = None  # waiting for a worker
        stats.sending_ended = None  # and the schedule still running
        line = progress_line(stats.snapshot(5.0))
        self.assertTrue(
            line.startswith("[   5.0s] sent 10 in flight 2 (1 waiting, 1 answering) ok 6 "), line
        )
        self.assertIn("failed 2 [429 too many requests (Retry-After 5) 1, worker 5xx 1]", line)
        self.assertIn("rate 2.0/s of 2.0/s", line)
        self.assertIn("workers 2 (50% 50%)", line)

    def test_plain_when_not_a_terminal(self) -> None:
        out = io.StringIO()
        view = make_view(out, "title")
        self.assertIsInstance(view, PlainView)
        view.update(_stats().snapshot(1.0))
        self.assertEqual(len(out.getvalue().splitlines()), 1)

    def test_rich_on_a_terminal(self) -> None:
        class Terminal(io.StringIO):
            def isatty(self) -> bool:
                return True

        out = Terminal()
        view = make_view(out, "vespa-loadtest: demo")
        self.assertIsInstance(view, RichView)
        view.update(_stats().snapshot(4.0))
        view.close()
        shown = out.getvalue()
        self.assertIn("vespa-loadtest: demo", shown)
        self.assertIn("in flight", shown)
        self.assertIn("http://a", shown)
        self.assertIsInstance(make_view(Terminal(), "t", plain=True), PlainView)
