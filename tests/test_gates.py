"""Model-factory policies against the emulator: approval gates, champions, selective runs.

Expected outcomes are computed from the emulator's own metric draws (`sim.draws.metrics`),
independently of fleet's rule evaluation.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fleet import scheduler
from fleet.batch import plan_of
from fleet.config import load_settings
from fleet.errors import ConfigError
from fleet.sim import draws
from fleet.stages import Stage, StageState
from fleet.store import Store
from support import Emulated, emulated, settings_for, tonight


async def _run(env: Emulated, db: Path, run_id: str, **flags: object) -> scheduler.RunResult:
    async with Store.open(db) as store:
        return await scheduler.run(
            plan_of(settings_for(env, db, **flags), run_id=run_id),
            env.api,
            store,
            controls=scheduler.Controls(sleep=env.time.sleep, clock=env.time.monotonic),
        )


def _metric(env: Emulated, model_id: str, version: int, name: str = "Accuracy") -> float:
    return float(draws.metrics(env.settings.seed, model_id, version)[name])


def _deployed_versions(env: Emulated) -> dict[str, set[int]]:
    versions: dict[str, set[int]] = {}
    for deployment in env.world.active_deployments():
        tm = deployment.trained_model
        versions.setdefault(tm.model_id, set()).add(tm.version)
    return versions


async def test_a_gate_rejects_exactly_the_versions_below_it(tmp_path: Path) -> None:
    """Accuracy >= 0.8: the versions under it are rejected and keep last night's deployment."""
    async with emulated(models=40, seed=4) as env:
        models = env.world.models()
        # Tonight's version follows every earlier one (archived ones too).
        version = {m.id: len(env.world.trained_models_of(m.id)) + 1 for m in models}
        below = {m.name for m in models if _metric(env, m.id, version[m.id]) < 0.8}
        result = await _run(
            env, tmp_path / "f.db", "gate", **{"defaults.approval_rule": "Accuracy >= 0.8"}
        )
        deployed = _deployed_versions(env)
        stats = env.world.stats()
    assert below, "the seed must put some versions under the gate"
    assert len(below) < len(models), "and some over it"
    assert result.status == "succeeded"
    assert set(result.rejected) == below
    assert result.succeeded == len(models) - len(below)
    for model in models:
        assert deployed[model.id] == ({1} if model.name in below else {version[model.id]})
    assert stats["jobs_by_type"]["DEPLOYMENT"] == len(models) - len(below)
    assert stats["jobs_by_type"]["RETIREMENT"] == len(models) - len(below)


async def test_the_decision_rule_and_values_are_stored(tmp_path: Path) -> None:
    """The approve stage keeps the decision, the rule, each comparison and the comment sent."""
    async with emulated(models=6, seed=4) as env:
        await _run(env, tmp_path / "f.db", "r", **{"defaults.approval_rule": "Accuracy >= 0.8"})
        async with Store.open(tmp_path / "f.db") as store:
            models = await store.models("r")
        events = {m.spec.id: env.world.events_of(m.stages[Stage.TRAIN].trained_model_id or "")
                  for m in models}  # fmt: skip
    for model in models:
        data = model.stages[Stage.APPROVE].data
        value = float(model.metrics["Accuracy"])
        assert data["rule"] == "Accuracy >= 0.8"
        assert data["decision"] == ("approved" if value >= 0.8 else "rejected")
        [comparison] = data["comparisons"]
        assert comparison["left"] == pytest.approx(value)
        assert comparison["right"] == 0.8
        sent = [e for e in events[model.spec.id] if e.status in {"APPROVED", "REJECTED"}]
        assert sent[-1].status == data["decision"].upper()
        assert "Accuracy >= 0.8" in str(sent[-1].metadata)


async def test_a_champion_rule_deploys_only_better_versions(tmp_path: Path) -> None:
    """Second night: only versions beating their champion deploy, retiring that champion."""
    db = tmp_path / "f.db"
    # No archived versions: the versions of the two nights are then the 2nd and 3rd.
    async with emulated(models=30, seed=8, archived_versions_rate=0.0) as env:
        models = env.world.models()
        first = await _run(env, db, "night-1")
        assert first.status == "succeeded"
        jobs_before = len(tonight(env.world))
        rule = "Accuracy >= champion.Accuracy"
        second = await _run(env, db, "night-2", **{"defaults.approval_rule": rule})
        new_jobs = tonight(env.world)[jobs_before:]
        deployed = _deployed_versions(env)
    better = {m.name for m in models if _metric(env, m.id, 3) >= _metric(env, m.id, 2)}
    assert better
    assert len(better) < len(models)
    assert set(second.rejected) == {m.name for m in models} - better
    retired = {j.model_id: j.trained_model.version for j in new_jobs if j.type == "RETIREMENT"}
    assert {m.name for m in models if m.id in retired} == better
    assert set(retired.values()) == {2}  # exactly the champions the new versions replace
    for model in models:
        assert deployed[model.id] == ({3} if model.name in better else {2})


@pytest.mark.parametrize(("policy", "expected"), [("allow", "succeeded"), ("reject", "rejected")])
async def test_with_no_champion_the_configured_default_decides(
    tmp_path: Path, policy: str, expected: str
) -> None:
    """Nothing in production yet: champion comparisons allow or reject, as configured."""
    async with emulated(models=5, initial_deployed=False) as env:
        result = await _run(
            env,
            tmp_path / "f.db",
            "r",
            **{
                "defaults.approval_rule": "Accuracy >= champion.Accuracy",
                "defaults.no_champion": policy,
            },
        )
    assert (result.succeeded, len(result.rejected)) == (
        (5, 0) if expected == "succeeded" else (0, 5)
    )


@pytest.mark.parametrize("policy", ["reject", "fail"])
async def test_a_missing_metric_is_the_configured_decision(tmp_path: Path, policy: str) -> None:
    """A rule on a metric the model does not report rejects, or fails, as configured."""
    async with emulated(models=3) as env:
        result = await _run(
            env,
            tmp_path / "f.db",
            "r",
            **{"defaults.approval_rule": "AUC >= 0.5", "defaults.on_missing_metric": policy},
        )
    if policy == "reject":
        assert len(result.rejected) == 3
        assert not result.failed
    else:
        assert len(result.failed) == 3
        assert all("AUC" in f.reason for f in result.failed)


async def test_from_stage_evaluate_starts_from_the_latest_version(tmp_path: Path) -> None:
    """A train-only night, then --from-stage evaluate: no new training, the latest evaluated."""
    db = tmp_path / "f.db"
    async with emulated(models=4) as env:
        await _run(env, db, "train-night", stages="train")
        trained = env.world.stats()["jobs_by_type"]["TRAINING"]
        result = await _run(env, db, "eval-night", from_stage="evaluate")
        stats = env.world.stats()
        async with Store.open(db) as store:
            models = await store.models("eval-night")
    assert result.status == "succeeded"
    assert stats["jobs_by_type"]["TRAINING"] == trained == 4
    assert stats["jobs_by_type"]["EVALUATION"] == 4
    for model in models:
        train = model.stages[Stage.TRAIN]
        assert train.state is StageState.SKIPPED
        assert env.world.trained_model(train.trained_model_id or "").version == 2


async def test_a_monitoring_night_flags_degraded_champions(tmp_path: Path) -> None:
    """Evaluate only the deployed versions; flag those under the monitor rule; deploy nothing."""
    async with emulated(models=20, seed=4) as env:
        models = env.world.models()
        result = await _run(
            env,
            tmp_path / "f.db",
            "monitor",
            stages="evaluate",
            from_version="deployed",
            **{"defaults.monitor_rule": "Accuracy >= 0.8"},
        )
        stats = env.world.stats()
        async with Store.open(tmp_path / "f.db") as store:
            records = await store.models("monitor")
    low = {m.id for m in models if _metric(env, m.id, 1) < 0.8}
    flagged = {
        r.spec.id for r in records if r.stages[Stage.EVALUATE].data["monitor"]["flag"] != "ok"
    }
    assert result.status == "succeeded"
    assert flagged == low
    assert stats["jobs_by_type"]["TRAINING"] == 0
    assert stats["jobs_by_type"]["DEPLOYMENT"] == 0


def test_a_rule_with_a_syntax_error_is_a_config_error(tmp_path: Path) -> None:
    """A broken rule stops the config from loading, naming the setting and the column."""
    with pytest.raises(ConfigError, match=r"defaults\.approval_rule.*column"):
        load_settings(
            None,
            {"defaults.approval_rule": "Accuracy >> 0.8", "db": str(tmp_path / "f.db")},
            env={},
            use_default_file=False,
        )
