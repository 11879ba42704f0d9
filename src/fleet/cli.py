"""The `fleet` command: parse, build settings, run the engine, draw progress, map exit codes.

This is the only module that prints. `fleet run` and `fleet demo` both go through
`batch.run_batch`, wrapped here with signals (drain, then cancel within the grace period),
the live view and the exit table; the parser is in command_line.py. Exit codes: 0 every model
succeeded; 1 at least one model failed and the rest finished; 2 usage or configuration error;
3 the run could not proceed (server unreachable, token rejected, state file unusable); 4
another fleet process holds the state file; 130 interrupted (SIGINT); 143 terminated
(SIGTERM). An interrupted run resumes with the same `--run-id`.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import functools
import json
import math
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TextIO

# Ctrl-C while these load (most of fleet's first half second, before any signal handler of
# its own) ends like any other interrupt: one line and 130, not a traceback.
try:
    import anyio
    import structlog
    from pydantic import SecretStr
    from rich.console import Console
    from rich.live import Live
    from rich.table import Table

    from fleet import logging as fleet_logging
    from fleet import sim
    from fleet.batch import RunRequest, project_clients, redact_secrets, run_batch
    from fleet.command_line import (
        build_parser,
        joined_shard,
        run_request,
        selection_of,
        setting_flags,
        sim_settings,
        state_files,
    )
    from fleet.config import load_settings
    from fleet.errors import (
        ConfigError,
        FleetError,
        LeaseHeld,
        LeaseLost,
        NewerStateFile,
        RunNotFound,
        StoreError,
        ungrouped,
    )
    from fleet.progress import Progress, RunResult
    from fleet.report import render
    from fleet.report.model import RunReport, build_report
    from fleet.report.statefiles import StateFiles
    from fleet.report.status import progress_table, status_document, status_view
    from fleet.sections import Discovery
    from fleet.selection import (
        PlanRow,
        Selection,
        chosen_models,
        plan_new,
        plan_resume,
        totals,
        totals_by_project,
    )
    from fleet.settings import Settings
    from fleet.shutdown import Shutdown, watch_signals
    from fleet.stages import RunStatus, StageState
    from fleet.store import Store
except KeyboardInterrupt:
    sys.stderr.write("fleet: interrupted\n")
    raise SystemExit(130) from None

EXIT_OK = 0
EXIT_MODELS_FAILED = 1
EXIT_USAGE = 2
EXIT_CANNOT_PROCEED = 3
EXIT_LOCKED = 4
EXIT_SIGINT = 130
EXIT_SIGTERM = 143

log = structlog.get_logger("fleet.cli")

# The demo's settings: a big emulated project, polled to match its speed (DEMO_TIME_SCALE).
_DEMO_SETTINGS = {
    # A cluster that runs 100 jobs at once; no stage bounded below it.
    "jobs": 100,
    "poll_interval": 0.5,
    # 5 simulated seconds between looks at most: a 5 s deployment is seen within a few.
    "poll_floor": 0.05,
    "progress_interval": 5.0,
}


# Each error a command may end with: its exit code and how its one line starts. The last
# row catches what was not foreseen (an invalid transition, say): one line all the same.
_EXITS: tuple[tuple[type[FleetError] | tuple[type[FleetError], ...], int, str], ...] = (
    (ConfigError, EXIT_USAGE, "configuration error: "),
    (RunNotFound, EXIT_USAGE, ""),
    ((LeaseHeld, LeaseLost), EXIT_LOCKED, ""),
    (NewerStateFile, EXIT_USAGE, "state file error: "),
    (StoreError, EXIT_CANNOT_PROCEED, "state file error: "),
    (FleetError, EXIT_CANNOT_PROCEED, "the run could not proceed: "),
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(joined_shard(sys.argv[1:] if argv is None else argv))
        code: int = _COMMANDS[args.command](args)
    except KeyboardInterrupt:
        _error("interrupted")
        return EXIT_SIGINT
    except BaseExceptionGroup as group:  # Ctrl-C inside a task group: as above
        if group.split(KeyboardInterrupt)[1] is not None:
            raise
        _error("interrupted")
        return EXIT_SIGINT
    except FleetError as exc:
        _, exit_code, prefix = next(row for row in _EXITS if isinstance(exc, row[0]))
        _error(f"{prefix}{exc}")
        return exit_code
    return code


# -- commands --------------------------------------------------------------------------------


def _cmd_run(args: argparse.Namespace) -> int:
    settings = load_settings(args.config, setting_flags(args))
    _configure_logging(settings, explicit=args.__dict__.get("setting:log_level") is not None)
    return anyio.run(_drive, settings, run_request(args))


def _cmd_demo(args: argparse.Namespace) -> int:
    emulated = sim_settings(args)
    flags = {**_DEMO_SETTINGS, **setting_flags(args), "db": args.db}
    settings = load_settings(None, flags, use_default_file=False)
    settings.require_paths()
    _configure_logging(settings, explicit=args.__dict__.get("setting:log_level") is not None)
    return anyio.run(_demo, settings, emulated, RunRequest(run_id=args.run_id))


async def _demo(settings: Settings, emulated: sim.SimSettings, request: RunRequest) -> int:
    """`fleet run` of every model of an emulator served on loopback for the run."""
    world, app = sim.build(emulated)
    fleet_logging.redactor.add(emulated.token)
    async with sim.serve(app) as url:
        _say(f"ModelOps emulator on {url} with {emulated.models} models")
        api = settings.api.model_copy(
            update={
                "url": url,
                "project_id": emulated.project_id,
                "token": SecretStr(emulated.token),
            }
        )
        # Its models discovered, and its datasets, as an operator names theirs in [defaults].
        datasets = {
            "train_dataset_id": world.train_dataset_id,
            "evaluate_dataset_id": world.eval_dataset_id,
        }
        defaults = settings.defaults.model_copy(update=datasets)
        everything = Discovery(names=("*",))
        settings = settings.model_copy(
            update={"api": api, "defaults": defaults, "discover": everything}
        )
        code = await _drive(settings, request)
    stats = world.stats()
    _say(
        f"emulator: {stats['requests_total']} requests, jobs {stats['jobs_by_type']}, "
        f"max jobs per model and type {stats['max_jobs_per_model_and_type']}"
    )
    return code


def _cmd_sim(args: argparse.Namespace) -> int:
    settings = sim_settings(
        args,
        token=args.token,
        project_id=args.project_id,
        client_id=args.client_id,
        client_secret=args.client_secret,
        token_lifetime_s=args.token_lifetime,
    )
    if not 0 <= args.port <= 65535:  # noqa: PLR2004
        raise ConfigError("--port: must be between 0 and 65535")
    fleet_logging.configure(level="warning")
    world, app = sim.build(settings)
    if args.models_csv is not None:
        _write_models_csv(args.models_csv, world)

    def ready(url: str) -> None:
        _say(
            f"ModelOps emulator on {url} (project {settings.project_id}, "
            f"{settings.models} models, time x{settings.time_scale}, datasets: train "
            f"{world.train_dataset_id}, evaluate {world.eval_dataset_id}); Ctrl-C stops it"
        )

    try:
        anyio.run(
            functools.partial(
                sim.serve_forever,
                app,
                args.host,
                args.port,
                on_ready=ready,
                ssl_certfile=str(args.tls_cert) if args.tls_cert else None,
                ssl_keyfile=str(args.tls_key) if args.tls_key else None,
            )
        )
    except KeyboardInterrupt:
        return EXIT_OK
    except OSError as exc:
        _error(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}")
        return EXIT_CANNOT_PROCEED
    return EXIT_OK


def _write_models_csv(path: Path, world: sim.World) -> None:
    """The active models, each with the world's datasets: what `--models-file` needs."""
    datasets = (world.train_dataset_id, world.eval_dataset_id)
    try:
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["id", "name", "train_dataset_id", "evaluate_dataset_id"])
            writer.writerows((model.id, model.name, *datasets) for model in world.models())
    except OSError as exc:
        raise ConfigError(f"--models-csv: cannot write {path} ({exc.strerror})") from None
    _say(f"wrote {len(world.models())} models to {path}")


def _cmd_plan(args: argparse.Namespace) -> int:
    settings = load_settings(args.config, setting_flags(args))
    _configure_logging(settings, explicit=False)
    rows, header = anyio.run(_plan, settings, args.run_id, selection_of(args))
    counts = totals(rows)
    by_project = totals_by_project(rows)
    if args.json:
        document = {
            "run": header,
            "shard": None if settings.shard is None else str(settings.shard),
            "db": str(settings.db),
            "totals": counts,
            "projects": by_project,
            "models": [dataclasses.asdict(row) for row in rows],
        }
        sys.stdout.write(json.dumps(document, indent=2) + "\n")
        return EXIT_OK
    several = len(by_project) > 1
    console = Console(width=None if sys.stdout.isatty() else 200)
    console.print(header)
    table = Table(title="plan", title_justify="left")
    for column in (
        ("project", "name", "action", "detail") if several else ("name", "action", "detail")
    ):
        table.add_column(column)
    for row in rows:
        table.add_row(*((row.project,) if several else ()), row.name, row.action, row.detail)
    console.print(table)
    console.print("totals: " + _counted(counts))
    if several:
        for project, of_project in by_project.items():
            console.print(f"  {project}: {_counted(of_project)}")
    return EXIT_OK


def _counted(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))


async def _plan(
    settings: Settings, run_id: str | None, selection: Selection
) -> tuple[list[PlanRow], str]:
    """Read only: the state file is opened read-only, the server only asked for models."""
    if run_id is not None and await anyio.Path(settings.db).is_file():
        async with Store.open(settings.db, readonly=True) as store:
            record = await store.find_run(run_id)
            if record is not None:
                models = await store.models(run_id)
                header = f"run {run_id} ({record.status}){_shard_note(settings)} would resume:"
                return plan_resume(models, record.stages), header
    discovering = [n for n, p in settings.every_project().items() if p.discover.names]
    if discovering:
        settings.require_api()
    async with project_clients(settings, discovering) as clients:
        specs = await chosen_models(settings, selection, clients)
    stages = ",".join(settings.active_stages())
    header = f"a new run of {len(specs)} models ({stages}){_shard_note(settings)} would:"
    return plan_new(specs, settings), header


def _shard_note(settings: Settings) -> str:
    if settings.shard is None:
        return ""
    return f" in shard {settings.shard} (state file {settings.db})"


def _cmd_report(args: argparse.Namespace) -> int:
    dbs = state_files(args.db)
    if not 1 < args.slower_factor < math.inf:
        raise ConfigError("--slower-factor: must be a number greater than 1")
    built = anyio.run(_build_report, dbs, args.run_id, args.previous, args.slower_factor)
    if args.output is not None or args.format != "md":  # else they are in the text shown
        _warn(built.warnings)
    text = render(built, args.format)
    if args.output is None:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
        return EXIT_OK
    try:
        _write_private(args.output, text)
    except OSError as exc:
        raise ConfigError(f"--output: cannot write {args.output} ({exc.strerror})") from None
    _say(f"wrote {args.format} report to {args.output}")
    return EXIT_OK


async def _build_report(
    dbs: Sequence[Path], run_id: str | None, previous: str | None, slower_factor: float
) -> RunReport:
    async with StateFiles.open(dbs) as files:
        return await build_report(files, run_id, previous=previous, slower_factor=slower_factor)


def _write_private(path: Path, text: str) -> None:
    """Reports name models, jobs and errors: readable by their owner only."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)


def _cmd_status(args: argparse.Namespace) -> int:
    document = anyio.run(status_document, state_files(args.db), args.run_id)
    if args.json:
        _warn(document["warnings"])
        sys.stdout.write(json.dumps(document, indent=2) + "\n")
    else:
        # Off a terminal rich assumes 80 columns; a status goes to files and pagers: be wide.
        console = Console(width=None if sys.stdout.isatty() else 200)
        for part in status_view(document):
            console.print(part)
    return EXIT_OK


# -- running ---------------------------------------------------------------------------------


async def _drive(settings: Settings, request: RunRequest) -> int:
    """`run_batch` under the signal watcher and the live view; the exit code of its result."""
    progress = Progress()
    shutdown = Shutdown(settings.grace_period)
    stop = anyio.Event()
    result: RunResult | None = None
    with ungrouped():
        async with anyio.create_task_group() as tg:

            async def run_then_stop() -> None:
                nonlocal result
                result = await run_batch(
                    settings,
                    request=request,
                    stop=stop,
                    progress=progress,
                    time_left=shutdown.remaining,
                )
                tg.cancel_scope.cancel()

            tg.start_soon(watch_signals, tg.cancel_scope, stop, shutdown)
            tg.start_soon(_show_progress, progress, settings.progress_interval)
            tg.start_soon(run_then_stop)
    if shutdown.signals:
        _error("interrupted: the run's state is saved; run again with the same --run-id")
        return EXIT_SIGTERM if shutdown.signals[0] == signal.SIGTERM else EXIT_SIGINT
    assert result is not None
    return _report(result, fail_on_reject=settings.fail_on_reject)


async def _show_progress(progress: Progress, interval: float) -> None:
    if sys.stdout.isatty():
        console = Console()
        with Live(console=console, refresh_per_second=4, transient=True) as live:
            while True:
                live.update(progress_table(progress.snapshot()))
                await anyio.sleep(0.25)
    while True:
        await anyio.sleep(interval)
        snap = progress.snapshot()
        log.info(
            "fleet.progress",
            models_total=snap.models_total,
            models_succeeded=snap.models_succeeded,
            models_failed=snap.models_failed,
            models_rejected=snap.models_rejected,
            elapsed_s=round(snap.elapsed_s, 1),
            eta_s=None if snap.eta_s() is None else round(snap.eta_s() or 0.0, 1),
            **{f"{stage}": _counts(states) for stage, states in snap.stages.items()},
        )


def _counts(states: dict[StageState, int]) -> dict[str, int]:
    return {state.value: count for state, count in states.items() if count}


def _report(result: RunResult, *, fail_on_reject: bool = False) -> int:
    out = _summary_stream()
    verb = "resumed" if result.resumed else "ran"
    rejected = f", {len(result.rejected)} rejected by the approval rule" if result.rejected else ""
    out.write(
        f"run {result.run_id} ({verb}): {result.status}; {result.succeeded} of "
        f"{result.models_total} models succeeded{rejected}, {len(result.failed)} failed, "
        f"{result.pending} not finished, in {result.elapsed_s:.1f}s\n"
    )
    for failure in result.failed:
        out.write(
            f"  failed {failure.name} ({failure.model_id}) at {failure.stage}: {failure.reason}\n"
        )
    if result.aborted is not None:
        _error(f"the run could not proceed: {result.reason or result.aborted}")
        _error(f"its state is saved; run again with --run-id {result.run_id} to resume")
        return EXIT_CANNOT_PROCEED
    if result.status is RunStatus.HALTED:
        _error(f"stopped admitting models: {result.reason}")
        _error(f"fix the cause, then: fleet run --retry-failed {result.run_id}")
        return EXIT_MODELS_FAILED
    if result.failed:
        return EXIT_MODELS_FAILED
    return EXIT_MODELS_FAILED if result.rejected and fail_on_reject else EXIT_OK


# -- output ----------------------------------------------------------------------------------


def _configure_logging(settings: Settings, *, explicit: bool) -> None:
    level = settings.log_level
    if sys.stdout.isatty() and not explicit and level == "info":
        level = "warning"  # the live display shows progress; per-stage lines would drown it
    fleet_logging.configure(level=level)
    redact_secrets(settings)


def _summary_stream() -> TextIO:
    """The human summary: stdout on a terminal, stderr when stdout carries JSON log lines."""
    return sys.stdout if sys.stdout.isatty() else sys.stderr


def _say(message: str) -> None:
    _summary_stream().write(message + "\n")


def _warn(warnings: Sequence[str]) -> None:
    for warning in warnings:
        _error(f"warning: {warning}")


def _error(message: str) -> None:
    # Server messages end up in errors; a gateway could echo a token back in one.
    sys.stderr.write(f"fleet: {fleet_logging.redactor.scrub(message)}\n")


_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": _cmd_run,
    "plan": _cmd_plan,
    "status": _cmd_status,
    "report": _cmd_report,
    "sim": _cmd_sim,
    "demo": _cmd_demo,
}

__all__ = ["main"]
