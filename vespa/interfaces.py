"""
The seams between the rooms, as zope interfaces: what one part needs of
another, and nothing more, so either side can be replaced (by a test double,
or by a differently built config) without reading the other.

- :class:`IStartupSettings`: what the startup chain reads of the worker's
  settings (provided by :class:`vespa.config.WorkerConfig`).
- :class:`IReportFailures`: what the metrics read of the reporter (provided by
  :class:`vespa.worker.reporter.Reporter`).
- :class:`IHealthDocument`: what the client's ``/health`` route reads
  (provided by :class:`vespa.client.core.ClientParts`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from zope.interface import Attribute, Interface

from vespa.benchmarks.settings import RunSettings


class IStartupSettings(Interface):
    """The settings of the startup chain (wait for the backend, key, benchmark)."""

    healthcheck_endpoint: str = Attribute("The backend's health path, or 'auto'.")
    healthcheck_timeout: float = Attribute("Seconds per health probe.")
    healthcheck_retry_interval: float = Attribute("Seconds between probes while loading.")
    ready_timeout_initial: float = Attribute("Seconds to wait for a first load.")
    ready_timeout_resume: float = Attribute("Seconds to wait with a cached benchmark.")
    pubkey_timeout: float | None = Attribute("Seconds per public key fetch, None for no limit.")
    startup_retry: float = Attribute("Seconds before a failed chain runs again.")
    benchmark_settings: RunSettings | None = Attribute(
        "The built-in benchmark's settings (a RunSettings), passed to its probe; None for a"
        " user's own benchmark."
    )


class IReportFailures(Interface):
    """Counts of failed sends to the autoscaler."""

    failed_reports: Mapping[str, int] = Attribute("Failed sends since start, by endpoint.")


class IHealthDocument(Interface):
    """The source of a ``/health`` document."""

    def health() -> dict[str, Any]:
        """The ``/health`` document, JSON-serializable."""
