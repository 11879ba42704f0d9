"""What is in production: one findActive shared by the models that ask, confirmed per version."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

import anyio
import anyio.lowlevel
import pytest

from fleet.errors import TransientApiError
from fleet.modelops import Deployment
from fleet.production import Production

EPOCH = datetime(2026, 11, 25, tzinfo=UTC)


def _deployment(n: int, model: str, version: str, *, age_s: float = 0.0) -> Deployment:
    return Deployment(f"d{n}", "DEPLOYED", version, model, EPOCH - timedelta(seconds=age_s))


class FakeDeployments:
    def __init__(self, active: list[Deployment], *, confirmed: set[str] | None = None) -> None:
        self.active = active
        self.confirmed = confirmed  # None: every active deployment is confirmed
        self.calls: Counter[str] = Counter()
        self.now = 0.0
        self.fail_next = 0

    def clock(self) -> float:
        return self.now

    async def active_deployments(self) -> list[Deployment]:
        self.calls["findActive"] += 1
        await anyio.lowlevel.checkpoint()
        if self.fail_next:
            self.fail_next -= 1
            raise TransientApiError("HTTP 503", status=503)
        return list(self.active)

    async def deployments_of_version(self, trained_model_id: str) -> list[Deployment]:
        self.calls["byVersion"] += 1
        return [
            d
            for d in self.active
            if d.trained_model_id == trained_model_id
            and (self.confirmed is None or d.id in self.confirmed)
        ]


def _production(api: FakeDeployments, ttl_s: float = 5.0) -> Production:
    return Production(api, clock=api.clock, ttl_s=ttl_s)  # type: ignore[arg-type]


async def test_a_models_deployments_come_from_find_active_oldest_first() -> None:
    api = FakeDeployments(
        [
            _deployment(1, "m1", "v2", age_s=10),
            _deployment(2, "m2", "w1"),
            _deployment(3, "m1", "v1", age_s=99),
        ]
    )

    got = await _production(api).of_model("m1")

    assert [d.id for d in got] == ["d3", "d1"]


async def test_models_asking_at_once_share_one_read() -> None:
    """A hundred models asking within the ttl cost one findActive."""
    api = FakeDeployments([_deployment(n, f"m{n}", f"v{n}") for n in range(100)])
    production = _production(api)
    found: dict[str, int] = {}

    async def ask(model: str) -> None:
        found[model] = len(await production.of_model(model))

    async with anyio.create_task_group() as tg:
        for n in range(100):
            tg.start_soon(ask, f"m{n}")

    assert api.calls["findActive"] == 1
    assert set(found.values()) == {1}


async def test_the_list_is_read_again_once_it_is_older_than_the_ttl() -> None:
    api = FakeDeployments([_deployment(1, "m1", "v1")])
    production = _production(api, ttl_s=5.0)
    await production.of_model("m1")
    api.now = 4.0
    await production.of_model("m1")
    api.now = 6.0
    await production.of_model("m1")

    assert api.calls["findActive"] == 2


async def test_a_deployment_not_confirmed_by_its_version_is_not_in_production() -> None:
    """findActive is checked against findByStatusAndTrainedModelId, the tutorial's call."""
    api = FakeDeployments(
        [_deployment(1, "m1", "v1"), _deployment(2, "m1", "v2")], confirmed={"d2"}
    )

    got = await _production(api).of_model("m1")

    assert [d.id for d in got] == ["d2"]


async def test_a_failed_read_is_not_kept_and_the_next_caller_reads_again() -> None:
    api = FakeDeployments([_deployment(1, "m1", "v1")])
    api.fail_next = 1
    production = _production(api)

    with pytest.raises(TransientApiError):
        await production.of_model("m1")
    assert [d.id for d in await production.of_model("m1")] == ["d1"]
