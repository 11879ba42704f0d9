"""fleet against every plausible ModelOps, over real HTTP: one night per emulator behaviour.

    python bench/conformance.py --models 100 --json conformance.json

For each case, `fleet sim` (its own process, on loopback) answers as that case says, with a
share of POST answers lost after the server applied them; `fleet run` (its own process) runs
one night of every model with an approval rule. The outcome each model should have is worked
out here from the emulator's own metric draws, not by fleet. A case passes when fleet exits
0, every model ends as its rule predicts, and the emulator saw one job per model and type.
The same cases run in the test suite at 30 models on virtual time (tests/test_conformance.py);
this is the end-to-end version the issue's table comes from.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import subprocess
import sys
import tempfile
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cases import CASES, LOST_POSTS, Case
from run import (
    PROJECT_ID,
    BenchError,
    Emulator,
    child_env,
    model_outcomes,
    night_figures,
    wait_measured,
)

from fleet import sim
from fleet.sim import draws
from fleet.sim.behaviour import Behaviour

THRESHOLD = 0.75
BEHAVIOUR_FIELDS = frozenset(f.name for f in dataclasses.fields(Behaviour))


def fleet_flags(settings: dict[str, Any]) -> list[str]:
    """The `fleet run` flags of a case's settings."""
    return [f"--{path.replace('_', '-')}={value}" for path, value in settings.items()]


def sim_flags(server: dict[str, Any]) -> list[str]:
    """The `fleet sim` flags of a case's Behaviour fields."""
    flags: list[str] = []
    for name, value in server.items():
        flag = "--" + name.removesuffix("_s").replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else flag.replace("--", "--no-", 1))
        elif isinstance(value, tuple):
            flags.append(f"{flag}={','.join(value)}")
        else:
            flags.append(f"{flag}={value}")
    return flags


def expected(models: int, seed: int, server: dict[str, Any]) -> dict[str, str]:
    """Each model's outcome by its rule, from the emulator's own draws of tonight's version."""
    fields = {k: v for k, v in server.items() if k in BEHAVIOUR_FIELDS}
    behaviour = Behaviour.profile(server.get("profile", "default"), **fields)
    world, _ = sim.build(sim.SimSettings(models=models, seed=seed, behaviour=behaviour))
    outcomes = {}
    for model in world.models():
        version = len(world.trained_models_of(model.id)) + 1
        accuracy = float(draws.metrics(seed, model.id, version)["Accuracy"])
        outcomes[model.name] = "succeeded" if accuracy >= THRESHOLD else "rejected"
    return outcomes


def config(workdir: Path, url: str, args: argparse.Namespace, case: Case) -> Path:
    models = (
        '[discover]\nnames = ["store-*"]\n'
        if case.discover
        else f'models_file = "{workdir / "models.csv"}"\n'
    )
    path = workdir / "fleet.toml"
    path.write_text(
        f"""# Written by bench/conformance.py.
concurrency = {args.limit * 2}
poll_interval = {5.0 / args.time_scale!r}
poll_floor = {0.5 / args.time_scale!r}
progress_interval = 10.0
db = "{workdir / "fleet.db"}"
{models}
[api]
url = "{url}"
project_id = "{PROJECT_ID}"

[limits]
train = {args.limit}
evaluate = {args.limit}
approve = {args.limit}
deploy = {args.limit}
retire = {args.limit}

[defaults]
approval_rule = "Accuracy >= {THRESHOLD}"
train_dataset_id = "{{train}}"
evaluate_dataset_id = "{{evaluate}}"
"""
    )
    return path


def run_case(name: str, case: Case, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    workdir.mkdir(parents=True, exist_ok=True)
    emulator_args = argparse.Namespace(
        models=args.models,
        seed=args.seed,
        sim_arg=sim_flags({**case.server, **LOST_POSTS}),
    )
    with Emulator(workdir, emulator_args, args.time_scale, "sim") as emulator:
        datasets = (workdir / "models.csv").read_text().splitlines()[1].split(",")[2:4]
        path = config(workdir, emulator.url, args, case)
        text = path.read_text().replace("{train}", datasets[0]).replace("{evaluate}", datasets[1])
        path.write_text(text)
        before = emulator.stats()
        command = [sys.executable, "-m", "fleet", "run", "--config", str(path)]
        with (workdir / "fleet.log").open("wb") as log, (workdir / "fleet.out").open("wb") as out:
            proc = subprocess.Popen(
                [*command, "--run-id", "night-1", *fleet_flags(case.fleet)],
                cwd=workdir,
                env=child_env(),
                stdout=out,
                stderr=log,
            )
            usage = wait_measured(proc, args.timeout)
        after = emulator.stats(since=before["now"])
        limits = dict.fromkeys(("train", "evaluate", "deploy", "retire"), args.limit)
        figures = night_figures(emulator.jobs(), before, after, after["first_request_at"], limits)
    got = model_outcomes(workdir, "night-1")
    want = expected(args.models, args.seed, case.server)
    wrong = sorted(m for m in want if got.get(m) != want[m])
    ok = (
        usage.exit_code == 0
        and not wrong
        and after["max_jobs_per_model_and_type"] == 1
        and after["retired_while_scoring"] == 0
    )
    counts = Counter(got.values())
    return {
        "case": name,
        "sim_args": emulator_args.sim_arg,
        "fleet_args": fleet_flags(case.fleet),
        "exit_code": usage.exit_code,
        "outcomes": dict(counts),
        "wrong_outcomes": wrong,
        "max_jobs_per_model_and_type": after["max_jobs_per_model_and_type"],
        "dropped_post_answers": after["faults"].get("drop", 0),
        "status_requests_per_job": figures["status_requests_per_job"],
        "makespan_s": figures["makespan_s"],
        "requests_total": figures["requests_total"],
        "wall_s": round(usage.wall_s, 1),
        "fleet_cpu_s": round(usage.cpu_s, 2),
        "ok": ok,
    }


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| case | requests per job | makespan (sim s) | result |",
        "|---|---:|---:|---|",
    ]
    for row in rows:
        counts = row["outcomes"]
        result = (
            f"{'ok' if row['ok'] else 'FAILED'}: exit {row['exit_code']}, "
            f"{counts.get('succeeded', 0)} succeeded + {counts.get('rejected', 0)} rejected "
            f"as predicted, max {row['max_jobs_per_model_and_type']} job per model and type, "
            f"{row['dropped_post_answers']} POST answers lost"
        )
        if row["wrong_outcomes"]:
            result += f"; {len(row['wrong_outcomes'])} models not as predicted"
        per_job = row["status_requests_per_job"]
        makespan = row["makespan_s"]
        lines.append(
            f"| {row['case']} | {per_job:.2f} | {makespan:,.0f} | {result} |"
            if per_job is not None and makespan is not None
            else f"| {row['case']} | - | - | {result} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=int, default=100, help="active models per night")
    parser.add_argument("--json", type=Path, required=True, help="write the rows here")
    parser.add_argument("--seed", type=int, default=5, help="the emulator's seed")
    parser.add_argument("--time-scale", type=float, default=40.0, help="simulated s per real s")
    parser.add_argument("--limit", type=int, default=50, help="fleet's limit on every stage")
    parser.add_argument("--case", action="append", help="run only these cases (by name)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="real s per night")
    parser.add_argument("--workdir", type=Path, help="keep logs and state here (default: temp)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    chosen = {n: c for n, c in CASES.items() if not args.case or n in args.case}
    started = datetime.now(UTC)
    rows = []
    with contextlib.ExitStack() as stack:
        root = args.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        for number, (name, case) in enumerate(chosen.items()):
            rows.append(run_case(name, case, args, root / f"case-{number:02d}"))
            print(f"{name}: {'ok' if rows[-1]['ok'] else 'FAILED'}", file=sys.stderr)
    args.json.write_text(
        json.dumps(
            {
                "date": started.isoformat(timespec="seconds"),
                "models": args.models,
                "seed": args.seed,
                "time_scale": args.time_scale,
                "limit": args.limit,
                "threshold": THRESHOLD,
                "lost_post_answers": LOST_POSTS,
                "rows": rows,
            },
            indent=2,
        )
        + "\n"
    )
    print(table(rows))
    return 0 if all(row["ok"] for row in rows) else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"conformance: {exc}", file=sys.stderr)
        sys.exit(2)
