from __future__ import annotations

import time

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
    """A SimClock starts at `start` and runs `time_scale` times faster than wall time."""
    before = time.monotonic()
    clock = SimClock(time_scale=1000.0, start=100.0)
    first = clock.now()
    elapsed = time.monotonic() - before
    assert 100.0 <= first <= 100.0 + elapsed * 1000.0
    assert clock.now() >= first
    assert abs(SimClock(1.0).now() - time.time()) < 5
    with pytest.raises(ValueError, match="positive"):
        SimClock(0.0)
