"""`run_batch`: a night of fleet from Python, the settings in and the run's result out.

    import fleet

    settings = fleet.load_settings(Path("fleet.toml"))
    result = await fleet.run_batch(settings)

It builds each project's API client from the settings, discovers and selects the models of a
new run (configured, `[discover]`ed, the shard, then the request's `Selection`), plans the run
(`plan_of`: the one place the settings become the engine's frozen values), runs it
(scheduler.py), publishes its metrics (a textfile, a Pushgateway) and returns its `RunResult`.
Nothing here prints: the CLI wraps it with signals, the live view and exit codes.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field

import anyio
import structlog

from fleet import scheduler
from fleet.breaker import Breaker
from fleet.client import ModelOpsClient
from fleet.errors import ConfigError
from fleet.metrics import figures_of, publish, push_timeout
from fleet.models import ModelSpec
from fleet.plan import ProjectBounds, RunPlan, run_id_of
from fleet.polling import PollMode
from fleet.progress import Progress, RunResult
from fleet.records import utc_now
from fleet.retries import RetryPolicy
from fleet.secrets import redactor
from fleet.sections import ProjectLimits, api_section
from fleet.selection import Selection, chosen_models
from fleet.session import Pacing
from fleet.settings import Settings
from fleet.stages import FINISHED_RUNS, STAGE_ORDER, Stage
from fleet.store import Store
from fleet.throttle import Throttle
from fleet.transport import HttpOptions

log = structlog.get_logger("fleet.batch")

# Models in flight per job slot when `concurrency` is not set: enough waiting for a slot that
# a free one always goes to a long chain of jobs, few enough to keep memory flat.
DEFAULT_IN_FLIGHT_PER_JOB = 4


@dataclass(frozen=True, slots=True)
class RunRequest:
    """Which run: a new one (named `run_id`, or now), the same `run_id` resumed, the state
    file's latest unfinished run (`resume`), or run `run_id`'s failed models again
    (`retry_failed`); and which models a new run takes (`selection`)."""

    run_id: str | None = None
    resume: bool = False
    retry_failed: bool = False
    selection: Selection = field(default_factory=Selection)

    def __post_init__(self) -> None:
        if self.resume and self.run_id is not None:
            raise ConfigError("resume: takes the latest unfinished run; name no run id with it")
        if self.retry_failed and self.run_id is None:
            raise ConfigError("retry_failed: name the run whose failed models to run again")


async def run_batch(
    settings: Settings,
    *,
    request: RunRequest | None = None,
    stop: anyio.Event | None = None,
    progress: Progress | None = None,
    time_left: Callable[[], float | None] | None = None,
) -> RunResult:
    """Run (or resume) one batch of model lifecycles as `settings` and `request` say.

    Setting `stop` drains the run: nothing new is admitted or submitted, jobs in flight go on
    on the server, and the run is recorded as interrupted (the same run id resumes it).
    `progress` receives the live counts. `time_left` says, once `stop` is set, how many
    seconds of a grace period are left (None: no limit): it bounds the metrics pushes.
    """
    request = request or RunRequest()
    progress = progress or Progress()
    redact_secrets(settings)
    settings.require_api()
    settings.require_paths()
    for warning in settings.warnings:
        log.warning("fleet.config.secret_in_file", detail=warning)
    run_id, exists = await _which_run(settings, request)
    async with project_clients(settings, settings.every_project()) as clients:
        specs: Sequence[ModelSpec] = ()
        if not request.retry_failed and not exists:
            discovering = {
                name: clients[name]
                for name, project in settings.every_project().items()
                if project.discover.names
            }
            specs = await chosen_models(settings, request.selection, discovering)
        plan = plan_of(settings, run_id=run_id, specs=specs, retry_failed=request.retry_failed)
        async with Store.open(settings.db) as store:
            started = time.time()
            controls = scheduler.Controls(progress=progress, stop=stop)
            result = await scheduler.run(plan, clients, store, controls=controls)
            if settings.metrics_file is not None or settings.pushgateway is not None:
                figures = await figures_of(store, result, progress, clients, started_at=started)
                publish(
                    figures,
                    textfile=settings.metrics_file,
                    gateway=settings.pushgateway,
                    timeout=push_timeout(time_left() if time_left is not None else None),
                )
    return result


def redact_secrets(settings: Settings) -> None:
    """Teach the process's redactor the secrets the settings hold (tokens, client secrets,
    passwords in URLs): no log line, error, state file or report shows them from now on."""
    for project in settings.every_project().values():
        redactor.add(*project.api.secrets())
        redactor.add_url(project.api.url)
        redactor.add_url(project.api.token_url)
    redactor.add(*settings.api.secrets())
    redactor.add_url(settings.pushgateway)  # its password


def plan_of(
    settings: Settings,
    *,
    run_id: str | None = None,
    specs: Sequence[ModelSpec] | None = None,
    retry_failed: bool = False,
) -> RunPlan:
    """The run `settings` describe, as the engine's frozen values (the engine reads no
    setting but through this). `specs`: the models of a new run (default: the configured
    ones; none are needed to resume a run, which has its own); `run_id` None names a new run."""
    if specs is None:
        specs = settings.model_specs()
    settings.require_datasets(specs)
    active = settings.active_stages()
    return RunPlan(
        run_id=run_id_of(run_id),
        stages=STAGE_ORDER[: STAGE_ORDER.index(active[-1]) + 1],
        first_stage=active[0],
        from_version=settings.from_version,
        specs=tuple(specs),
        summary=_settings_summary(settings),
        concurrency=settings.concurrency or DEFAULT_IN_FLIGHT_PER_JOB * settings.jobs,
        jobs=settings.jobs,
        limits={stage: settings.limits.of(stage) or settings.jobs for stage in Stage},
        attempts={stage: settings.attempts.of(stage) for stage in Stage},
        projects={name: _bounds(p.limits) for name, p in settings.every_project().items()},
        poll_interval=settings.poll_interval,
        poll_floor=settings.poll_floor,
        poll_mode=PollMode(settings.poll_mode),
        job_timeouts=settings.job_timeout.model_dump(),
        result_wait=settings.result_wait,
        max_failures=settings.max_failures,
        min_success_ratio=settings.min_success_ratio,
        lease_ttl=settings.lease_ttl,
        history=settings.history,
        stop_training_at=settings.stop_training_at(utc_now()),
        retry_failed=retry_failed,
    )


def _bounds(limits: ProjectLimits) -> ProjectBounds:
    own = {stage: limit for stage in Stage if (limit := limits.of(stage)) is not None}
    return ProjectBounds(concurrency=limits.concurrency, jobs=limits.jobs, limits=own)


def _settings_summary(settings: Settings) -> str:
    """What the run was started with, for reports; secrets are excluded, never stored."""
    secrets = {"token", "client_secret"}
    data = settings.model_dump(
        mode="json",
        exclude={
            "models": True,
            "api": secrets,
            "projects": {"__all__": {"models": True, "api": secrets}},
        },
    )
    return json.dumps(data, sort_keys=True)


@asynccontextmanager
async def project_clients(
    settings: Settings, names: Iterable[str]
) -> AsyncIterator[dict[str, ModelOpsClient]]:
    """The API clients of the projects named, open for the block.

    One client per project: its own token, connections, throttle and breaker, so one
    project's server failing or throttling does not slow the others'."""
    async with AsyncExitStack() as stack:
        yield {
            name: await stack.enter_async_context(project_client(settings, name)) for name in names
        }


def project_client(settings: Settings, project: str) -> ModelOpsClient:
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
        http=HttpOptions(
            verify=verify, timeout_s=api.timeout, max_connections=settings.max_connections
        ),
        pacing=Pacing(
            throttle=Throttle(max_rps=settings.max_rps),
            breaker=Breaker(budget_s=api.outage_budget),
            retry=RetryPolicy(attempts=api.retry_attempts, budget_s=api.retry_budget),
        ),
    )


async def _which_run(settings: Settings, request: RunRequest) -> tuple[str | None, bool]:
    """The run the request names (with `resume`, the state file's latest unfinished run), and
    whether the state file holds it already: one look at the file, before any request."""
    if not await anyio.Path(settings.db).is_file():
        if request.resume or request.retry_failed:
            raise ConfigError(f"--db: {settings.db} does not exist; name the state file of the run")
        return request.run_id, False
    async with Store.open(settings.db) as store:
        if not request.resume:
            found = request.run_id is not None and await store.find_run(request.run_id)
            return request.run_id, bool(found)
        record = await store.latest_unfinished_run(FINISHED_RUNS)
    if record is None:
        raise ConfigError(
            f"--resume: {settings.db} holds no unfinished run; start one with --run-id"
        )
    return record.id, True
