from __future__ import annotations

import uuid

import pytest
from sim_support import EVALUATE, LAG, TRAIN, behaving

UNKNOWN = str(uuid.UUID(int=1))


def first_model(world) -> str:
    return str(world.models()[0].id)


async def trained(client, clock, world) -> str:
    """A fresh version of the first model whose training has completed."""
    job = (await client.post(f"/api/models/{first_model(world)}/train", json=TRAIN)).json()
    clock.advance(3600)
    return str(job["trainedModelId"])


async def evaluated(client, clock, world) -> str:
    tm_id = await trained(client, clock, world)
    await client.post(f"/api/trainedModels/{tm_id}/evaluate", json=EVALUATE)
    clock.advance(90 + LAG)
    return tm_id


def assert_spring_error(response, status: int, message_part: str) -> None:
    assert response.status_code == status
    body = response.json()
    assert set(body) == {"timestamp", "status", "error", "message", "path"}
    assert body["status"] == status
    assert body["path"] == response.request.url.path
    assert message_part in body["message"]


@pytest.mark.parametrize(
    "authorization", [None, "Bearer wrong", "fleet-demo-token", "Basic fleet-demo-token", "Bearer"]
)
async def test_missing_or_wrong_token_is_401(client, authorization):
    """A request without the right bearer token is refused with 401 and a Spring body."""
    del client.headers["Authorization"]
    headers = {} if authorization is None else {"Authorization": authorization}
    response = await client.get("/api/models", headers=headers)
    assert_spring_error(response, 401, "authentication")
    assert response.headers["WWW-Authenticate"] == "Bearer"


async def test_missing_project_header_is_400(client):
    """Without AOA-Project-ID the request is a 400 naming the header."""
    del client.headers["AOA-Project-ID"]
    response = await client.get("/api/models")
    assert_spring_error(response, 400, "Required request header 'AOA-Project-ID' is not present")


async def test_foreign_project_is_403(client):
    """A project id that is not the emulator's is a 403."""
    response = await client.get("/api/models", headers={"AOA-Project-ID": UNKNOWN})
    assert_spring_error(response, 403, f"User is not a member of project {UNKNOWN}")


@pytest.mark.parametrize(
    "path",
    [
        f"/api/models/{UNKNOWN}",
        f"/api/jobs/{UNKNOWN}",
        f"/api/trainedModels/{UNKNOWN}",
        f"/api/trainedModels/{UNKNOWN}/events",
        f"/api/projects/{UNKNOWN}",
        "/api/jobs/search/findByColour",
        "/api/models/search/findByNothing",
        f"/api/deployments/search/findByJobId?jobId={UNKNOWN}",
    ],
)
async def test_unknown_ids_and_search_methods_are_404_without_a_body(client, path):
    """Spring Data REST answers an unknown entity or search method with an empty 404."""
    response = await client.get(path)
    assert response.status_code == 404
    assert response.content == b""


async def test_unrouted_paths_are_404_with_a_spring_body(client):
    """A path outside the repositories gets Spring Boot's JSON error body."""
    assert_spring_error(await client.get("/api/nothing/here"), 404, "")


async def test_unknown_id_in_post_is_404(client):
    """Training an unknown model is a 404 with Spring Boot's body, and creates nothing."""
    response = await client.post(f"/api/models/{UNKNOWN}/train", json=TRAIN)
    assert_spring_error(response, 404, UNKNOWN)


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/api/jobs/not-a-uuid", {}),
        ("/api/models/42", {}),
        ("/api/deployments/search/findByJobId", {"jobId": "nope"}),
        ("/api/deployments/search/findByJobId", {}),
        ("/api/trainedModels/search/findByModelIdAndStatus", {"modelId": UNKNOWN}),
        ("/api/jobs/search/findByDeploymentId", {}),
        ("/api/models/search/findByArchived", {}),
        ("/api/models/search/findByArchived", {"archived": "maybe"}),
    ],
)
async def test_malformed_requests_are_400(client, path, params):
    """Non-UUID ids and missing or unreadable finder parameters are 400s."""
    assert_spring_error(await client.get(path, params=params), 400, "")


async def test_finders_of_unknown_ids_are_empty_not_404(client):
    """Finders answer an empty page for ids they do not know, as Spring Data does."""
    response = await client.get(
        "/api/trainedModels/search/findByModelIdAndStatus",
        params={"modelId": UNKNOWN, "status": "DEPLOYED"},
    )
    assert response.status_code == 200
    assert response.json()["_embedded"]["trainedModels"] == []
    assert response.json()["page"]["totalElements"] == 0


async def test_evaluating_before_training_completes_is_400(client, world):
    """A version whose training job has not completed cannot be evaluated."""
    job = (await client.post(f"/api/models/{first_model(world)}/train", json=TRAIN)).json()
    path = f"/api/trainedModels/{job['trainedModelId']}/evaluate"
    response = await client.post(path, json=EVALUATE)
    assert_spring_error(response, 400, "training has not completed")


async def test_approving_before_evaluation_is_400(client, clock, world):
    """A version with no EVALUATED event cannot be approved or rejected."""
    tm_id = await trained(client, clock, world)
    for action in ("approve", "reject"):
        response = await client.post(f"/api/trainedModels/{tm_id}/{action}", json={})
        assert_spring_error(response, 400, "must be EVALUATED")


async def test_deciding_twice_is_400(client, clock, world):
    """Approve or reject after an approval is refused."""
    tm_id = await evaluated(client, clock, world)
    first = await client.post(f"/api/trainedModels/{tm_id}/approve", json={"comments": "TEdUTQ=="})
    assert first.json()["metadata"] == {"comments": "TEdUTQ=="}
    for action in ("approve", "reject"):
        response = await client.post(f"/api/trainedModels/{tm_id}/{action}", json={})
        assert_spring_error(response, 400, "already APPROVED")


async def test_deploying_an_unapproved_version_is_400(client, clock, world):
    """Only an APPROVED version can be deployed."""
    tm_id = await evaluated(client, clock, world)
    response = await client.post(
        f"/api/trainedModels/{tm_id}/deploy", json={"engineType": "DOCKER_BATCH"}
    )
    assert_spring_error(response, 400, "only an APPROVED version can be deployed")


async def test_deploy_without_engine_type_is_400(client, clock, world):
    """A deploy request must name its engineType."""
    tm_id = await evaluated(client, clock, world)
    await client.post(f"/api/trainedModels/{tm_id}/approve", json={"comments": "ok"})
    response = await client.post(f"/api/trainedModels/{tm_id}/deploy", json={})
    assert_spring_error(response, 400, "engineType")


async def test_retiring_a_deployment_of_another_version_is_400(client, world):
    """retire needs an active deployment of that very version."""
    mine, other = (world.trained_models_of(m.id)[0] for m in world.models()[:2])
    path = f"/api/trainedModels/{mine.id}/retire"
    for body in ({"deploymentId": other.deployments[0].id}, {"deploymentId": UNKNOWN}):
        assert_spring_error(await client.post(path, json=body), 400, "not a deployment of")
    assert_spring_error(await client.post(path, json={}), 400, "deploymentId")


async def test_retiring_a_retired_deployment_is_400(client, clock, world):
    """A deployment that is already retired cannot be retired again."""
    tm = world.trained_models_of(first_model(world))[0]
    body = {"deploymentId": tm.deployments[0].id}
    await client.post(f"/api/trainedModels/{tm.id}/retire", json=body)
    clock.advance(15)
    response = await client.post(f"/api/trainedModels/{tm.id}/retire", json=body)
    assert_spring_error(response, 400, "is not active")


async def test_malformed_json_body_is_400(client, world):
    """A body that is not a JSON object is refused."""
    path = f"/api/models/{first_model(world)}/train"
    for content in (b"{not json", b"[1, 2]"):
        response = await client.post(path, content=content)
        assert_spring_error(response, 400, "JSON parse error")
    assert world.stats()["jobs_total"] == 0


async def test_bearer_scheme_is_case_insensitive(client):
    """`bearer <token>` is as good as `Bearer <token>`."""
    token = client.headers["Authorization"].split(" ", 1)[1]
    response = await client.get("/api/models", headers={"Authorization": f"bearer {token}"})
    assert response.status_code == 200


async def test_wrong_method_is_405_with_spring_body(client, world):
    """A known path with the wrong method is a 405 that still carries the Spring body."""
    response = await client.delete(f"/api/models/{first_model(world)}")
    assert_spring_error(response, 405, "DELETE")
    assert "GET" in response.headers["Allow"]


async def test_required_fields_are_named_in_spring_validation_messages(client, clock, world):
    """Missing datasetId, engineType and deploymentId are 400s naming the field."""
    version = world.trained_models_of(first_model(world))[0]
    refusals = [
        (f"/api/models/{first_model(world)}/train", "datasetId"),
        (f"/api/trainedModels/{version.id}/evaluate", "datasetId"),
        (f"/api/trainedModels/{version.id}/deploy", "engineType"),
        (f"/api/trainedModels/{version.id}/retire", "deploymentId"),
    ]
    for path, field in refusals:
        response = await client.post(path, json={"comments": "no"})
        assert_spring_error(response, 400, f"Field '{field}': must not be null")
        assert "Validation failed for object=" in response.json()["message"]
    assert world.stats()["jobs_total"] == 0


async def test_archived_models_refuse_training_and_their_versions_every_step(client, world):
    """An archived model cannot be trained, nor its version evaluated, approved or deployed."""
    (archived, _) = world.archived_models()
    (version,) = world.trained_models_of(archived.id)
    response = await client.post(f"/api/models/{archived.id}/train", json=TRAIN)
    assert_spring_error(response, 400, f"Model {archived.id} is archived")
    for step, body in (("evaluate", EVALUATE), ("approve", {}), ("deploy", {"engineType": "X"})):
        response = await client.post(f"/api/trainedModels/{version.id}/{step}", json=body)
        assert_spring_error(response, 400, "is archived")
    assert world.stats()["jobs_total"] == 0


@pytest.mark.parametrize("settings", [behaving(models=20, archived_versions_rate=1.0)])
async def test_archived_versions_refuse_evaluation(client, world):
    """A version archived after training cannot be evaluated; its model can still train."""
    model_id = first_model(world)
    newer = world.trained_models_of(model_id)[-1]
    assert newer.archived
    response = await client.post(f"/api/trainedModels/{newer.id}/evaluate", json=EVALUATE)
    assert_spring_error(response, 400, f"Trained model {newer.id} is archived")
    assert (await client.post(f"/api/models/{model_id}/train", json=TRAIN)).status_code == 200
