from __future__ import annotations

import pytest
from sim_support import DEPLOY, JOBS_URL, STATS_URL, TRAIN, approved, behaving, finish, post


async def test_stats_count_requests_by_route_template(client, clock, world):
    """requests_by_route is keyed by method and route template; /_sim is not counted."""
    model_id = world.models()[0].id
    job = (await client.post(f"/api/models/{model_id}/train", json=TRAIN)).json()
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
        await client.post(f"/api/models/{model_id}/train", json=TRAIN)
    clock.advance(3600)
    await client.post(f"/api/models/{first}/train", json=TRAIN)
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
    """Last night's deployed versions and their jobs exist without any job being counted."""
    stats = (await client.get(STATS_URL)).json()
    assert stats["jobs_total"] == 0
    assert set(stats["jobs_by_type"].values()) == {0}
    assert stats["max_jobs_per_model_and_type"] == 0
    assert stats["running_jobs"] == 0
    archived_versions = sum(
        tm.archived for m in world.models() for tm in world.trained_models_of(m.id)
    )
    assert stats["history_jobs"] == 3 * world.settings.models + archived_versions
    assert stats["models"] == world.settings.models
    assert stats["archived_models"] == 2
    assert stats["scoring_jobs"] == 0
    assert stats["retired_while_scoring"] == 0
    assert stats["active_deployments"] == world.settings.models
    assert set(stats["faults"]) == {
        "http_500",
        "http_503",
        "http_429",
        "slow",
        "drop",
        "delay_after",
        "job_error",
        "job_stuck",
    }
    assert (await client.get(JOBS_URL)).json() == []


async def test_stats_tell_the_clock_the_first_request_and_the_last_job_end(client, clock, world):
    """now, first_request_at (optionally at or after `since`) and last_job_end_at are simulated."""
    start = clock.now()
    stats = (await client.get(STATS_URL)).json()
    assert stats["now"] == start
    assert stats["first_request_at"] is None
    assert stats["last_job_end_at"] is None
    clock.advance(10)
    model_id = world.models()[0].id
    job = (await client.post(f"/api/models/{model_id}/train", json=TRAIN)).json()
    clock.advance(3600)
    await client.get("/api/models")
    stats = (await client.get(STATS_URL)).json()
    assert stats["now"] == start + 3610
    assert stats["first_request_at"] == start + 10
    assert stats["last_job_end_at"] == world.job(job["id"]).ends_at
    later = (await client.get(STATS_URL, params={"since": start + 11})).json()
    assert later["first_request_at"] == start + 3610
    none = (await client.get(STATS_URL, params={"since": start + 5000})).json()
    assert none["first_request_at"] is None
    assert (await client.get(STATS_URL, params={"since": "soon"})).status_code == 400


async def test_sim_jobs_lists_each_job_with_its_times_and_is_not_a_request(client, clock, world):
    """/_sim/jobs gives id, type, model, creation, end, outcome and detection of every job."""
    model_id = world.models()[0].id
    job = (await client.post(f"/api/models/{model_id}/train", json=TRAIN)).json()
    (running,) = (await client.get(JOBS_URL)).json()
    assert running == {
        "id": job["id"],
        "type": "TRAINING",
        "model_id": model_id,
        "created_at": clock.now(),
        "ends_at": world.job(job["id"]).ends_at,
        "outcome": None,
        "detected_at": None,
    }
    clock.advance(3600)
    (done,) = (await client.get(JOBS_URL)).json()
    assert done["outcome"] == "COMPLETED"
    assert (await client.get(STATS_URL)).json()["requests_total"] == 1


async def first_jobs(client, clock, world) -> tuple[dict, dict]:
    """Trainings of the first two models, both ended."""
    first, second = (m.id for m in world.models()[:2])
    a = (await client.post(f"/api/models/{first}/train", json=TRAIN)).json()
    b = (await client.post(f"/api/models/{second}/train", json=TRAIN)).json()
    clock.advance(3600)
    return a, b


def detected(world, job: dict) -> float | None:
    return world.job(job["id"]).detected_at


async def test_a_job_is_detected_by_the_first_request_about_its_model(client, clock, world):
    """Any id of the model counts (its job, version, the model); listings and finders do not."""
    a, b = await first_jobs(client, clock, world)
    await client.get("/api/jobs", params={"projection": "expandJob"})
    await client.get("/api/jobs/search/findByStatusIn", params={"status": "COMPLETED"})
    await client.get("/api/models")
    assert detected(world, a) is None
    assert detected(world, b) is None
    clock.advance(5)
    await client.get(f"/api/jobs/{a['id']}", params={"projection": "expandJob"})
    assert detected(world, a) == clock.now()
    assert detected(world, b) is None
    clock.advance(5)
    await client.get(f"/api/trainedModels/{b['trainedModelId']}/events")
    assert detected(world, b) == clock.now()
    clock.advance(5)
    await client.get(f"/api/models/{a['modelId']}")
    assert detected(world, a) == clock.now() - 10  # the first request after the end counts


async def test_detection_reads_queries_and_bodies_but_not_refused_requests(client, clock, world):
    """A finder's query or a POST body naming the model's ids detects; a 401 does not."""
    a, b = await first_jobs(client, clock, world)
    await client.get(f"/api/models/{a['modelId']}", headers={"Authorization": "Bearer wrong"})
    assert detected(world, a) is None
    clock.advance(1)
    await client.get(
        "/api/trainedModels/search/findByModelIdAndStatus",
        params={"modelId": a["modelId"].upper(), "status": "DEPLOYED"},
    )
    assert detected(world, a) == clock.now()
    # A refused retire: the path names a's version, the body b's deployment; both are about.
    (b_deployment,) = world.trained_models_of(b["modelId"])[0].deployments
    clock.advance(1)
    response = await client.post(
        f"/api/trainedModels/{a['trainedModelId']}/retire",
        json={"deploymentId": b_deployment.id},
    )
    assert response.status_code == 400
    assert detected(world, b) == clock.now()


async def test_a_request_before_the_end_does_not_detect(client, clock, world):
    """Polling a running job is not detection; the first poll after its end is."""
    model_id = world.models()[0].id
    job = (await client.post(f"/api/models/{model_id}/train", json=TRAIN)).json()
    ends_at = world.job(job["id"]).ends_at
    clock.advance(ends_at - clock.now() - 1)
    await client.get(f"/api/jobs/{job['id']}")
    assert detected(world, job) is None
    clock.advance(1)
    await client.get(f"/api/jobs/{job['id']}")
    assert detected(world, job) == ends_at


async def once_deployed(client, clock, world) -> tuple[str, dict]:
    """A new version of the first model deployed with cron "@once"; returns it and the job."""
    tm_id = await approved(client, clock, world.models()[0].id)
    deploy = await post(client, f"/api/trainedModels/{tm_id}/deploy", DEPLOY | {"cron": "@once"})
    clock.advance(world.job(deploy["id"]).ends_at - clock.now())
    return tm_id, deploy


async def test_an_once_deployment_starts_a_scoring_job(client, clock, world):
    """cron "@once" starts a SCORING job of 20-120 s, found by its deployment, not counted."""
    _, deploy = await once_deployed(client, clock, world)
    deployment = (
        await client.get("/api/deployments/search/findByJobId", params={"jobId": deploy["id"]})
    ).json()
    found = await client.get(
        "/api/jobs/search/findByDeploymentId",
        params={"deploymentId": deployment["id"], "projection": "expandJob"},
    )
    (scoring,) = found.json()["_embedded"]["jobs"]
    assert found.json()["page"]["totalElements"] == 1
    assert scoring["type"] == "SCORING"
    assert scoring["status"] == "CREATED"
    assert scoring["metadata"]["deploymentId"] == deployment["id"]
    job = world.job(scoring["id"])
    assert 20 * 0.85 <= job.ends_at - job.created_at <= 120 * 1.15
    clock.advance(120 * 1.15)
    by_id = await client.get(f"/api/jobs/{scoring['id']}", params={"projection": "expandJob"})
    assert by_id.json()["status"] == "COMPLETED"
    stats = (await client.get(STATS_URL)).json()
    assert stats["scoring_jobs"] == 1
    assert stats["jobs_by_type"] == {
        "TRAINING": 1,
        "EVALUATION": 1,
        "DEPLOYMENT": 1,
        "RETIREMENT": 0,
    }
    assert stats["jobs_total"] == 3
    assert stats["max_jobs_per_model_and_type"] == 1
    records = (await client.get(JOBS_URL)).json()
    assert [r["type"] for r in records] == ["TRAINING", "EVALUATION", "DEPLOYMENT", "SCORING"]
    unknown = await client.get(
        "/api/jobs/search/findByDeploymentId", params={"deploymentId": world.project.id}
    )
    assert unknown.json()["_embedded"]["jobs"] == []


async def test_other_crons_start_no_scoring(client, clock, world):
    """A deployment scheduled otherwise ("@manual", a cron expression) scores nothing now."""
    tm_id = await approved(client, clock, world.models()[0].id)
    await finish(client, clock, await post(client, f"/api/trainedModels/{tm_id}/deploy", DEPLOY))
    assert world.stats()["scoring_jobs"] == 0


@pytest.mark.parametrize("wait", [0.0, 200.0], ids=["while scoring", "after scoring"])
async def test_retiring_while_scoring_is_accepted_and_counted(client, clock, world, wait):
    """A retire sent while the deployment's scoring job runs succeeds, and is counted."""
    tm_id, deploy = await once_deployed(client, clock, world)
    clock.advance(wait)
    deployment = world.deployment_by_job(deploy["id"])
    retire = await post(
        client, f"/api/trainedModels/{tm_id}/retire", {"deploymentId": deployment.id}
    )
    await finish(client, clock, retire)
    assert deployment.status == "RETIRED"
    assert world.stats()["retired_while_scoring"] == (1 if wait == 0.0 else 0)
    jobs = world.jobs_of_deployment(deployment.id)
    assert [j.type for j in jobs] == ["SCORING", "RETIREMENT"]


@pytest.mark.parametrize("settings", [behaving(job_history=False, archived_models=0)])
async def test_a_fresh_project_has_no_history(client, world):
    """job_history off: the job list starts empty; archived_models 0: nothing archived."""
    assert (await client.get("/api/jobs")).json()["_embedded"]["jobs"] == []
    stats = (await client.get(STATS_URL)).json()
    assert stats["history_jobs"] == 0
    assert stats["archived_models"] == 0
    assert (await client.get("/api/models")).json()["page"]["totalElements"] == 5
