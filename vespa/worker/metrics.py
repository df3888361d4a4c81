# -*- test-case-name: tests.test_operations -*-
"""
Prometheus metrics of the worker, served on their own listener
(``--metrics-listen``, default ``tcp:9464:interface=127.0.0.1``).

Counts and workloads by outcome are read from the ledger when scraped, so
they cost nothing per request and always agree with what the autoscaler is
told. Three histograms are observed per request: time waiting for a slot, time
to the backend's response headers, and the whole backend exchange.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from twisted.web.server import Request

from vespa._typing import Resource
from vespa.interfaces import IReportFailures
from vespa.worker.admission import Admission
from vespa.worker.health import HealthChecker
from vespa.worker.ledger import Ledger, Outcome
from vespa.worker.state import Phase, WorkerState

# Model-server latencies run from milliseconds to minutes.
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


def _latency(registry: CollectorRegistry, name: str, documentation: str) -> Histogram:
    """A histogram of seconds over :data:`_BUCKETS`, in ``registry``."""
    return Histogram(name, documentation, buckets=_BUCKETS, registry=registry)


class WorkerMetrics:
    """
    The worker's metrics registry.

    :param ledger: request counts and workloads by outcome.
    :param state: phase, error and capacity.
    :param admission: the queue.
    :param health: health-check failures.
    :param reporter: report failures, or ``None``.
    """

    def __init__(
        self,
        ledger: Ledger,
        state: WorkerState,
        admission: Admission,
        health: HealthChecker,
        reporter: IReportFailures | None = None,
    ) -> None:
        self.registry = CollectorRegistry()
        self.queue_wait = _latency(
            self.registry,
            "vespa_queue_wait_seconds",
            "Time admitted requests waited for a concurrency slot",
        )
        self.first_byte = _latency(
            self.registry,
            "vespa_time_to_first_byte_seconds",
            "Time from sending a request to the backend to its response headers",
        )
        self.backend_time = _latency(
            self.registry,
            "vespa_backend_seconds",
            "Duration of backend exchanges, streaming included",
        )
        # Every refusal, by status: the only place a request refused before its
        # signature verified is counted (it never reaches the reports).
        self.refused = Counter(
            "vespa_refused_requests",
            "Requests refused by the worker, by HTTP status",
            labelnames=["status"],
            registry=self.registry,
        )
        self.registry.register(_LiveCollector(ledger, state, admission, health, reporter))

    def resource(self) -> Resource:
        """The ``/metrics`` resource (any path serves it)."""
        return _MetricsResource(self.registry)


class _MetricsResource(Resource):
    """Prometheus text exposition, rendered in the reactor (a scrape is cheap)."""

    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self._registry = registry

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode("ascii"))
        return generate_latest(self._registry)


@dataclass(frozen=True)
class _LiveCollector:
    """Reads the counters from the objects that keep them, at scrape time."""

    ledger: Ledger
    state: WorkerState
    admission: Admission
    health: HealthChecker
    reporter: IReportFailures | None

    def collect(self) -> Iterator[Metric]:
        totals = self.ledger.totals
        requests = CounterMetricFamily(
            "vespa_requests", "Requests by how they ended", labels=["outcome"]
        )
        workload = CounterMetricFamily(
            "vespa_workload", "Workload units by how their request ended", labels=["outcome"]
        )
        for outcome in Outcome:
            requests.add_metric([outcome.value], totals[outcome].requests)
            workload.add_metric([outcome.value], totals[outcome].workload)
        yield requests
        yield workload
        yield GaugeMetricFamily(
            "vespa_in_flight_requests",
            "Requests admitted and not finished",
            value=self.ledger.in_flight_count,
        )
        yield GaugeMetricFamily(
            "vespa_in_flight_workload",
            "Workload of the requests in flight",
            value=self.ledger.in_flight_workload,
        )
        yield GaugeMetricFamily(
            "vespa_queued_requests", "Requests waiting for a slot", value=self.admission.queued
        )
        yield GaugeMetricFamily(
            "vespa_max_perf",
            "Measured throughput, workload units per second",
            value=self.state.max_perf,
        )
        phase = GaugeMetricFamily("vespa_phase", "1 for the current phase", labels=["phase"])
        for each in Phase:
            phase.add_metric([each.value], 1.0 if each is self.state.phase else 0.0)
        yield phase
        yield CounterMetricFamily(
            "vespa_health_check_failures",
            "Failed backend health checks",
            value=self.health.total_failures,
        )
        if self.reporter is not None:
            failures = CounterMetricFamily(
                "vespa_report_failures", "Failed sends to the autoscaler", labels=["endpoint"]
            )
            for endpoint, count in self.reporter.failed_reports.items():
                failures.add_metric([endpoint], count)
            yield failures
