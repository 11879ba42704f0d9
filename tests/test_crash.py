"""Crash-proof runs, end to end: SIGKILL at random moments, signals, a second process, storms.

`fleet sim` runs in its own process on loopback and `fleet run` is killed and started again
around it; the emulator's `max_jobs_per_model_and_type` says whether anything was submitted
twice. Tests react to the lines fleet prints (its JSON events), never to the clock. What only
reads the state file afterwards (`fleet status`, a refused `--resume`) runs in-process.
"""

from __future__ import annotations

import json
import random
import signal
import sqlite3
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from cli_support import (
    TOKEN,
    emulator,
    events_until,
    fleet,
    kill,
    run_args,
    run_env,
    sim_stats,
    start,
)

if TYPE_CHECKING:
    from conftest import FleetHere

pytestmark = pytest.mark.e2e


def _integrity(db: Path) -> str:
    conn = sqlite3.connect(db)
    try:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        conn.close()


def test_torture_random_sigkills_never_submit_twice(tmp_path: Path) -> None:
    """Killed with SIGKILL six times at random moments, the run still ends with one job each."""
    rng = random.Random(2026)
    kills = 0
    with emulator(tmp_path, "--models", "150", "--time-scale", "1500") as url:
        for _ in range(6):
            proc = start(
                run_args(tmp_path, "night"),
                tmp_path,
                url,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
            )
            # Any transition is a moment: intent written, job recorded, poll, success.
            if events_until(proc, "fleet.stage.submitting", rng.randint(5, 60)) == 0:
                proc.wait(timeout=60)
                break
            kill(proc)
            kills += 1
        done = fleet(*run_args(tmp_path, "night"), cwd=tmp_path, env=run_env(url))
        stats = sim_stats(url)
    assert kills == 6
    assert done.returncode == 0, done.stderr
    assert "150 of 150 models succeeded" in done.stderr
    assert stats["max_jobs_per_model_and_type"] == 1
    assert stats["jobs_by_type"] == {
        "TRAINING": 150,
        "EVALUATION": 150,
        "DEPLOYMENT": 150,
        "RETIREMENT": 150,
    }
    assert _integrity(tmp_path / "fleet.db") == "ok"


def test_sigkill_after_the_server_applied_a_post_before_its_answer(
    tmp_path: Path, fleet_here: FleetHere
) -> None:
    """The POST is applied, fleet dies before the answer: the restart adopts, never resends."""
    with emulator(
        tmp_path,
        "--models", "3", "--time-scale", "5000",
        "--delay-after-rate", "1", "--delay-after-s", "1", "--fault-methods", "POST",
    ) as url:  # fmt: skip
        proc = start(
            run_args(tmp_path, "n"),
            tmp_path,
            url,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert events_until(proc, "fleet.stage.submitting", 1) == 1
        # The intent is committed; kill once the server has applied the POST (its answer is
        # held back for 1 s, so fleet cannot have recorded the job id yet).
        while sim_stats(url)["jobs_total"] == 0:
            assert proc.poll() is None
        kill(proc)
        before = json.loads(fleet_here("status", "n", "--json", cwd=tmp_path).out)
        states = {m["state"] for m in before["models"] if m["stage"] == "train"}
        assert "submitting" in states
        done = fleet(*run_args(tmp_path, "n"), cwd=tmp_path, env=run_env(url))
        stats = sim_stats(url)
    assert done.returncode == 0, done.stderr
    assert stats["max_jobs_per_model_and_type"] == 1
    assert stats["jobs_by_type"]["TRAINING"] == 3


def test_sigterm_drains_within_the_grace_period_then_resumes(
    tmp_path: Path, fleet_here: FleetHere
) -> None:
    """SIGTERM: nothing new is submitted, exit 143 well within the grace period; resume works."""
    with emulator(tmp_path, "--models", "30", "--time-scale", "3000") as url:
        proc = start(
            [*run_args(tmp_path, "n"), "--grace-period", "20"],
            tmp_path,
            url,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert events_until(proc, "fleet.stage.submitted", 5) == 5
        jobs_at_signal = sim_stats(url)["jobs_total"]
        proc.send_signal(signal.SIGTERM)
        # A bound on a hang, not a timing: how soon it exits is the grace deadline's test.
        _, err = proc.communicate(timeout=60)
        jobs_after = sim_stats(url)["jobs_total"]
        assert proc.returncode == 143, err
        assert "Traceback" not in err
        # Only submissions already on the wire when the signal came may have landed.
        assert isinstance(jobs_at_signal, int)
        assert isinstance(jobs_after, int)
        assert jobs_after - jobs_at_signal <= 30
        status = json.loads(fleet_here("status", "n", "--json", cwd=tmp_path).out)
        assert status["status"] == "interrupted"
        again = fleet(*run_args(tmp_path, "n"), cwd=tmp_path, env=run_env(url))
        stats = sim_stats(url)
    assert again.returncode == 0, again.stderr
    assert stats["max_jobs_per_model_and_type"] == 1


def test_a_second_run_on_the_same_state_file_is_refused(tmp_path: Path) -> None:
    """While one fleet drives fleet.db, another exits 4 naming the holder's pid and host."""
    with emulator(tmp_path, "--models", "20", "--time-scale", "60") as url:
        first = start(
            run_args(tmp_path, "n"), tmp_path, url, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        assert events_until(first, "fleet.run.started", 1) == 1
        second = fleet(*run_args(tmp_path, "other"), cwd=tmp_path, env=run_env(url))
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=30)
    assert second.returncode == 4, second.stderr
    assert f"pid {first.pid}" in second.stderr
    assert len(second.stderr.strip().splitlines()) == 1


def test_fault_storm_finishes_every_model_that_can_finish(
    tmp_path: Path, fleet_here: FleetHere
) -> None:
    """500s, 503s, 429s, dropped connections and ERROR jobs: no duplicates, exit 1, all ended."""
    args = [
        "--models", "60", "--time-scale", "3000", "--seed", "11",
        "--http-500-rate", "0.02", "--http-503-rate", "0.01", "--http-429-rate", "0.01",
        "--drop-rate", "0.03", "--job-error-rate", "0.04",
    ]  # fmt: skip
    with emulator(tmp_path, *args) as url:
        done = fleet(*run_args(tmp_path, "storm"), cwd=tmp_path, env=run_env(url), timeout=300)
        stats = sim_stats(url)
    status = json.loads(fleet_here("status", "storm", "--json", cwd=tmp_path).out)
    outcomes = [m["outcome"] for m in status["models"]]
    failed = [m for m in status["models"] if m["outcome"] == "failed"]
    assert done.returncode == 1, done.stderr
    assert set(outcomes) == {"succeeded", "failed"}
    assert all("ended ERROR" in (m["error"] or "") for m in failed)
    assert stats["max_jobs_per_model_and_type"] == 1
    faults = stats["faults"]
    assert isinstance(faults, dict)
    assert min(faults["http_500"], faults["http_503"], faults["http_429"], faults["drop"]) > 0


def test_an_outage_past_its_budget_stops_with_exit_3_and_resumes(
    tmp_path: Path, fleet_here: FleetHere
) -> None:
    """The server vanishes mid-run: fleet probes, gives up after outage_budget, state resumable."""
    with emulator(tmp_path, "--models", "10", "--time-scale", "100") as url:
        proc = start(
            [*run_args(tmp_path, "n"), "--api.outage-budget", "2"],
            tmp_path,
            url,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert events_until(proc, "fleet.stage.submitted", 3) == 3
    # The emulator is gone now (its context ended): every request fails to connect.
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 3, err
    assert "budget" in err
    with pytest.raises(httpx.ConnectError):
        httpx.get(url)
    status = json.loads(fleet_here("status", "n", "--json", cwd=tmp_path).out)
    assert status["status"] == "aborted"
    assert TOKEN not in err


def test_retry_failed_resume_and_the_failure_policy_from_the_command_line(
    tmp_path: Path, fleet_here: FleetHere
) -> None:
    """--max-failures halts with exit 1; --retry-failed reruns failures; --resume needs one."""
    with emulator(
        tmp_path, "--models", "40", "--time-scale", "5000", "--job-error-rate", "0.2", "--seed", "9"
    ) as url:
        halted = fleet(
            *run_args(tmp_path, "n"), "--max-failures", "0", "--concurrency", "2",
            cwd=tmp_path, env=run_env(url),
        )  # fmt: skip
        assert halted.returncode == 1, halted.stderr
        assert "stopped admitting models: 1 models failed" in halted.stderr
        first = fleet(*run_args(tmp_path, "n"), cwd=tmp_path, env=run_env(url))
        assert first.returncode == 1, first.stderr
        failed_before = json.loads(fleet_here("status", "n", "--json", cwd=tmp_path).out)
        retried = fleet(
            "run", "--retry-failed", "n", "--config", str(tmp_path / "fleet.toml"),
            "--poll-interval", "0.05", cwd=tmp_path, env=run_env(url),
        )  # fmt: skip
        after = json.loads(fleet_here("status", "n", "--json", cwd=tmp_path).out)
        nothing = fleet_here(
            "run", "--resume", "--config", str(tmp_path / "fleet.toml"),
            cwd=tmp_path, env=run_env(url),
        )  # fmt: skip
        stats = sim_stats(url)
    count = lambda doc: sum(m["outcome"] == "failed" for m in doc["models"])  # noqa: E731
    assert retried.returncode in {0, 1}, retried.stderr
    assert count(after) < count(failed_before)
    assert any(len(m["attempts"]) > 1 for m in after["models"])
    assert nothing.code == 2
    assert "no unfinished run" in nothing.err
    assert stats["max_jobs_per_model_and_type"] <= 2  # a retried stage is a second attempt
