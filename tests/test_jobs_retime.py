"""jobs.py: a job followed with no prediction is handed over again once history can time it."""

from __future__ import annotations

import anyio
import anyio.lowlevel

from fleet import jobs
from fleet.polling import Finished


async def test_the_call_answers_when_it_ends_first() -> None:
    never = anyio.Event()
    answer = Finished.__new__(Finished)

    async def call() -> Finished | None:
        return answer

    assert await jobs._unless(call, never) is answer


async def test_the_event_first_cancels_the_call_and_says_so() -> None:
    event = anyio.Event()
    cancelled = anyio.Event()

    async def call() -> Finished | None:
        try:
            await anyio.sleep_forever()
        finally:
            cancelled.set()
        return None  # pragma: no cover - never reached

    async def fire() -> None:
        await anyio.lowlevel.checkpoint()
        event.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(fire)
        result = await jobs._unless(call, event)
    assert isinstance(result, jobs._Retimed)
    assert cancelled.is_set()
