"""The emulator's records: what ModelOps stores about models, versions, jobs and deployments.

Models and events never change once written, so they are frozen values. Trained models, jobs
and deployments move through a lifecycle, so they are mutable records; `World` is their only
writer, through one transition method per record type.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

JsonObject = dict[str, Any]

# Queue phases as fractions of a job's duration, then RUNNING until the end.
QUEUE_PHASES = (("CREATED", 0.0), ("SCHEDULED", 0.015), ("ASSIGNED", 0.03), ("RUNNING", 0.045))


@dataclass(frozen=True, slots=True)
class Project:
    id: str
    name: str
    created_at: float


@dataclass(frozen=True, slots=True)
class Model:
    id: str
    index: int
    name: str
    created_at: float
    archived: bool = False


@dataclass(frozen=True, slots=True)
class Event:
    id: str
    trained_model_id: str
    created_at: float
    status: str
    job_id: str | None = None
    dataset_id: str | None = None
    metadata: JsonObject | None = None


@dataclass(slots=True, eq=False)
class TrainedModel:
    id: str
    model_id: str
    version: int
    created_at: float
    job_id: str
    external_id: str
    status: str
    archived: bool = False
    events: list[Event] = field(default_factory=list)
    deployments: list[Deployment] = field(default_factory=list)

    def active_deployments(self) -> list[Deployment]:
        return [d for d in self.deployments if d.status == "DEPLOYED"]


@dataclass(slots=True, eq=False)
class Job:
    id: str
    type: str
    model_id: str
    trained_model: TrainedModel
    created_at: float
    ends_at: float
    will_fail: bool
    # Request-derived part of `metadata`, fixed at creation.
    metadata: JsonObject
    # How many of the trained model's events existed at creation: the job shows that snapshot.
    events_seen: int
    deployment_id: str | None = None
    # A stuck job runs through its queue phases and then stays RUNNING: `ends_at` is only
    # when it would have ended.
    stuck: bool = False
    # One of last night's jobs, made with the world: part of the project's job history, not
    # of what clients submitted.
    history: bool = False
    outcome: str | None = None
    # For the benchmark: when a request about this job's model first arrived after it ended.
    detected_at: float | None = None

    def status_at(self, now: float) -> str:
        if self.outcome is not None:
            return self.outcome
        return self._phase(now)[0]

    def updated_at(self, now: float) -> float:
        if self.outcome is not None:
            return self.ends_at
        return self._phase(now)[1]

    def phase(self, number: int) -> tuple[str, float]:
        """The `number`-th queue status (0: CREATED ... 3: RUNNING) and when it starts.

        The world schedules status changes at exactly these times, so the status a job shows
        and the status it is indexed under never disagree.
        """
        name, fraction = QUEUE_PHASES[number]
        return name, self.created_at + fraction * (self.ends_at - self.created_at)

    def _phase(self, now: float) -> tuple[str, float]:
        current = QUEUE_PHASES[0][0], self.created_at
        for number in range(len(QUEUE_PHASES)):
            name, started = self.phase(number)
            if now < started:
                break
            current = name, started
        return current


@dataclass(slots=True, eq=False)
class Deployment:
    id: str
    trained_model: TrainedModel
    job_id: str
    created_at: float
    updated_at: float
    status: str
    engine_type: str
    engine_type_config: JsonObject
    cron: str
    retirement_job_id: str | None = None
    scoring_job: Job | None = None  # started at once by a cron "@once" deployment
    # The jobs that name this deployment (its scoring job, its retirements), oldest first.
    jobs: list[Job] = field(default_factory=list)
