"""The report in Markdown, JUnit XML and JSON, and the formatting the renderings share."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import fields, is_dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import Any

from fleet.models import DEFAULT_PROJECT
from fleet.report.model import OUTCOME_ORDER, REPORT_VERSION, Comparison, ModelReport, RunReport
from fleet.stages import Outcome, Stage

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


def plain(value: object) -> Any:
    """Dataclasses, enums, dates and mappings as JSON values; derived model facts added."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Enum):
        return value.value
    if is_dataclass(value) and not isinstance(value, type):
        data = {f.name: plain(getattr(value, f.name)) for f in fields(value)}
        if isinstance(value, RunReport):
            data = {"report_version": REPORT_VERSION, **data}
            data["duration_s"] = value.duration_s
            data["projects"] = plain(value.projects)
        if isinstance(value, ModelReport):
            data["stage_reached"] = plain(value.stage_reached)
            data["attempts_made"] = value.attempts_made
            data["duration_s"] = value.duration_s
            data["left_for_next_run"] = value.left_for_next_run
        return data
    if isinstance(value, Mapping):
        return {str(plain(k)): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


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


def markdown(report: RunReport) -> str:
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


# XML 1.0 cannot carry most control characters, even escaped; a server message might.
_XML_ILLEGAL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _xml(text: object) -> str:
    return _XML_ILLEGAL.sub("?", str(text))


def junit(report: RunReport) -> str:
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
