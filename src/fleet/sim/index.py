"""Jobs by current status, in `createdAt` or `updatedAt` order, a page in O(size + log n).

Statuses change lazily with time, so the world tells the index about each change in time order
(see `World.advance`). Two orders are kept:

- by creation: position i is the i-th job created; a status change moves the job from one
  status's counts to another's, in place.
- by last change: every change appends the job at the end of a log and blanks its older entry.
  Changes arrive in time order, so the log stays sorted by `updatedAt`.

`_Ranks` counts, per status, the live positions in blocks of blocks (a 64-ary tree of counts),
so "the k-th job whose status is one of these" is a descent of a few levels, not a scan of
every job.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from collections.abc import Collection, Sequence

    from fleet.sim.records import Job

Order = Literal["createdAt", "updatedAt"]

# A page walks from one match to the next; past this many non-matching positions in a row it
# jumps to the next match through the counts instead.
_WALK = 32
# Counts are kept per block of 64 positions, per block of 64 such blocks, and so on: an update
# touches one count per level (3 levels up to 262,144 positions), a selection scans at most
# 64 counts per level.
_BITS = 6
_FANOUT = 1 << _BITS


class _Ranks:
    """Positions 0, 1, 2, ... each holding at most one key; counts and selection by key."""

    __slots__ = ("_keys", "_levels")

    def __init__(self) -> None:
        self._keys: list[str | None] = []
        # _levels[n][key][i]: positions holding `key` in block i of 64 ** (n + 1) positions.
        self._levels: list[dict[str, list[int]]] = [{}]

    def append(self, key: str) -> int:
        position = len(self._keys)
        if position >> (_BITS * (len(self._levels) + 1)):
            self._add_level()  # the top level would hold more than 64 blocks
        self._keys.append(None)
        self.set(position, key)
        return position

    def set(self, position: int, key: str | None) -> None:
        old = self._keys[position]
        if old == key:
            return
        if old is not None:
            self._add(old, position, -1)
        if key is not None:
            self._add(key, position, 1)
        self._keys[position] = key

    def count(self, keys: Collection[str] | None) -> int:
        top = self._levels[-1]  # at most 64 blocks per key
        return sum(sum(top[key]) for key in (top if keys is None else keys) if key in top)

    def window(
        self, keys: Collection[str] | None, offset: int, limit: int, *, descending: bool
    ) -> list[int]:
        """Positions of the matches ranked offset .. offset+limit-1, in the order asked."""
        total = self.count(keys)
        wanted = min(limit, total - offset)
        if wanted <= 0:
            return []
        step = -1 if descending else 1
        rank = total - 1 - offset if descending else offset
        position = self._select(keys, rank)
        found = [position]
        while len(found) < wanted:
            rank += step
            walked = self._walk(keys, position + step, step)
            position = self._select(keys, rank) if walked is None else walked
            found.append(position)
        return found

    def _walk(self, keys: Collection[str] | None, position: int, step: int) -> int | None:
        for _ in range(_WALK):
            if not 0 <= position < len(self._keys):
                return None
            key = self._keys[position]
            if key is not None and (keys is None or key in keys):
                return position
            position += step
        return None

    def _select(self, keys: Collection[str] | None, rank: int) -> int:
        """The position of the match of 0-based `rank` (which must exist), top level down."""
        top = self._levels[-1]
        names = [key for key in (top if keys is None else keys) if key in top]
        remaining, block = rank, 0
        for level in reversed(self._levels):
            counts = [level[name] for name in names]
            while True:
                here = sum(blocks[block] for blocks in counts if block < len(blocks))
                if here > remaining:
                    break
                remaining -= here
                block += 1
            block *= _FANOUT  # the first block of the level below, or the first position
        position = block
        while True:
            key = self._keys[position]
            if key is not None and key in names:
                if not remaining:
                    return position
                remaining -= 1
            position += 1

    def _add(self, key: str, position: int, delta: int) -> None:
        shift = _BITS
        for level in self._levels:
            blocks = level.get(key)
            if blocks is None:
                blocks = level[key] = []
            block = position >> shift
            if block >= len(blocks):
                blocks.extend([0] * (block + 1 - len(blocks)))
            blocks[block] += delta
            shift += _BITS

    def _add_level(self) -> None:
        top = self._levels[-1]
        self._levels.append(
            {
                key: [sum(blocks[i : i + _FANOUT]) for i in range(0, len(blocks), _FANOUT)]
                for key, blocks in top.items()
            }
        )


class JobIndex:
    """Jobs by status, in creation order and in order of their latest status change."""

    __slots__ = ("_by_change", "_by_creation", "_change_log", "_created", "_slot", "_status")

    def __init__(self) -> None:
        self._by_creation = _Ranks()
        self._by_change = _Ranks()
        self._created: list[Job] = []
        self._change_log: list[Job] = []
        self._slot: dict[str, tuple[int, int]] = {}  # job id -> (creation position, log position)
        self._status: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self._created)

    def added(self, job: Job, status: str) -> None:
        """A new job, created now: it is the newest both by creation and by change."""
        created = self._by_creation.append(status)
        logged = self._by_change.append(status)
        self._created.append(job)
        self._change_log.append(job)
        self._slot[job.id] = (created, logged)
        self._status[job.id] = status

    def add_ended(self, jobs: Sequence[Job]) -> None:
        """Jobs that ended before the index began (last night's), given in creation order.

        They are logged in order of their end, so the change log stays sorted by `updatedAt`
        whatever order they were created in. Only an empty index takes them.
        """
        if self._created:
            raise ValueError("ended jobs go into an empty index")
        positions = [self._by_creation.append(str(job.outcome)) for job in jobs]
        self._created.extend(jobs)
        for job, created in zip(jobs, positions, strict=True):
            self._status[job.id] = str(job.outcome)
            self._slot[job.id] = (created, -1)
        for job in sorted(jobs, key=lambda j: j.ends_at):
            logged = self._by_change.append(str(job.outcome))
            self._change_log.append(job)
            self._slot[job.id] = (self._slot[job.id][0], logged)

    def changed(self, job: Job, status: str) -> None:
        """The job's status changed now, later than (or as late as) every earlier change."""
        created, logged = self._slot[job.id]
        self._by_creation.set(created, status)
        self._by_change.set(logged, None)
        logged = self._by_change.append(status)
        self._change_log.append(job)
        self._slot[job.id] = (created, logged)
        self._status[job.id] = status

    def status(self, job_id: str) -> str:
        return self._status[job_id]

    def count(self, statuses: Collection[str] | None) -> int:
        return self._by_creation.count(statuses)

    def page(
        self,
        statuses: Collection[str] | None,
        order: Order,
        offset: int,
        limit: int,
        *,
        descending: bool,
    ) -> list[Job]:
        """The jobs whose status is one of `statuses` (None: any), ranked offset onward."""
        if order == "createdAt":
            ranks, jobs = self._by_creation, self._created
        else:
            ranks, jobs = self._by_change, self._change_log
        positions = ranks.window(statuses, offset, limit, descending=descending)
        return [jobs[position] for position in positions]
