"""A run's live counts, fed by every transition, and what a run returns when it ends.

`Progress` is what the CLI's live view, the progress log lines and the metrics read while a
run goes on; `RunResult` is the run's outcome for the caller of `run_batch`.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from fleet.errors import FleetError
from fleet.records import ModelRecord, StageRecord
from fleet.stages import RunStatus, Stage, StageState


@dataclass(frozen=True, slots=True)
class Failure:
    model_id: str
    name: str
    stage: Stage
    reason: str


@dataclass(frozen=True, slots=True)
class ProgressSnapshot:
    elapsed_s: float
    models_total: int
    models_succeeded: int
    models_failed: int
    models_rejected: int
    stages: dict[Stage, dict[StageState, int]]
    recent_failures: tuple[Failure, ...]

    @property
    def models_finished(self) -> int:
        return self.models_succeeded + self.models_failed + self.models_rejected

    def eta_s(self) -> float | None:
        """Time left at the rate models finished so far (None until one has)."""
        done = self.models_finished
        if done == 0 or done >= self.models_total:
            return None if done == 0 else 0.0
        return self.elapsed_s / done * (self.models_total - done)


@dataclass(slots=True)
class Progress:
    """Live counts per stage and state, fed by every transition; read by the CLI."""

    clock: Callable[[], float] = time.monotonic
    started: float = 0.0
    models_total: int = 0
    models_succeeded: int = 0
    models_failed: int = 0
    # Rejected by an approval gate: finished, and not a failure.
    models_rejected: int = 0
    counts: dict[Stage, Counter[StageState]] = field(default_factory=dict)
    failures: deque[Failure] = field(default_factory=lambda: deque(maxlen=5))
    submissions: Counter[Stage] = field(default_factory=Counter)
    # The same, by project (for each project's metrics).
    project_submissions: dict[str, Counter[Stage]] = field(default_factory=dict)

    def start(self, models: list[ModelRecord], stages: tuple[Stage, ...]) -> None:
        self.started = self.clock()
        self.models_total = len(models)
        self.counts = {stage: Counter() for stage in stages}
        for model in models:
            for stage in stages:
                self.counts[stage][model.stages[stage].state] += 1

    def moved(self, stage: Stage, before: StageState, after: StageState) -> None:
        counts = self.counts.setdefault(stage, Counter())
        counts[before] -= 1
        counts[after] += 1
        if after is StageState.SUBMITTING:
            self.submissions[stage] += 1

    def model_finished(
        self, model: ModelRecord, failed: StageRecord | None, *, rejected: bool = False
    ) -> None:
        if rejected:
            self.models_rejected += 1
            return
        if failed is None:
            self.models_succeeded += 1
            return
        self.models_failed += 1
        self.failures.append(
            Failure(model.spec.id, model.spec.name, failed.stage, failed.error or "")
        )

    def snapshot(self) -> ProgressSnapshot:
        return ProgressSnapshot(
            elapsed_s=self.clock() - self.started,
            models_total=self.models_total,
            models_succeeded=self.models_succeeded,
            models_failed=self.models_failed,
            models_rejected=self.models_rejected,
            stages={stage: dict(counts) for stage, counts in self.counts.items()},
            recent_failures=tuple(self.failures),
        )


@dataclass(frozen=True, slots=True)
class RunResult:
    run_id: str
    status: RunStatus
    models_total: int
    succeeded: int
    failed: tuple[Failure, ...]
    pending: int
    elapsed_s: float
    resumed: bool
    aborted: FleetError | None = None
    reason: str | None = None
    rejected: tuple[str, ...] = ()  # names of models whose new version a gate rejected


@dataclass(frozen=True, slots=True)
class ProjectProgress:
    """The run's progress, with one project's submissions also counted apart."""

    run: Progress
    project: str

    def moved(self, stage: Stage, before: StageState, after: StageState) -> None:
        self.run.moved(stage, before, after)
        if after is StageState.SUBMITTING:
            self.run.project_submissions.setdefault(self.project, Counter())[stage] += 1

    def model_finished(
        self, model: ModelRecord, failed: StageRecord | None, *, rejected: bool = False
    ) -> None:
        self.run.model_finished(model, failed, rejected=rejected)


class ProgressSink(Protocol):
    def moved(self, stage: Stage, before: StageState, after: StageState) -> None: ...
    def model_finished(
        self, model: ModelRecord, failed: StageRecord | None, *, rejected: bool = False
    ) -> None: ...
