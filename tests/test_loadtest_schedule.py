"""
The load test's schedule: rates, ramps and arrivals, on a ``Clock``.
"""

from __future__ import annotations

import itertools
import random

from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from vespa.loadtest.schedule import Arrivals, RateProfile, arrival_offsets, parse_ramp


def _offsets(profile: RateProfile, process: str, count: int, seed: int = 1) -> list[float]:
    it = arrival_offsets(profile, process, random.Random(seed))
    return [next(it) for _ in range(count)]


class RateProfileTests(TestCase):
    def test_fixed_rate_is_evenly_spaced(self) -> None:
        """10/s: one request every 0.1 s, the first at once."""
        offsets = _offsets(RateProfile.fixed(10.0), "fixed", 5)
        self.assertEqual([round(t, 9) for t in offsets], [0.0, 0.1, 0.2, 0.3, 0.4])

    def test_ramp_asks_for_its_area(self) -> None:
        """10 to 100/s over 60 s asks for 3300 requests in the ramp, then 100/s."""
        profile = parse_ramp("10:100:60s")
        self.assertEqual(profile, RateProfile(10.0, 100.0, 60.0))
        self.assertAlmostEqual(profile.expected(60.0), 3300.0)
        self.assertAlmostEqual(profile.expected(70.0), 4300.0)
        self.assertAlmostEqual(profile.rate(30.0), 55.0)
        for count in (0.5, 10.0, 1234.5, 3300.0, 5000.0):
            self.assertAlmostEqual(profile.expected(profile.time_of(count)), count)

    def test_ramp_from_zero(self) -> None:
        """A ramp may start at 0/s: the arrivals thin out at its start."""
        offsets = _offsets(RateProfile(0.0, 10.0, 10.0), "fixed", 51)
        in_first_second = [t for t in offsets if t < 1.0]
        self.assertEqual(len(in_first_second), 1)  # N(1) = 0.5: only the one at 0
        self.assertAlmostEqual(offsets[50], 10.0)  # N(10) = 50

    def test_poisson_keeps_the_rate_with_exponential_gaps(self) -> None:
        """Poisson arrivals at 5/s: about 5 per second over a long run, gaps spread out."""
        offsets = _offsets(RateProfile.fixed(5.0), "poisson", 20000)
        rate = len(offsets) / offsets[-1]
        self.assertLess(abs(rate - 5.0), 5.0 * 0.03)
        gaps = [b - a for a, b in itertools.pairwise(offsets)]
        short = sum(1 for g in gaps if g < 0.2)  # P(gap < mean) = 1 - 1/e = 0.63
        self.assertLess(abs(short / len(gaps) - 0.632), 0.02)

    def test_poisson_follows_a_ramp(self) -> None:
        """Under a ramp, Poisson arrivals come as often as the ramp asks."""
        profile = RateProfile(0.0, 100.0, 100.0)
        offsets = _offsets(profile, "poisson", 20000, seed=7)
        in_first_half = sum(1 for t in offsets if t < 50.0)
        in_second_half = sum(1 for t in offsets if 50.0 <= t < 100.0)
        # N(50) = 1250 and N(100) - N(50) = 3750.
        self.assertLess(abs(in_first_half - 1250) / 1250, 0.1)
        self.assertLess(abs(in_second_half - 3750) / 3750, 0.05)

    def test_bad_ramps_and_rates_are_refused(self) -> None:
        for text in ("10:100", "a:b:c", "10:0:5s", "10:100:-1"):
            self.assertRaises(ValueError, parse_ramp, text)
        self.assertRaises(ValueError, RateProfile.fixed, 0.0)
        self.assertRaises(ValueError, lambda: list(_offsets(RateProfile.fixed(1), "burst", 1)))


class ArrivalsTests(TestCase):
    def start(self, **kw: object) -> tuple[Clock, Arrivals, list[tuple[int, float]]]:
        clock = Clock()
        clock.advance(1000.0)
        seen: list[tuple[int, float]] = []
        profile = kw.pop("profile", RateProfile.fixed(10.0))
        arrivals = Arrivals(
            clock,
            arrival_offsets(profile),  # type: ignore[arg-type]
            lambda i, due: seen.append((i, due)),
            **kw,  # type: ignore[arg-type]
        )
        arrivals.start()
        return clock, arrivals, seen

    def test_requests_limit(self) -> None:
        """--requests 20 at 10/s: 20 arrivals, each at its time, then done."""
        clock, arrivals, seen = self.start(limit=20)
        self.assertEqual(seen, [])  # the first on the clock's next turn
        clock.advance(0)
        self.assertEqual(seen, [(0, 1000.0)])
        for _ in range(19):
            self.assertFalse(arrivals.done.called)
            clock.advance(0.1)
        self.assertEqual(len(seen), 20)
        for i, due in seen:
            self.assertAlmostEqual(due, 1000.0 + i / 10)
        self.assertTrue(arrivals.done.called)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_duration_limit(self) -> None:
        """--duration 2 at 10/s: the arrivals due before 2 s, 20 of them."""
        clock, arrivals, seen = self.start(duration=2.0)
        clock.pump([0.05] * 100)
        self.assertEqual(len(seen), 20)
        self.assertTrue(arrivals.done.called)

    def test_late_timer_catches_up(self) -> None:
        """A clock that jumps 1 s delivers the 10 arrivals due meanwhile, with their due times."""
        clock, _, seen = self.start(limit=100)
        clock.advance(1.0)
        self.assertEqual([i for i, _ in seen], list(range(11)))
        self.assertAlmostEqual(seen[5][1], 1000.5)

    def test_stop(self) -> None:
        """stop(): no more arrivals, no timer left, done."""
        clock, arrivals, seen = self.start(limit=100)
        clock.advance(0.25)
        arrivals.stop()
        self.assertTrue(arrivals.done.called)
        self.assertEqual(clock.getDelayedCalls(), [])
        clock.advance(10.0)
        self.assertEqual(len(seen), 3)

    def test_a_limit_is_needed(self) -> None:
        self.assertRaises(
            ValueError, Arrivals, Clock(), arrival_offsets(RateProfile.fixed(1)), print
        )
