"""Simulated time: the emulator reads the time from a clock so tests and demos can speed it up."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from collections.abc import Callable


class Clock(Protocol):
    """A source of simulated time, in seconds since the Unix epoch."""

    def now(self) -> float: ...


class SimClock:
    """Wall-clock time sped up by `time_scale`: ten minutes of training take ten seconds at 60x."""

    __slots__ = ("_monotonic", "_start", "_t0", "_time_scale")

    def __init__(
        self,
        time_scale: float,
        start: float | None = None,
        *,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """`start` defaults to `wall()`; time then runs with `monotonic` (tests pass fakes)."""
        if time_scale <= 0:
            raise ValueError(f"time_scale must be positive, got {time_scale}")
        self._time_scale = time_scale
        self._start = wall() if start is None else start
        # monotonic, so a system clock step cannot make simulated time run backwards.
        self._monotonic = monotonic
        self._t0 = monotonic()

    def now(self) -> float:
        return self._start + (self._monotonic() - self._t0) * self._time_scale


class ManualClock:
    """A clock that only moves when told to, so tests never wait on wall-clock time."""

    __slots__ = ("_now",)

    def __init__(self, start: float = 1_750_000_000.0) -> None:
        self._now = start

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        # The world relies on time never going backwards (its job heap and creation-ordered lists).
        if seconds < 0:
            raise ValueError(f"a clock cannot go backwards ({seconds} s)")
        self._now += seconds
