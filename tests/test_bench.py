"""bench/run.py: fleet and the seed-pattern baseline, two nights, figures for both sides."""

from __future__ import annotations

import functools
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODELS = 50
FIELDS = (
    "makespan_s",
    "lower_bound_s",
    "makespan_ratio",
    "status_requests_per_job",
    "requests_total",
    "detection_latency_p95_pct",
    "fleet_cpu_s",
    "fleet_cpu_ms_per_model",
    "peak_rss_mb",
    "db_mb",
    "models",
    "jobs",
    "time_scale",
    "wall_s",
    "exit_code",
    "limits",
    "seed",
)


@functools.cache
def load_bench() -> ModuleType:
    """bench/run.py as a module (bench/ is scripts, not a package: they import each other
    as a script does, from their folder)."""
    if str(ROOT / "bench") not in sys.path:
        sys.path.insert(0, str(ROOT / "bench"))
    spec = importlib.util.spec_from_file_location("bench_run", ROOT / "bench" / "run.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def job(model: str, kind: str, created: float, ends: float | None, detected: float | None) -> dict:
    return {
        "id": f"{model}-{kind}",
        "type": kind,
        "model_id": model,
        "created_at": created,
        "ends_at": ends,
        "outcome": None if ends is None else "COMPLETED",
        "detected_at": detected,
    }


def stats(now: float, total: int, routes: dict[str, int]) -> dict[str, Any]:
    return {"now": now, "requests_total": total, "requests_by_route": routes}


def test_figures_follow_the_documented_formulas() -> None:
    """Makespan, both lower bounds, status requests per job and p95 latency, by hand."""
    bench = load_bench()
    jobs = [
        job("old", "TRAINING", 10.0, 500.0, 501.0),  # an earlier night's job: left out
        job("a", "TRAINING", 1000.0, 1600.0, 1606.0),
        job("a", "EVALUATION", 1610.0, 1660.0, 1665.0),
        job("b", "TRAINING", 1000.0, 1300.0, 1330.0),
        job("c", "TRAINING", 1002.0, 1302.0, None),
    ]
    poll = "GET /modelops/core/api/jobs/{job_id}"
    before = stats(900.0, 40, {poll: 30})
    after = stats(2000.0, 100, {poll: 60, "GET /modelops/core/api/jobs": 2, "POST x": 10})
    limits = {"train": 1, "evaluate": 1, "deploy": 1, "retire": 1}
    figures = bench.night_figures(jobs, before, after, 999.0, limits)
    assert figures["jobs"] == 4
    assert figures["makespan_s"] == 1660.0 - 999.0
    # One training slot: 600 + 300 + 300 s of training in a row beats model a's 650 s.
    assert figures["lower_bound_s"] == 1200.0
    assert figures["makespan_ratio"] == pytest.approx(661.0 / 1200.0)
    assert figures["status_requests_per_job"] == 32 / 4
    assert figures["requests_total"] == 60
    assert figures["jobs_undetected"] == 1
    # Latencies 1%, 10%, 10%: the 95th percentile lies between the two 10% values.
    assert figures["detection_latency_p95_pct"] == pytest.approx(10.0)
    wide = bench.night_figures(jobs, before, after, 999.0, dict.fromkeys(limits, 10))
    assert wide["lower_bound_s"] == 650.0  # now model a's own jobs bound the night


def test_figures_leave_out_scoring_jobs_and_count_stuck_ones_unfinished() -> None:
    """A deployment's SCORING job is not the client's; a stuck job (no end) is unfinished."""
    bench = load_bench()
    jobs = [
        job("a", "TRAINING", 1000.0, 1600.0, 1606.0),
        job("a", "SCORING", 1600.0, 9000.0, None),
        job("b", "TRAINING", 1000.0, None, None),
    ]
    before, after = stats(900.0, 0, {}), stats(2000.0, 10, {})
    limits = {"train": 1, "evaluate": 1, "deploy": 1, "retire": 1}
    figures = bench.night_figures(jobs, before, after, 999.0, limits)
    assert figures["jobs"] == 2
    assert figures["jobs_by_type"]["TRAINING"] == 2
    assert figures["jobs_unfinished"] == 1
    assert figures["lower_bound_s"] == 600.0
    assert figures["last_job_end_at"] == 1600.0


def test_emulator_flags_pass_through_to_both_emulators(tmp_path: Path) -> None:
    """--sim-arg is repeatable and reaches the `fleet sim` command line as given."""
    bench = load_bench()
    argv = ["--models", "5", "--json", "x", "--sim-arg=--profile=optimistic"]
    args = bench.parse_args([*argv, "--sim-arg=--no-job-history"])
    assert args.sim_arg == ["--profile=optimistic", "--no-job-history"]
    emulator = bench.Emulator(tmp_path, args, 60.0, "sim")
    assert emulator._command[-2:] == ["--profile=optimistic", "--no-job-history"]
    assert bench.parse_args(["--models", "5", "--json", "x"]).sim_arg == []


def test_default_limits_scale_with_the_fleet() -> None:
    """Trainings at once are a tenth of the models, at most 250; the rest follow from it."""
    bench = load_bench()
    small = bench.default_limits(bench.parse_args(["--models", "50", "--json", "x"]))
    assert small == {
        "train": 5,
        "evaluate": 2,
        "approve": 2,
        "deploy": 1,
        "retire": 1,
        "concurrency": 10,
    }
    big = bench.default_limits(bench.parse_args(["--models", "10000", "--json", "x"]))
    assert big["train"] == 250
    assert big["concurrency"] == 500


@pytest.mark.e2e
@pytest.mark.timeout(180)  # ~10 s alone; the margin is for a machine busy with other tests
def test_bench_runs_fleet_two_nights_and_the_baseline(tmp_path: Path) -> None:
    """A small benchmark run writes every figure for fleet, its first night and the baseline."""
    out = tmp_path / "bench.json"
    limits = ("--train-limit", "50", "--evaluate-limit", "50")
    limits += ("--deploy-limit", "50", "--retire-limit", "50")
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "run.py"),
            *("--models", str(MODELS), "--nights", "2", "--json", str(out)),
            # A poll every 200 simulated seconds is one every 0.1 real s, which keeps the two
            # processes off a busy machine's cores; at 2000x a night takes about 2 real seconds.
            *("--time-scale", "2000", "--poll-interval", "200", *limits),
            *("--workdir", str(tmp_path / "work")),
            # The default emulator, said out loud: the flag reaches it and is recorded.
            "--sim-arg=--profile=default",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=170,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert "makespan_ratio" in done.stdout  # the side-by-side table
    (first,) = result["nights"]
    sides = {"fleet": result, "first night": first, "baseline": result["baseline"]}
    for name, side in sides.items():
        missing = [f for f in FIELDS if f not in side]
        assert not missing, (name, missing)
        assert side["exit_code"] == 0, name
        assert side["models"] == MODELS
        assert 2 * MODELS <= side["jobs"] <= 4 * MODELS, name
        assert side["makespan_ratio"] >= 1.0, name
        assert side["makespan_s"] >= side["lower_bound_s"] > 0, name
        assert side["status_requests_per_job"] >= 1.0, name
        assert side["requests_total"] > side["jobs"], name
        assert side["detection_latency_p95_pct"] >= 0.0, name
        assert side["jobs_undetected"] == 0, name
        assert side["fleet_cpu_s"] > 0, name
        assert side["fleet_cpu_ms_per_model"] == pytest.approx(
            side["fleet_cpu_s"] * 1000 / MODELS, rel=1e-2
        )
        assert side["peak_rss_mb"] > 10, name
        assert side["wall_s"] > 0, name
    assert result["db_mb"] > 0
    assert result["baseline"]["db_mb"] == 0
    assert result["baseline"]["limits"]["train"] == 32
    assert result["limits"]["train"] == 50
    assert result["run_id"] == "night-2"
    assert first["run_id"] == "night-1"
    # The same seed: the baseline's night is fleet's first night, job for job.
    assert result["baseline"]["jobs_by_type"] == first["jobs_by_type"]
    assert result["machine"]["nproc"] >= 1
    assert result["date"]
    assert result["sim_args"] == ["--profile=default"]


@functools.cache
def load_script(name: str) -> ModuleType:
    """bench/<name>.py as a module; it imports bench/run.py as `run`, as when run as a script."""
    bench = str(ROOT / "bench")
    sys.path.insert(0, bench)
    try:
        spec = importlib.util.spec_from_file_location(
            f"bench_{name}", ROOT / "bench" / f"{name}.py"
        )
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(bench)
    return module


def load_torture() -> ModuleType:
    return load_script("torture")


def test_torture_kill_plan_mixes_restart_early_and_spread_kills() -> None:
    """15 kills: 3 within 50 ms, 5 within the first second, 7 at rising shares of the night."""
    torture = load_torture()
    plan = torture.kill_plan(1, 15, 300)
    assert plan == torture.kill_plan(1, 15, 300)  # seeded
    assert plan != torture.kill_plan(2, 15, 300)
    kinds = [kill.kind for kill in plan]
    assert (kinds.count("restart"), kinds.count("early"), kinds.count("spread")) == (3, 5, 7)
    assert all(k.after_s <= 0.05 and k.at_jobs is None for k in plan if k.kind == "restart")
    assert all(k.after_s <= 1.0 and k.at_jobs is None for k in plan if k.kind == "early")
    shares = [k.at_jobs for k in plan if k.kind == "spread"]
    assert shares == sorted(shares)
    assert all(0 < s < 2 * 300 for s in shares)  # before a night can end by itself
    assert [k.kind for k in torture.kill_plan(1, 3, 20)].count("restart") == 1


def _recorded(torture: ModuleType, *attempts: tuple[int, str | None, str]) -> Any:
    last = attempts[-1][1] if attempts else None
    failed = [job for _, job, outcome in attempts[:-1] if outcome == "failed" and job]
    state = "succeeded" if attempts else "pending"
    return torture.Recorded(state, last, list(attempts), failed)


def _server_job(job_id: str, model: str, kind: str, outcome: str = "COMPLETED") -> dict:
    return {**job(model, kind, 0.0, 1.0, 1.0), "id": job_id, "outcome": outcome}


def test_torture_audit_counts_a_second_job_without_a_retry_as_a_duplicate() -> None:
    """Server jobs beyond 1 + the recorded ERROR retries are duplicates, named by model/stage."""
    torture = load_torture()
    names = {"m1": "store-0001", "m2": "store-0002"}
    stages = {
        ("m1", "train"): _recorded(torture, (1, "j1", "failed"), (2, "j2", "succeeded")),
        ("m2", "train"): _recorded(torture, (1, "j3", "succeeded")),
        ("m2", "evaluate"): _recorded(torture),
    }
    outcomes = {"store-0001": "succeeded", "store-0002": "succeeded"}
    server = [
        _server_job("j1", "m1", "TRAINING", "ERROR"),
        _server_job("j2", "m1", "TRAINING"),
        _server_job("j3", "m2", "TRAINING"),
        _server_job("j4", "m2", "TRAINING"),  # submitted twice
        _server_job("j5", "m2", "EVALUATION"),  # a stage fleet never submitted
    ]
    found = torture.audit(names, stages, outcomes, server)
    assert found["duplicates"] == 2
    assert found["retries_by_stage"]["train"] == 1
    assert found["stages_submitted"] == 2
    assert found["jobs_by_type"] == {"TRAINING": 4, "EVALUATION": 1}
    evaluate, train = found["findings"]  # by model, then stage
    assert train.startswith("duplicate: store-0002 train: 2 TRAINING jobs on the server")
    assert train.endswith("not in fleet's records: j4")
    assert evaluate.startswith("duplicate: store-0002 evaluate: 1 EVALUATION jobs")
    clean = [j for j in server if j["id"] not in {"j4", "j5"}]
    assert torture.audit(names, stages, outcomes, clean)["findings"] == []


def test_torture_audit_finds_unfinished_models_and_foreign_jobs() -> None:
    """A model not finished, a stage left in flight and another model's job are findings."""
    torture = load_torture()
    names = {"m1": "store-0001"}
    stages = {("m1", "train"): torture.Recorded("submitted", "j9", [(1, "j9", "submitted")], [])}
    server = [_server_job("j9", "m2", "TRAINING", outcome=None)]  # type: ignore[arg-type]
    findings = torture.audit(names, stages, {"store-0001": "running"}, server)["findings"]
    assert "1 models not finished: store-0001" in findings
    assert "store-0001 train: left submitted" in findings
    assert any("the server's TRAINING of model m2" in f for f in findings)
    assert "1 jobs still running on the server" in findings


@pytest.mark.e2e
@pytest.mark.timeout(150)  # ~15 s alone; the margin is for a machine busy with other tests
def test_torture_smoke_three_kills_into_a_faulty_night(tmp_path: Path) -> None:
    """20 models, lost POST answers, 429s and job errors, 3 SIGKILLs: all finish, no duplicate."""
    out = tmp_path / "torture.json"
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "torture.py"),
            *("--models", "20", "--kills", "3", "--seeds", "7", "--json", str(out)),
            # 1000x with a poll every 100 simulated seconds: a night in a few real seconds.
            *("--time-scale", "1000", "--poll-interval", "100", "--limit", "20"),
            *("--job-error-rate", "0.05", "--timeout", "100"),
            # Faults on POSTs only: the answers whose loss could submit a job twice.
            "--sim-arg=--fault-methods=POST",
            *("--workdir", str(tmp_path / "work")),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=140,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (row,) = json.loads(out.read_text())["rows"]
    assert row["kills"] == 3
    assert row["restarts"] == 3
    assert row["finished"] == row["models"] == 20
    assert row["duplicates"] == 0
    assert row["hangs"] == 0
    assert row["jobs_by_type"]["TRAINING"] == 20 + row["retries_by_stage"]["train"]
    retries = sum(row["retries_by_stage"].values())
    assert sum(row["jobs_by_type"].values()) == row["stages_submitted"] + retries
    assert "| 7 | 3 (1/1/1) |" in done.stdout


def test_world_bench_measures_both_profiles_on_a_checked_world(tmp_path: Path) -> None:
    """bench/world.py times each phase per server profile and writes them with the machine."""
    world = load_script("world")
    out = tmp_path / "world.json"
    assert world.main(["--models", "100", "--rounds", "2", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    default, optimistic = result["rows"]
    assert (default["profile"], optimistic["profile"]) == ("default", "optimistic")
    assert (default["job_index"], optimistic["job_index"]) == (False, True)
    for row in result["rows"]:
        assert row["models"] == 100
        assert row["jobs"] == 200
        assert row["history_jobs"] >= 100
        assert row["jobs_read"] > 0
        phases = (row["build_s"], row["train_s"], row["read_s"])
        assert min(phases) >= 0
        assert row["total_s"] == pytest.approx(sum(phases), abs=0.01)
    assert optimistic["jobs_read"] > default["jobs_read"]  # the index's pages are read too
    assert result["machine"]["nproc"] >= 1
    assert result["date"]


def test_world_bench_refuses_to_report_on_a_wrong_world() -> None:
    """A world whose counts are not the ones asked for is an error, not a figure."""
    world = load_script("world")
    built = world.World(world.SimSettings(models=3), world.ManualClock())
    stats = {"jobs_total": 5, "running_jobs": 1, "max_jobs_per_model_and_type": 2}
    with pytest.raises(world.WrongWorld) as caught:
        world.check(built, stats, models=3, rounds=2)
    assert str(caught.value) == (
        "5 jobs submitted, not 6; 1 jobs still running; "
        "the last model has 0 trained versions, not 2"
    )


def load_schedules() -> ModuleType:
    load_bench()  # puts bench/ on sys.path
    return importlib.import_module("schedules")


def test_zero_overhead_schedules_of_known_chains() -> None:
    """Three models, two slots: the orders differ exactly where the textbook says."""
    s = load_schedules()
    jobs = [
        job("a", "TRAINING", 0, 10, None),
        job("a", "EVALUATION", 10, 12, None),
        job("b", "TRAINING", 0, 10, None),
        job("c", "TRAINING", 0, 30, None),
        job("c", "EVALUATION", 30, 31, None),
    ]
    chains = s.chains(jobs, ["a", "b", "c"])
    assert chains == [[10, 2], [10], [30, 1]]
    assert s.lower_bound(chains, 2) == 31  # c's chain; 63 s of work / 2 slots is less
    # A slot per model, list order: a and b first, c after b at 10: 41.
    assert s.list_order_models(chains, 2) == 41
    # Airflow's queue: a and b train, then c (ready since 0) before a's evaluation: 41.
    assert s.list_order_jobs(chains, 2) == 41
    # Longest first: c and one 10 s training at once: 31.
    assert s.longest_first(chains, 2) == 31
    plans = s.schedules(jobs, ["a", "b", "c"], 2)
    assert plans["longest_first_s"] == 31
    assert plans["capacity"] == 2
