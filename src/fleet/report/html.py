"""The HTML run report: one self-contained file (inline CSS and SVG, no script, nothing
loaded from anywhere) with totals, a timeline of every model's stages, a histogram of stage
durations per stage, failures by root cause, and the comparison with the previous run."""

from __future__ import annotations

import html
import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from fleet.report.model import OUTCOME_ORDER, Attempt, Change, Comparison, ModelReport, RunReport
from fleet.report.text import (
    DASH,
    OUTCOME_COLOURS,
    STAGE_COLOURS,
    failure_groups,
    format_duration,
    format_when,
    merged_from,
    one_line,
)
from fleet.stages import Outcome, Stage, StageState

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


def html_report(report: RunReport) -> str:
    colour = {"succeeded": "#2f855a", "failed": "#c53030"}.get(report.status, "#4a5568")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        _CSP,
        f"<title>fleet run {_e(report.run_id)}</title><style>{_CSS}</style></head><body>",
        f"<h1>fleet run <code>{_e(report.run_id)}</code> {_pill(report.status, colour)}</h1>",
        f'<p class="meta">Started {_e(format_when(report.created_at))} · '
        + (
            f"finished {_e(format_when(report.finished_at))}"
            if report.finished_at
            else "not finished"
        )
        + f" · {_e(format_duration(report.duration_s))} · {len(report.models)} models · stages "
        f"{_e(' → '.join(report.stages))}</p>",
    ]
    if report.reason:
        parts.append(f'<p class="reason">Stopped: {_e(report.reason)}</p>')
    if len(report.sources) > 1:
        parts.append(
            f'<p class="meta">Merged from {len(report.sources)} state files: '
            f"{_e(merged_from(report))}</p>"
        )
    parts += [f'<p class="reason">Warning: {_e(warning)}</p>' for warning in report.warnings]
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
    html = f'<div class="cards">{cards}</div><div class="share">{share}</div>'
    if report.several_projects:
        head = "".join(f"<th class=num>{_e(o)}</th>" for o in OUTCOME_ORDER)
        rows = "".join(
            f"<tr><td>{_e(project)}</td>"
            + "".join(f"<td class=num>{totals[o]}</td>" for o in OUTCOME_ORDER)
            + f"<td class=num>{sum(totals.values())}</td></tr>"
            for project, totals in report.projects.items()
        )
        html += (
            f"<h2>Projects</h2><table><thead><tr><th>project</th>{head}"
            f"<th class=num>total</th></tr></thead><tbody>{rows}</tbody></table>"
        )
    return html


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
    longest = max((len(one_line(m.name, 24)) for m in report.models), default=0)
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
            f'<text x="14" y="{y + row / 2 + 4:.1f}">{_e(one_line(model.name, 24))}</text>'
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
            f"{format_duration(step.duration_s)} · {format_when(step.started_at)}"
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
        lo, hi = format_duration(top * i / bins), format_duration(top * (i + 1) / bins)
        bars.append(
            f'<rect x="{left + i * bar_w + 0.5:.1f}" y="{base - h:.1f}" width="{bar_w - 1:.1f}" '
            f'height="{h:.1f}" fill="{STAGE_COLOURS[stage]}">'
            f"<title>{n} &times; {stage}: {lo} &ndash; {hi}</title></rect>"
        )
    median = statistics.median(durations)
    return (
        f'<div class="panel"><b>{_e(stage)}</b><br><span class="muted">{len(durations)} done · '
        f"median {format_duration(median)}</span>"
        f'<svg viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
        f'aria-label="{_e(stage)} durations">{"".join(bars)}'
        f'<line x1="{left}" x2="{width - left}" y1="{base}" y2="{base}" stroke="#a0aec0"/>'
        f'<text class="axis" x="{left}" y="10">{tallest} per bin at most</text>'
        f'<text class="axis" x="{left}" y="{base + 14}">0</text>'
        f'<text class="axis" x="{width - left}" y="{base + 14}" text-anchor="end">'
        f"{format_duration(top)}</text></svg></div>"
    )


def _html_failures(report: RunReport) -> str:
    groups = failure_groups(report)
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
            f" <span class=muted>{_e(one_line(c.error))}</span></li>"
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
        f"<tr><td>{_e(s.name)}</td><td>{_e(s.stage)}</td>"
        f"<td class=num>{format_duration(s.before_s)}</td>"
        f"<td class=num>{format_duration(s.after_s)}</td>"
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
    several = report.several_projects
    rows = "".join(
        f"<tr><td class=num>{m.position + 1}</td>"
        + (f"<td>{_e(m.project)}</td>" if several else "")
        + f"<td>{_e(m.name)}</td>"
        f"<td>{_pill(m.outcome, OUTCOME_COLOURS[m.outcome])}</td>"
        f"<td>{_e(m.stage_reached or DASH)}</td><td class=num>{m.attempts_made}</td>"
        f"<td>{_e(m.decision or DASH)}</td><td class=num>{format_duration(m.duration_s)}</td>"
        f'<td class="err" title="{_e(m.error or "")}">{_e(m.error or "")}</td></tr>'
        for m in report.models
    )
    return (
        "<table><thead><tr><th class=num>#</th>"
        + ("<th>project</th>" if several else "")
        + "<th>model</th><th>outcome</th>"
        "<th>stage reached</th><th class=num>attempts</th><th>decision</th>"
        f"<th class=num>time</th><th>error</th></tr></thead><tbody>{rows}</tbody></table>"
    )
