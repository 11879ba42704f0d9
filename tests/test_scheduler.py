"""The scheduler against the in-process emulator on virtual time."""

from __future__ import annotations

import random
from pathlib import Path

import anyio
import pytest

from fleet import scheduler
from fleet.client import ModelOpsClient
from fleet.errors import AuthError
from fleet.stages import Stage, StageState
from fleet.store import Store
from support import BASE_URL, Emulated, emulated, settings_for


async def _run(env: Emulated, db: Path, **flags: object) -> scheduler.RunResult:
    settings = settings_for(env, db, **flags)
    async with Store.open(db) as store:
        return await scheduler.run(
            settings,
            env.api,
            store,
            run_id="night-1",
            sleep=env.time.sleep,
            clock=env.time.monotonic,
            rng=random.Random(7),
        )


def _peak_overlap(intervals: list[tuple[float, float]]) -> int:
    points = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    peak = current = 0
    for _, delta in points:
        current += delta
        peak = max(peak, current)
    return peak


async def test_every_model_goes_through_every_stage(tmp_path: Path) -> None:
    """Thirty models end deployed, the previous versions retired, one job of each type each."""
    async with emulated(models=30) as env:
        result = await _run(env, tmp_path / "fleet.db")
        stats = env.world.stats()
    assert result.status == "succeeded"
    assert (result.succeeded, result.failed, result.pending) == (30, (), 0)
    assert stats["jobs_by_type"] == {
        "TRAINING": 30,
        "EVALUATION": 30,
        "DEPLOYMENT": 30,
        "RETIREMENT": 30,
    }
    assert stats["max_jobs_per_model_and_type"] == 1
    assert stats["active_deployments"] == 30


async def test_stage_limits_bound_remote_jobs_of_each_type(tmp_path: Path) -> None:
    """No more training (or deployment) jobs overlap on the server than the stage's limit."""
    async with emulated(models=24) as env:
        result = await _run(env, tmp_path / "fleet.db", **{"limits.train": 3, "limits.deploy": 2})
        jobs = env.world.jobs()
    assert result.status == "succeeded"
    by_type: dict[str, list[tuple[float, float]]] = {}
    for job in jobs:
        by_type.setdefault(job.type, []).append((job.created_at, job.ends_at))
    assert _peak_overlap(by_type["TRAINING"]) == 3
    assert _peak_overlap(by_type["DEPLOYMENT"]) <= 2


async def test_global_concurrency_bounds_models_in_flight(tmp_path: Path) -> None:
    """With concurrency 4, at most four models have a remote job at any moment."""
    async with emulated(models=16) as env:
        await _run(env, tmp_path / "fleet.db", concurrency=4)
        jobs = env.world.jobs()
    spans: dict[str, tuple[float, float]] = {}
    for job in jobs:
        start, end = spans.get(job.model_id, (job.created_at, job.ends_at))
        spans[job.model_id] = (min(start, job.created_at), max(end, job.ends_at))
    assert _peak_overlap(list(spans.values())) <= 4


async def test_models_are_admitted_in_configured_order(tmp_path: Path) -> None:
    """Training jobs are created in the order of the model list when one runs at a time."""
    async with emulated(models=6) as env:
        await _run(env, tmp_path / "fleet.db", concurrency=1)
        order = [j.model_id for j in env.world.jobs() if j.type == "TRAINING"]
        assert order == [m.id for m in env.world.models()]


async def test_failed_jobs_fail_only_their_models(tmp_path: Path) -> None:
    """Models whose job ends in ERROR fail at that stage with a reason; the others succeed."""
    async with emulated(models=40, job_error_rate=0.15, seed=3) as env:
        expected = {
            m.id
            for m in env.world.models()
            if env.world.job_will_fail(m.id, "TRAINING", 1)
            or env.world.job_will_fail(m.id, "EVALUATION", 1)
            or env.world.job_will_fail(m.id, "DEPLOYMENT", 1)
            or env.world.job_will_fail(m.id, "RETIREMENT", 1)
        }
        result = await _run(env, tmp_path / "fleet.db")
    assert expected, "the seed must make some jobs fail"
    assert result.status == "failed"
    assert {f.model_id for f in result.failed} == expected
    assert result.succeeded == 40 - len(expected)
    assert all("ended ERROR" in f.reason for f in result.failed)


async def test_a_finished_run_id_does_nothing_again(tmp_path: Path) -> None:
    """Starting a finished run again submits nothing and reports the same result."""
    async with emulated(models=5) as env:
        first = await _run(env, tmp_path / "fleet.db")
        jobs_before = env.world.stats()["jobs_total"]
        second = await _run(env, tmp_path / "fleet.db")
        assert env.world.stats()["jobs_total"] == jobs_before
    assert second.resumed
    assert (second.status, second.succeeded) == (first.status, first.succeeded)


async def test_a_cancelled_run_resumes_without_submitting_twice(tmp_path: Path) -> None:
    """Cancel mid-run, resume with the same id: all models finish, one job per model and type."""
    db = tmp_path / "fleet.db"
    async with emulated(models=20) as env:
        settings = settings_for(env, db)
        submitted = 0
        async with Store.open(db) as store:
            with anyio.CancelScope() as scope:

                class CancelAfterSubmissions(scheduler.Progress):
                    def moved(self, stage: Stage, before: StageState, after: StageState) -> None:
                        nonlocal submitted
                        super().moved(stage, before, after)
                        if after is StageState.SUBMITTED:
                            submitted += 1
                            if submitted == 30:
                                scope.cancel()

                progress = CancelAfterSubmissions()
                await scheduler.run(
                    settings,
                    env.api,
                    store,
                    run_id="night-1",
                    progress=progress,
                    sleep=env.time.sleep,
                    clock=env.time.monotonic,
                )
            interrupted = await store.run("night-1")
        assert interrupted.status == "interrupted"
        result = await _run(env, db)
        stats = env.world.stats()
    assert result.resumed
    assert result.status == "succeeded"
    assert result.succeeded == 20
    assert stats["max_jobs_per_model_and_type"] == 1


async def test_a_rejected_token_aborts_the_run(tmp_path: Path) -> None:
    """A wrong token stops the run before anything is submitted, with an AuthError."""
    async with emulated(models=3) as env:
        settings = settings_for(env, tmp_path / "fleet.db")
        async with (
            ModelOpsClient(
                BASE_URL, env.settings.project_id, "wrong", transport=env.api._http._transport
            ) as bad,
            Store.open(tmp_path / "fleet.db") as store,
        ):
            result = await scheduler.run(
                settings,
                bad,
                store,
                run_id="r",
                sleep=env.time.sleep,
                clock=env.time.monotonic,
            )
        assert env.world.stats()["jobs_total"] == 0
    assert isinstance(result.aborted, AuthError)
    assert result.status == "aborted"


async def test_a_token_revoked_mid_run_aborts_with_state_saved(tmp_path: Path) -> None:
    """401s while many models poll stop the run as aborted (not a crash); it can resume."""

    class RevokedAfter:
        def __init__(self, env: Emulated, polls: int) -> None:
            self._env = env
            self._polls = polls

        def __getattr__(self, name: str) -> object:
            return getattr(self._env.api, name)

        async def get_job(self, job_id: str) -> object:
            self._polls -= 1
            if self._polls < 0:
                raise AuthError("token rejected by ModelOps (HTTP 401)", status=401)
            return await self._env.api.get_job(job_id)

    async with emulated(models=12) as env:
        db = tmp_path / "fleet.db"
        settings = settings_for(env, db)
        async with Store.open(db) as store:
            result = await scheduler.run(
                settings,
                RevokedAfter(env, polls=15),
                store,
                run_id="r",
                sleep=env.time.sleep,
                clock=env.time.monotonic,
            )
        assert isinstance(result.aborted, AuthError)
        resumed = await _run_named(env, db, "r")
    assert resumed.status == "succeeded"
    assert env.world.stats()["max_jobs_per_model_and_type"] == 1


async def _run_named(env: Emulated, db: Path, run_id: str) -> scheduler.RunResult:
    async with Store.open(db) as store:
        return await scheduler.run(
            settings_for(env, db),
            env.api,
            store,
            run_id=run_id,
            sleep=env.time.sleep,
            clock=env.time.monotonic,
        )


@pytest.mark.parametrize("mode", ["deployed", "none"])
async def test_retire_modes(tmp_path: Path, mode: str) -> None:
    """`deployed` retires the new version (the tutorial's way); `none` retires nothing."""
    async with emulated(models=4) as env:
        result = await _run(env, tmp_path / "fleet.db", **{"defaults.retire_mode": mode})
        stats = env.world.stats()
    assert result.status == "succeeded"
    if mode == "deployed":
        assert stats["jobs_by_type"]["RETIREMENT"] == 4
        assert stats["active_deployments"] == 4  # last night's versions are still in production
    else:
        assert stats["jobs_by_type"]["RETIREMENT"] == 0
        assert stats["active_deployments"] == 8


async def test_only_the_configured_stages_run(tmp_path: Path) -> None:
    """`stages = train,evaluate` trains and evaluates, and deploys nothing."""
    async with emulated(models=4) as env:
        result = await _run(env, tmp_path / "fleet.db", stages="train,evaluate")
        stats = env.world.stats()
    assert result.status == "succeeded"
    assert stats["jobs_by_type"]["DEPLOYMENT"] == 0
    assert stats["jobs_by_type"]["EVALUATION"] == 4


async def test_an_errored_job_is_retried_as_a_new_attempt(tmp_path: Path) -> None:
    """With three tries, a training that ends in ERROR once is tried again and succeeds."""
    async with emulated(models=30, job_error_rate=0.2, seed=5) as env:
        world = env.world
        once = {
            m.id
            for m in world.models()
            if world.job_will_fail(m.id, "TRAINING", 1)
            and not world.job_will_fail(m.id, "TRAINING", 2)
        }
        db = tmp_path / "fleet.db"
        await _run(env, db, **{"attempts.train": 3, "stages": "train"})
        async with Store.open(db) as store:
            attempts = await store.attempts("night-1")
            models = {m.spec.id: m for m in await store.models("night-1")}
    assert once, "the seed must make some first trainings fail"
    for model_id in once:
        rows = [a for a in attempts if a["model_id"] == model_id]
        assert [a["outcome"] for a in rows][:2] == ["failed", "succeeded"]
        assert models[model_id].stages[Stage.TRAIN].attempt == 2
        assert models[model_id].stages[Stage.TRAIN].state is StageState.SUCCEEDED


async def test_retry_failed_reruns_only_the_failed_models(tmp_path: Path) -> None:
    """`retry_failed` reopens failed stages; succeeded models submit nothing new."""
    db = tmp_path / "fleet.db"
    async with emulated(models=20, job_error_rate=0.15, seed=3) as env:
        first = await _run(env, db)
        jobs_before = env.world.stats()["jobs_total"]
        async with Store.open(db) as store:
            again = await scheduler.run(
                settings_for(env, db),
                env.api,
                store,
                run_id="night-1",
                sleep=env.time.sleep,
                clock=env.time.monotonic,
                retry_failed=True,
            )
        new_jobs = env.world.jobs()[jobs_before:]
    assert first.failed
    assert {j.model_id for j in new_jobs} == {f.model_id for f in first.failed}
    assert again.succeeded > first.succeeded


async def test_the_failure_policy_stops_admitting_models(tmp_path: Path) -> None:
    """Past max_failures no new model starts; the run is halted with the reason."""
    async with emulated(models=40, job_error_rate=0.5, seed=1) as env:
        result = await _run(env, tmp_path / "fleet.db", concurrency=2, max_failures=2)
        trained = env.world.stats()["jobs_by_type"]["TRAINING"]
    assert result.status == "halted"
    assert result.reason is not None
    assert "max_failures=2" in result.reason
    assert result.pending > 0
    assert trained < 40


async def test_a_drained_run_submits_nothing_more_and_resumes(tmp_path: Path) -> None:
    """Setting `stop` mid-run: no submission after it, status interrupted; resume finishes."""
    db = tmp_path / "fleet.db"
    async with emulated(models=12) as env:
        stop = anyio.Event()
        seen_at_stop: list[int] = []

        class StopAfterSubmissions(scheduler.Progress):
            def moved(self, stage: Stage, before: StageState, after: StageState) -> None:
                super().moved(stage, before, after)
                if after is StageState.SUBMITTED and not stop.is_set():
                    submitted = sum(c[StageState.SUBMITTED] for c in self.counts.values())
                    if submitted >= 5:
                        stop.set()
                        seen_at_stop.append(env.world.stats()["jobs_total"])

        async with Store.open(db) as store:
            result = await scheduler.run(
                settings_for(env, db),
                env.api,
                store,
                run_id="night-1",
                progress=StopAfterSubmissions(),
                sleep=env.time.sleep,
                clock=env.time.monotonic,
                stop=stop,
            )
        jobs_after = env.world.stats()["jobs_total"]
        resumed = await _run(env, db)
        stats = env.world.stats()
    assert result.status == "interrupted"
    # Submissions already under way when the signal came may still land, nothing after.
    assert jobs_after <= seen_at_stop[0] + 12
    assert resumed.status == "succeeded"
    assert stats["max_jobs_per_model_and_type"] == 1
