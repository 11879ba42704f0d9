"""How fast the emulator's world is at the scale of a big fleet: 10,000 models, 50,000 jobs.

    python bench/world.py --json world.json

In this process, with no HTTP and a manual clock: builds a `World` of `--models` models (each
with last night's deployed version and jobs), trains every model `--rounds` times (the clock
moves on after each round, so each round's trainings complete while the next are submitted),
lets every job end, then reads pages of the job list (100 pages of 100 jobs spread over the
whole list) and, when the server keeps the job index, pages of jobs by status and by last
change. It does this for each server profile (`default`, `optimistic`: the index is kept only
in the second), prints CPU seconds per phase and writes them to the JSON.

The world is checked as it is measured: every training submitted is counted once, none is
left running, the last model has one trained version per round. A wrong world exits 1.

This was a test's CPU-time budget (tests/sim/test_world.py, 6 s for the whole) until it
failed on busy 2-core machines: a timing belongs here, where it is recorded with its machine,
not in a test that must pass anywhere. BENCHMARKS.md has the figures.

Run it with the project's venv python; set PYTHONPATH to measure another source tree.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from run import fleet_source, git_commit, machine

from fleet.sim import Behaviour, ManualClock, SimSettings, World

PROFILES = ("default", "optimistic")
TRAIN = {"datasetId": "00000000-0000-4000-8000-00000000da7a"}
ROUND_S = 700.0  # simulated seconds between rounds: longer than most trainings
SETTLE_S = 3600.0  # the longest training
PAGES = 100
PAGE_SIZE = 100


class WrongWorld(Exception):
    """The world built is not the one asked for: the figures would mean nothing."""


def measure(profile: str, models: int, rounds: int) -> dict[str, Any]:
    """CPU seconds of each phase for one server profile, checked as described above."""
    clock = ManualClock()
    phases: dict[str, float] = {}
    started = time.process_time()
    world = World(SimSettings(models=models, behaviour=Behaviour.profile(profile)), clock)
    phases["build_s"] = time.process_time() - started
    ids = [m.id for m in world.models()]
    started = time.process_time()
    for round_ in range(rounds):
        for model_id in ids:
            world.train(model_id, TRAIN)
        clock.advance(ROUND_S * (round_ + 1))
    clock.advance(SETTLE_S)
    stats = world.stats()
    phases["train_s"] = time.process_time() - started
    started = time.process_time()
    pages = read_pages(world)
    phases["read_s"] = time.process_time() - started
    check(world, stats, models, rounds)
    return {
        "profile": profile,
        "models": models,
        "jobs": stats["jobs_total"],
        "history_jobs": stats["history_jobs"],
        "jobs_read": pages,
        "job_index": world.behaviour.needs_job_index,
        **{name: round(seconds, 3) for name, seconds in phases.items()},
        "total_s": round(sum(phases.values()), 3),
    }


def read_pages(world: World) -> int:
    """Pages spread over the whole job list, as a client paging through it reads them, each
    job shown with its status now; with the index, jobs by status and by last change too."""
    jobs = world.jobs()
    now = world.now()
    read = 0
    for offset in range(0, len(jobs), max(len(jobs) // PAGES, 1)):
        statuses = [job.status_at(now) for job in jobs[offset : offset + PAGE_SIZE]]
        read += len(statuses)
        if world.behaviour.needs_job_index:
            for wanted, order in (({"COMPLETED"}, "updatedAt"), (None, "createdAt")):
                found, _, _ = world.find_jobs(wanted, order, offset, PAGE_SIZE, descending=True)
                read += len(found)
    return read


def check(world: World, stats: dict[str, Any], models: int, rounds: int) -> None:
    wrong = []
    if stats["jobs_total"] != models * rounds:
        wrong.append(f"{stats['jobs_total']} jobs submitted, not {models * rounds}")
    if stats["running_jobs"] != 0:
        wrong.append(f"{stats['running_jobs']} jobs still running")
    if stats["max_jobs_per_model_and_type"] != rounds:
        wrong.append(f"a model trained {stats['max_jobs_per_model_and_type']} times")
    last = world.models()[-1].id
    trained = [v for v in world.trained_models_of(last, "TRAINED") if not v.archived]
    if len(trained) != rounds:
        wrong.append(f"the last model has {len(trained)} trained versions, not {rounds}")
    if wrong:
        raise WrongWorld("; ".join(wrong))


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| profile | models | jobs | build s | train s | read s | total s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    lines.extend(
        f"| {r['profile']} | {r['models']:,} | {r['jobs']:,} | {r['build_s']:.2f} "
        f"| {r['train_s']:.2f} | {r['read_s']:.2f} | {r['total_s']:.2f} |"
        for r in rows
    )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5, help="trainings of every model")
    parser.add_argument("--profile", choices=PROFILES, action="append", help="default: both")
    parser.add_argument("--json", type=Path, help="where the figures go")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        rows = [measure(p, args.models, args.rounds) for p in args.profile or PROFILES]
    except WrongWorld as exc:
        print(f"world.py: the world is wrong: {exc}", file=sys.stderr)
        return 1
    print(table(rows))
    if args.json is not None:
        result = {
            "rows": rows,
            "machine": machine(),
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "command": " ".join(sys.argv),
            "git_commit": git_commit(),
            "fleet_source": fleet_source(),
        }
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
