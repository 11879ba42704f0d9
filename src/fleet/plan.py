"""What a run is to do, as frozen values: the engine's only view of the settings.

`batch.plan_of` builds a `RunPlan` from the pydantic `Settings`, in that one place; the
scheduler and the stage runners read the plan and never the settings, so the engine can be
driven (and tested) with values alone.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from fleet.history import HistoryDepth
from fleet.inputs import check_run_id
from fleet.models import ModelSpec
from fleet.polling import PollMode
from fleet.stages import Stage


def new_run_id(now: datetime | None = None) -> str:
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{secrets.token_hex(3)}"


def run_id_of(given: str | None) -> str:
    """Only an absent id is made up: an empty one (a template that expanded to nothing) would
    be a new night on every start."""
    return new_run_id() if given is None else check_run_id(given, "run_id")


@dataclass(frozen=True, slots=True)
class ProjectBounds:
    """A project's own bounds within a run: its models in flight (None: only the run's
    `concurrency`), and the stages it limits on its own (the others share the run's)."""

    concurrency: int | None = None
    jobs: int | None = None  # its remote jobs at once (None: only the run's `jobs`)
    limits: Mapping[Stage, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RunPlan:
    """One run: which, how many at once, how often to look, how long to wait, when to stop."""

    run_id: str
    # Of a new run: the stages up to the last one it performs, and the first it performs
    # (the ones before it adopt what the server has, from `from_version`). A resumed run
    # keeps those it was created with.
    stages: tuple[Stage, ...]
    first_stage: Stage
    from_version: str  # latest | deployed
    # The models of a new run, and the settings recorded with it (no secret among them).
    specs: tuple[ModelSpec, ...]
    summary: str
    concurrency: int  # models in flight at once
    jobs: int  # remote jobs at once, every stage together
    limits: Mapping[Stage, int]  # remote jobs (or approval calls) at once, per stage
    attempts: Mapping[Stage, int]  # tries of a job that ends in ERROR, per stage
    projects: Mapping[str, ProjectBounds]  # the projects with bounds of their own
    poll_interval: float
    poll_floor: float
    poll_mode: PollMode
    # Seconds a job of each kind (a stage's name, or "score") may run before its stage fails.
    job_timeouts: Mapping[str, float]
    # Seconds to keep re-reading what a finished job produced before failing the stage.
    result_wait: float
    # The failure policy: stop admitting models past this many failures, or below this ratio.
    max_failures: int | None
    min_success_ratio: float | None
    lease_ttl: float
    # Where a model's first night learns its durations: see history.py.
    history: HistoryDepth = "off"
    # Past this time no new training starts (the run's deadline); the rest goes on.
    stop_training_at: datetime | None = None
    # `--retry-failed`: each failed stage of the run opens a new attempt.
    retry_failed: bool = False
