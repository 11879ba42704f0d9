"""Shared test wiring: the emulator in-process on a manual clock, and virtual sleeping.

`VirtualTime.sleep` is what the engine calls between polls: it moves the emulator's clock on
instead of waiting, so a lifecycle of "ten minutes of training" runs in milliseconds.
"""

from __future__ import annotations

import random
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import httpx

from fleet import scheduler, sim
from fleet.batch import plan_of
from fleet.breaker import Breaker
from fleet.client import ModelOpsClient
from fleet.clock import Clock
from fleet.config import load_settings
from fleet.models import ModelEntry, ModelSpec
from fleet.progress import RunResult
from fleet.retries import RetryPolicy
from fleet.session import Pacing
from fleet.settings import Settings
from fleet.sim.behaviour import Behaviour
from fleet.sim.records import Job
from fleet.store import Store
from fleet.throttle import Throttle
from fleet.transport import HttpOptions

BASE_URL = "http://localhost/modelops/core"


async def night(
    env: Emulated,
    settings: Settings,
    run_id: str = "night-1",
    specs: Sequence[ModelSpec] | None = None,
) -> RunResult:
    """One run of `settings` against `env` on its virtual time, in the settings' state file."""
    async with Store.open(settings.db) as store:
        return await scheduler.run(
            plan_of(settings, run_id=run_id, specs=specs),
            env.api,
            store,
            controls=scheduler.Controls(sleep=env.time.sleep, clock=env.time.monotonic),
        )


@dataclass
class VirtualTime:
    clock: sim.ManualClock
    sim_seconds_per_sleep: float = 20.0

    async def sleep(self, _seconds: float) -> None:
        self.clock.advance(self.sim_seconds_per_sleep)
        await anyio.lowlevel.checkpoint()

    def monotonic(self) -> float:
        """The clock `sleep` moves: the engine's notion of elapsed time."""
        return self.clock.now()


class InstantTime:
    """Time for a client (its calls' retries, its throttle and breaker) that jumps over every
    pause at once: `clock` reads `now` and moves it on by what it sleeps."""

    def __init__(self, seed: int = 0) -> None:
        self.now = 0.0
        self.slept = 0.0
        self.clock = Clock(now=self._read, sleep=self._sleep, rng=random.Random(seed))

    def _read(self) -> float:
        return self.now

    async def _sleep(self, seconds: float) -> None:
        self.now += max(seconds, 0.0)
        self.slept += max(seconds, 0.0)
        await anyio.lowlevel.checkpoint()

    def pacing(self, retry: RetryPolicy | None = None, breaker: Breaker | None = None) -> Pacing:
        """A client's pacing with everything on this clock: its throttle, its breaker (give
        one built on `self.clock` to tune it) and the waits between a call's sends."""
        return Pacing(
            throttle=Throttle(clock=self.clock),
            breaker=breaker or Breaker(clock=self.clock),
            retry=retry or RetryPolicy(),
            clock=self.clock,
        )


@dataclass
class Emulated:
    world: sim.World
    api: ModelOpsClient
    time: VirtualTime
    settings: sim.SimSettings

    def entries(self) -> tuple[ModelEntry, ...]:
        return tuple(ModelEntry(id=m.id, name=m.name) for m in self.world.models())


_BEHAVIOUR_FIELDS = frozenset(f.name for f in fields(Behaviour))


def tonight(world: sim.World) -> list[Job]:
    """The lifecycle jobs clients submitted, oldest first: not the project's history (last
    night's jobs), not the scoring jobs deployments start."""
    return [j for j in world.jobs() if not j.history and j.type != "SCORING"]


@asynccontextmanager
async def emulated(
    clock: sim.ManualClock | None = None, **overrides: Any
) -> AsyncIterator[Emulated]:
    """The emulator behind an httpx ASGI transport (no sockets) and a client speaking to it.

    Two worlds given one `clock` are two ModelOps projects living through the same time.
    `overrides` are `SimSettings` fields, or `Behaviour` fields (the server's answers), on
    top of `profile` ("default" or "optimistic").
    """
    behaviour = {k: overrides.pop(k) for k in list(overrides) if k in _BEHAVIOUR_FIELDS}
    profile = Behaviour.profile(overrides.pop("profile", "default"))
    settings = sim.SimSettings(
        **{"models": 10, **overrides}, behaviour=replace(profile, **behaviour)
    )
    # Simulated time starts now, so jobs are never "older" than fleet's own timestamps.
    clock = clock or sim.ManualClock(start=time.time())
    world, app = sim.build(settings, clock)
    transport = httpx.ASGITransport(app=app)
    async with ModelOpsClient(
        BASE_URL,
        settings.project_id,
        settings.token,
        http=HttpOptions(transport=transport),
        pacing=InstantTime().pacing(retry=RetryPolicy(initial_s=0.0, max_s=0.0, jitter_s=0.0)),
    ) as api:
        yield Emulated(world=world, api=api, time=VirtualTime(clock), settings=settings)


def settings_for(env: Emulated, db: Path, **flags: Any) -> Settings:
    """Settings for a run against `env` (no config file, no environment)."""
    base = {
        "api.url": BASE_URL,
        "api.project_id": env.settings.project_id,
        "db": str(db),
        "poll_interval": 1.0,
        "defaults.train_dataset_id": env.world.train_dataset_id,
        "defaults.evaluate_dataset_id": env.world.eval_dataset_id,
    }
    settings = load_settings(None, {**base, **flags}, env={}, use_default_file=False)
    return settings.model_copy(update={"models": env.entries()})


def files_in(directory: Path) -> dict[str, bytes]:
    """The files in `directory` by name, with their bytes, to compare or to search."""
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir())}
