"""The seed pattern fleet replaces, as the benchmark's baseline.

Teradata's Model Factory tutorial runs one Airflow DAG per model: train, evaluate, approve,
deploy, retire, each task POSTing its step and then polling the job every 5 seconds until it
ends. Airflow runs at most 32 tasks at once by default (`parallelism`). This is that pattern in
one process: one sequential worker per model, at most `--parallelism` models at a time, the
same requests and bodies fleet sends (src/fleet/client.py, src/fleet/modelops.py), no retries
and no other delay.

It needs only what every plausible server offers (see src/fleet/sim/behaviour.py): each job
is polled by id, the metrics are those of the EVALUATED event whose `jobId` is the evaluation
(re-read every poll interval until it appears, for at most `--metrics-wait`), and what is in
production is found through each version's deployments, not through a version status.

    python bench/baseline.py --url URL --models-file models.csv --time-scale 60 --json out.json

The models file is the emulator's `--models-csv`: columns id, train_dataset_id and
evaluate_dataset_id. The token comes from FLEET_API__TOKEN. Exit 0 when every model succeeded
or was rejected.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx

TERMINAL = frozenset({"COMPLETED", "ERROR", "CANCELLED"})
RESOURCES = {"memory": "1g", "cpu": "1"}  # fleet's defaults.resources
PAGE = {"page": "0", "size": "100"}


class ModelFailed(Exception):
    """The model's lifecycle stopped: a job ended badly or a request was refused."""


@dataclass(frozen=True)
class ModelRow:
    """A model of the models file, with the datasets its training and evaluation use."""

    id: str
    train_dataset_id: str
    evaluate_dataset_id: str


class Worker:
    """One model's DAG: each step POSTs, then polls its job every `poll_s` real seconds."""

    def __init__(
        self, client: httpx.AsyncClient, poll_s: float, threshold: float, metrics_polls: int
    ) -> None:
        self._client = client
        self._poll_s = poll_s
        self._threshold = threshold
        self._metrics_polls = metrics_polls

    async def run(self, model: ModelRow) -> str:
        model_id = model.id
        train = await self._post(
            f"/api/models/{model_id}/train",
            {
                "datasetId": model.train_dataset_id,
                "modelConfigurationOverrides": {"hyperParameters": {}},
                "automationOverrides": {"resources": RESOURCES},
            },
        )
        version = train["trainedModelId"]
        await self._wait(train["id"])
        evaluation = await self._post(
            f"/api/trainedModels/{version}/evaluate",
            {
                "datasetId": model.evaluate_dataset_id,
                "automationOverrides": {"resources": RESOURCES},
            },
        )
        await self._wait(evaluation["id"])
        accuracy = float((await self._metrics(version, evaluation["id"])).get("Accuracy", "nan"))
        if not accuracy >= self._threshold:
            comment = f"Rejected: Accuracy {accuracy} < {self._threshold}"
            await self._post(f"/api/trainedModels/{version}/reject", {"comments": comment})
            return "rejected"
        await self._post(f"/api/trainedModels/{version}/approve", {"comments": "Approved"})
        previous = [d for d in await self._active(model_id) if d[0] != version]
        deploy = await self._post(
            f"/api/trainedModels/{version}/deploy",
            {
                "engineType": "DOCKER_BATCH",
                "engineTypeConfig": {"engine": "python-batch", "resources": RESOURCES},
                "cron": "@once",
                "publishOnly": False,
                "args": {},
            },
        )
        await self._wait(deploy["id"])
        await self._get("/api/deployments/search/findByJobId", {"jobId": deploy["id"]})
        if previous:
            old_version, deployment_id = previous[-1]
            retire = await self._post(
                f"/api/trainedModels/{old_version}/retire", {"deploymentId": deployment_id}
            )
            await self._wait(retire["id"])
        return "succeeded"

    async def _wait(self, job_id: str) -> None:
        while True:
            job = await self._get(f"/api/jobs/{job_id}", {"projection": "expandJob"})
            status = job.get("status")  # a server may leave it out: not finished, then
            if status in TERMINAL:
                if status != "COMPLETED":
                    raise ModelFailed(f"job {job_id} ended {status}")
                return
            await anyio.sleep(self._poll_s)

    async def _metrics(self, version: str, evaluation_id: str) -> dict[str, str]:
        """The metrics of this evaluation's EVALUATED event, which may come after its job."""
        for _ in range(self._metrics_polls):
            for event in await self._events(version):
                if event.get("status") == "EVALUATED" and event.get("jobId") == evaluation_id:
                    return dict(event.get("metadata") or {})
            await anyio.sleep(self._poll_s)
        raise ModelFailed(f"evaluation {evaluation_id} completed, but no EVALUATED event came")

    async def _events(self, version: str) -> list[dict[str, Any]]:
        """A version's events: HAL or a bare list; the events finder where the route is absent."""
        response = await self._client.get(f"/api/trainedModels/{version}/events", params=PAGE)
        if response.status_code == 404:  # noqa: PLR2004
            response = await self._client.get(
                "/api/trainedModelEvents/search/findByTrainedModelId",
                params={"trainedModelId": version, **PAGE},
            )
        body = _answer(response)
        if isinstance(body, list):
            return body
        events: list[dict[str, Any]] = body.get("_embedded", {}).get("trainedModelEvents", [])
        return events

    async def _active(self, model_id: str) -> list[tuple[str, str]]:
        """(version, deployment) of the model's active deployments: each version's deployments
        tell, whatever status the server gives a deployed version."""
        versions = await self._get(
            "/api/trainedModels/search/findByModelId", {"modelId": model_id, **PAGE}
        )
        found = []
        for version in versions["_embedded"]["trainedModels"]:
            if version.get("archived"):
                continue
            deployments = await self._get(
                "/api/deployments/search/findByStatusAndTrainedModelId",
                {
                    "status": "DEPLOYED",
                    "trainedModelId": version["id"],
                    "projection": "expandDeployment",
                    **PAGE,
                },
            )
            found += [(version["id"], d["id"]) for d in deployments["_embedded"]["deployments"]]
        return found

    async def _get(self, path: str, params: dict[str, str]) -> dict[str, Any]:
        return _object(await self._client.get(path, params=params))

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return _object(await self._client.post(path, json=body))


def _answer(response: httpx.Response) -> Any:
    if response.status_code >= 400:  # noqa: PLR2004
        raise ModelFailed(f"{response.request.method} {response.url.path}: {response.status_code}")
    return response.json()


def _object(response: httpx.Response) -> dict[str, Any]:
    body = _answer(response)
    if not isinstance(body, dict):
        raise ModelFailed(f"{response.request.method} {response.url.path}: not a JSON object")
    return body


async def run(args: argparse.Namespace, models: list[ModelRow]) -> dict[str, Any]:
    headers = {
        "Authorization": f"Bearer {os.environ['FLEET_API__TOKEN']}",
        "AOA-Project-ID": args.project_id,
        "Accept": "application/json, application/hal+json",
    }
    limits = httpx.Limits(max_connections=args.parallelism)
    outcomes: dict[str, str] = {}
    failures: list[str] = []
    slots = anyio.CapacityLimiter(args.parallelism)
    async with httpx.AsyncClient(
        base_url=args.url, headers=headers, limits=limits, timeout=120
    ) as client:
        metrics_polls = max(1, int(args.metrics_wait / args.poll_interval) + 1)
        worker = Worker(client, args.poll_interval / args.time_scale, args.threshold, metrics_polls)

        async def one(model: ModelRow) -> None:
            async with slots:
                try:
                    outcomes[model.id] = await worker.run(model)
                except (ModelFailed, httpx.HTTPError, KeyError, ValueError) as exc:
                    outcomes[model.id] = "failed"
                    failures.append(f"{model.id}: {exc!r}")

        async with anyio.create_task_group() as tg:
            for model in models:
                tg.start_soon(one, model)
    return {"outcomes": dict(Counter(outcomes.values())), "failures": failures[:20]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="base URL ending in /modelops/core")
    parser.add_argument("--project-id", default="5f1a3c9e-8d2b-4e7a-9c61-0f2d4b8a7e13")
    parser.add_argument(
        "--models-file",
        type=Path,
        required=True,
        help="CSV: id, train_dataset_id, evaluate_dataset_id (fleet sim --models-csv)",
    )
    parser.add_argument("--time-scale", type=float, required=True, help="the emulator's")
    parser.add_argument("--poll-interval", type=float, default=5.0, help="simulated seconds")
    parser.add_argument("--parallelism", type=int, default=32, help="models at once")
    parser.add_argument("--threshold", type=float, default=0.7, help="approve Accuracy >= this")
    parser.add_argument(
        "--metrics-wait",
        type=float,
        default=300.0,
        help="simulated s an evaluation's EVALUATED event may lag behind its job",
    )
    parser.add_argument("--json", type=Path, required=True, help="write the outcome here")
    args = parser.parse_args()
    with args.models_file.open(newline="", encoding="utf-8") as handle:
        models = [
            ModelRow(row["id"], row["train_dataset_id"], row["evaluate_dataset_id"])
            for row in csv.DictReader(handle)
        ]
    started = time.monotonic()
    summary = anyio.run(run, args, models)
    summary |= {"models": len(models), "wall_s": time.monotonic() - started}
    args.json.write_text(json.dumps(summary, indent=2))
    ok = summary["outcomes"].get("failed", 0) == 0
    if not ok:
        print(f"baseline: {len(summary['failures'])} models failed", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
