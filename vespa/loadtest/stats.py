# -*- test-case-name: tests.test_loadtest_report -*-
"""
The figures of a load test: one :class:`Sample` per request, gathered by
:class:`Stats`, summed up by :meth:`Stats.summary` into the one document
every report (text, JSON, HTML) and the live view are made from.

Times are seconds from the start of the run. Latency is from sending to
the end of the answer; time to first token (streamed answers only) from
sending to the first event carrying text; the inter-token gaps are the times
between chunks that carried text (of the requests that succeeded, a
uniform sample of them in a long run).
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from vespa.loadtest.schedule import RateProfile

__all__ = ["CAUSES", "Sample", "Stats", "percentile"]

#: Why a request failed, by the key the reports use, with its label.
CAUSES: dict[str, str] = {
    "route": "routing (autoscaler)",
    "worker_4xx": "worker 4xx",
    "worker_5xx": "worker 5xx",
    "429": "429 too many requests",
    "connection": "connection",
    "timeout": "timeout",
    "client": "refused by the client",
    "abandoned": "abandoned",
}

#: The percentiles reported.
PERCENTILES = (50, 90, 95, 99)

#: Seconds over which the live view measures the current send rate.
RECENT_WINDOW = 5.0

#: Most time buckets in the charts; longer runs get wider buckets.
MAX_BUCKETS = 120

#: Inter-token gaps kept for their percentiles: a long streamed run has
#: millions; a uniform sample of this many gives the same percentiles.
GAP_SAMPLE = 100_000


def percentile(values: Sequence[float], pct: float) -> float | None:
    """
    The ``pct`` percentile of sorted ``values``, interpolated between ranks
    (as numpy's default); ``None`` for no values.
    """
    if not values:
        return None
    rank = (len(values) - 1) * pct / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(values) - 1)
    return values[low] + (values[high] - values[low]) * (rank - low)


def distribution_ms(
    values: Iterable[float], count: int | None = None
) -> dict[str, float | int | None]:
    """
    Count, min, mean, the percentiles and max of seconds, in milliseconds.

    :param count: the number of values ``values`` is a sample of, if it is one.
    """
    ordered = sorted(v * 1000.0 for v in values)
    out: dict[str, float | int | None] = {"count": len(ordered) if count is None else count}
    out["min"] = _round(ordered[0]) if ordered else None
    out["mean"] = _round(sum(ordered) / len(ordered)) if ordered else None
    for pct in PERCENTILES:
        out[f"p{pct}"] = _round(percentile(ordered, pct))
    out["max"] = _round(ordered[-1]) if ordered else None
    return out


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


class Reservoir:
    """
    A uniform sample of at most ``limit`` values of a stream (reservoir
    sampling), and how many there were.

    :ivar values: the sample.
    :ivar count: the values seen.
    """

    def __init__(self, limit: int = GAP_SAMPLE, rng: random.Random | None = None) -> None:
        self.limit = limit
        self.rng = rng or random.Random(0)
        self.values: list[float] = []
        self.count = 0

    def add(self, value: float) -> None:
        """Take one more value."""
        self.count += 1
        if len(self.values) < self.limit:
            self.values.append(value)
            return
        slot = self.rng.randrange(self.count)
        if slot < self.limit:
            self.values[slot] = value


@dataclass
class Sample:
    """
    One request.

    :ivar index: its number, from 0.
    :ivar due: when the schedule asked for it.
    :ivar sent: when it was sent.
    :ivar ended: when its answer ended (or it failed); ``None`` while in flight.
    :ivar code: the status code, if an answer came.
    :ivar cause: why it failed (a key of :data:`CAUSES`); ``None`` if it succeeded.
    :ivar worker: the worker that answered (or was last tried).
    :ivar attempts: worker requests made for it.
    :ivar ttft: seconds to the first token (streamed answers).
    :ivar gap_max: the longest wait between two chunks carrying tokens.
    :ivar tokens: token events counted (streamed answers).
    :ivar retry_after: a 429's ``Retry-After``.
    :ivar error: what went wrong, in words.
    """

    index: int
    due: float
    sent: float
    ended: float | None = None
    code: int | None = None
    cause: str | None = None
    worker: str | None = None
    attempts: int = 0
    ttft: float | None = None
    gap_max: float | None = None
    tokens: int = 0
    retry_after: str | None = None
    error: str | None = None

    @property
    def latency(self) -> float | None:
        """Seconds from sending to the end."""
        return None if self.ended is None else self.ended - self.sent

    @property
    def ok(self) -> bool:
        """Whether it ended and succeeded."""
        return self.ended is not None and self.cause is None

    def row(self) -> dict[str, Any]:
        """The request as the JSON report lists it."""
        row = asdict(self)
        row["latency"] = self.latency
        for key in ("due", "sent", "ended", "latency", "ttft", "gap_max"):
            row[key] = _round(row[key], 6)
        return row


class Stats:
    """
    The requests of one run as they happen.

    :param profile: the asked rate over time.
    :ivar skipped: arrivals not sent because ``--max-in-flight`` were in flight.
    :ivar samples: every request sent, in the order sent.
    :ivar sending_ended: when the schedule ended (nothing is asked after it).
    """

    def __init__(self, profile: RateProfile) -> None:
        self.profile = profile
        self.sending_ended: float | None = None
        self.skipped = 0
        self.samples: list[Sample] = []
        self.gaps = Reservoir()
        self._skipped_at: list[float] = []

    def sent(self, sample: Sample) -> None:
        """A request went out."""
        self.samples.append(sample)

    def token_gaps(self, sample: Sample, gaps: Iterable[float]) -> None:
        """The inter-token gaps of a streamed request that succeeded."""
        for gap in gaps:
            self.gaps.add(gap)
            sample.gap_max = gap if sample.gap_max is None else max(sample.gap_max, gap)

    def skip(self, due: float) -> None:
        """An arrival found ``--max-in-flight`` requests in flight: not sent."""
        self.skipped += 1
        self._skipped_at.append(due)

    @property
    def in_flight(self) -> int:
        """Requests sent and not ended."""
        return sum(1 for s in self.samples if s.ended is None)

    def _ended(self) -> list[Sample]:
        return [s for s in self.samples if s.ended is not None]

    # -- live --------------------------------------------------------------

    def snapshot(self, now: float) -> dict[str, Any]:
        """
        The figures so far, for the live view.

        :param now: seconds since the start.
        """
        ended = self._ended()
        ok = [s for s in ended if s.cause is None]
        latencies = sorted(s.latency for s in ok if s.latency is not None)
        ttfts = sorted(s.ttft for s in ok if s.ttft is not None)
        # The send rate and the asked one over the same recent window.
        since = max(now - RECENT_WINDOW, 0.0)
        recent = sum(1 for s in self.samples if s.sent >= since)
        window = now - since or 1.0
        workers = Counter(s.worker for s in self.samples if s.worker)
        return {
            "elapsed_s": now,
            "sent": len(self.samples),
            "in_flight": len(self.samples) - len(ended),
            # In flight: still routing or waiting for a first byte, or answering.
            "waiting": sum(1 for s in self.samples if s.ended is None and s.code is None),
            "succeeded": len(ok),
            "failed": dict(Counter(s.cause for s in ended if s.cause is not None)),
            "retry_after": dict(Counter(s.retry_after for s in ended if s.retry_after)),
            "skipped": self.skipped,
            "asked_rps": (self._asked(now) - self._asked(since)) / window,
            "sent_rps": recent / window,
            "latency_ms": {f"p{p}": _ms(percentile(latencies, p)) for p in (50, 95, 99)},
            "ttft_ms": {f"p{p}": _ms(percentile(ttfts, p)) for p in (50, 95)},
            "workers": dict(workers.most_common()),
        }

    # -- the end -----------------------------------------------------------

    def summary(self, elapsed: float) -> dict[str, Any]:
        """
        Every figure of the run, for the reports.

        :param elapsed: seconds the run took.
        """
        ended = self._ended()
        ok = [s for s in ended if s.cause is None]
        failed = [s for s in ended if s.cause is not None]
        return {
            "elapsed_s": round(elapsed, 3),
            "counts": {
                "arrivals": len(self.samples) + self.skipped,
                "sent": len(self.samples),
                "succeeded": len(ok),
                "failed": len(failed),
                "skipped_max_in_flight": self.skipped,
                "unfinished": len(self.samples) - len(ended),
            },
            "failures": {cause: sum(1 for s in failed if s.cause == cause) for cause in CAUSES},
            "retry_after": dict(Counter(s.retry_after for s in failed if s.retry_after)),
            "status_codes": {
                str(code): n for code, n in sorted(Counter(s.code for s in ended if s.code).items())
            },
            "rate": self._rates(ok, elapsed),
            "latency_ms": distribution_ms(s.latency for s in ok if s.latency is not None),
            "ttft_ms": distribution_ms(s.ttft for s in ok if s.ttft is not None),
            "inter_token_ms": distribution_ms(self.gaps.values, self.gaps.count),
            "attempts": sum(s.attempts for s in self.samples),
            "workers": self._workers(),
            "timeline": self._timeline(elapsed),
            "requests": [s.row() for s in self.samples],
        }

    def _rates(self, ok: list[Sample], elapsed: float) -> dict[str, float | None]:
        """
        The asked and achieved send rates over the same window (first to last
        arrival), so they compare like for like, and the success rate.
        """
        dues = sorted([s.due for s in self.samples] + self._skipped_at)
        sends = sorted(s.sent for s in self.samples)
        asked = sent = None
        if len(dues) >= 2 and dues[-1] > dues[0]:
            span = dues[-1] - dues[0]
            asked = (self.profile.expected(dues[-1]) - self.profile.expected(dues[0])) / span
        if len(sends) >= 2 and sends[-1] > sends[0]:
            sent = (len(sends) - 1) / (sends[-1] - sends[0])
        return {
            "asked_rps": _round(asked),
            "sent_rps": _round(sent),
            "succeeded_rps": _round(len(ok) / elapsed) if elapsed > 0 else None,
        }

    def _asked(self, t: float) -> float:
        """Requests asked for by ``t``: none after the schedule ended."""
        if self.sending_ended is not None:
            t = min(t, self.sending_ended)
        return self.profile.expected(t)

    def _workers(self) -> dict[str, dict[str, Any]]:
        by_worker: dict[str, list[Sample]] = {}
        for s in self.samples:
            by_worker.setdefault(s.worker or "(no answer)", []).append(s)
        out = {}
        for worker, samples in sorted(by_worker.items(), key=lambda kv: -len(kv[1])):
            ok = [s for s in samples if s.ok]
            latencies = sorted(s.latency for s in ok if s.latency is not None)
            out[worker] = {
                "requests": len(samples),
                "succeeded": len(ok),
                "failed": sum(1 for s in samples if s.cause is not None),
                "latency_p50_ms": _ms(percentile(latencies, 50)),
            }
        return out

    def _timeline(self, elapsed: float) -> dict[str, Any]:
        """Per-bucket figures for the charts."""
        width = max(1.0, math.ceil(elapsed / MAX_BUCKETS))
        count = max(1, math.ceil(elapsed / width))
        starts = [i * width for i in range(count)]

        def bucket(t: float) -> int:
            return min(max(int(t // width), 0), count - 1)

        sent = [0] * count
        done = [0] * count
        lat: list[list[float]] = [[] for _ in range(count)]
        ttft: list[list[float]] = [[] for _ in range(count)]
        errors = {cause: [0] * count for cause in CAUSES}
        for s in self.samples:
            sent[bucket(s.sent)] += 1
            if s.ended is None:
                continue
            b = bucket(s.ended)
            if s.cause is not None:
                errors[s.cause][b] += 1
                continue
            done[b] += 1
            if s.latency is not None:
                lat[b].append(s.latency)
            if s.ttft is not None:
                ttft[b].append(s.ttft)
        for values in (*lat, *ttft):
            values.sort()
        ends = [min(t + width, elapsed) for t in starts]
        return {
            "bucket_s": width,
            "t": starts,
            "asked_rps": [
                _round((self._asked(e) - self._asked(t)) / (e - t)) if e > t else None
                for t, e in zip(starts, ends, strict=True)
            ],
            "sent_rps": [_per_second(n, t, e) for n, t, e in zip(sent, starts, ends, strict=True)],
            "succeeded_rps": [
                _per_second(n, t, e) for n, t, e in zip(done, starts, ends, strict=True)
            ],
            **{f"latency_p{p}_ms": [_ms(percentile(v, p)) for v in lat] for p in (50, 95, 99)},
            **{f"ttft_p{p}_ms": [_ms(percentile(v, p)) for v in ttft] for p in (50, 95)},
            "errors": {cause: series for cause, series in errors.items() if any(series)},
        }


def _per_second(count: int, start: float, end: float) -> float | None:
    """A bucket's count as a rate over its length (the last bucket may be short)."""
    return _round(count / (end - start)) if end > start else None


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 3)
