"""What random 429s cost a night: one fleet night per 429 rate, wall time against 0%.

    python bench/throttle.py --models 300 --json throttle.json

For each rate (default 0, 1, 2, 5 and 10%), `fleet sim` (its own process, on loopback) answers
that share of the requests of `--fault-methods` (default GET and POST) with 429 and
`Retry-After: 1`, and no 500 or 503; `fleet run` (its own process) runs one night of every
model, as bench/run.py does. Each night's wall time is printed relative to the 0% night. The
issue's bar (issue 13): 5% 429s cost at most 2x the fault-free wall time.

Run it with the project's venv python. The fleet it measures is the one `python -m fleet`
imports: set PYTHONPATH to measure another source tree (the emulator comes from it too).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from run import BenchError, fleet_source, git_commit, machine, run_fleet

RATES = (0.0, 0.01, 0.02, 0.05, 0.10)
BAR_RATE = 0.05
BAR_FACTOR = 2.0


def night_args(args: argparse.Namespace, rate: float) -> argparse.Namespace:
    """The bench/run.py options of one night at this 429 rate."""
    return argparse.Namespace(
        models=args.models,
        seed=args.seed,
        time_scale=args.time_scale,
        nights=1,
        train_limit=None,
        evaluate_limit=None,
        deploy_limit=None,
        retire_limit=None,
        concurrency=None,
        poll_interval=args.poll_interval,
        poll_floor=args.poll_floor,
        threshold=0.7,
        sim_arg=[
            f"--http-429-rate={rate}",
            "--http-500-rate=0",
            "--http-503-rate=0",
            f"--fault-methods={args.fault_methods}",
        ],
        fleet_arg=[],
        timeout=args.timeout,
    )


def measure(args: argparse.Namespace, root: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for rate in args.rates:
        workdir = root / f"rate-{rate:g}"
        workdir.mkdir(parents=True, exist_ok=True)
        try:
            [night] = run_fleet(night_args(args, rate), workdir)
        except BenchError as exc:  # a night past --timeout: recorded as such, the others go on
            print(f"429 rate {rate:g}: {exc}", file=sys.stderr)
            night = {"wall_s": None, "ok": False, "timed_out": True}
        rows.append({"rate": rate, **night})
    return rows


def table(rows: list[dict[str, Any]], timeout: float) -> str:
    base = next((r["wall_s"] for r in rows if r["rate"] == 0 and r["wall_s"]), None)
    lines = [f"{'429 rate':>9} {'wall_s':>9} {'x 0%':>7} {'makespan_s':>11} {'requests':>9}  ok"]
    for row in rows:
        wall = row["wall_s"]
        shown = f"{wall:.1f}" if wall is not None else f">{timeout:.0f}"
        ratio = f"{wall / base:.2f}" if wall is not None and base else "-"
        makespan = row.get("makespan_s")
        requests = row.get("requests_total")
        lines.append(
            f"{row['rate']:>9.0%} {shown:>9} {ratio:>7} "
            f"{'-' if makespan is None else f'{makespan:.0f}':>11} "
            f"{'-' if requests is None else requests:>9}  {row['ok']}"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=int, default=300, help="models in the emulator")
    parser.add_argument("--json", type=Path, required=True, help="write the figures here")
    parser.add_argument("--seed", type=int, default=0, help="the emulator's seed")
    parser.add_argument("--time-scale", type=float, default=100.0, help="simulated s per real s")
    parser.add_argument(
        "--rates",
        type=lambda text: tuple(float(r) for r in text.split(",")),
        default=RATES,
        help="429 rates to run, comma-separated (default 0,0.01,0.02,0.05,0.1)",
    )
    parser.add_argument(
        "--fault-methods", default="GET,POST", help="methods the 429s strike (GET,POST)"
    )
    parser.add_argument(
        "--poll-interval", type=float, default=5.0, help="simulated s between polls"
    )
    parser.add_argument(
        "--poll-floor", type=float, default=0.5, help="simulated s at least between two looks"
    )
    parser.add_argument("--timeout", type=float, default=1200.0, help="real s per night")
    parser.add_argument("--workdir", type=Path, help="keep logs and state here (default: temp)")
    parser.add_argument("--label", help="a note stored with the figures (what was measured)")
    args = parser.parse_args(argv)
    if args.models < 1 or not args.rates or any(not 0 <= r <= 1 for r in args.rates):
        parser.error("--models must be at least 1 and every rate within [0, 1]")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = datetime.now(UTC)
    with contextlib.ExitStack() as stack:
        root = args.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        rows = measure(args, root)
    result = {
        "rows": rows,
        "models": args.models,
        "time_scale": args.time_scale,
        "machine": machine(),
        "date": started.isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "fleet_source": fleet_source(),
        "label": args.label,
        "command": " ".join(["python", "bench/throttle.py", *(argv or sys.argv[1:])]),
    }
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(table(rows, args.timeout))
    base = next((r["wall_s"] for r in rows if r["rate"] == 0 and r["wall_s"]), None)
    bar = next((r for r in rows if r["rate"] == BAR_RATE), None)
    failed = [f"{r['rate']:.0%}" for r in rows if not r["ok"]]
    if failed:
        print(f"failed nights: {', '.join(failed)}", file=sys.stderr)
    if base and bar is not None:
        within = bar["wall_s"] is not None and bar["wall_s"] <= BAR_FACTOR * base
        print(f"5% 429s within {BAR_FACTOR:g}x the fault-free wall time: {within}")
        if not within:
            return 1
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        sys.exit(2)
