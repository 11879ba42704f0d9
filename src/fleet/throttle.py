"""The pace of a client's requests when the server is overloaded (`breaker.py`: when it is down).

`Throttle` answers 429/503 ("refusals") in proportion to what they say about the server:

- **One refusal concerns one request.** The refused request waits its own `Retry-After` (the
  client's retry policy honours it) and is sent again; the others go on. A gateway that refuses
  a random few percent of requests would otherwise stop everyone for a second, many times a
  second: at 5% of a few hundred requests a second that is a pause nearly all the time.
- **The shared rate is cut multiplicatively, at most once per round trip** (AIMD, as TCP does):
  only a refusal of a request sent after the last cut cuts again; refusals of requests already
  in flight when the rate was cut echo the same overload. The cut halves the rate (the limit in
  force, or the rate requests were observed to start at over the last few seconds).
- **Never below what the server is accepting.** The limit is never under the floor: a quarter
  more than the rate of successful answers over the last second (and at least `min_rps`). A
  server that answers that many requests a second does not need fewer; and since the floor
  stands above what gets through, a random refusal rate p (under 20%) lets the rate grow by
  1.25 x (1 - p) a second until it no longer binds, where cuts from the limit in force would
  ratchet it down to nothing, one random 429 after another. Against a gateway that admits X
  requests a second the floor settles at 1.25 X: a fifth of the requests are refused and wait
  their own `Retry-After`.
- **Recovery is measured in time.** After a cut the limit climbs linearly back to where it was
  cut from (or to `max_rps`), a halving in `recovery_s` seconds, and is then lifted. Counting
  successes instead would make recovery as slow as the rate is low.
- **A burst still pauses everyone**: `_BURST_STREAK` refusals in a row with no success between,
  or at least half of the answers of the last second refused (`_BURST_MIN` of them at least),
  is a server that is really overloaded. Everyone waits its `Retry-After` (or a backoff growing
  1, 2, 4, ... 30 s with jitter when it sends none), and the rate is cut. Refusals arriving
  during that pause only extend it to a later `Retry-After`; they do not count again.

It is shared by hundreds of anyio tasks. Waiters block on a lock, never spin; only one task
sleeps on the clock, and the clock (with the jitter's random source) is injectable
(`clock.py`).
"""

from __future__ import annotations

import math
from collections import deque

import anyio
import structlog

from fleet.clock import SYSTEM_CLOCK, Clock

log = structlog.get_logger("fleet.throttle")

# The rate requests start at, which a cut halves, is measured over this many recent seconds.
_RATE_WINDOW_S = 5.0
# The floor: this much more than the successes of the last `_ACCEPTED_WINDOW_S`.
_ACCEPTED_WINDOW_S = 1.0
_HEADROOM = 1.25
# A rate over a shorter span would call two requests in a millisecond "2000 rps". A rate over
# less than a second may overstate; that only makes the throttle more lenient, and a burst
# still pauses everyone.
_RATE_MIN_SPAN_S = 0.1
_RECENT = 8192
_CUT = 0.5
# A burst: this many refusals in a row, or in the last `_BURST_WINDOW_S` at least `_BURST_MIN`
# refusals that are at least `_BURST_SHARE` of the answers. At a random 10% of refusals five in
# a row come once in 100,000 answers; a real overload refuses most of them.
_BURST_STREAK = 5
_BURST_WINDOW_S = 1.0
_BURST_MIN = 5
_BURST_SHARE = 0.5
# Without Retry-After, consecutive bursts pause 1, 2, 4, ... up to 30 s, less up to a quarter
# (jitter keeps several fleet processes behind one gateway from coming back in step).
_BACKOFF_INITIAL_S = 1.0
_BACKOFF_MAX_S = 30.0
_BACKOFF_JITTER = 0.25


class Throttle:
    """Paces requests: call `wait()` before each, then report how the server took it."""

    __slots__ = (
        "_bursts",
        "_ceiling",
        "_clock",
        "_cut_at",
        "_cut_to",
        "_last_start",
        "_limited",
        "_lock",
        "_max_rps",
        "_min_rps",
        "_paused_until",
        "_recovery_s",
        "_refusals",
        "_slope",
        "_starts",
        "_streak",
        "_successes",
        "cuts",
        "overloads",
        "pauses",
        "waited_s",
    )

    def __init__(
        self,
        *,
        max_rps: float | None = None,
        min_rps: float = 1.0,
        recovery_s: float = 5.0,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if max_rps is not None and not max_rps > 0:
            raise ValueError(f"max_rps must be positive or None, not {max_rps}")
        if not min_rps > 0:
            raise ValueError(f"min_rps must be positive, not {min_rps}")
        if not 0 < recovery_s < math.inf:
            raise ValueError(f"recovery_s must be positive, not {recovery_s}")
        self._max_rps = max_rps
        # A fixed max_rps below min_rps wins: the floor only bounds the adaptive cut.
        self._min_rps = min_rps if max_rps is None else min(min_rps, max_rps)
        self._recovery_s = recovery_s
        self._clock = clock
        self._lock = anyio.Lock()
        self._paused_until = -math.inf
        self._last_start = -math.inf
        self._starts: deque[float] = deque(maxlen=_RECENT)
        self._successes: deque[float] = deque(maxlen=_RECENT)
        self._refusals: deque[float] = deque(maxlen=_RECENT)
        self._streak = 0  # refusals since the last success
        self._bursts = 0  # bursts since the last success, for the backoff
        # The adaptive limit, while an episode lasts: `_cut_to` rps at `_cut_at`, climbing at
        # `_slope` rps a second to `_ceiling`, and never under the floor.
        self._limited = False
        self._cut_at = -math.inf
        self._cut_to = 0.0
        self._ceiling = 0.0
        self._slope = 0.0
        self.overloads = 0  # refusals reported
        self.cuts = 0  # times the shared rate was cut
        self.pauses = 0  # bursts that paused everyone
        self.waited_s = 0.0

    @property
    def rate_limit(self) -> float | None:
        """Requests per second allowed now (the lower of `max_rps` and the adaptive limit)."""
        return self._limit(self._clock.now())

    @property
    def paused_until(self) -> float:
        """Clock time before which no request starts (in the past when there is no pause)."""
        return self._paused_until

    @property
    def floor(self) -> float:
        """The lowest the adaptive limit may be now: a little above what the server accepts."""
        return self._floor_at(self._clock.now())

    def now(self) -> float:
        """The throttle's clock: what `overloaded(sent_at=...)` expects."""
        return self._clock.now()

    async def wait(self) -> float:
        """Wait for this request's turn; return the seconds waited."""
        start = self._clock.now()
        if start >= self._paused_until and self._limit(start) is None:
            self._started(start)
            return 0.0
        # FIFO: the lock queues callers in arrival order and only its holder sleeps on the clock.
        async with self._lock:
            while True:
                now = self._clock.now()
                ready = self._ready_at(now)
                if ready <= now:
                    break
                # Loop rather than trust one sleep: a pause or a cut may have come meanwhile.
                await self._clock.sleep(ready - now)
            self._started(now)
        waited = now - start
        self.waited_s += waited
        return waited

    def overloaded(self, retry_after: float | None, *, sent_at: float | None = None) -> None:
        """A 429 or 503 answered a request sent at `sent_at` (this throttle's clock; None: just
        now). The request itself waits `retry_after` (the caller's retry does); everyone pauses
        only in a burst; the shared rate is cut once per round trip."""
        now = self._clock.now()
        self.overloads += 1
        self._streak += 1
        self._refusals.append(now)
        if now < self._paused_until:
            # Answers to requests sent before the pause began echo the same overload: they
            # extend the pause to a later Retry-After, but do not back off or cut again.
            if retry_after is not None:
                self._paused_until = max(self._paused_until, now + retry_after)
            return
        if self._burst(now):
            self._pause(now, retry_after)
            return
        if sent_at is None or sent_at >= self._cut_at:
            self._cut(now)

    def succeeded(self) -> None:
        """A request succeeded: the streak of refusals and the backoff start over."""
        now = self._clock.now()
        self._successes.append(now)
        self._streak = 0
        self._bursts = 0

    def _limit(self, now: float) -> float | None:
        if not self._limited:
            return self._max_rps
        climbed = self._cut_to + self._slope * (now - self._cut_at)
        limit = max(climbed, self._floor_at(now))
        if limit >= self._ceiling - 1e-9:
            self._limited = False
            log.info("fleet.throttle.recovered", rate_limit=self._max_rps)
            return self._max_rps
        return limit

    def _floor_at(self, now: float) -> float:
        accepted = _rate(self._successes, now, _ACCEPTED_WINDOW_S)
        floor = max(self._min_rps, _HEADROOM * accepted)
        return floor if self._max_rps is None else min(floor, self._max_rps)

    def _ready_at(self, now: float) -> float:
        limit = self._limit(now)
        spaced = self._last_start + 1.0 / limit if limit is not None else -math.inf
        return max(self._paused_until, spaced)

    def _started(self, now: float) -> None:
        self._last_start = now
        self._starts.append(now)

    def _burst(self, now: float) -> bool:
        if self._streak >= _BURST_STREAK:
            return True
        since = now - _BURST_WINDOW_S
        refused = _count_since(self._refusals, since)
        if refused < _BURST_MIN:
            return False
        answered = refused + _count_since(self._successes, since)
        return refused >= _BURST_SHARE * answered

    def _pause(self, now: float, retry_after: float | None) -> None:
        self._bursts += 1
        self.pauses += 1
        pause = max(0.0, retry_after) if retry_after is not None else self._backoff()
        self._paused_until = now + pause
        self._cut(now)
        log.info(
            "fleet.throttle.paused",
            retry_after=retry_after,
            paused_s=round(pause, 3),
            rate_limit=self._limit(now),
            refusals_in_a_row=self._streak,
        )

    def _backoff(self) -> float:
        delay = min(_BACKOFF_MAX_S, _BACKOFF_INITIAL_S * 2.0 ** min(self._bursts - 1, 32))
        return delay * (1.0 - _BACKOFF_JITTER * self._clock.rng.random())

    def _cut(self, now: float) -> None:
        current = self._limit(now)
        floor = self._floor_at(now)
        started = _rate(self._starts, now, _RATE_WINDOW_S)
        # What is being sent, not a limit nobody reaches (a max_rps of 100 at 2 requests a second).
        basis = started if current is None else min(current, started) if started > 0 else current
        target = max(floor, _CUT * basis)
        if current is not None:
            target = min(target, current)
        if not self._limited:
            self._ceiling = self._max_rps if self._max_rps is not None else max(basis, target)
            self._slope = self._ceiling * (1 - _CUT) / self._recovery_s
        if target >= self._ceiling:
            return  # nothing to cut: already at the floor of a fixed max_rps
        self._limited = True
        self._cut_at = now
        self._cut_to = target
        self.cuts += 1
        log.debug("fleet.throttle.cut", rate_limit=round(target, 3), floor=round(floor, 3))


def _count_since(times: deque[float], since: float) -> int:
    """How many of `times` (ascending) are at or after `since`."""
    count = 0
    for at in reversed(times):
        if at < since:
            break
        count += 1
    return count


def _rate(times: deque[float], now: float, window: float) -> float:
    """Events per second over the last `window` s (`times` ascending, older ones dropped)."""
    while times and times[0] < now - window:
        times.popleft()
    if not times:
        return 0.0
    return len(times) / max(now - times[0], _RATE_MIN_SPAN_S)


__all__ = ["Throttle"]
