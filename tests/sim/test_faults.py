from __future__ import annotations

import pytest

from fleet.sim import SimSettings
from fleet.sim.faults import FaultInjector

STATS_URL = "http://sim/_sim/stats"


@pytest.mark.parametrize("settings", [SimSettings(models=2, http_429_rate=1.0, retry_after_s=1.5)])
async def test_429_carries_retry_after_in_whole_seconds(client):
    """A rate-limited request answers 429 with Retry-After rounded up to whole seconds."""
    response = await client.get("/api/models")
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "2"
    assert response.json()["error"] == "Too Many Requests"


@pytest.mark.parametrize("settings", [SimSettings(models=2, http_503_rate=1.0)])
async def test_503_carries_retry_after(client):
    """An unavailable gateway answers 503 with Retry-After."""
    response = await client.get("/api/models")
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"


@pytest.mark.parametrize("settings", [SimSettings(models=2, http_500_rate=1.0)])
async def test_faulted_post_creates_nothing(client, world):
    """A POST answered with a fault has no effect: no job, no version."""
    model_id = world.models()[0].id
    response = await client.post(f"/api/models/{model_id}/train", json={})
    assert response.status_code == 500
    assert world.jobs() == []
    assert len(world.trained_models_of(model_id)) == 1
    stats = (await client.get(STATS_URL)).json()
    assert stats["jobs_total"] == 0
    assert stats["faults"]["http_500"] == 1


@pytest.mark.parametrize("settings", [SimSettings(models=2, http_429_rate=1.0)])
async def test_auth_is_checked_before_faults(client):
    """A bad token is a 401 even when every request would be faulted."""
    response = await client.get("/api/models", headers={"Authorization": "Bearer nope"})
    assert response.status_code == 401


@pytest.mark.parametrize("settings", [SimSettings(models=2, slow_rate=1.0, slow_s=0.0)])
async def test_slow_requests_are_counted_and_still_answer(client):
    """A slow request is delayed, then handled normally."""
    assert (await client.get("/api/models")).status_code == 200
    assert (await client.get(STATS_URL)).json()["faults"]["slow"] == 1


def test_fault_rates_are_roughly_honoured():
    """Over many requests each fault occurs at about its configured rate."""
    injector = FaultInjector(
        SimSettings(http_429_rate=0.1, http_503_rate=0.05, http_500_rate=0.02, seed=3)
    )
    draws = [injector.draw() for _ in range(20_000)]
    counts = {
        kind: sum(1 for d in draws if d and d.kind == kind)
        for kind in ("http_429", "http_503", "http_500")
    }
    assert 1700 < counts["http_429"] < 2300
    assert 800 < counts["http_503"] < 1200
    assert 280 < counts["http_500"] < 520


@pytest.mark.parametrize("settings", [SimSettings(models=40, job_error_rate=0.3)])
async def test_job_errors_are_deterministic_and_predicted(client, clock, world):
    """Exactly the jobs `job_will_fail` names end in ERROR, with no side effect."""
    jobs = {}
    for model in world.models():
        jobs[model.id] = (await client.post(f"/api/models/{model.id}/train", json={})).json()
    clock.advance(3600)
    expected = {m for m in jobs if world.job_will_fail(m, "TRAINING", 1)}
    assert 0 < len(expected) < len(jobs)
    for model_id, job in jobs.items():
        polled = await client.get(f"/api/jobs/{job['id']}", params={"projection": "expandJob"})
        failed = model_id in expected
        assert polled.json()["status"] == ("ERROR" if failed else "COMPLETED")
        version = (await client.get(f"/api/trainedModels/{job['trainedModelId']}")).json()
        assert (version["status"] == "TRAINED") is not failed
    assert (await client.get(STATS_URL)).json()["faults"]["job_error"] == len(expected)
