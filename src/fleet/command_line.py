"""The `fleet` command line: its commands and flags (argparse), and the values they give.

cli.py runs the command a parsed line names; this module only builds the parser and turns
what it parsed into fleet's values: setting overrides, a `RunRequest`, emulator settings.
`set_defaults(command=...)` names each command by its word (`run`, `plan`, ...).
"""

from __future__ import annotations

import argparse
import functools
import glob
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fleet.batch import RunRequest
from fleet.environment import env_name
from fleet.errors import ConfigError
from fleet.flags import flag_specs
from fleet.inputs import check_run_id
from fleet.report.model import FORMATS
from fleet.selection import Selection
from fleet.sim.behaviour import Behaviour
from fleet.sim.settings import RATE_FIELDS, SimSettings
from fleet.version import __version__

# The demo's emulator runs the longest training (an hour) in 36 s; fleet polls to match.
DEMO_TIME_SCALE = 100.0


def joined_shard(argv: Sequence[str]) -> list[str]:
    """`--shard -1/4` as `--shard=-1/4`: argparse would take the value for an option and fail
    with its usage text, where the shard's own check says what is wrong in one line."""
    joined: list[str] = []
    for arg in argv:
        if joined and joined[-1] == "--shard" and arg.startswith("-") and arg[1:2].isdigit():
            joined[-1] = f"--shard={arg}"
        else:
            joined.append(arg)
    return joined


def build_parser() -> argparse.ArgumentParser:
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
    run_p.set_defaults(command="run")

    _add_plan_parser(commands)

    status_p = commands.add_parser("status", help="where each model of a run is")
    status_p.add_argument(
        "run_id", nargs="?", type=_named_run, help="run id (default: the latest run)"
    )
    _add_db_flag(status_p)
    status_p.add_argument("--json", action="store_true", help="print JSON")
    status_p.set_defaults(command="status")

    _add_report_parser(commands)

    sim_p = commands.add_parser("sim", help="serve the ModelOps emulator over HTTP")
    sim_p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    sim_p.add_argument("--port", type=int, default=8080, help="port (0 picks a free one)")
    _add_sim_flags(sim_p)
    sim_defaults = SimSettings()
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
    sim_p.set_defaults(command="sim")

    demo_p = commands.add_parser(
        "demo", help="run fleet against a built-in emulator", allow_abbrev=False
    )
    _add_sim_flags(demo_p, time_scale=DEMO_TIME_SCALE)
    demo_p.add_argument("--db", type=Path, default=Path("fleet-demo.db"), help="state file")
    demo_p.add_argument(
        "--run-id", type=_run_id("--run-id"), help="name of the run; the same id resumes it"
    )
    _add_setting_flags(demo_p, skip=("api.", "db", "shard"))
    demo_p.set_defaults(command="demo")
    return parser


def state_files(given: Sequence[str] | None) -> list[Path]:
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
    plan_p.set_defaults(command="plan")


def _add_report_parser(commands: Any) -> None:
    report_p = commands.add_parser("report", help="what happened to each model of a run")
    report_p.add_argument(
        "run_id", nargs="?", type=_named_run, help="run id (default: the latest run)"
    )
    _add_db_flag(report_p)
    report_p.add_argument("--format", choices=FORMATS, default="md", help="report format")
    report_p.add_argument("--output", "-o", type=Path, help="write to this file (mode 0600)")
    report_p.add_argument(
        "--previous", metavar="RUN_ID", type=_named_run, help="compare with this run"
    )
    report_p.add_argument(
        "--slower-factor", type=float, default=1.5, help="a stage this much slower is reported"
    )
    report_p.set_defaults(command="report")


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
    defaults = SimSettings()
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
    shown = Behaviour()
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


def setting_flags(args: argparse.Namespace) -> dict[str, Any]:
    return {
        key.removeprefix("setting:"): value
        for key, value in vars(args).items()
        if key.startswith("setting:") and value is not None
    }


def sim_settings(args: argparse.Namespace, **extra: Any) -> SimSettings:
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
        return SimSettings(
            models=args.models,
            seed=args.seed,
            time_scale=args.time_scale,
            **{name: getattr(args, name) for name in RATE_FIELDS},
            delay_after_s=args.delay_after_s,
            trickle_interval_s=args.trickle_interval_s,
            fault_methods=tuple(m.strip().upper() for m in args.fault_methods.split(",")),
            behaviour=Behaviour.profile(args.profile, **overrides),
            **extra,
        )
    except ValueError as exc:
        raise ConfigError(f"emulator: {exc}") from None


def run_request(args: argparse.Namespace) -> RunRequest:
    """`fleet run`'s run and models: --run-id, --resume or --retry-failed; the selection."""
    return RunRequest(
        run_id=args.retry_failed or args.run_id,
        resume=args.resume,
        retry_failed=args.retry_failed is not None,
        selection=selection_of(args),
    )


def selection_of(args: argparse.Namespace) -> Selection:
    """The models a new run takes: --models globs, --tag, --only-failed."""
    return Selection(tuple(args.select_globs), tuple(args.select_tags), args.only_failed)
