"""What the state file holds, as values: a run, its models, their stages, the lease.

`model_outcome` is the one reading of where a model ended up (succeeded, rejected by an
approval rule, failed, running, pending): the scheduler, the metrics, `status` and `report`
all ask it, none works it out again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from fleet.models import ModelSpec
from fleet.stages import DONE, Outcome, Stage, StageState


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class StageRecord:
    """What the store knows about one stage of one model in one run."""

    run_id: str
    model_id: str
    stage: Stage
    state: StageState = StageState.PENDING
    attempt: int = 0
    job_id: str | None = None
    trained_model_id: str | None = None
    deployment_id: str | None = None
    error: str | None = None
    data: Mapping[str, Any] = field(default_factory=dict)
    submitted_at: datetime | None = None
    finished_at: datetime | None = None
    updated_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class RunRecord:
    id: str
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    status: str
    stages: tuple[Stage, ...]
    reason: str | None = None
    from_stage: Stage | None = None


@dataclass(frozen=True, slots=True)
class ModelRecord:
    """A model of a run: its spec as the run started with it, and its stages now."""

    spec: ModelSpec
    position: int
    stages: Mapping[Stage, StageRecord]
    metrics: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Lease:
    """Who drives a state file: one process at a time."""

    holder: str
    host: str
    pid: int
    since: datetime
    renewed_at: datetime


def model_outcome(model: ModelRecord) -> Outcome:
    """Where a model ended up in its run: the one reading of its stages, for every caller."""
    states = [r.state for r in model.stages.values()]
    if any(s is StageState.FAILED for s in states):
        return Outcome.FAILED
    if all(s in DONE for s in states):
        return Outcome.REJECTED if version_rejected(model.stages) else Outcome.SUCCEEDED
    if all(s is StageState.PENDING for s in states):
        return Outcome.PENDING
    return Outcome.RUNNING


def version_rejected(stages: Mapping[Stage, StageRecord]) -> bool:
    """Whether the approval rule turned the model's new version down (its approve stage
    succeeded with the decision "rejected"): the model finished, and is not a failure."""
    approve = stages.get(Stage.APPROVE)
    return approve is not None and approve.data.get("decision") == REJECTED


# The decision an approve stage records when the rule turned the version down.
REJECTED = "rejected"
APPROVED = "approved"
