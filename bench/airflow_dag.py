"""Teradata's Model Factory tutorial DAG, one mapped task group over the models (Airflow 3).

bench/airflow.py copies this file into the dags folder of a throwaway Airflow and triggers it
once against `fleet sim`; it is not imported by fleet, and it runs in Airflow's own venv.

What it follows. The tutorial (Teradata/developer-resources, quickstarts/analyze-data/
execute-airflow-workflows-with-clearscape-analytics-modelops-model-factory-solution.md) has one
DAG per model with five PythonOperator tasks chained train >> evaluate >> approve >> deploy >>
retire; each task POSTs its step with `requests`, then calls `GET /api/jobs/{id}?projection=
expandJob` until the job ends, `time.sleep(5)` between two looks, and hands ids to the next task
through XCom. Here the five tasks are the same, in the same order, as a task group mapped over
the models (`model_factory.expand(model=models())`), so one DAG run drives every model and
Airflow's slots (parallelism, max_active_tasks) bound the tasks running at once. Each task
still opens a new connection per request and sleeps 5 real seconds between polls.

What it takes from bench/baseline.py instead of the tutorial, so that the requests and bodies
are the ones fleet and the baseline send: the bodies (fleet's default resources, no docker
image or dataset connection), the training job's `trainedModelId`, metrics read from the
evaluation's EVALUATED event and the decision `Accuracy >= threshold` (the tutorial approves
whatever evaluated), reject when below, the active deployments found before deploying (each
version's DEPLOYED deployments), `findByJobId` after the deployment, and retiring the
*previous* version's deployment (the tutorial retires the one it just deployed). No retries
(the tutorial has 5 after 2 minutes; a retried train would submit a second training). A
rejected model's deploy is skipped, and so is its retire.

Settings come from the environment, which bench/airflow.py gives every Airflow process:
FLEET_BENCH_URL (ending in /modelops/core), FLEET_API__TOKEN, FLEET_BENCH_PROJECT_ID,
FLEET_BENCH_MODELS_CSV (fleet sim's --models-csv), FLEET_BENCH_POLL_S (real seconds, 5),
FLEET_BENCH_THRESHOLD (0.7), FLEET_BENCH_METRICS_POLLS (looks at the events, 5 s apart, before
an evaluation without metrics fails) and FLEET_BENCH_SLOTS (max_active_tasks, 32).
"""

from __future__ import annotations

import csv
import os
import time
from datetime import UTC, datetime
from typing import Any

import requests
from airflow.sdk import dag, task, task_group
from airflow.sdk.exceptions import AirflowSkipException

DAG_ID = "modelops_model_factory"
STAGES = ("train", "evaluate", "approve", "deploy", "retire")
TERMINAL = frozenset({"COMPLETED", "ERROR", "CANCELLED"})
RESOURCES = {"memory": "1g", "cpu": "1"}  # fleet's defaults.resources, as bench/baseline.py
PAGE = {"page": "0", "size": "100"}
TIMEOUT_S = 120


class ModelFailed(Exception):
    """The model's lifecycle stopped: a job ended badly or a request was refused."""


def _env(name: str, default: str | None = None) -> str:
    value = os.environ.get(name, default)
    if value is None:
        raise ModelFailed(f"{name} is not set")
    return value


def _headers() -> dict[str, str]:
    return {
        "Authorization": f"Bearer {_env('FLEET_API__TOKEN')}",
        "AOA-Project-ID": _env("FLEET_BENCH_PROJECT_ID"),
        "Accept": "application/json, application/hal+json",
    }


def _answer(response: requests.Response) -> Any:
    if response.status_code >= 400:  # noqa: PLR2004
        raise ModelFailed(f"{response.request.method} {response.url}: {response.status_code}")
    return response.json()


def _get(path: str, params: dict[str, str]) -> dict[str, Any]:
    url = _env("FLEET_BENCH_URL") + path
    return dict(_answer(requests.get(url, params=params, headers=_headers(), timeout=TIMEOUT_S)))


def _post(path: str, body: dict[str, Any]) -> dict[str, Any]:
    url = _env("FLEET_BENCH_URL") + path
    return dict(_answer(requests.post(url, json=body, headers=_headers(), timeout=TIMEOUT_S)))


def _wait(job_id: str) -> None:
    """The tutorial's loop: look at the job, sleep 5 real seconds, until it ends."""
    poll_s = float(_env("FLEET_BENCH_POLL_S", "5"))
    while True:
        status = _get(f"/api/jobs/{job_id}", {"projection": "expandJob"}).get("status")
        if status in TERMINAL:
            if status != "COMPLETED":
                raise ModelFailed(f"job {job_id} ended {status}")
            return
        time.sleep(poll_s)


def _events(version: str) -> list[dict[str, Any]]:
    """A version's events: HAL or a bare list; the events finder where the route is absent."""
    url = _env("FLEET_BENCH_URL")
    response = requests.get(
        f"{url}/api/trainedModels/{version}/events",
        params=PAGE,
        headers=_headers(),
        timeout=TIMEOUT_S,
    )
    if response.status_code == 404:  # noqa: PLR2004
        response = requests.get(
            f"{url}/api/trainedModelEvents/search/findByTrainedModelId",
            params={"trainedModelId": version, **PAGE},
            headers=_headers(),
            timeout=TIMEOUT_S,
        )
    body = _answer(response)
    if isinstance(body, list):
        return body
    events: list[dict[str, Any]] = body.get("_embedded", {}).get("trainedModelEvents", [])
    return events


def _metrics(version: str, evaluation_id: str) -> dict[str, str]:
    """The metrics of this evaluation's EVALUATED event, which may come after its job."""
    poll_s = float(_env("FLEET_BENCH_POLL_S", "5"))
    for _ in range(int(_env("FLEET_BENCH_METRICS_POLLS", "1"))):
        for event in _events(version):
            if event.get("status") == "EVALUATED" and event.get("jobId") == evaluation_id:
                return dict(event.get("metadata") or {})
        time.sleep(poll_s)
    raise ModelFailed(f"evaluation {evaluation_id} completed, but no EVALUATED event came")


def _active(model_id: str) -> list[list[str]]:
    """[version, deployment] of the model's active deployments, found through each version."""
    versions = _get("/api/trainedModels/search/findByModelId", {"modelId": model_id, **PAGE})
    found = []
    for version in versions["_embedded"]["trainedModels"]:
        if version.get("archived"):
            continue
        deployments = _get(
            "/api/deployments/search/findByStatusAndTrainedModelId",
            {
                "status": "DEPLOYED",
                "trainedModelId": version["id"],
                "projection": "expandDeployment",
                **PAGE,
            },
        )
        found += [[version["id"], d["id"]] for d in deployments["_embedded"]["deployments"]]
    return found


@task(task_id="models")
def models() -> list[dict[str, str]]:
    """The models of the domain, one mapped group each (the tutorial's config, per model)."""
    with open(_env("FLEET_BENCH_MODELS_CSV"), newline="", encoding="utf-8") as handle:  # noqa: PTH123
        return [
            {
                "id": row["id"],
                "train_dataset_id": row["train_dataset_id"],
                "evaluate_dataset_id": row["evaluate_dataset_id"],
            }
            for row in csv.DictReader(handle)
        ]


@task(task_id="train")
def train_model(model: dict[str, str]) -> dict[str, Any]:
    job = _post(
        f"/api/models/{model['id']}/train",
        {
            "datasetId": model["train_dataset_id"],
            "modelConfigurationOverrides": {"hyperParameters": {}},
            "automationOverrides": {"resources": RESOURCES},
        },
    )
    _wait(job["id"])
    return {**model, "version": job["trainedModelId"]}


@task(task_id="evaluate")
def evaluate_model(trained: dict[str, Any]) -> dict[str, Any]:
    job = _post(
        f"/api/trainedModels/{trained['version']}/evaluate",
        {
            "datasetId": trained["evaluate_dataset_id"],
            "automationOverrides": {"resources": RESOURCES},
        },
    )
    _wait(job["id"])
    return {**trained, "evaluation": job["id"]}


@task(task_id="approve")
def approve_model(evaluated: dict[str, Any]) -> dict[str, Any]:
    version = evaluated["version"]
    metrics = _metrics(version, evaluated["evaluation"])
    accuracy = float(metrics.get("Accuracy", "nan"))
    threshold = float(_env("FLEET_BENCH_THRESHOLD", "0.7"))
    if not accuracy >= threshold:
        comment = f"Rejected: Accuracy {accuracy} < {threshold}"
        _post(f"/api/trainedModels/{version}/reject", {"comments": comment})
        return {**evaluated, "approved": False}
    _post(f"/api/trainedModels/{version}/approve", {"comments": "Approved"})
    return {**evaluated, "approved": True}


@task(task_id="deploy")
def deploy_model(approved: dict[str, Any]) -> dict[str, Any]:
    if not approved["approved"]:
        raise AirflowSkipException("rejected: nothing to deploy")
    version = approved["version"]
    previous = [d for d in _active(approved["id"]) if d[0] != version]
    job = _post(
        f"/api/trainedModels/{version}/deploy",
        {
            "engineType": "DOCKER_BATCH",
            "engineTypeConfig": {"engine": "python-batch", "resources": RESOURCES},
            "cron": "@once",
            "publishOnly": False,
            "args": {},
        },
    )
    _wait(job["id"])
    _get("/api/deployments/search/findByJobId", {"jobId": job["id"]})
    return {**approved, "previous": previous}


@task(task_id="retire")
def retire_model(deployed: dict[str, Any]) -> str:
    if not deployed["previous"]:
        return "nothing to retire"
    old_version, deployment_id = deployed["previous"][-1]
    job = _post(f"/api/trainedModels/{old_version}/retire", {"deploymentId": deployment_id})
    _wait(job["id"])
    return f"retired {old_version}"


@task_group(group_id="model_factory")
def model_factory(model: dict[str, str]) -> None:
    trained = train_model(model)
    evaluated = evaluate_model(trained)
    approved = approve_model(evaluated)
    deployed = deploy_model(approved)
    retire_model(deployed)


@dag(
    dag_id=DAG_ID,
    schedule=None,
    start_date=datetime(2024, 3, 19, tzinfo=UTC),  # the tutorial's date; runs only when triggered
    catchup=False,
    max_active_runs=1,
    max_active_tasks=int(os.environ.get("FLEET_BENCH_SLOTS", "32")),
    default_args={"retries": 0},
    tags=["modelops", "fleet-bench"],
)
def modelops_model_factory() -> None:
    model_factory.expand(model=models())


modelops_model_factory()
