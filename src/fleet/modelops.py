"""What ModelOps speaks: the records it answers with, the requests fleet sends, and `ModelOps`,
the protocol the engine is typed against (`client.ModelOpsClient` speaks it over HTTP).

Shapes follow `shared/modelops-api.md` and the recorded responses in `tests/fixtures/`:
HAL envelopes for lists, bare objects from single-result finders, metrics as strings. The
`parse_*` functions read one object of an answer; a field fleet cannot do without is a
`ProtocolError`, any other is None when absent or malformed.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from fleet.errors import ProtocolError

if TYPE_CHECKING:
    from fleet.retries import Account

TERMINAL_JOB_STATUSES = frozenset({"COMPLETED", "ERROR", "CANCELLED"})
UNFINISHED_JOB_STATUSES = ("CREATED", "SCHEDULED", "ASSIGNED", "RUNNING")


@dataclass(frozen=True, slots=True)
class RemoteModel:
    id: str
    name: str
    archived: bool = False
    language: str | None = None


@dataclass(frozen=True, slots=True)
class Version:
    """A trained model (a model version), as its model's versions finder lists it."""

    id: str
    model_id: str | None
    created_at: datetime | None
    status: str | None
    archived: bool
    job_id: str | None  # the job that created it (its training or import)


@dataclass(frozen=True, slots=True)
class Job:
    id: str
    status: str | None
    type: str | None
    model_id: str | None
    trained_model_id: str | None
    created_at: datetime | None
    updated_at: datetime | None = None  # only with the expandJob projection

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_JOB_STATUSES


@dataclass(frozen=True, slots=True)
class Event:
    id: str
    trained_model_id: str
    status: str
    created_at: datetime | None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    job_id: str | None = None  # the job that wrote it: an EVALUATED event names its evaluation


@dataclass(frozen=True, slots=True)
class Deployment:
    id: str
    status: str | None
    trained_model_id: str | None
    model_id: str | None
    created_at: datetime | None = None


# Request bodies send what the official client and the tutorial send, and nothing a user did
# not set: unset resources or image leave the model's own automation settings in force.


@dataclass(frozen=True, slots=True)
class TrainRequest:
    dataset_id: str | None
    dataset_connection_id: str | None
    hyperparameters: Mapping[str, Any]
    resources: Mapping[str, str]
    docker_image: str | None

    def body(self) -> dict[str, Any]:
        hyperparameters = dict(self.hyperparameters)
        overrides = {"hyperParameters": hyperparameters} if hyperparameters else None
        return _drop_none(
            {
                "datasetId": self.dataset_id,
                "datasetConnectionId": self.dataset_connection_id,
                "modelConfigurationOverrides": overrides,
                "automationOverrides": _automation(self.resources, self.docker_image),
            }
        )


@dataclass(frozen=True, slots=True)
class EvaluateRequest:
    dataset_id: str | None
    dataset_connection_id: str | None
    resources: Mapping[str, str]
    docker_image: str | None

    def body(self) -> dict[str, Any]:
        return _drop_none(
            {
                "datasetId": self.dataset_id,
                "datasetConnectionId": self.dataset_connection_id,
                "automationOverrides": _automation(self.resources, self.docker_image),
            }
        )


@dataclass(frozen=True, slots=True)
class DeployRequest:
    engine_type: str
    engine: str
    docker_image: str | None
    resources: Mapping[str, str]
    language: str | None
    dataset_connection_id: str | None
    dataset_template_id: str | None
    cron: str
    publish_only: bool

    def body(self) -> dict[str, Any]:
        image = self.docker_image
        if image is None and self.engine_type == "IN_VANTAGE":
            image = ""  # what the recorded in-Vantage deployments send
        return _drop_none(
            {
                "engineType": self.engine_type,
                "engineTypeConfig": _drop_none(
                    {
                        "dockerImage": image,
                        "engine": self.engine,
                        "resources": dict(self.resources) or None,
                    }
                ),
                "language": self.language,
                "datasetConnectionId": self.dataset_connection_id,
                "datasetTemplateId": self.dataset_template_id,
                "cron": self.cron,
                "publishOnly": self.publish_only,
                "args": {},
            }
        )


class ModelOps(Protocol):
    """What the engine needs from ModelOps; `ModelOpsClient` speaks it over HTTP.

    Every method is a request some real client is recorded making, except the batched job
    looks (`job_page`, `changed_jobs`, `unfinished_jobs`), which the job watcher uses only
    once it has proven them on the server (see polling.py and docs/api-calls.md).

    A method given an `account` (retries.py) draws its sends from it and charges it every
    failed send: the engine sends a lost submission again from the same account
    (`retries.settle`), the watcher re-reads a job with a single send (`retries.one_send`).
    Without one, a call gets a fresh account of `retry_account()`.
    """

    def retry_account(self) -> Account: ...
    async def check_project(self) -> None: ...
    async def list_models(self) -> list[RemoteModel]: ...
    async def train(
        self, model_id: str, request: TrainRequest, account: Account | None = None
    ) -> Job: ...
    async def get_job(self, job_id: str, account: Account | None = None) -> Job: ...
    def recent_jobs(self, limit: int) -> AsyncIterator[Job]: ...
    async def job_page(self, sort: str, size: int) -> tuple[list[Job], int | None]: ...
    async def changed_jobs(self, since: datetime | None, page_size: int = 20) -> list[Job]: ...
    async def unfinished_jobs(self) -> list[Job]: ...
    async def scoring_jobs(self, deployment_id: str) -> list[Job]: ...
    async def evaluate(
        self, trained_model_id: str, request: EvaluateRequest, account: Account | None = None
    ) -> Job: ...
    async def events(self, trained_model_id: str) -> list[Event]: ...
    async def approve(
        self, trained_model_id: str, comments: str, account: Account | None = None
    ) -> Event: ...
    async def reject(
        self, trained_model_id: str, comments: str, account: Account | None = None
    ) -> Event: ...
    async def deploy(
        self, trained_model_id: str, request: DeployRequest, account: Account | None = None
    ) -> Job: ...
    async def deployment_for_job(self, job_id: str) -> Deployment: ...
    async def active_deployments(self) -> list[Deployment]: ...
    async def deployments_of_version(self, trained_model_id: str) -> list[Deployment]: ...
    async def versions(self, model_id: str) -> list[Version]: ...
    async def retire(
        self, trained_model_id: str, deployment_id: str, account: Account | None = None
    ) -> Job: ...

    def server_time_floor(self) -> datetime | None: ...


# -- reading answers ---------------------------------------------------------------------------


def parse_model(data: Mapping[str, Any]) -> RemoteModel:
    return RemoteModel(
        id=_req_str(data, "id"),
        name=str(data.get("name") or ""),
        archived=data.get("archived") is True,
        language=_opt_str(data, "language"),
    )


def parse_job(data: Mapping[str, Any]) -> Job:
    metadata = data.get("metadata") if isinstance(data.get("metadata"), dict) else {}
    trained_model = metadata.get("trainedModel") if isinstance(metadata, dict) else None
    trained_model_id = _opt_str(data, "trainedModelId")
    if trained_model_id is None and isinstance(trained_model, dict):
        # A train response names the new version only inside metadata.trainedModel.
        trained_model_id = _opt_str(trained_model, "id")
    return Job(
        id=_req_str(data, "id"),
        status=_opt_str(data, "status"),
        type=_opt_str(data, "type"),
        model_id=_opt_str(data, "modelId"),
        trained_model_id=trained_model_id,
        created_at=_timestamp(data.get("createdAt")),
        updated_at=_timestamp(data.get("updatedAt")),
    )


def parse_event(data: Mapping[str, Any]) -> Event:
    metadata = data.get("metadata")
    return Event(
        id=_req_str(data, "id"),
        trained_model_id=_req_str(data, "trainedModelId"),
        status=_req_str(data, "status"),
        created_at=_timestamp(data.get("createdAt")),
        metadata=metadata if isinstance(metadata, dict) else {},
        job_id=_opt_str(data, "jobId"),
    )


def parse_version(data: Mapping[str, Any]) -> Version:
    return Version(
        id=_req_str(data, "id"),
        model_id=_opt_str(data, "modelId"),
        created_at=_timestamp(data.get("createdAt")),
        status=_opt_str(data, "status"),
        archived=data.get("archived") is True,
        job_id=_opt_str(data, "jobId"),
    )


def parse_deployment(data: Mapping[str, Any]) -> Deployment:
    trained_model = data.get("trainedModel")
    trained_model_id = _opt_str(data, "trainedModelId")
    model_id = _opt_str(data, "modelId")
    if isinstance(trained_model, dict):
        trained_model_id = trained_model_id or _opt_str(trained_model, "id")
        model_id = model_id or _opt_str(trained_model, "modelId")
    return Deployment(
        id=_req_str(data, "id"),
        status=_opt_str(data, "status"),
        trained_model_id=trained_model_id,
        model_id=model_id,
        created_at=_timestamp(data.get("createdAt")),
    )


def latest_metrics(events: list[Event]) -> dict[str, str] | None:
    """The metrics of the newest EVALUATED event, values kept as the strings the server sent.

    For a version judged without an evaluation of this run (a champion, `--from-stage
    approve`); an evaluation of this run reads its own event (`metrics_of_job`)."""
    evaluated = [e for e in events if e.status == "EVALUATED"]
    if not evaluated:
        return None
    newest = max(evaluated, key=lambda e: (e.created_at is not None, e.created_at or 0))
    return _metrics(newest)


def metrics_of_job(events: list[Event], job_id: str) -> dict[str, str] | None:
    """The metrics the evaluation job `job_id` wrote: its EVALUATED event names it."""
    mine = [e for e in events if e.status == "EVALUATED" and e.job_id == job_id]
    return _metrics(mine[-1]) if mine else None


def excerpt(body: object, limit: int = 200) -> str:
    """The start of a response body for an error message, on one line."""
    text = body if isinstance(body, str) else json.dumps(body, default=str)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "…"


def _metrics(event: Event) -> dict[str, str]:
    return {str(k): str(v) for k, v in event.metadata.items()}


def _req_str(data: Mapping[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise ProtocolError(f"response has no {key!r}: {excerpt(data)}")
    return value


def _opt_str(data: Mapping[str, Any], key: str) -> str | None:
    value = data.get(key)
    return value if isinstance(value, str) and value else None


def _timestamp(value: object) -> datetime | None:
    """An aware datetime; a time written without an offset is taken as UTC, as the server's are."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _automation(resources: Mapping[str, str], docker_image: str | None) -> dict[str, Any] | None:
    overrides = _drop_none({"resources": dict(resources) or None, "dockerImage": docker_image})
    return overrides or None


def _drop_none(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if v is not None}


__all__ = [
    "TERMINAL_JOB_STATUSES",
    "UNFINISHED_JOB_STATUSES",
    "DeployRequest",
    "Deployment",
    "EvaluateRequest",
    "Event",
    "Job",
    "ModelOps",
    "RemoteModel",
    "TrainRequest",
    "Version",
    "excerpt",
    "latest_metrics",
    "metrics_of_job",
    "parse_deployment",
    "parse_event",
    "parse_job",
    "parse_model",
    "parse_version",
]
