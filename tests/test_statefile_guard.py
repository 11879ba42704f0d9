"""The state file watched: deleted, truncated, replaced or rolled back under fleet, it is refused.

A "kill" here is a copy of the files as they are while the store is open: what a SIGKILL
leaves on disk (every commit is in the file or its WAL, nothing is checkpointed at exit).
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest

from fleet import guard, scheduler
from fleet.batch import plan_of
from fleet.errors import StoreError
from fleet.models import Lifecycle, ModelSpec
from fleet.records import StageRecord
from fleet.stages import STAGE_ORDER, Stage, StageState
from fleet.store import Store
from support import emulated, settings_for, tonight

MODEL_IDS = [f"00000000-0000-4000-8000-{i:012d}" for i in range(1, 11)]


def _specs(n: int) -> list[ModelSpec]:
    return [ModelSpec(id=MODEL_IDS[i], name=f"m-{i}", lifecycle=Lifecycle()) for i in range(n)]


async def _intent(store: Store, model: int, run_id: str = "night") -> StageRecord:
    """What a submission writes before its request goes out."""
    record = StageRecord(run_id, MODEL_IDS[model], Stage.TRAIN, StageState.SUBMITTING, attempt=1)
    return await store.save_stage(record, StageState.PENDING)


@asynccontextmanager
async def _night(path: Path, models: int = 3) -> AsyncIterator[Store]:
    async with Store.open(path) as store:
        await store.create_run("night", STAGE_ORDER, _specs(models), "{}")
        yield store


def _listing(directory: Path, pattern: str = "*") -> list[Path]:
    return sorted(directory.glob(pattern))


def _empty_read_only(path: Path) -> None:
    path.write_bytes(b"")
    path.chmod(0o400)


def _killed_copy(path: Path, into: Path, *, wal: bool) -> Path:
    """The state file and its sidecar as a SIGKILL leaves them (with or without its WAL)."""
    into.mkdir()
    for suffix in ("", "-commits", *(("-wal",) if wal else ())):
        shutil.copyfile(f"{path}{suffix}", into / f"{path.name}{suffix}")
    return into / path.name


async def test_a_file_deleted_under_a_running_fleet_stops_every_later_write(
    tmp_path: Path,
) -> None:
    """The first commit after the unlink fails naming the file, and so does every one after."""
    path = tmp_path / "fleet.db"
    async with _night(path) as store:
        await _intent(store, 0)
        path.unlink()
        with pytest.raises(StoreError, match=r"fleet\.db was deleted while fleet ran") as first:
            await _intent(store, 1)
        with pytest.raises(StoreError, match="deleted"):
            await _intent(store, 2)
    assert "move that to" in str(first.value)
    [rescued] = _listing(tmp_path, "fleet.db.rescued-*")
    assert stat.S_IMODE(rescued.stat().st_mode) == 0o600
    assert not path.exists()
    # The next start refuses to begin the night again in a new file...
    with pytest.raises(StoreError, match=r"fleet\.db is missing, but .*fleet\.db-commits"):
        async with Store.open(path):
            pass
    assert not path.exists()
    # ...and the rescued state resumes where it stopped.
    rescued.rename(path)
    async with Store.open(path) as store:
        [model, *_] = await store.models("night")
    assert model.stages[Stage.TRAIN].state is StageState.SUBMITTING


async def test_a_file_truncated_under_a_running_fleet_stops_the_run(tmp_path: Path) -> None:
    """Truncated to 0 bytes mid-run: the next commit fails, saying so."""
    path = tmp_path / "fleet.db"
    async with _night(path) as store:
        await _intent(store, 0)
        assert path.stat().st_size > 0
        os.truncate(path, 0)
        with pytest.raises(StoreError, match=r"fleet\.db was truncated from \d+ to 0 bytes"):
            await _intent(store, 1)
        with pytest.raises(StoreError, match="truncated"):
            await store.set_run_status("night", "failed", finished=True)


async def test_a_file_replaced_under_a_running_fleet_stops_the_run(tmp_path: Path) -> None:
    """Another file moved over the path mid-run: the next commit fails, saying so."""
    path = tmp_path / "fleet.db"
    async with _night(path) as store:
        other = tmp_path / "other.db"
        shutil.copyfile(path, other)
        other.replace(path)
        with pytest.raises(StoreError, match=r"fleet\.db was replaced by another file"):
            await _intent(store, 0)


async def test_an_emptied_file_is_refused_at_start_and_left_alone(tmp_path: Path) -> None:
    """A 0-byte file where the sidecar saw a state file is not taken as a new one."""
    path = tmp_path / "fleet.db"
    async with _night(path) as store:
        await _intent(store, 0)
    path.write_bytes(b"")
    with pytest.raises(StoreError, match=r"fleet\.db is empty, but .*records \d+ commits"):
        async with Store.open(path):
            pass
    assert path.stat().st_size == 0
    assert [p.name for p in _listing(tmp_path)] == ["fleet.db", "fleet.db-commits"]
    # Starting afresh on purpose: remove the sidecar as the message says.
    (tmp_path / "fleet.db-commits").unlink()
    async with Store.open(path) as store:
        assert await store.latest_run() is None


async def test_a_wal_lost_after_a_kill_is_refused(tmp_path: Path) -> None:
    """Killed, then its -wal removed: the file is behind its sidecar and resuming is refused."""
    path = tmp_path / "fleet.db"
    async with _night(path) as store:
        for model in range(3):
            await _intent(store, model)
        lost = _killed_copy(path, tmp_path / "lost", wal=False)
        kept = _killed_copy(path, tmp_path / "kept", wal=True)
    with pytest.raises(StoreError, match=r"lost/fleet\.db holds \d+ commits but .* saw \d+"):
        async with Store.open(lost):
            pass
    # The same kill with the WAL kept resumes with every intent.
    async with Store.open(kept) as store:
        models = await store.models("night")
    assert {m.stages[Stage.TRAIN].state for m in models} == {StageState.SUBMITTING}


async def test_no_false_alarm_after_clean_stops_checkpoints_and_reads(tmp_path: Path) -> None:
    """A clean stop, many checkpointed commits, a read-only look, a resume: never refused."""
    path = tmp_path / "fleet.db"
    async with _night(path, models=10) as store:
        for _ in range(25):
            for model in range(10):
                await _intent(store, model)  # 250 commits: checkpoints happen
    async with Store.open(path, readonly=True) as reader:
        assert await reader.latest_run() is not None
    async with Store.open(path) as store:
        await _intent(store, 0)
    async with Store.open(path) as store:
        assert (await store.run("night")).id == "night"


async def test_another_state_file_put_in_place_is_taken_as_it_is(tmp_path: Path) -> None:
    """A different fleet state file copied over the path (not running) is not refused."""
    path, other = tmp_path / "fleet.db", tmp_path / "elsewhere" / "fleet.db"
    other.parent.mkdir()
    async with _night(path) as store:
        await _intent(store, 0)
    async with Store.open(other) as store:
        await store.create_run("other", STAGE_ORDER, _specs(1), "{}")
    shutil.copyfile(other, path)
    async with Store.open(path) as store:
        assert (await store.latest_run()) is not None
        await _intent(store, 0, run_id="other")


async def test_wal_and_shm_left_read_only_are_made_writable_again(tmp_path: Path) -> None:
    """After a read-only episode the -wal and -shm (ours) get 0600 back and the run resumes."""
    path = tmp_path / "fleet.db"
    async with _night(path) as store:
        kept = _killed_copy(path, tmp_path / "kept", wal=True)
    kept.chmod(0o600)  # as fleet creates it
    side = [Path(f"{kept}-wal"), Path(f"{kept}-shm")]
    _empty_read_only(side[1])
    side[0].chmod(0o400)
    async with Store.open(kept) as store:
        for file in side:
            assert stat.S_IMODE(file.stat().st_mode) == 0o600
        await _intent(store, 0)


async def test_a_wal_we_cannot_write_is_named(tmp_path: Path, monkeypatch) -> None:
    """A -wal of another user without write permission for us: one line naming it."""
    path = tmp_path / "fleet.db"
    async with _night(path):
        pass
    _empty_read_only(Path(f"{path}-wal"))
    mine = os.getuid()
    monkeypatch.setattr(guard, "_uid", lambda: mine)
    real_stat = Path.stat

    def foreign(self: Path, **kwargs: bool) -> os.stat_result:
        result = real_stat(self, **kwargs)
        if self.name.endswith("-wal"):
            fields = list(result)
            fields[stat.ST_UID] = mine + 4242
            return os.stat_result(fields)
        return result

    monkeypatch.setattr(Path, "stat", foreign)
    monkeypatch.setattr(os, "access", lambda *_args, **_kw: False)
    with pytest.raises(StoreError, match=r"cannot write .*fleet\.db-wal \(mode 0400, owned by uid"):
        async with Store.open(path):
            pass


async def test_a_read_only_look_at_a_hot_wal_creates_no_shm(tmp_path: Path) -> None:
    """`fleet status` on a killed file with its -wal but no -shm reads it all, creating nothing."""
    path = tmp_path / "fleet.db"
    async with _night(path) as store:
        await _intent(store, 0)
        kept = _killed_copy(path, tmp_path / "kept", wal=True)
    before = _listing(kept.parent)
    async with Store.open(kept, readonly=True) as reader:
        [model, *_] = await reader.models("night")
    assert model.stages[Stage.TRAIN].state is StageState.SUBMITTING
    assert _listing(kept.parent) == before


def test_the_sidecar_is_private_and_tracks_the_file(tmp_path: Path) -> None:
    """`<db>-commits` is 0600 and holds the file's id and its commit count."""
    path = tmp_path / "fleet.db"

    async def main() -> int:
        async with _night(path) as store:
            await _intent(store, 0)
            return store.commits

    anyio.run(main)
    sidecar = tmp_path / "fleet.db-commits"
    assert stat.S_IMODE(sidecar.stat().st_mode) == 0o600
    conn = sqlite3.connect(path)
    file_id, commits = conn.execute("SELECT file_id, commits FROM seal").fetchone()
    conn.close()
    assert sidecar.read_text() == f"fleet-commits 1 {file_id} {commits:020d}\n"


async def test_a_night_whose_file_is_deleted_submits_nothing_more(tmp_path: Path) -> None:
    """Deleted mid-night: the run stops with StoreError; only jobs already in flight land."""
    db = tmp_path / "fleet.db"
    async with emulated(models=12) as env:
        settings = settings_for(env, db, concurrency=2)
        at_deletion: list[int] = []

        async def sleep(seconds: float) -> None:
            if not at_deletion and len(tonight(env.world)) >= 4:
                db.unlink()
                at_deletion.append(len(tonight(env.world)))
            await env.time.sleep(seconds)

        with pytest.raises(StoreError, match=r"fleet\.db was deleted while fleet ran"):
            async with Store.open(db) as store:
                await scheduler.run(
                    plan_of(settings, run_id="night"),
                    env.api,
                    store,
                    controls=scheduler.Controls(sleep=sleep, clock=env.time.monotonic),
                )
        assert at_deletion
        # At most the two models in flight had an intent committed before the look.
        assert len(tonight(env.world)) <= at_deletion[0] + 2
