"""The `fleet` command: what each command does, prints and exits with.

Most tests run `fleet.cli.main` in this process (`fleet_here`) against the emulator served
in-process over loopback HTTP (`emulator_here`), on a clock that moves with each request, so
nothing waits on the wall clock. The tests marked e2e run `fleet` and `fleet sim` as processes,
for what only a process has: the installed entry point, a signal, a SIGKILL, and one night
start to finish (`fleet sim`, `fleet run`, `fleet status`). They react to the lines the
processes print (the URL the emulator listens on, `fleet.stage.submitted`), not to time.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import xml.etree.ElementTree as ET
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cli_support import (
    FAST,
    TOKEN,
    Ticking,
    empty_config,
    emulator,
    emulator_here,
    events_until,
    fleet,
    json_lines,
    kill,
    run_args,
    run_env,
    sim_stats,
    start,
    ticking_build,
    write_models_csv,
)
from fleet import sim
from fleet.models import Lifecycle, ModelSpec
from fleet.records import StageRecord
from fleet.report import FORMATS
from fleet.shutdown import Shutdown, grace_deadlines, watch_signals
from fleet.sim import SimSettings, build, draws
from fleet.stages import Stage, StageState
from fleet.store import Store

if TYPE_CHECKING:
    from conftest import FleetHere


@pytest.fixture
def demo_ticks(monkeypatch: pytest.MonkeyPatch) -> None:
    """`fleet demo`'s emulator on a `Ticking` clock rather than the wall clock sped up."""
    monkeypatch.setattr(sim, "build", ticking_build)


@pytest.mark.usefixtures("demo_ticks")
def test_demo_takes_every_model_through_every_stage(tmp_path: Path, fleet_here: FleetHere) -> None:
    """`fleet demo` exits 0 with all models succeeded; stdout is JSON lines with context."""
    done = fleet_here("demo", "--models", "25", *FAST, cwd=tmp_path)
    assert done.code == 0, done.err
    assert "25 of 25 models succeeded" in done.err
    assert "max jobs per model and type 1" in done.err
    lines = json_lines(done.out)
    stage_lines = [x for x in lines if str(x["event"]).startswith("fleet.stage.")]
    assert len(stage_lines) >= 25 * 5
    assert all({"run_id", "model_id", "stage"} <= x.keys() for x in stage_lines)
    assert "fleet-demo-token" not in done.out + done.err


@pytest.mark.usefixtures("demo_ticks")
def test_demo_with_job_errors_exits_1_and_lists_the_failures(
    tmp_path: Path, fleet_here: FleetHere
) -> None:
    """Injected job errors fail some models: exit 1, each failed model named with its reason."""
    done = fleet_here(
        "demo", "--models", "30", "--job-error-rate", "0.1", "--seed", "4", *FAST, cwd=tmp_path
    )
    assert done.code == 1, done.err
    failed = [line for line in done.err.splitlines() if line.startswith("  failed ")]
    assert failed
    assert all("ended ERROR" in line for line in failed)


@pytest.mark.e2e
def test_run_against_fleet_sim_then_status(tmp_path: Path) -> None:
    """`fleet run` drives the models of a CSV against `fleet sim`; `fleet status` shows them:
    the installed command start to finish, each step a process of its own."""
    with emulator(tmp_path, "--models", "12", "--time-scale", "5000") as url:
        done = fleet(*run_args(tmp_path, "night-1"), cwd=tmp_path, env=run_env(url))
        assert done.returncode == 0, done.stderr
        assert sim_stats(url)["max_jobs_per_model_and_type"] == 1
    status = fleet("status", "night-1", "--json", cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    document = json.loads(status.stdout)
    assert document["status"] == "succeeded"
    assert len(document["models"]) == 12
    assert document["stages"]["retire"] == {"succeeded": 12}
    text = fleet("status", cwd=tmp_path)
    assert "night-1" in text.stdout


@pytest.mark.e2e
def test_a_killed_run_resumes_without_a_second_job(tmp_path: Path) -> None:
    """SIGKILL midway, start again with the same run id: all finish, one job per model/type."""
    with emulator(tmp_path, "--models", "40", "--time-scale", "3000") as url:
        proc = start(
            run_args(tmp_path, "night-1"),
            tmp_path,
            url,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert events_until(proc, "fleet.stage.submitted", 45) == 45
        kill(proc)
        again = fleet(*run_args(tmp_path, "night-1"), cwd=tmp_path, env=run_env(url))
        assert again.returncode == 0, again.stderr
        assert "40 of 40 models succeeded" in again.stderr
        assert sim_stats(url)["max_jobs_per_model_and_type"] == 1


@pytest.mark.e2e
def test_sigterm_stops_the_run_with_143_and_it_resumes(
    tmp_path: Path, fleet_here: FleetHere
) -> None:
    """SIGTERM records the run as interrupted and exits 143; the same id then finishes it."""
    with emulator(tmp_path, "--models", "10", "--time-scale", "3000") as url:
        proc = start(
            run_args(tmp_path, "n"), tmp_path, url, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        assert events_until(proc, "fleet.stage.submitted", 1) == 1
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 143, err
        assert "Traceback" not in err
        status = json.loads(fleet_here("status", "n", "--json", cwd=tmp_path).out)
        assert status["status"] == "interrupted"
        again = fleet(*run_args(tmp_path, "n"), cwd=tmp_path, env=run_env(url))
        assert again.returncode == 0, again.stderr


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["run", "--config", "missing.toml"], "missing.toml"),
        (["run", "--concurrency", "-1"], "concurrency"),
        (["run", "--limits.train", "zero"], "limits.train"),
        (["status", "--db", "nope.db"], "nope.db"),
        (["demo", "--models", "0"], "--models"),
        (["run", "--stages", "deploy,train"], "stages"),
        (["run", "--defaults.approval-rule", "Accuracy >>"], "column"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    tmp_path: Path, fleet_here: FleetHere, args: list[str], needle: str
) -> None:
    """Configuration mistakes print one line naming the setting, exit 2, and write nothing."""
    done = fleet_here(*args, cwd=tmp_path, env={"FLEET_API__TOKEN": TOKEN})
    assert done.code == 2, done.err
    lines = done.err.strip().splitlines()
    assert len(lines) == 1, done.err
    assert needle in lines[0]
    assert "Traceback" not in done.err
    assert not list(tmp_path.glob("*.db"))


def test_an_unreachable_server_exits_3_and_the_token_stays_secret(
    tmp_path: Path, fleet_here: FleetHere
) -> None:
    """No server at the URL: exit 3 with one clear reason; the token appears nowhere."""
    config = empty_config(tmp_path)
    config.write_text(
        config.read_text() + '\n[[models]]\nid = "088d1992-06bc-46cc-9f92-c2a1c2b03ca9"\n'
    )
    done = fleet_here(
        "run",
        "--config",
        str(config),
        "--api.retry-budget",
        "1",
        "--api.retry-attempts",
        "2",
        cwd=tmp_path,
        env={"FLEET_API__URL": "http://127.0.0.1:9/modelops/core", "FLEET_API__TOKEN": TOKEN},
    )
    assert done.code == 3, done.err
    assert "cannot reach ModelOps" in done.err
    assert "Traceback" not in done.err
    assert TOKEN not in done.out + done.err
    assert TOKEN.encode() not in (tmp_path / "fleet.db").read_bytes()


def test_a_wrong_token_exits_3(tmp_path: Path, fleet_here: FleetHere) -> None:
    """A token the server rejects stops the run with exit 3 and says so."""
    with emulator_here(tmp_path, SimSettings(models=2, token=TOKEN)) as served:
        done = fleet_here(
            "run",
            "--models-file",
            "models.csv",
            "--config",
            str(empty_config(tmp_path)),
            cwd=tmp_path,
            env={"FLEET_API__URL": served.url, "FLEET_API__TOKEN": "not-the-token"},
        )
    assert done.code == 3, done.err
    assert "token rejected" in done.err


def test_status_of_an_unknown_run_is_exit_2(tmp_path: Path, fleet_here: FleetHere) -> None:
    """`fleet status` of a run id the state file does not hold says so in one line."""
    anyio.run(_night, tmp_path / "f.db", MODEL_IDS[:3])
    status = fleet_here("status", "no-such-run", "--db", "f.db", cwd=tmp_path)
    assert status.code == 2
    assert status.err.strip() == "fleet: run 'no-such-run' is not in the state file"


@pytest.mark.e2e
def test_version_and_module_entry_point(tmp_path: Path) -> None:
    """`python -m fleet --version` prints the version: the module entry point, as a process."""
    done = fleet("--version", cwd=tmp_path)
    assert done.returncode == 0
    assert done.stdout.startswith("fleet ")


@pytest.mark.usefixtures("demo_ticks")
def test_demo_with_a_gate_rejects_the_versions_below_it(
    tmp_path: Path, fleet_here: FleetHere
) -> None:
    """`fleet demo` with an approval rule exits 0 and rejects exactly the versions under it."""
    world, _ = build(SimSettings(models=30, seed=4))
    below = sum(float(draws.metrics(4, m.id, 2)["Accuracy"]) < 0.8 for m in world.models())
    demo = ["demo", "--models", "30", "--seed", "4", *FAST]
    gate = ["--defaults.approval-rule", "Accuracy >= 0.8"]
    done = fleet_here(*demo, *gate, cwd=tmp_path)
    assert done.code == 0, done.err
    assert f"{30 - below} of 30 models succeeded, {below} rejected by the approval rule" in (
        done.err
    )
    strict = fleet_here(*demo, "--db", "b.db", *gate, "--fail-on-reject", cwd=tmp_path)
    assert strict.code == 1, strict.err


def test_run_writes_metrics_and_reports_in_every_format(
    tmp_path: Path, fleet_here: FleetHere
) -> None:
    """--metrics-file parses back as Prometheus text; fleet report renders md/json/junit/html."""
    emulated = SimSettings(models=8, job_error_rate=0.2, seed=2, token=TOKEN)
    with emulator_here(tmp_path, emulated) as served:
        done = fleet_here(
            *run_args(tmp_path, "night"), "--metrics-file", "fleet.prom", cwd=tmp_path,
            env=run_env(served.url),
        )  # fmt: skip
    assert done.code in {0, 1}, done.err
    families = {
        f.name: f for f in text_string_to_metric_families((tmp_path / "fleet.prom").read_text())
    }
    models = {s.labels["outcome"]: s.value for s in families["fleet_models"].samples}
    assert sum(models.values()) == 8
    assert "fleet_stage_duration_seconds" in families
    for fmt in ("md", "json", "junit", "html"):
        out = tmp_path / f"report.{fmt}"
        shown = fleet_here("report", "night", "--format", fmt, "--output", str(out), cwd=tmp_path)
        assert shown.code == 0, shown.err
        assert out.stat().st_mode & 0o777 == 0o600
    cases = ET.parse(tmp_path / "report.junit").getroot().iter("testcase")
    assert len(list(cases)) == 8
    assert json.loads((tmp_path / "report.json").read_text())
    assert "<svg" in (tmp_path / "report.html").read_text()


# -- status and report over several state files ----------------------------------------------

MODEL_IDS = [f"00000000-0000-4000-8000-{i:012d}" for i in range(1, 7)]


async def _night(db: Path, ids: list[str], run_id: str = "n") -> None:
    """A finished run of `ids` in `db`: each model trained in a minute."""
    start = datetime(2026, 11, 25, 1, tzinfo=UTC)
    specs = [ModelSpec(id=i, name=f"store-{i[-4:]}", lifecycle=Lifecycle()) for i in ids]
    async with Store.open(db) as store:
        await store.create_run(run_id, (Stage.TRAIN,), specs, "{}")
        for spec in specs:
            trained = StageRecord(
                run_id, spec.id, Stage.TRAIN, StageState.SUCCEEDED, attempt=1,
                submitted_at=start, finished_at=start + timedelta(minutes=1),
            )  # fmt: skip
            await store.save_stage(trained, StageState.PENDING)
        await store.set_run_status(run_id, "succeeded", finished=True)


def _shards(tmp_path: Path) -> None:
    """fleet.shard-0-of-2.db and fleet.shard-1-of-2.db with three models each."""
    for k, ids in enumerate((MODEL_IDS[:3], MODEL_IDS[3:])):
        anyio.run(_night, tmp_path / f"fleet.shard-{k}-of-2.db", ids)


def test_status_and_report_merge_the_state_files_of_a_pattern(
    tmp_path: Path, fleet_here: FleetHere
) -> None:
    """--db 'fleet.shard-*.db' reads both files as one run, in every output, naming them."""
    _shards(tmp_path)
    files = ["fleet.shard-0-of-2.db", "fleet.shard-1-of-2.db"]
    status = fleet_here("status", "--db", "fleet.shard-*.db", "--json", cwd=tmp_path)
    assert status.code == 0, status.err
    document = json.loads(status.out)
    assert [m["model_id"] for m in document["models"]] == MODEL_IDS
    assert document["stages"] == {"train": {"succeeded": 6}}
    assert [(s["db"], s["status"], s["models"]) for s in document["sources"]] == [
        (name, "succeeded", 3) for name in files
    ]
    assert document["warnings"] == []
    assert status.err == ""
    table = fleet_here("status", "--db", files[1], "--db", files[0], cwd=tmp_path)
    assert "state files" in table.out
    assert table.out.index(files[1]) < table.out.index(files[0])
    report = fleet_here("report", "--db", str(tmp_path / "fleet.shard-*.db"), "--format", "json",
                        cwd=tmp_path)  # fmt: skip
    assert report.code == 0, report.err
    merged = json.loads(report.out)
    assert merged["totals"]["succeeded"] == 6
    assert [s["db"] for s in merged["sources"]] == [str(tmp_path / name) for name in files]
    junit = fleet_here("report", "--db", "fleet.shard-*.db", "--format", "junit", cwd=tmp_path)
    assert ET.fromstring(junit.out).get("tests") == "6"


def test_a_model_in_two_state_files_is_counted_once_with_a_warning(
    tmp_path: Path, fleet_here: FleetHere
) -> None:
    """Overlapping files: each model once, and a warning in the output and on stderr."""
    _shards(tmp_path)
    anyio.run(_night, tmp_path / "fleet.db", MODEL_IDS)
    status = fleet_here("status", "--db", "fleet.db", "--db", "fleet.shard-1-of-2.db", "--json",
                        cwd=tmp_path)  # fmt: skip
    assert status.code == 0, status.err
    document = json.loads(status.out)
    assert len(document["models"]) == 6
    assert document["stages"] == {"train": {"succeeded": 6}}
    assert set(document["overlaps"]) == set(MODEL_IDS[3:])
    [warning] = document["warnings"]
    assert warning.startswith("3 models are in both fleet.db and fleet.shard-1-of-2.db")
    assert status.err == f"fleet: warning: {warning}\n"
    report = fleet_here("report", "--db", "fleet.db", "--db", "fleet.shard-1-of-2.db", cwd=tmp_path)
    assert f"> **Warning:** {warning}" in report.out
    assert "| **total** | **6** |" in report.out


def test_a_run_missing_from_some_files_is_read_from_the_others(
    tmp_path: Path, fleet_here: FleetHere
) -> None:
    """A file without the run is named in a warning; a run in none of them is exit 2."""
    anyio.run(_night, tmp_path / "a.db", MODEL_IDS[:3], "n")
    anyio.run(_night, tmp_path / "b.db", MODEL_IDS[3:], "m")
    status = fleet_here("status", "n", "--db", "a.db", "--db", "b.db", "--json", cwd=tmp_path)
    assert status.code == 0, status.err
    document = json.loads(status.out)
    assert len(document["models"]) == 3
    assert document["warnings"] == [
        "run 'n' is not in b.db: that shard has not started it, or selected no model"
    ]
    assert document["sources"][1] == {"db": "b.db", "status": None, "reason": None, "models": 0}
    absent = fleet_here("report", "z", "--db", "a.db", "--db", "b.db", cwd=tmp_path)
    assert absent.code == 2
    assert absent.err == "fleet: run 'z' is in none of a.db, b.db\n"


@pytest.mark.parametrize("command", ["status", "report"])
@pytest.mark.parametrize(
    ("db", "says"),
    [
        ("missing.db", "--db: missing.db does not exist; pass the state file of a run"),
        ("nothing-*.db", "--db: no file matches nothing-*.db; pass the state files of a run"),
    ],
)
def test_a_missing_state_file_is_one_line_and_exit_2(
    tmp_path: Path, fleet_here: FleetHere, command: str, db: str, says: str
) -> None:
    """One file of several that is not there: exit 2 naming it, nothing read or written."""
    _shards(tmp_path)
    done = fleet_here(command, "--db", "fleet.shard-0-of-2.db", "--db", db, cwd=tmp_path)
    assert done.code == 2
    assert done.err == f"fleet: configuration error: {says}\n"
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith("-commits")) == [
        "fleet.shard-0-of-2.db",
        "fleet.shard-1-of-2.db",
    ]


def test_status_and_report_change_no_file(tmp_path: Path, fleet_here: FleetHere) -> None:
    """Reading state files read-only creates, changes and leaves behind nothing."""
    _shards(tmp_path)

    def snapshot() -> dict[str, tuple[int, str]]:
        return {
            p.name: (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in tmp_path.iterdir()
        }

    before = snapshot()
    for args in (
        ["status"], ["status", "--json"], *(["report", "--format", f] for f in FORMATS)
    ):  # fmt: skip
        done = fleet_here(*args, "--db", "fleet.shard-*.db", cwd=tmp_path)
        assert done.code == 0, done.err
    assert snapshot() == before


# -- several projects -----------------------------------------------------------------------

PROJECT_A = SimSettings().project_id
PROJECT_B = "7c0f6d2e-3b1a-4e5f-9a8b-2d4c6e8f0a1b"
TOKEN_B = "project-b-token-51c7e9"
EMULATED_A = SimSettings(token=TOKEN)
EMULATED_B = SimSettings(seed=2, project_id=PROJECT_B, token=TOKEN_B)


def _two_projects_config(tmp_path: Path, url_a: str, url_b: str) -> Path:
    """Projects a and b, each on its own server with its own models; b's token in a file,
    and b one model at a time."""
    (tmp_path / "b-token").write_text(TOKEN_B + "\n")
    config = tmp_path / "projects.toml"
    config.write_text(
        f"""
[projects.a]
models_file = "a.csv"
[projects.a.api]
url = "{url_a}"
project_id = "{PROJECT_A}"

[projects.b]
models_file = "b.csv"
limits = {{ concurrency = 1 }}
[projects.b.api]
url = "{url_b}"
project_id = "{PROJECT_B}"
token_file = "{tmp_path / "b-token"}"
"""
    )
    return config


def test_one_run_drives_two_projects_each_on_its_own_server(
    tmp_path: Path, fleet_here: FleetHere
) -> None:
    """Two emulators (two projects, two tokens): plan, run, status and report per project;
    each server gets only its models' jobs, b's concurrency holds, and no token is written."""
    with (
        emulator_here(tmp_path, replace(EMULATED_A, models=6), models_csv="a.csv") as a,
        emulator_here(tmp_path, replace(EMULATED_B, models=4), models_csv="b.csv") as b,
    ):
        config = str(_two_projects_config(tmp_path, a.url, b.url))
        env = {"FLEET_PROJECTS__A__API__TOKEN": TOKEN}
        plan = fleet_here("plan", "--config", config, "--json", cwd=tmp_path, env=env)
        assert plan.code == 0, plan.err
        assert json.loads(plan.out)["projects"] == {"a": {"submit": 6}, "b": {"submit": 4}}
        done = fleet_here(
            "run", "--run-id", "two", "--config", config, "--log-level", "debug", *FAST,
            cwd=tmp_path, env=env,
        )  # fmt: skip
        assert done.code == 0, done.err
        assert "10 of 10 models succeeded" in done.err
        stats = {"a": a.stats(), "b": b.stats()}
    assert {name: s["jobs_by_type"]["TRAINING"] for name, s in stats.items()} == {"a": 6, "b": 4}
    assert all(s["max_jobs_per_model_and_type"] == 1 for s in stats.values())
    assert stats["b"]["peak_running_jobs"] == 1
    lines = json_lines(done.out)
    assert {x.get("project") for x in lines if x["event"] == "fleet.stage.submitted"} == {"a", "b"}
    status = json.loads(fleet_here("status", "two", "--json", cwd=tmp_path).out)
    assert status["projects"] == {"a": {"succeeded": 6}, "b": {"succeeded": 4}}
    assert sorted(m["project"] for m in status["models"]) == ["a"] * 6 + ["b"] * 4
    text = fleet_here("status", "two", cwd=tmp_path).out
    assert "projects" in text
    report = fleet_here("report", "two", cwd=tmp_path).out
    assert "## Projects" in report
    assert "| a | 6 | 0 | 0 | 0 | 0 | 6 |" in report
    written = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("fleet.db"))
    for secret in (TOKEN, TOKEN_B):
        assert secret not in done.out + done.err + report + text
        assert secret.encode() not in written


def test_a_project_whose_server_is_down_stops_alone_with_exit_3(
    tmp_path: Path, fleet_here: FleetHere
) -> None:
    """b's server does not answer: a's models all finish, b's wait, and fleet exits 3 naming
    b; the same run id finishes b once its server is back."""
    emulated_b = replace(EMULATED_B, models=3)
    write_models_csv(tmp_path / "b.csv", sim.World(emulated_b, Ticking()))
    with emulator_here(tmp_path, replace(EMULATED_A, models=5), models_csv="a.csv") as a:
        config = str(_two_projects_config(tmp_path, a.url, "http://127.0.0.1:9/modelops/core"))
        env = {"FLEET_PROJECTS__A__API__TOKEN": TOKEN, "FLEET_PROJECTS__B__API__OUTAGE_BUDGET": "1"}
        done = fleet_here(
            "run", "--run-id", "n", "--config", config, "--api.retry-budget", "1",
            "--api.retry-attempts", "2", *FAST, cwd=tmp_path, env=env,
        )  # fmt: skip
        assert done.code == 3, done.err
        assert "5 of 8 models succeeded" in done.err
        assert "the run could not proceed: project b: cannot reach ModelOps" in done.err
        assert "Traceback" not in done.err
        with emulator_here(tmp_path, emulated_b, models_csv="b.csv") as b:
            config = str(_two_projects_config(tmp_path, a.url, b.url))
            again = fleet_here(
                "run", "--run-id", "n", "--config", config, *FAST, cwd=tmp_path, env=env
            )
            assert again.code == 0, again.err
            assert "8 of 8 models succeeded" in again.err
            assert b.stats()["jobs_by_type"]["TRAINING"] == 3
        assert a.stats()["jobs_by_type"]["TRAINING"] == 5


# -- shutdown within the grace period --------------------------------------------------------


@pytest.mark.parametrize("grace", [0.5, 1.0, 2.0, 10.0, 30.0, 600.0])
def test_the_cancellation_leaves_room_for_the_shutdown_within_the_grace_period(
    grace: float,
) -> None:
    """Draining is cancelled early enough that closing down ends within grace_period."""
    cancel_at, exit_by = grace_deadlines(1000.0, grace)
    reserve = exit_by - cancel_at
    assert exit_by == 1000.0 + grace
    assert min(1.0, grace / 2) <= reserve <= 5.0  # room for writes, lease, files, connections
    assert cancel_at - 1000.0 >= grace / 2  # draining keeps most of the period


async def test_the_first_signal_sets_the_deadline_and_a_second_cancels_at_once() -> None:
    """A signal starts the grace period when it arrives; a second one cancels without waiting."""
    shutdown = Shutdown(grace_s=600.0)
    stop = anyio.Event()
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(watch_signals, tg.cancel_scope, stop, shutdown)
            await anyio.wait_all_tasks_blocked()  # the receiver is installed
            before = anyio.current_time()
            os.kill(os.getpid(), signal.SIGTERM)
            await stop.wait()
            assert shutdown.exit_by is not None
            assert before + 600.0 <= shutdown.exit_by <= anyio.current_time() + 600.0
            assert not tg.cancel_scope.cancel_called
            os.kill(os.getpid(), signal.SIGINT)
            await anyio.sleep_forever()  # until the watcher cancels the group
    assert shutdown.signals == [signal.SIGTERM]
    remaining = shutdown.remaining()
    assert remaining is not None
    assert 599.0 < remaining <= 600.0
