"""Slots: the run's capacity in remote jobs at once, and who gets a free one first.

A ModelOps cluster (or the Airflow pool fleet replaces) runs so many jobs at once, whatever
their stage: that number is `jobs`, one cap shared by every stage and project. Each stage may
have a bound of its own (`[limits]`), and a project its own bounds; a job starts when every
bound it falls under has room.

When a slot frees, it goes to the waiting job whose model has the most expected work left,
this job included (critical path first, list scheduling's best rule for chains of jobs): a
long training is never left to start last and run alone at the end, and a model whose chain
is nearly done does not hold up one whose chain has hardly begun. Among equals, the first to
ask. Approval calls are no remote jobs: they take their stage's bound and no slot.
"""

from __future__ import annotations

import bisect
import itertools
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import anyio

from fleet.stages import Stage


@dataclass(slots=True, eq=False)
class Gate:
    """One bound: at most `limit` held at once."""

    limit: int
    held: int = 0

    @property
    def open(self) -> bool:
        return self.held < self.limit


@dataclass(slots=True, eq=False)
class _Waiter:
    key: tuple[float, int]  # (-work left, arrival): the smallest goes first
    gates: tuple[Gate, ...]
    granted: anyio.Event = field(default_factory=anyio.Event)


class Slots:
    """The job cap, and the queue of jobs waiting for it and for their own bounds.

    After every change no waiter has all its gates open: a job whose gates are open takes
    them at once, and a freed slot is handed on before its holder goes on.
    """

    def __init__(self, cap: int) -> None:
        self.cap = Gate(cap)
        self._waiting: list[_Waiter] = []
        self._arrivals = itertools.count()

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @asynccontextmanager
    async def hold(self, bounds: tuple[Gate, ...], work_left: float) -> AsyncIterator[None]:
        """Hold a slot and a place in each of `bounds` for the block, waiting in turn while
        one of them is full."""
        gates = (self.cap, *bounds)
        if all(gate.open for gate in gates):
            _take(gates)
        else:
            waiter = _Waiter((-work_left, next(self._arrivals)), gates)
            bisect.insort(self._waiting, waiter, key=lambda w: w.key)
            try:
                await waiter.granted.wait()
            except BaseException:
                if waiter.granted.is_set():  # granted as it was cancelled: pass it on
                    self._release(gates)
                else:
                    self._waiting.remove(waiter)
                raise
        try:
            yield
        finally:
            self._release(gates)

    def _release(self, gates: tuple[Gate, ...]) -> None:
        for gate in gates:
            gate.held -= 1
        self._grant()

    def _grant(self) -> None:
        """Hand free places to the waiters in turn; one whose gates are full keeps its turn.
        Every waiter needs a slot, so none can start once they are all taken."""
        index = 0
        while index < len(self._waiting) and self.cap.open:
            waiter = self._waiting[index]
            if all(gate.open for gate in waiter.gates):
                del self._waiting[index]
                _take(waiter.gates)
                waiter.granted.set()
            else:
                index += 1


def _take(gates: tuple[Gate, ...]) -> None:
    for gate in gates:
        gate.held += 1


@dataclass(frozen=True, slots=True)
class StageSlots:
    """What one project's stages hold: the run's job slots (approval calls have slots of
    their own, unbounded but for their stage), the bound of each stage (the run's or the
    project's own), and the project's own cap on its jobs, if any."""

    jobs: Slots
    calls: Slots
    stages: Mapping[Stage, Gate]
    project_jobs: Gate | None = None

    @asynccontextmanager
    async def hold(self, stage: Stage, work_left: float) -> AsyncIterator[None]:
        """A place for one job (or, for approve, one call) of `stage`, in turn."""
        if stage is Stage.APPROVE:
            slots, bounds = self.calls, (self.stages[stage],)
        else:
            slots = self.jobs
            own = () if self.project_jobs is None else (self.project_jobs,)
            bounds = (self.stages[stage], *own)
        async with slots.hold(bounds, work_left):
            yield


def run_slots(jobs: int, limits: Mapping[Stage, int]) -> StageSlots:
    """A run's slots: `jobs` remote jobs at once, each stage within its own limit."""
    return StageSlots(
        jobs=Slots(jobs),
        calls=Slots(sys.maxsize),  # approval calls: only their stage's bound
        stages={stage: Gate(limits[stage]) for stage in Stage},
    )


def project_slots(
    run: StageSlots, limits: Mapping[Stage, int], jobs: int | None = None
) -> StageSlots:
    """A project's slots: the run's, with its own bound on the stages in `limits` (the others
    share the run's) and on its jobs, if `jobs` is set."""
    if not limits and jobs is None:
        return run
    stages = {
        stage: Gate(limits[stage]) if stage in limits else run.stages[stage] for stage in Stage
    }
    own = None if jobs is None else Gate(jobs)
    return StageSlots(jobs=run.jobs, calls=run.calls, stages=stages, project_jobs=own)
