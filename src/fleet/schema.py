"""The state file's schema: numbered migrations (`PRAGMA user_version`), and which files this
fleet opens, for driving or for reading.

- A file written by a newer fleet (a schema above `SCHEMA`, or model settings in an encoding
  above `encoding.ENCODING`) is refused before anything in it or beside it changes
  (`NewerStateFile`): this fleet would misread it, and its writes would corrupt it.
- A file driven by `fleet run` is migrated in place, each migration in its own transaction.
- A file only read (`fleet status`, `report`, `plan`) is never changed: an older one is read
  through a copy in memory, migrated there, so readers see one schema only.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiosqlite
import anyio

from fleet import encoding
from fleet.errors import NewerStateFile, StoreError
from fleet.guard import Seal, private_copy

MIGRATIONS: tuple[str, ...] = (
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
    # The encoding of each model's settings (encoding.py); those written before it are 1.
    # Also what makes fleets from before it refuse files with encodings they cannot read.
    """
    ALTER TABLE run_models ADD COLUMN encoding INTEGER NOT NULL DEFAULT 1;
    """,
)
SCHEMA = len(MIGRATIONS)  # the schema this fleet writes, and the newest it opens
_SEALED_SINCE = 5  # the schema version that added the seal
_ENCODED_SINCE = 6  # the schema version that added run_models.encoding


async def prepare(conn: aiosqlite.Connection, path: Path, seal: Seal) -> None:
    """Make the file one this fleet can drive: checked first (a newer one is left as it is),
    then in WAL mode and migrated to `SCHEMA`."""
    try:
        await conn.execute("PRAGMA busy_timeout=5000")
        version = await _version(conn)
        await _check_not_newer(conn, path, version)
        await conn.execute("PRAGMA journal_mode=WAL")
        await conn.execute("PRAGMA synchronous=NORMAL")
        await conn.execute("PRAGMA foreign_keys=ON")
        # Checkpoints are taken by the writer, each after the file was found intact: an
        # automatic one could write pages back into a file truncated under fleet, hiding it.
        await conn.execute("PRAGMA wal_autocheckpoint=0")
        seal.check_initialised(version >= _SEALED_SINCE)
        await _migrate(conn, version)
        if version < SCHEMA:
            # The schema in the file itself, not only in its WAL.
            await conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"cannot use state file {path}: {exc}") from exc


async def open_driven(path: Path) -> aiosqlite.Connection:
    """A connection that may write the file, creating it (readable by its owner only)."""
    try:
        _create_private(path)
        return await aiosqlite.connect(str(path), isolation_level=None)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open state file {path}: {exc}") from exc


@asynccontextmanager
async def read_only(path: Path) -> AsyncIterator[aiosqlite.Connection]:
    """A connection that reads the file at `SCHEMA`, and changes nothing in it or beside it.

    A file of an older schema is copied into memory (SQLite's backup, a consistent snapshot
    even while a fleet writes it) and the copy migrated: readers need not know old schemas.
    """
    async with _reading(path) as conn:
        version = await _readable(conn, path)
        if version == SCHEMA:
            yield conn
            return
        copy = await _connect(":memory:", path)
        try:
            try:
                await conn.backup(copy)
                await _migrate(copy, version)
            except sqlite3.DatabaseError as exc:
                raise StoreError(f"cannot use state file {path}: {exc}") from exc
            yield copy
        finally:
            with anyio.CancelScope(shield=True):
                await copy.close()


async def _readable(conn: aiosqlite.Connection, path: Path) -> int:
    """The file's schema version, if this fleet can read the file."""
    try:
        version = await _version(conn)
        if version == 0:
            raise StoreError(
                f"state file {path} holds no fleet state (it is empty, or no `fleet run` has "
                "written to it); pass the state file of a run"
            )
        await _check_not_newer(conn, path, version)
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"cannot use state file {path}: {exc}") from exc
    return version


async def _version(conn: aiosqlite.Connection) -> int:
    async with conn.execute("PRAGMA user_version") as cursor:
        row = await cursor.fetchone()
    return int(row[0]) if row else 0


async def _check_not_newer(conn: aiosqlite.Connection, path: Path, version: int) -> None:
    if version > SCHEMA:
        raise NewerStateFile(str(path), "schema", version, SCHEMA)
    if version < _ENCODED_SINCE:
        return  # every model's settings in it are in encoding 1
    async with conn.execute("SELECT max(encoding) FROM run_models") as cursor:
        row = await cursor.fetchone()
    newest = int(row[0]) if row and row[0] is not None else 0
    if newest > encoding.ENCODING:
        raise NewerStateFile(str(path), "settings encoding", newest, encoding.ENCODING)


async def _migrate(conn: aiosqlite.Connection, version: int) -> None:
    for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
        await conn.executescript(f"BEGIN; {script}; PRAGMA user_version = {number}; COMMIT;")


@asynccontextmanager
async def _reading(path: Path) -> AsyncIterator[aiosqlite.Connection]:
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
                with anyio.CancelScope(shield=True):
                    await conn.close()
        return
    conn = await _connect(f"{resolved.as_uri()}?mode=ro{'' if wal else '&immutable=1'}", path)
    try:
        yield conn
    finally:
        with anyio.CancelScope(shield=True):
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
