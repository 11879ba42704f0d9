"""The job watcher: per-job reads by default, batched looks only once proven, never for ever."""

from __future__ import annotations

import itertools
import math
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

import anyio
import anyio.lowlevel
import pytest
from structlog.testing import capture_logs

from fleet.clock import Clock
from fleet.errors import AuthError, NotFound, PermanentApiError, TransientApiError
from fleet.modelops import UNFINISHED_JOB_STATUSES, Job
from fleet.polling import Finished, InFlight, JobWatch, PollMode, judge_sort
from fleet.retries import Account

EPOCH = datetime(2026, 11, 25, tzinfo=UTC)

Sort = Literal["honoured", "dropped", "error"]
Stamp = Literal["fresh", "stale", "absent"]


@dataclass(frozen=True)
class Server:
    """How the fake server answers what no recording says."""

    sort: Sort = "dropped"
    updated_at: Stamp = "absent"
    finder: bool = False
    finder_stale: bool = False  # the finder keeps listing jobs that ended
    no_status_every: int = 0  # every n-th read by id lacks `status` (0: never)
    history: int = 2  # finished jobs already on the server


class FakeJobs:
    """Jobs that end at known times on a virtual clock, behind every way to ask about them."""

    def __init__(self, server: Server | None = None) -> None:
        self.server = server or Server()
        self.now = 0.0
        self.ends: dict[str, float] = {}
        self.created: dict[str, float] = {}
        self.calls: Counter[str] = Counter()
        self.fail_with: Exception | None = None  # raised by the batched looks
        self.fail_gets_with: Exception | None = None
        self.failing_reads: Counter[str] = Counter()  # reads of a job still to fail, by id
        self.broken: set[str] = set()  # jobs whose every read fails
        self.hung: set[str] = set()  # jobs whose reads never answer until `unhang` is set
        self.unhang = anyio.Event()
        self._reads = itertools.count(1)
        self.reads_of: Counter[str] = Counter()
        self.seen_done: dict[str, float] = {}  # when a read first found each job finished
        self.single_sends: Counter[str] = Counter()  # reads given a one-send account, by id
        for n in range(self.server.history):
            self.submit(f"old{n}", 1.0)
            self.now += 1.0
        self.now += 10.0

    async def sleep(self, seconds: float) -> None:
        """Virtual time passes a second at a time, so a wake-up cuts a long sleep short."""
        end = self.now + seconds
        while self.now < end:
            self.now = min(self.now + 1.0, end)
            await anyio.lowlevel.checkpoint()

    @property
    def clock(self) -> Clock:
        """The watcher's clock: this server's virtual time."""
        return Clock(now=lambda: self.now, sleep=self.sleep)

    def submit(self, job_id: str, runs_s: float) -> datetime:
        self.created[job_id] = self.now
        self.ends[job_id] = self.now + runs_s
        return EPOCH + timedelta(seconds=self.now)

    def _job(self, job_id: str, *, status: bool = True) -> Job:
        done = self.now >= self.ends[job_id]
        changed = self.ends[job_id] if done else self.created[job_id]
        stamp = {"fresh": changed, "stale": self.created[job_id], "absent": None}
        at = stamp[self.server.updated_at]
        return Job(
            id=job_id,
            status=("COMPLETED" if done else "RUNNING") if status else None,
            type="TRAINING",
            model_id="m",
            trained_model_id="t",
            created_at=EPOCH + timedelta(seconds=self.created[job_id]),
            updated_at=None if at is None else EPOCH + timedelta(seconds=at),
        )

    def _by_change(self) -> list[Job]:
        """The jobs in the order the server sorts `updatedAt` ascending (its own notion)."""

        def changed(job_id: str) -> float:
            ended = self.now >= self.ends[job_id]
            if self.server.updated_at == "stale" or not ended:
                return self.created[job_id]
            return self.ends[job_id]

        ids = sorted(self.ends, key=lambda j: (changed(j), self.created[j]))
        return [self._job(j) for j in ids]

    def _listing(self, direction: str) -> list[Job]:
        if self.server.sort == "error":
            raise TransientApiError("GET /api/jobs: HTTP 500", status=500)
        if self.server.sort == "dropped":
            return [self._job(j) for j in sorted(self.ends, key=lambda j: self.created[j])]
        jobs = self._by_change()
        return jobs[::-1] if direction == "desc" else jobs

    async def get_job(self, job_id: str, account: Account | None = None) -> Job:
        self.calls["get"] += 1
        self.reads_of[job_id] += 1
        if account is not None:
            assert account.policy.attempts == 1  # the watcher gives only single sends
            self.single_sends[job_id] += 1
        if self.fail_gets_with is not None:
            raise self.fail_gets_with
        if job_id in self.hung:
            await self.unhang.wait()
        if job_id in self.broken or self.failing_reads[job_id] > 0:
            self.failing_reads[job_id] -= 1
            raise TransientApiError(f"GET /api/jobs/{job_id}: HTTP 500", status=500)
        every = self.server.no_status_every
        job = self._job(job_id, status=not (every and next(self._reads) % every == 0))
        if job.terminal:
            self.seen_done.setdefault(job_id, self.now)
        return job

    async def job_page(self, sort: str, size: int) -> tuple[list[Job], int | None]:
        self.calls["probe"] += 1
        jobs = self._listing(sort.split(",")[1])
        return jobs[:size], len(jobs)

    async def changed_jobs(self, since: datetime | None, page_size: int = 20) -> list[Job]:
        self.calls["changes"] += 1
        if self.fail_with is not None:
            raise self.fail_with
        jobs = self._listing("desc")
        out: list[Job] = []
        last = None
        for job in jobs:
            if job.updated_at is None:
                raise PermanentApiError("a job has no updatedAt")
            if last is not None and job.updated_at > last:
                raise PermanentApiError("not sorted")
            last = job.updated_at
            if since is not None and job.updated_at < since:
                break
            out.append(job)
            if since is None and len(out) >= page_size:
                break
        return out

    async def unfinished_jobs(self) -> list[Job]:
        self.calls["finder"] += 1
        if self.fail_with is not None:
            raise self.fail_with
        if not self.server.finder:
            raise NotFound("GET /api/jobs/search/findByStatusIn: HTTP 404", status=404)
        listed = [j for j in self.ends if self.server.finder_stale or self.now < self.ends[j]]
        return [Job(j, "RUNNING", "TRAINING", "m", "t", None) for j in listed]


def _watch(jobs: FakeJobs, **overrides: object) -> JobWatch:
    options: dict[str, object] = {"poll_interval": 30.0, "poll_floor": 0.5, **overrides}
    return JobWatch(jobs, clock=jobs.clock, **options)  # type: ignore[arg-type]


async def _follow_all(  # noqa: PLR0913 - a test's knobs, each keyword-only with a default
    jobs: FakeJobs,
    watch: JobWatch,
    runs: dict[str, float],
    expected: Callable[[str], float | None] = lambda _: None,
    *,
    timeout_s: float = math.inf,
    stagger_s: float = 0.0,
) -> dict[str, Finished | None]:
    """Submit and follow each job (the n-th `stagger_s` x n later); their results."""
    results: dict[str, Finished | None] = {}
    stop = anyio.Event()
    order = {job_id: n for n, job_id in enumerate(runs)}

    async def one(job_id: str, runs_s: float) -> None:
        start = jobs.now + stagger_s * order[job_id]
        while jobs.now < start:
            await anyio.lowlevel.checkpoint()
        created = jobs.submit(job_id, runs_s)
        handed = InFlight(
            job_id, "train", created_at=created, expected_s=expected(job_id), timeout_s=timeout_s
        )
        results[job_id] = await watch.finished(handed)

    async with anyio.create_task_group() as tg:
        tg.start_soon(watch.run, stop)
        async with anyio.create_task_group() as followers:
            for job_id, runs_s in runs.items():
                followers.start_soon(one, job_id, runs_s)
        stop.set()
    return results


def _all_completed(results: dict[str, Finished | None]) -> bool:
    return all(r is not None and r.job.status == "COMPLETED" for r in results.values())


# -- the default: reads by id ---------------------------------------------------------------


async def test_by_default_on_a_server_that_drops_the_sort_every_job_is_read_by_id() -> None:
    """Spring Data REST's 200-unsorted answer is caught by the probe: no look is trusted."""
    jobs = FakeJobs()
    watch = _watch(jobs)
    runs = {f"j{i}": 100.0 + i for i in range(20)}
    with capture_logs() as logs:
        results = await _follow_all(jobs, watch, runs, expected=lambda j: runs[j])
    assert _all_completed(results)
    assert watch.mode is PollMode.EACH
    assert jobs.calls["changes"] == 0
    assert jobs.calls["probe"] == 2  # one probe, two pages, then never again
    assert [e for e in logs if e["event"] == "fleet.poll.probe_failed"]


async def test_each_reads_a_job_near_its_expected_end() -> None:
    """With history, a job is read a few times around its end, not every interval."""
    jobs = FakeJobs()
    results = await _follow_all(jobs, _watch(jobs), {"long": 600.0}, expected=lambda _: 590.0)
    finished = results["long"]
    assert finished is not None
    assert jobs.now - (jobs.created["long"] + 600.0) <= 590 * 0.02 + 1e-9
    assert jobs.calls["get"] <= 4


async def test_predicted_jobs_take_under_three_reads_and_few_are_seen_late() -> None:
    """Jobs that run their prediction give or take 7% (lognormal, as the emulator's nights
    do): a look before most ends, then every `GAP` of the run; the spread is learned as jobs
    end, so after the first few a job takes under three reads and 95% are seen within 8% of
    their length."""
    jobs = FakeJobs()
    rng = random.Random(3)
    expected = {f"j{i}": rng.uniform(400.0, 800.0) for i in range(150)}
    runs = {j: e * rng.lognormvariate(0.0, 0.07) for j, e in expected.items()}
    await _follow_all(jobs, _watch(jobs), runs, lambda j: expected[j], stagger_s=20.0)
    learned = list(runs)[30:]  # once their stage's spread is known
    late = sorted((jobs.seen_done[j] - jobs.ends[j]) / runs[j] for j in learned)
    reads = sum(jobs.reads_of[j] for j in learned) / len(learned)
    assert reads < 3.0
    assert late[int(0.95 * len(late))] <= 0.08
    assert late[-1] <= 0.3  # an early end is seen at the first look


async def test_a_first_look_drawn_before_its_stage_had_ended_is_drawn_again() -> None:
    """A long job handed over with only the prior to go by (a first look 10% early) is looked
    at first where tonight's ends, all as predicted, say it should be."""
    jobs = FakeJobs()
    runs = {"long": 1000.0} | {f"short{i}": 100.0 for i in range(12)}
    await _follow_all(jobs, _watch(jobs), runs, lambda j: runs[j])
    assert jobs.reads_of["long"] <= 2  # the prior's first look alone would take four
    assert jobs.seen_done["long"] - 1000.0 - jobs.created["long"] <= 0.05 * 1000.0


async def test_a_predicted_job_that_never_ends_is_released_at_its_timeout() -> None:
    """Past its dense looks it backs off: a fifth of its run apart, at most poll_interval."""
    jobs = FakeJobs()
    results = await _follow_all(
        jobs, _watch(jobs), {"stuck": math.inf}, lambda _: 100.0, timeout_s=3600.0
    )
    finished = results["stuck"]
    assert finished is not None
    assert finished.timed_out
    assert jobs.now - jobs.created["stuck"] <= 3600.0 + 30.0
    assert jobs.reads_of["stuck"] <= 3600.0 / 30.0 + 15


async def test_without_history_reads_back_off_up_to_poll_interval() -> None:
    jobs = FakeJobs()
    await _follow_all(jobs, _watch(jobs, poll_interval=30.0), {"j": 3600.0})
    # Backing off by a fifth of the time run so far, capped at 30 s: about 140 reads for an
    # hour, not the 7,200 a fixed 0.5 s would take.
    assert jobs.calls["get"] < 160
    assert jobs.now - (jobs.created["j"] + 3600.0) <= 30.0


async def test_a_job_without_history_is_not_read_late_for_another_models_duration() -> None:
    """Three 900 s trainings have ended; a 150 s one of a model with no history of its own is
    still seen within poll_interval of its end: another model's duration is no prediction."""
    jobs = FakeJobs()
    watch = _watch(jobs, poll_interval=5.0)
    stop = anyio.Event()
    results: dict[str, Finished | None] = {}

    async def follow(job_id: str, runs_s: float) -> None:
        created = jobs.submit(job_id, runs_s)
        results[job_id] = await watch.finished(InFlight(job_id, "train", created_at=created))

    async with anyio.create_task_group() as tg:
        tg.start_soon(watch.run, stop)
        async with anyio.create_task_group() as first:
            for job_id, runs_s in {"a": 900.0, "b": 910.0, "c": 920.0}.items():
                first.start_soon(follow, job_id, runs_s)
        await follow("short", 150.0)
        stop.set()
    finished = results["short"]
    assert finished is not None
    assert finished.job.status == "COMPLETED"
    assert finished.ran_s - 150.0 <= 5.0


async def test_each_mode_never_probes() -> None:
    jobs = FakeJobs(Server(sort="honoured", updated_at="fresh", finder=True))
    watch = _watch(jobs, mode=PollMode.EACH)
    results = await _follow_all(jobs, watch, {"a": 50.0, "b": 70.0})
    assert _all_completed(results)
    assert jobs.calls["probe"] == jobs.calls["changes"] == jobs.calls["finder"] == 0


async def test_a_job_read_without_status_is_not_finished_and_warned_once() -> None:
    """The official client reads a missing status as UNKNOWN and keeps polling; so does fleet."""
    jobs = FakeJobs(Server(no_status_every=2))
    with capture_logs() as logs:
        results = await _follow_all(jobs, _watch(jobs), {"a": 300.0})
    assert _all_completed(results)
    warned = [e for e in logs if e["event"] == "fleet.job.no_status"]
    assert len(warned) == 1
    assert warned[0]["job_id"] == "a"


# -- the sorted listing ----------------------------------------------------------------------


async def test_a_sort_proven_at_start_covers_every_job_in_one_look() -> None:
    jobs = FakeJobs(Server(sort="honoured", updated_at="fresh"))
    watch = _watch(jobs)
    runs = {f"j{i}": 100.0 + i for i in range(50)}
    results = await _follow_all(jobs, watch, runs, expected=lambda j: runs[j])
    assert _all_completed(results)
    assert watch.mode is PollMode.CHANGES
    assert jobs.calls["get"] == 50  # the one confirming read per job
    assert jobs.calls["changes"] <= 100


async def test_on_a_fresh_project_the_probe_waits_for_two_jobs() -> None:
    """Zero jobs tell nothing about a sort: the probe comes back once there are some."""
    jobs = FakeJobs(Server(sort="honoured", updated_at="fresh", history=0))
    watch = _watch(jobs, poll_interval=5.0)
    runs = {f"j{i}": 600.0 + i for i in range(5)}
    results = await _follow_all(jobs, watch, runs)
    assert _all_completed(results)
    assert watch.mode is PollMode.CHANGES
    assert jobs.calls["probe"] >= 4  # inconclusive at start, conclusive later


async def test_a_listing_whose_updated_at_never_moves_is_demoted_and_no_job_is_lost() -> None:
    """Sorted, but finished jobs never come to the top: the safety net reads them by id,
    sees the contradiction, and the watcher goes back to reading by id."""
    jobs = FakeJobs(Server(sort="honoured", updated_at="stale"))
    watch = _watch(jobs, poll_interval=5.0)
    runs = {f"j{i}": 100.0 + 10 * i for i in range(6)}
    with capture_logs() as logs:
        results = await _follow_all(jobs, watch, runs, expected=lambda j: runs[j], stagger_s=30)
    assert _all_completed(results)
    assert watch.mode is PollMode.EACH
    demoted = [e for e in logs if e["event"] == "fleet.poll.demoted"]
    assert len(demoted) == 1
    assert "never showed it" in demoted[0]["reason"]
    latest = max(jobs.created[j] + runs[j] for j in runs)
    assert jobs.now - latest <= 2 * 150.0  # seen within the safety net's bound


async def test_a_sort_answered_500_is_given_up_after_three_probes() -> None:
    jobs = FakeJobs(Server(sort="error"))
    watch = _watch(jobs, poll_interval=5.0)
    results = await _follow_all(jobs, watch, {"a": 2000.0})
    assert _all_completed(results)
    assert watch.mode is PollMode.EACH
    assert jobs.calls["probe"] == 3  # the first page of each of three probes, then no more


async def test_failing_looks_fall_back_to_reads_and_are_dropped_after_three() -> None:
    """A look that fails is not retried: its due jobs are read by id; three in a row end it."""
    jobs = FakeJobs(Server(sort="honoured", updated_at="fresh"))
    watch = _watch(jobs, poll_interval=5.0)
    runs = {f"j{i}": 200.0 + i for i in range(5)}
    stop = anyio.Event()
    results: dict[str, Finished | None] = {}

    async def one(job_id: str) -> None:
        created = jobs.submit(job_id, runs[job_id])
        results[job_id] = await watch.finished(InFlight(job_id, "train", created_at=created))

    async with anyio.create_task_group() as tg:
        tg.start_soon(watch.run, stop)
        await anyio.lowlevel.checkpoint()
        assert watch.mode is PollMode.CHANGES
        jobs.fail_with = TransientApiError("GET /api/jobs: HTTP 503", status=503)
        async with anyio.create_task_group() as followers:
            for job_id in runs:
                followers.start_soon(one, job_id)
        stop.set()
    assert _all_completed(results)
    assert watch.mode is PollMode.EACH
    assert jobs.calls["changes"] == 3


# -- the finder ------------------------------------------------------------------------------


async def test_a_finder_that_lists_running_jobs_is_adopted() -> None:
    jobs = FakeJobs(Server(finder=True))
    watch = _watch(jobs, poll_interval=5.0)
    runs = {f"j{i}": 300.0 + i for i in range(10)}
    results = await _follow_all(jobs, watch, runs, expected=lambda j: runs[j])
    assert _all_completed(results)
    assert watch.mode is PollMode.FINDER


async def test_a_finder_that_keeps_listing_finished_jobs_is_demoted() -> None:
    """An overdue job the finder still calls unfinished is read by id: it is COMPLETED."""
    jobs = FakeJobs(Server(finder=True, finder_stale=True))
    watch = _watch(jobs, poll_interval=5.0)
    runs = {f"j{i}": 100.0 + i for i in range(4)}
    with capture_logs() as logs:
        results = await _follow_all(jobs, watch, runs, expected=lambda j: runs[j])
    assert _all_completed(results)
    assert watch.mode is PollMode.EACH
    assert [e for e in logs if e["event"] == "fleet.poll.demoted"]


async def test_without_a_finder_the_probe_is_refused_once() -> None:
    jobs = FakeJobs(Server(finder=False))
    watch = _watch(jobs, poll_interval=5.0)
    results = await _follow_all(jobs, watch, {"a": 500.0, "b": 600.0})
    assert _all_completed(results)
    assert jobs.calls["finder"] == 1


# -- never for ever --------------------------------------------------------------------------


async def test_a_job_that_never_ends_is_released_at_its_timeout() -> None:
    jobs = FakeJobs()
    results = await _follow_all(jobs, _watch(jobs), {"stuck": math.inf}, timeout_s=3600.0)
    finished = results["stuck"]
    assert finished is not None
    assert finished.timed_out
    assert finished.job.status == "RUNNING"
    assert jobs.now - jobs.created["stuck"] == pytest.approx(3600.0, abs=31.0)


async def test_a_resumed_job_times_out_from_when_it_was_submitted() -> None:
    jobs = FakeJobs()
    watch = _watch(jobs)
    jobs.submit("old-stuck", math.inf)
    stop = anyio.Event()
    results: list[Finished | None] = []

    async def one() -> None:
        results.append(
            await watch.finished(InFlight("old-stuck", "train", age_s=3000.0, timeout_s=3600.0))
        )

    async with anyio.create_task_group() as tg:
        tg.start_soon(watch.run, stop)
        async with anyio.create_task_group() as followers:
            followers.start_soon(one)
        stop.set()
    assert results[0] is not None
    assert results[0].timed_out
    assert jobs.now - jobs.created["old-stuck"] <= 630.0


@pytest.mark.parametrize(
    "server",
    [
        Server(),
        Server(history=0),
        Server(sort="honoured", updated_at="fresh"),
        Server(sort="honoured", updated_at="fresh", history=0),
        Server(sort="honoured", updated_at="stale"),
        Server(sort="honoured", updated_at="absent"),
        Server(sort="error"),
        Server(finder=True),
        Server(finder=True, finder_stale=True),
        Server(sort="honoured", updated_at="stale", finder=True, finder_stale=True),
        Server(no_status_every=3),
        Server(sort="honoured", updated_at="fresh", no_status_every=2),
    ],
    ids=repr,
)
async def test_no_job_is_waited_on_for_ever(server: Server) -> None:
    """The invariant, on every server: each job ends seen or timed out, within its timeout
    plus one poll interval, in a bounded number of requests."""
    jobs = FakeJobs(server)
    watch = _watch(jobs, poll_interval=5.0)
    runs = {f"j{i}": 60.0 * (i + 1) for i in range(6)} | {"stuck": math.inf}
    timeout = 7200.0
    results = await _follow_all(jobs, watch, runs, timeout_s=timeout)
    assert all(results[j] is not None and results[j].job.terminal for j in runs if j != "stuck")  # type: ignore[union-attr]
    stuck = results["stuck"]
    assert stuck is not None
    assert stuck.timed_out
    assert jobs.now <= jobs.created["stuck"] + timeout + 5.0
    # At most a read every poll_floor..poll_interval per job, plus the looks: bounded.
    assert sum(jobs.calls.values()) <= len(runs) * timeout / 5.0


@pytest.mark.parametrize(
    "server", [Server(), Server(sort="honoured", updated_at="fresh")], ids=["each", "changes"]
)
async def test_a_failed_read_of_a_finished_job_is_read_again_not_dropped(server: Server) -> None:
    """Issue 13 #1: the read that would have seen a job finished fails once; the job is read
    by id again soon (the listing's watermark has passed it and will not show it again)."""
    jobs = FakeJobs(server)
    watch = _watch(jobs, poll_interval=5.0)
    stop = anyio.Event()
    results: dict[str, Finished | None] = {}

    async def follow(job_id: str, runs_s: float) -> None:
        created = jobs.submit(job_id, runs_s)
        jobs.failing_reads[job_id] = 1 if job_id == "a" else 0
        results[job_id] = await watch.finished(
            InFlight(job_id, "train", created_at=created, expected_s=runs_s)
        )

    async with anyio.create_task_group() as tg:
        tg.start_soon(watch.run, stop)
        async with anyio.create_task_group() as followers:
            for job_id, runs_s in {"a": 100.0, "b": 300.0, "c": 500.0}.items():
                followers.start_soon(follow, job_id, runs_s)
        stop.set()
    assert _all_completed(results)
    finished = results["a"]
    assert finished is not None
    assert finished.ran_s - 100.0 <= 5.0  # seen within a poll interval of its end


async def test_a_job_whose_read_failed_is_read_again_one_send_at_a_time() -> None:
    """retries.py: a read by id is one call of the client's (its whole retry budget); after it
    failed, the watcher's re-reads of that job are single sends on its own schedule, until a
    read succeeds and the next reads are calls again."""
    jobs = FakeJobs()
    watch = _watch(jobs, poll_interval=5.0)
    jobs.failing_reads["a"] = 2
    results = await _follow_all(jobs, watch, {"a": 300.0, "b": 300.0})
    assert _all_completed(results)
    assert jobs.single_sends == {"a": 2}  # the read after each of its two failures
    assert jobs.reads_of["a"] > 3


async def test_a_hung_read_holds_up_no_other_job() -> None:
    """Issue 13 #2: one job's read never answers; every other job is still seen ending."""
    jobs = FakeJobs()
    watch = _watch(jobs, poll_interval=5.0)
    jobs.hung.add("slow")
    stop = anyio.Event()
    results: dict[str, Finished | None] = {}

    async def follow(job_id: str, runs_s: float) -> None:
        created = jobs.submit(job_id, runs_s)
        results[job_id] = await watch.finished(InFlight(job_id, "train", created_at=created))

    with anyio.fail_after(30):  # a guard against the hang this test is about, not a timing
        async with anyio.create_task_group() as tg:
            tg.start_soon(watch.run, stop)
            tg.start_soon(follow, "slow", 10.0)
            async with anyio.create_task_group() as followers:
                for job_id, runs_s in {"a": 60.0, "b": 120.0, "c": 240.0}.items():
                    followers.start_soon(follow, job_id, runs_s)
            assert all(results[j] is not None for j in "abc")
            jobs.unhang.set()
            while "slow" not in results:
                await anyio.lowlevel.checkpoint()
            stop.set()
    assert _all_completed(results)


async def test_a_job_that_cannot_be_read_fails_alone_after_its_budget() -> None:
    """Issue 13 #2/#3: every read of one job fails; it fails its own wait with the reason,
    after several tries spanning its budget, while the other jobs end normally."""
    jobs = FakeJobs()
    watch = _watch(jobs, poll_interval=5.0)
    jobs.broken.add("broken")
    stop = anyio.Event()
    results: dict[str, Finished | None] = {}
    errors: dict[str, Exception] = {}

    async def follow(job_id: str, runs_s: float) -> None:
        created = jobs.submit(job_id, runs_s)
        try:
            results[job_id] = await watch.finished(InFlight(job_id, "train", created_at=created))
        except PermanentApiError as exc:
            errors[job_id] = exc
            results[job_id] = None

    async with anyio.create_task_group() as tg:
        tg.start_soon(watch.run, stop)
        async with anyio.create_task_group() as followers:
            for job_id in ("broken", "a", "b"):
                followers.start_soon(follow, job_id, 100.0)
        stop.set()
    assert set(errors) == {"broken"}
    assert "could not be read" in str(errors["broken"])
    assert all(results[j] is not None for j in "ab")
    assert jobs.failing_reads["broken"] <= -5  # at least five tries
    assert jobs.now - jobs.created["broken"] >= 10 * 5.0  # over its budget, not at once


async def test_a_rejected_token_reaches_every_waiter() -> None:
    jobs = FakeJobs()
    watch = _watch(jobs)
    stop = anyio.Event()
    errors: list[BaseException] = []

    async def one(job_id: str) -> None:
        try:
            created = jobs.submit(job_id, 100.0)
            await watch.finished(InFlight(job_id, "train", created_at=created, expected_s=100.0))
        except AuthError as exc:
            errors.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(watch.run, stop)
        jobs.fail_gets_with = AuthError("token rejected by ModelOps (HTTP 401)", status=401)
        async with anyio.create_task_group() as followers:
            followers.start_soon(one, "a")
            followers.start_soon(one, "b")
        stop.set()
    assert len(errors) == 2


async def test_draining_releases_waiters_without_a_result() -> None:
    jobs = FakeJobs()
    watch = _watch(jobs)
    stop = anyio.Event()
    results: list[Finished | None] = []

    async def one() -> None:
        created = jobs.submit("a", 1e6)
        results.append(
            await watch.finished(InFlight("a", "train", created_at=created, expected_s=1e6))
        )

    async with anyio.create_task_group() as tg:
        tg.start_soon(watch.run, stop)
        tg.start_soon(one)
        await anyio.lowlevel.checkpoint()
        stop.set()
    assert results == [None]
    # Once drained, nothing more is followed.
    assert await watch.finished(InFlight("b", "train", expected_s=1.0)) is None


@pytest.mark.parametrize("mode", [PollMode.AUTO, PollMode.CHANGES, PollMode.FINDER, PollMode.EACH])
async def test_every_mode_sees_every_job_end(mode: PollMode) -> None:
    jobs = FakeJobs(Server(sort="honoured", updated_at="fresh", finder=True))
    runs = {f"j{i}": 10.0 * (i + 1) for i in range(8)}
    results = await _follow_all(jobs, _watch(jobs, mode=mode), runs, expected=lambda j: runs[j])
    assert {j for j, r in results.items() if r is not None} == set(runs)


@pytest.mark.parametrize("expected_s", [None, 60.0], ids=["unpredicted", "predicted"])
async def test_a_job_that_ended_before_it_was_handed_over_is_still_seen(
    expected_s: float | None,
) -> None:
    """A look may see a job finished before its submitter hands it over; later looks will
    not show it again, so it is remembered and read by id at once, whatever its prediction
    says."""
    jobs = FakeJobs(Server(sort="honoured", updated_at="fresh"))
    watch = _watch(jobs)
    stop = anyio.Event()
    results: dict[str, Finished | None] = {}
    released: dict[str, float] = {}

    async def follow(job_id: str, created: datetime, expected: float | None = None) -> None:
        handed = InFlight(job_id, "train", created_at=created, expected_s=expected)
        results[job_id] = await watch.finished(handed)
        released[job_id] = jobs.now

    async with anyio.create_task_group() as tg:
        tg.start_soon(watch.run, stop)
        async with anyio.create_task_group() as followers:
            followers.start_soon(follow, "long", jobs.submit("long", 60.0))
            followers.start_soon(follow, "mid", jobs.submit("mid", 5.0))  # moves the listing on
            created = jobs.submit("short", 0.1)
            start = jobs.now
            while jobs.now < start + 10.0:
                await anyio.lowlevel.checkpoint()
            handed_at = jobs.now
            followers.start_soon(follow, "short", created, expected_s)
        stop.set()
    finished = results["short"]
    assert finished is not None
    assert finished.job.status == "COMPLETED"
    assert released["short"] - handed_at <= 1.0


# -- the probe's judgement -------------------------------------------------------------------


def _job(job_id: str, updated: float | None) -> Job:
    stamp = None if updated is None else EPOCH + timedelta(seconds=updated)
    return Job(job_id, "COMPLETED", None, None, None, EPOCH, stamp)


@pytest.mark.parametrize(
    ("ascending", "descending", "verdict"),
    [
        ([_job("a", 1), _job("b", 2)], [_job("c", 9), _job("b", 2)], True),
        ([_job("a", 1), _job("b", 2)], [_job("a", 1), _job("b", 2)], False),  # dropped
        ([_job("a", 1), _job("b", None)], [_job("c", 9), _job("b", 2)], False),
        ([_job("a", 3), _job("b", 2)], [_job("c", 9), _job("b", 2)], False),  # not ascending
        ([_job("a", 1)], [_job("a", 1)], None),  # one job tells nothing
        ([], [], None),
        ([_job("a", 1), _job("b", 1)], [_job("b", 1), _job("a", 1)], None),  # all at once
    ],
)
def test_the_sort_probe_needs_two_ordered_pages_that_differ(
    ascending: list[Job], descending: list[Job], verdict: bool | None
) -> None:
    """Both orders answered as asked, every job stamped, different first jobs."""
    got, _ = judge_sort((ascending, len(ascending)), (descending, len(descending)))
    assert got is verdict


def test_the_finder_is_asked_for_the_unfinished_statuses_only() -> None:
    assert set(UNFINISHED_JOB_STATUSES) == {"CREATED", "SCHEDULED", "ASSIGNED", "RUNNING"}


async def test_a_job_handed_over_again_while_its_old_read_is_out_stays_followed() -> None:
    """A waiter cancelled while a read of its job is out, the job handed over again (timed,
    say): the old read's answer must not drop the new follower, which sees the job end."""
    jobs = FakeJobs()
    watch = _watch(jobs, poll_interval=5.0)
    stop = anyio.Event()
    created = jobs.submit("j", 30.0)
    jobs.hung.add("j")
    result: list[Finished | None] = []

    with anyio.fail_after(60):  # a guard against the hang this test is about, not a timing
        async with anyio.create_task_group() as tg:
            tg.start_soon(watch.run, stop)
            with anyio.CancelScope() as first:

                async def cancel_once_read() -> None:
                    while jobs.reads_of["j"] == 0:
                        await anyio.lowlevel.checkpoint()
                    first.cancel()  # the read is out, hung

                tg.start_soon(cancel_once_read)
                await watch.finished(InFlight("j", "train", created_at=created))
            jobs.now += 60.0  # the job has ended by the time the old read answers

            async def again() -> None:
                expected = InFlight("j", "train", created_at=created, expected_s=30.0, age_s=60.0)
                result.append(await watch.finished(expected))

            tg.start_soon(again)
            for _ in range(5):
                await anyio.lowlevel.checkpoint()
            jobs.unhang.set()  # the old read answers (COMPLETED) while the new one follows it
            while not result:
                await anyio.lowlevel.checkpoint()
            stop.set()
    [finished] = result
    assert finished is not None
    assert finished.job.status == "COMPLETED"
