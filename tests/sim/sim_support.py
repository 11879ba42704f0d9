"""What the emulator's tests share: request bodies, the settings of each switch, small steps."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fleet.sim import Behaviour, SimSettings

if TYPE_CHECKING:
    import httpx

    from fleet.sim import ManualClock

TOKEN = SimSettings().token
PROJECT_ID = SimSettings().project_id
HEADERS = {"Authorization": f"Bearer {TOKEN}", "AOA-Project-ID": PROJECT_ID}
BASE_URL = "http://sim/modelops/core"
DATASET_ID = "0b5e2f43-6a57-4d3c-9b0e-8f1d2c3a4b5e"
TRAIN = {"datasetId": DATASET_ID}  # the one field train and evaluate require
EVALUATE = {"datasetId": DATASET_ID}
DEPLOY = {"engineType": "DOCKER_BATCH", "cron": "@manual"}  # "@once" would also start scoring
EXPAND = {"projection": "expandJob"}
STATS_URL = "http://sim/_sim/stats"
JOBS_URL = "http://sim/_sim/jobs"
# The longest each job type runs, and the default lag of an EVALUATED event after its job.
LONGEST = {
    "TRAINING": 3600.0,
    "EVALUATION": 90.0,
    "DEPLOYMENT": 30.0,
    "RETIREMENT": 15.0,
    "SCORING": 120.0,
}
LAG = Behaviour().evaluated_lag_s


def behaving(models: int = 5, **changes: Any) -> SimSettings:
    """Small settings whose server answers as `changes` say (everything else: the default)."""
    return SimSettings(models=models, behaviour=Behaviour(**changes))


def optimistic(models: int = 5, **changes: Any) -> SimSettings:
    return SimSettings(models=models, behaviour=Behaviour.optimistic(**changes))


async def job_status(client: httpx.AsyncClient, job_id: str) -> str:
    response = await client.get(f"/api/jobs/{job_id}", params=EXPAND)
    assert response.status_code == 200
    return str(response.json()["status"])


async def finish(client: httpx.AsyncClient, clock: ManualClock, job: dict[str, Any]) -> None:
    """Let a job run to its end (and an evaluation's EVALUATED event arrive)."""
    kind = "TRAINING" if job["type"] not in LONGEST else job["type"]
    clock.advance(LONGEST[kind] + (LAG if kind == "EVALUATION" else 0.0))
    assert await job_status(client, job["id"]) == "COMPLETED"


async def post(client: httpx.AsyncClient, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = await client.post(path, json=body)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


async def approved(client: httpx.AsyncClient, clock: ManualClock, model_id: str) -> str:
    """A new version of the model, trained, evaluated and approved; returns its id."""
    train = await post(client, f"/api/models/{model_id}/train", TRAIN)
    tm_id = str(train["trainedModelId"])
    await finish(client, clock, train)
    await finish(
        client, clock, await post(client, f"/api/trainedModels/{tm_id}/evaluate", EVALUATE)
    )
    await post(client, f"/api/trainedModels/{tm_id}/approve", {"comments": "ok"})
    return tm_id
