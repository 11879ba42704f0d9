"""The package as a library: what `import fleet` offers, and a night run from Python with it."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, closing
from pathlib import Path

import anyio

import fleet
from cli_support import Ticking
from fleet import batch, config, errors, progress, selection, settings, sim, stages, version
from fleet.stages import Stage, StageState
from fleet.store import Store

# What the package promises besides the error tree (every FleetError of errors.py).
PROMISED = {
    "Outcome",
    "RunRequest",
    "RunResult",
    "RunStatus",
    "Selection",
    "Settings",
    "__version__",
    "load_settings",
    "run_batch",
}
HOMES = {
    "Outcome": stages,
    "RunRequest": batch,
    "RunResult": progress,
    "RunStatus": stages,
    "Selection": selection,
    "Settings": settings,
    "__version__": version,
    "load_settings": config,
    "run_batch": batch,
}


def _error_tree() -> set[str]:
    """FleetError and every subclass of it that errors.py defines."""
    return {
        name
        for name, value in vars(errors).items()
        if isinstance(value, type)
        and issubclass(value, errors.FleetError)
        and value.__module__ == errors.__name__
    }


def test_the_exports_are_the_promised_names_sorted() -> None:
    """`fleet.__all__` is run_batch, the settings, the result's vocabulary and the error
    tree, each once, in sorted order."""
    assert fleet.__all__ == sorted(set(fleet.__all__))
    assert set(fleet.__all__) == PROMISED | _error_tree()
    assert "RunAborted" not in fleet.__all__  # the engine's own signal, not a caller's error


def test_every_export_is_the_object_of_its_home_module() -> None:
    """Each exported name is there without a further import, and is the object its own
    module defines (not a copy or a stand-in)."""
    for name in fleet.__all__:
        home = HOMES.get(name, errors)
        assert getattr(fleet, name) is getattr(home, name), name


@asynccontextmanager
async def _served(models: int) -> AsyncIterator[tuple[sim.World, str]]:
    """An emulator of `models` models, served in-process over loopback HTTP."""
    world, app = sim.build(sim.SimSettings(models=models), Ticking(step_s=30.0))
    async with sim.serve(app) as url:
        yield world, url


def _settings(world: sim.World, url: str, db: Path) -> fleet.Settings:
    """Settings as an operator writes them: the server, the token, every model discovered."""
    return fleet.load_settings(
        None,
        {
            "api.url": url,
            "api.project_id": world.settings.project_id,
            "api.token": world.settings.token,
            "discover.names": "*",
            "defaults.train_dataset_id": world.train_dataset_id,
            "defaults.evaluate_dataset_id": world.eval_dataset_id,
            "db": str(db),
            "poll_interval": 0.05,
            "poll_floor": 0.01,
        },
        env={},
        use_default_file=False,
    )


async def test_run_batch_runs_a_night_and_the_same_run_id_resumes_it(tmp_path: Path) -> None:
    """`await fleet.run_batch(settings)` takes five models through every stage; called again
    with the run's id it resumes the finished run and submits nothing."""
    async with _served(models=5) as (world, url):
        night = _settings(world, url, tmp_path / "fleet.db")
        result = await fleet.run_batch(night)
        jobs = world.stats()["jobs_total"]
        again = await fleet.run_batch(night, request=fleet.RunRequest(run_id=result.run_id))
        stats = world.stats()
    assert isinstance(result, fleet.RunResult)
    assert result.status is fleet.RunStatus.SUCCEEDED
    assert (result.models_total, result.succeeded, result.failed) == (5, 5, ())
    assert not result.resumed
    assert stats["max_jobs_per_model_and_type"] == 1
    assert (again.run_id, again.status, again.succeeded) == (result.run_id, "succeeded", 5)
    assert again.resumed
    assert stats["jobs_total"] == jobs
    assert world.settings.token.encode() not in (tmp_path / "fleet.db").read_bytes()


class _FirstSubmission(progress.Progress):
    """Progress that says when the night's first job was submitted."""

    def __init__(self) -> None:
        super().__init__()
        self.submitted = anyio.Event()

    def moved(self, stage: Stage, before: StageState, after: StageState) -> None:
        super().moved(stage, before, after)
        if after is StageState.SUBMITTED:
            self.submitted.set()


async def test_a_run_cancelled_from_outside_is_recorded_interrupted_and_resumes(
    tmp_path: Path,
) -> None:
    """Cancelling `run_batch` mid-night (a caller's deadline; the CLI's end of a grace period)
    still writes what must survive it: the run is recorded interrupted, the state file's lease
    is released, and the same run id resumes it with no job sent twice."""
    db = tmp_path / "fleet.db"
    request = fleet.RunRequest(run_id="night-1")
    async with _served(models=5) as (world, url):
        night = _settings(world, url, db)
        watched = _FirstSubmission()
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: fleet.run_batch(night, request=request, progress=watched))
            await watched.submitted.wait()
            tg.cancel_scope.cancel()
        async with Store.open(db, readonly=True) as store:
            status = (await store.run("night-1")).status
        with closing(sqlite3.connect(db)) as conn:
            leases = conn.execute("SELECT COUNT(*) FROM lease").fetchone()[0]
        again = await fleet.run_batch(night, request=request)
        stats = world.stats()
    assert (status, leases) == (fleet.RunStatus.INTERRUPTED, 0)
    assert (again.status, again.succeeded, again.resumed) == ("succeeded", 5, True)
    assert stats["max_jobs_per_model_and_type"] == 1
