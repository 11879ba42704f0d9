"""Following remote jobs: one watcher looks after every job of the run, as rarely as it can.

A stage runner with a job in flight hands it to the `JobWatch` and waits. The watcher looks
when the first job is due, and one look covers every job it follows:

- **changes** (the server sorts jobs by `updatedAt`): one page of the jobs listing, newest
  change first, read back to the previous look. Nothing older is read again.
- **finder** (`findByStatusIn`): the jobs not yet finished; a followed job missing from them
  has finished.
- **each**: a GET of every due job, for a server that offers neither.

The mode is found out at the first look and falls back in that order. Whatever the mode, a job
seen finished is read once more by id, so its final state comes from its own resource.

When to look is predicted: a job is due at its expected end (the duration of the same model's
same stage in earlier runs, else the median of this run's finished jobs of that stage), a
little early rather than late, then at 2% of that duration past it, and less often the more
it overruns (a fifth of the time it has run). A job with no expectation is looked at soon,
then with that same back-off. `poll_interval` bounds the gap between two looks at a job;
`poll_floor` is the shortest gap between two looks at the server. The first look happens at
start, before any job is due: it finds the mode and where the changes are.
"""

from __future__ import annotations

import heapq
import itertools
import statistics
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

import anyio
import structlog

from fleet.client import Job, ModelOps
from fleet.errors import (
    ApiError,
    PermanentApiError,
    ProtocolError,
    ServerUnavailable,
    TransientApiError,
)

log = structlog.get_logger("fleet.polling")

# The first look at a job with a known duration comes this much before its expected end...
_EARLY = 0.97
# ...and while it has not overrun by much, the next ones this share of the duration apart.
_CLOSE_GAP = 0.02
_OVERRUN = 1.25
# Past that (or with no expectation), a gap of this share of the time it has run so far.
_BACKOFF = 0.2
# A changed job is read back to this long before the previous look's newest change: covers
# a server whose `updatedAt` is stamped before the change becomes visible.
_CHANGES_OVERLAP = timedelta(seconds=1)
# A look reads the changes since the previous one in pages of this many, sized to twice
# what the previous look found: parsing a full page of jobs costs more than the request.
_CHANGES_PAGE = (50, 200)
# Finished jobs seen in a look but not (yet) followed: a job that ends before its submitter
# hands it over is still found.
_RECENT_FINISHED = 10_000
_STAGE_SAMPLES = 50
_KNOWN_JOB_STATUSES = frozenset(
    {"CREATED", "SCHEDULED", "ASSIGNED", "RUNNING", "COMPLETED", "ERROR", "CANCELLED"}
)


class PollMode(StrEnum):
    AUTO = "auto"
    CHANGES = "changes"
    FINDER = "finder"
    EACH = "each"


@dataclass(slots=True, eq=False)
class _Followed:
    job_id: str
    kind: str  # the stage, for this run's per-stage durations
    started: float
    expected: float | None
    due: float
    created_at: datetime | None  # server time; None for a job from an earlier process
    # Vouched for by the changes listing: created after its first page, or read by id since.
    covered: bool = False
    last_miss: float | None = None
    warned: bool = False
    done: anyio.Event = field(default_factory=anyio.Event)
    job: Job | None = None
    error: ApiError | None = None


@dataclass(frozen=True, slots=True)
class Finished:
    """A followed job's last state, and how long it ran as far as this process could see."""

    job: Job
    ran_s: float


class JobWatch:
    """Follows the run's remote jobs; `run()` lives in the scheduler's task group."""

    def __init__(
        self,
        api: ModelOps,
        *,
        poll_interval: float,
        poll_floor: float,
        mode: PollMode = PollMode.AUTO,
        clock: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]],
    ) -> None:
        self._api = api
        self._max_gap = poll_interval
        self._floor = min(poll_floor, poll_interval)
        self._mode = mode
        self._clock = clock
        self._sleep = sleep
        self._followed: dict[str, _Followed] = {}
        self._due: list[tuple[float, int, _Followed]] = []
        self._tiebreak = itertools.count()
        self._wake = anyio.Event()
        self._sleeping_until = float("inf")
        self._stopped = False
        self._watermark: datetime | None = None  # the newest change seen, in server time
        self._listing_ready = False
        # The newest change on the listing's first page: every change of a job created since
        # then shows up in later pages of changes. None: the first page was empty.
        self._covered_from: datetime | None = None
        self._last_changes = 0
        self._recent: OrderedDict[str, Job] = OrderedDict()
        self._stage_runs: dict[str, deque[float]] = {}
        self.looks = 0

    @property
    def mode(self) -> PollMode:
        return self._mode

    # -- the stage runners' side -------------------------------------------------------------

    async def finished(
        self, job_id: str, created_at: datetime | None, kind: str, expected_s: float | None
    ) -> Finished | None:
        """Wait until `job` ends; None when the run drains first (the job goes on remotely).

        Raises the ApiError of a look that concerned this job (a failed GET, a rejected
        token); a transient one may be followed again by calling this again.
        """
        if self._stopped:
            return None
        now = self._clock()
        expected = expected_s or self._stage_median(kind)
        first = now + (expected * _EARLY if expected else self._floor)
        followed = _Followed(job_id, kind, now, expected, max(first, now + self._floor), created_at)
        if self._recent.pop(job_id, None) is not None:
            # It ended before it was handed over, and the listing will not show it again:
            # read it by id now.
            followed.due = now
            followed.created_at = None
        self._follow(followed)
        try:
            await followed.done.wait()
        finally:
            if not followed.done.is_set():  # cancelled while waiting
                self._followed.pop(job_id, None)
        if followed.error is not None:
            raise followed.error
        if followed.job is None:
            return None
        ran = self._clock() - now
        if followed.last_miss is not None:
            ran = (followed.last_miss + self._clock()) / 2 - now
        self._stage_runs.setdefault(kind, deque(maxlen=_STAGE_SAMPLES)).append(ran)
        return Finished(followed.job, ran)

    def _follow(self, followed: _Followed) -> None:
        self._followed[followed.job_id] = followed
        heapq.heappush(self._due, (followed.due, next(self._tiebreak), followed))
        if followed.due < self._sleeping_until:
            self._wake.set()

    def _stage_median(self, kind: str) -> float | None:
        runs = self._stage_runs.get(kind)
        return statistics.median(runs) if runs and len(runs) >= 3 else None  # noqa: PLR2004

    # -- the watcher -------------------------------------------------------------------------

    async def run(self, stop: anyio.Event) -> None:
        """Look whenever a followed job is due, until `stop` is set; then release every waiter."""
        try:
            # A first look before any job is due: where the changes are now, and the mode.
            await self._look(self._clock())
            while not stop.is_set():
                due = self._next_due()
                now = self._clock()
                if due is None or due > now:
                    await self._pause(stop, None if due is None else due - now)
                    continue
                await self._look(now)
                # Never two looks closer than the floor, however many jobs fall due.
                await self._pause(stop, self._floor)
        finally:
            self._stopped = True
            for followed in self._followed.values():
                followed.done.set()
            self._followed.clear()

    def _next_due(self) -> float | None:
        while self._due:
            due, _, followed = self._due[0]
            if self._followed.get(followed.job_id) is followed and followed.due == due:
                return due
            heapq.heappop(self._due)  # finished, or moved to a later time
        return None

    async def _pause(self, stop: anyio.Event, seconds: float | None) -> None:
        """Sleep `seconds` (None: until woken); a newly followed job due sooner wakes it."""
        self._wake = anyio.Event()
        self._sleeping_until = float("inf") if seconds is None else self._clock() + seconds
        async with anyio.create_task_group() as tg:

            async def wake_on(event: anyio.Event) -> None:
                await event.wait()
                tg.cancel_scope.cancel()

            tg.start_soon(wake_on, self._wake)
            tg.start_soon(wake_on, stop)
            if seconds is not None:
                await self._sleep(seconds)
                tg.cancel_scope.cancel()
        self._sleeping_until = float("inf")

    async def _look(self, now: float) -> None:
        self.looks += 1
        due = [f for f in self._followed.values() if f.due <= now]
        try:
            candidates = await self._candidates(due)
        except ServerUnavailable as exc:
            for followed in list(self._followed.values()):
                self._release(followed, error=exc)
            return
        except (TransientApiError, ProtocolError) as exc:
            # Nothing is lost: the same jobs are due again after a pause.
            log.warning("fleet.poll.failed", error=str(exc), mode=self._mode.value)
            self._reschedule(due, now, miss=False)
            return
        except ApiError as exc:
            for followed in list(self._followed.values()):
                self._release(followed, error=exc)
            return
        # Read at once, not one after another: the client bounds the connections, and the
        # last of a hundred finished jobs is not seen a hundred round trips late.
        async with anyio.create_task_group() as tg:
            for followed in candidates:
                tg.start_soon(self._read, followed, now)
        checked = {followed.job_id for followed in candidates}
        self._reschedule([f for f in due if f.job_id not in checked], now, miss=True)

    async def _read(self, followed: _Followed, now: float) -> None:
        """Read one followed job by id: release it if it ended, else look again later."""
        try:
            job = await self._api.get_job(followed.job_id)
        except ApiError as exc:
            self._release(followed, error=exc)
            return
        if job.terminal:
            self._release(followed, job=job)
            return
        if job.status not in _KNOWN_JOB_STATUSES and not followed.warned:
            # The API notes: treat any other string as not yet terminal. Say so once.
            log.warning("fleet.job.unknown_status", job_id=job.id, status=job.status)
            followed.warned = True
        followed.covered = followed.covered or self._listing_ready
        self._reschedule([followed], now, miss=True)

    async def _candidates(self, due: list[_Followed]) -> list[_Followed]:
        """The followed jobs that may have finished (to be read by id)."""
        if self._mode in {PollMode.AUTO, PollMode.CHANGES}:
            try:
                return await self._changed(due)
            except (PermanentApiError, ProtocolError) as exc:
                if self._mode is PollMode.CHANGES and self._listing_ready:
                    raise
                self._fall_back(PollMode.FINDER, exc)
        if self._mode is PollMode.FINDER:
            try:
                unfinished = {job.id for job in await self._api.unfinished_jobs()}
            except PermanentApiError as exc:
                self._fall_back(PollMode.EACH, exc)
            else:
                return [f for f in self._followed.values() if f.job_id not in unfinished]
        return due

    async def _changed(self, due: list[_Followed]) -> list[_Followed]:
        since = None if self._watermark is None else self._watermark - _CHANGES_OVERLAP
        low, high = _CHANGES_PAGE
        jobs = await self._api.changed_jobs(
            since if self._listing_ready else None, min(max(2 * self._last_changes, low), high)
        )
        self._last_changes = len(jobs)
        first = not self._listing_ready
        self._mode = PollMode.CHANGES
        self._listing_ready = True
        if jobs and jobs[0].updated_at is not None:
            self._watermark = max(jobs[0].updated_at, self._watermark or jobs[0].updated_at)
        if first:
            self._covered_from = self._watermark
        candidates: dict[str, _Followed] = {}
        for job in jobs:
            followed = self._followed.get(job.id)
            if not job.terminal:
                continue
            if followed is None:
                self._remember(job)
            else:
                candidates[job.id] = followed
        # Jobs the listing does not vouch for yet (handed over before the first look, or
        # resumed from an earlier process) are read by id when due.
        for followed in due:
            if not (followed.covered or self._vouched(followed)):
                candidates.setdefault(followed.job_id, followed)
        if first:
            log.info("fleet.poll.mode", mode=PollMode.CHANGES.value)
        return list(candidates.values())

    def _vouched(self, followed: _Followed) -> bool:
        created = followed.created_at
        followed.covered = created is not None and (
            self._covered_from is None or created >= self._covered_from
        )
        return followed.covered

    def _fall_back(self, mode: PollMode, exc: ApiError) -> None:
        log.info("fleet.poll.mode", mode=mode.value, reason=str(exc))
        self._mode = mode

    def _remember(self, job: Job) -> None:
        self._recent[job.id] = job
        if len(self._recent) > _RECENT_FINISHED:
            self._recent.popitem(last=False)

    def _reschedule(self, followed: list[_Followed], now: float, *, miss: bool) -> None:
        for f in followed:
            if f.done.is_set():
                continue
            if miss:
                f.last_miss = now
            ran = now - f.started
            if f.expected is not None and ran < f.expected * _OVERRUN:
                gap = f.expected * _CLOSE_GAP
            else:
                gap = ran * _BACKOFF
            f.due = now + min(max(gap, self._floor), self._max_gap)
            heapq.heappush(self._due, (f.due, next(self._tiebreak), f))

    def _release(
        self, followed: _Followed, *, job: Job | None = None, error: ApiError | None = None
    ) -> None:
        followed.job = job
        followed.error = error
        self._followed.pop(followed.job_id, None)
        followed.done.set()
