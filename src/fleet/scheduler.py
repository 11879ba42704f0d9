"""The run: admit models in a fixed order, bound them globally and per stage, resume by run id.

`run(plan, clients, store)` drives the models of a `RunPlan` (plan.py), frozen values built from
the settings in one place (batch.py); it never reads the settings themselves.

A pool of `concurrency` workers in one anyio task group takes models in admission order
(admission.py), so memory grows with the models in flight, not with the size of the fleet.
Each stage has a `CapacityLimiter` that bounds its remote jobs (or approval calls) at once.

A run may span several ModelOps projects (`[projects]`), each with its own `ProjectRun`: its
client, its job watcher, and the run's stage limiters or its own. A project that cannot go on
stops alone; the other projects run to the end, and the run ends `aborted`, naming it. The
run's status changes in one place (`_set_status`), held to `RunStatus`'s table of moves.
"""

from __future__ import annotations

import functools
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime

import anyio
import structlog

from fleet import history
from fleet.admission import Admission, Project, projects_of
from fleet.durations import Durations
from fleet.errors import ConfigError, LeaseLost, RunNotFound, StoreError, ungrouped
from fleet.modelops import ModelOps
from fleet.models import DEFAULT_PROJECT
from fleet.plan import RunPlan
from fleet.progress import Failure, Progress, RunResult
from fleet.project_run import RunScope, transition
from fleet.records import Lease, ModelRecord, RunRecord, model_outcome, utc_now
from fleet.stages import DONE, Outcome, RunStatus, Stage, StageState
from fleet.store import Store

log = structlog.get_logger("fleet.scheduler")

# Reading a first night's history: models read at once, and real seconds for all of them.
_HISTORY_READS_AT_ONCE = 16
_HISTORY_BUDGET_S = 120.0


@dataclass(frozen=True, slots=True)
class Controls:
    """How a run is driven from outside: the live counts it feeds, the event that drains it,
    and the clock its waits sleep on (tests pass a virtual `sleep` and `clock` together)."""

    progress: Progress = field(default_factory=Progress)
    stop: anyio.Event | None = None  # None: only cancellation stops the run
    # None: anyio.sleep, cut short when `stop` is set.
    sleep: Callable[[float], Awaitable[None]] | None = None
    clock: Callable[[], float] = time.monotonic


async def run(
    plan: RunPlan,
    api: ModelOps | Mapping[str, ModelOps],
    store: Store,
    *,
    controls: Controls | None = None,
) -> RunResult:
    """Run (or resume) the lifecycle of every model of `plan`; the run's state is in `store`.

    `api` is the client of each project by name, or the client of the one project of a
    configuration without `[projects]`. Setting `controls.stop` drains the run: no new model
    is admitted and no new job submitted, jobs in flight are left running on the server, and
    the run is recorded as interrupted.
    """
    controls = controls or Controls()
    clients = dict(api) if isinstance(api, Mapping) else {DEFAULT_PROJECT: api}
    started = time.monotonic()
    async with _leased(store, plan.lease_ttl):
        existing = await store.find_run(plan.run_id)
        done = await _finished_before(store, plan, existing)
        if done is not None:
            return done
        if existing is None:
            await store.create_run(
                plan.run_id, plan.stages, plan.specs, plan.summary, plan.first_stage
            )
        else:  # the run goes on as it was created
            first = existing.from_stage or Stage.TRAIN
            plan = replace(plan, stages=existing.stages, first_stage=first)
        models = await store.models(plan.run_id)
        names = _project_names(plan.run_id, models, clients)
        if existing is not None:
            await _set_status(store, plan.run_id, _status_of(existing), RunStatus.RUNNING)
        stop = controls.stop or anyio.Event()
        expected = Durations(await store.durations(plan.run_id))
        scope = RunScope(
            plan=plan,
            store=store,
            progress=controls.progress,
            expected=expected,
            draining=stop,
            sleep=controls.sleep or _interruptible(stop),
            clock=controls.clock,
        )
        if plan.retry_failed:
            models = await _reopen_failed(scope, models)
        controls.progress.start(models, plan.stages)
        log.info(
            "fleet.run.started",
            run_id=plan.run_id,
            models=len(models),
            resumed=existing is not None,
            stages=",".join(plan.stages),
            **({"projects": ",".join(names)} if len(names) > 1 else {}),
        )
        if plan.concurrency <= plan.jobs < len(models):
            # Each model holds its place between its jobs too: slots go idle meanwhile, and
            # no waiting job is there to take them (N=100: 10% longer than 4 x jobs).
            log.warning(
                "fleet.run.concurrency_binds",
                concurrency=plan.concurrency,
                jobs=plan.jobs,
                hint="concurrency counts models in flight; leave it unset (4 x jobs) unless "
                "memory requires it",
            )
        learn = functools.partial(_learn_history, plan, expected)
        projects = projects_of(scope, clients, names, controls.progress, learn)
        policy = FailurePolicy(plan.max_failures, plan.min_success_ratio, controls.progress)
        try:
            await _drive(scope, projects, models, policy)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await _set_status(store, plan.run_id, RunStatus.RUNNING, RunStatus.INTERRUPTED)
                log.warning("fleet.run.interrupted", run_id=plan.run_id)
            raise
        record = await store.run(plan.run_id)
        result = await summarize(
            store, record, elapsed_s=time.monotonic() - started, resumed=existing is not None
        )
        result = await _ended(scope, result, projects.values(), policy)
    log.info(
        "fleet.run.finished",
        run_id=plan.run_id,
        status=result.status,
        reason=result.reason,
        succeeded=result.succeeded,
        failed=len(result.failed),
        pending=result.pending,
        elapsed_s=round(result.elapsed_s, 3),
    )
    return result


async def _finished_before(
    store: Store, plan: RunPlan, existing: RunRecord | None
) -> RunResult | None:
    """The result of a run that had already finished, unless `--retry-failed` reopens it."""
    if existing is None:
        if plan.retry_failed:
            raise RunNotFound(f"run {plan.run_id!r} is not in the state file")
        return None
    status = _status_of(existing)
    if not status.finished:
        return None
    result = await summarize(store, existing, elapsed_s=0.0, resumed=True)
    if plan.retry_failed and result.failed:
        return None
    log.info("fleet.run.already_finished", run_id=plan.run_id, status=status)
    return replace(result, status=status)


async def _ended(
    scope: RunScope, result: RunResult, projects: Iterable[Project], policy: FailurePolicy
) -> RunResult:
    """The run's final status, recorded: why it stopped, if it did before every model ended."""
    stopped = [p for p in projects if p.error is not None]
    aborted = stopped[0].error if stopped else None
    why = "; ".join(p.why() for p in stopped) or None
    ending, reason = _final_status(result, why, scope.draining, policy, scope.plan.stop_training_at)
    status = await _set_status(scope.store, scope.plan.run_id, RunStatus.RUNNING, ending, reason)
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
    progress: Progress  # the run's counts, which it judges
    # The ratio is judged only once this many models have finished.
    min_sample: int = 10
    reason: str | None = None

    def check(self) -> bool:
        """True while new models may be admitted."""
        if self.reason is not None:
            return False
        progress = self.progress
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
    scope: RunScope,
    projects: Mapping[str, Project],
    models: list[ModelRecord],
    policy: FailurePolicy,
) -> None:
    stop, stages = scope.draining, scope.plan.stages
    admission = Admission(projects, models, stop, rank=_work_first(scope.expected, stages))

    async def worker() -> None:
        while not stop.is_set() and policy.check():
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
                for _ in range(min(scope.plan.concurrency, len(models))):
                    workers.start_soon(worker)
            done.set()
            tg.cancel_scope.cancel()


async def _wake_on(event: anyio.Event, admission: Admission) -> None:
    await event.wait()
    admission.changed()


def _project_names(
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


def _work_first(
    expected: Durations, stages: Sequence[Stage]
) -> Callable[[ModelRecord], tuple[float, ...]]:
    """Admission order: by priority, then the most expected work first (LPT scheduling).

    Starting the longest chains first keeps a long one from starting last and running alone
    at the end. Only a model's stages not done count (a resumed run); a model with no figure
    for a stage counts as the stage's typical one; with none at all, models keep their
    listed order.
    """

    def rank(model: ModelRecord) -> tuple[float, ...]:
        left = [s for s in stages if s not in model.stages or model.stages[s].state not in DONE]
        return (-model.spec.priority, -expected.work_left(model.spec.id, left))

    return rank


async def _learn_history(
    plan: RunPlan, expected: Durations, api: ModelOps, models: Sequence[ModelRecord]
) -> None:
    """Rank by the server's history the models of a project that no earlier run in the
    state file has timed (a first night): see history.py."""
    stages = plan.stages[plan.stages.index(plan.first_stage) :]
    wanted = history.stages_to_learn(plan.history, stages)
    waiting = [m.spec.id for m in models if model_outcome(m) is Outcome.PENDING]
    found = await history.learn(
        api,
        expected.unknown(waiting, wanted),
        wanted,
        at_once=_HISTORY_READS_AT_ONCE,
        budget_s=_HISTORY_BUDGET_S,
    )
    expected.rank_by(found)


async def _reopen_failed(scope: RunScope, models: list[ModelRecord]) -> list[ModelRecord]:
    """`--retry-failed`: each failed stage opens a new attempt; the rest stays as it is."""
    reopened = []
    for model in models:
        stages = dict(model.stages)
        for stage, record in model.stages.items():
            if record.state is StageState.FAILED:
                stages[stage] = await transition(
                    scope, record, StageState.RETRYING, detail="fleet run --retry-failed"
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
