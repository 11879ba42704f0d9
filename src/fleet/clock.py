"""The time fleet's waits are read and spent in, as one value to inject.

A client's retries, its throttle and breaker, and the job watcher all read the time, sleep,
and (some of them) draw jitter for their waits. They take one `Clock` rather than three
callables each, so a test hands every one of them the same virtual time: a night of retries,
pauses and polls runs in milliseconds and never sleeps for real.
(`sim.Clock` is something else: the emulator's simulated wall time.)
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import anyio


@dataclass(frozen=True, slots=True)
class Clock:
    """Monotonic seconds (`now()`), a way to wait (`sleep(seconds)`), and the random source
    that jitters the waits (`rng`; a test seeds it). Only differences of `now()` mean
    anything."""

    now: Callable[[], float] = time.monotonic
    sleep: Callable[[float], Awaitable[None]] = anyio.sleep
    # Jitter, not security: keeps several fleet processes from coming back in step.
    rng: random.Random = field(default_factory=random.Random)


# The real time, for every part not given another.
SYSTEM_CLOCK = Clock()

__all__ = ["SYSTEM_CLOCK", "Clock"]
