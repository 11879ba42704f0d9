"""Selecting models (globs, tags, priority, discovery), planning, and the run deadline."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from cli_support import TOKEN, empty_config, emulator_here, run_env
from fleet import scheduler
from fleet.batch import plan_of
from fleet.config import load_settings
from fleet.models import Lifecycle, ModelSpec
from fleet.selection import discovered, plan_new, plan_resume, select, specs_with
from fleet.shards import Shard, shard_of
from fleet.sim import SimSettings
from fleet.stages import Stage, StageState
from fleet.store import Store
from support import emulated, settings_for

if TYPE_CHECKING:
    from conftest import FleetHere


def _spec(i: int, *, tags: tuple[str, ...] = (), priority: int = 0) -> ModelSpec:
    return ModelSpec(
        id=f"00000000-0000-4000-8000-{i:012d}",
        name=f"store-{i:04d}",
        lifecycle=Lifecycle(),
        tags=tags,
        priority=priority,
    )


def test_globs_match_ids_or_names_and_tags_any_of() -> None:
    """--models globs match an id or a name; --tag keeps models with any given tag."""
    specs = [_spec(1, tags=("eu",)), _spec(2, tags=("us", "big")), _spec(13)]
    assert [s.name for s in select(specs, globs=["store-000*"])] == ["store-0001", "store-0002"]
    assert [s.name for s in select(specs, globs=["*-000000000013"])] == ["store-0013"]
    assert [s.name for s in select(specs, tags=["big", "eu"])] == ["store-0001", "store-0002"]
    assert select(specs, only=frozenset({specs[2].id})) == [specs[2]]


def test_higher_priority_starts_first_and_order_is_otherwise_kept() -> None:
    """Admission order: priority descending, config order among equals."""
    specs = [_spec(1), _spec(2, priority=5), _spec(3), _spec(4, priority=5)]
    assert [s.name for s in select(specs)] == [
        "store-0002",
        "store-0004",
        "store-0001",
        "store-0003",
    ]


def test_a_shard_keeps_its_models_and_the_other_filters_narrow_them() -> None:
    """--shard 1/4 keeps the models hashed to 1, in order; --tag then narrows those."""
    specs = [_spec(i, tags=("eu",) if i % 2 else ()) for i in range(1, 41)]
    mine = [spec for spec in specs if shard_of(spec.id, 4) == 1]
    assert select(specs, shard=Shard(1, 4)) == mine
    assert select(specs, tags=["eu"], shard=Shard(1, 4)) == [s for s in mine if "eu" in s.tags]
    assert mine
    assert len(mine) < len(specs)


async def test_discovery_takes_the_projects_models_by_name(tmp_path: Path) -> None:
    """[discover] names/exclude select models from GET /api/models, paged; archived ones
    (store-0151 and store-0152 here) are left out, and each keeps the language it is in."""
    async with emulated(models=150, archived_models=2) as env:
        settings = settings_for(
            env,
            tmp_path / "f.db",
            **{"discover.names": "store-01*", "discover.exclude": "store-0150"},
        )
        settings = settings.model_copy(update={"models": ()})
        found = await discovered(env.api, settings)
    names = sorted(entry.name or "" for entry in found)
    assert names == [f"store-{i:04d}" for i in range(100, 150)]
    assert {entry.overrides().get("language") for entry in found} == {"PYTHON"}
    assert len(specs_with(settings, found)) == 50


async def test_a_plan_for_a_resumed_run_says_what_happens_next(tmp_path: Path) -> None:
    """Each model's next step follows from its stages: poll, reconcile, retry, submit, skip."""
    async with Store.open(tmp_path / "f.db") as store:
        specs = [_spec(i) for i in range(1, 6)]
        await store.create_run("r", tuple(Stage), specs, "{}")
        models = await store.models("r")
    states = [
        (StageState.SUCCEEDED,) * 5,
        (StageState.SUCCEEDED, StageState.RUNNING),
        (StageState.SUBMITTING,),
        (StageState.SUCCEEDED, StageState.RETRYING),
        (StageState.FAILED,),
    ]
    edited = []
    for model, row in zip(models, states, strict=True):
        stages = dict(model.stages)
        for stage, state in zip(Stage, row, strict=False):
            stages[stage] = replace(stages[stage], state=state, job_id="j")
        edited.append(replace(model, stages=stages))
    rows = plan_resume(edited, tuple(Stage))
    assert [r.action for r in rows] == ["skip", "poll", "reconcile", "retry", "nothing"]
    settings = load_settings(None, {"from_stage": "evaluate"}, env={}, use_default_file=False)
    assert {r.action for r in plan_new(specs, settings)} == {"adopt"}


async def test_past_the_deadline_no_training_starts_and_models_are_left(tmp_path: Path) -> None:
    """max_duration over: the run trains nothing new and says which models are left."""
    async with emulated(models=6) as env, Store.open(tmp_path / "f.db") as store:
        settings = settings_for(env, tmp_path / "f.db", max_duration="0.000001")
        result = await scheduler.run(
            plan_of(settings, run_id="late"),
            env.api,
            store,
            controls=scheduler.Controls(sleep=env.time.sleep, clock=env.time.monotonic),
        )
        stats = env.world.stats()
    assert stats["jobs_by_type"]["TRAINING"] == 0
    assert result.status == "incomplete"
    assert result.pending == 6
    assert result.reason is not None
    assert "6 models left for the next run" in result.reason


def test_a_deadline_is_the_next_such_time_in_its_zone() -> None:
    """05:30 in Europe/Berlin seen from 23:00 UTC is the next morning's 05:30 there."""
    settings = load_settings(
        None, {"deadline": "05:30", "timezone": "Europe/Berlin"}, env={}, use_default_file=False
    )
    at = settings.stop_training_at(datetime(2026, 11, 24, 23, 0, tzinfo=UTC))
    assert at is not None
    assert at.astimezone(UTC) == datetime(2026, 11, 25, 4, 30, tzinfo=UTC)


def test_plan_changes_nothing_and_run_takes_only_the_selection(
    tmp_path: Path, fleet_here: FleetHere
) -> None:
    """`fleet plan` sends nothing and writes nothing; `fleet run --models` runs those only."""
    with emulator_here(tmp_path, SimSettings(models=12, token=TOKEN)) as served:
        config = str(empty_config(tmp_path))
        env = run_env(served.url)
        plan = fleet_here(
            "plan", "--models-file", "models.csv", "--models", "store-000*", "--json",
            "--config", config, cwd=tmp_path, env=env,
        )  # fmt: skip
        assert plan.code == 0, plan.err
        document = json.loads(plan.out)
        assert document["totals"] == {"submit": 9}
        assert served.stats()["requests_total"] == 0
        assert not (tmp_path / "fleet.db").exists()
        done = fleet_here(
            "run", "--run-id", "n", "--models-file", "models.csv", "--models", "store-000*",
            "--config", config, "--poll-interval", "0.05", cwd=tmp_path, env=env,
        )  # fmt: skip
        assert done.code == 0, done.err
        assert served.stats()["jobs_by_type"]["TRAINING"] == 9
        resumed_plan = fleet_here(
            "plan", "--run-id", "n", "--models-file", "models.csv", "--config", config,
            cwd=tmp_path, env=env,
        )  # fmt: skip
    assert "skip 9" in resumed_plan.out


def test_only_failed_runs_the_failures_of_an_earlier_run(
    tmp_path: Path, fleet_here: FleetHere
) -> None:
    """--only-failed RUN_ID starts a new run of just the models that failed in that one."""
    emulated = SimSettings(models=20, job_error_rate=0.2, seed=9, token=TOKEN)
    with emulator_here(tmp_path, emulated) as served:
        config = str(empty_config(tmp_path))
        first = fleet_here(
            "run", "--run-id", "a", "--models-file", "models.csv", "--config", config,
            "--poll-interval", "0.05", cwd=tmp_path, env=run_env(served.url),
        )  # fmt: skip
        assert first.code == 1, first.err
        failed = {
            m["name"]
            for m in json.loads(fleet_here("status", "a", "--json", cwd=tmp_path).out)["models"]
            if m["outcome"] == "failed"
        }
        again = fleet_here(
            "run", "--run-id", "b", "--models-file", "models.csv", "--only-failed", "a",
            "--config", config, "--poll-interval", "0.05", cwd=tmp_path, env=run_env(served.url),
        )  # fmt: skip
    assert again.code in {0, 1}, again.err
    second = json.loads(fleet_here("status", "b", "--json", cwd=tmp_path).out)
    assert {m["name"] for m in second["models"]} == failed
