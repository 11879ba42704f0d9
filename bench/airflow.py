"""Side by side with Airflow: the Model Factory tutorial's DAG on Airflow 3, against `fleet sim`.

    python bench/airflow.py --models 100 --seed 0 --time-scale 10 --json airflow-100.json

Runs bench/airflow_dag.py (the tutorial's five tasks as a task group mapped over the models;
its docstring says what it follows) on Apache Airflow with the LocalExecutor, `parallelism`
and the DAG's `max_active_tasks` both `--slots` (32), and Postgres as the metadata database,
against `fleet sim` (its own process, seed and time scale as given). The DAG is triggered
once and waited for to its end (at most `--timeout` real seconds). Its figures are
bench/run.py's, from the emulator's records (`/_sim/jobs`, `/_sim/stats`; the lower bound
for `--slots` jobs at once, every stage together), with when the first and the median model
were done (its last job ended) as a share of the makespan.

Airflow lives in a venv of its own (`--venv`, default ~/.cache/fleet-bench/airflow-VERSION),
made once with `pip install "apache-airflow[postgres]==VERSION"`: with Airflow's constraints
file when `--constraints` names one (a file or URL) or the official URL answers, otherwise
with pip's resolver (this machine reaches no GitHub, so the recorded run used the resolver;
`pip freeze` of the venv is kept in the work dir and the key versions in the JSON). It is not
a dependency of fleet. Postgres is the machine's (`initdb`, `postgres` on PATH; Debian's
`apt-get install postgresql`): a fresh cluster in the work dir on a free loopback port, run as
the `postgres` user when this script runs as root, stopped at the end. Every Airflow
component (api-server, scheduler with its LocalExecutor workers and task processes,
dag-processor, triggerer) and Postgres is started here in a session of its own.

CPU is the user+system time of every process of those trees, children already reaped by a
parent included (/proc/PID/stat utime+stime+cutime+cstime, summed over the live tree), taken
when the DAG is triggered and when its run ends; the CLI commands this script runs (`airflow
db migrate`, `airflow dags trigger`, psql) are not counted. Memory is sampled every
`--sample-interval` s and reported at its peak twice: the sum of the trees' RSS (what was
asked for, though it counts the pages that the LocalExecutor's forked workers share once per
process) and the sum of their PSS (/proc/PID/smaps_rollup: shared pages divided among the
processes sharing them, what the machine actually held). Run it with the project's venv
python. This file's name shadows Airflow's package only for scripts run from bench/; the DAG
runs from the dags folder, where it does not.

Why this module is long: it is one script that owns a whole Airflow deployment for the length
of a run (a venv, a Postgres cluster, four Airflow components, the sampler of their CPU and
memory) and must stop all of it whatever happens; split across files, each part would only
be used from here.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

import httpx
from run import PROJECT_ID, STAGES, BenchError, Emulator, child_env, git_commit, machine
from run import night_figures as _night_figures

AIRFLOW_VERSION = "3.3.2"
DAG_FILE = Path(__file__).resolve().parent / "airflow_dag.py"
DAG_ID = "modelops_model_factory"
RUN_ID = "fleet-bench"
COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
CONSTRAINTS_URL = (
    "https://raw.githubusercontent.com/apache/airflow/constraints-{version}/constraints-{py}.txt"
)
VERSIONS_OF = (
    "apache-airflow",
    "apache-airflow-core",
    "apache-airflow-task-sdk",
    "apache-airflow-providers-standard",
    "apache-airflow-providers-postgres",
    "SQLAlchemy",
    "psycopg2-binary",
    "requests",
)
READY_TIMEOUT_S = 300.0


# -- what the processes use ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProcStat:
    """One process as /proc/PID/stat tells it: its parent, CPU so far with its reaped
    children's, and resident memory."""

    ppid: int
    cpu_s: float
    rss_bytes: int


def proc_table(proc_root: Path = Path("/proc")) -> dict[int, ProcStat]:
    """Every live process under `proc_root`; those that vanish while read are left out."""
    ticks = os.sysconf("SC_CLK_TCK")
    page = os.sysconf("SC_PAGE_SIZE")
    table = {}
    for entry in proc_root.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue
        fields = text.rsplit(")", 1)[1].split()  # the name in parentheses may hold spaces
        # fields[n - 3] is proc(5)'s field n: ppid 4, utime..cstime 14-17, rss 24.
        cpu = sum(int(f) for f in fields[11:15]) / ticks
        table[int(entry.name)] = ProcStat(int(fields[1]), cpu, int(fields[21]) * page)
    return table


def tree(table: dict[int, ProcStat], root: int) -> list[int]:
    """`root` and its live descendants."""
    children: dict[int, list[int]] = {}
    for pid, stat in table.items():
        children.setdefault(stat.ppid, []).append(pid)
    found, todo = [], [root] if root in table else []
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found


def pss_bytes(pid: int, proc_root: Path = Path("/proc")) -> int:
    """The process's proportional set size (shared pages divided among their users)."""
    try:
        for line in (proc_root / str(pid) / "smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


@dataclass(frozen=True, slots=True)
class TreeUsage:
    cpu_s: float
    rss_bytes: int
    pss_bytes: int
    processes: int


class Sampler:
    """Samples the CPU and memory of named process trees in a thread of its own."""

    def __init__(self, interval_s: float, proc_root: Path = Path("/proc")) -> None:
        self.roots: dict[str, int] = {}
        self.peak: dict[str, TreeUsage] = {}
        self.peak_total = TreeUsage(0.0, 0, 0, 0)
        self._interval_s = interval_s
        self._proc_root = proc_root
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="sampler", daemon=True)

    def sample(self) -> dict[str, float]:
        """CPU seconds of each tree so far; records the peak memory on the way."""
        with self._lock:  # the thread and the caller
            table = proc_table(self._proc_root)
            now = {}
            for name, root in list(self.roots.items()):
                pids = tree(table, root)
                now[name] = TreeUsage(
                    sum(table[pid].cpu_s for pid in pids),
                    sum(table[pid].rss_bytes for pid in pids),
                    sum(pss_bytes(pid, self._proc_root) for pid in pids),
                    len(pids),
                )
                self.peak[name] = _peak(self.peak.get(name), now[name])
            total = TreeUsage(
                0.0,
                sum(u.rss_bytes for u in now.values()),
                sum(u.pss_bytes for u in now.values()),
                sum(u.processes for u in now.values()),
            )
            self.peak_total = _peak(self.peak_total, total)
            return {name: usage.cpu_s for name, usage in now.items()}

    def _loop(self) -> None:
        while not self._stop.wait(self._interval_s):
            self.sample()

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()


# -- Postgres and Airflow ------------------------------------------------------------------


def _peak(peak: TreeUsage | None, now: TreeUsage) -> TreeUsage:
    if peak is None:
        return now
    return TreeUsage(
        now.cpu_s,
        max(peak.rss_bytes, now.rss_bytes),
        max(peak.pss_bytes, now.pss_bytes),
        max(peak.processes, now.processes),
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _stop(proc: subprocess.Popen[bytes], sig: signal.Signals, grace_s: float) -> None:
    """Signal the session this script started the process in; kill it if it lingers."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


class Postgres:
    """A fresh cluster in `workdir/postgres` on a free loopback port, user and db `airflow`."""

    def __init__(self, workdir: Path) -> None:
        self.data = workdir / "postgres"
        self.port = free_port()
        self.url = f"postgresql+psycopg2://airflow@127.0.0.1:{self.port}/airflow"
        self._log = workdir / "postgres.log"
        self._bin = Path(shutil.which("postgres") or "postgres").resolve().parent
        # Postgres refuses to run as root.
        self._user = "postgres" if os.geteuid() == 0 else None
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Self:
        self.data.mkdir()
        if self._user:
            shutil.chown(self.data, self._user, self._user)
            self.data.parent.chmod(0o711)  # a temp dir is 0700: let postgres reach its own
        with self._log.open("ab") as log:
            subprocess.run(
                [self._bin / "initdb", "-D", self.data, "-U", "airflow", "--auth=trust"],
                stdout=log,
                stderr=log,
                user=self._user,
                check=True,
            )
            self.proc = subprocess.Popen(
                [
                    *(self._bin / "postgres", "-D", self.data, "-p", str(self.port)),
                    *("-k", str(self.data), "-c", "listen_addresses=127.0.0.1"),
                ],
                stdout=log,
                stderr=log,
                user=self._user,
                start_new_session=True,
            )
        _until(lambda: self._psql("postgres", "SELECT 1") is not None, 60, "postgres", self._log)
        self._psql("postgres", "CREATE DATABASE airflow")
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def query(self, sql: str) -> list[list[str]]:
        out = self._psql("airflow", sql)
        if out is None:
            raise BenchError(f"postgres did not answer {sql!r}")
        return [line.split("|") for line in out.splitlines() if line]

    def _psql(self, db: str, sql: str) -> str | None:
        done = subprocess.run(
            [
                *("psql", "-h", "127.0.0.1", "-p", str(self.port)),
                *("-U", "airflow", "-d", db, "-At", "-c", sql),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        return done.stdout if done.returncode == 0 else None

    def __exit__(self, *_exc: object) -> None:
        if self.proc is not None:
            _stop(self.proc, signal.SIGINT, 60)  # SIGINT: Postgres' fast shutdown


def _until(ready: Any, timeout_s: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():
        if time.monotonic() > deadline:
            raise BenchError(f"{what} was not ready within {timeout_s:.0f} s; see {log}")
        time.sleep(1)


def airflow_env(args: argparse.Namespace, home: Path, db_url: str, api_port: int) -> dict[str, str]:
    """Airflow as shipped but for what the comparison fixes: executor, slots, database."""
    return {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": str(args.slots),
        "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": str(args.slots),
        "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{api_port}/execution/",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": db_url,
        "AIRFLOW__API__PORT": str(api_port),
        "AIRFLOW__API__HOST": "127.0.0.1",
        # One secret for every component, or the workers' tokens are refused; never printed.
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
        "AIRFLOW__API__SECRET_KEY": secrets.token_hex(32),
    }


class Airflow:
    """The Airflow components, each in a session of its own, stopped together."""

    def __init__(self, venv: Path, workdir: Path, env: dict[str, str]) -> None:
        self._airflow = venv / "bin" / "airflow"
        self._workdir = workdir
        self._env = env
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def command(self, *argv: str) -> str:
        log = self._workdir / "airflow-cli.log"
        with log.open("ab") as err:
            done = subprocess.run(
                [self._airflow, *argv], env=self._env, cwd=self._workdir, stdout=subprocess.PIPE,
                stderr=err, check=False,
            )  # fmt: skip
        if done.returncode != 0:
            raise BenchError(f"airflow {' '.join(argv)} failed; see {log}")
        return done.stdout.decode(errors="replace")

    def start(self, component: str) -> int:
        with (self._workdir / f"{component}.log").open("ab") as log:
            self.procs[component] = subprocess.Popen(
                [self._airflow, component],
                env=self._env,
                cwd=self._workdir,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        return self.procs[component].pid

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs.values():
            _stop(proc, signal.SIGTERM, 30)


def ensure_airflow(args: argparse.Namespace) -> dict[str, Any]:
    """The venv with Airflow, made once; what it was installed with and the versions in it."""
    venv: Path = args.venv
    stamp = venv / f".fleet-bench-airflow-{args.airflow_version}.json"
    if not stamp.exists():
        subprocess.run([args.python, "-m", "venv", "--clear", venv], check=True)
        pip = [venv / "bin" / "python", "-m", "pip", "install", "--quiet"]
        subprocess.run([*pip, "--upgrade", "pip"], check=True)
        constraints = _constraints(args, venv)
        extra = ["--constraint", str(venv / "constraints.txt")] if constraints else []
        subprocess.run(
            [*pip, *extra, f"apache-airflow[postgres]=={args.airflow_version}"], check=True
        )
        stamp.write_text(json.dumps({"constraints": constraints}))
    code = (
        "import importlib.metadata as m, json, sys; print(json.dumps({"
        f"'python': sys.version.split()[0], **{{d: m.version(d) for d in {VERSIONS_OF!r}}}}}))"
    )
    versions = json.loads(
        subprocess.run(
            [venv / "bin" / "python", "-c", code], capture_output=True, text=True, check=True
        ).stdout
    )
    return {**json.loads(stamp.read_text()), "venv": str(venv), "versions": versions}


def _constraints(args: argparse.Namespace, venv: Path) -> str | None:
    """Copy Airflow's constraints file into the venv; None when it cannot be had."""
    py = subprocess.run(
        [args.python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    source = args.constraints or CONSTRAINTS_URL.format(version=args.airflow_version, py=py)
    try:
        if Path(source).is_file():
            text = Path(source).read_text()
        else:
            text = httpx.get(source, timeout=20, follow_redirects=True).raise_for_status().text
    except (OSError, httpx.HTTPError) as exc:
        print(f"airflow: no constraints file ({exc!r}); pip's resolver", file=sys.stderr)
        return None
    (venv / "constraints.txt").write_text(text)
    return source


# -- figures -------------------------------------------------------------------------------


def outcomes(task_states: dict[str, dict[str, int]], models: int) -> dict[str, int]:
    """Per model: succeeded when its retire succeeded, rejected when its deploy was skipped."""
    succeeded = task_states.get("model_factory.retire", {}).get("success", 0)
    rejected = task_states.get("model_factory.deploy", {}).get("skipped", 0)
    return {"succeeded": succeeded, "rejected": rejected, "failed": models - succeeded - rejected}


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


# -- the run -------------------------------------------------------------------------------


def run(args: argparse.Namespace, workdir: Path, install: dict[str, Any]) -> dict[str, Any]:
    limits = dict.fromkeys((*STAGES.values(), "approve", "concurrency"), args.slots)
    home = workdir / "airflow"
    (home / "dags").mkdir(parents=True)
    shutil.copy(DAG_FILE, home / "dags" / f"{DAG_ID}.py")
    sim_args = argparse.Namespace(models=args.models, seed=args.seed, sim_arg=args.sim_arg)
    with (
        Emulator(workdir, sim_args, args.time_scale, "sim-airflow") as sim,
        Postgres(workdir) as pg,
        Sampler(args.sample_interval) as sampler,
    ):
        api_port = free_port()
        env = (
            child_env()
            | airflow_env(args, home, pg.url, api_port)
            | {
                "FLEET_BENCH_URL": sim.url,
                "FLEET_BENCH_PROJECT_ID": PROJECT_ID,
                "FLEET_BENCH_MODELS_CSV": str(sim.models_csv),
                "FLEET_BENCH_POLL_S": repr(args.poll_s),
                "FLEET_BENCH_THRESHOLD": repr(args.threshold),
                "FLEET_BENCH_METRICS_POLLS": str(
                    max(1, int(args.metrics_wait / args.time_scale / args.poll_s) + 1)
                ),
                "FLEET_BENCH_SLOTS": str(args.slots),
            }
        )
        sampler.roots["postgres"] = pg.pid
        with Airflow(args.venv, workdir, env) as airflow:
            airflow.command("db", "migrate")
            for component in COMPONENTS:
                sampler.roots[component] = airflow.start(component)
            health = f"http://127.0.0.1:{api_port}/api/v2/monitor/health"
            _until(lambda: _answers(health), READY_TIMEOUT_S, "the api-server", workdir)
            serialized = f"SELECT count(*) FROM serialized_dag WHERE dag_id = '{DAG_ID}'"
            _until(lambda: pg.query(serialized) == [["1"]], READY_TIMEOUT_S, "the DAG", workdir)
            startup_cpu = sampler.sample()
            before = sim.stats()
            sim_cpu = sim.cpu_s()
            triggered = time.monotonic()
            airflow.command("dags", "trigger", DAG_ID, "--run-id", RUN_ID)
            state = _wait_run(pg, triggered + args.timeout)
            wall_s = time.monotonic() - triggered
            end_cpu = sampler.sample()
            task_states = _task_states(pg)
        after = sim.stats(since=before["now"])
        jobs = sim.jobs()
        # The emulator's records, to compute other figures later (it is gone after the run).
        records = {"before": before, "after": after, "jobs": jobs}
        (workdir / "sim-records.json").write_text(json.dumps(records))
        emulator_cpu = sim.cpu_s() - sim_cpu
    # Airflow's slots are shared by every stage: the bound is all the work over them.
    figures = _night_figures(
        jobs, before, after, after["first_request_at"], limits, capacity=args.slots
    )
    cpu = {name: round(end_cpu[name] - startup_cpu[name], 2) for name in end_cpu}
    total_cpu = sum(end_cpu[name] - startup_cpu[name] for name in end_cpu)
    counted = outcomes(task_states, args.models)
    return {
        **figures,
        "cpu_s": round(total_cpu, 2),
        "cpu_ms_per_model": round(total_cpu * 1000 / args.models, 1),
        "cpu_s_by_process": cpu,
        "cpu_s_startup": round(sum(startup_cpu.values()), 2),
        "peak_rss_mb": round(sampler.peak_total.rss_bytes / 2**20, 1),
        "peak_pss_mb": round(sampler.peak_total.pss_bytes / 2**20, 1),
        "peak_processes": sampler.peak_total.processes,
        "peak_by_process": {
            name: {
                "rss_mb": round(usage.rss_bytes / 2**20, 1),
                "pss_mb": round(usage.pss_bytes / 2**20, 1),
                "processes": usage.processes,
            }
            for name, usage in sampler.peak.items()
        },
        "emulator_cpu_s": round(emulator_cpu, 2),
        "dag_run_state": state,
        "task_states": task_states,
        "outcomes": counted,
        "ok": state == "success" and counted["failed"] == 0,
        "wall_s": round(wall_s, 1),
        "models": args.models,
        "time_scale": args.time_scale,
        "seed": args.seed,
        "limits": limits,
        "airflow": install
        | {"executor": "LocalExecutor", "parallelism": args.slots, "max_active_tasks": args.slots},
    }


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=5).status_code == 200  # noqa: PLR2004
    except httpx.HTTPError:
        return False


def _wait_run(pg: Postgres, deadline: float) -> str:
    sql = f"SELECT state FROM dag_run WHERE dag_id = '{DAG_ID}' AND run_id = '{RUN_ID}'"
    while True:
        rows = pg.query(sql)
        state = rows[0][0] if rows else "absent"
        if state in {"success", "failed"}:
            return state
        if time.monotonic() > deadline:
            raise BenchError(f"the DAG run was still {state} at the timeout")
        time.sleep(5)


def _task_states(pg: Postgres) -> dict[str, dict[str, int]]:
    rows = pg.query(
        "SELECT task_id, coalesce(state, 'none'), count(*) FROM task_instance"
        f" WHERE dag_id = '{DAG_ID}' AND run_id = '{RUN_ID}' GROUP BY 1, 2"
    )
    states: dict[str, dict[str, int]] = {}
    for task_id, state, count in rows:
        states.setdefault(task_id, {})[state] = int(count)
    return states


def _postgres_version() -> str:
    done = subprocess.run(["postgres", "--version"], capture_output=True, text=True, check=False)
    return done.stdout.strip()


ROWS = (
    ("makespan_s", "{:.0f}"),
    ("lower_bound_s", "{:.0f}"),
    ("makespan_ratio", "{:.3f}"),
    ("status_requests_per_job", "{:.2f}"),
    ("detection_latency_p95_pct", "{:.0f}"),
    ("first_model_done_pct", "{:.1f}"),
    ("median_model_done_pct", "{:.1f}"),
    ("requests_total", "{:d}"),
    ("jobs", "{:d}"),
    ("cpu_s", "{:.1f}"),
    ("cpu_ms_per_model", "{:.0f}"),
    ("peak_rss_mb", "{:.0f}"),
    ("peak_pss_mb", "{:.0f}"),
    ("peak_processes", "{:d}"),
    ("wall_s", "{:.0f}"),
)


def table(result: dict[str, Any]) -> str:
    lines = []
    for name, fmt in ROWS:
        value = result.get(name)
        lines.append(f"{name:28} {'-' if value is None else fmt.format(value):>12}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=int, default=100, help="models in the emulator")
    parser.add_argument("--json", type=Path, required=True, help="write the figures here")
    parser.add_argument("--seed", type=int, default=0, help="the emulator's seed")
    parser.add_argument("--time-scale", type=float, default=10.0, help="simulated s per real s")
    parser.add_argument("--slots", type=int, default=32, help="parallelism and max_active_tasks")
    parser.add_argument("--poll-s", type=float, default=5.0, help="real s between two polls")
    parser.add_argument("--threshold", type=float, default=0.7, help="approve Accuracy >= this")
    parser.add_argument(
        "--metrics-wait", type=float, default=300.0,
        help="simulated s an evaluation's EVALUATED event may lag behind its job",
    )  # fmt: skip
    parser.add_argument("--timeout", type=float, default=3600.0, help="real s for the DAG run")
    parser.add_argument("--sample-interval", type=float, default=1.0, help="real s, memory")
    parser.add_argument("--airflow-version", default=AIRFLOW_VERSION)
    parser.add_argument("--venv", type=Path, help="default ~/.cache/fleet-bench/airflow-VERSION")
    parser.add_argument("--python", default="python3", help="the Python of a new venv")
    parser.add_argument("--constraints", help="Airflow's constraints file (path or URL)")
    parser.add_argument(
        "--sim-arg", action="append", default=[], metavar="FLAG",
        help="a flag for the emulator, as --sim-arg=FLAG (repeatable)",
    )  # fmt: skip
    parser.add_argument("--workdir", type=Path, help="keep logs and state here (default: temp)")
    parser.add_argument("--label", help="a note stored with the figures")
    args = parser.parse_args(argv)
    if args.models < 1 or args.slots < 1 or args.poll_s <= 0:
        parser.error("--models and --slots must be at least 1, --poll-s above 0")
    if args.venv is None:
        args.venv = Path.home() / ".cache" / "fleet-bench" / f"airflow-{args.airflow_version}"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = datetime.now(UTC)
    install = ensure_airflow(args)
    load_before = uptime()
    with contextlib.ExitStack() as stack:
        root = args.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        root.mkdir(parents=True, exist_ok=True)
        freeze = subprocess.run(
            [args.venv / "bin" / "python", "-m", "pip", "freeze"], capture_output=True, check=False
        )
        (root / "pip-freeze.txt").write_bytes(freeze.stdout)
        result = run(args, root, install)
    result |= {
        "postgres": _postgres_version(),
        "uptime_before": load_before,
        "uptime_after": uptime(),
        "machine": machine(),
        "date": started.isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "label": args.label,
        "command": " ".join(["python", "bench/airflow.py", *(argv or sys.argv[1:])]),
    }
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    if not result["ok"]:
        print(f"airflow: the run {result['dag_run_state']}: {result['outcomes']}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        sys.exit(2)
