"""The state file watched: deleted, replaced, truncated or rolled back files are refused.

The state file is what stops fleet from submitting a job twice; a file that silently loses
commits makes the next start redo them. Three things are kept for that:

- **the seal**: the file counts its own commits (the `seal` table, one more in every
  transaction) and carries a random id; after each commit the count and id are also written to
  a small sidecar beside it, `<db>-commits` (mode 0600). The sidecar is written like the WAL
  (no fsync: both survive a killed process, and a power loss may take the tail of both).
- **at start** (`Seal.check_present`, `Seal.check_against`): if the sidecar says the file had
  commits but the file is missing, empty or not SQLite, or it is the same file (same id) with
  fewer commits than the sidecar saw (its WAL removed after a kill, an older copy restored),
  fleet refuses it, naming the file and what to do. A different state file put in its place
  (another id) is taken as it is, and the sidecar starts following it.
- **while a run writes** (`Guard.after_commit`): after each commit the path must still name the
  inode fleet opened, no shorter than it was. A file deleted under a running fleet stops the run
  with `StoreError`, and its state as committed is copied out of the open file first
  (`<db>.rescued-<commits>`) so that the night can resume from it; replaced or truncated
  files stop it too. SQLite's automatic checkpoints are off and the store checkpoints only
  right after a good look, so a checkpoint cannot write pages back into a truncated file and
  hide the truncation.

A clean shutdown checkpoints the WAL into the file with every commit in it, so the file is never
behind its sidecar; readers (`fleet status`, `report`, `plan`) neither check nor write it.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from fleet.errors import StoreError

SEAL_SUFFIX = "-commits"
_SQLITE_MAGIC = b"SQLite format 3\x00"
# `fleet-commits 1 <32 hex> <20 digits>\n`: fixed width, so each update overwrites the last.
_RECORD = re.compile(rb"fleet-commits 1 ([0-9a-f]{32}) ([0-9]{20})\n")
# Commits between two checkpoints (SQLite's automatic one is every ~1000 pages).
_CHECKPOINT_EVERY = 200
_PRIVATE = 0o600


class Seal:
    """The sidecar `<db>-commits`: how many commits the state file had, and which file it is."""

    def __init__(self, db: Path) -> None:
        self.db = db
        self.path = Path(f"{db}{SEAL_SUFFIX}")
        self._fd: int | None = None

    def read(self) -> tuple[str, int] | None:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StoreError(f"cannot read {self.path}: {exc.strerror or exc}") from exc
        found = _RECORD.fullmatch(data)
        if found is None:
            raise StoreError(
                f"{self.path} is not a fleet commit record; it is fleet's record of how far "
                f"{self.db} got: if {self.db} is intact, remove {self.path} and run again"
            )
        return found[1].decode(), int(found[2])

    def check_present(self) -> None:
        """Before opening: a file the sidecar vouches for is there and is an SQLite file."""
        recorded = self.read()
        if recorded is None or recorded[1] == 0:
            return
        commits = recorded[1]
        try:
            with self.db.open("rb") as handle:
                head = handle.read(len(_SQLITE_MAGIC))
        except FileNotFoundError:
            what = "is missing"
        except IsADirectoryError:
            return  # not a state file at all: opening it says so
        except OSError as exc:
            raise StoreError(f"cannot read state file {self.db}: {exc.strerror}") from exc
        else:
            if head == _SQLITE_MAGIC:
                return
            what = "is empty" if not head else "is not a fleet state file"
        raise StoreError(
            f"state file {self.db} {what}, but {self.path} records {commits} commits to it: "
            "it was deleted, truncated or replaced, and starting over would submit the night's "
            f"jobs again; restore {self.db} (or a {self.db}.rescued-* copy fleet saved), or, "
            f"to start afresh on purpose, remove {self.path}"
        )

    def check_initialised(self, sealed: bool) -> None:
        """Before migrating: a file without fleet's seal where the sidecar saw commits is one
        whose state is lost (a new file's first commits live in its WAL)."""
        recorded = self.read()
        if sealed or recorded is None or recorded[1] == 0:
            return
        raise StoreError(
            f"state file {self.db} holds no fleet state, but {self.path} records "
            f"{recorded[1]} commits to it: its WAL ({self.db.name}-wal) was lost, or the file "
            "replaced, and starting over would submit the night's jobs again; put the -wal "
            f"back beside it, or, to start afresh on purpose, remove {self.path}"
        )

    def check_against(self, file_id: str, commits: int) -> None:
        """After opening: the file is not behind what the sidecar saw it commit."""
        recorded = self.read()
        if recorded is not None and recorded[0] == file_id and commits < recorded[1]:
            raise StoreError(
                f"state file {self.db} holds {commits} commits but {self.path} saw "
                f"{recorded[1]}: its latest commits are lost (its {self.db.name}-wal removed "
                "after fleet was killed, or an older copy restored), and resuming would submit "
                f"their jobs again; put the -wal back beside it, or, to accept {self.db} as it "
                f"is, remove {self.path}"
            )
        if recorded is None or recorded != (file_id, commits):
            self.write(file_id, commits)

    def write(self, file_id: str, commits: int) -> None:
        record = f"fleet-commits 1 {file_id} {commits:020d}\n".encode()
        try:
            if self._fd is None:
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, _PRIVATE)
            os.pwrite(self._fd, record, 0)
        except OSError as exc:
            raise StoreError(f"cannot write {self.path}: {exc.strerror or exc}") from exc

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


@dataclass(frozen=True, slots=True)
class Problem:
    """What happened to the state file under a running fleet."""

    message: str
    # Where the state as committed can be copied from the open file (deleted files only).
    rescue_path: Path | None = None

    def rescued(self, db: Path, *, saved: bool) -> Problem:
        if saved:
            then = (
                f"its state as fleet last committed it is in {self.rescue_path}: move that to "
                f"{db} and run again to resume"
            )
        else:
            then = "restore it from a backup and run again"
        return Problem(f"{self.message}; {then}")


class Guard:
    """Looks at the state file's path after each commit, and keeps the sidecar up to date."""

    def __init__(self, db: Path, seal: Seal, file_id: str) -> None:
        self._db = db
        self._seal = seal
        self._file_id = file_id
        try:
            st = db.stat()
        except OSError as exc:
            raise StoreError(f"cannot use state file {db}: {exc.strerror}") from exc
        self._identity = (st.st_dev, st.st_ino)
        self._size = st.st_size
        self._since_checkpoint = 0

    def after_commit(self, commits: int) -> Problem | None:
        """None when the path still names the file, whole; the sidecar then records `commits`."""
        head = f"state file {self._db} was"
        stopped = "fleet stopped before submitting anything more"
        try:
            st = self._db.stat()
        except FileNotFoundError:
            return Problem(
                f"{head} deleted while fleet ran; {stopped}",
                rescue_path=Path(f"{self._db}.rescued-{commits}"),
            )
        except OSError:
            st = None  # the directory cannot be read now: the next commit looks again
        if st is not None:
            if (st.st_dev, st.st_ino) != self._identity:
                return Problem(
                    f"{head} replaced by another file while fleet ran; {stopped}; put the "
                    f"original back, or remove {self._seal.path} to start afresh on purpose, "
                    "then run again"
                )
            if st.st_size < self._size:
                return Problem(
                    f"{head} truncated from {self._size} to {st.st_size} bytes while fleet ran; "
                    f"{stopped}; restore it from a backup, then run again"
                )
        self._seal.write(self._file_id, commits)
        self._since_checkpoint += 1
        return None

    def checkpoint_due(self) -> bool:
        return self._since_checkpoint >= _CHECKPOINT_EVERY

    def checkpointed(self) -> None:
        """A checkpoint wrote the WAL into the file: its new size is the floor."""
        self._since_checkpoint = 0
        try:
            self._size = max(self._size, self._db.stat().st_size)
        except OSError:
            return

    def close(self) -> None:
        self._seal.close()


def repair_modes(db: Path) -> None:
    """Give this user's -wal and -shm back the write permission a read-only episode took.

    SQLite creates them with the state file's mode; a file made read-only for a while leaves
    them 0400, and every later open fails. Ours beside a state file we may write get the state
    file's mode back (0600 as fleet creates it); one we cannot write and do not own is named.
    """
    try:
        db_stat = db.stat()
    except OSError:
        return
    if not db_stat.st_mode & stat.S_IWUSR or db_stat.st_uid != _uid():
        return  # the state file itself is read-only or not ours: opening it says so
    for suffix in ("-wal", "-shm"):
        side = Path(f"{db}{suffix}")
        try:
            side_stat = side.stat()
        except OSError:
            continue
        mode = stat.S_IMODE(side_stat.st_mode)
        if mode & (stat.S_IRUSR | stat.S_IWUSR) == stat.S_IRUSR | stat.S_IWUSR:
            continue
        if side_stat.st_uid == _uid():
            try:
                side.chmod(stat.S_IMODE(db_stat.st_mode) | stat.S_IRUSR | stat.S_IWUSR)
            except OSError as exc:
                raise StoreError(f"cannot make {side} writable: {exc.strerror}") from exc
            continue
        if not os.access(side, os.R_OK | os.W_OK):
            raise StoreError(
                f"cannot write {side} (mode {mode:04o}, owned by uid {side_stat.st_uid}): "
                f"SQLite keeps {db}'s latest commits there; give it to this user with read "
                f"and write permission (chown, chmod 600), then run again"
            )


def _uid() -> int:
    return os.getuid()


@contextmanager
def private_copy(db: Path) -> Iterator[Path]:
    """`db` and its -wal copied to a directory only this user can read, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="fleet-read-") as directory:
        copy = Path(directory) / db.name
        try:
            shutil.copyfile(db, copy)
            shutil.copyfile(f"{db}-wal", f"{copy}-wal")
        except OSError as exc:
            raise StoreError(f"cannot read state file {db}: {exc.strerror or exc}") from exc
        yield copy
