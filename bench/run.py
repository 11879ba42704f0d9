"""The benchmark: fleet against the seed pattern it replaces, on the ModelOps emulator.

    python bench/run.py --models 1000 --json before.json

Starts `fleet sim` as its own process, runs `fleet run` against it `--nights` times in a row
with one state file (later nights can use the history of earlier ones), then runs the
seed-pattern baseline (bench/baseline.py) against a fresh emulator with the same seed. Each
side's figures come from the emulator's own records (`/_sim/jobs`, `/_sim/stats`) in simulated
seconds, and from the client process's rusage. BENCHMARKS.md defines every figure.

Both emulators answer as `fleet sim` does by default (Spring Data REST's answers where nothing
real was recorded); `--sim-arg` passes flags on to both, e.g. `--sim-arg=--profile=optimistic`
for a server where every unverified optimisation works. The figures count the lifecycle jobs
the clients submitted: the scoring jobs an "@once" deployment starts are left out.

Run it with the project's venv python. The fleet it measures is the one `python -m fleet`
imports: set PYTHONPATH to measure another source tree.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

import httpx
from schedules import schedules

TOKEN = "bench-token-7c1e"
PROJECT_ID = "5f1a3c9e-8d2b-4e7a-9c61-0f2d4b8a7e13"
BENCH = Path(__file__).resolve().parent
STAGES = {
    "TRAINING": "train",
    "EVALUATION": "evaluate",
    "DEPLOYMENT": "deploy",
    "RETIREMENT": "retire",
}
STATUS_ROUTES = (
    "GET /modelops/core/api/jobs/{job_id}",
    "GET /modelops/core/api/jobs",
    "GET /modelops/core/api/jobs/search/findByStatusIn",
)
AIRFLOW_PARALLELISM = 32
START_TIMEOUT_S = 60.0
_ANNOUNCED = "ModelOps emulator on "


class BenchError(Exception):
    """The benchmark could not run (the emulator did not start, a process hung)."""


@dataclass(frozen=True)
class Usage:
    exit_code: int
    wall_s: float
    cpu_s: float
    peak_rss_mb: float


# -- processes -----------------------------------------------------------------------------


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    return env | {"FLEET_API__TOKEN": TOKEN}


def wait_measured(proc: subprocess.Popen[bytes], timeout_s: float) -> Usage:
    """Wait for the child and return its own rusage (user+system CPU, peak RSS)."""
    started = time.monotonic()
    deadline = started + timeout_s
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            proc.kill()
            pid, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            raise BenchError(f"{proc.args!r} did not finish within {timeout_s:.0f} s")
        time.sleep(0.05)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return Usage(
        exit_code=proc.returncode,
        wall_s=time.monotonic() - started,
        cpu_s=usage.ru_utime + usage.ru_stime,
        peak_rss_mb=usage.ru_maxrss / 1024,  # KiB on Linux
    )


def process_cpu_s(pid: int) -> float:
    """CPU seconds a running process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Emulator:
    """`fleet sim` on a free loopback port, as its own process."""

    def __init__(
        self, workdir: Path, args: argparse.Namespace, time_scale: float, name: str
    ) -> None:
        self.workdir = workdir
        self.models_csv = workdir / "models.csv"
        self._command = [
            *("--models", str(args.models), "--seed", str(args.seed)),
            *("--time-scale", str(time_scale), "--token", TOKEN),
            *("--models-csv", str(self.models_csv)),
            *args.sim_arg,
        ]
        self._log = workdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.root = ""

    def __enter__(self) -> Self:
        # Port 0: the emulator binds a free port itself and prints its URL, so two benchmarks
        # at once (tests under xdist) can never race for one port or reach each other's.
        with self._log.open("ab") as log:
            start = log.tell()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "fleet", "sim", "--port", "0", *self._command],
                cwd=self.workdir,
                env=child_env(),
                stdout=log,
                stderr=log,
            )
        self.root = self._announced_root(start)
        return self

    def _announced_root(self, start: int) -> str:
        """`http://127.0.0.1:PORT` from the emulator's "ModelOps emulator on URL" line."""
        assert self.proc is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline and self.proc.poll() is None:
            with self._log.open("rb") as log:
                log.seek(start)
                for line in log.read().decode(errors="replace").splitlines():
                    if _ANNOUNCED in line:
                        url = line.split(_ANNOUNCED, 1)[1].split()[0]
                        return url.removesuffix("/modelops/core")
            time.sleep(0.05)
        self.__exit__()
        raise BenchError(f"the emulator did not start; see {self._log}")

    @property
    def url(self) -> str:
        return f"{self.root}/modelops/core"

    def stats(self, since: float | None = None) -> dict[str, Any]:
        params = {} if since is None else {"since": repr(since)}
        answer: dict[str, Any] = httpx.get(
            f"{self.root}/_sim/stats", params=params, timeout=60
        ).json()
        return answer

    def jobs(self) -> list[dict[str, Any]]:
        answer: list[dict[str, Any]] = httpx.get(f"{self.root}/_sim/jobs", timeout=120).json()
        return answer

    def cpu_s(self) -> float:
        assert self.proc is not None
        return process_cpu_s(self.proc.pid)

    def __exit__(self, *_exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# -- figures -------------------------------------------------------------------------------


def night_figures(  # noqa: PLR0913 - one figure set, from the emulator's records and the run's bounds
    jobs: list[dict[str, Any]],
    before: dict[str, Any],
    after: dict[str, Any],
    first_request_at: float | None,
    limits: dict[str, int],
    *,
    capacity: int | None = None,
) -> dict[str, Any]:
    """The emulator's view of one night: the lifecycle jobs created from `before["now"]` on
    (scoring jobs are the server's, not the client's; a stuck job has no end). `capacity`:
    the cap on jobs at once, every stage together, if the client had one."""
    start = before["now"]
    night = [j for j in jobs if j["created_at"] >= start and j["type"] in STAGES]
    ended = [j for j in night if j["ends_at"] is not None]
    per_model: dict[str, float] = defaultdict(float)
    per_stage: dict[str, float] = defaultdict(float)
    for job in ended:
        duration = job["ends_at"] - job["created_at"]
        per_model[job["model_id"]] += duration
        per_stage[STAGES[job["type"]]] += duration
    lower_bound = max(
        max(per_model.values(), default=0.0),
        max((total / limits[stage] for stage, total in per_stage.items()), default=0.0),
        sum(per_stage.values()) / capacity if capacity else 0.0,
    )
    last_end = max((j["ends_at"] for j in ended), default=None)
    makespan = (
        last_end - first_request_at
        if last_end is not None and first_request_at is not None
        else None
    )
    model_done: dict[str, float] = {}
    for job in ended:
        model_done[job["model_id"]] = max(model_done.get(job["model_id"], 0.0), job["ends_at"])
    done_pct = (
        sorted((end - first_request_at) / makespan * 100 for end in model_done.values())
        if makespan and first_request_at is not None
        else []
    )
    routes_before, routes_after = before["requests_by_route"], after["requests_by_route"]
    status_requests = sum(
        routes_after.get(route, 0) - routes_before.get(route, 0) for route in STATUS_ROUTES
    )
    latencies: dict[str, list[float]] = defaultdict(list)
    for j in ended:
        if j["detected_at"] is not None:
            late = (j["detected_at"] - j["ends_at"]) / (j["ends_at"] - j["created_at"]) * 100
            latencies[j["type"]].append(late)
    return {
        "makespan_s": makespan,
        "lower_bound_s": lower_bound,
        "makespan_ratio": makespan / lower_bound if makespan and lower_bound else None,
        "status_requests_per_job": status_requests / len(night) if night else None,
        "requests_total": after["requests_total"] - before["requests_total"],
        "detection_latency_p95_pct": percentile([x for v in latencies.values() for x in v], 95),
        "detection_latency_p95_pct_by_type": {
            kind: percentile(latencies[kind], 95) for kind in STAGES if latencies[kind]
        },
        "jobs": len(night),
        "jobs_by_type": {kind: sum(1 for j in night if j["type"] == kind) for kind in STAGES},
        "jobs_unfinished": sum(1 for j in night if j["outcome"] is None),
        "jobs_undetected": sum(1 for j in night if j["detected_at"] is None),
        "first_model_done_pct": round(done_pct[0], 1) if done_pct else None,
        "median_model_done_pct": round(statistics.median(done_pct), 1) if done_pct else None,
        "first_request_at": first_request_at,
        "last_job_end_at": last_end,
        "requests_by_route": {
            route: count - routes_before.get(route, 0)
            for route, count in sorted(routes_after.items())
            if count - routes_before.get(route, 0)
        },
    }


def percentile(values: list[float], pct: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(pct) - 1]


def client_figures(usage: Usage, models: int, db_mb: float) -> dict[str, Any]:
    return {
        "fleet_cpu_s": round(usage.cpu_s, 3),
        "fleet_cpu_ms_per_model": round(usage.cpu_s * 1000 / models, 3),
        "peak_rss_mb": round(usage.peak_rss_mb, 1),
        "db_mb": round(db_mb, 3),
        "wall_s": round(usage.wall_s, 2),
        "exit_code": usage.exit_code,
    }


# -- the two sides -------------------------------------------------------------------------


def default_limits(args: argparse.Namespace) -> dict[str, int]:
    """`--unequal`: stage limits scaled to the fleet, trainings N/10 at once (at most 250),
    the short stages fewer, models in flight enough to keep every training slot busy (the
    figures of BENCHMARKS.md before issue 15: fleet given more capacity than the baseline)."""
    train = args.train_limit or min(max(args.models // 10, 1), 250)
    evaluate = args.evaluate_limit or max(train // 2, 1)
    deploy = args.deploy_limit or max(train // 4, 1)
    retire = args.retire_limit or max(train // 4, 1)
    concurrency = args.concurrency or 2 * train
    return {
        "train": train,
        "evaluate": evaluate,
        "approve": evaluate,
        "deploy": deploy,
        "retire": retire,
        "concurrency": concurrency,
    }


def fleet_settings(args: argparse.Namespace) -> dict[str, int]:
    """What fleet is given: by default only the job cap (`jobs`), the baseline's capacity,
    and whatever limit was set by hand; `--unequal` as `default_limits`."""
    if args.unequal:
        return default_limits(args)
    given = {
        "train": args.train_limit,
        "evaluate": args.evaluate_limit,
        "deploy": args.deploy_limit,
        "retire": args.retire_limit,
        "concurrency": args.concurrency,
    }
    return {"jobs": args.jobs} | {name: value for name, value in given.items() if value}


def bounds_of(settings: dict[str, int]) -> tuple[dict[str, int], int | None]:
    """The per-stage limits and the job cap a client ran under, for the lower bound."""
    jobs = settings.get("jobs")
    per_stage = {
        stage: settings.get(stage) or jobs or AIRFLOW_PARALLELISM
        for stage in (*STAGES.values(), "approve")
    }
    return per_stage, jobs


def fleet_config(
    workdir: Path, url: str, settings: dict[str, int], args: argparse.Namespace
) -> Path:
    top = "\n".join(
        f"{name} = {settings[name]}" for name in ("jobs", "concurrency") if name in settings
    )
    stage_limits = "\n".join(
        f"{stage} = {settings[stage]}"
        for stage in (*STAGES.values(), "approve")
        if stage in settings
    )
    config = workdir / "fleet.toml"
    config.write_text(
        f"""# Written by bench/run.py.
{top}
# fleet's default 5 s between polls, in simulated time.
poll_interval = {args.poll_interval / args.time_scale!r}
# The shortest gap between two looks at the server's jobs, in simulated time.
poll_floor = {args.poll_floor / args.time_scale!r}
progress_interval = 10.0
db = "{workdir / "fleet.db"}"
models_file = "{workdir / "models.csv"}"
log_level = "info"

[api]
url = "{url}"
project_id = "{PROJECT_ID}"

[limits]
{stage_limits}

[defaults]
approval_rule = "Accuracy >= {args.threshold}"
"""
    )
    return config


def list_order(models_csv: Path) -> list[str]:
    """The model ids in the order the emulator lists them (its models.csv)."""
    lines = models_csv.read_text().splitlines()[1:]
    return [line.split(",", 1)[0] for line in lines if line]


def night_of(
    sim: Emulator, before: dict[str, Any], settings: dict[str, int], capacity: int
) -> dict[str, Any]:
    """A night's figures and the zero-overhead schedules of its jobs at `capacity`."""
    after = sim.stats(since=before["now"])
    jobs = sim.jobs()
    per_stage, jobs_cap = bounds_of(settings)
    figures = night_figures(
        jobs, before, after, after["first_request_at"], per_stage, capacity=jobs_cap
    )
    night = [j for j in jobs if j["created_at"] >= before["now"] and j["type"] in STAGES]
    plans = schedules(night, list_order(sim.models_csv), capacity)
    makespan = figures["makespan_s"]
    return {
        **figures,
        "schedules": plans,
        "vs_longest_first": round(makespan / plans["longest_first_s"], 3)
        if makespan and plans["longest_first_s"]
        else None,
    }


def run_fleet(args: argparse.Namespace, workdir: Path) -> list[dict[str, Any]]:
    limits = fleet_settings(args)
    nights: list[dict[str, Any]] = []
    with Emulator(workdir, args, args.time_scale, "sim-fleet") as sim:
        config = fleet_config(workdir, sim.url, limits, args)
        for night in range(1, args.nights + 1):
            run_id = f"night-{night}"
            before = sim.stats()
            sim_cpu = sim.cpu_s()
            with (
                (workdir / f"{run_id}.log").open("wb") as log,
                (workdir / f"{run_id}.out").open("wb") as out,
            ):
                proc = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "fleet",
                        "run",
                        "--config",
                        str(config),
                        "--run-id",
                        run_id,
                        *args.fleet_arg,
                    ],
                    cwd=workdir,
                    env=child_env(),
                    stdout=out,
                    stderr=log,
                )
                usage = wait_measured(proc, args.timeout)
            figures = night_of(sim, before, limits, args.jobs)
            db_mb = (
                sum(p.stat().st_size for p in workdir.glob("fleet.db*") if p.name != "fleet.db-shm")
                / 1e6
            )
            outcomes = fleet_outcomes(workdir, run_id)
            nights.append(
                {
                    "run_id": run_id,
                    **figures,
                    **client_figures(usage, args.models, db_mb),
                    "emulator_cpu_s": round(sim.cpu_s() - sim_cpu, 2),
                    "outcomes": outcomes,
                    "ok": usage.exit_code == 0 and ok_outcomes(outcomes, args.models),
                    "models": args.models,
                    "time_scale": args.time_scale,
                    "limits": limits,
                    "capacity": "unequal" if args.unequal else f"{args.jobs} jobs at once",
                    "seed": args.seed,
                }
            )
            print(f"fleet {run_id}: {summary_line(nights[-1])}", file=sys.stderr)
    return nights


def model_outcomes(workdir: Path, run_id: str) -> dict[str, str]:
    """Each model's outcome in the run, by name, as `fleet status --json` tells it."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "fleet",
            "status",
            run_id,
            "--db",
            str(workdir / "fleet.db"),
            "--json",
        ],
        cwd=workdir,
        env=child_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        return {}
    return {model["name"]: model["outcome"] for model in json.loads(done.stdout)["models"]}


def fleet_outcomes(workdir: Path, run_id: str) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for outcome in model_outcomes(workdir, run_id).values():
        counts[outcome] += 1
    return dict(counts)


def ok_outcomes(outcomes: dict[str, int], models: int) -> bool:
    return outcomes.get("succeeded", 0) + outcomes.get("rejected", 0) == models


def run_baseline(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    time_scale = args.baseline_time_scale or args.time_scale
    parallelism = AIRFLOW_PARALLELISM if args.unequal else args.jobs
    limits = dict.fromkeys((*STAGES.values(), "approve", "concurrency"), parallelism)
    with Emulator(workdir, args, time_scale, "sim-baseline") as sim:
        before = sim.stats()
        sim_cpu = sim.cpu_s()
        summary_path = workdir / "baseline.json"
        with (workdir / "baseline.log").open("wb") as log:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    str(BENCH / "baseline.py"),
                    *("--url", sim.url, "--models-file", str(sim.models_csv)),
                    *("--time-scale", str(time_scale), "--poll-interval", str(args.poll_interval)),
                    *(
                        "--parallelism",
                        str(parallelism),
                        "--threshold",
                        str(args.threshold),
                    ),
                    *("--json", str(summary_path)),
                ],
                cwd=workdir,
                env=child_env(),
                stdout=log,
                stderr=log,
            )
            usage = wait_measured(proc, args.timeout)
        figures = night_of(sim, before, {"jobs": parallelism}, parallelism)
        summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
        outcomes = summary.get("outcomes", {})
        return {
            **figures,
            **client_figures(usage, args.models, 0.0),
            "emulator_cpu_s": round(sim.cpu_s() - sim_cpu, 2),
            "outcomes": outcomes,
            "failures": summary.get("failures", []),
            "ok": usage.exit_code == 0 and ok_outcomes(outcomes, args.models),
            "models": args.models,
            "time_scale": time_scale,
            "limits": limits,
            "capacity": f"{parallelism} models (so jobs) at once",
            "seed": args.seed,
        }


# -- report --------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def git_commit() -> str | None:
    done = subprocess.run(
        ["git", "-C", str(BENCH), "describe", "--always", "--dirty", "--abbrev=12"],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout.strip() or None if done.returncode == 0 else None


def fleet_source() -> str | None:
    """Where the measured `python -m fleet` comes from (PYTHONPATH can point elsewhere)."""
    done = subprocess.run(
        [sys.executable, "-c", "import fleet; print(fleet.__file__)"],
        env=child_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    return str(Path(done.stdout.strip()).parent) if done.returncode == 0 else None


ROWS = (
    ("makespan_s", "{:.0f}"),
    ("lower_bound_s", "{:.0f}"),
    ("makespan_ratio", "{:.3f}"),
    ("status_requests_per_job", "{:.2f}"),
    ("requests_total", "{:d}"),
    ("detection_latency_p95_pct", "{:.2f}"),
    ("jobs", "{:d}"),
    ("jobs_undetected", "{:d}"),
    ("fleet_cpu_s", "{:.2f}"),
    ("fleet_cpu_ms_per_model", "{:.2f}"),
    ("peak_rss_mb", "{:.1f}"),
    ("db_mb", "{:.2f}"),
    ("emulator_cpu_s", "{:.2f}"),
    ("time_scale", "{:g}"),
    ("wall_s", "{:.1f}"),
    ("exit_code", "{:d}"),
)


SCHEDULE_ROWS = (
    ("lower_bound_s", "lower bound"),
    ("list_order_models_s", "list order, a slot per model"),
    ("list_order_jobs_s", "list order, a slot per job"),
    ("longest_first_s", "longest first, a slot per job"),
)


def table(result: dict[str, Any]) -> str:
    """Each fleet night and the baseline side by side, then the zero-overhead schedules of
    each side's own jobs, then the ratios the issue's targets are stated in."""
    sides = [(f"fleet {n['run_id']}", n) for n in [*result["nights"], result]]
    if result.get("baseline"):
        sides.append(("baseline", result["baseline"]))
    width = max(14, *(len(name) for name, _ in sides))
    lines = [f"capacity: fleet {result.get('capacity')}"]
    if result.get("baseline"):
        lines[0] += f"; baseline {result['baseline'].get('capacity')}"
    lines.append(f"{'':30}" + "".join(f" {name:>{width}}" for name, _ in sides))
    for name, fmt in ROWS:
        cells = [side.get(name) for _, side in sides]
        text = ["-" if v is None else fmt.format(v) for v in cells]
        lines.append(f"{name:30}" + "".join(f" {t:>{width}}" for t in text))
    for name, fmt in (("first_model_done_pct", "{:.1f}"), ("median_model_done_pct", "{:.1f}")):
        text = ["-" if s.get(name) is None else fmt.format(s[name]) for _, s in sides]
        lines.append(f"{name:30}" + "".join(f" {t:>{width}}" for t in text))
    lines.append("zero-overhead schedules of the same jobs (simulated s):")
    for key, label in SCHEDULE_ROWS:
        text = [f"{s['schedules'][key]:.0f}" if s.get("schedules") else "-" for _, s in sides]
        lines.append(f"  {label:28}" + "".join(f" {t:>{width}}" for t in text))
    text = [
        "-" if s.get("vs_longest_first") is None else f"{s['vs_longest_first']:.3f}"
        for _, s in sides
    ]
    lines.append(f"{'makespan / longest first':30}" + "".join(f" {t:>{width}}" for t in text))
    baseline = result.get("baseline") or {}
    if baseline.get("makespan_s"):
        text = [
            f"{s['makespan_s'] / baseline['makespan_s']:.3f}" if s.get("makespan_s") else "-"
            for _, s in sides
        ]
        lines.append(f"{'makespan / baseline':30}" + "".join(f" {t:>{width}}" for t in text))
    return "\n".join(lines)


def summary_line(figures: dict[str, Any]) -> str:
    return ", ".join(
        f"{name} {fmt.format(figures[name])}"
        for name, fmt in ROWS[:6]
        if figures.get(name) is not None
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=int, required=True, help="models in the emulator")
    parser.add_argument("--json", type=Path, required=True, help="write the figures here")
    parser.add_argument("--seed", type=int, default=0, help="the emulator's seed")
    parser.add_argument("--time-scale", type=float, default=60.0, help="simulated s per real s")
    parser.add_argument(
        "--baseline-time-scale", type=float, help="the baseline's (default: --time-scale)"
    )
    parser.add_argument("--nights", type=int, default=2, help="fleet runs in a row, one state")
    parser.add_argument(
        "--jobs",
        type=int,
        default=AIRFLOW_PARALLELISM,
        help="the capacity both sides get: remote jobs at once (fleet's `jobs`, the "
        "baseline's models at once)",
    )
    parser.add_argument(
        "--unequal",
        action="store_true",
        help="the old comparison: fleet's stage limits scaled to N (trainings N/10), the "
        "baseline 32 (fleet gets more capacity; labelled so in the output)",
    )
    parser.add_argument("--train-limit", type=int, help="fleet's own limit (--unequal: N/10)")
    parser.add_argument("--evaluate-limit", type=int, help="(--unequal: train limit / 2)")
    parser.add_argument("--deploy-limit", type=int, help="(--unequal: train limit / 4)")
    parser.add_argument("--retire-limit", type=int, help="(--unequal: train limit / 4)")
    parser.add_argument(
        "--concurrency", type=int, help="fleet's models in flight (default: fleet's own)"
    )
    parser.add_argument(
        "--poll-interval", type=float, default=5.0, help="simulated s between polls, both sides"
    )
    parser.add_argument(
        "--poll-floor",
        type=float,
        default=0.5,
        help="fleet: simulated s at least between two looks at the server's jobs",
    )
    parser.add_argument("--threshold", type=float, default=0.7, help="approve Accuracy >= this")
    parser.add_argument("--no-baseline", action="store_true", help="measure fleet only")
    parser.add_argument(
        "--sim-arg",
        action="append",
        default=[],
        metavar="FLAG",
        help="a flag for both emulators, as --sim-arg=FLAG (repeatable), e.g. "
        "--sim-arg=--profile=optimistic",
    )
    parser.add_argument(
        "--fleet-arg",
        action="append",
        default=[],
        metavar="FLAG",
        help="a flag for `fleet run`, as --fleet-arg=FLAG (repeatable), e.g. "
        "--fleet-arg=--poll-mode=auto",
    )
    parser.add_argument("--timeout", type=float, default=3600.0, help="real s per client run")
    parser.add_argument("--workdir", type=Path, help="keep logs and state here (default: temp)")
    parser.add_argument("--label", help="a note stored with the figures (what was measured)")
    args = parser.parse_args(argv)
    if args.models < 1 or args.nights < 1 or args.jobs < 1:
        parser.error("--models, --nights and --jobs must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = datetime.now(UTC)
    with contextlib.ExitStack() as stack:
        root = args.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        (root / "fleet").mkdir(parents=True, exist_ok=True)
        nights = run_fleet(args, root / "fleet")
        baseline = None
        if not args.no_baseline:
            (root / "baseline").mkdir(exist_ok=True)
            baseline = run_baseline(args, root / "baseline")
            print(f"baseline: {summary_line(baseline)}", file=sys.stderr)
    result = {
        **nights[-1],
        "poll_interval_sim_s": args.poll_interval,
        "jobs_at_once": None if args.unequal else args.jobs,
        "sim_args": args.sim_arg,
        "fleet_args": args.fleet_arg,
        "nights": nights[:-1],
        "baseline": baseline,
        "machine": machine(),
        "date": started.isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "fleet_source": fleet_source(),
        "label": args.label,
        "command": " ".join(["python", "bench/run.py", *(argv or sys.argv[1:])]),
        "bench_rusage_children_cpu_s": round(
            resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime
            + resource.getrusage(resource.RUSAGE_CHILDREN).ru_stime,
            2,
        ),
    }
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    failed = [f"fleet {n['run_id']}" for n in nights if not n["ok"]]
    if baseline is not None and not baseline["ok"]:
        failed.append("baseline")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        sys.exit(2)
