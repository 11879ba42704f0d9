"""The job watcher: how often it asks, what one look covers, and how it falls back."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import anyio
import anyio.lowlevel
import pytest

from fleet.client import Job
from fleet.errors import AuthError, NotFound, PermanentApiError
from fleet.polling import Finished, JobWatch, PollMode

EPOCH = datetime(2026, 11, 25, tzinfo=UTC)


class FakeJobs:
    """Jobs that end at known times on a virtual clock, behind the three ways to ask."""

    def __init__(self, *, changes: bool = True, finder: bool = True) -> None:
        self.now = 0.0
        self.ends: dict[str, float] = {}
        self.created: dict[str, float] = {}
        self.calls: Counter[str] = Counter()
        self._changes = changes
        self._finder = finder
        self.fail_with: Exception | None = None

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await anyio.lowlevel.checkpoint()

    def clock(self) -> float:
        return self.now

    def submit(self, job_id: str, runs_s: float) -> datetime:
        self.created[job_id] = self.now
        self.ends[job_id] = self.now + runs_s
        return EPOCH + timedelta(seconds=self.now)

    def _job(self, job_id: str) -> Job:
        done = self.now >= self.ends[job_id]
        changed = self.ends[job_id] if done else self.created[job_id]
        return Job(
            id=job_id,
            status="COMPLETED" if done else "RUNNING",
            type="TRAINING",
            model_id="m",
            trained_model_id="t",
            created_at=EPOCH + timedelta(seconds=self.created[job_id]),
            updated_at=EPOCH + timedelta(seconds=changed),
        )

    async def get_job(self, job_id: str) -> Job:
        self.calls["get"] += 1
        return self._job(job_id)

    async def changed_jobs(self, since: datetime | None, page_size: int = 20) -> list[Job]:
        self.calls["changes"] += 1
        if self.fail_with is not None:
            raise self.fail_with
        if not self._changes:
            raise PermanentApiError("No property 'updatedAt' found for type 'Job'", status=400)
        jobs = sorted((self._job(j) for j in self.ends), key=lambda j: j.updated_at or EPOCH)
        jobs.reverse()
        return [j for j in jobs if since is None or (j.updated_at and j.updated_at >= since)]

    async def unfinished_jobs(self) -> list[Job]:
        self.calls["finder"] += 1
        if not self._finder:
            raise NotFound("Not Found", status=404)
        return [self._job(j) for j in self.ends if self.now < self.ends[j]]


def _watch(jobs: FakeJobs, **overrides: object) -> JobWatch:
    options: dict[str, object] = {"poll_interval": 30.0, "poll_floor": 0.5, **overrides}
    return JobWatch(jobs, clock=jobs.clock, sleep=jobs.sleep, **options)  # type: ignore[arg-type]


async def _follow_all(
    jobs: FakeJobs,
    watch: JobWatch,
    runs: dict[str, float],
    expected: Callable[[str], float | None] = lambda _: None,
) -> dict[str, Finished | None]:
    results: dict[str, Finished | None] = {}
    stop = anyio.Event()

    async def one(job_id: str, runs_s: float) -> None:
        created = jobs.submit(job_id, runs_s)
        results[job_id] = await watch.finished(job_id, created, "train", expected(job_id))

    async with anyio.create_task_group() as tg:
        tg.start_soon(watch.run, stop)
        async with anyio.create_task_group() as followers:
            for job_id, runs_s in runs.items():
                followers.start_soon(one, job_id, runs_s)
        stop.set()
    return results


async def test_one_look_covers_every_job_and_each_finished_one_is_read_once() -> None:
    jobs = FakeJobs()
    runs = {f"j{i}": 100.0 + i for i in range(50)}
    results = await _follow_all(jobs, _watch(jobs), runs, expected=lambda j: runs[j])
    assert all(r is not None and r.job.status == "COMPLETED" for r in results.values())
    assert jobs.calls["get"] == 50  # the one confirming read per job
    # Predicted looks, shared by all jobs: far fewer than one per job per interval.
    assert jobs.calls["changes"] <= 100


async def test_a_job_is_seen_close_to_its_expected_end() -> None:
    """With history, detection comes within a few percent of the job's duration."""
    jobs = FakeJobs()
    runs = {"long": 600.0}
    results = await _follow_all(jobs, _watch(jobs), runs, expected=lambda _: 590.0)
    finished = results["long"]
    assert finished is not None
    assert jobs.now - 600.0 <= 590 * 0.02 + 1e-9  # seen within 2% of its duration
    assert abs(finished.ran_s - 600.0) <= 590 * 0.02  # what the next night will expect
    # The first look at start, one just before the expected end, then 2% apart.
    assert jobs.calls["changes"] <= 5


async def test_without_history_looks_back_off_up_to_poll_interval() -> None:
    jobs = FakeJobs()
    await _follow_all(jobs, _watch(jobs, poll_interval=30.0), {"j": 3600.0})
    # Backing off by a fifth of the time run so far, capped at 30 s: about 140 looks for an
    # hour, not the 7,200 a fixed 0.5 s would take.
    assert jobs.calls["changes"] < 160
    assert jobs.now - 3600.0 <= 30.0


async def test_a_server_without_the_sorted_listing_gets_the_finder() -> None:
    jobs = FakeJobs(changes=False)
    watch = _watch(jobs)
    runs = {f"j{i}": 50.0 for i in range(10)}
    results = await _follow_all(jobs, watch, runs, expected=lambda _: 50.0)
    assert watch.mode is PollMode.FINDER
    assert all(r is not None for r in results.values())
    assert jobs.calls["get"] == 10


async def test_a_server_with_neither_gets_a_get_per_due_job() -> None:
    jobs = FakeJobs(changes=False, finder=False)
    watch = _watch(jobs)
    results = await _follow_all(jobs, watch, {"a": 20.0, "b": 40.0}, expected=lambda _: None)
    assert watch.mode is PollMode.EACH
    assert all(r is not None for r in results.values())


async def test_a_rejected_token_reaches_every_waiter() -> None:
    jobs = FakeJobs()
    watch = _watch(jobs)
    stop = anyio.Event()
    errors: list[BaseException] = []

    async def one(job_id: str) -> None:
        try:
            await watch.finished(job_id, jobs.submit(job_id, 100.0), "train", 100.0)
        except AuthError as exc:
            errors.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(watch.run, stop)
        jobs.fail_with = AuthError("token rejected by ModelOps (HTTP 401)", status=401)
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
        results.append(await watch.finished("a", jobs.submit("a", 1e6), "train", 1e6))

    async with anyio.create_task_group() as tg:
        tg.start_soon(watch.run, stop)
        tg.start_soon(one)
        await anyio.lowlevel.checkpoint()
        stop.set()
    assert results == [None]
    # Once drained, nothing more is followed.
    assert await watch.finished("b", None, "train", 1.0) is None


async def test_a_resumed_job_is_read_by_id_at_its_first_look() -> None:
    """A job handed over with no creation time (from an earlier process) is not vouched for
    by the listing: its first look is a GET."""
    jobs = FakeJobs()
    watch = _watch(jobs)
    stop = anyio.Event()
    jobs.submit("old", 0.0)  # already finished before this process looked
    jobs.now = 10.0
    results: list[Finished | None] = []

    async def one() -> None:
        results.append(await watch.finished("old", None, "train", None))

    async with anyio.create_task_group() as tg:
        tg.start_soon(watch.run, stop)
        async with anyio.create_task_group() as followers:
            followers.start_soon(one)
        stop.set()
    assert results[0] is not None
    assert results[0].job.status == "COMPLETED"


@pytest.mark.parametrize("mode", [PollMode.CHANGES, PollMode.FINDER, PollMode.EACH])
async def test_every_mode_sees_every_job_end(mode: PollMode) -> None:
    jobs = FakeJobs()
    runs = {f"j{i}": 10.0 * (i + 1) for i in range(8)}
    results = await _follow_all(jobs, _watch(jobs, mode=mode), runs, expected=lambda j: runs[j])
    assert {j for j, r in results.items() if r is not None} == set(runs)


async def test_a_job_that_ended_before_it_was_handed_over_is_still_seen() -> None:
    """A look may see a job finished before its submitter hands it over; later looks will
    not show it again, so it is remembered and read by id."""
    jobs = FakeJobs()
    watch = _watch(jobs)
    stop = anyio.Event()
    results: dict[str, Finished | None] = {}

    async def follow(job_id: str, created: datetime) -> None:
        results[job_id] = await watch.finished(job_id, created, "train", None)

    async with anyio.create_task_group() as tg:
        tg.start_soon(watch.run, stop)
        async with anyio.create_task_group() as followers:
            followers.start_soon(follow, "long", jobs.submit("long", 60.0))
            followers.start_soon(follow, "mid", jobs.submit("mid", 5.0))  # moves the listing on
            created = jobs.submit("short", 0.1)
            # Looks for "long" see "short" finished, then go on past the listing's overlap.
            while jobs.now < 10.0:
                await anyio.lowlevel.checkpoint()
            followers.start_soon(follow, "short", created)
        stop.set()
    finished = results["short"]
    assert finished is not None
    assert finished.job.status == "COMPLETED"
