from __future__ import annotations

import email.utils
from typing import Any

import pytest
from sim_support import (
    DEPLOY,
    EVALUATE,
    TRAIN,
    approved,
    behaving,
    finish,
    job_status,
    optimistic,
    post,
)

ACTIVE = "/api/deployments/search/findActive"
OF_VERSION = "/api/deployments/search/findByStatusAndTrainedModelId"


async def active_deployments(client, model_id: str) -> list[dict[str, Any]]:
    """The model's active deployments, read from findActive as the truth."""
    body = (await client.get(ACTIVE, params={"size": 1000})).json()
    return [d for d in body["_embedded"]["deployments"] if d["trainedModel"]["modelId"] == model_id]


async def version_status(client, tm_id: str) -> str:
    return str((await client.get(f"/api/trainedModels/{tm_id}")).json()["status"])


async def assert_evaluated(client, tm_id: str, job_id: str, dataset_id: str) -> None:
    """Both event routes list the version's events, the newest an EVALUATED with metrics."""
    events = (await client.get(f"/api/trainedModels/{tm_id}/events")).json()
    assert "page" not in events  # an association resource is not paged
    evaluated = events["_embedded"]["trainedModelEvents"][-1]
    assert evaluated["status"] == "EVALUATED"
    assert evaluated["jobId"] == job_id
    assert evaluated["datasetId"] == dataset_id
    assert set(evaluated["metadata"]) == {"Accuracy", "Recall", "Precision", "f1-score"}
    found = await client.get(
        "/api/trainedModelEvents/search/findByTrainedModelId", params={"trainedModelId": tm_id}
    )
    assert found.json()["_embedded"] == events["_embedded"]
    assert found.json()["page"]["totalElements"] == len(events["_embedded"]["trainedModelEvents"])


@pytest.mark.parametrize("settings", [behaving(), optimistic()], ids=["default", "optimistic"])
async def test_full_lifecycle_through_every_route(client, clock, world):
    """One model goes train → evaluate → approve → deploy → retire the old version over HTTP."""
    deployed_status = "DEPLOYED" if world.behaviour.deployed_version_status else "APPROVED"
    model = (await client.get("/api/models", params={"size": 1})).json()["_embedded"]["models"][0]
    assert (await client.get(f"/api/models/{model['id']}")).json()["name"] == "store-0001"
    (old_deployment,) = await active_deployments(client, model["id"])
    old_id = old_deployment["trainedModel"]["id"]
    assert await version_status(client, old_id) == deployed_status
    project = (await client.get(f"/api/projects/{world.project.id}")).json()
    assert project["id"] == world.project.id

    train = await post(
        client,
        f"/api/models/{model['id']}/train",
        {
            "datasetId": world.train_dataset_id,
            "modelConfigurationOverrides": {"hyperParameters": {"eta": 0.2}},
            "automationOverrides": {"resources": {"memory": "1g", "cpu": "1"}},
        },
    )
    assert train["type"] == "TRAINING"
    assert "status" not in train
    tm_id = train["metadata"]["trainedModel"]["id"]
    assert train["trainedModelId"] == tm_id
    assert train["metadata"]["trainingRequest"]["modelConfigurationOverrides"] == {
        "hyperParameters": {"eta": 0.2}
    }
    await finish(client, clock, train)
    assert await version_status(client, tm_id) == "TRAINED"

    evaluate = await post(
        client, f"/api/trainedModels/{tm_id}/evaluate", {"datasetId": world.eval_dataset_id}
    )
    assert evaluate["type"] == "EVALUATION"
    await finish(client, clock, evaluate)
    await assert_evaluated(client, tm_id, evaluate["id"], world.eval_dataset_id)

    approval = await post(client, f"/api/trainedModels/{tm_id}/approve", {"comments": "LGTM"})
    assert approval["status"] == "APPROVED"
    assert approval["metadata"] == {"comments": "LGTM"}

    deploy = await post(
        client,
        f"/api/trainedModels/{tm_id}/deploy",
        {"engineType": "DOCKER_BATCH", "engineTypeConfig": {"engine": "python-batch"}},
    )
    by_job = {"jobId": deploy["id"]}
    pending = await client.get("/api/deployments/search/findByJobId", params=by_job)
    assert pending.status_code == 404
    await finish(client, clock, deploy)
    deployment = (await client.get("/api/deployments/search/findByJobId", params=by_job)).json()
    assert deployment["status"] == "DEPLOYED"
    assert deployment["deploymentJobId"] == deploy["id"]
    assert deployment["trainedModel"]["id"] == tm_id
    assert deployment["trainedModel"]["modelId"] == model["id"]
    assert await version_status(client, tm_id) == deployed_status
    of_version = await client.get(
        OF_VERSION,
        params={"status": "DEPLOYED", "trainedModelId": tm_id, "projection": "expandDeployment"},
    )
    assert [d["id"] for d in of_version.json()["_embedded"]["deployments"]] == [deployment["id"]]

    retire = await post(
        client, f"/api/trainedModels/{old_id}/retire", {"deploymentId": old_deployment["id"]}
    )
    assert retire["type"] == "RETIREMENT"
    await finish(client, clock, retire)
    retired_status = "RETIRED" if world.behaviour.deployed_version_status else "APPROVED"
    assert await version_status(client, old_id) == retired_status
    assert [d["id"] for d in await active_deployments(client, model["id"])] == [deployment["id"]]
    assert len(
        (await client.get(ACTIVE, params={"size": 100})).json()["_embedded"]["deployments"]
    ) == (world.settings.models)


@pytest.mark.parametrize("settings", [behaving(), optimistic()], ids=["default", "optimistic"])
async def test_in_production_is_found_by_status_only_when_versions_read_deployed(client, world):
    """findByModelIdAndStatus(DEPLOYED) finds last night's version only with the switch on."""
    model_id = world.models()[0].id
    found = await client.get(
        "/api/trainedModels/search/findByModelIdAndStatus",
        params={"modelId": model_id, "status": "DEPLOYED"},
    )
    versions = found.json()["_embedded"]["trainedModels"]
    assert len(versions) == (1 if world.behaviour.deployed_version_status else 0)


async def test_job_status_moves_through_queue_phases(client, clock, world):
    """A job reads CREATED, SCHEDULED, ASSIGNED, RUNNING over its duration, then COMPLETED."""
    model_id = world.models()[0].id
    start = clock.now()
    job = await post(client, f"/api/models/{model_id}/train", TRAIN)
    duration = world.duration(model_id, "TRAINING", 1)
    seen = []
    for fraction in (0.0, 0.02, 0.035, 0.5, 0.999, 1.0):
        clock.advance(start + duration * fraction - clock.now())
        seen.append(await job_status(client, job["id"]))
    assert seen == ["CREATED", "SCHEDULED", "ASSIGNED", "RUNNING", "RUNNING", "COMPLETED"]
    plain = (await client.get(f"/api/jobs/{job['id']}")).json()
    assert "status" not in plain


@pytest.mark.parametrize("settings", [behaving(), optimistic()], ids=["default", "optimistic"])
async def test_retiring_one_of_two_deployments_keeps_the_version_in_production(
    client, clock, world
):
    """The deployments tell what runs; a version reads RETIRED (if at all) after its last one."""
    tm_id = await approved(client, clock, world.models()[0].id)
    # Two deploy POSTs while the version is still APPROVED give it two deployments.
    jobs = [await post(client, f"/api/trainedModels/{tm_id}/deploy", DEPLOY) for _ in range(2)]
    clock.advance(30)
    deployments = [
        (await client.get("/api/deployments/search/findByJobId", params={"jobId": j["id"]})).json()
        for j in jobs
    ]
    for n, deployment in enumerate(deployments):
        job = await post(
            client, f"/api/trainedModels/{tm_id}/retire", {"deploymentId": deployment["id"]}
        )
        await finish(client, clock, job)
        active = await client.get(
            OF_VERSION, params={"status": "DEPLOYED", "trainedModelId": tm_id}
        )
        assert len(active.json()["_embedded"]["deployments"]) == 1 - n
        if world.behaviour.deployed_version_status:
            assert await version_status(client, tm_id) == ("DEPLOYED" if n == 0 else "RETIRED")
        else:
            assert await version_status(client, tm_id) == "APPROVED"
    events = (await client.get(f"/api/trainedModels/{tm_id}/events")).json()
    statuses = [e["status"] for e in events["_embedded"]["trainedModelEvents"]]
    assert statuses[-3:] == ["DEPLOYED", "DEPLOYED", "RETIRED"]


async def test_vmo_project_header_is_accepted(client, world):
    """VMO-Project-ID is accepted in place of AOA-Project-ID."""
    del client.headers["AOA-Project-ID"]
    response = await client.get("/api/models", headers={"VMO-Project-ID": world.project.id})
    assert response.status_code == 200


async def test_evaluation_and_train_need_a_dataset(client, world):
    """train and evaluate without datasetId are refused with 400, as the official client does."""
    model = world.models()[0]
    (version,) = [v for v in world.trained_models_of(model.id) if not v.archived]
    for path in (f"/api/models/{model.id}/train", f"/api/trainedModels/{version.id}/evaluate"):
        for body in ({}, {"datasetId": ""}, {"datasetId": None}):
            response = await client.post(path, json=body)
            assert response.status_code == 400
            assert "datasetId" in response.json()["message"]
    assert world.stats()["jobs_total"] == 0
    ok = await client.post(f"/api/trainedModels/{version.id}/evaluate", json=EVALUATE)
    assert ok.status_code == 200


async def test_every_answer_is_dated_by_the_services_own_clock(client, clock, world):
    """`Date` comes from the clock that stamps `createdAt` (sped up or not), as a real
    server's does: fleet stamps its intents with it."""
    clock.advance(86_400.0)  # a day ahead of this machine's clock
    answer = await client.get("/api/models", params={"size": 1})
    dated = email.utils.parsedate_to_datetime(answer.headers["date"]).timestamp()
    assert int(world.now()) - 1 <= dated <= world.now()
    assert (await client.get("/api/jobs/00000000-0000-0000-0000-000000000000")).headers["date"]
