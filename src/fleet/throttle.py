"""Back-pressure shared by every request of a client: a pace when overloaded, a breaker when down.

`Throttle` answers 429/503 the way a polite client should: everyone pauses (for `Retry-After`,
or a growing backoff), then the request rate is cut to half of what was just observed and climbs
back additively with each success until the limit is lifted (AIMD, as TCP does). The climb is
counted in successes, not seconds: a server that refuses a steady few percent of requests at
random would otherwise ratchet the rate down to the floor, one cut per pause.

`Breaker` stops a fleet of hundreds of tasks from hammering a server that fails every
request: after `threshold` consecutive failures only one probe at a time goes out, and past
`budget_s` every caller gets `ServerUnavailable`.

Both are shared by hundreds of anyio tasks. Waiters block on a lock or an event, never spin; at
most one task per object sleeps on the clock, and time (`clock`, `sleep`) is injectable.
"""

from __future__ import annotations

import math
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable

import anyio
import structlog

from fleet.errors import ServerUnavailable

log = structlog.get_logger("fleet.throttle")

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

# The request rate that an overload cuts is measured over this many recent seconds.
_RATE_WINDOW_S = 5.0
# A rate measured over less than a second would call two requests in a millisecond "2000 rps".
_RATE_MIN_SPAN_S = 1.0
_RECENT_STARTS = 1024
# Without Retry-After, consecutive overloads pause 1, 2, 4, ... up to 30 s, less up to a quarter
# (jitter keeps several fleet processes behind one gateway from coming back in step).
_BACKOFF_INITIAL_S = 1.0
_BACKOFF_MAX_S = 30.0
_BACKOFF_JITTER = 0.25


class Throttle:
    """Pauses and paces requests: call `wait()` before each, then report how the server took it."""

    __slots__ = (
        "_adaptive",
        "_ceiling",
        "_clock",
        "_floor",
        "_last_start",
        "_lock",
        "_max_rps",
        "_paused_until",
        "_ramp_from",
        "_recovery_requests",
        "_rng",
        "_sleep",
        "_starts",
        "_streak",
        "overloads",
        "waited_s",
    )

    def __init__(
        self,
        *,
        max_rps: float | None = None,
        min_rps: float = 1.0,
        recovery_requests: int = 20,
        clock: Clock = time.monotonic,
        sleep: Sleep = anyio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        if max_rps is not None and not max_rps > 0:
            raise ValueError(f"max_rps must be positive or None, not {max_rps}")
        if not min_rps > 0:
            raise ValueError(f"min_rps must be positive, not {min_rps}")
        if recovery_requests < 1:
            raise ValueError(f"recovery_requests must be at least 1, not {recovery_requests}")
        self._max_rps = max_rps
        # A fixed max_rps below min_rps wins: the floor only bounds the adaptive cut.
        self._floor = min_rps if max_rps is None else min(min_rps, max_rps)
        self._recovery_requests = recovery_requests
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not security
        self._lock = anyio.Lock()
        self._paused_until = -math.inf
        self._last_start = -math.inf
        self._starts: deque[float] = deque(maxlen=_RECENT_STARTS)
        self._streak = 0
        self._adaptive: float | None = None
        self._ramp_from = 0.0
        self._ceiling = 0.0
        self.overloads = 0
        self.waited_s = 0.0

    @property
    def rate_limit(self) -> float | None:
        """Requests per second allowed now (the lower of `max_rps` and the adaptive limit)."""
        if self._adaptive is None:
            return self._max_rps
        if self._max_rps is None:
            return self._adaptive
        return min(self._adaptive, self._max_rps)

    @property
    def paused_until(self) -> float:
        """Clock time before which no request starts (in the past when there is no pause)."""
        return self._paused_until

    async def wait(self) -> float:
        """Wait for this request's turn; return the seconds waited."""
        start = self._clock()
        if start >= self._paused_until and self.rate_limit is None:
            self._started(start)
            return 0.0
        # FIFO: the lock queues callers in arrival order and only its holder sleeps on the clock.
        async with self._lock:
            while True:
                now = self._clock()
                ready = self._ready_at()
                if ready <= now:
                    break
                # Loop rather than trust one sleep: a pause may have been extended meanwhile.
                await self._sleep(ready - now)
            self._started(now)
        waited = now - start
        self.waited_s += waited
        return waited

    def overloaded(self, retry_after: float | None) -> None:
        """A 429 or 503 came back: pause everyone, and cut the rate if this is a new overload."""
        now = self._clock()
        self.overloads += 1
        # Answers to requests sent before the pause began echo the same overload: they extend
        # the pause to a later Retry-After, but do not back off, count or cut the rate again.
        if now < self._paused_until:
            if retry_after is not None:
                self._paused_until = max(self._paused_until, now + retry_after)
            return
        self._streak += 1
        pause = max(0.0, retry_after) if retry_after is not None else self._backoff()
        self._paused_until = now + pause
        self._cut(now)
        log.info(
            "fleet.throttle.overloaded",
            retry_after=retry_after,
            paused_s=round(self._paused_until - now, 3),
            rate_limit=self.rate_limit,
            consecutive=self._streak,
        )

    def succeeded(self) -> None:
        """A request succeeded: the backoff resets and the adaptive limit climbs back."""
        self._streak = 0
        if self._adaptive is None:
            return
        limit = self._adaptive + (self._ceiling - self._ramp_from) / self._recovery_requests
        if limit >= self._ceiling - 1e-9:
            self._adaptive = None
            log.info("fleet.throttle.recovered", rate_limit=self.rate_limit)
        else:
            self._adaptive = limit

    def _ready_at(self) -> float:
        limit = self.rate_limit
        spaced = self._last_start + 1.0 / limit if limit is not None else -math.inf
        return max(self._paused_until, spaced)

    def _started(self, now: float) -> None:
        self._last_start = now
        self._starts.append(now)

    def _backoff(self) -> float:
        delay = min(_BACKOFF_MAX_S, _BACKOFF_INITIAL_S * 2.0 ** min(self._streak - 1, 32))
        return delay * (1.0 - _BACKOFF_JITTER * self._rng.random())

    def _observed_rate(self, now: float) -> float:
        starts = self._starts
        while starts and starts[0] < now - _RATE_WINDOW_S:
            starts.popleft()
        if not starts:
            return 0.0
        return len(starts) / max(now - starts[0], _RATE_MIN_SPAN_S)

    def _cut(self, now: float) -> None:
        observed = self._observed_rate(now)
        current = self.rate_limit
        basis = observed if observed > 0 or current is None else current
        target = max(self._floor, basis / 2)
        if current is not None:
            target = min(target, current)
        ceiling = self._max_rps if self._max_rps is not None else 2 * target
        if target >= ceiling:
            return  # already at the floor of a fixed max_rps: nothing to cut
        self._adaptive = target
        self._ramp_from = target
        self._ceiling = ceiling


class Breaker:
    """A circuit breaker: after `threshold` failures in a row, one probe at a time until one works.

    Call `admit()` before each request and then exactly one of `success()` (the server
    answered), `failure()` (it failed: timeout, connection error, 5xx) or `abandon()` (the
    request ended without telling anything about the server, e.g. it was cancelled). A probe
    that never reports is presumed lost after `probe_timeout_s`, and another waiter probes.
    """

    __slots__ = (
        "_budget_s",
        "_changed",
        "_clock",
        "_delay",
        "_failures",
        "_next_probe_at",
        "_opened_at",
        "_probe",
        "_probe_expires",
        "_probe_initial_s",
        "_probe_max_s",
        "_probe_timeout_s",
        "_sleep",
        "_threshold",
        "_timer",
        "opened",
    )

    def __init__(
        self,
        *,
        threshold: int = 5,
        budget_s: float = 300.0,
        probe_initial_s: float = 1.0,
        probe_max_s: float = 30.0,
        probe_timeout_s: float = 120.0,
        clock: Clock = time.monotonic,
        sleep: Sleep = anyio.sleep,
    ) -> None:
        if threshold < 1:
            raise ValueError(f"threshold must be at least 1, not {threshold}")
        for name, value in (
            ("budget_s", budget_s),
            ("probe_initial_s", probe_initial_s),
            ("probe_timeout_s", probe_timeout_s),
        ):
            if not value > 0:
                raise ValueError(f"{name} must be positive, not {value}")
        if not probe_max_s >= probe_initial_s:
            raise ValueError(
                f"probe_max_s ({probe_max_s}) must be at least probe_initial_s ({probe_initial_s})"
            )
        self._threshold = threshold
        self._budget_s = budget_s
        self._probe_initial_s = probe_initial_s
        self._probe_max_s = probe_max_s
        self._probe_timeout_s = probe_timeout_s
        self._clock = clock
        self._sleep = sleep
        self._failures = 0
        self._opened_at: float | None = None
        self._delay = probe_initial_s
        self._next_probe_at = 0.0
        self._probe: int | None = None  # the anyio task id of the probe in flight
        self._probe_expires = 0.0
        self._changed = anyio.Event()
        self._timer: anyio.CancelScope | None = None
        self.opened = 0

    @property
    def is_open(self) -> bool:
        return self._opened_at is not None

    @property
    def opened_at(self) -> float | None:
        """Clock time at which the breaker opened, None while it is closed."""
        return self._opened_at

    async def admit(self) -> None:
        """Return when this caller may send a request; raise `ServerUnavailable` past the budget."""
        while self._opened_at is not None:
            now = self._clock()
            failing_s = now - self._opened_at
            if failing_s >= self._budget_s:
                raise ServerUnavailable(
                    f"ModelOps has failed every request for {_seconds(failing_s)} s "
                    f"(budget {_seconds(self._budget_s)} s)"
                )
            probe_lost = self._probe is not None and now >= self._probe_expires
            if (self._probe is None or probe_lost) and now >= self._next_probe_at:
                self._probe = _task_id()
                self._probe_expires = now + self._probe_timeout_s
                log.info("fleet.breaker.probing", failing_s=round(failing_s, 3), lost=probe_lost)
                self._notify()  # another waiter takes over the clock while this one probes
                return
            if self._timer is None:
                await self._keep_time(now)
            else:
                await self._changed.wait()

    def success(self) -> None:
        """The server answered: reset the failure count and close, releasing every waiter."""
        self._failures = 0
        if self._opened_at is None:
            return
        log.info("fleet.breaker.closed", failing_s=round(self._clock() - self._opened_at, 3))
        self._opened_at = None
        self._probe = None
        self._delay = self._probe_initial_s
        self._notify()

    def failure(self) -> None:
        """The server failed a request: count it while closed; schedule the next probe if open."""
        now = self._clock()
        if self._opened_at is None:
            self._failures += 1
            if self._failures >= self._threshold:
                self._open(now)
            return
        # Requests admitted before the breaker opened may still fail; only the probe's counts.
        if self._probe is not None and self._probe == _task_id():
            self._probe = None
            self._delay = min(self._delay * 2, self._probe_max_s)
            self._next_probe_at = now + self._delay
            self._notify()

    def abandon(self) -> None:
        """The admitted request ended with no verdict on the server; a probe's turn passes on."""
        if self._probe is not None and self._probe == _task_id():
            self._probe = None
            self._notify()

    def _open(self, now: float) -> None:
        self._opened_at = now
        self.opened += 1
        self._delay = self._probe_initial_s
        self._next_probe_at = now + self._delay
        self._probe = None
        log.warning("fleet.breaker.opened", failures=self._failures, budget_s=self._budget_s)
        self._notify()

    async def _keep_time(self, now: float) -> None:
        """Sleep, as the one waiter on the clock, until the next thing due (probe, lost probe,
        budget) or until something changes; then wake the others to look again."""
        assert self._opened_at is not None
        due = self._probe_expires if self._probe is not None else self._next_probe_at
        deadline = min(due, self._opened_at + self._budget_s)
        scope = anyio.CancelScope()
        try:
            with scope:
                self._timer = scope
                await self._sleep(deadline - now)
        finally:
            if self._timer is scope:
                self._timer = None
            # Cancelled by `_notify`, everyone is awake already. Otherwise the time came (the
            # budget may be spent: all must look) or this waiter was cancelled (another must
            # take over the clock).
            if not scope.cancel_called:
                self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()
        if self._timer is not None:
            self._timer.cancel()


def _seconds(value: float) -> str:
    return f"{value:.0f}" if value >= 10 else f"{value:.1f}"  # noqa: PLR2004


def _task_id() -> int:
    return anyio.get_current_task().id


__all__ = ["Breaker", "Throttle"]
