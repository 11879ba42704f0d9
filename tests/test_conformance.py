"""fleet against every plausible ModelOps: the emulator's default and each of its switches.

The emulator's default answers as the recordings show and, where they are silent, as Spring
Data REST does; each switch gives another plausible answer (`sim/behaviour.py`). A night of
30 models must end the same on all of them: every model with the outcome its approval rule
predicts (computed here from the emulator's metric draws, not by fleet), one job per model and
type, the replaced version retired, and no look repeated in a loop. Counts, never times.
"""

from __future__ import annotations

import importlib.util
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from fleet import scheduler
from fleet.selection import discovered, specs_with
from fleet.sim import draws
from support import Emulated, emulated, night, settings_for, tonight

ROOT = Path(__file__).resolve().parents[1]


def _cases() -> dict[str, Any]:
    """bench/cases.py: the servers of this test and of bench/conformance.py, one list."""
    spec = importlib.util.spec_from_file_location("cases", ROOT / "bench" / "cases.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["cases"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    cases: dict[str, Any] = module.CASES
    return cases


CASES = _cases()
MODELS = 30
RULE = "Accuracy >= 0.75"
LISTING = "GET /modelops/core/api/jobs"
FINDER = "GET /modelops/core/api/jobs/search/findByStatusIn"
JOB_READ = "GET /modelops/core/api/jobs/{job_id}"


async def _night(env: Emulated, db: Path, case: Any) -> scheduler.RunResult:
    settings = settings_for(env, db, **{"defaults.approval_rule": RULE, **case.fleet})
    if not case.discover:
        return await night(env, settings)
    discover = settings.discover.model_copy(update={"names": ("store-*",)})
    settings = settings.model_copy(update={"models": (), "discover": discover})
    return await night(
        env, settings, specs=specs_with(settings, await discovered(env.api, settings))
    )


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
async def test_a_night_ends_the_same_on_every_plausible_server(tmp_path: Path, case: Any) -> None:
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
        flags = {"stages": "evaluate", "from_stage": "evaluate"}
        result = await night(env, settings_for(env, tmp_path / "fleet.db", **flags))
        evaluated = {j.trained_model.id for j in tonight(env.world) if j.type == "EVALUATION"}
    assert result.status == "succeeded"
    assert len(evaluated) == 12
    assert not evaluated & archived


async def test_an_evaluated_event_that_never_comes_fails_its_model_not_the_night(
    tmp_path: Path,
) -> None:
    """Re-read for result_wait, then the stage fails with that reason; the run ends."""
    async with emulated(models=4, evaluated_lag_s=float("inf")) as env:
        result = await _night(env, tmp_path / "fleet.db", CASES["default"])
    assert len(result.failed) == 4
    assert {f.stage for f in result.failed} == {"evaluate"}
    assert all(
        "EVALUATED event" in f.reason and "did not appear" in f.reason for f in result.failed
    )


async def test_a_job_that_never_ends_times_out_and_the_night_goes_on(tmp_path: Path) -> None:
    """Stuck jobs fail their stage at job_timeout, with the job's last status; the rest end."""
    async with emulated(models=20, seed=5, stuck_rate=0.2) as env:
        flags = {"job_timeout.train": 7200, "job_timeout.evaluate": 3600}
        settings = settings_for(env, tmp_path / "fleet.db", **flags)
        result = await night(env, settings)
        stuck = {j.model_id for j in tonight(env.world) if j.stuck}
    assert stuck
    assert {f.model_id for f in result.failed} == stuck
    assert all("still RUNNING after" in f.reason for f in result.failed)
    assert result.pending == 0
