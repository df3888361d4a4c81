"""
Tests of :mod:`vespa.backoff`, the one backoff of the worker and the client.
"""

from __future__ import annotations

import random

from twisted.trial.unittest import SynchronousTestCase

from vespa.backoff import equal_jitter
from vespa.client.policy import MAX_BACKOFF


class EqualJitterTests(SynchronousTestCase):
    def test_doubles_capped_and_jittered(self) -> None:
        """
        The client's retry backoff: 100 ms doubled per retry up to
        ``MAX_BACKOFF``, each delay between half and all of its value.
        """
        delays = equal_jitter(0.1, MAX_BACKOFF, random.Random(1))
        for attempt, base in ((0, 0.1), (1, 0.2), (2, 0.4), (10, MAX_BACKOFF), (500, MAX_BACKOFF)):
            for _ in range(20):
                delay = delays(attempt)
                self.assertTrue(base / 2 <= delay <= base, (attempt, delay))

    def test_jitter_spreads_the_delays(self) -> None:
        """
        Two clients failing together do not retry in step.
        """
        delays = equal_jitter(0.25, 5.0, random.Random(3))
        self.assertGreater(len({delays(3) for _ in range(10)}), 1)

    def test_without_rng_the_delays_are_exact(self) -> None:
        """
        The worker's public key fetches: 1, 2, 4 ... seconds, capped.
        """
        delays = equal_jitter(1.0, 30.0)
        self.assertEqual([delays(n) for n in range(7)], [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0])

    def test_zero_initial_is_no_wait(self) -> None:
        """
        ``initial_backoff_ms`` 0 retries at once.
        """
        self.assertEqual(equal_jitter(0.0, MAX_BACKOFF, random.Random(0))(4), 0.0)
