"""bench/airflow.py and its DAG, in the parts that need no Airflow: no test installs it."""

from __future__ import annotations

import ast
import importlib
import os
from pathlib import Path
from types import ModuleType

import pytest

from test_bench import ROOT, job, load_script

DAG = ROOT / "bench" / "airflow_dag.py"
TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def bench() -> ModuleType:
    return load_script("airflow")


def _decorator(function: ast.FunctionDef, name: str) -> ast.Call | None:
    for decorator in function.decorator_list:
        if isinstance(decorator, ast.Call) and getattr(decorator.func, "id", None) == name:
            return decorator
    return None


def _keyword(call: ast.Call, name: str) -> object:
    return next(ast.literal_eval(k.value) for k in call.keywords if k.arg == name)


def test_dag_file_chains_the_five_stages_in_a_mapped_group() -> None:
    """The DAG's task group calls train, evaluate, approve, deploy, retire, each on the last
    one's result, and the DAG maps the group over the models task."""
    tree = ast.parse(DAG.read_text(), filename=str(DAG))
    compile(tree, str(DAG), "exec")
    functions = {f.name: f for f in tree.body if isinstance(f, ast.FunctionDef)}
    task_ids = {
        name: _keyword(call, "task_id")
        for name, function in functions.items()
        if (call := _decorator(function, "task")) is not None
    }
    [group] = [f for f in functions.values() if _decorator(f, "task_group") is not None]
    handed = group.args.args[0].arg
    stages = []
    for statement in group.body:
        call = statement.value if isinstance(statement, ast.Assign | ast.Expr) else None
        assert isinstance(call, ast.Call)
        assert isinstance(call.func, ast.Name)
        assert [a.id for a in call.args if isinstance(a, ast.Name)] == [handed]
        stages.append(task_ids[call.func.id])
        if isinstance(statement, ast.Assign):
            handed = statement.targets[0].id
    assert tuple(stages) == ("train", "evaluate", "approve", "deploy", "retire")
    [dag] = [f for f in functions.values() if _decorator(f, "dag") is not None]
    [expand] = [
        node
        for node in ast.walk(dag)
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "expand"
    ]
    assert expand.func.value.id == group.name
    [mapped] = expand.keywords
    assert isinstance(mapped.value, ast.Call)
    assert task_ids[mapped.value.func.id] == "models"


def _stat(pid: int, name: str, ppid: int, ticks: tuple[int, int, int, int], pages: int) -> str:
    # proc(5): pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt
    # cmajflt utime stime cutime cstime priority nice threads itreal starttime vsize rss ...
    utime, stime, cutime, cstime = ticks
    return (
        f"{pid} ({name}) S {ppid} {pid} {pid} 0 -1 4194560 100 0 0 0 "
        f"{utime} {stime} {cutime} {cstime} 20 0 1 0 12345 1000000 {pages} 18446744073709551615\n"
    )


def fake_proc(
    root: Path, procs: dict[int, tuple[str, int, tuple[int, int, int, int], int]]
) -> None:
    """A /proc with a stat file per process and an smaps_rollup whose Pss is 4 kB a page."""
    for pid, (name, ppid, ticks, pages) in procs.items():
        (root / str(pid)).mkdir(exist_ok=True)
        (root / str(pid) / "stat").write_text(_stat(pid, name, ppid, ticks, pages))
        (root / str(pid) / "smaps_rollup").write_text(f"Rss: 1 kB\nPss: {pages * 4} kB\n")


PROCS = {
    1: ("init", 0, (5, 5, 0, 0), 10),
    100: ("airflow scheduler", 1, (TICKS, 0, 0, 0), 100),
    101: ("worker (x) )", 100, (TICKS, TICKS, 2 * TICKS, 0), 50),  # ')' in the name
    102: ("task", 101, (0, TICKS, 0, TICKS), 25),
    200: ("postgres", 1, (3 * TICKS, 0, 0, 0), 7),
}


def test_proc_table_reads_cpu_with_reaped_children_and_rss(tmp_path: Path) -> None:
    """Each process's CPU is utime+stime+cutime+cstime; entries that are not pids, or whose
    stat is gone, are left out."""
    fake_proc(tmp_path, PROCS)
    (tmp_path / "self").mkdir()
    (tmp_path / "999").mkdir()  # exited while /proc was read
    table = bench().proc_table(tmp_path)
    assert set(table) == {1, 100, 101, 102, 200}
    assert table[101].ppid == 100
    assert table[101].cpu_s == pytest.approx(4.0)
    assert table[101].rss_bytes == 50 * PAGE


def test_tree_is_the_root_and_its_live_descendants(tmp_path: Path) -> None:
    """A tree holds its root's descendants at any depth and nothing else; a gone root, none."""
    fake_proc(tmp_path, PROCS)
    airflow = bench()
    table = airflow.proc_table(tmp_path)
    assert sorted(airflow.tree(table, 100)) == [100, 101, 102]
    assert airflow.tree(table, 200) == [200]
    assert airflow.tree(table, 4242) == []


def test_sampler_sums_cpu_now_and_keeps_the_peak_memory(tmp_path: Path) -> None:
    """A sample gives each tree's CPU so far; memory and process counts keep their peak."""
    fake_proc(tmp_path, PROCS)
    sampler = bench().Sampler(60.0, proc_root=tmp_path)
    sampler.roots |= {"scheduler": 100, "postgres": 200}
    assert sampler.sample() == pytest.approx({"scheduler": 7.0, "postgres": 3.0})
    # The task exits and its worker reaps it: its CPU moves into the worker's cstime.
    fake_proc(tmp_path, {101: ("worker", 100, (TICKS, TICKS, 2 * TICKS, 2 * TICKS), 40)})
    (tmp_path / "102" / "stat").unlink()
    assert sampler.sample() == pytest.approx({"scheduler": 7.0, "postgres": 3.0})
    assert sampler.peak["scheduler"].rss_bytes == 175 * PAGE
    assert sampler.peak["scheduler"].pss_bytes == 175 * 4 * 1024
    assert sampler.peak["scheduler"].processes == 3
    assert sampler.peak_total.rss_bytes == 182 * PAGE
    assert sampler.peak_total.processes == 4


def test_pss_is_zero_for_a_process_without_smaps(tmp_path: Path) -> None:
    """A process that is gone, or whose smaps_rollup cannot be read, counts no memory."""
    assert bench().pss_bytes(7, tmp_path) == 0


def test_model_done_is_each_models_last_lifecycle_job_of_the_night() -> None:
    """Jobs of an earlier night, scoring jobs and unfinished jobs do not make a model done
    (bench/run.py's figures, which the Airflow run reports)."""
    bench()  # bench/ on sys.path
    run = importlib.import_module("run")
    jobs = [
        job("m1", "TRAINING", 5.0, 50.0, 55.0),  # an earlier night
        job("m1", "TRAINING", 100.0, 200.0, 210.0),
        job("m1", "EVALUATION", 210.0, 260.0, 265.0),
        job("m1", "SCORING", 270.0, 900.0, None),
        job("m2", "TRAINING", 100.0, 300.0, 305.0),
        job("m3", "TRAINING", 100.0, 500.0, 505.0),
        job("m4", "TRAINING", 100.0, None, None),
    ]
    stats = {"now": 100.0, "requests_total": 0, "requests_by_route": {}}
    limits = dict.fromkeys(("train", "evaluate", "deploy", "retire", "approve"), 32)
    figures = run.night_figures(jobs, stats, stats, 100.0, limits, capacity=1)
    assert figures["makespan_s"] == 400.0
    assert figures["first_model_done_pct"] == 40.0  # m1 at 260
    assert figures["median_model_done_pct"] == 50.0  # m2 at 300
    assert figures["lower_bound_s"] == 100.0 + 50.0 + 200.0 + 400.0  # one slot: all the work


def test_outcomes_come_from_the_retire_and_deploy_task_states() -> None:
    """A retired model succeeded, a skipped deploy was a rejection, the rest failed."""
    states = {
        "model_factory.retire": {"success": 80, "skipped": 15, "upstream_failed": 5},
        "model_factory.deploy": {"success": 82, "skipped": 15, "failed": 3},
    }
    assert bench().outcomes(states, 100) == {"succeeded": 80, "rejected": 15, "failed": 5}


def test_parse_args_defaults_are_the_recorded_comparison() -> None:
    """Without flags: 100 models, time scale 10, seed 0, 32 slots, polls 5 real s apart, a
    venv of the pinned Airflow under ~/.cache/fleet-bench."""
    args = bench().parse_args(["--json", "out.json"])
    assert (args.models, args.time_scale, args.seed, args.slots) == (100, 10.0, 0, 32)
    assert args.poll_s == 5.0
    assert args.airflow_version == "3.3.2"
    assert args.venv == Path.home() / ".cache" / "fleet-bench" / "airflow-3.3.2"
    assert bench().parse_args(["--json", "o", "--venv", "/v"]).venv == Path("/v")


@pytest.mark.parametrize("flags", [["--models", "0"], ["--slots", "0"], ["--poll-s", "0"]])
def test_parse_args_refuses_empty_runs(flags: list[str]) -> None:
    """No models, no slots or no time between polls is a usage error."""
    with pytest.raises(SystemExit):
        bench().parse_args(["--json", "out.json", *flags])


def test_airflow_env_fixes_executor_slots_and_database(tmp_path: Path) -> None:
    """LocalExecutor, parallelism and max_active_tasks both the slots, the given database,
    the execution API on the api-server's port, one fresh JWT secret per run."""
    args = bench().parse_args(["--json", "out.json", "--slots", "7"])
    env = bench().airflow_env(args, tmp_path, "postgresql+psycopg2://a@127.0.0.1:5/a", 8123)
    assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    assert env["AIRFLOW__CORE__PARALLELISM"] == env["AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG"]
    assert env["AIRFLOW__CORE__PARALLELISM"] == "7"
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://")
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://127.0.0.1:8123/execution/"
    assert env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "False"
    other = bench().airflow_env(args, tmp_path, "postgresql+psycopg2://a@127.0.0.1:5/a", 8123)
    assert env["AIRFLOW__API_AUTH__JWT_SECRET"] != other["AIRFLOW__API_AUTH__JWT_SECRET"]
