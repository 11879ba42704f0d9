"""The report as data: what happened to every model of a run, and how it compares.

`build_report` reads one run (and, for the comparison, the run before it) from the state file,
or from several merged (the shards of a run: see `statefiles.py`), into frozen values; the
renderings are text.py and html.py, behind `report.render`. Nothing here prints or writes
files.

A failed model's `error` is its failed stage's error as the engine recorded it. Its
`root_cause` reduces that error to a class that groups alike failures across models:

    "training job 3f9…e1 ended ERROR"            → "job ended ERROR"   (or CANCELLED)
    "the server kept failing: GET /x: HTTP 503"  → "HTTP 503"          (the innermost status)
    anything else                                → the error with UUIDs replaced by "<id>"
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from fleet.models import DEFAULT_PROJECT
from fleet.records import ModelRecord, model_outcome
from fleet.report.statefiles import RunState, Source, StateFiles
from fleet.stages import DONE, Outcome, Stage, StageState
from fleet.store import Store

Format = Literal["md", "json", "junit", "html"]
FORMATS: tuple[Format, ...] = ("md", "json", "junit", "html")
REPORT_VERSION = 1

# Outcomes in the order a reader wants them: finished first, then what is left to do.
OUTCOME_ORDER: tuple[Outcome, ...] = (
    Outcome.SUCCEEDED,
    Outcome.REJECTED,
    Outcome.FAILED,
    Outcome.RUNNING,
    Outcome.PENDING,
)
LEFT_FOR_NEXT_RUN = frozenset({Outcome.RUNNING, Outcome.PENDING})


@dataclass(frozen=True, slots=True)
class Step:
    """One stage on a model's path, in its final state for this run."""

    stage: Stage
    state: StageState
    attempt: int
    started_at: datetime | None
    finished_at: datetime | None
    duration_s: float | None  # submitted_at to finished_at, when both are known
    job_id: str | None


@dataclass(frozen=True, slots=True)
class Attempt:
    """One try of a stage, as it was when the try closed (failed tries before a retry too)."""

    stage: Stage
    attempt: int
    outcome: StageState
    job_id: str | None
    error: str | None
    submitted_at: datetime | None
    finished_at: datetime | None


@dataclass(frozen=True, slots=True)
class ModelReport:
    id: str
    name: str
    position: int
    outcome: Outcome
    path: tuple[Step, ...]
    attempts: tuple[Attempt, ...]
    trained_model_id: str | None
    deployment_id: str | None
    metrics: Mapping[str, str]
    decision: str | None
    rule: str | None
    comment: str | None
    comparisons: tuple[Mapping[str, Any], ...]
    monitor: Mapping[str, Any] | None
    error: str | None
    failed_stage: Stage | None
    root_cause: str | None
    skipped_because: str | None  # e.g. "approve, deploy, retire not run: evaluate failed"
    db: str | None = None  # the state file it was read from
    project: str = DEFAULT_PROJECT  # the ModelOps project, by its name in the configuration
    # The scoring job a cron = "@once" deployment started, and its status as last seen.
    scoring_job_id: str | None = None
    scoring_status: str | None = None

    @property
    def stage_reached(self) -> Stage | None:
        """The last stage this run did something for (a skipped stage did nothing)."""
        reached = None
        for step in self.path:
            if step.state not in {StageState.PENDING, StageState.SKIPPED}:
                reached = step.stage
        return reached

    @property
    def attempts_made(self) -> int:
        return sum(step.attempt for step in self.path)

    @property
    def started_at(self) -> datetime | None:
        return min((s.started_at for s in self.path if s.started_at), default=None)

    @property
    def finished_at(self) -> datetime | None:
        return max((s.finished_at for s in self.path if s.finished_at), default=None)

    @property
    def duration_s(self) -> float | None:
        """From the first stage's submission to the last stage's end."""
        if self.started_at is None or self.finished_at is None:
            return None
        return max((self.finished_at - self.started_at).total_seconds(), 0.0)

    @property
    def left_for_next_run(self) -> bool:
        return self.outcome in LEFT_FOR_NEXT_RUN

    @property
    def where(self) -> str:
        """Where a model left for the next run stands: "not started", "deploy running", …"""
        started = False
        for step in self.path:
            if step.state is StageState.PENDING:
                return f"next: {step.stage}" if started else "not started"
            if step.state not in DONE:
                return f"{step.stage} {step.state}"
            started = True
        return "finished"


@dataclass(frozen=True, slots=True)
class Change:
    """A model whose outcome crossed the failed line since the previous run."""

    model_id: str
    name: str
    before: Outcome
    after: Outcome
    stage: Stage | None  # the failed stage (now for newly failing, before for recovered)
    error: str | None


@dataclass(frozen=True, slots=True)
class Slowdown:
    model_id: str
    name: str
    stage: Stage
    before_s: float
    after_s: float

    @property
    def factor(self) -> float:
        return self.after_s / self.before_s


@dataclass(frozen=True, slots=True)
class Comparison:
    """This run against an earlier one in the same state file, models matched by id."""

    previous_run_id: str
    newly_failing: tuple[Change, ...]
    recovered: tuple[Change, ...]
    slower: tuple[Slowdown, ...]
    slower_factor: float


@dataclass(frozen=True, slots=True)
class RunReport:
    run_id: str
    status: str
    reason: str | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    stages: tuple[Stage, ...]
    totals: Mapping[Outcome, int]
    models: tuple[ModelReport, ...]
    comparison: Comparison | None
    sources: tuple[Source, ...] = ()  # the state files read, with the run's status in each
    overlaps: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # model id → files
    warnings: tuple[str, ...] = ()  # a file without the run, models in two files

    def with_outcome(self, *outcomes: Outcome) -> list[ModelReport]:
        return [m for m in self.models if m.outcome in outcomes]

    @property
    def projects(self) -> dict[str, dict[Outcome, int]]:
        """The totals of each project, in the order of their first models."""
        by_project: dict[str, dict[Outcome, int]] = {}
        for model in self.models:
            totals = by_project.setdefault(model.project, dict.fromkeys(OUTCOME_ORDER, 0))
            totals[model.outcome] += 1
        return by_project

    @property
    def several_projects(self) -> bool:
        return len({m.project for m in self.models}) > 1

    @property
    def left_for_next_run(self) -> list[ModelReport]:
        return [m for m in self.models if m.left_for_next_run]

    @property
    def duration_s(self) -> float:
        end = self.finished_at or self.updated_at
        return max((end - self.created_at).total_seconds(), 0.0)


# -- building --------------------------------------------------------------------------------


async def build_report(
    source: Store | StateFiles,
    run_id: str | None = None,
    *,
    previous: str | None = None,
    slower_factor: float = 1.5,
    min_slower_s: float = 1.0,
) -> RunReport:
    """The report of `run_id` (default: the latest run), compared with `previous` (default:
    the run created before it in the same files, if any).

    From several state files, the run is merged over them (see `statefiles.py`); the report
    names the files and carries their warnings.

    A stage counts as slower when it took more than `slower_factor` times as long as before
    and at least `min_slower_s` seconds longer, so that millisecond steps (an approval call)
    are not flagged for jitter.
    """
    files = source if isinstance(source, StateFiles) else StateFiles.of(source)
    state = await files.read(run_id)
    models = _model_reports(state)
    previous_id = previous if previous is not None else await files.previous_run_id(state.run.id)
    comparison = None
    if previous_id is not None:
        before = _model_reports(await files.read(previous_id))
        comparison = compare(previous_id, before, models, slower_factor, min_slower_s)
    totals = dict.fromkeys(OUTCOME_ORDER, 0)
    for model in models:
        totals[model.outcome] += 1
    record = state.run
    return RunReport(
        run_id=record.id,
        status=record.status,
        reason=record.reason,
        created_at=record.created_at,
        updated_at=record.updated_at,
        finished_at=record.finished_at,
        stages=record.stages,
        totals=totals,
        models=tuple(models),
        comparison=comparison,
        sources=state.sources,
        overlaps=state.overlaps,
        warnings=state.warnings,
    )


def root_cause(error: str | None) -> str | None:
    """The class of an error that groups alike failures (see the module docstring)."""
    if error is None:
        return None
    if ended := _JOB_ENDED.search(error):
        return f"job ended {ended['status']}"
    if statuses := _HTTP_STATUS.findall(error):
        return f"HTTP {statuses[-1]}"
    return _UUID.sub("<id>", error)


def compare(
    previous_run_id: str,
    before: Sequence[ModelReport],
    after: Sequence[ModelReport],
    slower_factor: float = 1.5,
    min_slower_s: float = 1.0,
) -> Comparison:
    """Newly failing, recovered and slower models of `after` against `before`, by model id."""
    earlier = {m.id: m for m in before}
    newly_failing: list[Change] = []
    recovered: list[Change] = []
    slower: list[Slowdown] = []
    for now in after:
        then = earlier.get(now.id)
        if then is None:
            continue
        if now.outcome is Outcome.FAILED and then.outcome is not Outcome.FAILED:
            newly_failing.append(
                Change(now.id, now.name, then.outcome, now.outcome, now.failed_stage, now.error)
            )
        elif then.outcome is Outcome.FAILED and now.outcome is Outcome.SUCCEEDED:
            recovered.append(
                Change(now.id, now.name, then.outcome, now.outcome, then.failed_stage, then.error)
            )
        durations = {s.stage: s.duration_s for s in then.path}
        for step in now.path:
            was = durations.get(step.stage)
            if (
                was is not None
                and step.duration_s is not None
                and was > 0
                and step.duration_s > slower_factor * was
                and step.duration_s - was >= min_slower_s
            ):
                slower.append(Slowdown(now.id, now.name, step.stage, was, step.duration_s))
    return Comparison(
        previous_run_id=previous_run_id,
        newly_failing=tuple(newly_failing),
        recovered=tuple(recovered),
        slower=tuple(sorted(slower, key=lambda s: -s.factor)),
        slower_factor=slower_factor,
    )


_JOB_ENDED = re.compile(r"\bjob \S+ ended (?P<status>[A-Z]+)")
_HTTP_STATUS = re.compile(r"\bHTTP (\d{3})\b")
_UUID = re.compile(
    r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b", re.IGNORECASE
)


def _model_reports(state: RunState) -> list[ModelReport]:
    return [
        _model_report(
            model,
            state.run.stages,
            [_attempt(row) for row in state.attempts.get(model.spec.id, ())],
            state.origin.get(model.spec.id),
        )
        for model in state.models
    ]


def _attempt(row: Mapping[str, Any]) -> Attempt:
    return Attempt(
        stage=Stage(row["stage"]),
        attempt=row["attempt"],
        outcome=StageState(row["outcome"]),
        job_id=row["job_id"],
        error=row["error"],
        submitted_at=_datetime(row["submitted_at"]),
        finished_at=_datetime(row["finished_at"]),
    )


def _model_report(
    model: ModelRecord, stages: Sequence[Stage], attempts: list[Attempt], db: str | None
) -> ModelReport:
    path = tuple(_step(model, stage) for stage in stages if stage in model.stages)
    failed = next((s for s in path if s.state is StageState.FAILED), None)
    error = model.stages[failed.stage].error if failed else None
    approve = model.stages.get(Stage.APPROVE)
    gate = approve.data if approve is not None else {}
    evaluate = model.stages.get(Stage.EVALUATE)
    train = model.stages.get(Stage.TRAIN)
    deploy = model.stages.get(Stage.DEPLOY)
    score = scoring(model.stages)
    order = {stage: i for i, stage in enumerate(stages)}
    return ModelReport(
        id=model.spec.id,
        name=model.spec.name,
        position=model.position,
        outcome=model_outcome(model),
        path=path,
        attempts=tuple(sorted(attempts, key=lambda a: (order.get(a.stage, 99), a.attempt))),
        trained_model_id=train.trained_model_id if train else None,
        deployment_id=deploy.deployment_id if deploy else None,
        metrics=dict(model.metrics),
        decision=_text(gate.get("decision")),
        rule=_text(gate.get("rule")),
        comment=_text(gate.get("comment")),
        comparisons=tuple(c for c in gate.get("comparisons") or () if isinstance(c, Mapping)),
        monitor=evaluate.data.get("monitor") if evaluate is not None else None,
        error=error,
        failed_stage=failed.stage if failed else None,
        root_cause=root_cause(error) if failed else None,
        skipped_because=_skipped_because(path, failed),
        db=db,
        project=model.spec.project,
        scoring_job_id=score["job_id"] if score else None,
        scoring_status=score["status"] if score else None,
    )


def scoring(stages: Any) -> dict[str, Any] | None:
    """The scoring job a `cron = "@once"` deployment started, as last seen (retire waits for
    it with retire_mode = "deployed", so its record is the later one)."""
    for stage in (Stage.RETIRE, Stage.DEPLOY):
        record = stages.get(stage)
        if record is not None and record.data.get("scoring_job_id"):
            return {
                "job_id": record.data["scoring_job_id"],
                "status": record.data.get("scoring_status"),
            }
    return None


def _step(model: ModelRecord, stage: Stage) -> Step:
    record = model.stages[stage]
    duration = None
    if record.submitted_at is not None and record.finished_at is not None:
        duration = max((record.finished_at - record.submitted_at).total_seconds(), 0.0)
    return Step(
        stage=stage,
        state=record.state,
        attempt=record.attempt,
        started_at=record.submitted_at,
        finished_at=record.finished_at,
        duration_s=duration,
        job_id=record.job_id,
    )


def _skipped_because(path: Sequence[Step], failed: Step | None) -> str | None:
    if failed is None:
        return None
    after = path[path.index(failed) + 1 :]
    not_run = [s.stage.value for s in after if s.state is StageState.PENDING]
    if not not_run:
        return None
    return f"{', '.join(not_run)} not run: {failed.stage} failed"


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def _datetime(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


# -- rendering -------------------------------------------------------------------------------


# -- json --


# -- markdown --


# -- junit --


# -- html --
