from __future__ import annotations

from typing import TYPE_CHECKING

import httpx
import pytest
from sim_support import BASE_URL, HEADERS

from fleet.sim import ManualClock, SimSettings, World, create_app

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def settings() -> SimSettings:
    """Small by default; a test parametrizes `settings` to change it."""
    return SimSettings(models=5)


@pytest.fixture
def world(settings: SimSettings, clock: ManualClock) -> World:
    return World(settings, clock)


@pytest.fixture
async def client(world: World) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(world))
    async with httpx.AsyncClient(transport=transport, base_url=BASE_URL, headers=HEADERS) as c:
        yield c
