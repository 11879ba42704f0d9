"""Run state in SQLite: one owned aiosqlite connection, numbered migrations, batched commits.

Every lifecycle step is one logical write (the stage row and its transition log entry, plus
any metrics) that becomes durable before the step's caller goes on. Writes from many models
that arrive together share one transaction: a commit costs ~125 µs, a row ~2 µs. Every text
written goes through `fleet.secrets.redactor` first: no secret reaches the file or its WAL.

The file is watched while it is driven (`guard.py`): each commit counts itself in the file and
in a sidecar `<db>-commits`, and is followed by a look at the path; a state file deleted,
replaced or truncated under a running fleet stops the run before anything more is submitted,
and a file found behind its sidecar at start (empty, or its WAL lost after a kill) is refused.
"""

from __future__ import annotations

import json
import math
import os
import socket
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Self

import aiosqlite
import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from fleet.errors import FleetError, LeaseHeld, RunNotFound, StoreError, ungrouped
from fleet.guard import Guard, Seal, private_copy, repair_modes
from fleet.models import Lifecycle, ModelSpec
from fleet.records import Lease, ModelRecord, RunRecord, StageRecord, utc_now
from fleet.secrets import redactor
from fleet.stages import STAGE_ORDER, Stage, StageState

_MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE runs (
        id          TEXT PRIMARY KEY,
        created_at  TEXT NOT NULL,
        updated_at  TEXT NOT NULL,
        finished_at TEXT,
        status      TEXT NOT NULL,
        stages      TEXT NOT NULL,
        settings    TEXT NOT NULL
    );
    CREATE TABLE run_models (
        run_id    TEXT NOT NULL REFERENCES runs(id),
        model_id  TEXT NOT NULL,
        position  INTEGER NOT NULL,
        name      TEXT NOT NULL,
        lifecycle TEXT NOT NULL,
        PRIMARY KEY (run_id, model_id)
    );
    CREATE TABLE stages (
        run_id           TEXT NOT NULL,
        model_id         TEXT NOT NULL,
        stage            TEXT NOT NULL,
        state            TEXT NOT NULL,
        attempt          INTEGER NOT NULL DEFAULT 0,
        job_id           TEXT,
        trained_model_id TEXT,
        deployment_id    TEXT,
        error            TEXT,
        data             TEXT NOT NULL DEFAULT '{}',
        submitted_at     TEXT,
        finished_at      TEXT,
        updated_at       TEXT NOT NULL,
        PRIMARY KEY (run_id, model_id, stage),
        FOREIGN KEY (run_id, model_id) REFERENCES run_models(run_id, model_id)
    );
    CREATE TABLE metrics (
        run_id           TEXT NOT NULL,
        model_id         TEXT NOT NULL,
        trained_model_id TEXT NOT NULL,
        name             TEXT NOT NULL,
        value            TEXT NOT NULL,
        PRIMARY KEY (run_id, model_id, trained_model_id, name)
    );
    CREATE TABLE transitions (
        id         INTEGER PRIMARY KEY,
        run_id     TEXT NOT NULL,
        model_id   TEXT NOT NULL,
        stage      TEXT NOT NULL,
        from_state TEXT NOT NULL,
        to_state   TEXT NOT NULL,
        at         TEXT NOT NULL,
        detail     TEXT
    );
    CREATE INDEX transitions_by_model ON transitions (run_id, model_id);
    """,
    """
    CREATE TABLE attempts (
        run_id           TEXT NOT NULL,
        model_id         TEXT NOT NULL,
        stage            TEXT NOT NULL,
        attempt          INTEGER NOT NULL,
        job_id           TEXT,
        trained_model_id TEXT,
        outcome          TEXT NOT NULL,
        error            TEXT,
        submitted_at     TEXT,
        finished_at      TEXT,
        PRIMARY KEY (run_id, model_id, stage, attempt)
    );
    CREATE TABLE lease (
        id         INTEGER PRIMARY KEY CHECK (id = 1),
        holder     TEXT NOT NULL,
        host       TEXT NOT NULL,
        pid        INTEGER NOT NULL,
        since      TEXT NOT NULL,
        renewed_at TEXT NOT NULL
    );
    ALTER TABLE runs ADD COLUMN reason TEXT;
    """,
    """
    ALTER TABLE runs ADD COLUMN from_stage TEXT;
    """,
    # The ModelOps project of each model (config.DEFAULT_PROJECT: [api]'s, as all were before).
    """
    ALTER TABLE run_models ADD COLUMN project TEXT NOT NULL DEFAULT 'default';
    """,
    # How many commits this file has had, and which file it is (see guard.py).
    """
    CREATE TABLE seal (
        id      INTEGER PRIMARY KEY CHECK (id = 1),
        file_id TEXT NOT NULL,
        commits INTEGER NOT NULL
    );
    INSERT INTO seal (id, file_id, commits) VALUES (1, lower(hex(randomblob(16))), 0);
    """,
)
_SEALED_SINCE = 5  # the schema version that added the seal
_COUNT_COMMIT = "UPDATE seal SET commits = commits + 1 WHERE id = 1 RETURNING commits"

_INSERT_RUN = (
    "INSERT INTO runs (id, created_at, updated_at, status, stages, settings, from_stage)"
    " VALUES (?, ?, ?, 'running', ?, ?, ?)"
)
_INSERT_MODEL = (
    "INSERT INTO run_models (run_id, model_id, position, name, lifecycle, project)"
    " VALUES (?, ?, ?, ?, ?, ?)"
)
_INSERT_STAGE = (
    "INSERT INTO stages (run_id, model_id, stage, state, updated_at) VALUES (?, ?, ?, 'pending', ?)"
)
# How long each model's stages ran (`ran_s`, seconds) in the latest few other runs, oldest
# run first so that the latest wins.
_DURATIONS = (
    "SELECT s.model_id, s.stage, json_extract(s.data, '$.ran_s') AS ran FROM stages AS s"
    " JOIN (SELECT id, created_at FROM runs WHERE id != ? ORDER BY created_at DESC LIMIT ?)"
    " AS r ON s.run_id = r.id WHERE s.state = 'succeeded' AND ran IS NOT NULL"
    " ORDER BY r.created_at"
)
_UPDATE_RUN = "UPDATE runs SET status = ?, updated_at = ?, finished_at = ?, reason = ? WHERE id = ?"
_UPDATE_STAGE = (
    "UPDATE stages SET (state, attempt, job_id, trained_model_id, deployment_id, error, data,"
    " submitted_at, finished_at, updated_at) = (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " WHERE run_id = ? AND model_id = ? AND stage = ?"
)
_INSERT_TRANSITION = (
    "INSERT INTO transitions (run_id, model_id, stage, from_state, to_state, at, detail)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_UPSERT_ATTEMPT = (
    "INSERT OR REPLACE INTO attempts (run_id, model_id, stage, attempt, job_id, trained_model_id,"
    " outcome, error, submitted_at, finished_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_UPSERT_METRIC = (
    "INSERT OR REPLACE INTO metrics (run_id, model_id, trained_model_id, name, value)"
    " VALUES (?, ?, ?, ?, ?)"
)


@dataclass(slots=True)
class _Write:
    statements: Sequence[tuple[str, Sequence[Any]]]
    # A read-decide-write step that must run alone in its own transaction (the lease).
    step: Callable[[aiosqlite.Connection], Awaitable[Any]] | None = None
    result: Any = None
    done: anyio.Event = field(default_factory=anyio.Event)
    error: BaseException | None = None


class Store:
    """The state file. Open with `async with Store.open(path) as store:`."""

    def __init__(
        self, conn: aiosqlite.Connection, now: Callable[[], datetime], path: str = ""
    ) -> None:
        self._conn = conn
        self._path = path
        self._now = now
        send, receive = anyio.create_memory_object_stream[_Write](max_buffer_size=math.inf)
        self._send: MemoryObjectSendStream[_Write] = send
        self._receive: MemoryObjectReceiveStream[_Write] = receive
        self.commits = 0  # by this process
        self._sequence = 0  # the file's own count (its seal), when driven
        # Watches the file while it is driven (None when read-only).
        self._guard: Guard | None = None
        # Set when the file was deleted, replaced or truncated: every later write fails with it.
        self._broken: StoreError | None = None

    @classmethod
    @asynccontextmanager
    async def open(
        cls, path: Path | str, *, now: Callable[[], datetime] = utc_now, readonly: bool = False
    ) -> AsyncIterator[Self]:
        """The state file; `readonly` (for `fleet plan`, `status`, `report`) neither creates,
        migrates nor changes it, nor leaves files beside it."""
        if readonly:
            async with _read_only(Path(path)) as conn:
                store = cls(conn, now, str(path))
                try:
                    await store._check_schema(path)
                    async with store._serving():
                        yield store
                finally:
                    store._closed()
            return
        seal = Seal(Path(path))
        seal.check_present()
        repair_modes(Path(path))
        try:
            _create_private(Path(path))
            conn = await aiosqlite.connect(str(path), isolation_level=None)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open state file {path}: {exc}") from exc
        store = cls(conn, now, str(path))
        try:
            await store._prepare(path, seal)
            store._guard = await store._sealed(seal)
            async with store._serving():
                yield store
        finally:
            store._closed()
            await conn.close()

    @asynccontextmanager
    async def _serving(self) -> AsyncIterator[None]:
        """The writer task around the caller's use of the store."""
        try:
            with ungrouped():
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._writer)
                    try:
                        yield
                    finally:
                        self._send.close()
        finally:
            self._closed()

    def _closed(self) -> None:
        self._send.close()
        self._receive.close()
        if self._guard is not None:
            self._guard.close()

    async def _sealed(self, seal: Seal) -> Guard:
        """Compare the file with its sidecar (refusing a file behind it), then watch it."""
        try:
            async with self._conn.execute("SELECT file_id, commits FROM seal WHERE id = 1") as cur:
                row = await cur.fetchone()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot use state file {self._path}: {exc}") from exc
        if row is None:
            raise StoreError(f"state file {self._path} lacks its seal row; it was edited by hand")
        file_id, commits = str(row[0]), int(row[1])
        seal.check_against(file_id, commits)
        self._sequence = commits
        return Guard(Path(self._path), seal, file_id)

    async def _check_schema(self, path: Path | str) -> None:
        try:
            async with self._conn.execute("PRAGMA user_version") as cursor:
                row = await cursor.fetchone()
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"cannot use state file {path}: {exc}") from exc
        version = int(row[0]) if row else 0
        if version == 0:
            raise StoreError(
                f"state file {path} holds no fleet state (it is empty, or no `fleet run` has "
                "written to it); pass the state file of a run"
            )
        if version > len(_MIGRATIONS):
            raise StoreError(
                f"state file {path} was written by a newer fleet (schema {version}, this fleet "
                f"knows {len(_MIGRATIONS)}); use that fleet version or newer"
            )
        if version < len(_MIGRATIONS):
            raise StoreError(
                f"state file {path} is from an older fleet version; run `fleet run` to upgrade it"
            )

    async def _prepare(self, path: Path | str, seal: Seal) -> None:
        try:
            await self._conn.execute("PRAGMA journal_mode=WAL")
            await self._conn.execute("PRAGMA synchronous=NORMAL")
            await self._conn.execute("PRAGMA foreign_keys=ON")
            await self._conn.execute("PRAGMA busy_timeout=5000")
            # Checkpoints are taken by the writer, each after the file was found intact: an
            # automatic one could write pages back into a file truncated under fleet, hiding it.
            await self._conn.execute("PRAGMA wal_autocheckpoint=0")
            async with self._conn.execute("PRAGMA user_version") as cursor:
                row = await cursor.fetchone()
            version = int(row[0]) if row else 0
            if version > len(_MIGRATIONS):
                raise StoreError(
                    f"state file {path} is from a newer fleet (schema {version}); upgrade fleet"
                )
            seal.check_initialised(version >= _SEALED_SINCE)
            for number, script in enumerate(_MIGRATIONS[version:], start=version + 1):
                await self._conn.executescript(
                    f"BEGIN; {script}; PRAGMA user_version = {number}; COMMIT;"
                )
            if version < len(_MIGRATIONS):
                # The schema in the file itself, not only in its WAL.
                await self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"cannot use state file {path}: {exc}") from exc

    # -- writes ------------------------------------------------------------------------------

    async def _write(
        self,
        statements: Sequence[tuple[str, Sequence[Any]]],
        step: Callable[[aiosqlite.Connection], Awaitable[Any]] | None = None,
    ) -> Any:
        write = _Write(statements, step)
        await self._send.send(write)
        # The write must reach the disk even if this step is being cancelled.
        with anyio.CancelScope(shield=True):
            await write.done.wait()
        if isinstance(write.error, FleetError):
            raise write.error
        if write.error is not None:
            raise StoreError(f"cannot write state: {write.error}") from write.error
        return write.result

    async def _writer(self) -> None:
        async with self._receive:
            async for first in self._receive:
                batch = [first]
                while batch[-1].step is None:
                    try:
                        batch.append(self._receive.receive_nowait())
                    except (anyio.WouldBlock, anyio.EndOfStream):
                        break
                step = batch.pop() if batch[-1].step is not None else None
                if batch:
                    await self._commit(batch)
                if step is not None:
                    await self._commit([step])

    async def _commit(self, batch: list[_Write]) -> None:
        try:
            if self._broken is not None:
                raise self._broken
            await self._conn.execute("BEGIN IMMEDIATE")
            if batch[0].step is not None:
                batch[0].result = await batch[0].step(self._conn)
            grouped: dict[str, list[Sequence[Any]]] = {}
            for write in batch:
                for sql, params in write.statements:
                    grouped.setdefault(sql, []).append(params)
            for sql, rows in grouped.items():
                await self._conn.executemany(sql, rows)
            async with self._conn.execute(_COUNT_COMMIT) as cursor:
                counted = await cursor.fetchone()
            await self._conn.commit()
            self.commits += 1
            self._sequence = int(counted[0]) if counted else self._sequence + 1
            await self._watch()
        except (sqlite3.Error, FleetError) as exc:
            await _rollback(self._conn)
            for write in batch:
                write.error = exc
        for write in batch:
            write.done.set()

    async def _watch(self) -> None:
        """After a commit: the path still names this file, whole, or the run stops here.

        The commit just made (an intent, say) fails for its caller, so nothing is submitted
        on the strength of a write that went to a file nobody will read again.
        """
        if self._guard is None:
            return
        problem = self._guard.after_commit(self._sequence)
        if problem is None:
            if self._guard.checkpoint_due():
                await self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
                self._guard.checkpointed()
            return
        if problem.rescue_path is not None:
            saved = await self._rescue(problem.rescue_path)
            problem = problem.rescued(Path(self._path), saved=saved)
        self._broken = StoreError(problem.message)
        raise self._broken

    async def _rescue(self, target: Path) -> bool:
        """Copy the state as committed, from the file fleet still holds open, to `target`."""
        try:
            os.close(os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
            await self._conn.execute("VACUUM INTO ?", (str(target),))
        except (sqlite3.Error, OSError):
            return False
        return True

    async def create_run(
        self,
        run_id: str,
        stages: Sequence[Stage],
        specs: Sequence[ModelSpec],
        settings: str,
        from_stage: Stage | None = None,
    ) -> None:
        """A new run; with `from_stage`, the stages before it adopt what the server has."""
        now = self._iso()
        statements: list[tuple[str, Sequence[Any]]] = [
            (
                _INSERT_RUN,
                (run_id, now, now, ",".join(stages), redactor.scrub(settings), from_stage),
            )
        ]
        for position, spec in enumerate(specs):
            statements.append(
                (
                    _INSERT_MODEL,
                    (
                        run_id,
                        spec.id,
                        position,
                        spec.name,
                        spec.lifecycle.model_dump_json(),
                        spec.project,
                    ),
                )
            )
            statements.extend(
                (
                    _INSERT_STAGE,
                    (run_id, spec.id, stage.value, now),
                )
                for stage in stages
            )
        await self._write(statements)

    async def set_run_status(
        self, run_id: str, status: str, *, finished: bool, reason: str | None = None
    ) -> None:
        now = self._iso()
        reason = redactor.scrub_optional(reason)
        await self._write([(_UPDATE_RUN, (status, now, now if finished else None, reason, run_id))])

    async def save_stage(
        self,
        record: StageRecord,
        previous: StageState,
        detail: str | None = None,
        metrics: Mapping[str, str] | None = None,
    ) -> StageRecord:
        """Write a stage's new state with its transition log entry (and metrics) in one step.

        The record written, and returned, has every secret taken out of its text."""
        now = self._now()
        data, data_json = _scrubbed(record.data)
        record = replace(
            record, updated_at=now, error=redactor.scrub_optional(record.error), data=data
        )
        detail = redactor.scrub_optional(detail)
        at = now.isoformat(timespec="milliseconds")
        statements: list[tuple[str, Sequence[Any]]] = [
            (
                _UPDATE_STAGE,
                (
                    record.state.value,
                    record.attempt,
                    record.job_id,
                    record.trained_model_id,
                    record.deployment_id,
                    record.error,
                    data_json,
                    _iso(record.submitted_at),
                    _iso(record.finished_at),
                    at,
                    record.run_id,
                    record.model_id,
                    record.stage.value,
                ),
            ),
            (
                _INSERT_TRANSITION,
                (
                    record.run_id,
                    record.model_id,
                    record.stage.value,
                    previous.value,
                    record.state.value,
                    at,
                    detail,
                ),
            ),
        ]
        if record.attempt > 0:
            # One row per attempt, kept as it was when the attempt closed.
            outcome = StageState.FAILED if record.state is StageState.RETRYING else record.state
            statements.append(
                (
                    _UPSERT_ATTEMPT,
                    (
                        record.run_id,
                        record.model_id,
                        record.stage.value,
                        record.attempt,
                        record.job_id,
                        record.trained_model_id,
                        outcome.value,
                        record.error,
                        _iso(record.submitted_at),
                        _iso(record.finished_at),
                    ),
                )
            )
        for name, value in (metrics or {}).items():
            statements.append(
                (
                    _UPSERT_METRIC,
                    (record.run_id, record.model_id, record.trained_model_id, name, value),
                )
            )
        await self._write(statements)
        return record

    async def acquire_lease(self, me: Lease, ttl_s: float) -> None:
        """Take the state file for this process, unless another live process holds it."""

        async def take(conn: aiosqlite.Connection) -> None:
            async with conn.execute("SELECT * FROM lease WHERE id = 1") as cursor:
                row = await cursor.fetchone()
            if row is not None:
                held = Lease(row[1], row[2], row[3], _parse(row[4]), _parse(row[5]))
                if held.holder != me.holder and not _stale(held, self._now(), ttl_s):
                    raise LeaseHeld(held, self._path)
            _HELD_HERE.add(me.holder)
            await conn.execute(
                "INSERT OR REPLACE INTO lease (id, holder, host, pid, since, renewed_at)"
                " VALUES (1, ?, ?, ?, ?, ?)",
                (me.holder, me.host, me.pid, _iso(me.since), _iso(me.renewed_at)),
            )

        await self._write([], take)

    async def renew_lease(self, me: Lease) -> bool:
        """Mark this process alive; False when another process has taken the lease over."""

        async def renew(conn: aiosqlite.Connection) -> bool:
            cursor = await conn.execute(
                "UPDATE lease SET renewed_at = ? WHERE id = 1 AND holder = ?",
                (self._iso(), me.holder),
            )
            return cursor.rowcount == 1

        renewed: bool = await self._write([], renew)
        return renewed

    async def release_lease(self, me: Lease) -> None:
        await self._write([("DELETE FROM lease WHERE id = 1 AND holder = ?", (me.holder,))])
        _HELD_HERE.discard(me.holder)

    # -- reads -------------------------------------------------------------------------------

    async def previous_run(self, run_id: str) -> RunRecord | None:
        """The run started just before `run_id` in this file, if any."""
        rows = await self._fetch(
            "SELECT * FROM runs WHERE (created_at, rowid) <"
            " (SELECT created_at, rowid FROM runs WHERE id = ?)"
            " ORDER BY created_at DESC, rowid DESC LIMIT 1",
            (run_id,),
        )
        return _run(rows[0]) if rows else None

    async def latest_unfinished_run(self, finished: frozenset[str]) -> RunRecord | None:
        marks = ",".join("?" * len(finished))
        rows = await self._fetch(
            f"SELECT * FROM runs WHERE status NOT IN ({marks})"  # noqa: S608 - placeholders only
            " ORDER BY created_at DESC, rowid DESC LIMIT 1",
            tuple(sorted(finished)),
        )
        return _run(rows[0]) if rows else None

    async def durations(self, run_id: str, runs: int = 3) -> dict[tuple[str, Stage], float]:
        """Seconds each model's stages ran in the latest `runs` runs other than `run_id`."""
        rows = await self._fetch(_DURATIONS, (run_id, runs))
        return {(row[0], Stage(row[1])): float(row[2]) for row in rows}

    async def attempts(self, run_id: str) -> list[dict[str, Any]]:
        rows = await self._fetch(
            "SELECT * FROM attempts WHERE run_id = ? ORDER BY model_id, stage, attempt", (run_id,)
        )
        return [_without_secrets(row) for row in rows]

    async def run(self, run_id: str) -> RunRecord:
        rows = await self._fetch("SELECT * FROM runs WHERE id = ?", (run_id,))
        if not rows:
            raise RunNotFound(f"run {run_id!r} is not in the state file")
        return _run(rows[0])

    async def find_run(self, run_id: str) -> RunRecord | None:
        rows = await self._fetch("SELECT * FROM runs WHERE id = ?", (run_id,))
        return _run(rows[0]) if rows else None

    async def latest_run(self) -> RunRecord | None:
        rows = await self._fetch("SELECT * FROM runs ORDER BY created_at DESC, rowid DESC LIMIT 1")
        return _run(rows[0]) if rows else None

    async def models(self, run_id: str) -> list[ModelRecord]:
        """Every model of a run in admission order, with its stages and latest metrics."""
        stage_rows = await self._fetch("SELECT * FROM stages WHERE run_id = ?", (run_id,))
        by_model: dict[str, dict[Stage, StageRecord]] = {}
        for row in stage_rows:
            record = _stage(row)
            by_model.setdefault(record.model_id, {})[record.stage] = record
        metric_rows = await self._fetch(
            "SELECT model_id, name, value FROM metrics WHERE run_id = ?", (run_id,)
        )
        metrics: dict[str, dict[str, str]] = {}
        for row in metric_rows:
            metrics.setdefault(row["model_id"], {})[row["name"]] = row["value"]
        model_rows = await self._fetch(
            "SELECT * FROM run_models WHERE run_id = ? ORDER BY position", (run_id,)
        )
        return [
            ModelRecord(
                spec=ModelSpec(
                    id=row["model_id"],
                    name=row["name"],
                    lifecycle=Lifecycle.model_validate_json(row["lifecycle"]),
                    project=row["project"],
                ),
                position=row["position"],
                stages=dict(sorted(by_model.get(row["model_id"], {}).items(), key=_stage_key)),
                metrics=metrics.get(row["model_id"], {}),
            )
            for row in model_rows
        ]

    async def transitions(self, run_id: str, model_id: str) -> list[dict[str, Any]]:
        rows = await self._fetch(
            "SELECT stage, from_state, to_state, at, detail FROM transitions"
            " WHERE run_id = ? AND model_id = ? ORDER BY id",
            (run_id, model_id),
        )
        return [_without_secrets(row) for row in rows]

    async def _fetch(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        try:
            self._conn.row_factory = sqlite3.Row
            async with self._conn.execute(sql, params) as cursor:
                return list(await cursor.fetchall())
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read state: {exc}") from exc

    def _iso(self) -> str:
        return self._now().isoformat(timespec="milliseconds")


@asynccontextmanager
async def _read_only(path: Path) -> AsyncIterator[aiosqlite.Connection]:
    """A connection that reads the state file and neither creates nor changes a file beside it.

    A file no process has open has no -wal beside it and all its data in itself: it is read as
    immutable. One with a -wal and its -shm is read through them (a live fleet may be writing).
    One with a -wal but no -shm (a fleet killed, the -shm removed or never copied) would need
    SQLite to create a -shm: it is copied, with its WAL, to a private temporary directory and
    the copy is read instead.
    """
    try:
        resolved = await anyio.Path(path).resolve()
        wal = await anyio.Path(f"{resolved}-wal").exists()
        shm = await anyio.Path(f"{resolved}-shm").exists()
    except OSError as exc:
        raise StoreError(f"cannot open state file {path}: {exc.strerror or exc}") from exc
    if wal and not shm:
        with private_copy(Path(resolved)) as copy:
            conn = await _connect(str(copy), path)
            try:
                yield conn
            finally:
                await conn.close()
        return
    conn = await _connect(f"{resolved.as_uri()}?mode=ro{'' if wal else '&immutable=1'}", path)
    try:
        yield conn
    finally:
        await conn.close()


async def _connect(database: str, path: Path) -> aiosqlite.Connection:
    try:
        return await aiosqlite.connect(
            database, uri=database.startswith("file:"), isolation_level=None
        )
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open state file {path}: {exc}") from exc


def _create_private(path: Path) -> None:
    """A new state file is readable by its owner only (SQLite gives its -wal and -shm files
    the same mode)."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        return
    except OSError as exc:
        raise StoreError(f"cannot create state file {path}: {exc.strerror}") from exc
    os.close(fd)


async def _rollback(conn: aiosqlite.Connection) -> None:
    try:
        await conn.rollback()
    except sqlite3.Error:
        return


def _without_secrets(row: sqlite3.Row) -> dict[str, Any]:
    """A row read back, its texts scrubbed (a file written before redaction may hold secrets)."""
    return {
        key: redactor.scrub(value) if isinstance(value, str) else value
        for key, value in dict(row).items()
    }


def _scrubbed(data: Mapping[str, Any]) -> tuple[Mapping[str, Any], str]:
    """`data` without secrets, and its JSON: serialised once, and the same object when there
    were none (the common case)."""
    text = json.dumps(dict(data), sort_keys=True)
    if redactor.scrub(text) == text:
        return data, text
    clean = redactor.scrub_value(data)
    return clean, json.dumps(clean, sort_keys=True)


def _stage_key(item: tuple[Stage, StageRecord]) -> int:
    return STAGE_ORDER.index(item[0])


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat(timespec="milliseconds")


def _parse(value: str) -> datetime:
    return datetime.fromisoformat(value)


# Leases taken by this process (a process may run several state files, or tests several
# runs), so that a lease recorded under our pid by an earlier process is told apart.
_HELD_HERE: set[str] = set()


def _stale(lease: Lease, now: datetime, ttl_s: float) -> bool:
    """A holder that stopped renewing, or a process on this host that no longer exists."""
    if (now - lease.renewed_at).total_seconds() > ttl_s:
        return True
    if lease.host == socket.gethostname():
        if lease.pid == os.getpid() and lease.holder not in _HELD_HERE:
            # Our own pid, but not a lease this process took: an earlier process with the
            # same pid, as when a container restarts in place and fleet is pid 1 again.
            return True
        try:
            os.kill(lease.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
    return False


def _dt(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def _run(row: sqlite3.Row) -> RunRecord:
    return RunRecord(
        id=row["id"],
        created_at=datetime.fromisoformat(row["created_at"]),
        updated_at=datetime.fromisoformat(row["updated_at"]),
        finished_at=_dt(row["finished_at"]),
        status=row["status"],
        stages=tuple(Stage(s) for s in row["stages"].split(",") if s),
        reason=redactor.scrub_optional(row["reason"]),
        from_stage=Stage(row["from_stage"]) if row["from_stage"] else None,
    )


def _stage(row: sqlite3.Row) -> StageRecord:
    return StageRecord(
        run_id=row["run_id"],
        model_id=row["model_id"],
        stage=Stage(row["stage"]),
        state=StageState(row["state"]),
        attempt=row["attempt"],
        job_id=row["job_id"],
        trained_model_id=row["trained_model_id"],
        deployment_id=row["deployment_id"],
        error=redactor.scrub_optional(row["error"]),  # a file written before redaction
        data=json.loads(row["data"]),
        submitted_at=_dt(row["submitted_at"]),
        finished_at=_dt(row["finished_at"]),
        updated_at=_dt(row["updated_at"]),
    )
