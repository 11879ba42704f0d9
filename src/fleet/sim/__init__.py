"""A ModelOps emulator: the REST API fleet drives, in memory, on a clock tests can speed up.

The package's names load on first use (PEP 562): `fleet run` reads `fleet.sim.settings` for
the flags of `fleet sim` and `fleet demo` without importing the ASGI app, starlette or
uvicorn, which only the emulator needs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from fleet.sim.app import create_app
    from fleet.sim.behaviour import Behaviour
    from fleet.sim.clock import Clock, ManualClock, SimClock
    from fleet.sim.server import serve, serve_forever
    from fleet.sim.settings import SimSettings
    from fleet.sim.world import World

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

_HOMES = {
    "Behaviour": "behaviour",
    "Clock": "clock",
    "ManualClock": "clock",
    "SimClock": "clock",
    "SimSettings": "settings",
    "World": "world",
    "create_app": "app",
    "serve": "server",
    "serve_forever": "server",
}


def __getattr__(name: str) -> object:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'fleet.sim' has no attribute {name!r}")
    return getattr(importlib.import_module(f"fleet.sim.{home}"), name)


def build(settings: SimSettings, clock: Clock | None = None) -> tuple[World, Starlette]:
    """A world and the app serving it; the clock defaults to real time sped up by time_scale."""
    from fleet.sim.app import create_app  # noqa: PLC0415 - see the module's docstring
    from fleet.sim.clock import SimClock  # noqa: PLC0415
    from fleet.sim.world import World  # noqa: PLC0415

    world = World(settings, clock if clock is not None else SimClock(settings.time_scale))
    return world, create_app(world)
