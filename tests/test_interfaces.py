"""
Tests for :mod:`vespa.interfaces`: each seam's provider provides it, attributes
included, so a part typed by the interface gets what it reads.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyClass, verifyObject

from vespa.client.core import ClientParts
from vespa.config import Origin, WorkerConfig
from vespa.interfaces import IHealthDocument, IReportFailures, IStartupSettings
from vespa.protocol.reports import WorkerIdentity
from vespa.worker.ledger import Ledger
from vespa.worker.reporter import Reporter, ReportSettings
from vespa.worker.state import WorkerState


class ProviderTests(SynchronousTestCase):
    def test_worker_config_is_startup_settings(self) -> None:
        """The worker's config has every setting the startup chain reads."""
        config = WorkerConfig(Origin("http", "127.0.0.1", 8000))
        self.assertTrue(verifyObject(IStartupSettings, config))

    def test_reporter_reports_failures(self) -> None:
        """The reporter gives the metrics its failure counts, by endpoint."""
        clock = Clock()
        reporter = Reporter(
            clock,
            None,
            ReportSettings(addresses=()),
            WorkerIdentity(worker_id=1, mtoken="", url="", version="test"),
            WorkerState(clock),
            Ledger(),
        )
        self.assertTrue(verifyObject(IReportFailures, reporter))
        self.assertEqual(set(reporter.failed_reports), {"worker_status", "delete_requests"})

    def test_client_parts_give_the_health_document(self) -> None:
        """The client's parts are the source of its /health document."""
        self.assertTrue(verifyClass(IHealthDocument, ClientParts))
