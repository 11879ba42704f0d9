"""Two-phase shutdown: on SIGTERM or SIGINT, drain (admit and submit nothing new), then cancel
early enough that all that follows the cancellation fits in the grace period.

The CLI runs `watch_signals` beside `run_batch`: the first signal sets the run's stop event and
starts the grace period; a second signal, or the first of `grace_deadlines`, cancels what is
still draining. Every step taken is recorded by then; what must survive the cancellation (the
run's interrupted status, the lease) is written shielded.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass, field

import anyio
import structlog

log = structlog.get_logger("fleet.shutdown")

# After a signal, what is still draining is cancelled early enough to leave this part of the
# grace period (at most half of it, and at most 5 s) to what follows the cancellation: the
# interrupted status written, the lease released, the state file and connections closed, the
# metrics published. The whole shutdown then fits in grace_period, as a pod's
# terminationGracePeriodSeconds requires; cancelling only at its end overran it.
_RESERVE_SHARE = 0.2
_RESERVE_MIN_S = 1.0
_RESERVE_MAX_S = 5.0


def grace_deadlines(received: float, grace_s: float) -> tuple[float, float]:
    """For a first signal received at `received` (a clock's seconds): when to cancel what is
    still draining, and when the process must be gone."""
    reserve = min(grace_s / 2, max(grace_s * _RESERVE_SHARE, _RESERVE_MIN_S), _RESERVE_MAX_S)
    return received + grace_s - reserve, received + grace_s


@dataclass
class Shutdown:
    """The signals received (the first decides the exit code) and, once one came, the event
    loop's time by which fleet must have exited."""

    grace_s: float
    signals: list[int] = field(default_factory=list)
    exit_by: float | None = None

    def remaining(self) -> float | None:
        """Seconds left before `exit_by` (None: no signal yet, no limit)."""
        if self.exit_by is None:
            return None
        return max(0.0, self.exit_by - anyio.current_time())


async def watch_signals(scope: anyio.CancelScope, stop: anyio.Event, shutdown: Shutdown) -> None:
    """First signal: drain (admit and submit nothing new), then cancel at the first of
    `grace_deadlines`, so that all that follows fits in the grace period.

    A second signal cancels at once. Either way every step taken is already recorded.
    """
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            shutdown.signals.append(signum)
            log.warning(
                "fleet.run.signal",
                signal=signal.Signals(signum).name,
                grace_period_s=shutdown.grace_s,
            )
            if stop.is_set():
                break
            stop.set()
            cancel_at, shutdown.exit_by = grace_deadlines(anyio.current_time(), shutdown.grace_s)
            with anyio.move_on_after(cancel_at - anyio.current_time()):
                async for _ in signals:
                    break
            break
    scope.cancel()
