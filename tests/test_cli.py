"""End to end: the `fleet` command in a subprocess against the emulator over loopback HTTP.

Nothing here waits on the clock for something to happen: the emulator runs fast, and the
tests react to the lines the processes print (the URL it listens on, `fleet.stage.submitted`).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cli_support import (
    FAST,
    TOKEN,
    empty_config,
    emulator,
    events_until,
    fleet,
    json_lines,
    kill,
    run_args,
    run_env,
    sim_stats,
    start,
)
from fleet.models import Lifecycle, ModelSpec
from fleet.records import StageRecord
from fleet.report import FORMATS
from fleet.shutdown import Shutdown, grace_deadlines, watch_signals
from fleet.sim import SimSettings, build, draws
from fleet.stages import Stage, StageState
from fleet.store import Store

pytestmark = pytest.mark.e2e


def test_demo_takes_every_model_through_every_stage(tmp_path: Path) -> None:
    """`fleet demo` exits 0 with all models succeeded; stdout is JSON lines with context."""
    done = fleet("demo", "--models", "25", "--time-scale", "5000", *FAST, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "25 of 25 models succeeded" in done.stderr
    assert "max jobs per model and type 1" in done.stderr
    lines = json_lines(done.stdout)
    stage_lines = [x for x in lines if str(x["event"]).startswith("fleet.stage.")]
    assert len(stage_lines) >= 25 * 5
    assert all({"run_id", "model_id", "stage"} <= x.keys() for x in stage_lines)
    assert any(x["event"] == "fleet.progress" for x in lines) or len(lines) > 0
    assert "fleet-demo-token" not in done.stdout + done.stderr


def test_demo_with_job_errors_exits_1_and_lists_the_failures(tmp_path: Path) -> None:
    """Injected job errors fail some models: exit 1, each failed model named with its reason."""
    done = fleet(
        "demo",
        "--models",
        "30",
        "--time-scale",
        "5000",
        "--job-error-rate",
        "0.1",
        "--seed",
        "4",
        *FAST,
        cwd=tmp_path,
    )
    assert done.returncode == 1, done.stderr
    failed = [line for line in done.stderr.splitlines() if line.startswith("  failed ")]
    assert failed
    assert all("ended ERROR" in line for line in failed)


def test_run_against_fleet_sim_then_status(tmp_path: Path) -> None:
    """`fleet run` drives the models of a CSV against `fleet sim`; `fleet status` shows them."""
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


def test_a_killed_run_resumes_without_a_second_job(tmp_path: Path) -> None:
    """SIGKILL midway, start again with the same run id: all finish, one job per model/type."""
    with emulator(tmp_path, "--models", "40", "--time-scale", "600") as url:
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


def test_sigterm_stops_the_run_with_143_and_it_resumes(tmp_path: Path) -> None:
    """SIGTERM records the run as interrupted and exits 143; the same id then finishes it."""
    with emulator(tmp_path, "--models", "10", "--time-scale", "300") as url:
        proc = start(
            run_args(tmp_path, "n"), tmp_path, url, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        assert events_until(proc, "fleet.stage.submitted", 1) == 1
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 143, err
        assert "Traceback" not in err
        status = json.loads(fleet("status", "n", "--json", cwd=tmp_path).stdout)
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
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, args: list[str], needle: str) -> None:
    """Configuration mistakes print one line naming the setting, exit 2, and write nothing."""
    done = fleet(*args, cwd=tmp_path, env={"FLEET_API__TOKEN": TOKEN})
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert needle in lines[0]
    assert "Traceback" not in done.stderr
    assert not list(tmp_path.glob("*.db"))


def test_an_unreachable_server_exits_3_and_the_token_stays_secret(tmp_path: Path) -> None:
    """No server at the URL: exit 3 with one clear reason; the token appears nowhere."""
    config = empty_config(tmp_path)
    config.write_text(
        config.read_text() + '\n[[models]]\nid = "088d1992-06bc-46cc-9f92-c2a1c2b03ca9"\n'
    )
    done = fleet(
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
    assert done.returncode == 3, done.stderr
    assert "cannot reach ModelOps" in done.stderr
    assert "Traceback" not in done.stderr
    assert TOKEN not in done.stdout + done.stderr
    assert TOKEN.encode() not in (tmp_path / "fleet.db").read_bytes()


def test_a_wrong_token_exits_3(tmp_path: Path) -> None:
    """A token the server rejects stops the run with exit 3 and says so."""
    with emulator(tmp_path, "--models", "2") as url:
        done = fleet(
            "run",
            "--models-file",
            "models.csv",
            "--config",
            str(empty_config(tmp_path)),
            cwd=tmp_path,
            env={"FLEET_API__URL": url, "FLEET_API__TOKEN": "not-the-token"},
        )
    assert done.returncode == 3, done.stderr
    assert "token rejected" in done.stderr


def test_status_of_an_unknown_run_is_exit_2(tmp_path: Path) -> None:
    """`fleet status` of a run id the state file does not hold says so in one line."""
    anyio.run(_night, tmp_path / "f.db", MODEL_IDS[:3])
    status = fleet("status", "no-such-run", "--db", "f.db", cwd=tmp_path)
    assert status.returncode == 2
    assert status.stderr.strip() == "fleet: run 'no-such-run' is not in the state file"


def test_version_and_module_entry_point(tmp_path: Path) -> None:
    """`python -m fleet --version` prints the version."""
    done = fleet("--version", cwd=tmp_path)
    assert done.returncode == 0
    assert done.stdout.startswith("fleet ")


def test_demo_with_a_gate_rejects_the_versions_below_it(tmp_path: Path) -> None:
    """`fleet demo` with an approval rule exits 0 and rejects exactly the versions under it."""
    world, _ = build(SimSettings(models=30, seed=4))
    below = sum(float(draws.metrics(4, m.id, 2)["Accuracy"]) < 0.8 for m in world.models())
    done = fleet(
        "demo", "--models", "30", "--seed", "4", "--time-scale", "5000", *FAST,
        "--defaults.approval-rule", "Accuracy >= 0.8", cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"{30 - below} of 30 models succeeded, {below} rejected by the approval rule" in (
        done.stderr
    )
    strict = fleet(
        "demo", "--models", "30", "--seed", "4", "--time-scale", "5000", *FAST, "--db", "b.db",
        "--defaults.approval-rule", "Accuracy >= 0.8", "--fail-on-reject", cwd=tmp_path,
    )  # fmt: skip
    assert strict.returncode == 1, strict.stderr


def test_run_writes_metrics_and_reports_in_every_format(tmp_path: Path) -> None:
    """--metrics-file parses back as Prometheus text; fleet report renders md/json/junit/html."""
    with emulator(tmp_path, "--models", "8", "--time-scale", "5000", "--job-error-rate", "0.2",
                  "--seed", "2") as url:  # fmt: skip
        done = fleet(
            *run_args(tmp_path, "night"), "--metrics-file", "fleet.prom", cwd=tmp_path,
            env=run_env(url),
        )  # fmt: skip
    assert done.returncode in {0, 1}, done.stderr
    families = {
        f.name: f for f in text_string_to_metric_families((tmp_path / "fleet.prom").read_text())
    }
    models = {s.labels["outcome"]: s.value for s in families["fleet_models"].samples}
    assert sum(models.values()) == 8
    assert "fleet_stage_duration_seconds" in families
    for fmt in ("md", "json", "junit", "html"):
        out = tmp_path / f"report.{fmt}"
        shown = fleet("report", "night", "--format", fmt, "--output", str(out), cwd=tmp_path)
        assert shown.returncode == 0, shown.stderr
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


def test_status_and_report_merge_the_state_files_of_a_pattern(tmp_path: Path) -> None:
    """--db 'fleet.shard-*.db' reads both files as one run, in every output, naming them."""
    _shards(tmp_path)
    files = ["fleet.shard-0-of-2.db", "fleet.shard-1-of-2.db"]
    status = fleet("status", "--db", "fleet.shard-*.db", "--json", cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    document = json.loads(status.stdout)
    assert [m["model_id"] for m in document["models"]] == MODEL_IDS
    assert document["stages"] == {"train": {"succeeded": 6}}
    assert [(s["db"], s["status"], s["models"]) for s in document["sources"]] == [
        (name, "succeeded", 3) for name in files
    ]
    assert document["warnings"] == []
    assert status.stderr == ""
    table = fleet("status", "--db", files[1], "--db", files[0], cwd=tmp_path)
    assert "state files" in table.stdout
    assert table.stdout.index(files[1]) < table.stdout.index(files[0])
    report = fleet("report", "--db", str(tmp_path / "fleet.shard-*.db"), "--format", "json",
                   cwd=tmp_path)  # fmt: skip
    assert report.returncode == 0, report.stderr
    merged = json.loads(report.stdout)
    assert merged["totals"]["succeeded"] == 6
    assert [s["db"] for s in merged["sources"]] == [str(tmp_path / name) for name in files]
    junit = fleet("report", "--db", "fleet.shard-*.db", "--format", "junit", cwd=tmp_path)
    assert ET.fromstring(junit.stdout).get("tests") == "6"


def test_a_model_in_two_state_files_is_counted_once_with_a_warning(tmp_path: Path) -> None:
    """Overlapping files: each model once, and a warning in the output and on stderr."""
    _shards(tmp_path)
    anyio.run(_night, tmp_path / "fleet.db", MODEL_IDS)
    status = fleet("status", "--db", "fleet.db", "--db", "fleet.shard-1-of-2.db", "--json",
                   cwd=tmp_path)  # fmt: skip
    assert status.returncode == 0, status.stderr
    document = json.loads(status.stdout)
    assert len(document["models"]) == 6
    assert document["stages"] == {"train": {"succeeded": 6}}
    assert set(document["overlaps"]) == set(MODEL_IDS[3:])
    [warning] = document["warnings"]
    assert warning.startswith("3 models are in both fleet.db and fleet.shard-1-of-2.db")
    assert status.stderr == f"fleet: warning: {warning}\n"
    report = fleet("report", "--db", "fleet.db", "--db", "fleet.shard-1-of-2.db", cwd=tmp_path)
    assert f"> **Warning:** {warning}" in report.stdout
    assert "| **total** | **6** |" in report.stdout


def test_a_run_missing_from_some_files_is_read_from_the_others(tmp_path: Path) -> None:
    """A file without the run is named in a warning; a run in none of them is exit 2."""
    anyio.run(_night, tmp_path / "a.db", MODEL_IDS[:3], "n")
    anyio.run(_night, tmp_path / "b.db", MODEL_IDS[3:], "m")
    status = fleet("status", "n", "--db", "a.db", "--db", "b.db", "--json", cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    document = json.loads(status.stdout)
    assert len(document["models"]) == 3
    assert document["warnings"] == [
        "run 'n' is not in b.db: that shard has not started it, or selected no model"
    ]
    assert document["sources"][1] == {"db": "b.db", "status": None, "reason": None, "models": 0}
    absent = fleet("report", "z", "--db", "a.db", "--db", "b.db", cwd=tmp_path)
    assert absent.returncode == 2
    assert absent.stderr == "fleet: run 'z' is in none of a.db, b.db\n"


@pytest.mark.parametrize("command", ["status", "report"])
@pytest.mark.parametrize(
    ("db", "says"),
    [
        ("missing.db", "--db: missing.db does not exist; pass the state file of a run"),
        ("nothing-*.db", "--db: no file matches nothing-*.db; pass the state files of a run"),
    ],
)
def test_a_missing_state_file_is_one_line_and_exit_2(
    tmp_path: Path, command: str, db: str, says: str
) -> None:
    """One file of several that is not there: exit 2 naming it, nothing read or written."""
    _shards(tmp_path)
    done = fleet(command, "--db", "fleet.shard-0-of-2.db", "--db", db, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr == f"fleet: configuration error: {says}\n"
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith("-commits")) == [
        "fleet.shard-0-of-2.db",
        "fleet.shard-1-of-2.db",
    ]


def test_status_and_report_change_no_file(tmp_path: Path) -> None:
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
        done = fleet(*args, "--db", "fleet.shard-*.db", cwd=tmp_path)
        assert done.returncode == 0, done.stderr
    assert snapshot() == before


# -- several projects -----------------------------------------------------------------------

PROJECT_A = SimSettings().project_id
PROJECT_B = "7c0f6d2e-3b1a-4e5f-9a8b-2d4c6e8f0a1b"
TOKEN_B = "project-b-token-51c7e9"


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


def test_one_run_drives_two_projects_each_on_its_own_server(tmp_path: Path) -> None:
    """Two `fleet sim` (two projects, two tokens): plan, run, status and report per project;
    each server gets only its models' jobs, b's concurrency holds, and no token is written."""
    with (
        emulator(tmp_path, "--models", "6", "--time-scale", "5000", models_csv="a.csv") as url_a,
        emulator(
            tmp_path, "--models", "4", "--time-scale", "5000", "--seed", "2",
            "--project-id", PROJECT_B, token=TOKEN_B, models_csv="b.csv",
        ) as url_b,
    ):  # fmt: skip
        config = str(_two_projects_config(tmp_path, url_a, url_b))
        env = {"FLEET_PROJECTS__A__API__TOKEN": TOKEN}
        plan = fleet("plan", "--config", config, "--json", cwd=tmp_path, env=env)
        assert plan.returncode == 0, plan.stderr
        assert json.loads(plan.stdout)["projects"] == {"a": {"submit": 6}, "b": {"submit": 4}}
        done = fleet(
            "run", "--run-id", "two", "--config", config, "--log-level", "debug", *FAST,
            cwd=tmp_path, env=env,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert "10 of 10 models succeeded" in done.stderr
        stats = {"a": sim_stats(url_a), "b": sim_stats(url_b)}
    assert {name: s["jobs_by_type"]["TRAINING"] for name, s in stats.items()} == {"a": 6, "b": 4}
    assert all(s["max_jobs_per_model_and_type"] == 1 for s in stats.values())
    assert stats["b"]["peak_running_jobs"] == 1
    lines = json_lines(done.stdout)
    assert {x.get("project") for x in lines if x["event"] == "fleet.stage.submitted"} == {"a", "b"}
    status = json.loads(fleet("status", "two", "--json", cwd=tmp_path).stdout)
    assert status["projects"] == {"a": {"succeeded": 6}, "b": {"succeeded": 4}}
    assert sorted(m["project"] for m in status["models"]) == ["a"] * 6 + ["b"] * 4
    text = fleet("status", "two", cwd=tmp_path).stdout
    assert "projects" in text
    report = fleet("report", "two", cwd=tmp_path).stdout
    assert "## Projects" in report
    assert "| a | 6 | 0 | 0 | 0 | 0 | 6 |" in report
    written = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("fleet.db"))
    for secret in (TOKEN, TOKEN_B):
        assert secret not in done.stdout + done.stderr + report + text
        assert secret.encode() not in written


def test_a_project_whose_server_is_down_stops_alone_with_exit_3(tmp_path: Path) -> None:
    """b's server does not answer: a's models all finish, b's wait, and fleet exits 3 naming
    b; the same run id finishes b once its server is back."""
    with emulator(tmp_path, "--models", "5", "--time-scale", "5000", models_csv="a.csv") as url_a:
        with emulator(
            tmp_path, "--models", "3", "--seed", "2", "--project-id", PROJECT_B,
            token=TOKEN_B, models_csv="b.csv",
        ):  # fmt: skip
            pass  # b.csv written; the server is gone
        config = str(_two_projects_config(tmp_path, url_a, "http://127.0.0.1:9/modelops/core"))
        env = {"FLEET_PROJECTS__A__API__TOKEN": TOKEN, "FLEET_PROJECTS__B__API__OUTAGE_BUDGET": "1"}
        done = fleet(
            "run", "--run-id", "n", "--config", config, "--api.retry-budget", "1",
            "--api.retry-attempts", "2", *FAST, cwd=tmp_path, env=env,
        )  # fmt: skip
        assert done.returncode == 3, done.stderr
        assert "5 of 8 models succeeded" in done.stderr
        assert "the run could not proceed: project b: cannot reach ModelOps" in done.stderr
        assert "Traceback" not in done.stderr
        with emulator(
            tmp_path, "--models", "3", "--time-scale", "5000", "--seed", "2",
            "--project-id", PROJECT_B, token=TOKEN_B, models_csv="b.csv",
        ) as url_b:  # fmt: skip
            config = str(_two_projects_config(tmp_path, url_a, url_b))
            again = fleet("run", "--run-id", "n", "--config", config, *FAST, cwd=tmp_path, env=env)
            assert again.returncode == 0, again.stderr
            assert "8 of 8 models succeeded" in again.stderr
            assert sim_stats(url_b)["jobs_by_type"]["TRAINING"] == 3
        assert sim_stats(url_a)["jobs_by_type"]["TRAINING"] == 5


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
