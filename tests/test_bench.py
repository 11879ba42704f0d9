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
    """bench/run.py as a module (bench/ is scripts, not a package)."""
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
@pytest.mark.timeout(180)  # ~20 s alone; the margin is for a machine busy with other tests
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
            # Polls every 50 simulated seconds keep the two processes off a busy machine's
            # cores; at 500x a night takes about 4 real seconds.
            *("--time-scale", "500", "--poll-interval", "50", *limits),
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
