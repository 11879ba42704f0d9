"""One project's part of a run, as its models see it, and `transition()`, the one place a
stage's state changes.

A `RunScope` is what every project of a run shares (the plan, the state file, the run's
progress, its stop and its clocks); `project_run()` enters one project's part of it, a
`ProjectRun` that is complete from the start: its client, the job watcher following its jobs,
its view of what is in production, its job slots and stage bounds. Stage runners (lifecycle.py,
approval.py, jobs.py) read it and change nothing in it.

`transition()` checks a move against `stages.ALLOWED`, makes it durable, logs it and updates
the progress counts. `api_call()` sorts an API call's failures by whom they concern: the stage,
the project, or the caller (an unknown outcome, to reconcile).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, TypeVar

import anyio
import structlog

from fleet.clock import Clock
from fleet.durations import Durations
from fleet.errors import (
    AuthError,
    Conflict,
    InvalidTransition,
    OutcomeUnknown,
    PermanentApiError,
    ProtocolError,
    RunAborted,
    ServerUnavailable,
    TransientApiError,
    ungrouped,
)
from fleet.modelops import Deployment, ModelOps
from fleet.plan import RunPlan
from fleet.polling import JobWatch
from fleet.production import Production
from fleet.progress import ProgressSink
from fleet.records import ModelRecord, StageRecord, utc_now
from fleet.slots import StageSlots, run_slots
from fleet.stages import ALLOWED, Stage, StageState
from fleet.store import Store

log = structlog.get_logger("fleet.lifecycle")
_T = TypeVar("_T")

S = StageState
_EVENTS: dict[StageState, str] = {
    S.SUBMITTING: "fleet.stage.submitting",
    S.SUBMITTED: "fleet.stage.submitted",
    S.RUNNING: "fleet.stage.running",
    S.SUCCEEDED: "fleet.stage.succeeded",
    S.FAILED: "fleet.stage.failed",
    S.SKIPPED: "fleet.stage.skipped",
    S.RETRYING: "fleet.stage.retrying",
}
# What is in production is read for all models at most this often (seconds of `clock`).
_PRODUCTION_TTL_S = 5.0


@dataclass(frozen=True, slots=True, kw_only=True)
class RunScope:
    """What every project of a run shares; `transition()` records a move with it."""

    plan: RunPlan
    store: Store
    progress: ProgressSink
    # Seconds each model's stage is expected to run (earlier runs, the server's history,
    # tonight's jobs): when its job is looked at, and how much work a model has left.
    expected: Durations
    # Set on SIGTERM/SIGINT: submit nothing new, stop following jobs, keep what is recorded.
    draining: anyio.Event
    sleep: Callable[[float], Awaitable[None]]
    # The clock `sleep` sleeps on (monotonic seconds), for when to look at jobs.
    clock: Callable[[], float]
    now: Callable[[], datetime] = utc_now
    # Every stage record as last written, so a failure is recorded on top of what the stage
    # had already written (its attempt, job and data), never on the record it started from.
    latest: dict[tuple[str, Stage], StageRecord] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class ProjectRun(RunScope):
    """One project's part of the run, with its own progress sink; entered with
    `project_run()`, which follows its jobs for as long as the block lasts."""

    api: ModelOps
    slots: StageSlots
    jobs: JobWatch
    production: Production


@asynccontextmanager
async def project_run(
    scope: RunScope,
    api: ModelOps,
    slots: StageSlots | None = None,
    progress: ProgressSink | None = None,
) -> AsyncIterator[ProjectRun]:
    """The project's part of the run, its jobs followed until the block exits.

    `slots`: the job slots and stage bounds its models take (default: its own, at the plan's
    limits); `progress`: where its moves are counted (default: the run's)."""
    plan = scope.plan
    watch = JobWatch(
        api,
        poll_interval=plan.poll_interval,
        poll_floor=plan.poll_floor,
        mode=plan.poll_mode,
        clock=Clock(now=scope.clock, sleep=scope.sleep),
    )
    if slots is None:
        slots = run_slots(plan.jobs, plan.limits)
    shared = {f.name: getattr(scope, f.name) for f in dataclasses.fields(RunScope)}
    run = ProjectRun(
        **{**shared, "progress": scope.progress if progress is None else progress},
        api=api,
        slots=slots,
        jobs=watch,
        production=Production(api, clock=scope.clock, ttl_s=_PRODUCTION_TTL_S),
    )
    with ungrouped():
        async with anyio.create_task_group() as tg:
            tg.start_soon(watch.run, scope.draining)
            yield run
            tg.cancel_scope.cancel()


class Paused(Exception):
    """The run is draining: this model stops where it is, to be picked up by the next start."""


class Deferred(Exception):
    """Past the run's deadline: this model's training waits for the next run."""


class StageFailed(Exception):
    """The stage failed for this model alone; `reason` is recorded as its error."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


async def transition(
    ctx: RunScope,
    record: StageRecord,
    to: StageState,
    *,
    detail: str | None = None,
    metrics: Mapping[str, str] | None = None,
    **changes: Any,
) -> StageRecord:
    """Check, record and announce one state change of one stage."""
    if (record.state, to) not in ALLOWED:
        raise InvalidTransition(
            f"{record.model_id} {record.stage}: {record.state} -> {to} is not allowed"
        )
    if to in {S.SUCCEEDED, S.FAILED, S.SKIPPED}:
        changes.setdefault("finished_at", ctx.now())
    saved = await ctx.store.save_stage(
        replace(record, state=to, **changes), record.state, detail, metrics
    )
    ctx.latest[(saved.model_id, saved.stage)] = saved
    ctx.progress.moved(record.stage, record.state, to)
    # Named explicitly (not only through contextvars) so the line stands alone wherever it goes.
    fields: dict[str, Any] = {
        "run_id": saved.run_id,
        "model_id": saved.model_id,
        "stage": saved.stage.value,
        "attempt": saved.attempt,
    }
    if saved.job_id:
        fields["job_id"] = saved.job_id
    if to in {S.FAILED, S.RETRYING}:
        fields["error"] = saved.error
    if detail:
        fields["detail"] = detail
    log.info(_EVENTS[to], **fields)
    return saved


def stop_if_draining(ctx: ProjectRun) -> None:
    if ctx.draining.is_set():
        raise Paused


async def in_production(ctx: ProjectRun, model: ModelRecord) -> list[Deployment]:
    """The model's deployments in production, oldest first (shared reads; see production.py)."""
    return await api_call(lambda: ctx.production.of_model(model.spec.id))


def trained_model(records: Mapping[Stage, StageRecord]) -> str:
    """The version this run trained (or adopted) for the model."""
    trained_model_id = records[Stage.TRAIN].trained_model_id
    if trained_model_id is None:
        raise StageFailed("no trained model id recorded for this model")
    return trained_model_id


_LOGGED_ONCE: set[tuple[str, str]] = set()


def once(event: str, **fields: Any) -> None:
    """Log an event once per process for each set of values (an unseen job type, say)."""
    key = (event, repr(sorted(fields.items())))
    if key not in _LOGGED_ONCE:
        _LOGGED_ONCE.add(key)
        log.warning(event, **fields)


def duration(seconds: float) -> str:
    """12 h, 90 min, 45 s: a timeout as an operator reads it."""
    if math.isinf(seconds):
        return "ever"
    if seconds >= 3600 and seconds % 3600 == 0:  # noqa: PLR2004
        return f"{seconds / 3600:g} h"
    if seconds >= 60 and seconds % 60 == 0:  # noqa: PLR2004
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s"


async def api_call(call: Callable[[], Awaitable[_T]]) -> _T:
    """Make an API call for one model, sorting its failures by whom they concern.

    A rejected token, or a server down past the outage budget, stops the run. A refusal, an
    unreadable answer, or a transient failure that outlived its call's retry budget (the
    client sent it as often as `retries.py` allows; the engine never sends it again) fails
    this model, for `--retry-failed` to reopen. Unknown POST outcomes go back to the caller
    to settle (`retries.settle`). A 409 was already tried again by the client (nothing was
    applied): it fails the model.
    """
    try:
        return await call()
    except AuthError as exc:
        raise RunAborted(str(exc)) from exc
    except (OutcomeUnknown, ServerUnavailable):
        raise
    except Conflict as exc:
        raise StageFailed(f"the server kept refusing it as a conflict: {exc}") from exc
    except TransientApiError as exc:
        raise StageFailed(f"the server kept failing: {exc}") from exc
    except (PermanentApiError, ProtocolError) as exc:
        raise StageFailed(str(exc)) from exc


def work_left(scope: RunScope, record: StageRecord) -> float:
    """Seconds of remote jobs the record's model is expected to have left, its stage's
    included: how its turn for a job slot is ranked."""
    stages = scope.plan.stages
    if record.stage not in stages:
        return 0.0
    return scope.expected.work_left(record.model_id, stages[stages.index(record.stage) :])
