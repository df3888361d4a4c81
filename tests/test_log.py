"""
Logging is set up once, by the entry point: building a worker or a client
(as ``--demo`` builds both in one process) leaves the level alone.
"""

from __future__ import annotations

from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel
from twisted.trial.unittest import SynchronousTestCase

from tests.logcapture import capture_log
from vespa.client.config import ClientConfig
from vespa.client.tap import build_client
from vespa.config import Origin, WorkerConfig
from vespa.log import get_logger, set_log_level
from vespa.worker.tap import build_worker

log = get_logger("vespa.tests.log")


class LevelTests(SynchronousTestCase):
    """The entry point's level holds whatever the builders are given."""

    def setUp(self) -> None:
        set_log_level(LogLevel.info)
        self.addCleanup(set_log_level, LogLevel.info)

    def logged_debug(self) -> bool:
        with capture_log() as captured:
            log.debug("a debug line")
        return "a debug line" in captured.text

    def test_builders_leave_the_level_alone(self) -> None:
        """A worker built at debug and a client at error change nothing."""
        reactor = MemoryReactorClock()
        build_worker(
            WorkerConfig(
                backend=Origin("http", "127.0.0.1", 8000),
                log_level=LogLevel.debug,
                metrics_listen=None,
            ),
            reactor,
        )
        self.assertFalse(self.logged_debug())
        set_log_level(LogLevel.debug)
        build_client(
            ClientConfig(endpoint="e", api_key="k", log_level=LogLevel.error), reactor
        )
        self.assertTrue(self.logged_debug())
