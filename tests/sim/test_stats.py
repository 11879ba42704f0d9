from __future__ import annotations

STATS_URL = "http://sim/_sim/stats"


async def test_stats_count_requests_by_route_template(client, clock, world):
    """requests_by_route is keyed by method and route template; /_sim is not counted."""
    model_id = world.models()[0].id
    job = (await client.post(f"/api/models/{model_id}/train", json={})).json()
    for _ in range(3):
        await client.get(f"/api/jobs/{job['id']}", params={"projection": "expandJob"})
    await client.get("/api/models", headers={"Authorization": "Bearer wrong"})
    await client.get(STATS_URL)
    stats = (await client.get(STATS_URL)).json()
    assert stats["requests_by_route"] == {
        "POST /modelops/core/api/models/{model_id}/train": 1,
        "GET /modelops/core/api/jobs/{job_id}": 3,
        "GET /modelops/core/api/models": 1,
    }
    assert stats["requests_total"] == 5


async def test_stats_count_jobs_per_model_and_type_and_peak(client, clock, world):
    """Jobs are counted by type, per model and type at most, and at peak concurrency."""
    first, second = (m.id for m in world.models()[:2])
    for model_id in (first, first, second):
        await client.post(f"/api/models/{model_id}/train", json={})
    clock.advance(3600)
    await client.post(f"/api/models/{first}/train", json={})
    stats = (await client.get(STATS_URL)).json()
    assert stats["jobs_by_type"] == {
        "TRAINING": 4,
        "EVALUATION": 0,
        "DEPLOYMENT": 0,
        "RETIREMENT": 0,
    }
    assert stats["jobs_total"] == 4
    assert stats["max_jobs_per_model_and_type"] == 3
    assert stats["peak_running_jobs"] == 3
    assert stats["running_jobs"] == 1


async def test_initial_state_creates_no_jobs(client, world):
    """Last night's deployed versions exist without any job being counted."""
    stats = (await client.get(STATS_URL)).json()
    assert stats["jobs_total"] == 0
    assert stats["active_deployments"] == world.settings.models
    assert set(stats["faults"]) == {
        "http_500",
        "http_503",
        "http_429",
        "slow",
        "drop",
        "delay_after",
        "job_error",
    }
