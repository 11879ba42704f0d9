"""The scheduler against the in-process emulator on virtual time."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from fleet import scheduler, sim
from fleet.batch import plan_of
from fleet.client import ModelOpsClient
from fleet.config import load_settings
from fleet.errors import AuthError, ConfigError, ServerUnavailable
from fleet.settings import Settings
from fleet.stages import Stage, StageState
from fleet.store import Store
from fleet.transport import HttpOptions
from support import BASE_URL, Emulated, emulated, settings_for, tonight


async def _run(env: Emulated, db: Path, **flags: object) -> scheduler.RunResult:
    settings = settings_for(env, db, **flags)
    async with Store.open(db) as store:
        return await scheduler.run(
            plan_of(settings, run_id="night-1"),
            env.api,
            store,
            controls=scheduler.Controls(sleep=env.time.sleep, clock=env.time.monotonic),
        )


def _peak_overlap(intervals: list[tuple[float, float]]) -> int:
    points = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    peak = current = 0
    for _, delta in points:
        current += delta
        peak = max(peak, current)
    return peak


class FailsAfter:
    """The emulated client, whose job reads start failing with `error` after `polls` of them."""

    def __init__(self, env: Emulated, polls: int, error: Exception) -> None:
        self._env = env
        self._polls = polls
        self._error = error

    def __getattr__(self, name: str) -> object:
        return getattr(self._env.api, name)

    async def get_job(self, job_id: str) -> object:
        self._polls -= 1
        if self._polls < 0:
            raise self._error
        return await self._env.api.get_job(job_id)


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
        jobs = tonight(env.world)
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
        jobs = tonight(env.world)
    spans: dict[str, tuple[float, float]] = {}
    for job in jobs:
        start, end = spans.get(job.model_id, (job.created_at, job.ends_at))
        spans[job.model_id] = (min(start, job.created_at), max(end, job.ends_at))
    assert _peak_overlap(list(spans.values())) <= 4


async def test_models_are_admitted_in_configured_order(tmp_path: Path) -> None:
    """Training jobs are created in the order of the model list when one runs at a time and
    nothing says how long they take (no earlier night, no history read)."""
    async with emulated(models=6) as env:
        await _run(env, tmp_path / "fleet.db", concurrency=1, history="off")
        order = [j.model_id for j in tonight(env.world) if j.type == "TRAINING"]
        assert order == [m.id for m in env.world.models()]


async def test_a_first_night_admits_the_longest_training_first_from_the_servers_history(
    tmp_path: Path,
) -> None:
    """With no earlier night in the state file, each model's last training on the server
    (its version's createdAt to its TRAINED event) ranks it: the longest is trained first."""
    async with emulated(models=8) as env:
        await _run(env, tmp_path / "fleet.db", concurrency=1)
        order = [j.model_id for j in tonight(env.world) if j.type == "TRAINING"]
        last_night = {m.id: env.world.duration(m.id, "TRAINING", 0) for m in env.world.models()}
    assert order == sorted(last_night, key=lambda model: -last_night[model])
    assert order != [m.id for m in env.world.models()]  # the seed's list order is not it


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
                    plan_of(settings, run_id="night-1"),
                    env.api,
                    store,
                    controls=scheduler.Controls(
                        sleep=env.time.sleep, clock=env.time.monotonic, progress=progress
                    ),
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
                BASE_URL,
                env.settings.project_id,
                "wrong",
                http=HttpOptions(transport=env.api._http._transport),
            ) as bad,
            Store.open(tmp_path / "fleet.db") as store,
        ):
            result = await scheduler.run(
                plan_of(settings, run_id="r"),
                bad,
                store,
                controls=scheduler.Controls(sleep=env.time.sleep, clock=env.time.monotonic),
            )
        assert env.world.stats()["jobs_total"] == 0
    assert isinstance(result.aborted, AuthError)
    assert result.status == "aborted"


async def test_a_token_revoked_mid_run_aborts_with_state_saved(tmp_path: Path) -> None:
    """401s while many models poll stop the run as aborted (not a crash); it can resume."""

    async with emulated(models=12) as env:
        db = tmp_path / "fleet.db"
        settings = settings_for(env, db)
        async with Store.open(db) as store:
            result = await scheduler.run(
                plan_of(settings, run_id="r"),
                FailsAfter(env, 15, AuthError("token rejected by ModelOps (HTTP 401)", status=401)),
                store,
                controls=scheduler.Controls(sleep=env.time.sleep, clock=env.time.monotonic),
            )
        assert isinstance(result.aborted, AuthError)
        resumed = await _run_named(env, db, "r")
    assert resumed.status == "succeeded"
    assert env.world.stats()["max_jobs_per_model_and_type"] == 1


async def _run_named(env: Emulated, db: Path, run_id: str) -> scheduler.RunResult:
    async with Store.open(db) as store:
        return await scheduler.run(
            plan_of(settings_for(env, db), run_id=run_id),
            env.api,
            store,
            controls=scheduler.Controls(sleep=env.time.sleep, clock=env.time.monotonic),
        )


@pytest.mark.parametrize("mode", ["deployed", "none"])
async def test_retire_modes(tmp_path: Path, mode: str) -> None:
    """`deployed` retires the new version (the tutorial's way) once the scoring job its @once
    deployment started has ended; `none` retires nothing."""
    async with emulated(models=4) as env:
        result = await _run(env, tmp_path / "fleet.db", **{"defaults.retire_mode": mode})
        stats = env.world.stats()
    assert result.status == "succeeded"
    assert stats["scoring_jobs"] == 4
    if mode == "deployed":
        assert stats["jobs_by_type"]["RETIREMENT"] == 4
        assert stats["retired_while_scoring"] == 0
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
                plan_of(settings_for(env, db), run_id="night-1", retry_failed=True),
                env.api,
                store,
                controls=scheduler.Controls(sleep=env.time.sleep, clock=env.time.monotonic),
            )
        new_jobs = tonight(env.world)[jobs_before:]
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
                plan_of(settings_for(env, db), run_id="night-1"),
                env.api,
                store,
                controls=scheduler.Controls(
                    sleep=env.time.sleep,
                    clock=env.time.monotonic,
                    progress=StopAfterSubmissions(),
                    stop=stop,
                ),
            )
        jobs_after = env.world.stats()["jobs_total"]
        resumed = await _run(env, db)
        stats = env.world.stats()
    assert result.status == "interrupted"
    # Submissions already under way when the signal came may still land, nothing after.
    assert jobs_after <= seen_at_stop[0] + 12
    assert resumed.status == "succeeded"
    assert stats["max_jobs_per_model_and_type"] == 1


# -- several projects -----------------------------------------------------------------------

PROJECT_B = "7c0f6d2e-3b1a-4e5f-9a8b-2d4c6e8f0a1b"


@asynccontextmanager
async def _two_projects(
    models_a: int = 8, models_b: int = 6, **b_sim: Any
) -> AsyncIterator[tuple[Emulated, Emulated]]:
    """Two ModelOps projects (two emulators) living through the same simulated time."""
    clock = sim.ManualClock(start=time.time())
    async with (
        emulated(clock=clock, models=models_a, seed=1) as a,
        emulated(
            clock=clock, models=models_b, seed=2, project_id=PROJECT_B, token="b-token", **b_sim
        ) as b,
    ):
        yield a, b


def _projects_settings(a: Emulated, b: Emulated, db: Path, **flags: object) -> Settings:
    """Projects `a` and `b`, each with its emulator's models; flags may add to either."""
    flat: dict[str, object] = {"db": str(db), "poll_interval": 1.0}
    for name, env in (("a", a), ("b", b)):
        flat[f"projects.{name}.api.url"] = BASE_URL
        flat[f"projects.{name}.api.project_id"] = env.settings.project_id
        flat[f"projects.{name}.models"] = [{"id": m.id, "name": m.name} for m in env.world.models()]
        flat[f"projects.{name}.defaults"] = {
            "train_dataset_id": env.world.train_dataset_id,
            "evaluate_dataset_id": env.world.eval_dataset_id,
        }
    return load_settings(None, {**flat, **flags}, env={}, use_default_file=False)


async def _run_projects(
    settings: Settings, clients: dict[str, Any], a: Emulated, run_id: str = "night-1"
) -> scheduler.RunResult:
    async with Store.open(settings.db) as store:
        return await scheduler.run(
            plan_of(settings, run_id=run_id),
            clients,
            store,
            controls=scheduler.Controls(sleep=a.time.sleep, clock=a.time.monotonic),
        )


def _trainings(env: Emulated) -> list[tuple[float, float]]:
    return [(j.created_at, j.ends_at) for j in tonight(env.world) if j.type == "TRAINING"]


async def test_each_projects_models_go_to_its_own_server(tmp_path: Path) -> None:
    """One run drives both projects' models, each only on its own server; the store says which."""
    async with _two_projects() as (a, b):
        settings = _projects_settings(a, b, tmp_path / "fleet.db")
        result = await _run_projects(settings, {"a": a.api, "b": b.api}, a)
        jobs = {"a": tonight(a.world), "b": tonight(b.world)}
        models = {"a": {m.id for m in a.world.models()}, "b": {m.id for m in b.world.models()}}
        stats = (a.world.stats(), b.world.stats())
    assert result.status == "succeeded"
    assert result.succeeded == 14
    for name, own in models.items():
        assert {job.model_id for job in jobs[name]} == own
    assert [s["jobs_by_type"]["TRAINING"] for s in stats] == [8, 6]
    assert all(s["max_jobs_per_model_and_type"] == 1 for s in stats)
    async with Store.open(tmp_path / "fleet.db") as store:
        stored = {m.spec.id: m.spec.project for m in await store.models("night-1")}
    assert stored == {**dict.fromkeys(models["a"], "a"), **dict.fromkeys(models["b"], "b")}


async def test_projects_without_limits_of_their_own_share_the_runs(tmp_path: Path) -> None:
    """limits.train = 3 bounds the trainings of both projects together, not each."""
    async with _two_projects(models_a=10, models_b=10) as (a, b):
        settings = _projects_settings(
            a, b, tmp_path / "fleet.db", stages="train", **{"limits.train": 3}
        )
        result = await _run_projects(settings, {"a": a.api, "b": b.api}, a)
        both = _trainings(a) + _trainings(b)
    assert result.status == "succeeded"
    assert _peak_overlap(both) == 3


async def test_a_projects_own_limits_bound_its_jobs_apart_from_the_others(tmp_path: Path) -> None:
    """[projects.b.limits] train = 2: b's trainings peak at 2, a keeps the run's 4 to itself."""
    async with _two_projects(models_a=12, models_b=12) as (a, b):
        settings = _projects_settings(
            a,
            b,
            tmp_path / "fleet.db",
            stages="train",
            **{"limits.train": 4, "projects.b.limits.train": 2},
        )
        result = await _run_projects(settings, {"a": a.api, "b": b.api}, a)
        peaks = (a.world.stats()["peak_running_jobs"], b.world.stats()["peak_running_jobs"])
        both = _trainings(a) + _trainings(b)
    assert result.status == "succeeded"
    assert peaks == (4, 2)
    assert _peak_overlap(both) == 6


async def test_a_projects_concurrency_bounds_its_models_and_holds_no_other_back(
    tmp_path: Path,
) -> None:
    """b's concurrency 2 keeps two of its models in flight; a's models start beside them."""
    async with _two_projects(models_a=8, models_b=8) as (a, b):
        # b's models first in admission order: were a worker held by each b model waiting
        # for room, a's models would wait for b's.
        entries = [{"id": m.id, "name": m.name, "priority": 1} for m in b.world.models()]
        settings = _projects_settings(
            a,
            b,
            tmp_path / "fleet.db",
            concurrency=6,
            history="off",  # a's models in list order, as the counts below assume
            **{"projects.b.limits.concurrency": 2, "projects.b.models": entries},
        )
        specs = sorted(settings.model_specs(), key=lambda spec: -spec.priority)
        async with Store.open(settings.db) as store:
            result = await scheduler.run(
                plan_of(settings, run_id="night-1", specs=specs),
                {"a": a.api, "b": b.api},
                store,
                controls=scheduler.Controls(sleep=a.time.sleep, clock=a.time.monotonic),
            )
        spans = {name: _model_spans(env) for name, env in (("a", a), ("b", b))}
    assert result.status == "succeeded"
    assert _peak_overlap(spans["b"]) == 2
    assert _peak_overlap(spans["a"]) == 4
    assert min(start for start, _ in spans["a"]) < min(end for _, end in spans["b"])


def _model_spans(env: Emulated) -> list[tuple[float, float]]:
    spans: dict[str, tuple[float, float]] = {}
    for job in tonight(env.world):
        start, end = spans.get(job.model_id, (job.created_at, job.ends_at))
        spans[job.model_id] = (min(start, job.created_at), max(end, job.ends_at))
    return list(spans.values())


async def test_a_rejected_token_stops_its_project_only(tmp_path: Path) -> None:
    """b's token is refused: a's models all finish, b's wait; the run is aborted naming b."""
    db = tmp_path / "fleet.db"
    async with _two_projects() as (a, b):
        settings = _projects_settings(a, b, db)
        async with ModelOpsClient(
            BASE_URL, PROJECT_B, "wrong", http=HttpOptions(transport=b.api._http._transport)
        ) as refused:
            result = await _run_projects(settings, {"a": a.api, "b": refused}, a)
        assert b.world.stats()["jobs_total"] == 0
        assert a.world.stats()["jobs_by_type"]["DEPLOYMENT"] == 8
        assert result.status == "aborted"
        assert isinstance(result.aborted, AuthError)
        assert result.reason is not None
        assert result.reason.startswith("project b: token rejected")
        assert (result.succeeded, result.pending) == (8, 6)
        resumed = await _run_projects(settings, {"a": a.api, "b": b.api}, a)
        stats = (a.world.stats(), b.world.stats())
    assert resumed.status == "succeeded"
    assert [s["jobs_by_type"]["TRAINING"] for s in stats] == [8, 6]
    assert all(s["max_jobs_per_model_and_type"] == 1 for s in stats)


async def test_a_project_lost_mid_run_stops_alone_and_resumes(tmp_path: Path) -> None:
    """b's server goes away mid-run: b's models in flight stop where they are, a's finish,
    and the same run id finishes b without a second job."""

    db = tmp_path / "fleet.db"
    async with _two_projects(models_a=10, models_b=10) as (a, b):
        settings = _projects_settings(a, b, db)
        result = await _run_projects(
            settings,
            {
                "a": a.api,
                "b": FailsAfter(b, 8, ServerUnavailable("ModelOps failed every request for 600 s")),
            },
            a,
        )
        assert result.status == "aborted"
        assert result.reason == "project b: ModelOps failed every request for 600 s"
        assert a.world.stats()["jobs_by_type"]["RETIREMENT"] == 10
        assert b.world.stats()["jobs_total"] > 0
        assert result.pending > 0
        assert result.succeeded + result.pending == 20
        resumed = await _run_projects(settings, {"a": a.api, "b": b.api}, a)
        stats = b.world.stats()
    assert resumed.status == "succeeded"
    assert resumed.succeeded == 20
    assert stats["jobs_by_type"]["TRAINING"] == 10
    assert stats["max_jobs_per_model_and_type"] == 1


async def test_resuming_a_run_whose_project_is_gone_from_the_config_is_refused(
    tmp_path: Path,
) -> None:
    """A run with models of project b cannot resume without b: a ConfigError names it."""
    db = tmp_path / "fleet.db"
    async with _two_projects(models_a=2, models_b=2) as (a, b):
        settings = _projects_settings(a, b, db, stages="train")
        async with Store.open(db) as store:
            await store.create_run("r", (Stage.TRAIN,), settings.model_specs(), "{}")
        with pytest.raises(ConfigError, match="project b, which is not in the configuration"):
            await _run_projects(settings, {"a": a.api}, a, run_id="r")
        async with Store.open(db) as store:
            assert (await store.run("r")).status == "running"


async def test_an_empty_run_id_is_refused_not_made_up(tmp_path: Path) -> None:
    """Issue 13 #10, from Python too: only an absent id is made up; "" is refused, so a
    restart the same way never starts a new night."""
    async with emulated(models=2) as env:
        settings = settings_for(env, tmp_path / "f.db")
        async with Store.open(tmp_path / "f.db") as store:
            with pytest.raises(ConfigError, match="run_id: is empty"):
                await scheduler.run(plan_of(settings, run_id=""), env.api, store)
        assert env.world.stats()["jobs_by_type"]["TRAINING"] == 0


async def test_the_job_cap_bounds_remote_jobs_of_every_stage_together(tmp_path: Path) -> None:
    """`jobs = 3`: never more than three jobs at once, whatever their stages, and three at
    once while there is work; models in flight (4 x jobs) only wait for a slot."""
    async with emulated(models=10) as env:
        result = await _run(env, tmp_path / "fleet.db", jobs=3)
        spans = [(j.created_at, j.ends_at) for j in tonight(env.world)]
        stages = {j.type for j in tonight(env.world)}
    assert result.status == "succeeded"
    assert _peak_overlap(spans) == 3
    assert stages == {"TRAINING", "EVALUATION", "DEPLOYMENT", "RETIREMENT"}


async def test_models_in_flight_no_more_than_the_job_cap_is_warned(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """concurrency = jobs leaves slots idle while models are between jobs: said once."""
    async with emulated(models=6) as env:
        await _run(env, tmp_path / "fleet.db", concurrency=2, jobs=2)
        warned = capsys.readouterr().out
        await _run(env, tmp_path / "other.db")
        quiet = capsys.readouterr().out
    assert "fleet.run.concurrency_binds" in warned
    assert "fleet.run.concurrency_binds" not in quiet
