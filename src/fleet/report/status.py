"""What the CLI shows: the live progress table, the status document and its tables.

These build rich renderables and plain data; `cli.py` decides where they are printed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import RenderableType
from rich.progress_bar import ProgressBar
from rich.table import Table

from fleet.progress import ProgressSnapshot
from fleet.records import model_outcome
from fleet.report.model import scoring
from fleet.report.statefiles import StateFiles
from fleet.secrets import redactor
from fleet.stages import Outcome, Stage, StageState


def progress_table(snap: ProgressSnapshot) -> Table:
    eta = snap.eta_s()
    per_minute = snap.models_finished / snap.elapsed_s * 60 if snap.elapsed_s > 0 else 0.0
    table = Table(
        title=(
            f"fleet: {snap.models_finished}/{snap.models_total} models finished "
            f"({snap.models_failed} failed, {snap.models_rejected} rejected) · "
            f"{per_minute:.1f}/min · {snap.elapsed_s:.0f}s elapsed"
            + (f" · ETA {eta:.0f}s" if eta is not None else "")
        ),
        title_justify="left",
        caption_justify="left",
    )
    table.add_column("stage")
    table.add_column("done", width=24)
    for state in ("pending", "in flight", "succeeded", "skipped", "failed"):
        table.add_column(state, justify="right")
    for stage, states in snap.stages.items():
        in_flight = sum(
            states.get(s, 0)
            for s in (StageState.SUBMITTING, StageState.SUBMITTED, StageState.RUNNING)
        )
        done = sum(states.get(s, 0) for s in (StageState.SUCCEEDED, StageState.SKIPPED))
        table.add_row(
            stage.value,
            ProgressBar(total=max(snap.models_total, 1), completed=done, width=24),
            str(states.get(StageState.PENDING, 0)),
            str(in_flight),
            str(states.get(StageState.SUCCEEDED, 0)),
            str(states.get(StageState.SKIPPED, 0)),
            str(states.get(StageState.FAILED, 0)),
        )
    for failure in snap.recent_failures:
        table.caption = (table.caption or "") + (
            f"\nfailed: {failure.name} at {failure.stage}: {redactor.scrub(failure.reason)[:120]}"
        )
    return table


async def status_document(dbs: Sequence[Path], run_id: str | None) -> dict[str, Any]:
    """A run's status from its state files (several: merged, see `statefiles.py`)."""
    async with StateFiles.open(dbs) as files:
        state = await files.read(run_id)
    record = state.run
    counts: dict[str, dict[str, int]] = {stage.value: {} for stage in record.stages}
    projects: dict[str, dict[str, int]] = {}
    rows = []
    for model in state.models:
        outcome = model_outcome(model).value
        of_project = projects.setdefault(model.spec.project, {})
        of_project[outcome] = of_project.get(outcome, 0) + 1
        current = _current_stage(model.stages, record.stages)
        for stage, stage_record in model.stages.items():
            bucket = counts.setdefault(stage.value, {})
            bucket[stage_record.state.value] = bucket.get(stage_record.state.value, 0) + 1
        rows.append(
            {
                "model_id": model.spec.id,
                "name": model.spec.name,
                "project": model.spec.project,
                "outcome": outcome,
                "stage": current[0].value,
                "state": current[1].state.value,
                "job_id": current[1].job_id,
                "trained_model_id": model.stages[Stage.TRAIN].trained_model_id
                if Stage.TRAIN in model.stages
                else None,
                "deployment_id": model.stages[Stage.DEPLOY].deployment_id
                if Stage.DEPLOY in model.stages
                else None,
                "attempt": current[1].attempt,
                "error": current[1].error,
                "metrics": dict(model.metrics),
                "attempts": [
                    {k: v for k, v in a.items() if k not in {"run_id", "model_id"}}
                    for a in state.attempts.get(model.spec.id, ())
                ],
                **judgements(model.stages),
                "scoring": scoring(model.stages),
                "db": state.origin[model.spec.id],
            }
        )
    document: dict[str, Any] = {
        "run_id": record.id,
        "status": record.status,
        "reason": record.reason,
        "created_at": record.created_at.isoformat(),
        "finished_at": record.finished_at.isoformat() if record.finished_at else None,
        "sources": [dataclasses.asdict(source) for source in state.sources],
        "warnings": list(state.warnings),
        "overlaps": {model_id: list(files) for model_id, files in state.overlaps.items()},
        "stages": counts,
        "projects": projects,
        "models": rows,
    }
    # Texts from the store are scrubbed as written; a file from before that may hold patterns.
    scrubbed: dict[str, Any] = redactor.scrub_value(document)
    return scrubbed


def judgements(stages: Any) -> dict[str, Any]:
    """The approval gate's decision (rule, values, comment) and the monitor flag, if any."""
    approve = stages.get(Stage.APPROVE)
    evaluate = stages.get(Stage.EVALUATE)
    gate = None
    if approve is not None and "decision" in approve.data:
        gate = {k: approve.data.get(k) for k in ("decision", "rule", "comparisons", "comment")}
    monitor = evaluate.data.get("monitor") if evaluate is not None else None
    return {
        "decision": gate["decision"] if gate else None,
        "gate": gate,
        "monitor": monitor,
    }


def _current_stage(stages: Any, order: tuple[Stage, ...]) -> tuple[Stage, Any]:
    """The stage a model is at: its failed or in-flight stage, else its first unfinished one.

    Only the model's own stages count: merged shards may have run different ones.
    """
    own = [stage for stage in order if stage in stages]
    for stage in own:
        record = stages[stage]
        if record.state not in {StageState.SUCCEEDED, StageState.SKIPPED}:
            return stage, record
    return own[-1], stages[own[-1]]


def status_view(document: dict[str, Any]) -> list[RenderableType]:
    """The status of a run as text lines and tables, in the order they are shown."""
    shown: list[RenderableType] = []
    shown.append(
        f"run {document['run_id']}: {document['status']} (started {document['created_at']})"
    )
    if document["reason"]:
        shown.append(f"reason: {document['reason']}")
    if len(document["sources"]) > 1:
        shown.append(_files_table(document["sources"]))
    shown += [f"warning: {warning}" for warning in document["warnings"]]
    counts = Table(title="stages", title_justify="left")
    counts.add_column("stage")
    states = [
        s.value for s in StageState if any(by.get(s.value) for by in document["stages"].values())
    ]
    for state in states:
        counts.add_column(state, justify="right")
    for stage, by_state in document["stages"].items():
        counts.add_row(stage, *(str(by_state.get(state, 0)) for state in states))
    shown.append(counts)
    several = len(document["projects"]) > 1
    if several:
        shown.append(_projects_table(document["projects"]))
    shown.append(_models_table(document["models"], several=several))
    return shown


def _models_table(rows: list[dict[str, Any]], *, several: bool) -> Table:
    """A line per model: where it is, and the note that explains it."""
    models = Table(title="models", title_justify="left")
    columns = ["name", "outcome", "stage", "state", "attempt", "job", "decision"]
    scored = any(row["scoring"] for row in rows)
    if scored:
        columns.append("scoring")  # the job a cron = "@once" deployment started
    for column in ["project", *columns, "note"] if several else [*columns, "note"]:
        models.add_column(column, overflow="fold")
    for row in rows:
        note = row["error"] or ""
        if row["gate"] and row["gate"].get("comment") and not note:
            note = row["gate"]["comment"]
        if row["monitor"] and row["monitor"]["flag"] != "ok":
            note = f"monitor {row['monitor']['flag']}: {row['monitor']['detail']}"
        models.add_row(
            *((row["project"],) if several else ()),
            row["name"],
            row["outcome"],
            row["stage"],
            row["state"],
            str(row["attempt"]),
            row["job_id"] or "",
            row["decision"] or "",
            *((_scoring_cell(row["scoring"]),) if scored else ()),
            note,
        )
    return models


def _scoring_cell(scoring: dict[str, Any] | None) -> str:
    if scoring is None:
        return ""
    return str(scoring["status"] or "seen")


def _projects_table(projects: dict[str, dict[str, int]]) -> Table:
    """How the models of each project stand, for a run over several projects."""
    table = Table(title="projects", title_justify="left")
    table.add_column("project")
    outcomes = [o.value for o in Outcome if any(o.value in counts for counts in projects.values())]
    for outcome in (*outcomes, "total"):
        table.add_column(outcome, justify="right")
    for project, counts in projects.items():
        table.add_row(
            project, *(str(counts.get(o, 0)) for o in outcomes), str(sum(counts.values()))
        )
    return table


def _files_table(sources: list[dict[str, Any]]) -> Table:
    """The state files a merged status was read from, with the run's status in each."""
    files = Table(title="state files", title_justify="left")
    files.add_column("db")
    files.add_column("status")
    files.add_column("models", justify="right")
    for source in sources:
        files.add_row(source["db"], source["status"] or "run not there", str(source["models"]))
    return files
