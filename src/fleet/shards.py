"""Shards: the models split across several processes, each with its own state file.

A model's shard is a hash of its id and nothing else:

    shard_of(model_id, n) = int.from_bytes(sha256(model_id).digest()[:8], "big") % n

so a model stays in its shard from night to night, on any machine and Python version, and
adding or removing models moves none of the others (Python's `hash()` is salted per process:
it would not do). `--shard K/N` (K from 0) keeps the models of shard K, after discovery and
before the other selection filters; its state file is the configured one with
`.shard-K-of-N` before the suffix (`fleet.db` → `fleet.shard-3-of-8.db`), so the N processes
never share a file. `statefiles.py` reads them back as one run.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

_K_OF_N = re.compile(r"\s*(\d+)\s*/\s*(\d+)\s*")


def shard_of(model_id: str, count: int) -> int:
    """The shard (0 to count - 1) that a model id belongs to, for `count` shards."""
    digest = hashlib.sha256(model_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % count


@dataclass(frozen=True, slots=True)
class Shard:
    """Shard `index` of `count`: the models whose `shard_of` is `index`."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ValueError(f"{self}: N, the number of shards, must be at least 1")
        if not 0 <= self.index < self.count:
            raise ValueError(
                f"{self}: K counts from 0, so with N = {self.count} it is 0 to {self.count - 1}"
            )

    @classmethod
    def parse(cls, text: str) -> Shard:
        """`"3/8"` → shard 3 of 8; anything else is a ValueError saying what is expected."""
        match = _K_OF_N.fullmatch(text)
        if match is None:
            raise ValueError(f"{text!r} is not K/N: shard K (counted from 0) of N, e.g. 3/8")
        return cls(int(match[1]), int(match[2]))

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def holds(self, model_id: str) -> bool:
        return shard_of(model_id, self.count) == self.index

    def state_file(self, db: Path) -> Path:
        """This shard's own state file beside `db`: fleet.db → fleet.shard-3-of-8.db."""
        mark = f".shard-{self.index}-of-{self.count}"
        if db.stem.endswith(mark):  # already this shard's (settings validated twice)
            return db
        return db.with_name(f"{db.stem}{mark}{db.suffix}")
