from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import httpx

    from fleet.sim import ManualClock

EXPAND = {"projection": "expandJob"}
LONGEST = {"TRAINING": 3600.0, "EVALUATION": 90.0, "DEPLOYMENT": 30.0, "RETIREMENT": 15.0}


async def job_status(client: httpx.AsyncClient, job_id: str) -> str:
    response = await client.get(f"/api/jobs/{job_id}", params=EXPAND)
    assert response.status_code == 200
    return str(response.json()["status"])


async def finish(client: httpx.AsyncClient, clock: ManualClock, job: dict[str, Any]) -> None:
    clock.advance(LONGEST[job["type"]])
    assert await job_status(client, job["id"]) == "COMPLETED"


async def deployed_version(client: httpx.AsyncClient, model_id: str) -> dict[str, Any]:
    response = await client.get(
        "/api/trainedModels/search/findByModelIdAndStatus",
        params={"modelId": model_id, "status": "DEPLOYED"},
    )
    versions = response.json()["_embedded"]["trainedModels"]
    assert len(versions) == 1
    return dict(versions[0])


async def assert_evaluated(client, tm_id: str, job_id: str, dataset_id: str) -> None:
    """Both event routes list the version's events, the newest an EVALUATED with metrics."""
    events = (await client.get(f"/api/trainedModels/{tm_id}/events")).json()
    evaluated = events["_embedded"]["trainedModelEvents"][-1]
    assert evaluated["status"] == "EVALUATED"
    assert evaluated["jobId"] == job_id
    assert evaluated["datasetId"] == dataset_id
    assert set(evaluated["metadata"]) == {"Accuracy", "Recall", "Precision", "f1-score"}
    found = await client.get(
        "/api/trainedModelEvents/search/findByTrainedModelId", params={"trainedModelId": tm_id}
    )
    assert found.json()["_embedded"] == events["_embedded"]


async def test_full_lifecycle_through_every_route(client, clock, world):
    """One model goes train → evaluate → approve → deploy → retire the old version over HTTP."""
    model = (await client.get("/api/models", params={"size": 1})).json()["_embedded"]["models"][0]
    assert (await client.get(f"/api/models/{model['id']}")).json()["name"] == "store-0001"
    old = await deployed_version(client, model["id"])
    project = (await client.get(f"/api/projects/{world.project.id}")).json()
    assert project["id"] == world.project.id

    train = (
        await client.post(
            f"/api/models/{model['id']}/train",
            json={
                "datasetId": world.train_dataset_id,
                "modelConfigurationOverrides": {"hyperParameters": {"eta": 0.2}},
                "automationOverrides": {"resources": {"memory": "1g", "cpu": "1"}},
            },
        )
    ).json()
    assert train["type"] == "TRAINING"
    assert "status" not in train
    tm_id = train["metadata"]["trainedModel"]["id"]
    assert train["trainedModelId"] == tm_id
    assert train["metadata"]["trainingRequest"]["modelConfigurationOverrides"] == {
        "hyperParameters": {"eta": 0.2}
    }
    await finish(client, clock, train)
    assert (await client.get(f"/api/trainedModels/{tm_id}")).json()["status"] == "TRAINED"

    evaluate = (
        await client.post(
            f"/api/trainedModels/{tm_id}/evaluate", json={"datasetId": world.eval_dataset_id}
        )
    ).json()
    assert evaluate["type"] == "EVALUATION"
    await finish(client, clock, evaluate)
    await assert_evaluated(client, tm_id, evaluate["id"], world.eval_dataset_id)

    approved = (
        await client.post(f"/api/trainedModels/{tm_id}/approve", json={"comments": "LGTM"})
    ).json()
    assert approved["status"] == "APPROVED"
    assert approved["metadata"] == {"comments": "LGTM"}

    deploy = (
        await client.post(
            f"/api/trainedModels/{tm_id}/deploy",
            json={"engineType": "DOCKER_BATCH", "engineTypeConfig": {"engine": "python-batch"}},
        )
    ).json()
    by_job = {"jobId": deploy["id"]}
    pending = await client.get("/api/deployments/search/findByJobId", params=by_job)
    assert pending.status_code == 404
    await finish(client, clock, deploy)
    deployment = (await client.get("/api/deployments/search/findByJobId", params=by_job)).json()
    assert deployment["status"] == "DEPLOYED"
    assert deployment["deploymentJobId"] == deploy["id"]
    assert deployment["trainedModel"]["id"] == tm_id
    assert deployment["trainedModel"]["modelId"] == model["id"]
    of_version = await client.get(
        "/api/deployments/search/findByStatusAndTrainedModelId",
        params={"status": "DEPLOYED", "trainedModelId": tm_id, "projection": "expandDeployment"},
    )
    assert [d["id"] for d in of_version.json()["_embedded"]["deployments"]] == [deployment["id"]]

    old_deployments = await client.get(
        "/api/deployments/search/findByStatusAndTrainedModelId",
        params={"status": "DEPLOYED", "trainedModelId": old["id"]},
    )
    old_deployment = old_deployments.json()["_embedded"]["deployments"][0]
    retire = (
        await client.post(
            f"/api/trainedModels/{old['id']}/retire", json={"deploymentId": old_deployment["id"]}
        )
    ).json()
    assert retire["type"] == "RETIREMENT"
    await finish(client, clock, retire)
    assert (await client.get(f"/api/trainedModels/{old['id']}")).json()["status"] == "RETIRED"
    assert (await deployed_version(client, model["id"]))["id"] == tm_id
    active = (await client.get("/api/deployments/search/findActive", params={"size": 100})).json()[
        "_embedded"
    ]["deployments"]
    assert deployment["id"] in {d["id"] for d in active}
    assert old_deployment["id"] not in {d["id"] for d in active}
    assert len(active) == world.settings.models


async def test_job_status_moves_through_queue_phases(client, clock, world):
    """A job reads CREATED, SCHEDULED, ASSIGNED, RUNNING over its duration, then COMPLETED."""
    model_id = world.models()[0].id
    start = clock.now()
    job = (await client.post(f"/api/models/{model_id}/train", json={})).json()
    duration = world.duration(model_id, "TRAINING", 1)
    seen = []
    for fraction in (0.0, 0.02, 0.035, 0.5, 0.999, 1.0):
        clock.advance(start + duration * fraction - clock.now())
        seen.append(await job_status(client, job["id"]))
    assert seen == ["CREATED", "SCHEDULED", "ASSIGNED", "RUNNING", "RUNNING", "COMPLETED"]
    done = (await client.get(f"/api/jobs/{job['id']}", params=EXPAND)).json()
    assert done["updatedAt"] > done["createdAt"]
    plain = (await client.get(f"/api/jobs/{job['id']}")).json()
    assert "status" not in plain


async def test_retiring_one_of_two_deployments_keeps_the_version_deployed(client, clock, world):
    """A version is RETIRED only when its last active deployment is retired."""
    model_id = world.models()[0].id
    train = (await client.post(f"/api/models/{model_id}/train", json={})).json()
    tm_id = train["trainedModelId"]
    await finish(client, clock, train)
    await finish(
        client, clock, (await client.post(f"/api/trainedModels/{tm_id}/evaluate", json={})).json()
    )
    await client.post(f"/api/trainedModels/{tm_id}/approve", json={"comments": "ok"})
    # Two deploy POSTs while the version is still APPROVED give it two deployments.
    body = {"engineType": "DOCKER_BATCH"}
    jobs = [
        (await client.post(f"/api/trainedModels/{tm_id}/deploy", json=body)).json()
        for _ in range(2)
    ]
    clock.advance(30)
    deployments = [
        (await client.get("/api/deployments/search/findByJobId", params={"jobId": j["id"]})).json()[
            "id"
        ]
        for j in jobs
    ]
    for n, deployment_id in enumerate(deployments):
        job = await client.post(
            f"/api/trainedModels/{tm_id}/retire", json={"deploymentId": deployment_id}
        )
        await finish(client, clock, job.json())
        status = (await client.get(f"/api/trainedModels/{tm_id}")).json()["status"]
        assert status == ("DEPLOYED" if n == 0 else "RETIRED")


async def test_vmo_project_header_is_accepted(client, world):
    """VMO-Project-ID is accepted in place of AOA-Project-ID."""
    del client.headers["AOA-Project-ID"]
    response = await client.get("/api/models", headers={"VMO-Project-ID": world.project.id})
    assert response.status_code == 200
