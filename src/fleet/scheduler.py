"""The run: admit models in a fixed order, bound them globally and per stage, resume by run id.

A pool of `concurrency` workers in one anyio task group takes models in admission order, so
memory grows with the models in flight, not with the size of the fleet. Each stage has a
`CapacityLimiter` that bounds its remote jobs (or approval calls) at once.

A run may span several ModelOps projects (`[projects]`). Each has its own `Context`: its client,
its job watcher, and the run's stage limiters or its own. A free worker takes the first model
(in admission order) whose project is ready and under the project's own `concurrency`, so a
project at its bound never holds the others' models back. A project that cannot go on (its
token rejected, its server down past the outage budget) stops alone: its models in flight are
cancelled where they stand (every step taken is recorded) and the rest wait for the next start;
the other projects run to the end, and the run ends `aborted`, naming the project.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import socket
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

import anyio
import structlog

from fleet.client import ModelOps
from fleet.errors import (
    ApiError,
    ConfigError,
    FleetError,
    LeaseLost,
    RunAborted,
    RunNotFound,
    StoreError,
    ungrouped,
)
from fleet.inputs import check_run_id
from fleet.lifecycle import Context, run_model, transition, watching
from fleet.models import DEFAULT_PROJECT, ModelSpec
from fleet.polling import PollMode
from fleet.progress import Failure, Progress, ProjectProgress, RunResult
from fleet.records import Lease, ModelRecord, RunRecord, model_outcome, utc_now
from fleet.sections import ProjectLimits
from fleet.settings import Settings
from fleet.stages import STAGE_ORDER, Outcome, RunStatus, Stage, StageState
from fleet.store import Store

log = structlog.get_logger("fleet.scheduler")


def new_run_id(now: datetime | None = None) -> str:
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{secrets.token_hex(3)}"


def _run_id(given: str | None) -> str:
    """Only an absent id is made up: an empty one (a template that expanded to nothing) would
    be a new night on every start."""
    return new_run_id() if given is None else check_run_id(given, "run_id")


async def run(
    settings: Settings,
    api: ModelOps | Mapping[str, ModelOps],
    store: Store,
    *,
    run_id: str | None = None,
    progress: Progress | None = None,
    sleep: Callable[[float], Awaitable[None]] | None = None,
    clock: Callable[[], float] | None = None,
    rng: random.Random | None = None,
    stop: anyio.Event | None = None,
    retry_failed: bool = False,
    specs: Sequence[ModelSpec] | None = None,
) -> RunResult:
    """Run (or resume) the lifecycle of every model; the run's state is in `store`.

    `api` is the client of each project by name, or the client of the one project of a
    configuration without `[projects]`.

    Setting `stop` drains the run: no new model is admitted and no new job submitted, jobs in
    flight are left running on the server, and the run is recorded as interrupted. `sleep`
    and `clock` (monotonic seconds) go together: tests pass a virtual pair.
    """
    progress = progress or Progress()
    stop = stop or anyio.Event()
    clients = dict(api) if isinstance(api, Mapping) else {DEFAULT_PROJECT: api}
    run_id = _run_id(run_id)
    started = time.monotonic()
    async with _leased(store, settings.lease_ttl):
        existing = await store.find_run(run_id)
        if retry_failed and existing is None:
            raise RunNotFound(f"run {run_id!r} is not in the state file")
        status = RunStatus.RUNNING if existing is None else _status_of(existing)
        if status.finished and existing is not None:
            result = await summarize(store, existing, elapsed_s=0.0, resumed=True)
            if not (retry_failed and result.failed):
                log.info("fleet.run.already_finished", run_id=run_id, status=status)
                return replace(result, status=status)
        if existing is None:
            active = settings.active_stages()
            stages = STAGE_ORDER[: STAGE_ORDER.index(active[-1]) + 1]
            first = active[0]
            specs = settings.model_specs() if specs is None else specs
            settings.require_datasets(specs)
            await store.create_run(run_id, stages, specs, _settings_summary(settings), first)
        else:
            stages = existing.stages
            first = existing.from_stage or Stage.TRAIN
        models = await store.models(run_id)
        names = _projects_of(run_id, models, clients)
        if existing is not None:
            status = await _set_status(store, run_id, status, RunStatus.RUNNING)
        ctx = Context(
            run_id=run_id,
            api=clients[names[0]],
            store=store,
            limiters={stage: anyio.CapacityLimiter(settings.limits.of(stage)) for stage in Stage},
            poll_interval=settings.poll_interval,
            progress=progress,
            sleep=sleep or _interruptible(stop),
            rng=rng or random.Random(),  # noqa: S311 - jitter, not security
            max_attempts={stage: settings.attempts.of(stage) for stage in Stage},
            draining=stop,
            first_stage=first,
            from_version=settings.from_version,
            stop_training_at=settings.stop_training_at(utc_now()),
            clock=clock or time.monotonic,
            expected=await store.durations(run_id),
            poll_floor=settings.poll_floor,
            poll_mode=PollMode(settings.poll_mode),
            job_timeouts=settings.job_timeout.model_dump(),
            result_wait=settings.result_wait,
        )
        if retry_failed:
            models = await _reopen_failed(ctx, models)
        progress.start(models, stages)
        log.info(
            "fleet.run.started",
            run_id=run_id,
            models=len(models),
            resumed=existing is not None,
            stages=",".join(stages),
            **({"projects": ",".join(names)} if len(names) > 1 else {}),
        )
        policy = FailurePolicy(settings.max_failures, settings.min_success_ratio)
        projects = _projects(settings, ctx, clients, names, progress)
        try:
            await _drive(
                projects,
                _longest_first(models, ctx.expected),
                stages,
                concurrency=settings.concurrency,
                policy=policy,
                progress=progress,
                stop=stop,
            )
        except BaseException:
            with anyio.CancelScope(shield=True):
                await _set_status(store, run_id, status, RunStatus.INTERRUPTED)
                log.warning("fleet.run.interrupted", run_id=run_id)
            raise
        record = await store.run(run_id)
        result = await summarize(
            store, record, elapsed_s=time.monotonic() - started, resumed=existing is not None
        )
        stopped = [p for p in projects.values() if p.error is not None]
        aborted = stopped[0].error if stopped else None
        why = "; ".join(p.why() for p in stopped) or None
        ending, reason = _final_status(result, why, stop, policy, ctx.stop_training_at)
        status = await _set_status(store, run_id, status, ending, reason)
    log.info(
        "fleet.run.finished",
        run_id=run_id,
        status=status,
        reason=reason,
        succeeded=result.succeeded,
        failed=len(result.failed),
        pending=result.pending,
        elapsed_s=round(result.elapsed_s, 3),
    )
    return replace(result, status=status, aborted=aborted, reason=reason)


async def _set_status(
    store: Store, run_id: str, now: RunStatus, to: RunStatus, reason: str | None = None
) -> RunStatus:
    """The one place a run's status changes: held to `RUN_MOVES`, stamped finished or not."""
    await store.set_run_status(run_id, now.move(to), finished=to.finished, reason=reason)
    return to


def _status_of(record: RunRecord) -> RunStatus:
    try:
        return RunStatus(record.status)
    except ValueError:
        raise StoreError(
            f"run {record.id} has status {record.status!r}, which this fleet does not know "
            "(a newer fleet wrote it); resume it with that version"
        ) from None


def _final_status(
    result: RunResult,
    aborted: str | None,
    stop: anyio.Event,
    policy: FailurePolicy,
    deadline: datetime | None,
) -> tuple[RunStatus, str | None]:
    if aborted is not None:
        return RunStatus.ABORTED, aborted
    if policy.reason is not None:
        return RunStatus.HALTED, policy.reason
    if stop.is_set() and result.pending:
        return RunStatus.INTERRUPTED, "stopped by a signal"
    if deadline is not None and result.pending and utc_now() >= deadline:
        at = deadline.isoformat(timespec="minutes")
        return (
            RunStatus.INCOMPLETE,
            f"deadline {at} reached: {result.pending} models left for the next run",
        )
    return result.status, None


@dataclass(slots=True)
class FailurePolicy:
    """Stop admitting models once too many have failed (a broken dataset, say)."""

    max_failures: int | None
    min_success_ratio: float | None
    # The ratio is judged only once this many models have finished.
    min_sample: int = 10
    reason: str | None = None

    def check(self, progress: Progress) -> bool:
        """True while new models may be admitted."""
        if self.reason is not None:
            return False
        failed = progress.models_failed
        finished = failed + progress.models_succeeded + progress.models_rejected
        if self.max_failures is not None and failed > self.max_failures:
            self.reason = f"{failed} models failed, more than max_failures={self.max_failures}"
        elif (
            self.min_success_ratio is not None
            and finished >= self.min_sample
            and (finished - failed) / finished < self.min_success_ratio
        ):
            self.reason = (
                f"{finished - failed} of {finished} finished models succeeded, below "
                f"min_success_ratio={self.min_success_ratio}"
            )
        if self.reason is not None:
            log.error("fleet.run.halted", reason=self.reason)
            return False
        return True


async def _drive(
    projects: Mapping[str, _Project],
    models: list[ModelRecord],
    stages: tuple[Stage, ...],
    *,
    concurrency: int,
    policy: FailurePolicy,
    progress: Progress,
    stop: anyio.Event,
) -> None:
    admission = _Admission(projects, models, stop)

    async def worker() -> None:
        while not stop.is_set() and policy.check(progress):
            async with admission.take() as taken:
                if taken is None:
                    return
                project, model = taken
                await project.run_model(model, stages)

    done = anyio.Event()
    with ungrouped():
        async with anyio.create_task_group() as tg:
            for project in projects.values():
                tg.start_soon(project.open, admission, done)
            tg.start_soon(_wake_on, stop, admission)
            async with anyio.create_task_group() as workers:
                for _ in range(min(concurrency, len(models))):
                    workers.start_soon(worker)
            done.set()
            tg.cancel_scope.cancel()


async def _wake_on(event: anyio.Event, admission: _Admission) -> None:
    await event.wait()
    admission.changed()


@dataclass(slots=True, eq=False)
class _Project:
    """One project's part of the run: its context, its own bound on models in flight (None:
    only the run's), its models not yet admitted, and the error that stopped it, if any."""

    name: str
    ctx: Context
    limit: int | None
    named: bool  # several projects: lines about a model name its project
    pending: deque[tuple[int, ModelRecord]] = field(default_factory=deque)
    in_flight: int = 0
    ready: bool = False
    error: FleetError | None = None
    _scopes: set[anyio.CancelScope] = field(default_factory=set)
    _admission: _Admission | None = None

    @property
    def admits(self) -> bool:
        return (
            self.ready
            and bool(self.pending)
            and (self.limit is None or self.in_flight < self.limit)
        )

    async def open(self, admission: _Admission, done: anyio.Event) -> None:
        """Check the project, then follow its jobs until the run's models are done."""
        self._admission = admission
        try:
            await self.ctx.api.check_project()
        except ApiError as exc:
            # A rejected token, an unknown project, a server down: nothing of it can start.
            self.stop(exc)
            return
        async with watching(self.ctx) as watched:
            self.ctx = watched
            self.ready = True
            admission.changed()
            await done.wait()

    async def run_model(self, model: ModelRecord, stages: tuple[Stage, ...]) -> None:
        if self.error is not None:
            return
        with anyio.CancelScope() as scope, self._bound():
            self._scopes.add(scope)
            try:
                await run_model(self.ctx, model, stages)
            except RunAborted as exc:
                self.stop(_fleet_error(exc))
            except ApiError as exc:
                # Transient past every retry and the outage budget, or an answer that says
                # the project cannot go on: its models stop, to be resumed.
                self.stop(exc)
            finally:
                self._scopes.discard(scope)

    @contextmanager
    def _bound(self) -> Iterator[None]:
        if not self.named:
            yield
            return
        with structlog.contextvars.bound_contextvars(project=self.name):
            yield

    def stop(self, error: FleetError) -> None:
        """Admit none of this project's models, and cancel those in flight where they stand."""
        if self.error is None:
            self.error = error
            log.error("fleet.project.stopped", project=self.name, error=str(error))
        self.pending.clear()
        for scope in self._scopes:
            scope.cancel()
        if self._admission is not None:
            self._admission.changed()

    def why(self) -> str:
        return f"project {self.name}: {self.error}" if self.named else str(self.error)


class _Admission:
    """Which model a free worker takes next: the first in admission order whose project is
    ready and under its own bound; a worker waits while none is."""

    def __init__(
        self, projects: Mapping[str, _Project], models: list[ModelRecord], stop: anyio.Event
    ) -> None:
        self._projects = tuple(projects.values())
        for position, model in enumerate(models):
            projects[model.spec.project].pending.append((position, model))
        self._stop = stop
        self._changed = anyio.Event()

    def changed(self) -> None:
        """Wake the waiting workers: a project became ready, stopped, or has room again."""
        self._changed.set()
        self._changed = anyio.Event()

    @asynccontextmanager
    async def take(self) -> AsyncIterator[tuple[_Project, ModelRecord] | None]:
        """The next model and its project, counted in flight for the block; None: no more."""
        while True:
            if self._stop.is_set() or not any(p.pending for p in self._projects):
                yield None
                return
            open_ = [p for p in self._projects if p.admits]
            if open_:
                break
            await self._changed.wait()
        project = min(open_, key=lambda p: p.pending[0][0])
        _, model = project.pending.popleft()
        project.in_flight += 1
        try:
            yield project, model
        finally:
            project.in_flight -= 1
            self.changed()


def _projects(
    settings: Settings,
    ctx: Context,
    clients: Mapping[str, ModelOps],
    names: Sequence[str],
    progress: Progress,
) -> dict[str, _Project]:
    """Each project's part of the run: its client, and the shared stage limiters or its own."""
    own = settings.every_project()
    shared = ctx.limiters
    several = len(names) > 1
    return {
        name: _Project(
            name,
            replace(
                ctx,
                api=clients[name],
                limiters=_limiters(shared, own[name].limits if name in own else None),
                progress=ProjectProgress(progress, name) if several else ctx.progress,
            ),
            limit=own[name].limits.concurrency if name in own else None,
            named=several,
        )
        for name in names
    }


def _limiters(
    shared: Mapping[Stage, anyio.CapacityLimiter], own: ProjectLimits | None
) -> dict[Stage, anyio.CapacityLimiter]:
    """The run's stage limiters, except where the project has its own limit."""
    limiters = dict(shared)
    for stage in Stage:
        limit = None if own is None else own.of(stage)
        if limit is not None:
            limiters[stage] = anyio.CapacityLimiter(limit)
    return limiters


def _projects_of(
    run_id: str, models: Sequence[ModelRecord], clients: Mapping[str, ModelOps]
) -> list[str]:
    """The projects the run's models are in, in the order of `clients`; each must have one."""
    needed = {model.spec.project for model in models}
    missing = sorted(needed - clients.keys())
    if missing:
        raise ConfigError(
            f"projects: run {run_id} has models of project {missing[0]}, which is not in the "
            "configuration; add it back to resume the run"
        )
    return [name for name in clients if name in needed] or list(clients)[:1]


def _longest_first(
    models: list[ModelRecord], expected: Mapping[tuple[str, Stage], float]
) -> list[ModelRecord]:
    """Admission order: by priority, then the longest expected first (LPT scheduling).

    Under stage limits, starting the longest jobs first keeps a long one from starting last
    and running alone at the end. A model with no history counts as the median one.
    """
    if not expected:
        return models
    totals = {
        model.spec.id: sum(expected.get((model.spec.id, stage), 0.0) for stage in Stage)
        for model in models
    }
    known = sorted(total for total in totals.values() if total > 0)
    median = known[len(known) // 2] if known else 0.0
    return sorted(models, key=lambda m: (-m.spec.priority, -(totals[m.spec.id] or median)))


async def _reopen_failed(ctx: Context, models: list[ModelRecord]) -> list[ModelRecord]:
    """`--retry-failed`: each failed stage opens a new attempt; the rest stays as it is."""
    reopened = []
    for model in models:
        stages = dict(model.stages)
        for stage, record in model.stages.items():
            if record.state is StageState.FAILED:
                stages[stage] = await transition(
                    ctx, record, StageState.RETRYING, detail="fleet run --retry-failed"
                )
        reopened.append(replace(model, stages=stages))
    return reopened


def _interruptible(stop: anyio.Event) -> Callable[[float], Awaitable[None]]:
    async def sleep(seconds: float) -> None:
        with anyio.move_on_after(seconds):
            await stop.wait()

    return sleep


@asynccontextmanager
async def _leased(store: Store, ttl_s: float) -> AsyncIterator[None]:
    """Hold the state file's lease for the block, renewing it; a second process is refused."""
    now = utc_now()
    me = Lease(
        holder=secrets.token_hex(8),
        host=socket.gethostname(),
        pid=os.getpid(),
        since=now,
        renewed_at=now,
    )
    await store.acquire_lease(me, ttl_s)

    async def renew() -> None:
        while True:
            await anyio.sleep(ttl_s / 3)
            if not await store.renew_lease(me):
                raise LeaseLost(
                    "another fleet process took over the state file (this one stopped renewing "
                    "its lease for longer than lease_ttl); stopping"
                )

    try:
        with ungrouped():
            async with anyio.create_task_group() as tg:
                tg.start_soon(renew)
                yield
                tg.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            await store.release_lease(me)


async def summarize(
    store: Store, record: RunRecord, *, elapsed_s: float, resumed: bool
) -> RunResult:
    models = await store.models(record.id)
    succeeded = 0
    pending = 0
    failed: list[Failure] = []
    rejected: list[str] = []
    for model in models:
        outcome = model_outcome(model)
        if outcome is Outcome.SUCCEEDED:
            succeeded += 1
        elif outcome is Outcome.REJECTED:
            rejected.append(model.spec.name)
        elif outcome is Outcome.FAILED:
            stage, reason = next(
                (r.stage, r.error or "")
                for r in model.stages.values()
                if r.state is StageState.FAILED
            )
            failed.append(Failure(model.spec.id, model.spec.name, stage, reason))
        else:
            pending += 1
    status = RunStatus.FAILED if failed else RunStatus.SUCCEEDED
    if pending:
        status = RunStatus.INCOMPLETE
    return RunResult(
        run_id=record.id,
        status=status,
        models_total=len(models),
        succeeded=succeeded,
        failed=tuple(failed),
        pending=pending,
        elapsed_s=elapsed_s,
        resumed=resumed,
        rejected=tuple(rejected),
    )


def _fleet_error(exc: RunAborted) -> FleetError:
    cause = exc.__cause__
    return cause if isinstance(cause, FleetError) else FleetError(str(exc))


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
