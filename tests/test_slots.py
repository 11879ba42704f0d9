"""slots.py: the job cap shared by every stage, and a freed slot to the most work left."""

from __future__ import annotations

from collections.abc import Callable

import anyio
import anyio.lowlevel
import pytest

from fleet.slots import Gate, Slots, project_slots, run_slots
from fleet.stages import Stage

LIMITS = dict.fromkeys(Stage, 10)


async def _wait_until(condition: Callable[[], bool]) -> None:
    """Let the other tasks run until `condition()` holds (no wall clock)."""
    for _ in range(1000):
        if condition():
            return
        await anyio.lowlevel.checkpoint()
    raise AssertionError("never happened")


async def test_a_freed_slot_goes_to_the_waiter_with_the_most_work_left() -> None:
    slots = Slots(1)
    started: list[str] = []
    release = anyio.Event()

    async def job(name: str, work_left: float) -> None:
        async with slots.hold((), work_left):
            started.append(name)
            if name == "first":
                await release.wait()

    async with anyio.create_task_group() as tg:
        tg.start_soon(job, "first", 1.0)
        await _wait_until(lambda: started == ["first"])
        for name, work in (("short", 10.0), ("long", 600.0), ("middle", 60.0), ("long-2", 600.0)):
            tg.start_soon(job, name, work)
        await _wait_until(lambda: slots.waiting == 4)
        release.set()
    # By work left; among equals, the first to ask.
    assert started == ["first", "long", "long-2", "middle", "short"]


async def test_a_waiter_whose_stage_is_full_keeps_its_turn_and_holds_no_one_back() -> None:
    """Two trainings at most: a third training waits, an evaluation behind it starts."""
    slots = run_slots(3, {**LIMITS, Stage.TRAIN: 2})
    running: list[str] = []
    done = anyio.Event()

    async def job(stage: Stage, name: str, work_left: float) -> None:
        async with slots.hold(stage, work_left):
            running.append(name)
            await done.wait()

    async with anyio.create_task_group() as tg:
        tg.start_soon(job, Stage.TRAIN, "t1", 900.0)
        tg.start_soon(job, Stage.TRAIN, "t2", 900.0)
        await _wait_until(lambda: len(running) == 2)
        tg.start_soon(job, Stage.TRAIN, "t3", 900.0)
        await _wait_until(lambda: slots.jobs.waiting == 1)
        tg.start_soon(job, Stage.EVALUATE, "e1", 60.0)
        await _wait_until(lambda: "e1" in running)
        assert running == ["t1", "t2", "e1"]
        assert slots.jobs.cap.held == 3
        assert slots.jobs.waiting == 1  # t3: its stage is full, and then the cap
        done.set()
    assert sorted(running) == ["e1", "t1", "t2", "t3"]
    assert slots.jobs.cap.held == 0
    assert all(gate.held == 0 for gate in slots.stages.values())


async def test_approval_calls_take_no_job_slot() -> None:
    slots = run_slots(1, LIMITS)
    async with slots.hold(Stage.TRAIN, 1.0), slots.hold(Stage.APPROVE, 1.0):
        assert slots.jobs.cap.held == 1
        assert slots.stages[Stage.APPROVE].held == 1


async def test_a_cancelled_waiter_leaves_the_queue() -> None:
    slots = Slots(1)
    async with slots.hold((), 1.0):
        with anyio.move_on_after(0):  # cancelled while it waits
            async with slots.hold((), 5.0):
                pytest.fail("the slot was held")
        assert slots.waiting == 0
    assert slots.cap.held == 0


async def test_a_waiter_cancelled_as_it_is_granted_passes_its_slot_on() -> None:
    slots = Slots(1)
    ran: list[str] = []

    async def waiter() -> None:
        async with slots.hold((), 2.0):
            ran.append("waiter")

    holding = slots.hold((), 1.0)
    await holding.__aenter__()
    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter)
        await _wait_until(lambda: slots.waiting == 1)
        tg.cancel_scope.cancel()  # the waiter is cancelled before it runs again...
        await holding.__aexit__(None, None, None)  # ...and granted the slot, with no yield
        assert slots.cap.held == 1
    assert ran == []
    assert slots.cap.held == 0


async def test_a_project_bounds_its_own_jobs_within_the_runs() -> None:
    run = run_slots(4, LIMITS)
    own = project_slots(run, {Stage.TRAIN: 1}, jobs=2)
    assert project_slots(run, {}) is run
    assert own.stages[Stage.EVALUATE] is run.stages[Stage.EVALUATE]  # shared where not its own
    async with own.hold(Stage.TRAIN, 1.0), own.hold(Stage.DEPLOY, 1.0):
        assert own.project_jobs is not None
        assert own.project_jobs.held == 2
        assert run.jobs.cap.held == 2
        assert not own.project_jobs.open
        assert not own.stages[Stage.TRAIN].open
        assert run.stages[Stage.TRAIN].open  # the run's training bound is not the project's


def test_a_gate_is_open_below_its_limit() -> None:
    gate = Gate(1)
    assert gate.open
    gate.held = 1
    assert not gate.open
