"""Run state in SQLite: one owned aiosqlite connection, batched commits, a watched file.

Every lifecycle step is one logical write (the stage row and its transition log entry, plus
any metrics) that becomes durable before the step's caller goes on. Writes from many models
that arrive together share one transaction: a commit costs ~125 µs, a row ~2 µs. Every text
written goes through `fleet.secrets.redactor` first: no secret reaches the file or its WAL.

The file is watched while it is driven (`guard.py`): each commit counts itself in the file and
in a sidecar `<db>-commits`, and is followed by a look at the path; a state file deleted,
replaced or truncated under a running fleet stops the run before anything more is submitted,
and a file found behind its sidecar at start (empty, or its WAL lost after a kill) is refused.

The tables and their migrations are `schema.py`'s, which also refuses files from newer fleets
and reads older ones; the rows are `rows.py`'s; how models' settings survive upgrades is
`encoding.py`'s.
"""

from __future__ import annotations

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

from fleet import encoding, rows, schema
from fleet.errors import FleetError, LeaseHeld, RunNotFound, StoreError, ungrouped
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
    step: Callable[[aiosqlite.Connection], Awaitable[Any]] | None = None
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
        send, receive = anyio.create_memory_object_stream[_Write](max_buffer_size=math.inf)
        self._send: MemoryObjectSendStream[_Write] = send
        self._receive: MemoryObjectReceiveStream[_Write] = receive
        self.commits = 0  # by this process
        self._sequence = 0  # the file's own count (its seal), when driven
        # Watches the file while it is driven (None when read-only).
        self._guard: Guard | None = None
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
                store = cls(conn, now, str(path), readonly=True)
                try:
                    async with store._serving():
                        yield store
                finally:
                    store._closed()
            return
        seal = Seal(Path(path))
        seal.check_present()
        repair_modes(Path(path))
        conn = await schema.open_driven(Path(path))
        store = cls(conn, now, str(path))
        try:
            await schema.prepare(conn, Path(path), seal)
            store._guard = await store._sealed(seal)
            async with store._serving():
                yield store
        finally:
            store._closed()
            with anyio.CancelScope(shield=True):  # closed even by a cancelled caller
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

    # -- writes ------------------------------------------------------------------------------

    async def _write(
        self,
        statements: Sequence[Statement],
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
        """Commit what is sent, in batches, until the store closes.

        Shielded: when everything around the store is cancelled (a caller's deadline, the
        end of a grace period), the writes that must survive it (the run's interrupted
        status, the lease released) are sent shielded and wait for their commit; the writer
        must still be there to make it. It ends when the store's block ends and the stream
        closes, after the writes already sent."""
        with anyio.CancelScope(shield=True):
            await self._write_until_closed()

    async def _write_until_closed(self) -> None:
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
            for sql, params_list in grouped.items():
                await self._conn.executemany(sql, params_list)
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

        async def take(conn: aiosqlite.Connection) -> None:
            async with conn.execute("SELECT * FROM lease WHERE id = 1") as cursor:
                row = await cursor.fetchone()
            if row is not None:
                held = Lease(
                    row[1], row[2], row[3], rows.parse_time(row[4]), rows.parse_time(row[5])
                )
                if held.holder != me.holder and not _stale(held, self._now(), ttl_s):
                    raise LeaseHeld(held, self._path)
            _HELD_HERE.add(me.holder)
            await conn.execute(
                "INSERT OR REPLACE INTO lease (id, holder, host, pid, since, renewed_at)"
                " VALUES (1, ?, ?, ?, ?, ?)",
                (me.holder, me.host, me.pid, rows.iso(me.since), rows.iso(me.renewed_at)),
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


async def _rollback(conn: aiosqlite.Connection) -> None:
    try:
        await conn.rollback()
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
