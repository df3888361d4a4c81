# -*- test-case-name: tests.test_reporter -*-
"""
An outage of one kind of report: logged when it starts and when it ends (with
its length and how many attempts failed), quietly in between, and counted for
the metrics.
"""

from __future__ import annotations

from vespa.log import get_logger

# The reporter's messages, in its namespace, as before this class moved here.
log = get_logger("vespa.worker.reporter")


class Outage:
    """
    Tracks one kind of report's failures, to log an outage twice (when it
    starts and when it ends) rather than every tick.
    """

    def __init__(self, what: str) -> None:
        self.what = what
        self.since: float | None = None
        self.failures = 0
        #: Failed sends since start, for the metrics.
        self.total_failures = 0

    def failed(self, now: float, reason: str) -> None:
        self.failures += 1
        self.total_failures += 1
        if self.since is None:
            self.since = now
            log.warn(
                "{what}: no autoscaler address accepted it ({reason}); "
                "retrying every tick, quietly until it works again",
                what=self.what,
                reason=reason,
            )
        else:
            log.debug("{what}: still failing ({reason})", what=self.what, reason=reason)

    def succeeded(self, now: float) -> None:
        if self.since is not None:
            log.info(
                "{what}: accepted again after {duration:.1f} s of failures "
                "({failures} failed attempts)",
                what=self.what,
                duration=now - self.since,
                failures=self.failures,
            )
        self.since = None
        self.failures = 0
