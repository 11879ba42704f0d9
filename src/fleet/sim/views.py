"""JSON shapes of the emulator's answers, modelled key for key on recorded ModelOps responses.

Recorded (tests/fixtures/, checked key for key by tests/sim/test_views.py): the project, a
model, the evaluation and deployment jobs as their POSTs answer, the approval event, the
EVALUATED event with its metrics as strings. Derived from those, since never recorded: a train
job (shaped like the recorded IMPORT job), a retire job, a scoring job, a deployment, and a
job read with `projection=expandJob`, which adds `status`. Spring's defaults where the shape
is Spring's: Spring Boot's error body, and a version's events as an association resource
(`_embedded` without a `page` block; `Behaviour.events_listing` picks a bare list instead).

Where a job's shape depends on an unrecorded choice, `JobShape` carries the server's answer
(see `behaviour.py`): a job carries no `updatedAt` by default, as no recorded job does
(`updated_at` "fresh" or "stale" adds one), and train and retire jobs are named TRAINING and
RETIREMENT unless `job_types` names them otherwise. `archived` is carried truthfully by
models and versions.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Mapping

    from fleet.sim.behaviour import UpdatedAt
    from fleet.sim.records import Deployment, Event, Job, JsonObject, Model, Project, TrainedModel

OWNER_ID = "fleet_sim"
# `_links` carry the service's internal host name in real answers; clients must not follow them.
_LINK_HOST = "http://web-modelops-sim.internal"


def iso(seconds: float) -> str:
    """ModelOps' timestamp format: `2025-07-03T21:51:36.960+00:00`."""
    return datetime.fromtimestamp(seconds, tz=UTC).isoformat(timespec="milliseconds")


def _links(collection: str, entity_id: str, *extra: str) -> JsonObject:
    href = f"{_LINK_HOST}/api/{collection}/{entity_id}"
    singular = collection.removesuffix("s")
    links: JsonObject = {
        "self": {"href": href},
        singular: {"href": href + "{?projection}", "templated": True},
    }
    for name in extra:
        links[name] = {"href": f"{href}/{name}"}
    return links


def project(p: Project) -> JsonObject:
    return {
        "id": p.id,
        "name": p.name,
        "description": "Demand forecasting models, one per store (emulated)",
        "gitRepositoryUrl": "/app/built-in/demo-models",
        "branch": "main",
        "groupId": "ADMIN",
        "createdAt": iso(p.created_at),
        "archived": False,
        "gitCredentials": {"source": "none"},
        "_links": _links("projects", p.id, "userAttributes", "attributes", "tags")
        | {
            name: {
                "href": f"{_LINK_HOST}/api/projects/{p.id}/{name}{{?projection}}",
                "templated": True,
            }
            for name in ("jobs", "models")
        },
    }


def model(m: Model, project_id: str) -> JsonObject:
    return {
        "id": m.id,
        "projectId": project_id,
        "ownerId": OWNER_ID,
        "createdAt": iso(m.created_at),
        "updatedAt": iso(m.created_at),
        "name": m.name,
        "description": f"Demand forecast for store {m.index + 1}",
        "language": "PYTHON",
        "archived": m.archived,
        "automation": {
            "training": {"@type": "base"},
            "evaluation": {"@type": "base"},
            "deployment": {"@type": "deploy"},
        },
        "source": "GIT",
        "_links": _links("models", m.id, "attributes", "tags"),
    }


def event(e: Event, project_id: str) -> JsonObject:
    body: JsonObject = {
        "id": e.id,
        "projectId": project_id,
        "ownerId": OWNER_ID,
        "createdAt": iso(e.created_at),
        "trainedModelId": e.trained_model_id,
        "status": e.status,
    }
    # Recorded events carry these keys only when they apply (an APPROVED event has no jobId).
    if e.job_id is not None:
        body["jobId"] = e.job_id
    if e.dataset_id is not None:
        body["datasetId"] = e.dataset_id
    if e.metadata is not None:
        body["metadata"] = dict(e.metadata)
    return body


def trained_model(
    tm: TrainedModel, project_id: str, *, with_status: bool, events_seen: int | None = None
) -> JsonObject:
    """A version; `events_seen` embeds its first that many events, newest first, as jobs do."""
    body: JsonObject = {
        "id": tm.id,
        "projectId": project_id,
        "ownerId": OWNER_ID,
        "createdAt": iso(tm.created_at),
        "modelId": tm.model_id,
        "jobId": tm.job_id,
        "externalId": tm.external_id,
        "metadata": {
            "configuration": {"artifactList": ["model.joblib"]},
            "evaluationEnabled": True,
            "modelType": "CLASSIFICATION",
        },
    }
    if with_status:
        body["status"] = tm.status
    if events_seen is not None:
        body["events"] = [event(e, project_id) for e in reversed(tm.events[:events_seen])]
    body["archived"] = tm.archived
    return body


@dataclass(frozen=True, slots=True)
class JobShape:
    """How the server shows a job where nothing recorded says: its `updatedAt`, if any, and
    what it calls each canonical job type (TRAINING ...) when that differs."""

    updated_at: UpdatedAt = "absent"
    type_names: Mapping[str, str] = field(default_factory=dict)

    def updated(self, j: Job, now: float) -> float:
        """The server's own notion of the job's last change: with "stale", its creation."""
        return j.created_at if self.updated_at == "stale" else j.updated_at(now)


def job(
    j: Job, project_id: str, now: float, *, expand: bool, shape: JobShape | None = None
) -> JsonObject:
    """A job; only the `expandJob` projection carries `status`."""
    shape = shape or JobShape()
    body: JsonObject = {
        "id": j.id,
        "projectId": project_id,
        "ownerId": OWNER_ID,
        "createdAt": iso(j.created_at),
    }
    if shape.updated_at != "absent":
        body["updatedAt"] = iso(shape.updated(j, now))
    body |= {
        "type": shape.type_names.get(j.type, j.type),
        "source": "MODEL",
        "modelId": j.model_id,
        "trainedModelId": j.trained_model.id,
    }
    if expand:
        body["status"] = j.status_at(now)
    body["metadata"] = _job_metadata(j, project_id)
    return body


def _job_metadata(j: Job, project_id: str) -> JsonObject:
    # Recorded order: the request, the trained model, the dataset, then the rest.
    request_key, request = next(iter(j.metadata.items()))
    metadata: JsonObject = {
        request_key: request,
        "trainedModel": trained_model(
            j.trained_model, project_id, with_status=False, events_seen=j.events_seen
        ),
    }
    dataset_id = request.get("datasetId")
    if j.type in {"TRAINING", "EVALUATION"} and isinstance(dataset_id, str):
        scope = "train" if j.type == "TRAINING" else "evaluate"
        metadata["dataset"] = dataset(dataset_id, project_id, scope, j.created_at)
    metadata |= {k: v for k, v in j.metadata.items() if k != request_key}
    if j.deployment_id is not None:
        metadata["deploymentId"] = j.deployment_id
    return metadata


def dataset(dataset_id: str, project_id: str, scope: str, before: float) -> JsonObject:
    """A plausible dataset entity: the emulator has no dataset store, only ids it is sent."""
    template_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{project_id}/datasetTemplate"))
    features = ("units_sold_lag_7", "units_sold_lag_28", "price", "promo", "day_of_week")
    return {
        "id": dataset_id,
        "projectId": project_id,
        "ownerId": OWNER_ID,
        "createdAt": iso(before - 30 * 86_400.0),
        "datasetTemplateId": template_id,
        "name": scope.capitalize(),
        "description": f"{scope} dataset (emulated)",
        "scope": scope,
        "archived": False,
        "metadata": {
            "type": "CatalogBody",
            "features": {
                "sql": "SELECT * FROM store_sales_features",
                "entity": "StoreDayId",
                "variables": [
                    {"name": name, "type": "feature", "dataType": "float"} for name in features
                ],
            },
            "entityAndTargets": {
                "sql": "SELECT * FROM store_sales_targets",
                "entity": "StoreDayId",
                "variables": [
                    {"name": "StoreDayId", "type": "entity", "dataType": "integer"},
                    {"name": "HighDemand", "type": "target", "dataType": "integer"},
                ],
            },
        },
    }


def deployment(d: Deployment, project_id: str) -> JsonObject:
    tm = d.trained_model
    body: JsonObject = {
        "id": d.id,
        "projectId": project_id,
        "ownerId": OWNER_ID,
        "createdAt": iso(d.created_at),
        "updatedAt": iso(d.updated_at),
        "archived": False,
        "status": d.status,
        "engineType": d.engine_type,
        "engineTypeConfig": d.engine_type_config,
        "cron": d.cron,
        "deploymentJobId": d.job_id,
        "trainedModel": {
            "id": tm.id,
            "modelId": tm.model_id,
            "projectId": project_id,
            "createdAt": iso(tm.created_at),
            "status": tm.status,
        },
    }
    if d.retirement_job_id is not None:
        body["retirementJobId"] = d.retirement_job_id
    return body


def association(path: str, relation: str, items: list[JsonObject]) -> JsonObject:
    """A collection reached through an entity (`trainedModels/{id}/events`): Spring Data REST
    answers such an association resource with `_embedded` and its link, but no `page` block."""
    return {
        "_embedded": {relation: items},
        "_links": {"self": {"href": f"{_LINK_HOST}/api/{path}"}},
    }


def error(status: int, message: str, path: str, now: float) -> JsonObject:
    """Spring Boot's default error body."""
    return {
        "timestamp": iso(now),
        "status": status,
        "error": HTTPStatus(status).phrase,
        "message": message,
        "path": path,
    }
