"""Run reports, built from two real nights against the in-process emulator.

Night one runs every model; night two stops admitting models after its sixth failure, so its
report has successes, gate rejections, failures and models left for the next run. Which
models those are varies from run to run (the job watcher's looks interleave with the
store's commits), so the numbers leave a margin: over many runs night two always had at
least two of each, and two models that recovered. Expected values come from the store and
`model_outcome`, not from the report's own code.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable
from contextlib import closing
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest

from fleet import scheduler
from fleet.errors import RunNotFound
from fleet.records import ModelRecord, StageRecord
from fleet.report import render
from fleet.report.model import RunReport, build_report, root_cause
from fleet.report.statefiles import StateFiles, merged_status
from fleet.report.status import status_document
from fleet.retries import without_waiting
from fleet.shards import shard_of
from fleet.stages import Outcome, Stage, StageState
from fleet.store import Store
from support import emulated, night, settings_for

NIGHT_1, NIGHT_2 = "night-1", "night-2"
MODELS = 24


async def _two_nights(db: Path) -> None:
    flags = {"defaults.approval_rule": "Accuracy >= 0.8", "attempts.train": 2, "concurrency": 6}
    async with emulated(models=MODELS, seed=6, job_error_rate=0.2) as env:
        for run_id, extra in ((NIGHT_1, {}), (NIGHT_2, {"max_failures": 5})):
            await night(env, settings_for(env, db, **flags, **extra), run_id)


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One state file holding both nights (built once: the tests only read it)."""
    db = tmp_path_factory.mktemp("report") / "fleet.db"
    with without_waiting():
        anyio.run(_two_nights, db)
    return db


async def _report(db: Path, run_id: str | None = None) -> RunReport:
    async with Store.open(db) as store:
        return await build_report(store, run_id)


async def _models(db: Path, run_id: str) -> list[ModelRecord]:
    async with Store.open(db) as store:
        return await store.models(run_id)


async def test_totals_and_outcomes_match_model_outcome(state: Path) -> None:
    """The latest run is reported; each model's outcome and the totals are model_outcome's."""
    report = await _report(state)
    outcomes = {m.spec.id: scheduler.model_outcome(m) for m in await _models(state, NIGHT_2)}
    assert report.run_id == NIGHT_2
    assert report.status == "halted"
    assert {m.id: m.outcome for m in report.models} == outcomes
    assert report.totals == {o: Counter(outcomes.values())[o] for o in Outcome}
    assert all(report.totals[o] for o in Outcome if o is not Outcome.RUNNING), report.totals


async def test_a_models_path_lists_every_stage_with_its_duration(state: Path) -> None:
    """Each stage in run order, final state, and submitted-to-finished seconds when both exist."""
    report = await _report(state)
    records = {m.spec.id: m for m in await _models(state, NIGHT_2)}
    for model in report.models:
        assert [s.stage for s in model.path] == list(report.stages)
        for step in model.path:
            stored = records[model.id].stages[step.stage]
            assert (step.state, step.attempt, step.job_id) == (
                stored.state,
                stored.attempt,
                stored.job_id,
            )
            if stored.submitted_at and stored.finished_at:
                expected = (stored.finished_at - stored.submitted_at).total_seconds()
                assert step.duration_s == pytest.approx(expected)
            else:
                assert step.duration_s is None


async def test_a_failed_model_gives_its_error_root_cause_and_what_it_skipped(state: Path) -> None:
    """The failed stage's error, classified, and the later stages it kept from running."""
    report = await _report(state)
    failed = [m for m in report.models if m.outcome is Outcome.FAILED]
    assert failed
    for model in failed:
        step = next(s for s in model.path if s.state is StageState.FAILED)
        later = [s.stage.value for s in model.path[model.path.index(step) + 1 :]]
        assert model.failed_stage is step.stage
        assert model.error is not None
        assert model.error.endswith("ended ERROR")
        assert model.root_cause == "job ended ERROR"
        assert model.skipped_because == (
            f"{', '.join(later)} not run: {step.stage} failed" if later else None
        )


@pytest.mark.parametrize(
    ("error", "cause"),
    [
        ("training job 3f97f588-d0a3-4ec0-b95a-4c337b948e5d ended ERROR", "job ended ERROR"),
        ("deployment job abc ended CANCELLED", "job ended CANCELLED"),
        ("the server kept failing: GET /api/jobs/1: HTTP 503: busy", "HTTP 503"),
        ("POST /api/trainedModels/x/approve: HTTP 409: already approved", "HTTP 409"),
        (
            "training job 0b3c5c1e-1111-4222-8333-944455556666 names no trained model",
            "training job <id> names no trained model",
        ),
        (None, None),
    ],
)
def test_root_cause_keeps_the_innermost_meaningful_part(error: str | None, cause: str) -> None:
    """Job endings and HTTP statuses are classes of their own; other errors lose their ids."""
    assert root_cause(error) == cause


async def test_markdown_names_every_model_and_each_section(state: Path) -> None:
    """The table has a row per model; failures, leftovers and the comparison have sections."""
    report = await _report(state)
    text = render(report, "md")
    assert text.startswith(f"# fleet run {NIGHT_2}: halted")
    for model in report.models:
        assert f"| {model.name} | {model.outcome} |" in text
    for section in ("## Failures", "## Left for the next run", f"## Compared with run {NIGHT_1}"):
        assert section in text
    left = text.split("## Left for the next run")[1].split("## Compared")[0]
    assert {m.name for m in report.left_for_next_run} == {
        line[2:].split(":")[0] for line in left.splitlines() if line.startswith("- ")
    }


async def test_json_round_trips(state: Path) -> None:
    """The JSON parses back to the same document, with ISO dates and every model's path."""
    report = await _report(state)
    text = render(report, "json")
    document = json.loads(text)
    assert json.dumps(document, indent=2) + "\n" == text
    assert document["run_id"] == NIGHT_2
    assert document["totals"] == {o.value: n for o, n in report.totals.items()}
    assert datetime.fromisoformat(document["created_at"]) == report.created_at
    assert [m["name"] for m in document["models"]] == [m.name for m in report.models]
    first = document["models"][0]
    assert len(first["path"]) == len(report.stages)
    assert document["comparison"]["previous_run_id"] == NIGHT_1


async def test_junit_has_one_testcase_per_model(state: Path) -> None:
    """Failed models fail, rejected ones pass with the gate's comment, the rest are skipped."""
    report = await _report(state)
    root = ET.fromstring(render(report, "junit"))
    [suite] = root.findall("testsuite")
    cases = {case.get("name"): case for case in suite.findall("testcase")}
    assert len(suite.findall("testcase")) == len(report.models) == len(cases)
    assert suite.get("name") == f"fleet run {NIGHT_2}"
    assert int(suite.get("tests", "")) == len(report.models)
    assert int(suite.get("failures", "")) == report.totals[Outcome.FAILED]
    assert int(suite.get("skipped", "")) == len(report.left_for_next_run)
    for model in report.models:
        case = cases[model.name]
        assert case.get("classname") == f"fleet.{NIGHT_2}"
        failure = case.find("failure")
        assert (failure is not None) == (model.outcome is Outcome.FAILED)
        if failure is not None:
            assert failure.get("message") == model.error
            assert failure.get("type") == model.failed_stage
        if model.outcome is Outcome.REJECTED:
            assert model.comment
            assert model.comment in (case.findtext("system-out") or "")
        skipped = case.find("skipped")
        assert (skipped is not None) == model.left_for_next_run


async def test_html_is_self_contained_with_a_timeline_row_per_model(state: Path) -> None:
    """No external reference, an inline SVG timeline with one row per model, a histogram."""
    report = await _report(state)
    text = render(report, "html")
    lowered = text.lower()
    for bad in ('src="http', "src='http", 'href="http', "href='http", "<script src", "url("):
        assert bad not in lowered
    timeline = text.split('aria-label="timeline: one row per model"')[1].split("</svg>")[0]
    assert text.count('aria-label="timeline: one row per model"') == 1
    assert timeline.count('<g class="row">') == len(report.models)
    assert "durations</h2>" in text
    assert text.count('aria-label="train durations"') == 1


async def test_html_escapes_every_string_from_the_store(state: Path) -> None:
    """A hostile model name or error shows as text, never as markup."""
    report = await _report(state)
    hostile = '<img src=x onerror="alert(1)">'
    failed = next(m for m in report.models if m.outcome is Outcome.FAILED)
    models = tuple(
        replace(m, name=hostile, error=hostile) if m is failed else m for m in report.models
    )
    text = render(replace(report, models=models, reason=hostile), "html")
    assert hostile not in text
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in text


async def test_the_comparison_finds_newly_failing_and_recovered_models(state: Path) -> None:
    """Matched by id with the run before it: failed now and not before, or the reverse."""
    report = await _report(state)
    before = {m.spec.id: scheduler.model_outcome(m) for m in await _models(state, NIGHT_1)}
    now = {m.spec.id: scheduler.model_outcome(m) for m in await _models(state, NIGHT_2)}
    newly = {i for i in now if now[i] is Outcome.FAILED and before[i] is not Outcome.FAILED}
    recovered = {i for i in now if before[i] is Outcome.FAILED and now[i] is Outcome.SUCCEEDED}
    assert newly, "the seed must make some model fail that did not before"
    assert recovered, "and some model recover"
    comparison = report.comparison
    assert comparison is not None
    assert comparison.previous_run_id == NIGHT_1
    assert {c.model_id for c in comparison.newly_failing} == newly
    assert {c.model_id for c in comparison.recovered} == recovered
    assert (await _report(state, NIGHT_1)).comparison is None


async def test_a_stage_slower_than_the_factor_is_reported(state: Path, tmp_path: Path) -> None:
    """Train 10 → 16 min is slower at 1.5x, 10 → 14 min is not, nor a 10 → 30 ms approval."""
    specs = [m.spec for m in await _models(state, NIGHT_1)][:2]
    start = datetime(2026, 1, 1, 22, tzinfo=UTC)
    minutes = {"a": {Stage.TRAIN: (10, 10), Stage.APPROVE: (0.01 / 60,) * 2}}
    minutes["b"] = {Stage.TRAIN: (16, 14), Stage.APPROVE: (0.03 / 60,) * 2}
    db = tmp_path / "constructed.db"
    async with Store.open(db) as store:
        for run_id in ("a", "b"):
            await store.create_run(run_id, (Stage.TRAIN, Stage.APPROVE), specs, "{}")
            for stage, per_model in minutes[run_id].items():
                for spec, took in zip(specs, per_model, strict=True):
                    done = StageRecord(
                        run_id,
                        spec.id,
                        stage,
                        StageState.SUCCEEDED,
                        attempt=1,
                        submitted_at=start,
                        finished_at=start + timedelta(minutes=took),
                    )
                    await store.save_stage(done, StageState.PENDING)
        report = await build_report(store, "b", previous="a")
        no_floor = await build_report(store, "b", previous="a", min_slower_s=0.0)
    assert report.comparison is not None
    [slower] = report.comparison.slower
    assert (slower.name, slower.stage) == (specs[0].name, Stage.TRAIN)
    assert (slower.before_s, slower.after_s) == (600.0, 960.0)
    assert no_floor.comparison is not None
    assert {(s.name, s.stage) for s in no_floor.comparison.slower} == {
        (specs[0].name, Stage.TRAIN),
        (specs[0].name, Stage.APPROVE),
        (specs[1].name, Stage.APPROVE),
    }


async def test_an_empty_state_file_has_no_report(tmp_path: Path) -> None:
    """Without a run there is nothing to report: RunNotFound, which the CLI maps."""
    async with Store.open(tmp_path / "empty.db") as store:
        with pytest.raises(RunNotFound):
            await build_report(store)


def test_chromium_renders_the_html_report(state: Path, tmp_path: Path) -> None:
    """Headless Chromium draws the report to a PNG (skipped where Chromium is not installed)."""
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("chromium is not installed; `apt-get install chromium` to run this test")
    page = tmp_path / "report.html"
    page.write_text(render(anyio.run(_report, state), "html"), encoding="utf-8")
    shot = tmp_path / "report.png"
    subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--window-size=1400,1000",
            f"--screenshot={shot}",
            page.as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert shot.stat().st_size > 10_000  # a blank page is a few kilobytes


# -- several state files ---------------------------------------------------------------------


def _carve(source: Path, target: Path, keep: Callable[[str], bool], drop_run: str = "") -> Path:
    """A copy of `source` holding only the models `keep` accepts (and without `drop_run`)."""
    shutil.copy(source, target)
    with closing(sqlite3.connect(target)) as conn, conn:
        ids = [row[0] for row in conn.execute("SELECT DISTINCT model_id FROM run_models")]
        dropped = [(model_id,) for model_id in ids if not keep(model_id)]
        for table in ("run_models", "stages", "attempts", "metrics", "transitions"):
            conn.executemany(f"DELETE FROM {table} WHERE model_id = ?", dropped)
            conn.execute(f"DELETE FROM {table} WHERE run_id = ?", (drop_run,))
        conn.execute("DELETE FROM runs WHERE id = ?", (drop_run,))
    return target


def _shard_files(state: Path, tmp_path: Path) -> list[Path]:
    return [
        _carve(state, tmp_path / f"fleet.shard-{k}-of-2.db", lambda i, k=k: shard_of(i, 2) == k)
        for k in (0, 1)
    ]


async def _merged(dbs: list[Path], run_id: str | None = None) -> RunReport:
    async with StateFiles.open(dbs) as files:
        return await build_report(files, run_id)


def _facts(report: RunReport) -> dict[str, object]:
    """What a report says about the run and each model, whichever files it came from."""
    assert report.comparison is not None
    return {
        "run": (report.run_id, report.status, report.stages, report.created_at),
        "totals": report.totals,
        "models": {
            m.id: (m.outcome, m.path, m.attempts, m.metrics, m.error, m.decision)
            for m in report.models
        },
        "comparison": (
            report.comparison.previous_run_id,
            {c.model_id for c in report.comparison.newly_failing},
            {c.model_id for c in report.comparison.recovered},
            {(s.model_id, s.stage) for s in report.comparison.slower},
        ),
    }


async def test_two_shard_files_report_what_one_file_of_the_same_models_does(
    state: Path, tmp_path: Path
) -> None:
    """Merged shards: same run, counts, outcomes, paths and comparison as the one file."""
    shards = _shard_files(state, tmp_path)
    whole = await _report(state)
    merged = await _merged(shards)
    assert _facts(merged) == _facts(whole)
    assert len(merged.models) == MODELS
    assert merged.warnings == ()
    assert [(s.db, s.status) for s in merged.sources] == [(str(db), "halted") for db in shards]
    assert sum(s.models for s in merged.sources) == MODELS
    assert {m.id: m.db for m in merged.models} == {
        m.id: str(shards[shard_of(m.id, 2)]) for m in whole.models
    }
    document = json.loads(render(merged, "json"))
    assert [s["db"] for s in document["sources"]] == [str(db) for db in shards]
    assert "Merged from 2 state files" in render(merged, "md")
    assert "Merged from 2 state files" in render(merged, "html")
    properties = ET.fromstring(render(merged, "junit")).iter("property")
    assert [p.get("value", "").split(":")[0] for p in properties if p.get("name") == "source"] == [
        str(db) for db in shards
    ]


async def test_a_model_in_two_files_is_counted_once_with_a_warning(
    state: Path, tmp_path: Path
) -> None:
    """Overlapping files: every model once, from the first file; the overlap is named."""
    [first_shard, _] = _shard_files(state, tmp_path)
    merged = await _merged([state, first_shard])
    whole = await _report(state)
    overlapping = {m.id for m in whole.models if shard_of(m.id, 2) == 0}
    assert merged.totals == whole.totals
    assert len(merged.models) == MODELS
    assert set(merged.overlaps) == overlapping
    assert all(files == (str(state), str(first_shard)) for files in merged.overlaps.values())
    [warning] = merged.warnings
    assert warning.startswith(f"{len(overlapping)} models are in both {state} and {first_shard}")
    assert "counted once" in warning
    assert warning in render(merged, "md")
    assert json.loads(render(merged, "json"))["warnings"] == [warning]


async def test_a_file_without_the_run_is_named_and_the_others_are_reported(
    state: Path, tmp_path: Path
) -> None:
    """The latest run over the files is reported from those that hold it; the rest are named."""
    shards = _shard_files(state, tmp_path)
    behind = _carve(shards[1], tmp_path / "behind.db", lambda _: True, drop_run=NIGHT_2)
    merged = await _merged([shards[0], behind])
    assert merged.run_id == NIGHT_2
    assert {m.id for m in merged.models} == {m.id for m in (await _report(shards[0])).models}
    assert [(s.db, s.status) for s in merged.sources] == [
        (str(shards[0]), "halted"),
        (str(behind), None),
    ]
    assert merged.warnings == (
        f"run '{NIGHT_2}' is not in {behind}: that shard has not started it, or selected no model",
    )
    with pytest.raises(RunNotFound, match=f"run 'nope' is in none of {shards[0]}, {behind}$"):
        await _merged([shards[0], behind], "nope")


def test_a_run_spread_over_files_takes_the_status_that_matters_most() -> None:
    """Running anywhere is running; otherwise the worst ending; one status is itself."""
    assert merged_status(["succeeded", "running", "failed"]) == "running"
    assert merged_status(["succeeded", "failed"]) == "failed"
    assert merged_status(["incomplete", "halted", "succeeded"]) == "halted"
    assert merged_status(["interrupted", "aborted"]) == "aborted"
    assert merged_status(["succeeded", "succeeded"]) == "succeeded"
    assert merged_status(["succeeded", "paused-by-a-newer-fleet"]) == "paused-by-a-newer-fleet"


async def test_a_run_over_several_projects_is_reported_per_project(state: Path) -> None:
    """Totals per project in every format, a project column, and JUnit classes by project;
    a run of one project shows none of it."""
    report = await _report(state)
    assert "## Projects" not in render(report, "md")
    assert json.loads(render(report, "json"))["projects"] == {
        "default": {o.value: n for o, n in report.totals.items()}
    }
    models = tuple(
        replace(m, project="retail" if i % 3 else "outlet") for i, m in enumerate(report.models)
    )
    several = replace(report, models=models)
    expected = {
        project: Counter(m.outcome.value for m in models if m.project == project)
        for project in ("outlet", "retail")
    }
    document = json.loads(render(several, "json"))
    assert {p: {o: n for o, n in t.items() if n} for p, t in document["projects"].items()} == (
        expected
    )
    assert {m["project"] for m in document["models"]} == {"outlet", "retail"}
    text = render(several, "md")
    assert "## Projects" in text
    assert f"| outlet | {models[0].name} | {models[0].outcome} |" in text
    root = ET.fromstring(render(several, "junit"))
    classes = Counter(case.get("classname") for case in root.iter("testcase"))
    assert classes == {
        f"fleet.{NIGHT_2}.{p}": sum(counts.values()) for p, counts in expected.items()
    }
    assert "<h2>Projects</h2>" in render(several, "html")


async def test_the_scoring_job_of_each_once_deployment_is_reported(state: Path) -> None:
    """cron = "@once" deployments start a scoring job: its id and status are in the report,
    counted in markdown, and in the status document."""
    report = await _report(state, NIGHT_1)
    deployed = [m for m in report.models if m.deployment_id is not None]
    assert deployed
    assert all(m.scoring_job_id and m.scoring_status for m in deployed)
    assert all(m.scoring_job_id is None for m in report.models if m.deployment_id is None)
    assert "Scoring jobs started by the deployments" in render(report, "md")
    document = await status_document([state], NIGHT_1)
    scored = {row["name"]: row["scoring"] for row in document["models"] if row["scoring"]}
    assert scored == {
        m.name: {"job_id": m.scoring_job_id, "status": m.scoring_status} for m in deployed
    }
