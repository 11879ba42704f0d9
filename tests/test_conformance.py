"""fleet against every plausible ModelOps: the emulator's default and each of its switches.

The emulator's default answers as the recordings show and, where they are silent, as Spring
Data REST does; each switch gives another plausible answer (`sim/behaviour.py`). A night of
30 models must end the same on all of them: every model with the outcome its approval rule
predicts (computed here from the emulator's metric draws, not by fleet), one job per model and
type, the replaced version retired, and no look repeated in a loop. Counts, never times.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from fleet import scheduler
from fleet.selection import discovered, specs_with
from fleet.sim import draws
from fleet.store import Store
from support import Emulated, emulated, settings_for, tonight

MODELS = 30
RULE = "Accuracy >= 0.75"
LISTING = "GET /modelops/core/api/jobs"
FINDER = "GET /modelops/core/api/jobs/search/findByStatusIn"
JOB_READ = "GET /modelops/core/api/jobs/{job_id}"


@dataclass(frozen=True)
class Case:
    """A server (the emulator's switches and faults) and how fleet is run against it."""

    server: dict[str, Any] = field(default_factory=dict)
    fleet: dict[str, Any] = field(default_factory=dict)
    discover: bool = False


LOST_POSTS = {"drop_rate": 0.05, "fault_methods": ("POST",)}
CASES = {
    "default": Case(),
    "default, auto": Case(fleet={"poll_mode": "auto"}),
    "sort honoured, updatedAt fresh, auto": Case(
        {"job_sort": "honoured", "updated_at": "fresh"}, {"poll_mode": "auto"}
    ),
    "sort honoured, updatedAt stale, auto": Case(
        {"job_sort": "honoured", "updated_at": "stale"}, {"poll_mode": "auto"}
    ),
    "sort honoured, updatedAt absent, auto": Case({"job_sort": "honoured"}, {"poll_mode": "auto"}),
    "sort answered 500, auto": Case({"job_sort": "error"}, {"poll_mode": "auto"}),
    "findByStatusIn present, auto": Case({"status_finder": True}, {"poll_mode": "finder"}),
    "a third of job reads without status": Case({"status_missing_rate": 0.33}),
    "a third without status, sorted, auto": Case(
        {"status_missing_rate": 0.33, "job_sort": "honoured", "updated_at": "fresh"},
        {"poll_mode": "auto"},
    ),
    "other job type names": Case({"job_types": "other"}),
    "EVALUATED event at once": Case({"evaluated_lag_s": 0.0}),
    "EVALUATED event 40 s late": Case({"evaluated_lag_s": 40.0}),
    "archived models, discovered": Case({"archived_models": 5}, discover=True),
    "no job history (fresh project)": Case({"job_history": False}),
    "events as a bare list": Case({"events_listing": "list"}),
    "events route absent": Case({"events_listing": "absent"}),
    "deployed version reads DEPLOYED": Case({"deployed_version_status": True}),
    "5% of POST answers lost": Case(LOST_POSTS),
    "sort dropped + no finder + fresh project, auto": Case(
        {"job_sort": "dropped", "status_finder": False, "job_history": False},
        {"poll_mode": "auto"},
    ),
    "types renamed + 5% of POST answers lost": Case({"job_types": "other", **LOST_POSTS}),
    "everything unhelpful at once": Case(
        {
            "job_types": "other",
            "status_missing_rate": 0.33,
            "evaluated_lag_s": 40.0,
            "events_listing": "absent",
            "job_history": False,
            "job_sort": "error",
            **LOST_POSTS,
        },
        {"poll_mode": "auto"},
    ),
}


async def _night(env: Emulated, db: Path, case: Case) -> scheduler.RunResult:
    flags = {"defaults.approval_rule": RULE, **case.fleet}
    settings = settings_for(env, db, **flags)
    specs = None
    if case.discover:
        settings = settings.model_copy(update={"models": ()})
        settings = settings.model_copy(
            update={"discover": settings.discover.model_copy(update={"names": ("store-*",)})}
        )
        specs = specs_with(settings, await discovered(env.api, settings))
    async with Store.open(db) as store:
        return await scheduler.run(
            settings,
            env.api,
            store,
            run_id="night-1",
            sleep=env.time.sleep,
            clock=env.time.monotonic,
            rng=random.Random(3),
            specs=specs,
        )


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
async def test_a_night_ends_the_same_on_every_plausible_server(tmp_path: Path, case: Case) -> None:
    """Every model ends as its rule predicts, once per model and type, nothing left behind."""
    async with emulated(models=MODELS, seed=5, **case.server) as env:
        models = env.world.models()
        version = {m.id: len(env.world.trained_models_of(m.id)) + 1 for m in models}
        result = await _night(env, tmp_path / "fleet.db", case)
        stats = env.world.stats()
        jobs = tonight(env.world)
        deployed = {
            d.trained_model.model_id: d.trained_model.version
            for d in env.world.active_deployments()
        }
        active = Counter(d.trained_model.model_id for d in env.world.active_deployments())
    accuracy = {
        m.name: float(draws.metrics(env.settings.seed, m.id, version[m.id])["Accuracy"])
        for m in models
    }
    rejected = {name for name, value in accuracy.items() if value < 0.75}
    assert 0 < len(rejected) < MODELS, "the seed must put versions on both sides of the rule"
    assert result.failed == (), [f.reason for f in result.failed]
    assert (result.status, result.pending) == ("succeeded", 0)
    assert set(result.rejected) == rejected
    assert result.succeeded == MODELS - len(rejected)
    # Exactly once: one job per model and type, even with answers lost and types renamed.
    assert stats["max_jobs_per_model_and_type"] == 1
    by_type = Counter(job.type for job in jobs)
    approved = MODELS - len(rejected)
    assert by_type == {
        "TRAINING": MODELS,
        "EVALUATION": MODELS,
        "DEPLOYMENT": approved,
        "RETIREMENT": approved,
    }
    # What was in production was found and retired: one deployment per model, the right one.
    assert set(active.values()) == {1}
    for model in models:
        assert deployed[model.id] == (1 if model.name in rejected else version[model.id])
    # No look in a loop: batched looks and reads stay within a few per job.
    routes = stats["requests_by_route"]
    assert routes.get(LISTING, 0) + routes.get(FINDER, 0) <= 2 * len(jobs) + 20
    assert routes.get(JOB_READ, 0) <= 60 * len(jobs)
    assert stats["retired_while_scoring"] == 0


async def test_latest_skips_archived_versions(tmp_path: Path) -> None:
    """A monitoring night from the latest version evaluates the newest usable one: never an
    archived version trained after it."""
    async with emulated(models=12, seed=5, archived_versions_rate=1.0) as env:
        archived = {
            tm.id
            for m in env.world.models()
            for tm in env.world.trained_models_of(m.id)
            if tm.archived
        }
        assert archived
        db = tmp_path / "fleet.db"
        flags = {"stages": "evaluate", "from_stage": "evaluate"}
        async with Store.open(db) as store:
            result = await scheduler.run(
                settings_for(env, db, **flags),
                env.api,
                store,
                run_id="monitor",
                sleep=env.time.sleep,
                clock=env.time.monotonic,
            )
        evaluated = {j.trained_model.id for j in tonight(env.world) if j.type == "EVALUATION"}
    assert result.status == "succeeded"
    assert len(evaluated) == 12
    assert not evaluated & archived


async def test_an_evaluated_event_that_never_comes_fails_its_model_not_the_night(
    tmp_path: Path,
) -> None:
    """Re-read for result_wait, then the stage fails with that reason; the run ends."""
    async with emulated(models=4, evaluated_lag_s=float("inf")) as env:
        result = await _night(env, tmp_path / "fleet.db", Case())
    assert len(result.failed) == 4
    assert {f.stage for f in result.failed} == {"evaluate"}
    assert all(
        "EVALUATED event" in f.reason and "did not appear" in f.reason for f in result.failed
    )


async def test_a_job_that_never_ends_times_out_and_the_night_goes_on(tmp_path: Path) -> None:
    """Stuck jobs fail their stage at job_timeout, with the job's last status; the rest end."""
    async with emulated(models=20, seed=5, stuck_rate=0.2) as env:
        flags = {"job_timeout.train": 7200, "job_timeout.evaluate": 3600}
        result = await _night(env, tmp_path / "fleet.db", Case(fleet=flags))
        stuck = {j.model_id for j in tonight(env.world) if j.stuck}
    assert stuck
    assert {f.model_id for f in result.failed} == stuck
    assert all("still RUNNING after" in f.reason for f in result.failed)
    assert result.pending == 0
