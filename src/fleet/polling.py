"""Following remote jobs: one watcher looks after every job of the run, and never for ever.

A stage runner with a job in flight hands it to the `JobWatch` (as an `InFlight`) and waits.
By default each job is read by id, `GET /api/jobs/{id}?projection=expandJob`, the call every
real client makes, on a predicted schedule (looks.py): a job expected to run `p` seconds (the
same model's same stage in earlier runs) is first read a little before the bulk of its
stage's ends fall, then every 6% of the time it has run, and less often once it overruns
them. How far ends fall from their predictions is learned from the jobs this watcher sees
complete; a job handed over before its stage had any has its first look drawn again when it
falls due. A job with no history of its own is looked at soon, then less often the more it
has run (a fifth of it): another model's duration is no prediction (trainings differ
tenfold), and a look too late costs more than a read.
`poll_interval` bounds the gap between two looks at a job with no prediction, and at a
predicted one past its dense looks unless 6% of `p` is longer; `poll_floor` is the
shortest gap between two looks at the server.

Two batched looks can replace most of those reads, but no recorded client uses them, so each
is adopted only after a positive probe on the live server (`poll_mode` says which to try):

- **changes**: the jobs listing sorted by `updatedAt`, newest first, read back to the
  previous look. Probed by asking `sort=updatedAt,asc` and `,desc` for two jobs each: both
  must answer, every job must carry `updatedAt`, both pages must be in the order asked, and
  their first jobs must differ. Spring Data REST drops a sort on a property it cannot map
  and answers 200 unsorted: that is what the probe catches. Fewer than two jobs on the
  server tell nothing: probed again later.
- **finder**: `findByStatusIn` with the unfinished statuses. Probed by asking it after reading
  jobs by id: it must list one that a read has just shown unfinished, and nothing else.

Once adopted, a look is trusted only where it is checked: a job seen finished is read by id;
a job it vouches for as unfinished is read by id once it is overdue (half again its expected
duration). A contradiction (a job read finished that the look should have shown, or read
unfinished that the look said was done), an unreadable answer, or three failed looks in a
row demote the mode for the rest of the run, logged once. A look that fails is not retried:
that look reads its due jobs by id instead.

A read by id that fails (after the client's own retries) is tried again later, never
dropped: the job is then read by id, one send each time, until a read succeeds, since a
listing whose watermark has passed it would not show it again. Reads go out on their own, so
one slow or broken job holds up no other job and no look; a job that cannot be read for
`READ_BUDGET_INTERVALS` poll intervals (and at least `READ_FAILURES` reads) fails its own
stage with that reason (both numbers are in retries.py).

Whatever the mode, nothing waits for ever: a job not read by id for max(2 x its expected
duration, 12 x `poll_interval`) is read by id (the safety net), and a job still unfinished at
its `job_timeout` is released as timed out, for its stage to fail with that reason. A job
answer without `status` means "not finished yet", as the official client reads it (warned
once per job); only the timeout ends such a job.

Why this module is long: the watcher is one schedule over one set of followed jobs. Reads by
id and batched looks both move each job's next look, and each checks the other: a look's
findings are judged by the reads it sends, a failed read withdraws a look's cover, a
contradiction demotes the mode for every job. Split in two, each half would reach into the
other's state at every step.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import KW_ONLY, dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

import anyio
import structlog
from anyio.abc import TaskGroup

from fleet.clock import Clock
from fleet.errors import (
    ApiError,
    PermanentApiError,
    ProtocolError,
    ServerUnavailable,
    TransientApiError,
)
from fleet.looks import Schedule, Spreads
from fleet.modelops import UNFINISHED_JOB_STATUSES, Job, ModelOps
from fleet.retries import READ_BUDGET_INTERVALS, READ_FAILURES, one_send

log = structlog.get_logger("fleet.polling")

# A batched look's "unfinished" is checked by id once a job has run this much of its expected
# duration...
_OVERDUE = 1.5
# ...and any job is read by id at least this often: max(net x expected, net x poll_interval).
_NET_EXPECTED = 2.0
_NET_INTERVALS = 12.0
# A batched look that fails this many times in a row is dropped for the run.
_FAILED_LOOKS = 3
# A probe of the sorted listing asks for this many jobs each way.
_PROBE_SIZE = 2
# An inconclusive probe (too few jobs on the server) is tried again this many intervals later.
_PROBE_AGAIN_INTERVALS = 6.0
# A changed job is read back to this long before the previous look's newest change: covers
# a server whose `updatedAt` is stamped before the change becomes visible.
_CHANGES_OVERLAP = timedelta(seconds=1)
# A look reads the changes since the previous one in pages of this many, sized to twice
# what the previous look found: parsing a full page of jobs costs more than the request.
_CHANGES_PAGE = (50, 200)
# Finished jobs seen in a look but not (yet) followed: a job that ends before its submitter
# hands it over is still found.
_RECENT_FINISHED = 10_000
_KNOWN_JOB_STATUSES = frozenset(
    {"CREATED", "SCHEDULED", "ASSIGNED", "RUNNING", "COMPLETED", "ERROR", "CANCELLED"}
)
_UNFINISHED = frozenset(UNFINISHED_JOB_STATUSES)


class PollMode(StrEnum):
    AUTO = "auto"  # a setting only: try changes, then finder
    CHANGES = "changes"
    FINDER = "finder"
    EACH = "each"


_TRIED: dict[PollMode, tuple[PollMode, ...]] = {
    PollMode.AUTO: (PollMode.CHANGES, PollMode.FINDER),
    PollMode.CHANGES: (PollMode.CHANGES,),
    PollMode.FINDER: (PollMode.FINDER,),
    PollMode.EACH: (),
}


@dataclass(slots=True, eq=False)
class _Followed:
    job_id: str
    kind: str  # the stage (or "score"), for what is logged about it
    started: float  # when the job started, on the watcher's clock (earlier if resumed)
    expected: float | None
    schedule: Schedule
    # Its first look, drawn from the spread known when it was handed over, is drawn again
    # when it falls due: by then more jobs of its stage may have ended.
    replan: bool
    due: float
    created_at: datetime | None  # server time; None for a job from an earlier process
    deadline: float  # when it times out
    since: float  # when this process started following it
    last_read: float  # the last read by id (or `since`)
    # Vouched for by the changes listing: created after its first page, or read by id since.
    covered: bool = False
    cross_checked: bool = False
    last_miss: float | None = None
    reading: bool = False  # a read by id is in flight
    failed_reads: int = 0  # in a row
    failing_since: float | None = None
    warned: set[str] = field(default_factory=set)
    done: anyio.Event = field(default_factory=anyio.Event)
    job: Job | None = None
    error: ApiError | None = None
    timed_out: bool = False


@dataclass(frozen=True, slots=True)
class InFlight:
    """A job handed to the watcher: its id; what it does (the stage, or "score"), for what is
    logged about it; when the server created it (None for a job from an earlier process);
    how long the same model's same stage took before (None: no history); how long ago it
    was submitted (a job resumed from an earlier process is older than its handing over);
    and its timeout, counted from its submission."""

    job_id: str
    kind: str
    _: KW_ONLY
    created_at: datetime | None = None
    expected_s: float | None = None
    age_s: float = 0.0
    timeout_s: float = math.inf


@dataclass(frozen=True, slots=True)
class Finished:
    """A followed job's last state, how long it ran as far as this process could see, and
    whether it was given up on at its timeout (its last state then is not terminal)."""

    job: Job
    ran_s: float
    timed_out: bool = False


Page = tuple[list[Job], int | None]  # a page of jobs, and how many the server says it has


@dataclass(slots=True)
class _Findings:
    """What one look found, for the reads it sends to check against: finished jobs the
    listing showed and its watermark then; followed jobs the finder left out (it says they
    finished) and overdue ones it still lists (unfinished)."""

    watermark: datetime | None = None
    listed_done: set[str] = field(default_factory=set)
    unlisted: set[str] = field(default_factory=set)
    listed_unfinished: set[str] = field(default_factory=set)


def judge_sort(ascending: Page, descending: Page) -> tuple[bool | None, str]:
    """Whether two pages asked `sort=updatedAt,asc` and `,desc` prove the sort: True, False,
    or None when they cannot tell yet; and why."""
    pages = (ascending[0], descending[0])
    if any(
        len(jobs) < _PROBE_SIZE or (total is not None and total < _PROBE_SIZE)
        for jobs, total in (ascending, descending)
    ):
        return None, "fewer than two jobs on the server"
    stamps = [[job.updated_at for job in jobs[:_PROBE_SIZE]] for jobs in pages]
    (a0, a1), (d0, d1) = stamps
    if a0 is None or a1 is None or d0 is None or d1 is None:
        return False, "a job in the listing has no updatedAt"
    if not (a0 <= a1 and d0 >= d1) or pages[0][0].id == pages[1][0].id:
        return False, "the listing does not honour sort=updatedAt"
    if a0 == d0:
        return None, "every job changed at the same instant"
    return True, "sorted both ways"


class JobWatch:
    """Follows the run's remote jobs; `run()` lives in the scheduler's task group."""

    def __init__(
        self,
        api: ModelOps,
        *,
        poll_interval: float,
        poll_floor: float,
        mode: PollMode = PollMode.AUTO,
        clock: Clock,
    ) -> None:
        self._api = api
        self._max_gap = poll_interval
        self._floor = min(poll_floor, poll_interval)
        self._clock = clock
        self._mode = PollMode.EACH
        self._untried = list(_TRIED[mode])
        self._next_probe = -math.inf
        self._failed_looks = 0
        self._failed_probes = 0
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
        self._findings = _Findings()
        self._spreads = Spreads()  # how far tonight's ends fell from their predictions
        # Reads by id run here, beside the looks, for as long as `run()` does.
        self._reads: TaskGroup | None = None

    @property
    def mode(self) -> PollMode:
        """How the watcher looks now: `each` until a batched look is proven."""
        return self._mode

    # -- the stage runners' side -------------------------------------------------------------

    async def finished(self, job: InFlight) -> Finished | None:
        """Wait until the job ends or times out; None when the run drains first (the job goes
        on remotely).

        Raises the ApiError of a look that concerned this job (a failed GET, a rejected
        token); a transient one may be followed again by calling this again.
        """
        if self._stopped:
            return None
        now = self._clock.now()
        # Only the model's own history predicts its job: another model's duration is a poor
        # guess (trainings differ by 10x), and looking late costs far more than a read.
        expected, age_s = job.expected_s, job.age_s
        if expected:
            schedule = self._spreads.of(job.kind).schedule(expected, self._max_gap)
        else:
            schedule = Schedule.unpredicted(self._max_gap)
        job_id = job.job_id
        followed = _Followed(
            job_id,
            job.kind,
            started=now - age_s,
            expected=expected,
            schedule=schedule,
            replan=bool(expected),
            due=max(now - age_s + schedule.first, now + self._floor),
            created_at=job.created_at,
            deadline=now - age_s + job.timeout_s,
            since=now,
            last_read=now,
        )
        if self._recent.pop(job_id, None) is not None or followed.deadline <= now:
            # It ended before it was handed over, and the listing will not show it again
            # (or it is already past its timeout): read it by id now.
            followed.due = now
            followed.replan = False
            followed.created_at = None
        followed.due = min(followed.due, followed.deadline)
        self._follow(followed)
        try:
            await followed.done.wait()
        finally:
            if not followed.done.is_set():  # cancelled while waiting
                self._unfollow(followed)
        if followed.error is not None:
            raise followed.error
        if followed.job is None:
            return None
        return Finished(
            followed.job, _ran(followed, self._clock.now()), timed_out=followed.timed_out
        )

    def _follow(self, followed: _Followed) -> None:
        self._followed[followed.job_id] = followed
        self._schedule(followed, followed.due)

    # -- the watcher -------------------------------------------------------------------------

    async def run(self, stop: anyio.Event) -> None:
        """Look whenever a followed job is due, until `stop` is set; then release every waiter."""
        try:
            async with anyio.create_task_group() as reads:
                self._reads = reads
                # A first probe at start: a project with a job history may prove a batched
                # look before any job of this run is due.
                await self._probe(self._clock.now(), [])
                while not stop.is_set():
                    due = self._next_due()
                    now = self._clock.now()
                    if due is None or due > now:
                        await self._pause(stop, None if due is None else due - now)
                        continue
                    await self._look(now)
                    # Never two looks closer than the floor, however many jobs fall due.
                    await self._pause(stop, self._floor)
                reads.cancel_scope.cancel()
        finally:
            self._reads = None
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
        self._sleeping_until = float("inf") if seconds is None else self._clock.now() + seconds
        async with anyio.create_task_group() as tg:

            async def wake_on(event: anyio.Event) -> None:
                await event.wait()
                tg.cancel_scope.cancel()

            tg.start_soon(wake_on, self._wake)
            tg.start_soon(wake_on, stop)
            if seconds is not None:
                await self._clock.sleep(seconds)
                tg.cancel_scope.cancel()
        self._sleeping_until = float("inf")

    async def _look(self, now: float) -> None:
        self._findings = findings = _Findings()
        due = self._replanned(
            [f for f in self._followed.values() if f.due <= now and not f.reading], now
        )
        await self._probe(now, due)
        try:
            suspects = await self._batched(due, now)
        except ApiError as exc:
            # The server down past the outage budget, a rejected token: every waiter hears it.
            for followed in list(self._followed.values()):
                self._release(followed, error=exc)
            return
        findings.watermark = self._watermark  # what the listing had seen by this look
        # A failed look reads every due job by id; whatever a look said, jobs past the safety
        # net or their timeout are read by id.
        to_read = {f.job_id: f for f in suspects or () if not f.reading}
        for followed in due:
            if suspects is None or self._must_read(followed, now):
                to_read.setdefault(followed.job_id, followed)
        self._reschedule([f for f in due if f.job_id not in to_read], now, miss=True)
        if not to_read:
            return
        for followed in to_read.values():
            followed.reading = True
            followed.due = math.inf  # out of the schedule until its read is back
        # Read at once and on their own, not one after another and not within the look: the
        # client bounds the connections, the last of a hundred finished jobs is not seen a
        # hundred round trips late, and one slow answer holds up nothing else.
        assert self._reads is not None
        self._reads.start_soon(self._read_batch, list(to_read.values()), now, findings)

    def _replanned(self, due: list[_Followed], now: float) -> list[_Followed]:
        """The due jobs still due once each first look is drawn again from the spread of its
        stage's ends so far; the others wait for their new first look."""
        still = []
        for f in due:
            if f.replan and f.expected:
                f.replan = False
                f.schedule = self._spreads.of(f.kind).schedule(f.expected, self._max_gap)
                first = min(f.started + f.schedule.first, f.deadline)
                if first > now:
                    self._schedule(f, first)
                    continue
            still.append(f)
        return still

    async def _read_batch(self, batch: list[_Followed], now: float, findings: _Findings) -> None:
        async with anyio.create_task_group() as tg:
            for followed in batch:
                tg.start_soon(self._read, followed, now, findings)
        await self._probe_finder(now, batch)

    def _must_read(self, followed: _Followed, now: float) -> bool:
        """Read by id whatever a batched look says: the safety net and the timeout."""
        if now >= followed.deadline:
            return True
        expected = followed.expected or 0.0
        net = max(_NET_EXPECTED * expected, _NET_INTERVALS * self._max_gap)
        if now - followed.last_read >= net:
            return True
        return self._mode is PollMode.EACH

    async def _read(self, followed: _Followed, now: float, findings: _Findings) -> None:
        """Read one followed job by id: release it if it ended, else look again later."""
        try:
            job = await self._get_job(followed)
        except TransientApiError as exc:
            if isinstance(exc, ServerUnavailable):
                self._release(followed, error=exc)
            else:
                self._read_failed(followed, exc)
            return
        except ApiError as exc:
            self._release(followed, error=exc)
            return
        finally:
            followed.reading = False
        followed.last_read = now
        followed.failed_reads = 0
        followed.failing_since = None
        if job.terminal:
            if job.id in findings.listed_unfinished:
                self._demote(
                    f"findByStatusIn listed job {job.id} as unfinished; it is {job.status}"
                )
            self._check_finished(followed, job, findings)
            self._learn(followed, job, now)
            self._release(followed, job=job)
            return
        if job.status is None:
            self._warn_once(followed, "fleet.job.no_status", job)
        elif job.status not in _KNOWN_JOB_STATUSES:
            # The API notes: treat any other string as not yet terminal. Say so once.
            self._warn_once(followed, "fleet.job.unknown_status", job)
        elif job.id in findings.unlisted:
            self._demote(f"findByStatusIn left out job {job.id}, which is {job.status}")
        if now >= followed.deadline:
            self._release(followed, job=job, timed_out=True)
            return
        followed.covered = followed.covered or self._listing_ready
        self._reschedule([followed], now, miss=True)

    async def _get_job(self, followed: _Followed) -> Job:
        """A read by id: one call; after a failed one, a single send (this schedule is its
        retry, and the failed read had the call's whole budget: retries.py)."""
        if followed.failed_reads:
            return await self._api.get_job(followed.job_id, one_send())
        return await self._api.get_job(followed.job_id)

    def _read_failed(self, followed: _Followed, exc: TransientApiError) -> None:
        """A read by id failed: read it by id again soon (no listing vouches for it any more:
        its watermark may have passed the job's end), until its own budget is spent."""
        now = self._clock.now()
        followed.failed_reads += 1
        if followed.failing_since is None:
            followed.failing_since = now
        failing_s = now - followed.failing_since
        budget_s = READ_BUDGET_INTERVALS * self._max_gap
        if (followed.failed_reads >= READ_FAILURES and failing_s >= budget_s) or (
            now >= followed.deadline
        ):
            self._release(
                followed,
                error=PermanentApiError(
                    f"job {followed.job_id} could not be read for {failing_s:.0f} s "
                    f"({followed.failed_reads} tries): {exc}",
                    method=exc.method,
                    path=exc.path,
                    status=exc.status,
                ),
            )
            return
        log.info("fleet.poll.read_failed", job_id=followed.job_id, error=str(exc))
        followed.covered = False
        gap = min(self._floor * 2.0**followed.failed_reads, self._max_gap)
        self._schedule(followed, min(now + gap, max(followed.deadline, now)))

    def _learn(self, followed: _Followed, job: Job, now: float) -> None:
        """A predicted job completed: how far its end fell from the prediction places the
        next looks at its stage's jobs (a failed job may end at any time)."""
        if followed.expected is not None and job.status == "COMPLETED":
            self._spreads.ended(
                followed.kind,
                followed.expected,
                _ran(followed, now),
                at_first_look=followed.last_miss is None,
            )

    def _check_finished(self, followed: _Followed, job: Job, findings: _Findings) -> None:
        """A job read finished that the trusted listing should have shown finished, and did
        not, contradicts it (a server whose `updatedAt` does not move, say). Judged by the
        look that sent the read: a later look's watermark may have passed the job since."""
        if self._mode is not PollMode.CHANGES or not followed.covered:
            return
        if job.id in findings.listed_done:
            return
        mark = findings.watermark
        if mark is None or job.updated_at is None or job.updated_at < mark - _CHANGES_OVERLAP:
            self._demote(f"job {job.id} is {job.status} but the sorted listing never showed it")

    def _warn_once(self, followed: _Followed, event: str, job: Job) -> None:
        if event not in followed.warned:
            followed.warned.add(event)
            log.warning(event, job_id=job.id, status=job.status, kind=followed.kind)

    # -- batched looks -----------------------------------------------------------------------

    async def _batched(self, due: list[_Followed], now: float) -> list[_Followed] | None:
        """The followed jobs a batched look says may have finished, plus the due ones it
        cannot vouch for; in `each` mode, none. None: the look failed."""
        if self._mode is PollMode.EACH:
            return []
        try:
            if self._mode is PollMode.CHANGES:
                suspects = await self._changed(due, now)
            else:
                suspects = await self._finder(now)
        except (PermanentApiError, ProtocolError) as exc:
            # 4xx, or an answer that breaks the look's promise: dropped for the run.
            self._demote(str(exc))
            return None
        except ServerUnavailable:
            raise
        except TransientApiError as exc:
            self._failed_looks += 1
            log.warning("fleet.poll.failed", error=str(exc), mode=self._mode.value)
            if self._failed_looks >= _FAILED_LOOKS:
                self._demote(f"{self._failed_looks} looks in a row failed: {exc}")
            return None  # not retried: this time the due jobs are read by id
        self._failed_looks = 0
        return suspects

    async def _changed(self, due: list[_Followed], now: float) -> list[_Followed]:
        since = None if self._watermark is None else self._watermark - _CHANGES_OVERLAP
        low, high = _CHANGES_PAGE
        jobs = await self._api.changed_jobs(
            since if self._listing_ready else None, min(max(2 * self._last_changes, low), high)
        )
        self._last_changes = len(jobs)
        first = not self._listing_ready
        self._listing_ready = True
        if jobs and jobs[0].updated_at is not None:
            self._watermark = max(jobs[0].updated_at, self._watermark or jobs[0].updated_at)
        if first:
            self._covered_from = self._watermark
        suspects: dict[str, _Followed] = {}
        for job in jobs:
            followed = self._followed.get(job.id)
            if not job.terminal:
                continue
            self._findings.listed_done.add(job.id)
            if followed is None:
                self._remember(job)
            else:
                suspects[job.id] = followed
        for followed in due:
            if not (followed.covered or self._vouched(followed)):
                # Handed over before the listing's first page, or resumed from an earlier
                # process: the listing cannot vouch for it yet.
                suspects.setdefault(followed.job_id, followed)
            elif self._overdue(followed, now):
                suspects.setdefault(followed.job_id, followed)
        return list(suspects.values())

    async def _finder(self, now: float) -> list[_Followed]:
        unfinished = await self._api.unfinished_jobs()
        if any(job.status not in _UNFINISHED for job in unfinished):
            raise ProtocolError("findByStatusIn listed a job in a status it was not asked for")
        listed = {job.id for job in unfinished}
        suspects = []
        # Only jobs followed before the look began: a newer one may postdate the answer.
        for followed in [f for f in self._followed.values() if f.since < now and not f.reading]:
            if followed.job_id not in listed:
                self._findings.unlisted.add(followed.job_id)
                suspects.append(followed)
            elif followed.due <= now and self._overdue(followed, now):
                self._findings.listed_unfinished.add(followed.job_id)
                suspects.append(followed)
        return suspects

    def _overdue(self, followed: _Followed, now: float) -> bool:
        """Past half again its expected duration, for the first time: checked by id once."""
        expected = followed.expected
        if expected is None or followed.cross_checked:
            return False
        if now - followed.started < expected * _OVERDUE:
            return False
        followed.cross_checked = True
        return True

    def _vouched(self, followed: _Followed) -> bool:
        created = followed.created_at
        followed.covered = created is not None and (
            self._covered_from is None or created >= self._covered_from
        )
        return followed.covered

    def _demote(self, reason: str) -> None:
        """Drop the batched look for the rest of the run and go back to reading by id."""
        if self._mode is PollMode.EACH:
            return
        log.warning("fleet.poll.demoted", mode=self._mode.value, to="each", reason=reason)
        self._mode = PollMode.EACH
        self._failed_looks = 0
        self._listing_ready = False
        for followed in self._followed.values():
            followed.covered = False

    # -- probes ------------------------------------------------------------------------------

    async def _probe(self, now: float, due: list[_Followed]) -> None:
        """Try to prove the sorted listing, while it is untried and the watcher reads by id."""
        if self._mode is not PollMode.EACH or PollMode.CHANGES not in self._untried:
            return
        if now < self._next_probe:
            return
        verdict = await self._probe_changes()
        if verdict is None:
            self._next_probe = now + _PROBE_AGAIN_INTERVALS * self._max_gap
            return
        if verdict:
            self._adopt(PollMode.CHANGES)
            for followed in due:
                followed.covered = False  # read by id until the listing vouches for them

    async def _probe_changes(self) -> bool | None:
        """True: the server sorts jobs by a moving `updatedAt`; False: it does not; None: it
        cannot tell yet (too few jobs, or the probe failed: it counts as a failed look)."""
        verdict: bool | None
        try:
            ascending = await self._api.job_page("updatedAt,asc", _PROBE_SIZE)
            descending = await self._api.job_page("updatedAt,desc", _PROBE_SIZE)
        except (PermanentApiError, ProtocolError) as exc:
            verdict, reason = False, str(exc)
        except ServerUnavailable:
            return None
        except TransientApiError as exc:
            self._failed_probes += 1
            if self._failed_probes < _FAILED_LOOKS:
                return None
            verdict, reason = False, f"{self._failed_probes} probes failed: {exc}"
        except ApiError:
            return None  # a rejected token: the reads by id will say so to every waiter
        else:
            verdict, reason = judge_sort(ascending, descending)
        if verdict is False:
            self._rejected(PollMode.CHANGES, reason)
        return verdict

    async def _probe_finder(self, now: float, read: Iterable[_Followed]) -> None:
        """Try to prove findByStatusIn against jobs a read has just shown unfinished."""
        if self._mode is not PollMode.EACH or self._untried != [PollMode.FINDER]:
            return
        if now < self._next_probe:
            return
        running = {
            f.job_id
            for f in read
            if not f.done.is_set() and f.last_read == now and f.job_id in self._followed
        }
        if not running:
            return
        try:
            unfinished = await self._api.unfinished_jobs()
        except (PermanentApiError, ProtocolError) as exc:
            self._rejected(PollMode.FINDER, str(exc))
            return
        except ApiError:  # transient, or a rejected token the reads will report
            self._next_probe = now + _PROBE_AGAIN_INTERVALS * self._max_gap
            return
        listed = {job.id for job in unfinished}
        if any(job.status not in _UNFINISHED for job in unfinished):
            self._rejected(PollMode.FINDER, "it lists jobs in statuses it was not asked for")
        elif running & listed:
            self._adopt(PollMode.FINDER)
        elif len(running) >= _FAILED_LOOKS:
            self._rejected(PollMode.FINDER, "it does not list jobs that are running")
        else:
            self._next_probe = now + _PROBE_AGAIN_INTERVALS * self._max_gap

    def _adopt(self, mode: PollMode) -> None:
        self._untried = [m for m in self._untried if m is not mode]
        self._mode = mode
        self._failed_looks = 0
        log.info("fleet.poll.mode", mode=mode.value)

    def _rejected(self, mode: PollMode, reason: str) -> None:
        if mode in self._untried:
            self._untried.remove(mode)
        log.info("fleet.poll.probe_failed", mode=mode.value, reason=reason)

    # -- bookkeeping -------------------------------------------------------------------------

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
            gap = f.schedule.gap(now - f.started, self._floor)
            self._schedule(f, min(now + gap, max(f.deadline, now)))

    def _schedule(self, followed: _Followed, due: float) -> None:
        followed.due = due
        heapq.heappush(self._due, (due, next(self._tiebreak), followed))
        if due < self._sleeping_until:
            self._wake.set()

    def _release(
        self,
        followed: _Followed,
        *,
        job: Job | None = None,
        error: ApiError | None = None,
        timed_out: bool = False,
    ) -> None:
        followed.job = job
        followed.error = error
        followed.timed_out = timed_out
        self._unfollow(followed)
        followed.done.set()

    def _unfollow(self, followed: _Followed) -> None:
        """Forget the job, unless it was handed over again since (a read of the old hand-over
        may still come back): the newer one stays followed."""
        if self._followed.get(followed.job_id) is followed:
            del self._followed[followed.job_id]


def _ran(followed: _Followed, now: float) -> float:
    """How long a job seen finished at `now` ran, as far as its looks tell: to the middle of
    the last look that missed its end and the one that saw it."""
    if followed.last_miss is None:
        return now - followed.started
    return (followed.last_miss + now) / 2 - followed.started
