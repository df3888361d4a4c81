"""
How much CPU other processes took during a run: a benchmark on a shared machine
is only as good as the cores it really had.

The machine's busy time (``/proc/stat``, via psutil) minus the CPU time of
this process and of every child it has reaped is what the rest of the system
used. Interrupt time is left out on both sides, because loopback traffic is
processed in softirq context, which no process is charged for.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import psutil

# Above this share of one core taken by others, the figures are flagged noisy.
NOISY_CORE_SHARE = 0.10


def _machine_busy() -> float:
    times = psutil.cpu_times()
    return float(times.user + times.nice + times.system)


def _ours() -> float:
    # Children count once reaped, which ProcessSet does for every child before
    # the run is reported (nginx reaps its own worker).
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


@dataclass
class CpuNoise:
    """
    Started with :meth:`start`, read with :meth:`foreign_seconds` once children are reaped.
    """

    machine_start: float = 0.0
    ours_start: float = 0.0
    wall_start: float = 0.0

    def start(self) -> None:
        """Take the starting readings."""
        self.machine_start = _machine_busy()
        self.ours_start = _ours()
        self.wall_start = time.monotonic()

    def foreign_seconds(self) -> float:
        """CPU seconds used by other processes since :meth:`start`."""
        machine = _machine_busy() - self.machine_start
        ours = _ours() - self.ours_start
        return max(0.0, machine - ours)

    def report(self) -> str:
        """One line: how much others used, with a warning when it was a lot."""
        wall = time.monotonic() - self.wall_start
        foreign = self.foreign_seconds()
        share = foreign / wall if wall > 0 else 0.0
        line = (
            f"CPU used by other processes during the run: {foreign:.1f} s "
            f"({share:.0%} of one core over {wall:.0f} s)"
        )
        if share > NOISY_CORE_SHARE:
            line += " -- the machine was not idle; the figures are noisy, run again"
        return line

