"""HTTP fault injection: the gateway trouble a real ModelOps sometimes answers with."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fleet.sim.world import SimSettings


@dataclass(frozen=True, slots=True)
class Fault:
    kind: str  # the key it is counted under in the stats' "faults"
    status: int
    message: str
    retry_after: int | None = None


class FaultInjector:
    """Draws, per request, whether it fails and whether it is slow, from one seeded generator.

    Which request gets a fault depends on arrival order, unlike job errors: HTTP faults only
    need the right rate, and a failed request changes nothing, so no test has to predict them.
    """

    __slots__ = ("_faults", "_rng", "_slow_rate")

    def __init__(self, settings: SimSettings) -> None:
        self._rng = random.Random(f"{settings.seed}:http-faults")  # noqa: S311 - simulation
        retry_after = math.ceil(settings.retry_after_s)
        # Cumulative thresholds, so a single draw picks at most one fault.
        self._faults: list[tuple[float, Fault]] = []
        threshold = 0.0
        for rate, fault in (
            (settings.http_429_rate, Fault("http_429", 429, "Rate limit exceeded", retry_after)),
            (settings.http_503_rate, Fault("http_503", 503, "Service unavailable", retry_after)),
            (settings.http_500_rate, Fault("http_500", 500, "Injected internal error")),
        ):
            threshold += rate
            self._faults.append((threshold, fault))
        self._slow_rate = settings.slow_rate

    def draw(self) -> Fault | None:
        roll = self._rng.random()
        for threshold, fault in self._faults:
            if roll < threshold:
                return fault
        return None

    def slow(self) -> bool:
        return self._slow_rate > 0 and self._rng.random() < self._slow_rate
