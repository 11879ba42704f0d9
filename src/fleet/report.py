"""Run reports: what happened to every model of a run, as Markdown, JSON, JUnit XML or HTML.

`build_report` reads one run (and, for the comparison, the run before it) from the state file
into frozen values; `render` turns those into text. Nothing here prints or writes files.

A failed model's `error` is its failed stage's error as the engine recorded it. Its
`root_cause` reduces that error to a class that groups alike failures across models:

    "training job 3f9…e1 ended ERROR"            → "job ended ERROR"   (or CANCELLED)
    "the server kept failing: GET /x: HTTP 503"  → "HTTP 503"          (the innermost status)
    anything else                                → the error with UUIDs replaced by "<id>"
"""

from __future__ import annotations

import html
import json
import math
import re
import statistics
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields, is_dataclass
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import Any, Literal

from fleet.errors import RunNotFound
from fleet.scheduler import model_outcome
from fleet.stages import DONE, Outcome, Stage, StageState
from fleet.store import ModelRecord, RunRecord, Store

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

    def with_outcome(self, *outcomes: Outcome) -> list[ModelReport]:
        return [m for m in self.models if m.outcome in outcomes]

    @property
    def left_for_next_run(self) -> list[ModelReport]:
        return [m for m in self.models if m.left_for_next_run]

    @property
    def duration_s(self) -> float:
        end = self.finished_at or self.updated_at
        return max((end - self.created_at).total_seconds(), 0.0)


# -- building --------------------------------------------------------------------------------


async def build_report(
    store: Store,
    run_id: str | None = None,
    *,
    previous: str | None = None,
    slower_factor: float = 1.5,
    min_slower_s: float = 1.0,
) -> RunReport:
    """The report of `run_id` (default: the latest run), compared with `previous` (default:
    the run created before it in the same file, if any).

    A stage counts as slower when it took more than `slower_factor` times as long as before
    and at least `min_slower_s` seconds longer, so that millisecond steps (an approval call)
    are not flagged for jitter.
    """
    record = await store.run(run_id) if run_id is not None else await store.latest_run()
    if record is None:
        raise RunNotFound("the state file holds no run yet")
    models = await _model_reports(store, record)
    previous_id = previous if previous is not None else await _previous_run_id(store, record)
    comparison = None
    if previous_id is not None:
        before = await _model_reports(store, await store.run(previous_id))
        comparison = compare(previous_id, before, models, slower_factor, min_slower_s)
    totals = dict.fromkeys(OUTCOME_ORDER, 0)
    for model in models:
        totals[model.outcome] += 1
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


async def _previous_run_id(store: Store, record: RunRecord) -> str | None:
    previous = await store.previous_run(record.id)
    return None if previous is None else previous.id


async def _model_reports(store: Store, record: RunRecord) -> list[ModelReport]:
    attempts: dict[str, list[Attempt]] = {}
    for row in await store.attempts(record.id):
        attempts.setdefault(row["model_id"], []).append(
            Attempt(
                stage=Stage(row["stage"]),
                attempt=row["attempt"],
                outcome=StageState(row["outcome"]),
                job_id=row["job_id"],
                error=row["error"],
                submitted_at=_datetime(row["submitted_at"]),
                finished_at=_datetime(row["finished_at"]),
            )
        )
    return [
        _model_report(model, record.stages, attempts.get(model.spec.id, []))
        for model in await store.models(record.id)
    ]


def _model_report(
    model: ModelRecord, stages: Sequence[Stage], attempts: list[Attempt]
) -> ModelReport:
    path = tuple(_step(model, stage) for stage in stages if stage in model.stages)
    failed = next((s for s in path if s.state is StageState.FAILED), None)
    error = model.stages[failed.stage].error if failed else None
    approve = model.stages.get(Stage.APPROVE)
    gate = approve.data if approve is not None else {}
    evaluate = model.stages.get(Stage.EVALUATE)
    train = model.stages.get(Stage.TRAIN)
    deploy = model.stages.get(Stage.DEPLOY)
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
    )


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
    """The report as text in one of `FORMATS`."""
    if fmt == "md":
        return _markdown(report)
    if fmt == "json":
        return json.dumps(_plain(report), indent=2) + "\n"
    if fmt == "junit":
        return _junit(report)
    if fmt == "html":
        return _html(report)
    raise ValueError(f"unknown report format {fmt!r}; choose one of {', '.join(FORMATS)}")


_DASH = "\N{EN DASH}"  # what a missing value shows


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return _DASH
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:  # noqa: PLR2004 - a minute
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:  # noqa: PLR2004 - an hour
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def _when(value: datetime | None) -> str:
    return _DASH if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _one_line(text: str | None, limit: int = 160) -> str:
    if not text:
        return ""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _failure_groups(report: RunReport) -> list[tuple[str, list[ModelReport]]]:
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
    return _one_line(str(text) if text is not None else "", 120).replace("|", "\\|") or " "


def _markdown(report: RunReport) -> str:
    lines = [f"# fleet run {report.run_id}: {report.status}", ""]
    lines.append(
        f"Started {_when(report.created_at)}, "
        + (f"finished {_when(report.finished_at)}" if report.finished_at else "not finished")
        + f" ({_duration(report.duration_s)}); stages {', '.join(report.stages)}."
    )
    if report.reason:
        lines += ["", f"Reason: {_one_line(report.reason, 400)}"]
    lines += ["", "| outcome | models |", "|---|---:|"]
    lines += [f"| {o} | {report.totals.get(o, 0)} |" for o in OUTCOME_ORDER]
    lines += [f"| **total** | **{len(report.models)}** |", "", "## Models", ""]
    lines += [
        "| model | outcome | stage reached | attempts | decision | error |",
        "|---|---|---|---:|---|---|",
    ]
    lines += [
        f"| {_cell(m.name)} | {m.outcome} | {m.stage_reached or _DASH} | {m.attempts_made} "
        f"| {_cell(m.decision or '')} | {_cell(m.error or '')} |"
        for m in report.models
    ]
    lines += ["", *_markdown_failures(report), "", *_markdown_left(report)]
    if report.comparison is not None:
        lines += ["", *_markdown_comparison(report.comparison)]
    return "\n".join(lines) + "\n"


def _markdown_failures(report: RunReport) -> list[str]:
    lines = ["## Failures", ""]
    groups = _failure_groups(report)
    if not groups:
        return [*lines, "No model failed."]
    for cause, models in groups:
        lines += [f"### {_one_line(cause)} ({len(models)})", ""]
        for m in models:
            line = f"- **{_cell(m.name)}** at {m.failed_stage}: {_one_line(m.error)}"
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
        lines += [f"The run stopped: {_one_line(report.reason, 400).rstrip('.')}.", ""]
    return lines + [f"- {_cell(m.name)}: {m.where}" for m in left]


def _markdown_comparison(comparison: Comparison) -> list[str]:
    lines = [f"## Compared with run {comparison.previous_run_id}", ""]
    lines += [f"### Newly failing ({len(comparison.newly_failing)})", ""]
    lines += [
        f"- {_cell(c.name)}: {c.before} before, fails at {c.stage} now: {_one_line(c.error)}"
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
        f"| {_cell(s.name)} | {s.stage} | {_duration(s.before_s)} | {_duration(s.after_s)} "
        f"| {s.factor:.1f} |"
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
    for model in report.models:
        _junit_case(suite, report.run_id, model)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, "unicode") + "\n"


def _junit_case(suite: ET.Element, run_id: str, model: ModelReport) -> None:
    case = ET.SubElement(
        suite,
        "testcase",
        classname=_xml(f"fleet.{run_id}"),
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
            f"rejected by the approval gate: {model.comment or ''}\nrule: {model.rule or _DASH}"
        )


def _junit_details(model: ModelReport) -> list[str]:
    lines = [f"model {model.name} ({model.id})", f"root cause: {model.root_cause}"]
    if model.skipped_because:
        lines.append(model.skipped_because)
    lines.append("path:")
    lines += [
        f"  {s.stage}: {s.state}, attempt {s.attempt}, {_duration(s.duration_s)}"
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
_FAILED_COLOUR = "#d62728"
_REJECTED_COLOUR = "#b7791f"

_CSS = """
*{box-sizing:border-box}
body{margin:0;padding:24px 32px;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,
"Helvetica Neue",Arial,sans-serif;color:#1a202c;background:#f7f8fa}
h1{font-size:22px;margin:0 0 4px}h2{font-size:16px;margin:28px 0 10px}
h3{font-size:14px;margin:16px 0 6px}
.meta{color:#4a5568;margin:0 0 4px}.reason{color:#9b2c2c;margin:4px 0 0}
.pill{display:inline-block;padding:1px 9px;border-radius:10px;color:#fff;font-size:12px;
font-weight:600;vertical-align:middle}
.cards{display:flex;gap:12px;margin:18px 0 8px;flex-wrap:wrap}
.card{background:#fff;border:1px solid #e2e8f0;border-radius:8px;padding:10px 16px;
min-width:120px;border-top:4px solid var(--c)}
.card b{display:block;font-size:24px;line-height:1.2}.card span{color:#4a5568}
.share{display:flex;height:8px;border-radius:4px;overflow:hidden;margin:6px 0 0;
max-width:700px;background:#e2e8f0}
.panel{background:#fff;border:1px solid #e2e8f0;border-radius:8px;padding:12px 16px}
.legend{display:flex;gap:14px;flex-wrap:wrap;font-size:12px;color:#4a5568;margin:0 0 6px}
.legend i{display:inline-block;width:12px;height:10px;border-radius:2px;margin-right:4px;
vertical-align:-1px}
svg text{font:11px system-ui,-apple-system,"Segoe UI",Roboto,Arial,sans-serif;fill:#2d3748}
svg .axis{fill:#718096}svg .grid{stroke:#edf2f7}
.row .bg{fill:transparent}.row:hover .bg{fill:#ebf4ff}
.hists{display:flex;gap:12px;flex-wrap:wrap}.hists .panel{padding:8px 12px}
.hists svg{display:block;margin-top:4px}.hists .panel{width:246px}
table{border-collapse:collapse;background:#fff;width:100%;font-size:13px}
th,td{padding:4px 8px;border-bottom:1px solid #edf2f7;text-align:left;vertical-align:top}
th{background:#edf2f7;position:sticky;top:0}table.narrow{width:auto;min-width:520px}
td.num,th.num{text-align:right}td.err{color:#9b2c2c;max-width:520px;overflow:hidden;
text-overflow:ellipsis;white-space:nowrap}
.muted{color:#718096}ul{margin:4px 0;padding-left:20px}code{font-size:12px}
"""


# Nothing may load from anywhere: the file stands alone.
_CSP = (
    '<meta http-equiv="Content-Security-Policy" '
    "content=\"default-src 'none'; style-src 'unsafe-inline'\">"
)


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _pill(outcome: Outcome | str, colour: str) -> str:
    return f'<span class="pill" style="background:{colour}">{_e(outcome)}</span>'


def _html(report: RunReport) -> str:
    colour = {"succeeded": "#2f855a", "failed": "#c53030"}.get(report.status, "#4a5568")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        _CSP,
        f"<title>fleet run {_e(report.run_id)}</title><style>{_CSS}</style></head><body>",
        f"<h1>fleet run <code>{_e(report.run_id)}</code> {_pill(report.status, colour)}</h1>",
        f'<p class="meta">Started {_e(_when(report.created_at))} · '
        + (f"finished {_e(_when(report.finished_at))}" if report.finished_at else "not finished")
        + f" · {_e(_duration(report.duration_s))} · {len(report.models)} models · stages "
        f"{_e(' → '.join(report.stages))}</p>",
    ]
    if report.reason:
        parts.append(f'<p class="reason">Stopped: {_e(report.reason)}</p>')
    parts += [
        _html_totals(report),
        "<h2>Timeline</h2>",
        f'<div class="panel">{_legend(report)}{_timeline(report)}</div>',
        "<h2>Stage durations</h2>",
        _histograms(report),
        _html_failures(report),
        _html_left(report),
    ]
    if report.comparison is not None:
        parts.append(_html_comparison(report.comparison))
    parts += ["<h2>Models</h2>", _html_models(report), "</body></html>"]
    return "\n".join(parts) + "\n"


def _html_totals(report: RunReport) -> str:
    total = len(report.models) or 1
    cards = "".join(
        f'<div class="card" style="--c:{OUTCOME_COLOURS[o]}"><b>{report.totals.get(o, 0)}</b>'
        f"<span>{_e(o)}</span></div>"
        for o in OUTCOME_ORDER
    )
    share = "".join(
        f'<div style="width:{100 * report.totals.get(o, 0) / total:.2f}%;'
        f'background:{OUTCOME_COLOURS[o]}" title="{_e(o)}: {report.totals.get(o, 0)}"></div>'
        for o in OUTCOME_ORDER
        if report.totals.get(o, 0)
    )
    return f'<div class="cards">{cards}</div><div class="share">{share}</div>'


def _legend(report: RunReport) -> str:
    items = [(STAGE_COLOURS[s], str(s)) for s in report.stages]
    items += [(_FAILED_COLOUR, "failed stage"), (_REJECTED_COLOUR, "rejected by the gate")]
    keys = "".join(f'<span><i style="background:{c}"></i>{_e(label)}</span>' for c, label in items)
    keys += (
        f'<span><i style="background:{_FAILED_COLOUR};opacity:.35"></i>'
        "failed try, retried</span><span class=muted>dot: the model's outcome · hover a bar for "
        "details</span>"
    )
    return f'<div class="legend">{keys}</div>'


@dataclass(frozen=True, slots=True)
class _Axis:
    """Wall time to x pixels."""

    start: datetime
    end: datetime
    left: float
    width: float

    @property
    def span_s(self) -> float:
        return max((self.end - self.start).total_seconds(), 1e-3)

    def x(self, at: datetime) -> float:
        return self.left + (at - self.start).total_seconds() / self.span_s * self.width


_TICK_STEPS_S: tuple[float, ...] = (
    0.01,
    0.02,
    0.05,
    0.1,
    0.2,
    0.5,
    1,
    2,
    5,
    10,
    15,
    30,
    60,
    120,
    300,
    600,
    900,
)
_TICK_STEPS_S += (1800, 3600, 7200, 10800, 21600, 43200, 86400)


def _ticks(axis: _Axis, most: int = 10) -> list[datetime]:
    step = next((s for s in _TICK_STEPS_S if axis.span_s / s <= most), _TICK_STEPS_S[-1])
    epoch = axis.start.timestamp()
    first = math.ceil(epoch / step) * step
    count = int((axis.end.timestamp() - first) / step) + 1
    zone = axis.start.tzinfo or UTC
    return [datetime.fromtimestamp(first + i * step, zone) for i in range(max(count, 0))]


def _tick_label(at: datetime, span_s: float) -> str:
    text = at.astimezone(UTC).strftime("%H:%M:%S")
    return text + f".{at.microsecond // 1000:03d}" if span_s < 10 else text  # noqa: PLR2004


def _time_range(report: RunReport) -> tuple[datetime, datetime]:
    times = [t for m in report.models for s in m.path for t in (s.started_at, s.finished_at) if t]
    times += [a.submitted_at for m in report.models for a in m.attempts if a.submitted_at]
    if not times:
        return report.created_at, report.created_at + timedelta(seconds=1)
    if any(s.started_at and not s.finished_at for m in report.models for s in m.path):
        # A bar still in flight reaches to the last moment the run was seen.
        times.append(report.finished_at or report.updated_at)
    return min(times), max(times)


def _timeline(report: RunReport) -> str:
    count = len(report.models)
    row = max(3, min(16, 640 // max(count, 1)))
    labelled = row >= 9  # noqa: PLR2004 - below this a name does not fit its row
    width, top = 1300, 22
    longest = max((len(_one_line(m.name, 24)) for m in report.models), default=0)
    left = min(24 + 6.5 * longest, 180) if labelled else 12
    axis = _Axis(*_time_range(report), left=left, width=width - left - 20)
    height = top + row * count + 6
    svg = f'viewBox="0 0 {width} {height}" width="100%" preserveAspectRatio="xMinYMin meet"'
    out = [f'<svg role="img" aria-label="timeline: one row per model" {svg}>']
    for tick in _ticks(axis):
        x = axis.x(tick)
        out.append(
            f'<line class="grid" x1="{x:.1f}" x2="{x:.1f}" y1="{top - 4}" y2="{height}"/>'
            f'<text class="axis" x="{x:.1f}" y="12" text-anchor="middle">'
            f"{_tick_label(tick, axis.span_s)}</text>"
        )
    for i, model in enumerate(report.models):
        out.append(_timeline_row(model, axis, top + i * row, row, labelled=labelled))
    out.append("</svg>")
    return "".join(out)


def _timeline_row(model: ModelReport, axis: _Axis, y: int, row: int, *, labelled: bool) -> str:
    bar_h = row - (2 if row >= 6 else 1)  # noqa: PLR2004 - a gap between rows that fits
    colour = OUTCOME_COLOURS[model.outcome]
    where = f" at {model.failed_stage}" if model.failed_stage else ""
    out = [
        f'<g class="row"><title>{_e(model.name)}: {_e(model.outcome)}{_e(where)}</title>',
        f'<rect class="bg" x="0" y="{y}" width="{axis.left + axis.width:.0f}" height="{row}"/>',
    ]
    if labelled:
        out.append(
            f'<circle cx="6" cy="{y + row / 2:.1f}" r="3.5" fill="{colour}"/>'
            f'<text x="14" y="{y + row / 2 + 4:.1f}">{_e(_one_line(model.name, 24))}</text>'
        )
    for start, end, fill, opacity, tip in _bars(model, axis.end):
        x1, x2 = axis.x(start), axis.x(end)
        out.append(
            f'<rect x="{x1:.1f}" y="{y + 1}" width="{max(x2 - x1, 1.5):.1f}" height="{bar_h}" '
            f'rx="{min(2, bar_h / 3):.1f}" fill="{fill}" fill-opacity="{opacity}">'
            f"<title>{_e(tip)}</title></rect>"
        )
    out.append("</g>")
    return "".join(out)


def _bars(model: ModelReport, end: datetime) -> Iterable[tuple[datetime, datetime, str, str, str]]:
    """(start, end, colour, opacity, tooltip) for each stage and each failed try before it."""
    for step in model.path:
        earlier = [a for a in model.attempts if a.stage is step.stage and a.attempt < step.attempt]
        for attempt in earlier:
            if attempt.submitted_at is None:
                continue
            # A retried try's end is not recorded; the next try's submission closes it.
            ends = attempt.finished_at or _next_submission(model, attempt) or attempt.submitted_at
            tip = f"{model.name} · {step.stage} try {attempt.attempt} failed · {attempt.error}"
            yield attempt.submitted_at, ends, _FAILED_COLOUR, ".35", tip
        if step.started_at is None:
            continue
        fill = STAGE_COLOURS[step.stage]
        if step.state is StageState.FAILED:
            fill = _FAILED_COLOUR
        elif step.stage is Stage.APPROVE and model.decision == "rejected":
            fill = _REJECTED_COLOUR
        opacity = "1" if step.finished_at else ".5"
        tip = (
            f"{model.name} · {step.stage} {step.state} · try {step.attempt} · "
            f"{_duration(step.duration_s)} · {_when(step.started_at)}"
            + (f" · job {step.job_id}" if step.job_id else "")
        )
        if step.state is StageState.FAILED and model.error:
            tip += f" · {model.error}"
        yield step.started_at, step.finished_at or end, fill, opacity, tip


def _next_submission(model: ModelReport, attempt: Attempt) -> datetime | None:
    later = [
        a.submitted_at or a.finished_at
        for a in model.attempts
        if a.stage is attempt.stage and a.attempt == attempt.attempt + 1
    ]
    step = next((s for s in model.path if s.stage is attempt.stage), None)
    if not later and step is not None and step.attempt == attempt.attempt + 1:
        later = [step.started_at]
    return next((t for t in later if t is not None), None)


def _histograms(report: RunReport) -> str:
    panels = []
    for stage in report.stages:
        durations = [
            s.duration_s
            for m in report.models
            for s in m.path
            if s.stage is stage and s.duration_s is not None
        ]
        if durations:
            panels.append(_histogram(stage, durations))
    if not panels:
        return '<p class="muted">No stage has finished yet.</p>'
    return f'<div class="hists">{"".join(panels)}</div>'


def _histogram(stage: Stage, durations: list[float], bins: int = 14) -> str:
    width, height, base, left = 220, 116, 92, 6
    top = max(durations) or 1e-3
    counts = [0] * bins
    for d in durations:
        counts[min(int(d / top * bins), bins - 1)] += 1
    tallest = max(counts)
    bar_w = (width - 2 * left) / bins
    bars = []
    for i, n in enumerate(counts):
        if not n:
            continue
        h = max(n / tallest * (base - 16), 1.5)
        lo, hi = _duration(top * i / bins), _duration(top * (i + 1) / bins)
        bars.append(
            f'<rect x="{left + i * bar_w + 0.5:.1f}" y="{base - h:.1f}" width="{bar_w - 1:.1f}" '
            f'height="{h:.1f}" fill="{STAGE_COLOURS[stage]}">'
            f"<title>{n} &times; {stage}: {lo} &ndash; {hi}</title></rect>"
        )
    median = statistics.median(durations)
    return (
        f'<div class="panel"><b>{_e(stage)}</b><br><span class="muted">{len(durations)} done · '
        f"median {_duration(median)}</span>"
        f'<svg viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
        f'aria-label="{_e(stage)} durations">{"".join(bars)}'
        f'<line x1="{left}" x2="{width - left}" y1="{base}" y2="{base}" stroke="#a0aec0"/>'
        f'<text class="axis" x="{left}" y="10">{tallest} per bin at most</text>'
        f'<text class="axis" x="{left}" y="{base + 14}">0</text>'
        f'<text class="axis" x="{width - left}" y="{base + 14}" text-anchor="end">'
        f"{_duration(top)}</text></svg></div>"
    )


def _html_failures(report: RunReport) -> str:
    groups = _failure_groups(report)
    out = [f"<h2>Failures ({len(report.with_outcome(Outcome.FAILED))})</h2>"]
    if not groups:
        return out[0] + '<p class="muted">No model failed.</p>'
    out.append('<div class="panel">')
    for cause, models in groups:
        out.append(f"<h3>{_e(cause)} <span class=muted>&times; {len(models)}</span></h3><ul>")
        out += [
            f"<li><b>{_e(m.name)}</b> at {_e(m.failed_stage)}: {_e(m.error or '')}"
            + (
                f' <span class="muted">({_e(m.skipped_because)})</span>'
                if m.skipped_because
                else ""
            )
            + "</li>"
            for m in models
        ]
        out.append("</ul>")
    out.append("</div>")
    return "".join(out)


def _html_left(report: RunReport) -> str:
    left = report.left_for_next_run
    title = f"<h2>Left for the next run ({len(left)})</h2>"
    if not left:
        return title + '<p class="muted">Nothing: every model finished.</p>'
    items = "".join(f"<li><b>{_e(m.name)}</b>: {_e(m.where)}</li>" for m in left)
    return f'{title}<div class="panel"><ul>{items}</ul></div>'


def _html_comparison(comparison: Comparison) -> str:
    def changes(title: str, rows: Sequence[Change], text: str) -> str:
        items = "".join(
            f"<li><b>{_e(c.name)}</b>: {_e(text.format(stage=c.stage))}"
            f" <span class=muted>{_e(_one_line(c.error))}</span></li>"
            for c in rows
        )
        return f"<h3>{title} ({len(rows)})</h3>" + (
            f"<ul>{items}</ul>" if rows else '<p class="muted">None.</p>'
        )

    return (
        f"<h2>Compared with run <code>{_e(comparison.previous_run_id)}</code></h2>"
        '<div class="panel">'
        + changes("Newly failing", comparison.newly_failing, "fails at {stage} now")
        + changes("Recovered", comparison.recovered, "failed at {stage} before, succeeded now")
        + _html_slower(comparison)
        + "</div>"
    )


_MOST_SLOWER_ROWS = 30


def _html_slower(comparison: Comparison) -> str:
    title = f"<h3>Slower than {comparison.slower_factor:g}&times; ({len(comparison.slower)})</h3>"
    if not comparison.slower:
        return title + '<p class="muted">None.</p>'
    rows = "".join(
        f"<tr><td>{_e(s.name)}</td><td>{_e(s.stage)}</td><td class=num>{_duration(s.before_s)}"
        f"</td><td class=num>{_duration(s.after_s)}</td>"
        f"<td class=num>{s.factor:.1f}&times;</td></tr>"
        for s in comparison.slower[:_MOST_SLOWER_ROWS]
    )
    more = len(comparison.slower) - _MOST_SLOWER_ROWS
    return (
        f'{title}<table class="narrow"><tr><th>model</th><th>stage</th>'
        f"<th class=num>before</th><th class=num>now</th><th class=num>&times;</th></tr>{rows}"
        "</table>"
        + (f'<p class="muted">… and {more} more, in the JSON report.</p>' if more > 0 else "")
    )


def _html_models(report: RunReport) -> str:
    rows = "".join(
        f"<tr><td class=num>{m.position + 1}</td><td>{_e(m.name)}</td>"
        f"<td>{_pill(m.outcome, OUTCOME_COLOURS[m.outcome])}</td>"
        f"<td>{_e(m.stage_reached or _DASH)}</td><td class=num>{m.attempts_made}</td>"
        f"<td>{_e(m.decision or _DASH)}</td><td class=num>{_duration(m.duration_s)}</td>"
        f'<td class="err" title="{_e(m.error or "")}">{_e(m.error or "")}</td></tr>'
        for m in report.models
    )
    return (
        "<table><thead><tr><th class=num>#</th><th>model</th><th>outcome</th>"
        "<th>stage reached</th><th class=num>attempts</th><th>decision</th>"
        f"<th class=num>time</th><th>error</th></tr></thead><tbody>{rows}</tbody></table>"
    )
