"""Run state in SQLite: owned connections, group commits, a watched file.

Every lifecycle step is one logical write (the stage row and its transition log entry, plus
any metrics) that becomes durable before the step's caller goes on. Writes from many models
that arrive together share one transaction. Every text written goes through
`fleet.secrets.redactor` first: no secret reaches the file or its WAL.

Transactions run on the event loop's own thread, on a connection kept for them, in the task
of a writer that found none under way (`_write`): in WAL mode with `synchronous=NORMAL` a
commit is an append to the WAL, ~30-45 µs of CPU, where a trip to a worker thread costs
~120 µs in hand-offs, and aiosqlite's trip per statement made a commit ~450 µs (~6 ms per
model on a 1,000-model night). What can take long runs in a worker thread: checkpoints,
which sync the file to disk, and a rescue's copy. Reads go through aiosqlite's connection.
Nothing else writes the file while fleet holds its lease, so a transaction does not wait
for a lock.

The file is watched while it is driven (`guard.py`): each commit counts itself in the file and
in a sidecar `<db>-commits`, and is followed by a look at the path; a state file deleted,
replaced or truncated under a running fleet stops the run before anything more is submitted,
and a file found behind its sidecar at start (empty, or its WAL lost after a kill) is refused.

The tables and their migrations are `schema.py`'s, which also refuses files from newer fleets
and reads older ones; the rows are `rows.py`'s; how models' settings survive upgrades is
`encoding.py`'s.
"""

from __future__ import annotations

import os
import socket
import sqlite3
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Self

import aiosqlite
import anyio
import anyio.lowlevel
import anyio.to_thread

from fleet import encoding, rows, schema
from fleet.errors import FleetError, LeaseHeld, RunNotFound, StoreError
from fleet.guard import Guard, Seal, repair_modes
from fleet.models import ModelSpec
from fleet.records import Lease, ModelRecord, RunRecord, StageRecord, utc_now
from fleet.rows import Statement
from fleet.secrets import redactor
from fleet.stages import Stage, StageState

_COUNT_COMMIT = "UPDATE seal SET commits = commits + 1 WHERE id = 1 RETURNING commits"


@dataclass(slots=True)
class _Write:
    statements: Sequence[Statement]
    # A read-decide-write step that must run alone in its own transaction (the lease).
    step: Callable[[sqlite3.Connection], Any] | None = None
    result: Any = None
    done: anyio.Event = field(default_factory=anyio.Event)
    error: BaseException | None = None


class Store:
    """The state file. Open with `async with Store.open(path) as store:`."""

    def __init__(
        self,
        conn: aiosqlite.Connection,
        now: Callable[[], datetime],
        path: str = "",
        *,
        readonly: bool = False,
    ) -> None:
        self._conn = conn
        self._path = path
        self._now = now
        # Writes waiting for a commit, and whether a caller is committing them.
        self._pending: deque[_Write] = deque()
        self._committing = False
        self.commits = 0  # by this process
        self._sequence = 0  # the file's own count (its seal), when driven
        # Watches the file while it is driven (None when read-only).
        self._guard: Guard | None = None
        # Commits what is written, while the file is driven (None when read-only).
        self._writer_connection: sqlite3.Connection | None = None
        # Set when the file was deleted, replaced or truncated: every later write fails with it.
        self._broken: StoreError | None = None
        self._settings = encoding.SettingsReader(path, driven=not readonly)

    @classmethod
    @asynccontextmanager
    async def open(
        cls, path: Path | str, *, now: Callable[[], datetime] = utc_now, readonly: bool = False
    ) -> AsyncIterator[Self]:
        """The state file; `readonly` (for `fleet plan`, `status`, `report`) neither creates
        nor changes it, nor leaves files beside it (an older one is migrated in memory)."""
        if readonly:
            async with schema.read_only(Path(path)) as conn:
                yield cls(conn, now, str(path), readonly=True)
            return
        seal = Seal(Path(path))
        seal.check_present()
        repair_modes(Path(path))
        conn = await schema.open_driven(Path(path))
        store = cls(conn, now, str(path))
        try:
            await schema.prepare(conn, Path(path), seal)
            store._guard = await store._sealed(seal)
            store._writer_connection = await anyio.to_thread.run_sync(_writer_connection, path)
            yield store
        finally:
            if store._guard is not None:
                store._guard.close()
            if store._writer_connection is not None:
                store._writer_connection.close()
                store._writer_connection = None
            with anyio.CancelScope(shield=True):  # closed even by a cancelled caller
                await conn.close()

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

    # -- writes ------------------------------------------------------------------------------

    async def _write(
        self,
        statements: Sequence[Statement],
        step: Callable[[sqlite3.Connection], Any] | None = None,
    ) -> Any:
        """Commit a write; it is durable when this returns, even if the caller is cancelled.

        Group commit with no task of its own: a writer that finds no commit under way
        lets the tasks already due run first (their writes join its transaction), then
        commits what is pending itself; writes that arrive meanwhile wait for it and share
        the next transaction."""
        write = _Write(statements, step)
        self._pending.append(write)
        if self._committing:
            # The write must reach the disk even if this step is being cancelled.
            with anyio.CancelScope(shield=True):
                await write.done.wait()
        else:
            with anyio.CancelScope(shield=True):
                await self._commit_pending()
        if isinstance(write.error, FleetError):
            raise write.error
        if write.error is not None:
            raise StoreError(f"cannot write state: {write.error}") from write.error
        return write.result

    async def _commit_pending(self) -> None:
        """Commit every pending write, in batches, a step alone in its own."""
        self._committing = True
        try:
            await anyio.lowlevel.checkpoint()
            while self._pending:
                batch = [self._pending.popleft()]
                while batch[-1].step is None and self._pending and self._pending[0].step is None:
                    batch.append(self._pending.popleft())
                await self._commit(batch)
        except BaseException as exc:  # a step's bug: the writers still waiting hear of it too
            while self._pending:
                write = self._pending.popleft()
                write.error = exc
                write.done.set()
            raise
        finally:
            self._committing = False

    async def _commit(self, batch: list[_Write]) -> None:
        """One transaction for the batch, then a look at the file; then each writer learns
        how it went. Nothing of a failed transaction is kept."""
        conn: sqlite3.Connection | None = None
        try:
            conn, guard = self._writable()
            self._transaction(conn, batch)
            await self._watch(conn, guard)
        except (sqlite3.Error, FleetError) as exc:
            for write in batch:
                write.error = exc
        except BaseException as exc:  # a step's bug: its writers hear of it too
            for write in batch:
                write.error = exc
            raise
        finally:
            if conn is not None:
                _rollback(conn)
            for write in batch:
                write.done.set()

    def _writable(self) -> tuple[sqlite3.Connection, Guard]:
        if self._writer_connection is None or self._guard is None:
            raise StoreError(f"state file {self._path} is not open for writing")
        if self._broken is not None:
            raise self._broken
        return self._writer_connection, self._guard

    def _transaction(self, conn: sqlite3.Connection, batch: list[_Write]) -> None:
        conn.execute("BEGIN IMMEDIATE")
        if batch[0].step is not None:
            batch[0].result = batch[0].step(conn)
        grouped: dict[str, list[Sequence[Any]]] = {}
        for write in batch:
            for sql, params in write.statements:
                grouped.setdefault(sql, []).append(params)
        for sql, params_list in grouped.items():
            conn.executemany(sql, params_list)
        counted = conn.execute(_COUNT_COMMIT).fetchone()
        conn.execute("COMMIT")
        self.commits += 1
        self._sequence = int(counted[0]) if counted else self._sequence + 1

    async def _watch(self, conn: sqlite3.Connection, guard: Guard) -> None:
        """After a commit: the path still names this file, whole, or the run stops here.

        The commit just made (an intent, say) fails for its caller, so nothing is submitted
        on the strength of a write that went to a file nobody will read again.
        """
        problem = guard.after_commit(self._sequence)
        if problem is None:
            if guard.checkpoint_due():
                await anyio.to_thread.run_sync(_checkpoint, conn)
                guard.checkpointed()
            return
        if problem.rescue_path is not None:
            saved = await anyio.to_thread.run_sync(_rescue, conn, problem.rescue_path)
            problem = problem.rescued(Path(self._path), saved=saved)
        self._broken = StoreError(problem.message)
        raise self._broken

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
        summary = redactor.scrub(settings)
        statements: list[Statement] = [
            (rows.INSERT_RUN, (run_id, now, now, ",".join(stages), summary, from_stage)),
            *rows.model_rows(run_id, specs, stages, now),
        ]
        await self._write(statements)

    async def set_run_status(
        self, run_id: str, status: str, *, finished: bool, reason: str | None = None
    ) -> None:
        now = self._iso()
        reason = redactor.scrub_optional(reason)
        await self._write(
            [(rows.UPDATE_RUN, (status, now, now if finished else None, reason, run_id))]
        )

    async def save_stage(
        self,
        record: StageRecord,
        previous: StageState,
        detail: str | None = None,
        metrics: Mapping[str, str] | None = None,
    ) -> StageRecord:
        """Write a stage's new state with its transition log entry (and metrics) in one step.

        The record written, and returned, has every secret taken out of its text."""
        data, data_json = rows.scrubbed(record.data)
        record = replace(
            record, updated_at=self._now(), error=redactor.scrub_optional(record.error), data=data
        )
        detail = redactor.scrub_optional(detail)
        await self._write(rows.stage_rows(record, previous, detail, metrics or {}, data_json))
        return record

    async def acquire_lease(self, me: Lease, ttl_s: float) -> None:
        """Take the state file for this process, unless another live process holds it."""

        def take(conn: sqlite3.Connection) -> None:
            row = conn.execute("SELECT * FROM lease WHERE id = 1").fetchone()
            if row is not None:
                held = Lease(
                    row[1], row[2], row[3], rows.parse_time(row[4]), rows.parse_time(row[5])
                )
                if held.holder != me.holder and not _stale(held, self._now(), ttl_s):
                    raise LeaseHeld(held, self._path)
            _HELD_HERE.add(me.holder)
            conn.execute(
                "INSERT OR REPLACE INTO lease (id, holder, host, pid, since, renewed_at)"
                " VALUES (1, ?, ?, ?, ?, ?)",
                (me.holder, me.host, me.pid, rows.iso(me.since), rows.iso(me.renewed_at)),
            )

        await self._write([], take)

    async def renew_lease(self, me: Lease) -> bool:
        """Mark this process alive; False when another process has taken the lease over."""

        def renew(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
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
        found = await self._fetch(
            "SELECT * FROM runs WHERE (created_at, rowid) <"
            " (SELECT created_at, rowid FROM runs WHERE id = ?)"
            " ORDER BY created_at DESC, rowid DESC LIMIT 1",
            (run_id,),
        )
        return rows.run_record(found[0]) if found else None

    async def latest_unfinished_run(self, finished: frozenset[str]) -> RunRecord | None:
        marks = ",".join("?" * len(finished))
        found = await self._fetch(
            f"SELECT * FROM runs WHERE status NOT IN ({marks})"  # noqa: S608 - placeholders only
            " ORDER BY created_at DESC, rowid DESC LIMIT 1",
            tuple(sorted(finished)),
        )
        return rows.run_record(found[0]) if found else None

    async def durations(self, run_id: str, runs: int = 3) -> dict[tuple[str, Stage], float]:
        """Seconds each model's stages ran in the latest `runs` runs other than `run_id`."""
        found = await self._fetch(rows.DURATIONS, (run_id, runs))
        return {(row[0], Stage(row[1])): float(row[2]) for row in found}

    async def attempts(self, run_id: str) -> list[dict[str, Any]]:
        found = await self._fetch(
            "SELECT * FROM attempts WHERE run_id = ? ORDER BY model_id, stage, attempt", (run_id,)
        )
        return [rows.without_secrets(row) for row in found]

    async def run(self, run_id: str) -> RunRecord:
        found = await self._fetch("SELECT * FROM runs WHERE id = ?", (run_id,))
        if not found:
            raise RunNotFound(f"run {run_id!r} is not in the state file")
        return rows.run_record(found[0])

    async def find_run(self, run_id: str) -> RunRecord | None:
        found = await self._fetch("SELECT * FROM runs WHERE id = ?", (run_id,))
        return rows.run_record(found[0]) if found else None

    async def latest_run(self) -> RunRecord | None:
        found = await self._fetch("SELECT * FROM runs ORDER BY created_at DESC, rowid DESC LIMIT 1")
        return rows.run_record(found[0]) if found else None

    @property
    def warnings(self) -> tuple[str, ...]:
        """What reading models' settings left out or changed, one line each, for readers."""
        return self._settings.warnings

    async def models(self, run_id: str) -> list[ModelRecord]:
        """Every model of a run in admission order, with its stages and latest metrics."""
        by_model: dict[str, dict[Stage, StageRecord]] = {}
        for row in await self._fetch("SELECT * FROM stages WHERE run_id = ?", (run_id,)):
            record = rows.stage_record(row)
            by_model.setdefault(record.model_id, {})[record.stage] = record
        metrics: dict[str, dict[str, str]] = {}
        for row in await self._fetch(
            "SELECT model_id, name, value FROM metrics WHERE run_id = ?", (run_id,)
        ):
            metrics.setdefault(row["model_id"], {})[row["name"]] = row["value"]
        model_rows = await self._fetch(
            "SELECT * FROM run_models WHERE run_id = ? ORDER BY position", (run_id,)
        )
        return [
            ModelRecord(
                spec=ModelSpec(
                    id=row["model_id"],
                    name=row["name"],
                    lifecycle=self._settings.read(
                        row["lifecycle"],
                        row["encoding"],
                        f"model {row['name']} ({row['model_id']})",
                    ),
                    project=row["project"],
                ),
                position=row["position"],
                stages=rows.in_stage_order(by_model.get(row["model_id"], {})),
                metrics=metrics.get(row["model_id"], {}),
            )
            for row in model_rows
        ]

    async def transitions(self, run_id: str, model_id: str) -> list[dict[str, Any]]:
        found = await self._fetch(
            "SELECT stage, from_state, to_state, at, detail FROM transitions"
            " WHERE run_id = ? AND model_id = ? ORDER BY id",
            (run_id, model_id),
        )
        return [rows.without_secrets(row) for row in found]

    async def _fetch(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        try:
            self._conn.row_factory = sqlite3.Row
            async with self._conn.execute(sql, params) as cursor:
                return list(await cursor.fetchall())
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read state: {exc}") from exc

    def _iso(self) -> str:
        return self._now().isoformat(timespec="milliseconds")


def _writer_connection(path: Path | str) -> sqlite3.Connection:
    """The connection that commits: set as `schema.prepare` sets the file's first one (WAL
    is the file's own mode). The loop's thread commits on it, and a worker thread takes a
    checkpoint or a rescue on it while the writer waits: one thread at a time."""
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    try:
        conn.execute("PRAGMA busy_timeout=5000")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA wal_autocheckpoint=0")  # checkpoints are the guard's (`_watch`)
    except sqlite3.Error as exc:
        conn.close()
        raise StoreError(f"cannot use state file {path}: {exc}") from exc
    return conn


def _checkpoint(conn: sqlite3.Connection) -> None:
    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()


def _rescue(conn: sqlite3.Connection, target: Path) -> bool:
    """Copy the state as committed, from the file fleet still holds open, to `target`."""
    try:
        os.close(os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        conn.execute("VACUUM INTO ?", (str(target),))
    except (sqlite3.Error, OSError):
        return False
    return True


def _rollback(conn: sqlite3.Connection) -> None:
    if not conn.in_transaction:
        return
    try:
        conn.execute("ROLLBACK")
    except sqlite3.Error:
        return


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
