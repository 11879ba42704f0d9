"""A ModelOps emulator: the REST API fleet drives, in memory, on a clock tests can speed up."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fleet.sim.app import create_app
from fleet.sim.behaviour import Behaviour
from fleet.sim.clock import Clock, ManualClock, SimClock
from fleet.sim.server import serve, serve_forever
from fleet.sim.settings import SimSettings
from fleet.sim.world import World

if TYPE_CHECKING:
    from starlette.applications import Starlette

__all__ = [
    "Behaviour",
    "Clock",
    "ManualClock",
    "SimClock",
    "SimSettings",
    "World",
    "build",
    "create_app",
    "serve",
    "serve_forever",
]


def build(settings: SimSettings, clock: Clock | None = None) -> tuple[World, Starlette]:
    """A world and the app serving it; the clock defaults to real time sped up by time_scale."""
    world = World(settings, clock if clock is not None else SimClock(settings.time_scale))
    return world, create_app(world)
