"""What is in production: a model's active deployments, from the deployments themselves.

`GET /api/deployments/search/findActive?projection=expandDeployment` (the official client's
`find_active`) lists every active deployment of the project, each naming its version and
model, so one request serves every model that asks within `ttl_s` seconds; concurrent
callers share one request. Each version found there is confirmed with
`findByStatusAndTrainedModelId?status=DEPLOYED` (the call the Model Factory tutorial makes)
before it is trusted.

A version's own status is not used: that a deployed version reads `DEPLOYED` is recorded
nowhere, and a server where it does not would make "nothing is in production" look true.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime

import anyio

from fleet.modelops import Deployment, ModelOps

_EPOCH = datetime.min.replace(tzinfo=UTC)


class Production:
    """The project's active deployments, read at most every `ttl_s` seconds."""

    def __init__(self, api: ModelOps, *, clock: Callable[[], float], ttl_s: float) -> None:
        self._api = api
        self._clock = clock
        self._ttl_s = ttl_s
        self._read_at = -math.inf
        self._active: list[Deployment] = []
        self._reading: anyio.Event | None = None

    async def of_model(self, model_id: str) -> list[Deployment]:
        """The model's deployments in production now, oldest first."""
        active = await self._current()
        mine = [d for d in active if d.model_id == model_id and d.trained_model_id]
        confirmed: list[Deployment] = []
        for version in dict.fromkeys(d.trained_model_id for d in mine):
            assert version is not None
            deployed = {d.id for d in await self._api.deployments_of_version(version)}
            confirmed.extend(d for d in mine if d.trained_model_id == version and d.id in deployed)
        return sorted(confirmed, key=lambda d: d.created_at or _EPOCH)

    async def _current(self) -> list[Deployment]:
        while self._reading is not None:
            # Another model is reading them now: share its answer; if it failed, read anew.
            await self._reading.wait()
        if self._clock() - self._read_at < self._ttl_s:
            return self._active
        self._reading = anyio.Event()
        try:
            self._active = await self._api.active_deployments()
            self._read_at = self._clock()
        finally:
            self._reading.set()
            self._reading = None
        return self._active
