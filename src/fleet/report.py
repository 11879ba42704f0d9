"""Run reports: what happened to every model of a run, as Markdown, JSON, JUnit XML or HTML.

`build_report` reads one run (and, for the comparison, the run before it) from the state file,
or from several merged (the shards of a run: see `statefiles.py`), into frozen values; `render`
turns those into text. Nothing here prints or writes files.

A failed model's `error` is its failed stage's error as the engine recorded it. Its
`root_cause` reduces that error to a class that groups alike failures across models:

    "training job 3f9…e1 ended ERROR"            → "job ended ERROR"   (or CANCELLED)
    "the server kept failing: GET /x: HTTP 503"  → "HTTP 503"          (the innermost status)
    anything else                                → the error with UUIDs replaced by "<id>"
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import Any, Literal

from fleet.config import DEFAULT_PROJECT
from fleet.scheduler import model_outcome
from fleet.secrets import redactor
from fleet.stages import DONE, Outcome, Stage, StageState
from fleet.statefiles import RunState, Source, StateFiles
from fleet.store import ModelRecord, Store

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


def render(report: RunReport, fmt: Format) -> str:
    """The report as text in one of `FORMATS`, without a secret in it (the store takes them
    out as it writes; a file written before it did may still hold the patterns)."""
    return redactor.scrub(_rendered(report, fmt))


def _rendered(report: RunReport, fmt: Format) -> str:
    if fmt == "md":
        return _markdown(report)
    if fmt == "json":
        return json.dumps(_plain(report), indent=2) + "\n"
    if fmt == "junit":
        return _junit(report)
    if fmt == "html":
        from fleet.report_html import html_report  # noqa: PLC0415 - it builds on this module

        return html_report(report)
    raise ValueError(f"unknown report format {fmt!r}; choose one of {', '.join(FORMATS)}")


DASH = "\N{EN DASH}"  # what a missing value shows


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return DASH
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:  # noqa: PLR2004 - a minute
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:  # noqa: PLR2004 - an hour
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def format_when(value: datetime | None) -> str:
    return DASH if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def one_line(text: str | None, limit: int = 160) -> str:
    if not text:
        return ""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def merged_from(report: RunReport) -> str:
    """The state files a report was read from, each with the run's status and models there."""
    return ", ".join(
        f"{source.db} ({source.status or 'run not there'}, {source.models} models)"
        for source in report.sources
    )


def failure_groups(report: RunReport) -> list[tuple[str, list[ModelReport]]]:
    """Failed models grouped by root cause, the largest group first."""
    groups: dict[str, list[ModelReport]] = {}
    for model in report.with_outcome(Outcome.FAILED):
        groups.setdefault(model.root_cause or "unknown", []).append(model)
    return sorted(groups.items(), key=lambda item: (-len(item[1]), item[0]))


# -- json --


def _plain(value: object) -> Any:
    """Dataclasses, enums, dates and mappings as JSON values; derived model facts added."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Enum):
        return value.value
    if is_dataclass(value) and not isinstance(value, type):
        plain = {f.name: _plain(getattr(value, f.name)) for f in fields(value)}
        if isinstance(value, RunReport):
            plain = {"report_version": REPORT_VERSION, **plain}
            plain["duration_s"] = value.duration_s
            plain["projects"] = _plain(value.projects)
        if isinstance(value, ModelReport):
            plain["stage_reached"] = _plain(value.stage_reached)
            plain["attempts_made"] = value.attempts_made
            plain["duration_s"] = value.duration_s
            plain["left_for_next_run"] = value.left_for_next_run
        return plain
    if isinstance(value, Mapping):
        return {str(_plain(k)): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# -- markdown --


def _cell(text: object) -> str:
    return one_line(str(text) if text is not None else "", 120).replace("|", "\\|") or " "


def _markdown_scoring(report: RunReport) -> list[str]:
    """How the scoring jobs that `cron = "@once"` deployments started stood when last seen."""
    scored = [m for m in report.models if m.scoring_job_id]
    if not scored:
        return []
    by_status: dict[str, int] = {}
    for model in scored:
        status = model.scoring_status or "unknown"
        by_status[status] = by_status.get(status, 0) + 1
    counts = ", ".join(f"{status} {n}" for status, n in sorted(by_status.items()))
    lines = ["", f"Scoring jobs started by the deployments (as last seen): {counts}."]
    unfinished = [m for m in scored if m.scoring_status != "COMPLETED"]
    if unfinished:
        lines += ["", "| model | scoring job | status |", "|---|---|---|"]
        lines += [
            f"| {_cell(m.name)} | {m.scoring_job_id} | {m.scoring_status or DASH} |"
            for m in unfinished
        ]
    return lines


def _markdown(report: RunReport) -> str:
    lines = [f"# fleet run {report.run_id}: {report.status}", ""]
    lines.append(
        f"Started {format_when(report.created_at)}, "
        + (f"finished {format_when(report.finished_at)}" if report.finished_at else "not finished")
        + f" ({format_duration(report.duration_s)}); stages {', '.join(report.stages)}."
    )
    if report.reason:
        lines += ["", f"Reason: {one_line(report.reason, 400)}"]
    if len(report.sources) > 1:
        lines += ["", f"Merged from {len(report.sources)} state files: {merged_from(report)}."]
    for warning in report.warnings:
        lines += ["", f"> **Warning:** {one_line(warning, 400)}"]
    lines += ["", "| outcome | models |", "|---|---:|"]
    lines += [f"| {o} | {report.totals.get(o, 0)} |" for o in OUTCOME_ORDER]
    lines += [f"| **total** | **{len(report.models)}** |"]
    several = report.several_projects
    if several:
        lines += ["", *_markdown_projects(report)]
    lines += ["", "## Models", ""]
    lines += [
        (
            f"| {'project | ' if several else ''}model | outcome | stage reached | attempts "
            "| decision | error |"
        ),
        f"|{'---|' if several else ''}---|---|---|---:|---|---|",
    ]
    lines += [
        f"| {f'{_cell(m.project)} | ' if several else ''}{_cell(m.name)} | {m.outcome} "
        f"| {m.stage_reached or DASH} | {m.attempts_made} "
        f"| {_cell(m.decision or '')} | {_cell(m.error or '')} |"
        for m in report.models
    ]
    lines += _markdown_scoring(report)
    lines += ["", *_markdown_failures(report), "", *_markdown_left(report)]
    if report.comparison is not None:
        lines += ["", *_markdown_comparison(report.comparison)]
    return "\n".join(lines) + "\n"


def _markdown_projects(report: RunReport) -> list[str]:
    lines = ["## Projects", ""]
    lines += ["| project | " + " | ".join(OUTCOME_ORDER) + " | total |"]
    lines += ["|---|" + "---:|" * (len(OUTCOME_ORDER) + 1)]
    lines += [
        f"| {_cell(project)} | "
        + " | ".join(str(totals[o]) for o in OUTCOME_ORDER)
        + f" | {sum(totals.values())} |"
        for project, totals in report.projects.items()
    ]
    return lines


def _markdown_failures(report: RunReport) -> list[str]:
    lines = ["## Failures", ""]
    groups = failure_groups(report)
    if not groups:
        return [*lines, "No model failed."]
    for cause, models in groups:
        lines += [f"### {one_line(cause)} ({len(models)})", ""]
        for m in models:
            line = f"- **{_cell(m.name)}** at {m.failed_stage}: {one_line(m.error)}"
            if m.skipped_because:
                line += f" ({m.skipped_because})"
            lines.append(line)
        lines.append("")
    return lines[:-1]


def _markdown_left(report: RunReport) -> list[str]:
    lines = ["## Left for the next run", ""]
    left = report.left_for_next_run
    if not left:
        return [*lines, "Nothing: every model finished."]
    if report.reason:
        lines += [f"The run stopped: {one_line(report.reason, 400).rstrip('.')}.", ""]
    return lines + [f"- {_cell(m.name)}: {m.where}" for m in left]


def _markdown_comparison(comparison: Comparison) -> list[str]:
    lines = [f"## Compared with run {comparison.previous_run_id}", ""]
    lines += [f"### Newly failing ({len(comparison.newly_failing)})", ""]
    lines += [
        f"- {_cell(c.name)}: {c.before} before, fails at {c.stage} now: {one_line(c.error)}"
        for c in comparison.newly_failing
    ] or ["None."]
    lines += ["", f"### Recovered ({len(comparison.recovered)})", ""]
    lines += [
        f"- {_cell(c.name)}: failed at {c.stage} before, succeeded now"
        for c in comparison.recovered
    ] or ["None."]
    lines += [
        "",
        f"### Slower than {comparison.slower_factor:g}x ({len(comparison.slower)})",
        "",
    ]
    if not comparison.slower:
        return [*lines, "None."]
    lines += [
        "| model | stage | before | now | factor |",
        "|---|---|---:|---:|---:|",
    ]
    lines += [
        f"| {_cell(s.name)} | {s.stage} | {format_duration(s.before_s)} "
        f"| {format_duration(s.after_s)} | {s.factor:.1f} |"
        for s in comparison.slower
    ]
    return lines


# -- junit --

# XML 1.0 cannot carry most control characters, even escaped; a server message might.
_XML_ILLEGAL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _xml(text: object) -> str:
    return _XML_ILLEGAL.sub("?", str(text))


def _junit(report: RunReport) -> str:
    failed = report.with_outcome(Outcome.FAILED)
    skipped = report.left_for_next_run
    root = ET.Element("testsuites", name="fleet", tests=str(len(report.models)))
    root.set("failures", str(len(failed)))
    suite = ET.SubElement(
        root,
        "testsuite",
        name=_xml(f"fleet run {report.run_id}"),
        tests=str(len(report.models)),
        failures=str(len(failed)),
        errors="0",
        skipped=str(len(skipped)),
        time=f"{report.duration_s:.3f}",
        timestamp=report.created_at.isoformat(),
    )
    properties = ET.SubElement(suite, "properties")
    for name, value in (("status", report.status), ("reason", report.reason)):
        if value:
            ET.SubElement(properties, "property", name=name, value=_xml(value))
    for source in report.sources:
        described = f"{source.db}: {source.status or 'run not there'}, {source.models} models"
        ET.SubElement(properties, "property", name="source", value=_xml(described))
    for warning in report.warnings:
        ET.SubElement(properties, "property", name="warning", value=_xml(warning))
    several = report.several_projects
    for model in report.models:
        _junit_case(suite, report.run_id, model, several=several)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, "unicode") + "\n"


def _junit_case(
    suite: ET.Element, run_id: str, model: ModelReport, *, several: bool = False
) -> None:
    # With several projects, CI tools group the cases by project through their class name.
    classname = f"fleet.{run_id}.{model.project}" if several else f"fleet.{run_id}"
    case = ET.SubElement(
        suite,
        "testcase",
        classname=_xml(classname),
        name=_xml(model.name),
        time=f"{model.duration_s or 0.0:.3f}",
    )
    if model.outcome is Outcome.FAILED:
        failure = ET.SubElement(
            case, "failure", message=_xml(model.error or ""), type=str(model.failed_stage)
        )
        failure.text = _xml("\n".join(_junit_details(model)))
    elif model.left_for_next_run:
        ET.SubElement(case, "skipped", message="left for the next run")
    elif model.outcome is Outcome.REJECTED:
        out = ET.SubElement(case, "system-out")
        out.text = _xml(
            f"rejected by the approval gate: {model.comment or ''}\nrule: {model.rule or DASH}"
        )


def _junit_details(model: ModelReport) -> list[str]:
    project = "" if model.project == DEFAULT_PROJECT else f" in project {model.project}"
    lines = [f"model {model.name} ({model.id}){project}", f"root cause: {model.root_cause}"]
    if model.skipped_because:
        lines.append(model.skipped_because)
    lines.append("path:")
    lines += [
        f"  {s.stage}: {s.state}, attempt {s.attempt}, {format_duration(s.duration_s)}"
        + (f", job {s.job_id}" if s.job_id else "")
        for s in model.path
    ]
    final = {s.stage: s.attempt for s in model.path}
    earlier = [a for a in model.attempts if a.attempt < final.get(a.stage, 0) and a.error]
    if earlier:
        lines.append("earlier tries:")
        lines += [f"  {a.stage} try {a.attempt}: {a.error}" for a in earlier]
    return lines


# -- html --

STAGE_COLOURS: Mapping[Stage, str] = {
    Stage.TRAIN: "#4e79a7",
    Stage.EVALUATE: "#f28e2b",
    Stage.APPROVE: "#76b7b2",
    Stage.DEPLOY: "#59a14f",
    Stage.RETIRE: "#b07aa1",
}
OUTCOME_COLOURS: Mapping[Outcome, str] = {
    Outcome.SUCCEEDED: "#2f855a",
    Outcome.REJECTED: "#b7791f",
    Outcome.FAILED: "#c53030",
    Outcome.RUNNING: "#2b6cb0",
    Outcome.PENDING: "#718096",
}
