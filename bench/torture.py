"""Kill-torture: `fleet run` SIGKILLed at random moments of a faulty night, then audited.

    python bench/torture.py --seeds 1,2,3 --models 300 --kills 15 --json torture.json

For each seed, one `fleet sim` (its own process, on loopback, seeded) answers with a share of
dropped answers (applied, then the connection cut), delayed answers, 429s and jobs ending in
ERROR. One `fleet run` command with its own state file and a fixed run id runs the night and is
SIGKILLed `--kills` times, restarted the same way each time: some kills within the first second
of a process, some within 50 ms of a restart, the others when the emulator has seen a seeded
share of the night's jobs (so they spread over the night however fast the machine is). After the
last kill the command runs to its end. Every fleet process is bounded by `--timeout`: one still
alive then is a hang, recorded and killed.

The audit compares the emulator's own records (`/_sim/jobs`) with fleet's state file and
`fleet status --json`:
- every model finished (succeeded, rejected or failed), and no stage is left in flight;
- for each model and job type, the jobs the emulator created are exactly 1 + the ERROR retries
  fleet recorded in its `attempts` table; an excess is a duplicate submission (printed by model
  and stage), a shortfall a job fleet recorded that the server never made;
- what fleet recorded agrees with the server: a succeeded stage's job COMPLETED, a job fleet
  names is that model's, a stage never submitted has no job, no job is left running.

Any finding (a hang, a process that exited with an unexpected code, fewer kills than asked, a
failed audit line) makes the exit code 1. Run it with the project's venv python; the fleet it
tortures is the one `python -m fleet` imports (set PYTHONPATH to torture another tree).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from run import (
    STAGES,
    BenchError,
    Emulator,
    child_env,
    default_limits,
    fleet_config,
    fleet_source,
    git_commit,
    model_outcomes,
)

RUN_ID = "torture-1"
JOB_STAGES = {stage: kind for kind, stage in STAGES.items()}  # train -> TRAINING, ...
FINISHED = frozenset({"succeeded", "rejected", "failed"})
IN_FLIGHT = frozenset({"submitting", "submitted", "running", "retrying"})
# A progress kill waits for this share of 2 jobs per model (train and evaluate): the least a
# night without failures creates, so the last kill comes before the night can end by itself.
PROGRESS_JOBS_PER_MODEL = 2
EXPECTED_EXITS = frozenset({0, 1})  # 1: some models failed, which job errors can cause
STATS_EVERY_S = 0.05
MAX_UNEXPECTED_EXITS_IN_A_ROW = 3


@dataclass(frozen=True, slots=True)
class Kill:
    """When to SIGKILL one fleet process: `after_s` real seconds after its start, or once the
    emulator has created `at_jobs` lifecycle jobs (then after a further `after_s`)."""

    kind: str  # "restart" (within 50 ms), "early" (within the first second), "spread"
    after_s: float
    at_jobs: int | None = None


@dataclass
class Night:
    """What happened to one seed's night, and what the audit found."""

    seed: int
    kills: Counter[str] = field(default_factory=Counter)
    starts: int = 0
    exits: list[int] = field(default_factory=list)  # codes of processes that ended themselves
    hangs: int = 0
    findings: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    audit: dict[str, Any] = field(default_factory=dict)


# -- the kill plan ---------------------------------------------------------------------------


def kill_plan(seed: int, kills: int, models: int) -> list[Kill]:
    """`kills` kills in a seeded order: a fifth within 50 ms of a restart, a third within the
    first second, the rest at seeded shares of the night's jobs, in increasing order."""
    rng = random.Random(f"torture:{seed}")  # a schedule, not a secret
    restart = max(1, kills // 5) if kills >= 3 else 0  # noqa: PLR2004
    early = max(1, kills // 3) if kills >= 2 else 0  # noqa: PLR2004
    spread = kills - restart - early
    kinds = ["restart"] * restart + ["early"] * early + ["spread"] * spread
    rng.shuffle(kinds)
    floor = PROGRESS_JOBS_PER_MODEL * models
    shares = iter(sorted(rng.uniform(0.03, 0.9) for _ in range(spread)))
    plan = []
    for kind in kinds:
        if kind == "restart":
            plan.append(Kill(kind, rng.uniform(0.0, 0.05)))
        elif kind == "early":
            plan.append(Kill(kind, rng.uniform(0.05, 1.0)))
        else:
            plan.append(
                Kill(kind, rng.uniform(0.0, 0.3), at_jobs=max(1, round(next(shares) * floor)))
            )
    return plan


# -- running fleet under kills ---------------------------------------------------------------


def start_fleet(command: list[str], workdir: Path, number: int) -> subprocess.Popen[bytes]:
    with (workdir / f"fleet-{number:02d}.log").open("wb") as log:
        return subprocess.Popen(command, cwd=workdir, env=child_env(), stdout=log, stderr=log)


def last_line(workdir: Path, number: int) -> str:
    lines = (workdir / f"fleet-{number:02d}.log").read_text(errors="replace").splitlines()
    return lines[-1][:300] if lines else "(no output)"


def sigkill(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait()  # reaped, so fleet's lease check sees the holder gone


def until_kill(
    proc: subprocess.Popen[bytes], kill: Kill, emulator: Emulator, timeout_s: float
) -> str:
    """Run one process until its kill: "killed", "exited", or "hang" past `timeout_s`."""
    started = time.monotonic()
    deadline = started + timeout_s
    if kill.at_jobs is not None:
        while emulator.stats()["jobs_total"] < kill.at_jobs:
            if proc.poll() is not None:
                return "exited"
            if time.monotonic() > deadline:
                sigkill(proc)
                return "hang"
            time.sleep(STATS_EVERY_S)
        started = time.monotonic()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=max(0.0, started + kill.after_s - time.monotonic()))
        return "exited"
    sigkill(proc)
    return "killed"


def to_the_end(proc: subprocess.Popen[bytes], timeout_s: float) -> str:
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        sigkill(proc)
        return "hang"
    return "exited"


def torture(night: Night, command: list[str], emulator: Emulator, args: argparse.Namespace) -> None:
    """Start, kill and restart the command along the plan; then let it run to its end."""
    _drive(night, command, emulator, args)
    for number in range(night.starts):
        log = (emulator.workdir / f"fleet-{number:02d}.log").read_text(errors="replace")
        if "Traceback (most recent call last)" in log:
            night.findings.append(f"fleet process {number + 1} printed a traceback")
    if night.kills.total() < args.kills:
        night.findings.append(
            f"only {night.kills.total()} of {args.kills} kills: the night ended before the rest"
        )


def _drive(night: Night, command: list[str], emulator: Emulator, args: argparse.Namespace) -> None:
    workdir = emulator.workdir
    unexpected_in_a_row = 0
    for kill in kill_plan(night.seed, args.kills, args.models):
        proc = start_fleet(command, workdir, night.starts)
        night.starts += 1
        what = until_kill(proc, kill, emulator, args.timeout)
        if what == "killed":
            night.kills[kill.kind] += 1
            unexpected_in_a_row = 0
            continue
        if what == "hang":
            night.hangs += 1
            night.findings.append(
                f"hang: fleet process {night.starts} still running after {args.timeout:.0f} s "
                f"(waiting for {kill.at_jobs} jobs on the server)"
            )
            continue
        assert proc.returncode is not None
        night.exits.append(proc.returncode)
        if proc.returncode in EXPECTED_EXITS:
            break  # the night ended before this kill: the shortfall is reported below
        night.findings.append(
            f"fleet process {night.starts} exited {proc.returncode}: "
            f"{last_line(workdir, night.starts - 1)}"
        )
        unexpected_in_a_row += 1
        if unexpected_in_a_row >= MAX_UNEXPECTED_EXITS_IN_A_ROW:
            return
    else:
        proc = start_fleet(command, workdir, night.starts)
        night.starts += 1
        if to_the_end(proc, args.timeout) == "hang":
            night.hangs += 1
            night.findings.append(
                f"hang: the last fleet process still running after {args.timeout:.0f} s"
            )
            return
        assert proc.returncode is not None
        night.exits.append(proc.returncode)
        if proc.returncode not in EXPECTED_EXITS:
            night.findings.append(
                f"the last fleet process exited {proc.returncode}: "
                f"{last_line(workdir, night.starts - 1)}"
            )


# -- the audit -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Recorded:
    """What fleet's state file says of one model's stage."""

    state: str
    job_id: str | None
    attempts: list[tuple[int, str | None, str]]  # (attempt, job_id, outcome) in order
    failed_jobs: list[str]

    @property
    def retries(self) -> int:
        """ERROR retries: attempts closed before a later one was opened."""
        return max(0, len(self.attempts) - 1)

    @property
    def expected_jobs(self) -> int:
        """1 per retry, plus 1 if the last attempt reached the server (a refused submission
        makes no job)."""
        if not self.attempts:
            return 0
        return self.retries + (1 if self.attempts[-1][1] is not None else 0)

    @property
    def job_ids(self) -> set[str]:
        ids = {job for _, job, _ in self.attempts if job is not None} | set(self.failed_jobs)
        return ids | ({self.job_id} if self.job_id else set())


def read_state(db: Path, run_id: str) -> tuple[dict[str, str], dict[tuple[str, str], Recorded]]:
    """Model names and each (model id, stage)'s record, read-only from fleet's state file."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        names = dict(
            conn.execute("SELECT model_id, name FROM run_models WHERE run_id = ?", (run_id,))
        )
        attempts: dict[tuple[str, str], list[tuple[int, str | None, str]]] = defaultdict(list)
        for model_id, stage, attempt, job_id, outcome in conn.execute(
            "SELECT model_id, stage, attempt, job_id, outcome FROM attempts"
            " WHERE run_id = ? ORDER BY model_id, stage, attempt",
            (run_id,),
        ):
            attempts[model_id, stage].append((attempt, job_id, outcome))
        stages = {
            (model_id, stage): Recorded(
                state,
                job_id,
                attempts[model_id, stage],
                list(json.loads(data).get("failed_jobs", [])),
            )
            for model_id, stage, state, job_id, data in conn.execute(
                "SELECT model_id, stage, state, job_id, data FROM stages WHERE run_id = ?",
                (run_id,),
            )
        }
    finally:
        conn.close()
    return names, stages


def audit(
    names: dict[str, str],
    stages: dict[tuple[str, str], Recorded],
    outcomes: dict[str, str],
    server_jobs: list[dict[str, Any]],
) -> dict[str, Any]:
    """fleet's records against the emulator's jobs; each disagreement is one finding line."""
    jobs = [j for j in server_jobs if j["type"] in STAGES]
    by_id = {j["id"]: j for j in jobs}
    on_server: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for job in jobs:
        on_server[job["model_id"], STAGES[job["type"]]].append(job)
    findings: list[str] = []
    duplicates = missing = 0
    unfinished = sorted(name for name in names.values() if outcomes.get(name) not in FINISHED)
    if unfinished:
        findings.append(f"{len(unfinished)} models not finished: {', '.join(unfinished[:10])}")
    for (model_id, stage), record in sorted(stages.items()):
        name = names.get(model_id, model_id)
        if record.state in IN_FLIGHT:
            findings.append(f"{name} {stage}: left {record.state}")
        if stage not in JOB_STAGES:
            continue
        server = on_server.pop((model_id, stage), [])
        want = record.expected_jobs
        if len(server) > want:
            duplicates += len(server) - want
            extra = sorted(j["id"] for j in server if j["id"] not in record.job_ids)
            findings.append(
                f"duplicate: {name} {stage}: {len(server)} {JOB_STAGES[stage]} jobs on the "
                f"server, fleet recorded {want} ({record.retries} ERROR retries); "
                f"not in fleet's records: {', '.join(extra) or '-'}"
            )
        elif len(server) < want:
            missing += want - len(server)
            findings.append(
                f"missing: {name} {stage}: fleet recorded {want} jobs, the server made "
                f"{len(server)}"
            )
        findings.extend(_disagreements(name, model_id, stage, record, by_id))
    for (model_id, stage), server in sorted(on_server.items()):
        duplicates += len(server)
        findings.append(
            f"duplicate: {names.get(model_id, model_id)} {stage}: {len(server)} jobs on the "
            "server for a stage fleet has no record of"
        )
    still_running = sorted(j["id"] for j in jobs if j["outcome"] is None)
    if still_running:
        findings.append(f"{len(still_running)} jobs still running on the server")
    return {
        "models": len(names),
        "finished": len(names) - len(unfinished),
        "outcomes": dict(Counter(outcomes.values())),
        "jobs_by_type": dict(Counter(j["type"] for j in jobs)),
        "retries_by_stage": {
            stage: sum(r.retries for (_, s), r in stages.items() if s == stage)
            for stage in JOB_STAGES
        },
        "server_errors_by_type": dict(Counter(j["type"] for j in jobs if j["outcome"] == "ERROR")),
        # Stages whose last attempt reached the server: with the retries, the jobs expected.
        "stages_submitted": sum(
            1 for (_, s), r in stages.items() if s in JOB_STAGES and r.expected_jobs > r.retries
        ),
        "duplicates": duplicates,
        "missing": missing,
        "findings": findings,
    }


def _disagreements(
    name: str, model_id: str, stage: str, record: Recorded, by_id: dict[str, dict[str, Any]]
) -> list[str]:
    """Where fleet's record of one stage contradicts the server's job."""
    found = []
    for job_id in sorted(record.job_ids):
        job = by_id.get(job_id)
        if job is None:
            found.append(f"{name} {stage}: fleet recorded job {job_id}, unknown to the server")
        elif job["model_id"] != model_id or STAGES[job["type"]] != stage:
            found.append(
                f"{name} {stage}: fleet recorded job {job_id}, the server's "
                f"{job['type']} of model {job['model_id']}"
            )
    current = by_id.get(record.job_id or "")
    if record.state == "succeeded" and current is not None and current["outcome"] != "COMPLETED":
        found.append(f"{name} {stage}: succeeded, but its job ended {current['outcome']}")
    if record.state in {"pending", "skipped"} and record.attempts:
        found.append(f"{name} {stage}: {record.state} with {len(record.attempts)} attempts")
    return found


# -- one seed --------------------------------------------------------------------------------


def sim_flags(args: argparse.Namespace) -> list[str]:
    return [
        f"--drop-rate={args.drop_rate}",
        f"--delay-after-rate={args.delay_after_rate}",
        f"--delay-after-s={args.delay_after_s}",
        f"--http-429-rate={args.http_429_rate}",
        f"--http-500-rate={args.http_500_rate}",
        f"--http-503-rate={args.http_503_rate}",
        f"--job-error-rate={args.job_error_rate}",
        *args.sim_arg,
    ]


def fleet_command(config: Path, args: argparse.Namespace) -> list[str]:
    tries = [f"--attempts.{stage}={args.attempts}" for stage in JOB_STAGES]
    return [
        *(sys.executable, "-m", "fleet", "run", "--config", str(config), "--run-id", RUN_ID),
        *tries,
        *args.fleet_arg,
    ]


def run_seed(seed: int, args: argparse.Namespace, workdir: Path) -> Night:
    workdir.mkdir(parents=True, exist_ok=True)
    limits = dict.fromkeys(("train_limit", "evaluate_limit", "deploy_limit", "retire_limit"))
    settings = argparse.Namespace(
        **(vars(args) | dict.fromkeys(limits, args.limit)),
        concurrency=None,
    )
    settings.seed, settings.sim_arg = seed, sim_flags(args)
    night = Night(seed)
    started = time.monotonic()
    with Emulator(workdir, settings, args.time_scale, "sim") as emulator:
        config = fleet_config(workdir, emulator.url, default_limits(settings), settings)
        torture(night, fleet_command(config, args), emulator, args)
        night.wall_s = time.monotonic() - started
        server_jobs = emulator.jobs()
    names, stages = read_state(workdir / "fleet.db", RUN_ID)
    night.audit = audit(names, stages, model_outcomes(workdir, RUN_ID), server_jobs)
    night.findings.extend(night.audit["findings"])
    return night


# -- report ----------------------------------------------------------------------------------


def summary(night: Night) -> dict[str, Any]:
    figures = night.audit
    return {
        "seed": night.seed,
        "kills": night.kills.total(),
        "kills_by_kind": dict(night.kills),
        "restarts": max(0, night.starts - 1),
        "wall_s": round(night.wall_s, 1),
        "models": figures.get("models"),
        "finished": figures.get("finished"),
        "outcomes": figures.get("outcomes"),
        "jobs_by_type": figures.get("jobs_by_type"),
        "server_errors_by_type": figures.get("server_errors_by_type"),
        "retries_by_stage": figures.get("retries_by_stage"),
        "stages_submitted": figures.get("stages_submitted"),
        "duplicates": figures.get("duplicates"),
        "missing": figures.get("missing"),
        "hangs": night.hangs,
        "exits": night.exits,
        "findings": night.findings,
        "ok": not night.findings,
    }


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        (
            "| seed | kills (restart/early/spread) | restarts | wall s | finished | jobs created "
            "T/E/D/R | stages submitted | ERROR retries | duplicates | hangs | result |"
        ),
        "|---:|---|---:|---:|---|---|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        kinds = row["kills_by_kind"]
        jobs = row["jobs_by_type"] or {}
        result = "ok" if row["ok"] else f"{len(row['findings'])} findings"
        lines.append(
            f"| {row['seed']} | {row['kills']} ({kinds.get('restart', 0)}/"
            f"{kinds.get('early', 0)}/{kinds.get('spread', 0)}) | {row['restarts']} | "
            f"{row['wall_s']:.0f} | {row['finished']} of {row['models']} | "
            f"{'/'.join(str(jobs.get(kind, 0)) for kind in STAGES)} | "
            f"{row['stages_submitted']} | {sum((row['retries_by_stage'] or {}).values())} | "
            f"{row['duplicates']} | "
            f"{row['hangs']} | {result} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=int, default=300, help="models in the emulator")
    parser.add_argument("--seed", type=int, default=1, help="the emulator's and the kills' seed")
    parser.add_argument("--seeds", help="several seeds, comma-separated (overrides --seed)")
    parser.add_argument("--kills", type=int, default=15, help="SIGKILLs per night")
    parser.add_argument("--time-scale", type=float, default=100.0, help="simulated s per real s")
    parser.add_argument("--limit", type=int, help="jobs at once per stage (default: models/10)")
    parser.add_argument("--attempts", type=int, default=2, help="tries of a job ending in ERROR")
    parser.add_argument("--drop-rate", type=float, default=0.02, help="answers cut off")
    parser.add_argument("--delay-after-rate", type=float, default=0.02, help="answers held back")
    parser.add_argument("--delay-after-s", type=float, default=1.0, help="real s held back")
    parser.add_argument("--http-429-rate", type=float, default=0.02, help="requests answered 429")
    parser.add_argument("--http-500-rate", type=float, default=0.0, help="requests answered 500")
    parser.add_argument("--http-503-rate", type=float, default=0.0, help="requests answered 503")
    parser.add_argument("--job-error-rate", type=float, default=0.02, help="jobs ending in ERROR")
    parser.add_argument(
        "--poll-interval", type=float, default=5.0, help="fleet's poll interval, simulated s"
    )
    parser.add_argument(
        "--poll-floor", type=float, default=0.5, help="fleet's poll floor, simulated s"
    )
    parser.add_argument("--threshold", type=float, default=0.7, help="approve Accuracy >= this")
    parser.add_argument(
        "--sim-arg", action="append", default=[], metavar="FLAG", help="a flag for `fleet sim`"
    )
    parser.add_argument(
        "--fleet-arg", action="append", default=[], metavar="FLAG", help="a flag for `fleet run`"
    )
    parser.add_argument("--timeout", type=float, default=900.0, help="real s per fleet process")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--workdir", type=Path, help="keep logs and state here (default: temp)")
    args = parser.parse_args(argv)
    try:
        args.seed_list = [int(s) for s in args.seeds.split(",")] if args.seeds else [args.seed]
    except ValueError:
        parser.error(f"--seeds must be integers, comma-separated, got {args.seeds!r}")
    if args.models < 1 or args.kills < 0 or args.attempts < 1:
        parser.error("--models and --attempts must be at least 1, --kills at least 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = datetime.now(UTC)
    rows = []
    with contextlib.ExitStack() as stack:
        root = args.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        for seed in args.seed_list:
            rows.append(summary(run_seed(seed, args, root / f"seed-{seed}")))
            for finding in rows[-1]["findings"]:
                print(f"seed {seed}: {finding}", file=sys.stderr)
            print(f"seed {seed}: {'ok' if rows[-1]['ok'] else 'FAILED'}", file=sys.stderr)
    if args.json is not None:
        document = {
            "date": started.isoformat(timespec="seconds"),
            "command": " ".join(["python", "bench/torture.py", *(argv or sys.argv[1:])]),
            "git_commit": git_commit(),  # bench/'s tree; what was tortured is fleet_source
            "fleet_source": fleet_source(),
            "rows": rows,
        }
        args.json.write_text(json.dumps(document, indent=2) + "\n")
    print(table(rows))
    return 0 if all(row["ok"] for row in rows) else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"torture: {exc}", file=sys.stderr)
        sys.exit(2)
