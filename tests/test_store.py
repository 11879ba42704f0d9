"""The SQLite state file: schema, round trips, the transition log, batching, and safety."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import anyio
import pytest
from structlog.testing import capture_logs

from fleet import store as store_module
from fleet.encoding import ENCODING
from fleet.errors import LeaseHeld, NewerStateFile, RunNotFound, StoreError
from fleet.models import Lifecycle, ModelSpec
from fleet.records import Lease
from fleet.schema import MIGRATIONS
from fleet.stages import STAGE_ORDER, Stage, StageState
from fleet.store import Store
from support import files_in

MODEL_IDS = [f"00000000-0000-4000-8000-{i:012d}" for i in range(1, 41)]


def _specs(n: int) -> list[ModelSpec]:
    return [
        ModelSpec(id=MODEL_IDS[i], name=f"store-{i:04d}", lifecycle=Lifecycle()) for i in range(n)
    ]


def _schema3_file(path: Path) -> None:
    """A state file at schema 3 (before projects): run `old`, failed, with one model."""
    conn = sqlite3.connect(path)
    conn.executescript(f"{';'.join(MIGRATIONS[:3])}; PRAGMA user_version = 3;")
    conn.execute(
        "INSERT INTO runs (id, created_at, updated_at, status, stages, settings)"
        " VALUES ('old', '2026-11-24T00:00:00+00:00', '2026-11-24T00:00:00+00:00', 'failed',"
        " 'train', '{}')"
    )
    conn.execute(
        "INSERT INTO run_models (run_id, model_id, position, name, lifecycle)"
        f" VALUES ('old', '{MODEL_IDS[0]}', 0, 'store-0000', '{{}}')"
    )
    conn.commit()
    conn.close()


async def test_a_new_file_is_migrated_to_wal_mode(tmp_path: Path) -> None:
    """Opening a new file creates the schema at the latest version, in WAL mode."""
    path = tmp_path / "fleet.db"
    async with Store.open(path):
        pass
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"runs", "run_models", "stages", "metrics", "transitions", "attempts", "lease"} <= tables


async def test_an_older_file_is_migrated_in_place(tmp_path: Path) -> None:
    """A file at schema 1 gains the later migrations and keeps its runs."""
    path = tmp_path / "fleet.db"
    conn = sqlite3.connect(path)
    conn.executescript(f"{MIGRATIONS[0]}; PRAGMA user_version = 1;")
    conn.execute(
        "INSERT INTO runs (id, created_at, updated_at, status, stages, settings)"
        " VALUES ('old', '2026-11-24T00:00:00+00:00', '2026-11-24T00:00:00+00:00', 'failed',"
        " 'train', '{}')"
    )
    conn.commit()
    conn.close()
    async with Store.open(path) as store:
        run = await store.run("old")
    assert run.status == "failed"
    assert run.reason is None


async def test_models_of_a_file_from_before_projects_are_in_the_default_project(
    tmp_path: Path,
) -> None:
    """A run stored at schema 3 reads back with each model in project default; new runs keep
    each model's project."""
    path = tmp_path / "fleet.db"
    _schema3_file(path)
    specs = [replace(spec, project="retail") for spec in _specs(2)]
    async with Store.open(path) as store:
        (old,) = await store.models("old")
        await store.create_run("new", STAGE_ORDER, specs, "{}")
        new = await store.models("new")
    assert old.spec.project == "default"
    assert [m.spec.project for m in new] == ["retail", "retail"]


async def test_a_run_round_trips_with_models_in_order(tmp_path: Path) -> None:
    """Models come back in admission order with every stage pending and their settings."""
    async with Store.open(tmp_path / "fleet.db") as store:
        await store.create_run("r1", STAGE_ORDER, _specs(3), "{}")
        run = await store.run("r1")
        models = await store.models("r1")
    assert run.status == "running"
    assert run.stages == STAGE_ORDER
    assert [m.spec.name for m in models] == ["store-0000", "store-0001", "store-0002"]
    assert all(r.state is StageState.PENDING for m in models for r in m.stages.values())
    assert models[0].spec.lifecycle == Lifecycle()


async def test_a_stage_write_is_logged_as_a_transition(tmp_path: Path) -> None:
    """Saving a stage updates its row, appends a transition, and stores metrics."""
    async with Store.open(tmp_path / "fleet.db") as store:
        await store.create_run("r1", STAGE_ORDER, _specs(1), "{}")
        record = (await store.models("r1"))[0].stages[Stage.EVALUATE]
        moved = replace(record, state=StageState.SUBMITTING, attempt=1, trained_model_id="tm")
        await store.save_stage(moved, StageState.PENDING, "why", {"Accuracy": "0.91"})
        model = (await store.models("r1"))[0]
        log = await store.transitions("r1", MODEL_IDS[0])
    assert model.stages[Stage.EVALUATE].state is StageState.SUBMITTING
    assert model.stages[Stage.EVALUATE].attempt == 1
    assert model.metrics == {"Accuracy": "0.91"}
    assert [(t["from_state"], t["to_state"], t["detail"]) for t in log] == [
        ("pending", "submitting", "why")
    ]


async def test_concurrent_writes_share_commits(tmp_path: Path) -> None:
    """Forty models writing at once need far fewer commits than writes."""
    async with Store.open(tmp_path / "fleet.db") as store:
        await store.create_run("r1", STAGE_ORDER, _specs(40), "{}")
        models = await store.models("r1")
        before = store.commits

        async def write(model_index: int) -> None:
            record = models[model_index].stages[Stage.TRAIN]
            await store.save_stage(replace(record, state=StageState.SUBMITTING), StageState.PENDING)

        async with anyio.create_task_group() as tg:
            for i in range(40):
                tg.start_soon(write, i)
        commits = store.commits - before
        states = {m.stages[Stage.TRAIN].state for m in await store.models("r1")}
    assert states == {StageState.SUBMITTING}
    assert commits < 10


async def test_a_write_is_durable_when_it_returns(tmp_path: Path) -> None:
    """A write committed alone is in the file for any other connection at once: the commit
    is not left to a later moment or another task."""
    path = tmp_path / "fleet.db"
    async with Store.open(path) as store:
        await store.create_run("r1", STAGE_ORDER, _specs(1), "{}")
        await store.set_run_status("r1", "draining", finished=False)
        with sqlite3.connect(path) as other:
            [(status,)] = other.execute("SELECT status FROM runs WHERE id = 'r1'").fetchall()
    assert status == "draining"


async def test_a_failing_step_keeps_nothing_and_later_writes_commit(tmp_path: Path) -> None:
    """A write whose read-decide step fails (a bug) fails its caller; nothing of its
    transaction is kept, and the writes after it commit as usual."""

    def broken(conn: sqlite3.Connection) -> None:
        conn.execute("UPDATE runs SET status = 'half-done'")
        raise RuntimeError("a bug in a step")

    async with Store.open(tmp_path / "fleet.db") as store:
        await store.create_run("r1", STAGE_ORDER, _specs(1), "{}")
        with pytest.raises(RuntimeError, match="a bug in a step"):
            await store._write([], broken)
        assert (await store.run("r1")).status == "running"
        await store.set_run_status("r1", "succeeded", finished=True)
        assert (await store.run("r1")).status == "succeeded"


async def test_a_file_opened_for_reading_refuses_writes(tmp_path: Path) -> None:
    """`fleet status` and `report` open the file read-only: a write there is a StoreError."""
    path = tmp_path / "fleet.db"
    async with Store.open(path) as store:
        await store.create_run("r1", STAGE_ORDER, _specs(1), "{}")
    async with Store.open(path, readonly=True) as store:
        with pytest.raises(StoreError, match="not open for writing"):
            await store.set_run_status("r1", "failed", finished=True)
        assert (await store.run("r1")).status == "running"


async def test_state_survives_reopening(tmp_path: Path) -> None:
    """What one process wrote, the next one reads: the basis of resume."""
    path = tmp_path / "fleet.db"
    async with Store.open(path) as store:
        await store.create_run("r1", STAGE_ORDER, _specs(2), "{}")
        record = (await store.models("r1"))[1].stages[Stage.TRAIN]
        await store.save_stage(
            replace(record, state=StageState.SUBMITTING, job_id="j1"), StageState.PENDING
        )
    async with Store.open(path) as store:
        model = (await store.models("r1"))[1]
        latest = await store.latest_run()
    assert model.stages[Stage.TRAIN].job_id == "j1"
    assert latest is not None
    assert latest.id == "r1"


async def test_unknown_run_and_unusable_file_are_clear_errors(tmp_path: Path) -> None:
    """An unknown run id is RunNotFound; a file that is not SQLite is a StoreError."""
    async with Store.open(tmp_path / "fleet.db") as store:
        with pytest.raises(RunNotFound):
            await store.run("nope")
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError):
        async with Store.open(junk):
            pass


@pytest.mark.parametrize("readonly", [False, True], ids=["driven", "read"])
async def test_a_file_from_a_newer_fleet_is_refused(tmp_path: Path, readonly: bool) -> None:
    """A schema newer than this fleet knows is never touched."""
    path = tmp_path / "fleet.db"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    before = path.read_bytes()
    with pytest.raises(NewerStateFile, match="newer fleet"):
        async with Store.open(path, readonly=readonly):
            pass
    assert path.read_bytes() == before


async def _with_settings(path: Path, change: dict[str, object], encoding: int = ENCODING) -> None:
    """A run of two models whose stored settings hold `change`, with encoding `encoding`."""
    async with Store.open(path) as store:
        await store.create_run("r1", STAGE_ORDER, _specs(2), "{}")
    conn = sqlite3.connect(path)
    with conn:
        for model_id, text in conn.execute("SELECT model_id, lifecycle FROM run_models"):
            conn.execute(
                "UPDATE run_models SET lifecycle = ?, encoding = ? WHERE model_id = ?",
                (json.dumps({**json.loads(text), **change}), encoding, model_id),
            )
    conn.close()


@pytest.mark.parametrize("readonly", [False, True], ids=["driven", "read"])
async def test_settings_in_a_newer_encoding_are_refused(tmp_path: Path, readonly: bool) -> None:
    """A model stored in an encoding this fleet does not know: the file is left as it is."""
    path = tmp_path / "fleet.db"
    await _with_settings(path, {}, encoding=ENCODING + 1)
    before = path.read_bytes()
    with pytest.raises(NewerStateFile, match=f"settings encoding {ENCODING + 1}"):
        async with Store.open(path, readonly=readonly):
            pass
    assert path.read_bytes() == before


async def test_settings_a_newer_fleet_writes_while_the_file_is_open_are_refused(
    tmp_path: Path,
) -> None:
    """A model a newer fleet stored after this one opened the file is not misread either."""
    path = tmp_path / "fleet.db"
    await _with_settings(path, {})
    async with Store.open(path) as store:
        await store.models("r1")
        conn = sqlite3.connect(path)
        with conn:
            conn.execute("UPDATE run_models SET encoding = ?", (ENCODING + 1,))
        conn.close()
        with pytest.raises(NewerStateFile):
            await store.models("r1")


async def test_an_unknown_setting_is_logged_once_per_setting_and_file(tmp_path: Path) -> None:
    """Two models with two dropped settings, read twice: one warning event per setting."""
    path = tmp_path / "fleet.db"
    await _with_settings(path, {"gpu_pool": "a100", "spot": True})
    with capture_logs() as logs:
        async with Store.open(path) as store:
            await store.models("r1")
            models = await store.models("r1")
    assert models[0].spec.lifecycle == Lifecycle()
    assert [(e["event"], e["setting"], e["db"], e["log_level"]) for e in logs] == [
        ("fleet.store.setting_ignored", "gpu_pool", str(path), "warning"),
        ("fleet.store.setting_ignored", "spot", str(path), "warning"),
    ]
    assert len(store.warnings) == 2


async def test_a_reader_keeps_its_warnings_for_its_caller_and_logs_none(tmp_path: Path) -> None:
    """Read-only (status, report: their stdout is a document), warnings are data only."""
    path = tmp_path / "fleet.db"
    await _with_settings(path, {"gpu_pool": "a100"})
    with capture_logs() as logs:
        async with Store.open(path, readonly=True) as store:
            await store.models("r1")
    assert logs == []
    assert len(store.warnings) == 1
    assert "setting 'gpu_pool' is not one this fleet knows" in store.warnings[0]


async def test_a_value_no_longer_valid_is_shown_at_its_default_but_not_driven(
    tmp_path: Path,
) -> None:
    """A reader shows the model with the setting's default and a warning; a run refuses to
    drive it with a value it was not started with."""
    path = tmp_path / "fleet.db"
    await _with_settings(path, {"approval_rule": "Accuracy >>= 0.9"})
    async with Store.open(path, readonly=True) as store:
        models = await store.models("r1")
    assert models[0].spec.lifecycle.approval_rule is None
    assert [w.split(": ", 1)[1][:33] for w in store.warnings] == [
        "setting 'approval_rule' of model "
    ]
    async with Store.open(path) as store:
        with pytest.raises(StoreError, match="'approval_rule' this fleet does not accept"):
            await store.models("r1")


async def test_settings_that_are_not_json_are_a_store_error(tmp_path: Path) -> None:
    """A model row whose settings are not a JSON object names the model and the file."""
    path = tmp_path / "fleet.db"
    await _with_settings(path, {})
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("UPDATE run_models SET lifecycle = '[1, 2]'")
    conn.close()
    async with Store.open(path, readonly=True) as store:
        with pytest.raises(StoreError, match=f"{path}: the settings of model store-0000"):
            await store.models("r1")


async def test_an_older_file_is_read_without_being_changed(tmp_path: Path) -> None:
    """A reader opens a file at schema 3 through a migrated copy; the file stays at 3."""
    path = tmp_path / "fleet.db"
    _schema3_file(path)
    before = files_in(tmp_path)
    async with Store.open(path, readonly=True) as store:
        (model,) = await store.models("old")
    assert model.spec.project == "default"
    assert files_in(tmp_path) == before


def _lease(holder: str, *, pid: int | None = None, host: str | None = None) -> Lease:
    now = datetime.now(UTC)
    return Lease(
        holder=holder,
        host=host or socket.gethostname(),
        pid=pid or os.getpid(),
        since=now,
        renewed_at=now,
    )


async def test_a_live_lease_refuses_a_second_holder(tmp_path: Path) -> None:
    """While one holder renews, another is refused with its host, pid and start time."""
    async with Store.open(tmp_path / "fleet.db") as store:
        await store.acquire_lease(_lease("a"), ttl_s=60)
        with pytest.raises(LeaseHeld, match=f"pid {os.getpid()} on {socket.gethostname()}"):
            await store.acquire_lease(_lease("b"), ttl_s=60)
        assert await store.renew_lease(_lease("a"))
        await store.release_lease(_lease("a"))
        await store.acquire_lease(_lease("b"), ttl_s=60)


async def test_a_stale_or_dead_holder_is_taken_over(tmp_path: Path) -> None:
    """A holder past its ttl, or a dead pid on this host, loses the lease to the next one."""
    async with Store.open(tmp_path / "fleet.db") as store:
        await store.acquire_lease(_lease("ghost", host="elsewhere"), ttl_s=60)
        await store.acquire_lease(_lease("b"), ttl_s=0.000001)  # stale by now
        assert not await store.renew_lease(_lease("ghost"))
    async with Store.open(tmp_path / "other.db") as store:
        await store.acquire_lease(_lease("c", pid=_ended_pid()), ttl_s=60)
        await store.acquire_lease(_lease("d"), ttl_s=60)


async def test_a_lease_left_under_our_own_pid_by_an_earlier_process_is_taken_over(
    tmp_path: Path,
) -> None:
    """A container restarted in place runs fleet as pid 1 again: the lease its previous
    process left says "pid 1, this host", which is alive (it is us), yet not ours."""
    db = tmp_path / "fleet.db"
    async with Store.open(db) as store:
        await store.acquire_lease(_lease("earlier"), ttl_s=60)
    store_module._HELD_HERE.discard("earlier")  # what a new process starts with
    async with Store.open(db) as store:
        await store.acquire_lease(_lease("now"), ttl_s=60)
        assert not await store.renew_lease(_lease("earlier"))


def _ended_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid
