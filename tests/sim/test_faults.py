from __future__ import annotations

import anyio
import httpx
import pytest
from sim_support import STATS_URL, TRAIN

from fleet.sim import ManualClock, SimSettings, World, build, create_app, serve
from fleet.sim.faults import ConnectionDropped, FaultInjector
from fleet.sim.world import RATE_FIELDS


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
    versions = len(world.trained_models_of(model_id))
    response = await client.post(f"/api/models/{model_id}/train", json=TRAIN)
    assert response.status_code == 500
    assert len(world.trained_models_of(model_id)) == versions
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
        jobs[model.id] = (await client.post(f"/api/models/{model.id}/train", json=TRAIN)).json()
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


async def test_dropped_post_over_loopback_takes_effect_and_the_server_carries_on(capfd):
    """Over a socket a dropped POST is a transport error, yet its job exists; serving goes on."""
    settings = SimSettings(models=2, drop_rate=1.0, fault_methods=("POST",), initial_deployed=False)
    world, app = build(settings, ManualClock())
    model_id = world.models()[0].id
    headers = {"Authorization": f"Bearer {settings.token}", "AOA-Project-ID": settings.project_id}
    async with serve(app) as base_url, httpx.AsyncClient(base_url=base_url, headers=headers) as c:
        with pytest.raises(httpx.TransportError) as raised:
            await c.post(f"/api/models/{model_id}/train", json=TRAIN)
        assert isinstance(raised.value, httpx.RemoteProtocolError)
        jobs = (await c.get("/api/jobs")).json()["_embedded"]["jobs"]
        assert [(j["modelId"], j["type"]) for j in jobs] == [(model_id, "TRAINING")]
        with pytest.raises(httpx.RemoteProtocolError):
            await c.post(f"/api/models/{model_id}/train", json=TRAIN)
        assert (await c.get(f"/api/models/{model_id}")).status_code == 200
        stats = (await c.get(base_url.removesuffix("/modelops/core") + "/_sim/stats")).json()
    assert stats["faults"]["drop"] == 2
    assert stats["jobs_total"] == 2
    assert "Traceback" not in capfd.readouterr().err


@pytest.mark.parametrize("settings", [SimSettings(models=2, drop_rate=1.0)])
async def test_dropped_request_in_process_raises_remote_protocol_error(client, world):
    """Through ASGITransport a dropped answer raises ConnectionDropped, an httpx error."""
    model_id = world.models()[0].id
    with pytest.raises(httpx.RemoteProtocolError) as raised:
        await client.post(f"/api/models/{model_id}/train", json=TRAIN)
    assert isinstance(raised.value, ConnectionDropped)
    assert raised.value.request.method == "POST"
    assert world.stats()["jobs_total"] == 1
    with pytest.raises(ConnectionDropped):
        await client.get("/api/models")
    assert world.stats()["faults"]["drop"] == 2


async def test_delay_after_applies_the_effect_before_answering(clock):
    """A delayed answer is held back after the job exists: a GET meanwhile already lists it."""
    settings = SimSettings(
        models=2,
        delay_after_rate=1.0,
        delay_after_s=7.5,
        fault_methods=("POST",),
        initial_deployed=False,
    )
    world = World(settings, clock)
    waits: list[float] = []
    released = anyio.Event()

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        await released.wait()

    transport = httpx.ASGITransport(app=create_app(world, sleep=sleep))
    headers = {"Authorization": f"Bearer {settings.token}", "AOA-Project-ID": settings.project_id}
    model_id = world.models()[0].id
    answers: list[httpx.Response] = []
    async with httpx.AsyncClient(
        transport=transport, base_url="http://sim/modelops/core", headers=headers
    ) as client:

        async def train() -> None:
            answers.append(await client.post(f"/api/models/{model_id}/train", json=TRAIN))

        async with anyio.create_task_group() as tg:
            tg.start_soon(train)
            await anyio.wait_all_tasks_blocked()  # the POST is handled and now waits to answer
            listed = (await client.get("/api/jobs")).json()["_embedded"]["jobs"]
            assert answers == []
            assert waits == [7.5]
            assert [j["modelId"] for j in listed] == [model_id]
            released.set()
    assert answers[0].status_code == 200
    assert answers[0].json()["id"] == listed[0]["id"]
    assert world.stats()["faults"]["delay_after"] == 1


@pytest.mark.parametrize(
    "settings", [SimSettings(models=2, http_500_rate=1.0, fault_methods=("POST",))]
)
async def test_fault_methods_spare_the_methods_left_out(client, world):
    """With fault_methods=("POST",) every GET answers normally while every POST is faulted."""
    model_id = world.models()[0].id
    assert (await client.get("/api/models")).status_code == 200
    assert (await client.get(f"/api/models/{model_id}")).status_code == 200
    assert (await client.post(f"/api/models/{model_id}/train", json=TRAIN)).status_code == 500
    assert world.stats()["faults"]["http_500"] == 1


def test_after_faults_are_seeded_and_roughly_honoured():
    """Drops and delays follow the seed and their rates, and draw nothing when both are off."""
    settings = SimSettings(drop_rate=0.1, delay_after_rate=0.2, seed=5)
    one, two = FaultInjector(settings), FaultInjector(settings)
    draws = [one.after() for _ in range(20_000)]
    assert draws == [two.after() for _ in range(20_000)]
    assert 1700 < draws.count("drop") < 2300
    assert 3600 < draws.count("delay_after") < 4400
    quiet = FaultInjector(SimSettings(http_500_rate=0.5, seed=5))
    plain = FaultInjector(SimSettings(http_500_rate=0.5, seed=5, drop_rate=0.5))
    for _ in range(100):
        assert quiet.after() is None
        plain.after()
        assert quiet.draw() == plain.draw()


@pytest.mark.parametrize("settings", [SimSettings(models=40, stuck_rate=0.3, job_error_rate=0.2)])
async def test_stuck_jobs_stay_running_for_ever(client, clock, world):
    """Exactly the jobs `job_will_stick` names never end: RUNNING, their version never trained."""
    jobs = {}
    for model in world.models():
        jobs[model.id] = (await client.post(f"/api/models/{model.id}/train", json=TRAIN)).json()
    clock.advance(30 * 86_400)
    stuck = {m for m in jobs if world.job_will_stick(m, "TRAINING", 1)}
    assert 0 < len(stuck) < len(jobs)
    for model_id, job in jobs.items():
        polled = await client.get(f"/api/jobs/{job['id']}", params={"projection": "expandJob"})
        version = (await client.get(f"/api/trainedModels/{job['trainedModelId']}")).json()
        if model_id in stuck:
            assert polled.json()["status"] == "RUNNING"
            assert version["status"] == "TRAINING"
        else:
            assert polled.json()["status"] in {"COMPLETED", "ERROR"}
    stats = (await client.get(STATS_URL)).json()
    assert stats["faults"]["job_stuck"] == len(stuck)
    assert stats["running_jobs"] == len(stuck)
    records = {r["id"]: r for r in (await client.get("http://sim/_sim/jobs")).json()}
    assert {r["model_id"] for r in records.values() if r["ends_at"] is None} == stuck


def test_stuck_and_failing_jobs_are_seeded_and_independent(clock):
    """job_will_stick follows the seed, is off at rate 0, and is drawn apart from failures."""
    keys = [(f"m{i}", "DEPLOYMENT", n) for i in range(200) for n in (1, 2)]
    settings = SimSettings(models=0, stuck_rate=0.5, job_error_rate=0.5, seed=4)
    one, two = World(settings, clock), World(settings, clock)
    stuck = [one.job_will_stick(*k) for k in keys]
    assert stuck == [two.job_will_stick(*k) for k in keys]
    assert stuck != [one.job_will_fail(*k) for k in keys]
    assert 150 < sum(stuck) < 250
    assert not any(World(SimSettings(models=0), clock).job_will_stick(*k) for k in keys)
    assert "stuck_rate" in RATE_FIELDS
    with pytest.raises(ValueError, match="stuck_rate must be within"):
        SimSettings(stuck_rate=1.1)
