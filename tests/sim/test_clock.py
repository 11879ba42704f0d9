from __future__ import annotations

import pytest

from fleet.sim import ManualClock, SimClock


def test_manual_clock_moves_only_when_advanced():
    """A ManualClock reads its start until advanced, and never goes backwards."""
    clock = ManualClock()
    assert clock.now() == 1_750_000_000.0
    clock.advance(90.5)
    assert clock.now() == 1_750_000_090.5
    with pytest.raises(ValueError, match="backwards"):
        clock.advance(-1)


def test_sim_clock_starts_at_start_and_runs_scaled():
    """A SimClock starts at `start` and runs `time_scale` times faster than its monotonic clock."""
    ticks = [50.0]
    clock = SimClock(time_scale=1000.0, start=100.0, monotonic=lambda: ticks[0])
    assert clock.now() == 100.0
    ticks[0] = 50.25
    assert clock.now() == 100.0 + 0.25 * 1000.0
    with pytest.raises(ValueError, match="positive"):
        SimClock(0.0)


def test_sim_clock_starts_at_the_wall_clock_by_default():
    """Without `start`, simulated time starts at the wall clock's time and is not moved by it."""
    walls = [1_800_000_000.0]
    clock = SimClock(2.0, wall=lambda: walls[0], monotonic=lambda: 7.0)
    walls[0] += 3600.0  # a system clock step changes nothing once started
    assert clock.now() == 1_800_000_000.0
