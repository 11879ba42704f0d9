"""The ModelOps client against respx: paths, bodies, headers, recorded responses and errors."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import respx

from fleet.breaker import Breaker
from fleet.client import ModelOpsClient
from fleet.errors import (
    AuthError,
    NotFound,
    OutcomeUnknown,
    PermanentApiError,
    ProtocolError,
    ServerUnavailable,
    TransientApiError,
)
from fleet.modelops import (
    Deployment,
    DeployRequest,
    EvaluateRequest,
    Event,
    Job,
    RemoteModel,
    TrainRequest,
    latest_metrics,
    metrics_of_job,
)
from fleet.retries import RetryPolicy
from fleet.session import MAX_BODY_BYTES
from support import InstantTime

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

FIXTURES = Path(__file__).parent / "fixtures"
BASE_URL = "https://mo.example/modelops/core/"  # the trailing slash is deliberate
API = "https://mo.example/modelops/core/api"
TOKEN = "tok-7f3a9c-must-never-leak"
PROJECT_ID = "419e5f05-b225-4b70-b075-6c309365d94f"
# Ids of the recorded fixtures.
MODEL_ID = "7eb0bc69-0b95-4ff7-ad32-d272e36c3a8b"
TRAINED_ID = "91875f3e-3d14-490d-8a27-3472a3af9731"
EVALUATION_JOB_ID = "1dbb0053-b766-49ec-ad4e-2f49016218db"
DEPLOYMENT_JOB_ID = "b71c3903-be94-4fb2-9b89-becaf6c2474a"
DATASET_ID = "010264e8-679f-434d-80fb-4a3f1000d45a"
CONNECTION_ID = "243bb498-2974-47ee-91c0-3965cb9d2fd5"
TEMPLATE_ID = "1e9a3c6a-1031-455b-afd0-8b1828d74239"
IMAGE = "artifacts.td.teradata.com/tdproduct-docker-snapshot/avmo/vmo-python-base:3.9.4"


def uid(n: int) -> str:
    """A readable, well-formed id: uid(1) == '00000000-0000-0000-0000-000000000001'."""
    return str(uuid.UUID(int=n))


JOB_ID = uid(1)
NEW_TRAINED_ID = uid(2)
DEPLOYMENT_ID = uid(3)


def recorded(name: str) -> dict[str, Any]:
    """A response body recorded from a real ModelOps server."""
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


def hal(collection: str, items: list[dict[str, Any]], *, number: int = 0, pages: int = 1) -> dict:
    """A Spring Data REST page of `items`."""
    page = {"size": 100, "totalElements": len(items), "totalPages": pages, "number": number}
    return {"_embedded": {collection: items}, "page": page}


def spring_error(status: int, error: str, message: str) -> dict[str, Any]:
    """Spring Boot's default error body."""
    return {
        "timestamp": "2025-07-03T21:57:42.399+00:00",
        "status": status,
        "error": error,
        "message": message,
        "path": "/api/jobs",
    }


def job(job_id: str = JOB_ID, **fields: Any) -> dict[str, Any]:
    return {"id": job_id, "createdAt": "2025-07-03T21:57:42.551+00:00", **fields}


def sent(route: respx.Route) -> httpx.Request:
    """The last request that reached `route`."""
    return route.calls.last.request


def sent_body(route: respx.Route) -> Any:
    return json.loads(sent(route).content)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


TRAIN = TrainRequest(
    dataset_id=DATASET_ID,
    dataset_connection_id=CONNECTION_ID,
    hyperparameters={"eta": 0.2, "max_depth": 6},
    resources={"memory": "2g", "cpu": "1"},
    docker_image=IMAGE,
)
EVALUATE = EvaluateRequest(
    dataset_id=DATASET_ID,
    dataset_connection_id=CONNECTION_ID,
    resources={"memory": "500m", "cpu": "0.5"},
    docker_image=None,
)
DEPLOY = DeployRequest(
    engine_type="IN_VANTAGE",
    engine="byom",
    docker_image=IMAGE,
    resources={"memory": "500m", "cpu": "0.5"},
    language="PMML",
    dataset_connection_id=CONNECTION_ID,
    dataset_template_id=TEMPLATE_ID,
    cron="@once",
    publish_only=False,
)


@pytest.fixture
def retry_attempts() -> int:
    """Sends of one call with the client's default retry policy (`api.retry_attempts`)."""
    return RetryPolicy().attempts


@pytest.fixture
async def api() -> AsyncIterator[ModelOpsClient]:
    async with ModelOpsClient(BASE_URL, PROJECT_ID, TOKEN, pacing=InstantTime().pacing()) as client:
        yield client


@pytest.fixture
async def lone_api(retry_attempts: int) -> AsyncIterator[ModelOpsClient]:
    """A client whose breaker takes more failures to open than one call makes: a failed
    connection is the server's failure, and five in a row would open the default one."""
    time = InstantTime()
    pacing = time.pacing(breaker=Breaker(threshold=retry_attempts + 1, clock=time.clock))
    async with ModelOpsClient(BASE_URL, PROJECT_ID, TOKEN, pacing=pacing) as client:
        yield client


# -- headers and URLs -----------------------------------------------------------------------


async def test_requests_carry_token_project_and_accept_headers(mock, api):
    """Every request sends the bearer token, the project id as AOA- and VMO-Project-ID, and HAL."""
    route = mock.get(f"{API}/projects/{PROJECT_ID}").respond(json=recorded("project.json"))

    await api.check_project()

    headers = sent(route).headers
    assert headers["Authorization"] == f"Bearer {TOKEN}"
    assert headers["AOA-Project-ID"] == PROJECT_ID
    assert headers["VMO-Project-ID"] == PROJECT_ID
    assert headers["Accept"] == "application/json, application/hal+json"


async def test_trailing_slash_of_the_base_url_is_stripped(mock, api):
    """A base URL ending in / gives /modelops/core/api/..., never a doubled slash."""
    route = mock.get(f"{API}/projects/{PROJECT_ID}").respond(json=recorded("project.json"))

    await api.check_project()

    assert sent(route).url.path == f"/modelops/core/api/projects/{PROJECT_ID}"


async def test_check_project_raises_not_found_for_an_unknown_project(mock, api):
    """check_project fails fast with NotFound when the project id is not on the server."""
    mock.get(f"{API}/projects/{PROJECT_ID}").respond(
        404, json=spring_error(404, "Not Found", "project not found")
    )

    with pytest.raises(NotFound):
        await api.check_project()


async def test_closing_twice_is_harmless():
    """aclose may be called again after the context manager closed the client."""
    async with ModelOpsClient(BASE_URL, PROJECT_ID, TOKEN) as client:
        pass

    await client.aclose()


# -- reads ----------------------------------------------------------------------------------


async def test_list_models_reads_every_page_up_to_total_pages(mock, api):
    """list_models asks for page 0, then 1, with a size, and stops at page.totalPages."""
    route = mock.get(f"{API}/models").mock(
        side_effect=[
            httpx.Response(200, json=hal("models", [recorded("model.json")], number=0, pages=2)),
            httpx.Response(200, json=hal("models", [{"id": uid(9), "name": "churn"}], pages=2)),
        ]
    )

    models = await api.list_models()

    assert models == [
        RemoteModel(id=MODEL_ID, name="PMML_Python_1330", archived=False, language="PMML"),
        RemoteModel(id=uid(9), name="churn"),
    ]
    assert [call.request.url.params["page"] for call in route.calls] == ["0", "1"]
    assert all(call.request.url.params["size"] for call in route.calls)


async def test_list_models_of_an_empty_project_is_empty(mock, api):
    """A page without _embedded (Spring omits it when empty) means no models."""
    route = mock.get(f"{API}/models").respond(json={"page": {"totalPages": 0, "number": 0}})

    assert await api.list_models() == []
    assert route.call_count == 1


async def test_get_job_asks_for_the_expand_job_projection(mock, api):
    """get_job GETs /api/jobs/{id}?projection=expandJob and reads status, type, ids and time."""
    body = recorded("job-deployment.json") | {"status": "COMPLETED"}
    route = mock.get(f"{API}/jobs/{DEPLOYMENT_JOB_ID}").respond(json=body)

    got = await api.get_job(DEPLOYMENT_JOB_ID)

    assert sent(route).url.params["projection"] == "expandJob"
    assert got == Job(
        id=DEPLOYMENT_JOB_ID,
        status="COMPLETED",
        type="DEPLOYMENT",
        model_id=MODEL_ID,
        trained_model_id=TRAINED_ID,
        created_at=datetime(2025, 7, 3, 21, 57, 42, 551000, tzinfo=UTC),
    )
    assert got.terminal


@pytest.mark.parametrize("status", ["COMPLETED", "ERROR", "CANCELLED"])
def test_completed_error_and_cancelled_jobs_are_terminal(status):
    """A job in COMPLETED, ERROR or CANCELLED is finished."""
    assert Job(JOB_ID, status, None, None, None, None).terminal


@pytest.mark.parametrize("status", ["CREATED", "RUNNING", "SOME_NEW_STATUS", None])
def test_any_other_job_status_is_not_terminal(status):
    """Every other status, including strings fleet has never seen, means keep polling."""
    assert not Job(JOB_ID, status, None, None, None, None).terminal


async def test_recent_jobs_sorts_newest_first_and_stops_within_a_page(mock, api):
    """recent_jobs sorts by createdAt,desc with expandJob and reads no further page than needed."""
    jobs = [job(uid(n)) for n in range(1, 4)]
    route = mock.get(f"{API}/jobs").respond(json=hal("jobs", jobs, pages=5))

    got = [j.id async for j in api.recent_jobs(2)]

    assert got == [uid(1), uid(2)]
    assert route.call_count == 1
    params = sent(route).url.params
    assert params["sort"] == "createdAt,desc"
    assert params["projection"] == "expandJob"


async def test_recent_jobs_continues_onto_the_next_page_until_the_limit(mock, api):
    """recent_jobs reads page 1 when page 0 holds fewer than `limit` jobs, then stops."""
    route = mock.get(f"{API}/jobs").mock(
        side_effect=[
            httpx.Response(200, json=hal("jobs", [job(uid(1)), job(uid(2))], pages=5)),
            httpx.Response(200, json=hal("jobs", [job(uid(3)), job(uid(4))], number=1, pages=5)),
        ]
    )

    got = [j.id async for j in api.recent_jobs(3)]

    assert got == [uid(1), uid(2), uid(3)]
    assert [call.request.url.params["page"] for call in route.calls] == ["0", "1"]


async def test_events_parse_the_recorded_events_and_their_metrics_stay_strings(mock, api):
    """events GETs /api/trainedModels/{id}/events; the recorded EVALUATED metrics are strings."""
    recorded_events = recorded("job-deployment.json")["metadata"]["trainedModel"]["events"]
    route = mock.get(f"{API}/trainedModels/{TRAINED_ID}/events").respond(
        json=hal("trainedModelEvents", recorded_events)
    )

    events = await api.events(TRAINED_ID)

    assert route.call_count == 1
    assert [e.status for e in events] == ["APPROVED", "EVALUATED", "IMPORTED"]
    assert {e.trained_model_id for e in events} == {TRAINED_ID}
    assert latest_metrics(events) == {
        "Accuracy": "0.94",
        "Recall": "0.93",
        "Precision": "0.94",
        "f1-score": "0.93",
    }


def test_latest_metrics_takes_the_newest_evaluation():
    """With two EVALUATED events, latest_metrics returns the metrics of the later one."""
    old = Event(uid(1), TRAINED_ID, "EVALUATED", at("2025-07-01T00:00:00+00:00"), {"AUC": "0.7"})
    new = Event(uid(2), TRAINED_ID, "EVALUATED", at("2025-07-02T00:00:00+00:00"), {"AUC": "0.8"})
    approved = Event(uid(3), TRAINED_ID, "APPROVED", at("2025-07-03T00:00:00+00:00"), {})

    assert latest_metrics([new, approved, old]) == {"AUC": "0.8"}


def test_latest_metrics_is_none_before_any_evaluation():
    """A version that was never evaluated has no metrics."""
    imported = Event(uid(1), TRAINED_ID, "IMPORTED", None, {})

    assert latest_metrics([imported]) is None
    assert latest_metrics([]) is None


async def test_deployment_for_job_reads_the_bare_finder_object(mock, api):
    """deployment_for_job GETs findByJobId?jobId= and reads a bare (non-HAL) deployment."""
    body = {
        "id": DEPLOYMENT_ID,
        "status": "DEPLOYED",
        "engineType": "IN_VANTAGE",
        "trainedModel": {"id": TRAINED_ID, "modelId": MODEL_ID},
    }
    route = mock.get(f"{API}/deployments/search/findByJobId").respond(json=body)

    got = await api.deployment_for_job(DEPLOYMENT_JOB_ID)

    assert sent(route).url.params["jobId"] == DEPLOYMENT_JOB_ID
    assert got == Deployment(
        id=DEPLOYMENT_ID, status="DEPLOYED", trained_model_id=TRAINED_ID, model_id=MODEL_ID
    )


async def test_active_deployments_reads_find_active_with_the_expand_projection(mock, api):
    """active_deployments lists every active deployment of the project, with its version's
    model (`expandDeployment`)."""
    deployment = {
        "id": DEPLOYMENT_ID,
        "status": "DEPLOYED",
        "createdAt": "2025-07-03T21:57:42.551+00:00",
        "trainedModel": {"id": TRAINED_ID, "modelId": MODEL_ID},
    }
    route = mock.get(f"{API}/deployments/search/findActive").respond(
        json=hal("deployments", [deployment])
    )

    got = await api.active_deployments()

    assert got == [
        Deployment(
            id=DEPLOYMENT_ID,
            status="DEPLOYED",
            trained_model_id=TRAINED_ID,
            model_id=MODEL_ID,
            created_at=at("2025-07-03T21:57:42.551+00:00"),
        )
    ]
    assert sent(route).url.params["projection"] == "expandDeployment"


async def test_deployments_of_version_asks_for_its_deployed_ones(mock, api):
    """The tutorial's call: findByStatusAndTrainedModelId with status DEPLOYED."""
    deployment = {"id": DEPLOYMENT_ID, "status": "DEPLOYED", "trainedModel": {"id": TRAINED_ID}}
    route = mock.get(f"{API}/deployments/search/findByStatusAndTrainedModelId").respond(
        json=hal("deployments", [deployment])
    )

    got = await api.deployments_of_version(TRAINED_ID)

    assert [d.id for d in got] == [DEPLOYMENT_ID]
    params = sent(route).url.params
    assert (params["status"], params["trainedModelId"]) == ("DEPLOYED", TRAINED_ID)
    assert params["projection"] == "expandDeployment"


async def test_versions_read_archived_status_and_the_job_that_made_them(mock, api):
    """findByModelId: each version with its status, archived flag and creating job."""
    recorded_version = recorded("job-evaluation.json")["metadata"]["trainedModel"]
    archived = {"id": uid(7), "modelId": MODEL_ID, "archived": True, "status": "TRAINED"}
    route = mock.get(f"{API}/trainedModels/search/findByModelId").respond(
        json=hal("trainedModels", [recorded_version, archived])
    )

    got = await api.versions(MODEL_ID)

    assert sent(route).url.params["modelId"] == MODEL_ID
    assert got[0].id == TRAINED_ID
    assert got[0].job_id == recorded_version["jobId"]
    assert not got[0].archived
    assert got[0].status is None  # an embedded version carries no status
    assert (got[1].archived, got[1].status) == (True, "TRAINED")


async def test_scoring_jobs_are_found_by_deployment(mock, api):
    """findByDeploymentId lists the jobs a deployment started, with their status."""
    route = mock.get(f"{API}/jobs/search/findByDeploymentId").respond(
        json=hal("jobs", [job(status="RUNNING", type="SCORING")])
    )

    got = await api.scoring_jobs(DEPLOYMENT_ID)

    assert [(j.id, j.status) for j in got] == [(JOB_ID, "RUNNING")]
    params = sent(route).url.params
    assert (params["deploymentId"], params["projection"]) == (DEPLOYMENT_ID, "expandJob")


EVALUATED = {"id": uid(5), "trainedModelId": TRAINED_ID, "status": "EVALUATED"}


@pytest.mark.parametrize(
    "answer",
    [
        {"_embedded": {"trainedModelEvents": [EVALUATED]}},
        [EVALUATED],
    ],
    ids=["hal-without-page", "bare-list"],
)
async def test_events_are_read_as_hal_or_as_a_bare_list(mock, api, answer):
    """An association resource answers HAL without a page block; some servers a bare list."""
    mock.get(f"{API}/trainedModels/{TRAINED_ID}/events").respond(json=answer)

    got = await api.events(TRAINED_ID)

    assert [(e.id, e.status) for e in got] == [(uid(5), "EVALUATED")]


async def test_events_fall_back_to_the_events_finder_on_404_for_the_rest_of_the_run(mock, api):
    """Without the association route, trainedModelEvents/search/findByTrainedModelId serves."""
    route = mock.get(f"{API}/trainedModels/{TRAINED_ID}/events").respond(404)
    event = {"id": uid(5), "trainedModelId": TRAINED_ID, "status": "EVALUATED", "jobId": JOB_ID}
    finder = mock.get(f"{API}/trainedModelEvents/search/findByTrainedModelId").respond(
        json=hal("trainedModelEvents", [event])
    )

    first = await api.events(TRAINED_ID)
    second = await api.events(TRAINED_ID)

    assert first == second
    assert first[0].job_id == JOB_ID
    assert route.call_count == 1
    assert finder.call_count == 2
    assert sent(finder).url.params["trainedModelId"] == TRAINED_ID


def test_metrics_of_job_take_only_that_evaluations_event():
    """Never another evaluation's metrics: the EVALUATED event must name the job."""
    day1, day2 = at("2025-07-01T00:00:00+00:00"), at("2025-07-02T00:00:00+00:00")
    mine = Event(uid(1), TRAINED_ID, "EVALUATED", day1, {"AUC": "0.7"}, JOB_ID)
    newer = Event(uid(2), TRAINED_ID, "EVALUATED", day2, {"AUC": "0.9"}, uid(8))

    assert metrics_of_job([newer, mine], JOB_ID) == {"AUC": "0.7"}
    assert metrics_of_job([newer], JOB_ID) is None


async def test_the_job_page_probe_is_sent_once_with_its_sort(mock, api):
    """One try, the sort as given, and the server's totalElements."""
    route = mock.get(f"{API}/jobs").respond(
        json=hal("jobs", [job(updatedAt="2025-07-03T21:57:42.551+00:00")])
    )

    jobs, total = await api.job_page("updatedAt,asc", 2)

    assert (len(jobs), total) == (1, 1)
    params = sent(route).url.params
    asked = (params["sort"], params["size"], params["projection"])
    assert asked == ("updatedAt,asc", "2", "expandJob")


async def test_a_failing_probe_is_not_retried(mock, api):
    """A batched look's probe gets one try: a 500 is reported, not retried."""
    route = mock.get(f"{API}/jobs").respond(500)

    with pytest.raises(TransientApiError):
        await api.job_page("updatedAt,desc", 2)
    assert route.call_count == 1


# -- writes ---------------------------------------------------------------------------------


async def test_train_posts_the_camel_case_request(mock, api):
    """train POSTs datasetId, datasetConnectionId, hyperParameters and automation overrides."""
    route = mock.post(f"{API}/models/{MODEL_ID}/train").respond(json=job(status="CREATED"))

    await api.train(MODEL_ID, TRAIN)

    assert sent(route).headers["Content-Type"] == "application/json"
    assert sent_body(route) == {
        "datasetId": DATASET_ID,
        "datasetConnectionId": CONNECTION_ID,
        "modelConfigurationOverrides": {"hyperParameters": {"eta": 0.2, "max_depth": 6}},
        "automationOverrides": {"resources": {"memory": "2g", "cpu": "1"}, "dockerImage": IMAGE},
    }


async def test_train_leaves_unset_settings_out_of_the_body(mock, api):
    """Nothing unset is sent: no null, no empty hyperparameters, no resources or image (the
    model's own automation settings apply)."""
    route = mock.post(f"{API}/models/{MODEL_ID}/train").respond(json=job())
    bare = TrainRequest(DATASET_ID, None, hyperparameters={}, resources={}, docker_image=None)

    await api.train(MODEL_ID, bare)

    assert sent_body(route) == {"datasetId": DATASET_ID}


async def test_deploy_in_vantage_sends_an_empty_image_when_none_is_set(mock, api):
    """As the recorded in-Vantage deployment does; no resources unless set."""
    route = mock.post(f"{API}/trainedModels/{TRAINED_ID}/deploy").respond(json=job())
    bare = DeployRequest("IN_VANTAGE", "byom", None, {}, "PMML", None, None, "@once", False)

    await api.deploy(TRAINED_ID, bare)

    assert sent_body(route)["engineTypeConfig"] == {"dockerImage": "", "engine": "byom"}


async def test_train_reads_the_new_version_from_metadata_trained_model(mock, api):
    """The trained model id of a train job comes from metadata.trainedModel.id."""
    body = job(
        status="CREATED",
        type="TRAINING",
        modelId=MODEL_ID,
        metadata={"trainedModel": {"id": NEW_TRAINED_ID, "modelId": MODEL_ID}},
    )
    mock.post(f"{API}/models/{MODEL_ID}/train").respond(json=body)

    got = await api.train(MODEL_ID, TRAIN)

    assert (got.id, got.status, got.type) == (JOB_ID, "CREATED", "TRAINING")
    assert got.trained_model_id == NEW_TRAINED_ID


async def test_evaluate_posts_to_the_version_and_parses_the_recorded_job(mock, api):
    """evaluate POSTs the datasets and resources; the recorded answer is an EVALUATION job."""
    route = mock.post(f"{API}/trainedModels/{TRAINED_ID}/evaluate").respond(
        json=recorded("job-evaluation.json")
    )

    got = await api.evaluate(TRAINED_ID, EVALUATE)

    assert sent_body(route) == {
        "datasetId": DATASET_ID,
        "datasetConnectionId": CONNECTION_ID,
        "automationOverrides": {"resources": {"memory": "500m", "cpu": "0.5"}},
    }
    # Recorded POST answers carry no status: it is only known after a poll.
    assert got == Job(
        id=EVALUATION_JOB_ID,
        status=None,
        type="EVALUATION",
        model_id=MODEL_ID,
        trained_model_id=TRAINED_ID,
        created_at=at("2025-07-03T21:54:13.370+00:00"),
    )


async def test_approve_posts_comments_and_parses_the_recorded_event(mock, api):
    """approve POSTs {"comments"} and the recorded answer is an APPROVED event, not a job."""
    route = mock.post(f"{API}/trainedModels/{TRAINED_ID}/approve").respond(
        json=recorded("event-approved.json")
    )

    got = await api.approve(TRAINED_ID, "LGTM")

    assert sent_body(route) == {"comments": "LGTM"}
    assert got == Event(
        id="b8eba6c4-a0e2-46d1-a73b-3f84570a5b0b",
        trained_model_id=TRAINED_ID,
        status="APPROVED",
        created_at=at("2025-07-03T21:57:42.399+00:00"),
        metadata={"comments": "LGTM"},
    )


async def test_reject_posts_comments_and_returns_the_rejected_event(mock, api):
    """reject POSTs {"comments"} to /reject and returns the REJECTED event."""
    body = recorded("event-approved.json") | {"status": "REJECTED", "metadata": {"comments": "no"}}
    route = mock.post(f"{API}/trainedModels/{TRAINED_ID}/reject").respond(json=body)

    got = await api.reject(TRAINED_ID, "no")

    assert sent_body(route) == {"comments": "no"}
    assert (got.status, got.trained_model_id) == ("REJECTED", TRAINED_ID)


async def test_deploy_posts_the_engine_config_and_parses_the_recorded_job(mock, api):
    """deploy POSTs the engine, resources, datasets and cron; the answer is a DEPLOYMENT job."""
    route = mock.post(f"{API}/trainedModels/{TRAINED_ID}/deploy").respond(
        json=recorded("job-deployment.json")
    )

    got = await api.deploy(TRAINED_ID, DEPLOY)

    assert sent_body(route) == {
        "engineType": "IN_VANTAGE",
        "engineTypeConfig": {
            "dockerImage": IMAGE,
            "engine": "byom",
            "resources": {"memory": "500m", "cpu": "0.5"},
        },
        "language": "PMML",
        "datasetConnectionId": CONNECTION_ID,
        "datasetTemplateId": TEMPLATE_ID,
        "cron": "@once",
        "publishOnly": False,
        "args": {},
    }
    assert (got.id, got.type, got.status) == (DEPLOYMENT_JOB_ID, "DEPLOYMENT", None)
    assert (got.model_id, got.trained_model_id) == (MODEL_ID, TRAINED_ID)


async def test_retire_posts_the_deployment_id(mock, api):
    """retire POSTs {"deploymentId"} to the version's /retire and returns the job."""
    body = job(type="RETIREMENT", modelId=MODEL_ID, trainedModelId=TRAINED_ID)
    route = mock.post(f"{API}/trainedModels/{TRAINED_ID}/retire").respond(json=body)

    got = await api.retire(TRAINED_ID, DEPLOYMENT_ID)

    assert sent_body(route) == {"deploymentId": DEPLOYMENT_ID}
    assert (got.id, got.type, got.trained_model_id) == (JOB_ID, "RETIREMENT", TRAINED_ID)


# -- errors: refused --------------------------------------------------------------------------


@pytest.mark.parametrize("status", [401, 403])
async def test_a_rejected_token_raises_auth_error_without_retrying(mock, api, status):
    """401 and 403 raise AuthError saying the token was rejected, after a single request."""
    route = mock.get(f"{API}/jobs/{JOB_ID}").respond(
        status, json=spring_error(status, "Unauthorized", "Full authentication is required")
    )

    with pytest.raises(AuthError, match="token rejected") as caught:
        await api.get_job(JOB_ID)

    assert caught.value.status == status
    assert route.call_count == 1


async def test_the_token_never_appears_in_an_error(mock, api):
    """Neither the message nor the repr of an AuthError (nor the client's repr) holds the token."""
    mock.get(f"{API}/jobs/{JOB_ID}").respond(
        401, json=spring_error(401, "Unauthorized", "Jwt expired at 2025-07-03T21:57:42Z")
    )

    with pytest.raises(AuthError) as caught:
        await api.get_job(JOB_ID)

    assert TOKEN not in str(caught.value)
    assert TOKEN not in repr(caught.value)
    assert TOKEN not in repr(api)


async def test_an_unknown_id_raises_not_found_with_the_server_message(mock, api):
    """404 raises NotFound carrying the status and the message of Spring's error body."""
    mock.get(f"{API}/jobs/{JOB_ID}").respond(
        404, json=spring_error(404, "Not Found", f"Job {JOB_ID} does not exist")
    )

    with pytest.raises(NotFound) as caught:
        await api.get_job(JOB_ID)

    assert caught.value.status == 404
    assert f"Job {JOB_ID} does not exist" in str(caught.value)


@pytest.mark.parametrize("status", [400, 422])
async def test_other_client_errors_are_permanent_and_not_retried(mock, api, status):
    """400 and 422 raise PermanentApiError with the status, after one request."""
    route = mock.post(f"{API}/trainedModels/{TRAINED_ID}/approve").respond(
        status, json=spring_error(status, "Bad Request", "trained model is already APPROVED")
    )

    with pytest.raises(PermanentApiError) as caught:
        await api.approve(TRAINED_ID, "LGTM")

    assert type(caught.value) is PermanentApiError
    assert caught.value.status == status
    assert "already APPROVED" in str(caught.value)
    assert route.call_count == 1


# -- errors: GETs are retried ---------------------------------------------------------------


async def test_a_get_answered_429_is_retried_and_then_succeeds(mock, api):
    """A GET refused with 429 and Retry-After is sent again and returns the next answer."""
    route = mock.get(f"{API}/jobs/{JOB_ID}").mock(
        side_effect=[
            httpx.Response(429, headers={"Retry-After": "2"}),
            httpx.Response(200, json=job(status="RUNNING")),
        ]
    )

    got = await api.get_job(JOB_ID)

    assert got.status == "RUNNING"
    assert route.call_count == 2


async def test_retry_after_is_kept_on_the_error_when_attempts_run_out(mock, api, retry_attempts):
    """A GET that keeps getting 429 raises TransientApiError with retry_after from the header."""
    route = mock.get(f"{API}/jobs/{JOB_ID}").respond(429, headers={"Retry-After": "2"})

    with pytest.raises(TransientApiError) as caught:
        await api.get_job(JOB_ID)

    assert (caught.value.status, caught.value.retry_after) == (429, 2.0)
    assert route.call_count == retry_attempts


@pytest.mark.parametrize("status", [500, 502, 503, 504])
async def test_a_get_failing_with_5xx_is_retried_then_transient(mock, api, retry_attempts, status):
    """A GET answered 5xx every time is tried each allowed attempt, then TransientApiError."""
    route = mock.get(f"{API}/jobs/{JOB_ID}").respond(status)

    with pytest.raises(TransientApiError) as caught:
        await api.get_job(JOB_ID)

    assert type(caught.value) is TransientApiError
    assert caught.value.status == status
    assert route.call_count == retry_attempts


@pytest.mark.parametrize(
    "failure",
    [httpx.ConnectError, httpx.ConnectTimeout, httpx.ReadTimeout, httpx.RemoteProtocolError],
)
async def test_a_get_without_an_answer_is_retried_then_transient(
    mock, lone_api, retry_attempts, failure
):
    """A GET that never gets an answer is retried, then raises TransientApiError (never unknown)."""
    route = mock.get(f"{API}/jobs/{JOB_ID}").mock(side_effect=failure)

    with pytest.raises(TransientApiError) as caught:
        await lone_api.get_job(JOB_ID)

    assert type(caught.value) is TransientApiError
    assert isinstance(caught.value.__cause__, failure)
    assert route.call_count == retry_attempts


# -- errors: POSTs are resent only when nothing can have been applied ------------------------


@pytest.mark.parametrize("status", [429, 503])
async def test_a_post_refused_with_429_or_503_is_resent(mock, api, status):
    """429 and 503 mean the server refused before acting, so the POST is sent again."""
    route = mock.post(f"{API}/trainedModels/{TRAINED_ID}/approve").mock(
        side_effect=[
            httpx.Response(status),
            httpx.Response(200, json=recorded("event-approved.json")),
        ]
    )

    got = await api.approve(TRAINED_ID, "LGTM")

    assert got.status == "APPROVED"
    assert route.call_count == 2


@pytest.mark.parametrize("status", [500, 502, 504])
async def test_a_post_failing_with_5xx_is_outcome_unknown_and_never_resent(mock, api, status):
    """A POST answered 500, 502 or 504 may have been applied: OutcomeUnknown after one send."""
    route = mock.post(f"{API}/models/{MODEL_ID}/train").respond(status)

    with pytest.raises(OutcomeUnknown) as caught:
        await api.train(MODEL_ID, TRAIN)

    assert caught.value.status == status
    assert route.call_count == 1


@pytest.mark.parametrize("failure", [httpx.ReadTimeout, httpx.RemoteProtocolError])
async def test_a_post_that_lost_its_answer_is_outcome_unknown_and_never_resent(mock, api, failure):
    """A POST sent without an answer back raises OutcomeUnknown after exactly one send."""
    route = mock.post(f"{API}/models/{MODEL_ID}/train").mock(side_effect=failure)

    with pytest.raises(OutcomeUnknown):
        await api.train(MODEL_ID, TRAIN)

    assert route.call_count == 1


async def test_a_post_that_could_not_connect_is_resent(mock, api):
    """A POST that never left the machine (connect error) is sent again."""
    route = mock.post(f"{API}/models/{MODEL_ID}/train").mock(
        side_effect=[httpx.ConnectError, httpx.Response(200, json=job())]
    )

    got = await api.train(MODEL_ID, TRAIN)

    assert got.id == JOB_ID
    assert route.call_count == 2


async def test_a_post_that_never_connects_is_transient_not_unknown(mock, lone_api, retry_attempts):
    """When every connect fails, the POST raises TransientApiError: nothing was applied."""
    route = mock.post(f"{API}/models/{MODEL_ID}/train").mock(side_effect=httpx.ConnectError)

    with pytest.raises(TransientApiError) as caught:
        await lone_api.train(MODEL_ID, TRAIN)

    assert type(caught.value) is TransientApiError
    assert route.call_count == retry_attempts


# -- errors: answers fleet cannot read ------------------------------------------------------


async def test_a_non_json_answer_is_a_protocol_error(mock, api):
    """A 200 whose body is not JSON (e.g. a proxy's HTML page) raises ProtocolError."""
    mock.get(f"{API}/jobs/{JOB_ID}").respond(200, text="<html>Sign in</html>")

    with pytest.raises(ProtocolError, match="not JSON"):
        await api.get_job(JOB_ID)


async def test_a_json_answer_that_is_not_an_object_is_a_protocol_error(mock, api):
    """A 200 whose JSON is a list raises ProtocolError."""
    mock.get(f"{API}/jobs/{JOB_ID}").respond(json=[job()])

    with pytest.raises(ProtocolError):
        await api.get_job(JOB_ID)


async def test_an_answer_without_an_id_is_a_protocol_error(mock, api):
    """A job without "id" raises ProtocolError naming the missing field and quoting the body."""
    mock.get(f"{API}/jobs/{JOB_ID}").respond(json={"status": "RUNNING"})

    with pytest.raises(ProtocolError, match=r"'id'.*RUNNING"):
        await api.get_job(JOB_ID)


async def test_an_unreadable_post_answer_is_an_unknown_outcome(mock, api):
    """A 200 to a POST that cannot be read may have been applied: OutcomeUnknown, sent once."""
    route = mock.post(f"{API}/models/{MODEL_ID}/train").respond(
        200, text="<html><body>Proxy says hello</body></html>"
    )

    with pytest.raises(OutcomeUnknown, match="Proxy says hello"):
        await api.train(MODEL_ID, TRAIN)
    assert route.call_count == 1


async def test_a_polled_job_without_status_is_a_job_not_yet_finished(mock, api):
    """The official client reads a missing status as UNKNOWN and keeps waiting: not terminal."""
    mock.get(f"{API}/jobs/{JOB_ID}").respond(json=recorded("job-evaluation.json") | {"id": JOB_ID})

    got = await api.get_job(JOB_ID)

    assert got.status is None
    assert not got.terminal


async def test_a_409_on_a_post_is_retried_then_raised_as_a_conflict(mock, api):
    """Spring Data REST answers 409 to a conflict: nothing was applied, so it is sent again."""
    route = mock.post(f"{API}/trainedModels/{TRAINED_ID}/approve").mock(
        side_effect=[
            httpx.Response(409, json=spring_error(409, "Conflict", "version changed")),
            httpx.Response(200, json=recorded("event-approved.json")),
        ]
    )

    await api.approve(TRAINED_ID, "LGTM")

    assert route.call_count == 2


async def test_a_page_whose_collection_is_not_a_list_is_a_protocol_error(mock, api):
    """_embedded.models that is not a list raises ProtocolError."""
    mock.get(f"{API}/models").respond(json={"_embedded": {"models": {"id": MODEL_ID}}})

    with pytest.raises(ProtocolError):
        await api.list_models()


# -- ids go into URL paths -------------------------------------------------------------------

BAD_ID = "../projects/other"
CALLS_WITH_A_BAD_ID = {
    "get_job": lambda api: api.get_job(BAD_ID),
    "events": lambda api: api.events(BAD_ID),
    "deployment_for_job": lambda api: api.deployment_for_job(BAD_ID),
    "deployments_of_version": lambda api: api.deployments_of_version(BAD_ID),
    "versions": lambda api: api.versions(BAD_ID),
    "scoring_jobs": lambda api: api.scoring_jobs(BAD_ID),
    "train": lambda api: api.train(BAD_ID, TRAIN),
    "evaluate": lambda api: api.evaluate(BAD_ID, EVALUATE),
    "approve": lambda api: api.approve(BAD_ID, "LGTM"),
    "reject": lambda api: api.reject(BAD_ID, "no"),
    "deploy": lambda api: api.deploy(BAD_ID, DEPLOY),
    "retire": lambda api: api.retire(BAD_ID, DEPLOYMENT_ID),
    "retire-deployment": lambda api: api.retire(TRAINED_ID, BAD_ID),
}


@pytest.mark.parametrize("call", CALLS_WITH_A_BAD_ID.values(), ids=CALLS_WITH_A_BAD_ID.keys())
async def test_a_non_uuid_id_is_refused_before_any_request(mock, api, call):
    """An id that is not a UUID raises PermanentApiError and no request goes out."""
    anything = mock.route()

    with pytest.raises(PermanentApiError, match="UUID"):
        await call(api)

    assert not anything.called


async def test_a_non_uuid_project_id_is_refused_before_any_request(mock):
    """check_project with a project id that is not a UUID sends nothing."""
    anything = mock.route()

    async with ModelOpsClient(BASE_URL, BAD_ID, TOKEN) as api:
        with pytest.raises(PermanentApiError, match="UUID"):
            await api.check_project()

    assert not anything.called


# -- throttle and breaker -------------------------------------------------------------------


@pytest.mark.retry_waits
async def test_a_429_delays_its_own_request_not_the_others(mock):
    """One 429 with Retry-After is sent again after exactly that long (its call waits it);
    the shared throttle does not pause every other request for it."""
    time = InstantTime()
    mock.get(f"{API}/jobs/{JOB_ID}").mock(
        side_effect=[
            httpx.Response(429, headers={"Retry-After": "7"}),
            httpx.Response(200, json=_job_json()),
        ]
    )
    async with ModelOpsClient(BASE_URL, PROJECT_ID, TOKEN, pacing=time.pacing()) as api:
        await api.get_job(JOB_ID)
        assert api.throttle.overloads == 1
        assert api.throttle.pauses == 0
        assert api.throttle.waited_s == 0
        assert api.stats.errors["429"] == 1
    assert time.slept == 7


async def test_an_outage_past_its_budget_raises_server_unavailable(mock):
    """A server failing requests for two resources opens the breaker; past the budget the call
    gives up. One resource failing alone fails only its own request, on its own retries."""
    time = InstantTime()
    route = mock.get(url__regex=rf"{API}/jobs/.*").respond(503)
    breaker = Breaker(threshold=2, budget_s=60, clock=time.clock)
    async with _client_with(breaker, time) as api:
        with pytest.raises(TransientApiError) as alone:
            await api.get_job(JOB_ID)
        assert type(alone.value) is TransientApiError
        assert not breaker.is_open
        with pytest.raises(ServerUnavailable, match="budget 60"):
            await api.get_job(uid(9))
    assert breaker.opened == 1
    assert route.call_count > 6  # probes went on after the request's own retries


async def test_a_request_waits_out_an_outage_that_ends(mock):
    """Connection errors open the breaker; when a probe gets through, the call completes."""
    time = InstantTime()
    answers = [httpx.ConnectError("refused")] * 8 + [httpx.Response(200, json=_job_json())]
    mock.get(f"{API}/jobs/{JOB_ID}").mock(side_effect=answers)
    breaker = Breaker(threshold=2, budget_s=600, clock=time.clock)
    async with _client_with(breaker, time) as api:
        job = await api.get_job(JOB_ID)
    assert job.id == JOB_ID
    assert not breaker.is_open


def _client_with(breaker: Breaker, time: InstantTime) -> ModelOpsClient:
    return ModelOpsClient(BASE_URL, PROJECT_ID, TOKEN, pacing=time.pacing(breaker=breaker))


def _job_json() -> dict[str, str]:
    return {"id": JOB_ID, "status": "RUNNING", "type": "TRAINING"}


async def test_an_oversized_answer_is_refused_not_held(mock, api):
    """An answer past MAX_BODY_BYTES is a ProtocolError (GET) or an unknown outcome (POST)."""
    huge = b"[" + b"0," * (MAX_BODY_BYTES // 2) + b"0]"
    mock.get(f"{API}/jobs/{JOB_ID}").respond(200, content=huge)
    mock.post(f"{API}/models/{MODEL_ID}/train").respond(200, content=huge)

    with pytest.raises(ProtocolError, match="over"):
        await api.get_job(JOB_ID)
    with pytest.raises(OutcomeUnknown, match="over"):
        await api.train(MODEL_ID, TRAIN)
