"""The `fleet` command: parse, build settings, run the engine, draw progress, map exit codes.

This is the only module that prints. Exit codes: 0 every model succeeded; 1 at least one model
failed and the rest finished; 2 usage or configuration error; 3 the run could not proceed
(server unreachable, token rejected, state file unusable); 4 another fleet process holds the
state file; 130 interrupted (SIGINT); 143 terminated (SIGTERM). An interrupted run resumes
with the same `--run-id`.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import functools
import glob
import json
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

# Ctrl-C while these load (most of fleet's first half second, before any signal handler of
# its own) ends like any other interrupt: one line and 130, not a traceback.
try:
    import anyio
    import structlog
    from rich.console import Console
    from rich.live import Live
    from rich.table import Table

    from fleet import logging as fleet_logging
    from fleet import sim
    from fleet.client import ModelOps, ModelOpsClient, RetryPolicy
    from fleet.config import load_settings
    from fleet.environment import env_name
    from fleet.errors import (
        ConfigError,
        FleetError,
        LeaseHeld,
        LeaseLost,
        RunNotFound,
        StoreError,
        ungrouped,
    )
    from fleet.flags import flag_specs
    from fleet.inputs import check_run_id
    from fleet.metrics import figures_of, push, registry_of, write_registry
    from fleet.models import DEFAULT_PROJECT, ModelEntry, ModelSpec
    from fleet.progress import Progress, RunResult
    from fleet.records import model_outcome
    from fleet.report import render
    from fleet.report.model import RunReport, build_report
    from fleet.report.statefiles import StateFiles
    from fleet.report.status import progress_table, status_document, status_view
    from fleet.scheduler import run
    from fleet.sections import api_section
    from fleet.selection import (
        PlanRow,
        discovered,
        plan_new,
        plan_resume,
        select,
        totals,
        totals_by_project,
    )
    from fleet.settings import Settings
    from fleet.sim.settings import RATE_FIELDS
    from fleet.stages import FINISHED_RUNS, Outcome, RunStatus, StageState
    from fleet.store import Store
    from fleet.throttle import Breaker, Throttle
    from fleet.version import __version__
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

# The demo's emulator runs the longest training (an hour) in 36 s; fleet polls to match.
_DEMO_TIME_SCALE = 100.0
_DEMO_SETTINGS = {
    "concurrency": 200,
    "limits.train": 50,
    "limits.evaluate": 50,
    "limits.deploy": 50,
    "limits.retire": 50,
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
    (StoreError, EXIT_CANNOT_PROCEED, "state file error: "),
    (FleetError, EXIT_CANNOT_PROCEED, "the run could not proceed: "),
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(_joined_shard(sys.argv[1:] if argv is None else argv))
        code: int = args.command(args)
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


# -- parser ----------------------------------------------------------------------------------


def _joined_shard(argv: Sequence[str]) -> list[str]:
    """`--shard -1/4` as `--shard=-1/4`: argparse would take the value for an option and fail
    with its usage text, where the shard's own check says what is wrong in one line."""
    joined: list[str] = []
    for arg in argv:
        if joined and joined[-1] == "--shard" and arg.startswith("-") and arg[1:2].isdigit():
            joined[-1] = f"--shard={arg}"
        else:
            joined.append(arg)
    return joined


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fleet",
        allow_abbrev=False,
        description="Run the Teradata ModelOps lifecycle of hundreds of models at once.",
    )
    parser.add_argument("--version", action="version", version=f"fleet {__version__}")
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")

    run_p = commands.add_parser(
        "run", help="run (or resume) the lifecycle of every model", allow_abbrev=False
    )
    run_p.add_argument("--config", type=Path, help="fleet.toml to read (default ./fleet.toml)")
    which = run_p.add_mutually_exclusive_group()
    which.add_argument(
        "--run-id", type=_run_id("--run-id"), help="name of the run; the same id resumes it"
    )
    which.add_argument(
        "--resume", action="store_true", help="resume the most recent unfinished run"
    )
    which.add_argument(
        "--retry-failed",
        metavar="RUN_ID",
        type=_run_id("--retry-failed"),
        help="re-run a run's failed models from their failed stage",
    )
    _add_selection_flags(run_p)
    _add_setting_flags(run_p)
    run_p.set_defaults(command=_cmd_run)

    _add_plan_parser(commands)

    status_p = commands.add_parser("status", help="where each model of a run is")
    status_p.add_argument(
        "run_id", nargs="?", type=_named_run, help="run id (default: the latest run)"
    )
    _add_db_flag(status_p)
    status_p.add_argument("--json", action="store_true", help="print JSON")
    status_p.set_defaults(command=_cmd_status)

    _add_report_parser(commands)

    sim_p = commands.add_parser("sim", help="serve the ModelOps emulator over HTTP")
    sim_p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    sim_p.add_argument("--port", type=int, default=8080, help="port (0 picks a free one)")
    _add_sim_flags(sim_p)
    sim_defaults = sim.SimSettings()
    sim_p.add_argument("--token", default=sim_defaults.token, help="bearer token to accept")
    sim_p.add_argument("--project-id", default=sim_defaults.project_id, help="the project's id")
    sim_p.add_argument(
        "--models-csv", type=Path, help="also write the models as a CSV for --models-file"
    )
    sim_p.add_argument("--client-id", help="accept OAuth2 client credentials for this client")
    sim_p.add_argument("--client-secret", help="the emulator's test client secret")
    sim_p.add_argument(
        "--token-lifetime", type=float, default=3600.0, help="issued tokens' life (sim seconds)"
    )
    sim_p.add_argument("--tls-cert", type=Path, help="serve HTTPS with this PEM certificate")
    sim_p.add_argument("--tls-key", type=Path, help="the certificate's PEM key")
    sim_p.set_defaults(command=_cmd_sim)

    demo_p = commands.add_parser(
        "demo", help="run fleet against a built-in emulator", allow_abbrev=False
    )
    _add_sim_flags(demo_p, time_scale=_DEMO_TIME_SCALE)
    demo_p.add_argument("--db", type=Path, default=Path("fleet-demo.db"), help="state file")
    demo_p.add_argument(
        "--run-id", type=_run_id("--run-id"), help="name of the run; the same id resumes it"
    )
    _add_setting_flags(demo_p, skip=("api.", "db", "shard"))
    demo_p.set_defaults(command=_cmd_demo)
    return parser


def _run_id(flag: str) -> Callable[[str], str]:
    """The check of a run id given with `flag`: an empty or odd one is refused, never taken
    for "no id" (which starts a new run)."""
    return functools.partial(check_run_id, flag=flag)


def _named_run(value: str) -> str:
    """A run id to read (`status`, `report`): any the state file may hold, but not empty,
    which would silently mean the latest run."""
    if not value.strip():
        raise ConfigError("run id: empty; name a run, or leave it out for the latest run")
    return value


class _SecretOnCommandLine(argparse.Action):
    """A secret given as a flag would show in `ps` and shell history: refuse it."""

    def __call__(self, *_args: object, **_kwargs: object) -> None:
        name = self.dest.removeprefix("secret:")
        raise ConfigError(
            f"{self.option_strings[0]}: secrets are not taken on the command line (they show "
            f"in ps); set {env_name(name)} or api.{name.split('.')[-1]}_file"
        )


def _add_setting_flags(parser: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    for secret in ("api.token", "api.client_secret"):
        if not secret.startswith(skip):
            parser.add_argument(
                "--" + secret.replace("_", "-"),
                dest=f"secret:{secret}",
                action=_SecretOnCommandLine,
                help=argparse.SUPPRESS,
            )
    group = parser.add_argument_group("settings (override fleet.toml and FLEET_* variables)")
    for spec in flag_specs():
        if spec.path.startswith(skip):
            continue
        if spec.switch:
            group.add_argument(
                spec.flag,
                dest=f"setting:{spec.path}",
                default=None,
                nargs="?",
                const="true",
                metavar="true|false",
                help=spec.help or None,
            )
            continue
        group.add_argument(
            spec.flag,
            dest=f"setting:{spec.path}",
            default=None,
            choices=spec.choices,
            metavar=None if spec.choices else "VALUE",
            help=spec.help or None,
        )


def _add_plan_parser(commands: Any) -> None:
    plan_p = commands.add_parser(
        "plan", help="what `fleet run` would do, changing nothing", allow_abbrev=False
    )
    plan_p.add_argument("--config", type=Path, help="fleet.toml to read (default ./fleet.toml)")
    plan_p.add_argument(
        "--run-id", type=_run_id("--run-id"), help="the run to resume (default: a new run)"
    )
    plan_p.add_argument("--json", action="store_true", help="print JSON")
    _add_selection_flags(plan_p)
    _add_setting_flags(plan_p)
    plan_p.set_defaults(command=_cmd_plan)


def _add_report_parser(commands: Any) -> None:
    report_p = commands.add_parser("report", help="what happened to each model of a run")
    report_p.add_argument(
        "run_id", nargs="?", type=_named_run, help="run id (default: the latest run)"
    )
    _add_db_flag(report_p)
    report_p.add_argument(
        "--format", choices=("md", "json", "junit", "html"), default="md", help="report format"
    )
    report_p.add_argument("--output", "-o", type=Path, help="write to this file (mode 0600)")
    report_p.add_argument(
        "--previous", metavar="RUN_ID", type=_named_run, help="compare with this run"
    )
    report_p.add_argument(
        "--slower-factor", type=float, default=1.5, help="a stage this much slower is reported"
    )
    report_p.set_defaults(command=_cmd_report)


def _add_db_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--db",
        action="append",
        metavar="PATH",
        help="state file or glob ('fleet.shard-*.db'); repeatable: the run is merged over them "
        "(default $FLEET_DB or fleet.db)",
    )


def _add_selection_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model selection")
    group.add_argument(
        "--models",
        dest="select_globs",
        action="append",
        default=[],
        metavar="GLOB",
        help="only models whose id or name matches (repeatable)",
    )
    group.add_argument(
        "--tag", dest="select_tags", action="append", default=[], help="only models with a tag"
    )
    group.add_argument(
        "--only-failed",
        metavar="RUN_ID",
        type=_run_id("--only-failed"),
        help="only the models that failed in that run",
    )


def _add_sim_flags(parser: argparse.ArgumentParser, time_scale: float | None = None) -> None:
    defaults = sim.SimSettings()
    parser.add_argument("--models", type=int, default=defaults.models, help="models to serve")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="random seed")
    parser.add_argument(
        "--time-scale",
        type=float,
        default=time_scale or defaults.time_scale,
        help="simulated seconds per real second",
    )
    parser.add_argument("--job-error-rate", type=float, default=0.0, help="jobs ending in ERROR")
    parser.add_argument("--http-500-rate", type=float, default=0.0, help="requests answered 500")
    parser.add_argument("--http-503-rate", type=float, default=0.0, help="requests answered 503")
    parser.add_argument("--http-429-rate", type=float, default=0.0, help="requests answered 429")
    parser.add_argument("--slow-rate", type=float, default=0.0, help="requests answered slowly")
    parser.add_argument(
        "--drop-rate", type=float, default=0.0, help="requests applied, then the connection cut"
    )
    parser.add_argument(
        "--delay-after-rate", type=float, default=0.0, help="requests applied, answer held back"
    )
    parser.add_argument(
        "--delay-after-s", type=float, default=defaults.delay_after_s, help="seconds held back"
    )
    parser.add_argument(
        "--trickle-rate", type=float, default=0.0, help="requests applied, answer sent bytewise"
    )
    parser.add_argument(
        "--trickle-interval-s",
        type=float,
        default=defaults.trickle_interval_s,
        help="seconds between two bytes of a trickled answer",
    )
    parser.add_argument(
        "--fault-methods",
        default="GET,POST",
        help="methods the HTTP faults apply to (GET,POST)",
    )
    parser.add_argument(
        "--stuck-rate", type=float, default=0.0, help="jobs that never end (RUNNING for ever)"
    )
    server = parser.add_argument_group(
        "emulated server (what nothing recorded shows; default: Spring Data REST's answers)"
    )
    server.add_argument(
        "--profile",
        default="default",
        metavar="default|optimistic",
        help="a preset (optimistic: every unverified optimisation works); flags below override",
    )
    shown = sim.Behaviour()
    valued: tuple[tuple[str, str, type[float | int | str], str, str], ...] = (
        ("--job-sort", "job_sort", str, "dropped|honoured|error", "GET /api/jobs?sort=updatedAt"),
        ("--updated-at", "updated_at", str, "absent|fresh|stale", "a job's updatedAt"),
        ("--status-missing-rate", "status_missing_rate", float, "R", "job reads without status"),
        ("--job-types", "job_types", str, "guessed|other", "names of train and retire jobs"),
        (
            "--evaluated-lag",
            "evaluated_lag_s",
            float,
            "S",
            "simulated seconds from an evaluation's end to its EVALUATED event (inf: never)",
        ),
        ("--archived-models", "archived_models", int, "N", "archived models, listed last"),
        (
            "--archived-versions-rate",
            "archived_versions_rate",
            float,
            "R",
            "models with a newer, archived version",
        ),
        ("--events-listing", "events_listing", str, "hal|list|absent", "a version's events"),
    )
    for flag, name, kind, metavar, text in valued:
        server.add_argument(
            flag,
            dest=f"behaviour:{name}",
            type=kind,
            metavar=metavar,
            help=f"{text} (default {getattr(shown, name)})",
        )
    for flag, name, text in (
        ("--status-finder", "status_finder", "serve GET /api/jobs/search/findByStatusIn"),
        ("--job-history", "job_history", "last night's jobs are in the job list"),
        ("--deployed-version-status", "deployed_version_status", "a deployed version: DEPLOYED"),
    ):
        server.add_argument(
            flag,
            dest=f"behaviour:{name}",
            action=argparse.BooleanOptionalAction,
            help=f"{text} (default {'on' if getattr(shown, name) else 'off'})",
        )


def _setting_flags(args: argparse.Namespace) -> dict[str, Any]:
    return {
        key.removeprefix("setting:"): value
        for key, value in vars(args).items()
        if key.startswith("setting:") and value is not None
    }


def _sim_settings(args: argparse.Namespace, **extra: Any) -> sim.SimSettings:
    if args.models < 1:
        raise ConfigError("--models: must be at least 1")
    if args.time_scale <= 0:
        raise ConfigError("--time-scale: must be greater than 0")
    overrides = {
        key.removeprefix("behaviour:"): value
        for key, value in vars(args).items()
        if key.startswith("behaviour:") and value is not None
    }
    try:
        return sim.SimSettings(
            models=args.models,
            seed=args.seed,
            time_scale=args.time_scale,
            **{name: getattr(args, name) for name in RATE_FIELDS},
            delay_after_s=args.delay_after_s,
            trickle_interval_s=args.trickle_interval_s,
            fault_methods=tuple(m.strip().upper() for m in args.fault_methods.split(",")),
            behaviour=sim.Behaviour.profile(args.profile, **overrides),
            **extra,
        )
    except ValueError as exc:
        raise ConfigError(f"emulator: {exc}") from None


# -- commands --------------------------------------------------------------------------------


def _cmd_run(args: argparse.Namespace) -> int:
    settings = load_settings(args.config, _setting_flags(args))
    settings.require_api()
    settings.require_paths()
    _configure_logging(settings, explicit=args.__dict__.get("setting:log_level") is not None)
    run_id = args.retry_failed or args.run_id
    if (args.resume or args.retry_failed) and not settings.db.is_file():
        raise ConfigError(f"--db: {settings.db} does not exist; name the state file of the run")
    if args.resume:
        run_id = anyio.run(_unfinished_run, settings.db)
    return anyio.run(
        functools.partial(
            _run_with_client,
            settings,
            run_id,
            retry_failed=args.retry_failed is not None,
            selection=_Selection.of(args),
        )
    )


@dataclass(frozen=True, slots=True)
class _Selection:
    globs: tuple[str, ...]
    tags: tuple[str, ...]
    only_failed: str | None

    @classmethod
    def of(cls, args: argparse.Namespace) -> _Selection:
        return cls(tuple(args.select_globs), tuple(args.select_tags), args.only_failed)


async def _chosen_models(
    settings: Settings, selection: _Selection, clients: Mapping[str, ModelOps]
) -> list[ModelSpec]:
    """The models of a new run: config + discovery, the shard, then the selection flags.

    `clients` are those of the projects to discover models in."""
    settings.require_datasets()  # before discovery's requests: a config error costs none
    found = {name: await discovered(api, settings, name) for name, api in clients.items()}
    only = None
    if selection.only_failed is not None:
        if not await anyio.Path(settings.db).is_file():
            raise ConfigError(f"--only-failed: {settings.db} does not exist; no run to take from")
        async with Store.open(settings.db, readonly=True) as store:
            models = await store.models((await store.run(selection.only_failed)).id)
        only = frozenset(m.spec.id for m in models if model_outcome(m) is Outcome.FAILED)
    every = settings.model_specs(found)
    specs = select(
        every, globs=selection.globs, tags=selection.tags, only=only, shard=settings.shard
    )
    if settings.shard is not None:
        log.info(
            "fleet.shard.selected",
            shard=str(settings.shard),
            models=len(specs),
            of_models=len(every),
            db=str(settings.db),
        )
    if not specs:
        where = f" in shard {settings.shard}" if settings.shard is not None else ""
        raise ConfigError(
            f"models: none selected{where}; add [[models]], a models_file or [discover] names, "
            "or loosen --models/--tag/--only-failed"
        )
    return specs


async def _unfinished_run(db: Path) -> str:
    async with Store.open(db) as store:
        record = await store.latest_unfinished_run(FINISHED_RUNS)
    if record is None:
        raise ConfigError(f"--resume: {db} holds no unfinished run; start one with --run-id")
    return record.id


async def _run_with_client(
    settings: Settings,
    run_id: str | None,
    *,
    retry_failed: bool = False,
    selection: _Selection | None = None,
) -> int:
    for warning in settings.warnings:
        log.warning("fleet.config.secret_in_file", detail=warning)
    async with AsyncExitStack() as stack:
        # One client per project: its own token, connections, throttle and breaker, so one
        # project's server failing or throttling does not slow the others'.
        clients = {
            name: await stack.enter_async_context(_client(settings, name))
            for name in settings.every_project()
        }
        specs = None
        if not retry_failed and not await _run_exists(settings.db, run_id):
            discovering = {
                name: clients[name]
                for name, project in settings.every_project().items()
                if project.discover.names
            }
            specs = await _chosen_models(
                settings, selection or _Selection((), (), None), discovering
            )
        return await _drive(settings, clients, run_id, retry_failed=retry_failed, specs=specs)


def _client(settings: Settings, project: str) -> ModelOpsClient:
    """The API client of one project (`settings.require_api()` has checked its settings)."""
    api = settings.every_project()[project].api
    assert api.url is not None
    assert api.project_id is not None
    verify: bool | str = api.verify_tls
    if api.verify_tls and api.ca_bundle is not None:
        verify = str(api.ca_bundle)
    return ModelOpsClient(
        api.url,
        api.project_id,
        api.token_source(api_section(project)),
        verify=verify,
        timeout_s=api.timeout,
        max_connections=settings.max_connections,
        retry=RetryPolicy(attempts=api.retry_attempts, budget_s=api.retry_budget),
        throttle=Throttle(max_rps=settings.max_rps),
        breaker=Breaker(budget_s=api.outage_budget),
    )


async def _run_exists(db: Path, run_id: str | None) -> bool:
    if run_id is None or not await anyio.Path(db).is_file():
        return False
    async with Store.open(db) as store:
        return await store.find_run(run_id) is not None


def _cmd_demo(args: argparse.Namespace) -> int:
    sim_settings = _sim_settings(args)
    flags = {**_DEMO_SETTINGS, **_setting_flags(args), "db": args.db}
    settings = load_settings(None, flags, use_default_file=False)
    settings.require_paths()
    _configure_logging(settings, explicit=args.__dict__.get("setting:log_level") is not None)
    return anyio.run(_demo, settings, sim_settings, args.run_id)


async def _demo(settings: Settings, sim_settings: sim.SimSettings, run_id: str | None) -> int:
    world, app = sim.build(sim_settings)
    fleet_logging.redactor.add(sim_settings.token)
    async with sim.serve(app) as url:
        _say(f"ModelOps emulator on {url} with {sim_settings.models} models")
        async with ModelOpsClient(
            url,
            sim_settings.project_id,
            sim_settings.token,
            max_connections=settings.max_connections,
            # The emulator answers at once; retries only need to ride out injected faults.
            retry=RetryPolicy(initial_s=0.05, max_s=1.0),
            throttle=Throttle(max_rps=settings.max_rps),
            breaker=Breaker(budget_s=settings.api.outage_budget),
        ) as api:
            models = await api.list_models()
            entries = tuple(ModelEntry(id=m.id, name=m.name) for m in models if not m.archived)
            # The emulator's datasets, as an operator names theirs in [defaults].
            datasets = {
                "train_dataset_id": world.train_dataset_id,
                "evaluate_dataset_id": world.eval_dataset_id,
            }
            defaults = settings.defaults.model_copy(update=datasets)
            settings = settings.model_copy(update={"models": entries, "defaults": defaults})
            code = await _drive(settings, {DEFAULT_PROJECT: api}, run_id)
    stats = world.stats()
    _say(
        f"emulator: {stats['requests_total']} requests, jobs {stats['jobs_by_type']}, "
        f"max jobs per model and type {stats['max_jobs_per_model_and_type']}"
    )
    return code


def _cmd_sim(args: argparse.Namespace) -> int:
    settings = _sim_settings(
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
    settings = load_settings(args.config, _setting_flags(args))
    _configure_logging(settings, explicit=False)
    rows, header = anyio.run(_plan, settings, args.run_id, _Selection.of(args))
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
    settings: Settings, run_id: str | None, selection: _Selection
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
    async with AsyncExitStack() as stack:
        clients = {
            name: await stack.enter_async_context(_client(settings, name)) for name in discovering
        }
        specs = await _chosen_models(settings, selection, clients)
    stages = ",".join(settings.active_stages())
    header = f"a new run of {len(specs)} models ({stages}){_shard_note(settings)} would:"
    return plan_new(specs, settings), header


def _shard_note(settings: Settings) -> str:
    if settings.shard is None:
        return ""
    return f" in shard {settings.shard} (state file {settings.db})"


def _cmd_report(args: argparse.Namespace) -> int:
    dbs = _state_files(args.db)
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


def _state_files(given: Sequence[str] | None) -> list[Path]:
    """The files `--db` names, each once in the order given: paths, or glob patterns the
    shell left alone (quoted, or from $FLEET_DB), expanded here in sorted order."""
    paths: list[Path] = []
    for pattern in given or [os.environ.get("FLEET_DB") or "fleet.db"]:
        if Path(pattern).is_file() or not any(c in pattern for c in "*?["):
            paths.append(Path(pattern))
            continue
        # An absolute pattern is common (/data/fleet.shard-*.db); Path.glob takes relative ones.
        matches = [
            Path(m)
            for m in sorted(glob.glob(pattern))  # noqa: PTH207
            if not m.endswith(("-wal", "-shm", "-journal", "-commits"))  # files beside a state file
        ]
        if not matches:
            raise ConfigError(f"--db: no file matches {pattern}; pass the state files of a run")
        paths.extend(matches)
    unique: dict[Path, Path] = {}
    for path in paths:
        if path.exists() and not path.is_file():
            raise ConfigError(f"--db: {path} is a directory, not a state file; name the file")
        if not path.is_file():
            raise ConfigError(f"--db: {path} does not exist; pass the state file of a run")
        if path.stat().st_size == 0:
            raise ConfigError(
                f"--db: {path} is empty: no run was ever recorded in it; pass the state file "
                "of a run"
            )
        unique.setdefault(path.resolve(), path)  # a file named twice is read once
    return list(unique.values())


def _write_private(path: Path, text: str) -> None:
    """Reports name models, jobs and errors: readable by their owner only."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)


def _cmd_status(args: argparse.Namespace) -> int:
    document = anyio.run(status_document, _state_files(args.db), args.run_id)
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


async def _drive(
    settings: Settings,
    clients: Mapping[str, ModelOpsClient],
    run_id: str | None,
    *,
    retry_failed: bool = False,
    specs: list[ModelSpec] | None = None,
) -> int:
    progress = Progress()
    shutdown = _Shutdown(settings.grace_period)
    stop = anyio.Event()
    result: RunResult | None = None
    with ungrouped():
        async with Store.open(settings.db) as store, anyio.create_task_group() as tg:

            async def run_then_stop() -> None:
                nonlocal result
                started = time.time()
                result = await run(
                    settings,
                    clients,
                    store,
                    run_id=run_id,
                    progress=progress,
                    stop=stop,
                    retry_failed=retry_failed,
                    specs=specs,
                )
                await _publish_metrics(
                    settings,
                    store,
                    result=result,
                    progress=progress,
                    clients=clients,
                    started=started,
                    timeout_s=shutdown.remaining(),
                )
                tg.cancel_scope.cancel()

            tg.start_soon(_watch_signals, tg.cancel_scope, stop, shutdown)
            tg.start_soon(_show_progress, progress, settings.progress_interval)
            tg.start_soon(run_then_stop)
    if shutdown.signals:
        _error("interrupted: the run's state is saved; run again with the same --run-id")
        return EXIT_SIGTERM if shutdown.signals[0] == signal.SIGTERM else EXIT_SIGINT
    assert result is not None
    return _report(result, fail_on_reject=settings.fail_on_reject)


async def _publish_metrics(
    settings: Settings,
    store: Store,
    *,
    result: RunResult,
    progress: Progress,
    clients: Mapping[str, ModelOpsClient],
    started: float,
    timeout_s: float | None = None,
) -> None:
    """The run's Prometheus metrics, to a textfile and/or a Pushgateway, if configured: the
    figures of each project (labelled with its id), from its models and its client.

    `timeout_s`: what is left of the grace period after a signal, which bounds the pushes."""
    if settings.metrics_file is None and settings.pushgateway is None:
        return
    several = len(clients) > 1
    figures = {
        client.project_id: await figures_of(
            store, result, progress, client, started_at=started, project=name if several else None
        )
        for name, client in clients.items()
    }
    if settings.metrics_file is not None:
        try:
            write_registry(registry_of(figures), settings.metrics_file)
        except FleetError as exc:
            log.warning(
                "fleet.metrics.write_failed", path=str(settings.metrics_file), error=str(exc)
            )
    if settings.pushgateway is not None:
        for project, of_project in figures.items():
            try:
                push(
                    of_project,
                    settings.pushgateway,
                    project=project,
                    timeout=_push_timeout(timeout_s),
                )
            except FleetError as exc:
                log.warning("fleet.metrics.push_failed", project=project, error=str(exc))


# Seconds one push to a Pushgateway may take.
_PUSH_TIMEOUT_S = 10.0
# After a signal, what is still draining is cancelled early enough to leave this part of the
# grace period (at most half of it, and at most 5 s) to what follows the cancellation: the
# interrupted status written, the lease released, the state file and connections closed, the
# metrics published. The whole shutdown then fits in grace_period, as a pod's
# terminationGracePeriodSeconds requires; cancelling only at its end overran it.
_RESERVE_SHARE = 0.2
_RESERVE_MIN_S = 1.0
_RESERVE_MAX_S = 5.0


def _push_timeout(remaining_s: float | None) -> float:
    """A push's timeout: half of what is left of the grace period after a signal (the rest is
    for closing down), else the usual."""
    if remaining_s is None:
        return _PUSH_TIMEOUT_S
    return max(0.1, min(remaining_s / 2, _PUSH_TIMEOUT_S))


def grace_deadlines(received: float, grace_s: float) -> tuple[float, float]:
    """For a first signal received at `received` (a clock's seconds): when to cancel what is
    still draining, and when the process must be gone."""
    reserve = min(grace_s / 2, max(grace_s * _RESERVE_SHARE, _RESERVE_MIN_S), _RESERVE_MAX_S)
    return received + grace_s - reserve, received + grace_s


@dataclass
class _Shutdown:
    """The signals received (the first decides the exit code) and, once one came, the event
    loop's time by which fleet must have exited."""

    grace_s: float
    signals: list[int] = dataclasses.field(default_factory=list)
    exit_by: float | None = None

    def remaining(self) -> float | None:
        """Seconds left before `exit_by` (None: no signal yet, no limit)."""
        if self.exit_by is None:
            return None
        return max(0.0, self.exit_by - anyio.current_time())


async def _watch_signals(scope: anyio.CancelScope, stop: anyio.Event, shutdown: _Shutdown) -> None:
    """First signal: drain (admit and submit nothing new), then cancel at the first of
    `grace_deadlines`, so that all that follows fits in the grace period.

    A second signal cancels at once. Either way every step taken is already recorded.
    """
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            shutdown.signals.append(signum)
            log.warning(
                "fleet.run.signal",
                signal=signal.Signals(signum).name,
                grace_period_s=shutdown.grace_s,
            )
            if stop.is_set():
                break
            stop.set()
            cancel_at, shutdown.exit_by = grace_deadlines(anyio.current_time(), shutdown.grace_s)
            with anyio.move_on_after(cancel_at - anyio.current_time()):
                async for _ in signals:
                    break
            break
    scope.cancel()


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


# -- status ----------------------------------------------------------------------------------


# -- output ----------------------------------------------------------------------------------


def _configure_logging(settings: Settings, *, explicit: bool) -> None:
    level = settings.log_level
    if sys.stdout.isatty() and not explicit and level == "info":
        level = "warning"  # the live display shows progress; per-stage lines would drown it
    fleet_logging.configure(level=level)
    for project in settings.every_project().values():
        fleet_logging.redactor.add(*project.api.secrets())
        fleet_logging.redactor.add_url(project.api.url)
        fleet_logging.redactor.add_url(project.api.token_url)
    fleet_logging.redactor.add(*settings.api.secrets())
    fleet_logging.redactor.add_url(settings.pushgateway)  # its password


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


__all__ = ["main"]
