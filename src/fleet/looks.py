"""When to look at a job whose end is predicted: a schedule drawn from how far tonight's jobs
ended from their predictions.

A job's expected duration (its model's same stage in earlier runs) is a guess. What matters
for its looks is the error of that guess, the ratio of what the job runs to what was expected:
on the emulator it spreads by about 7% (each night jitters a duration with a sigma of 0.05,
and a night's figure is itself read only to within a look or two); on a real server it is
unknown. So it is learned, per stage, from tonight's jobs: `Spreads` keeps log(ran /
expected) of the latest jobs of each stage and reads off its centre (the median, `mu`) and
its spread (`sigma`, from the upper quartile). Neither is moved by the jobs whose end is
known only as "before the first look": those are the earliest ends, below both. Until a stage
has `_OWN` ended jobs of its own, all stages' are taken together, and before any, a wide
prior stands in. A job handed over early in the night has its first look drawn again when it
falls due (the watcher does), from what has been learned by then.

A job expected to run `p` seconds is looked at (its `Schedule`):

- first at `p x exp(mu - Z_FIRST x sigma) x (1 + GAP)`: a job that ended at that low
  quantile is still seen within `GAP` of its length. Earlier ends (7% of jobs at
  `Z_FIRST` = 1.5) are seen later: the price of not reading every job several times before
  it can have ended;
- then every `GAP` of the time it has run, up to `p x exp(mu + Z_LAST x sigma)`, past
  nearly every end: each end in that stretch is seen within `GAP` of its length;
- past that, less often the more it overruns (a fifth of the time it has run), at most
  max(`poll_interval`, `GAP` x p) apart: an overrun was not predicted, and a long one is
  still seen within a small share of its length.

That shape is what a search over schedules finds for a lognormal end (a dynamic programme
that minimises reads plus a price per job seen late): one look a little before the bulk of
the ends, then gaps of the share that counts as late. The two numbers are a trade, and no
choice meets both of the issue's targets (3 reads per job, 95% of jobs seen within 5% of
their length): with a 7% spread the search itself needs 2.9 reads to see 95% of jobs within
5%, before the floor (below) and the wider spread of short jobs are counted. So they are set
where the 95th percentile of lateness is lowest at under 3 reads: a gap a little wider than
5% (a job seen 6% late costs the percentile little) and a first look early enough that few
jobs end before it (those are seen 10-20% late). BENCHMARKS.md has the trade measured.

Looks are at least `poll_floor` apart, so a job of a few seconds is seen up to a floor after
its end whatever its schedule: a short job's looks are at least a floor apart.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from dataclasses import dataclass

# Near its end, the next look at a job is due this share of the time it has run after the
# previous one, so an end between two looks is seen within this share of the job's length.
GAP = 0.06
# The first look: this many spreads before the centre (then `GAP` later), and the dense
# looks end this many spreads after it.
Z_FIRST = 1.5
Z_LAST = 3.0
# Past the dense looks, a gap of this share of the time run so far.
BACKOFF = 0.2
# The spread of log(ran / expected) assumed before any job of the run has ended: wide, so
# that a server whose durations wander more than the emulator's is not read late at first.
_PRIOR_SIGMA = 0.1
# A stage's own spread once it has this many ended jobs; before, all stages' together.
_OWN = 10
# The latest ended jobs a stage's spread is read from: recent enough to follow a server that
# slows down during the night, many enough for a steady median.
_WINDOW = 200
# A stage's spread is read again once this share of its window has ended since.
_REREAD = 10
# The upper quartile of a normal distribution is this many sigmas above its median.
_QUARTILE_Z = 0.6745
# A spread is never read as smaller than this, which keeps the first look before the centre
# (Z_FIRST x _MIN_SIGMA > GAP): an end before the first look says nothing of the spread.
_MIN_SIGMA = 0.05


@dataclass(frozen=True, slots=True)
class Schedule:
    """When to look at one job, in seconds of its own run: the first look, where the dense
    looks (every `GAP` of the time run) give way to backing off, and the longest gap."""

    first: float
    dense_until: float
    max_gap: float

    @classmethod
    def unpredicted(cls, max_gap: float) -> Schedule:
        """A job with no prediction: looked at soon, then backing off up to `max_gap`."""
        return cls(0.0, 0.0, max_gap)

    def gap(self, ran: float, floor: float) -> float:
        """Seconds from a look at a job that has run `ran` seconds to the next one."""
        if ran < self.dense_until:
            return max(GAP * ran, floor)
        return min(max(BACKOFF * ran, floor), self.max_gap)


@dataclass(frozen=True, slots=True)
class Spread:
    """The centre (`mu`) and spread (`sigma`) of log(ran / expected), and how many ended
    jobs they were read from (0: the prior)."""

    mu: float
    sigma: float
    jobs: int

    def schedule(self, expected: float, max_gap: float) -> Schedule:
        """The schedule of a job expected to run `expected` seconds; between looks past the
        dense ones, at most max(`max_gap`, `GAP` x expected)."""
        first = expected * math.exp(self.mu - Z_FIRST * self.sigma) * (1 + GAP)
        last = expected * math.exp(self.mu + Z_LAST * self.sigma)
        return Schedule(first, last, max(max_gap, GAP * expected))


PRIOR = Spread(0.0, _PRIOR_SIGMA, 0)


class Spreads:
    """How far tonight's jobs of each stage (or kind) ended from their predictions."""

    def __init__(self) -> None:
        self._kinds: dict[str, _Ends] = {}
        self._pooled = _Ends()

    def ended(self, kind: str, expected: float, ran: float, *, at_first_look: bool) -> None:
        """A job of `kind` expected to run `expected` seconds ended after about `ran`; or,
        `at_first_look`, at some time before `ran`."""
        if expected <= 0 or ran <= 0:
            return
        end = (math.log(ran / expected), at_first_look)
        self._kinds.setdefault(kind, _Ends()).add(end)
        self._pooled.add(end)

    def of(self, kind: str) -> Spread:
        """The spread to place a `kind` job's looks by: its own, else every kind's, else the
        prior."""
        own = self._kinds.get(kind)
        spread = None if own is None else own.spread()
        return spread or self._pooled.spread() or PRIOR


class _Ends:
    """One kind's latest ends, as (log(ran / expected), seen at the first look), and the
    spread read from them, read again once a tenth of them are new."""

    def __init__(self) -> None:
        self._ends: deque[tuple[float, bool]] = deque(maxlen=_WINDOW)
        self._new = 0
        self._spread: Spread | None = None

    def add(self, end: tuple[float, bool]) -> None:
        self._ends.append(end)
        self._new += 1

    def spread(self) -> Spread | None:
        """None while fewer than `_OWN` jobs have ended."""
        if len(self._ends) < _OWN:
            return None
        if self._spread is None or self._new * _REREAD >= len(self._ends):
            self._spread = _spread(self._ends)
            self._new = 0
        return self._spread


def _spread(ends: deque[tuple[float, bool]]) -> Spread:
    """The centre and upper spread of the ends. An end seen at the first look is known only
    to be earlier: it counts as the earliest of all, so a first look placed too late moves
    the centre earlier, never later (taking it as the look's own time would make those ends
    all alike, and the spread shrink until most jobs ended before their first look)."""
    ratios = sorted(-math.inf if first else ratio for ratio, first in ends)
    centre, upper = ratios[len(ratios) // 2], ratios[(3 * len(ratios)) // 4]
    if math.isinf(centre):
        # Most ended before their first look, which is far too late: the centre is somewhere
        # below those looks, so the next ones come a wide spread earlier.
        looks = statistics.median(ratio for ratio, _ in ends)
        return Spread(looks - _PRIOR_SIGMA, _PRIOR_SIGMA, len(ends))
    return Spread(centre, max((upper - centre) / _QUARTILE_Z, _MIN_SIGMA), len(ends))
