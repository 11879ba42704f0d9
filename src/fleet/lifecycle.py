"""One model's lifecycle: train → evaluate → approve → deploy → retire, resumable at any step.

`transition()` is the only code that changes a stage's state: it checks the move against
`stages.ALLOWED`, makes it durable, logs it and updates the progress counts. Each stage runner
starts from whatever state the store holds, so a restarted run continues where it stopped:
finished stages are skipped, submitted jobs are polled again, and a stage caught between
"intent recorded" and "job id recorded" first looks for its job on the server.
"""

from __future__ import annotations

import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Protocol, TypeVar

import anyio
import structlog

from fleet.client import (
    DeployRequest,
    EvaluateRequest,
    Job,
    ModelOps,
    TrainRequest,
    latest_metrics,
)
from fleet.errors import (
    AuthError,
    InvalidTransition,
    OutcomeUnknown,
    PermanentApiError,
    ProtocolError,
    ServerUnavailable,
    TransientApiError,
    ungrouped,
)
from fleet.polling import JobWatch, PollMode
from fleet.stages import (
    ALLOWED,
    DONE,
    JOB_TYPES,
    STAGE_ORDER,
    STARTABLE,
    Outcome,
    Stage,
    StageState,
)
from fleet.store import ModelRecord, StageRecord, Store, utc_now

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
# How far back before a recorded intent a job found on the server may have been created and
# still be ours: covers clock skew between this host and the server.
_RECONCILE_SKEW = timedelta(minutes=5)
_RECONCILE_SCAN = 2000
# A submission whose answer is lost is looked for on the server and, if absent, sent again,
# this many times in all.
_UNKNOWN_OUTCOME_TRIES = 3
# Rounds of a call that keeps failing transiently (each after the client's own retries).
_TRANSIENT_ROUNDS = 5
_UNKNOWN_OUTCOME_FAILURE = "the server did not answer the submission and has no record of it"
_FOUND_AFTER_RESTART = "found on the server after restart"
_FOUND_AFTER_LOSS = "found on the server after a lost response"
_FOUND_DONE = "already done on the server"


class ProgressSink(Protocol):
    def moved(self, stage: Stage, before: StageState, after: StageState) -> None: ...
    def model_finished(
        self, model: ModelRecord, failed: StageRecord | None, *, rejected: bool = False
    ) -> None: ...


@dataclass(frozen=True, slots=True)
class Context:
    """What every model of a run shares."""

    run_id: str
    api: ModelOps
    store: Store
    limiters: Mapping[Stage, anyio.CapacityLimiter]
    poll_interval: float
    progress: ProgressSink
    sleep: Callable[[float], Awaitable[None]] = anyio.sleep
    now: Callable[[], datetime] = utc_now
    rng: random.Random = field(default_factory=random.Random)
    # Tries per stage for a remote job that ends in ERROR.
    max_attempts: Mapping[Stage, int] = field(default_factory=dict)
    # Set on SIGTERM/SIGINT: submit nothing new, stop following jobs, keep what is recorded.
    draining: anyio.Event = field(default_factory=anyio.Event)
    # Stages before this one adopt what the server has (`--from-stage`), from this version.
    first_stage: Stage = Stage.TRAIN
    from_version: str = "latest"
    # Past this time no new training starts (the run deadline); the rest goes on.
    stop_training_at: datetime | None = None
    # The clock `sleep` sleeps on (monotonic seconds), for when to look at jobs.
    clock: Callable[[], float] = time.monotonic
    # Seconds each model's stage ran in earlier runs: when its job is expected to end.
    expected: Mapping[tuple[str, Stage], float] = field(default_factory=dict)
    poll_floor: float = 0.2
    poll_mode: PollMode = PollMode.AUTO
    # Follows the run's remote jobs; set by `watching()`.
    jobs: JobWatch | None = None


@asynccontextmanager
async def watching(ctx: Context) -> AsyncIterator[Context]:
    """The context with a `JobWatch` following its jobs for the duration of the block."""
    watch = JobWatch(
        ctx.api,
        poll_interval=ctx.poll_interval,
        poll_floor=ctx.poll_floor,
        mode=ctx.poll_mode,
        clock=ctx.clock,
        sleep=ctx.sleep,
    )
    with ungrouped():
        async with anyio.create_task_group() as tg:
            tg.start_soon(watch.run, ctx.draining)
            yield replace(ctx, jobs=watch)
            tg.cancel_scope.cancel()


class RunAborted(Exception):
    """The run cannot go on (token rejected, server gone); carries the fleet error."""


class _Paused(Exception):
    """The run is draining: this model stops where it is, to be picked up by the next start."""


class _Deferred(Exception):
    """Past the run's deadline: this model's training waits for the next run."""


class _StageFailed(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


async def transition(
    ctx: Context,
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


async def run_model(ctx: Context, model: ModelRecord, stages: tuple[Stage, ...]) -> Outcome:
    """Drive one model through the run's stages, from wherever the store says it is.

    A failed stage stops this model only; the stages after it stay pending.
    """
    records = dict(model.stages)
    with structlog.contextvars.bound_contextvars(run_id=ctx.run_id, model_id=model.spec.id):
        for stage in stages:
            record = records[stage]
            if record.state is not S.FAILED and record.state not in DONE:
                with structlog.contextvars.bound_contextvars(stage=stage.value):
                    try:
                        record = await _runner(ctx, records, stage)(ctx, model, records, record)
                    except _StageFailed as failed:
                        record = await transition(ctx, record, S.FAILED, error=failed.reason)
                    except _Paused:
                        return Outcome.RUNNING
                    except _Deferred:
                        return Outcome.PENDING
                records[stage] = record
            if record.state is S.FAILED:
                ctx.progress.model_finished(model, record)
                return Outcome.FAILED
    if _rejected(records):
        ctx.progress.model_finished(model, None, rejected=True)
        return Outcome.REJECTED
    ctx.progress.model_finished(model, None)
    return Outcome.SUCCEEDED


def _runner(ctx: Context, records: dict[Stage, StageRecord], stage: Stage) -> Runner:
    if STAGE_ORDER.index(stage) < STAGE_ORDER.index(ctx.first_stage):
        return _adopt
    if stage in {Stage.DEPLOY, Stage.RETIRE} and _rejected(records):
        return _skip_rejected
    return _RUNNERS[stage]


def _rejected(records: Mapping[Stage, StageRecord]) -> bool:
    approve = records.get(Stage.APPROVE)
    return approve is not None and approve.data.get("decision") == "rejected"


# -- stage runners ---------------------------------------------------------------------------

Runner = Callable[
    [Context, ModelRecord, dict[Stage, StageRecord], StageRecord], Awaitable[StageRecord]
]


async def _train(
    ctx: Context, model: ModelRecord, _records: dict[Stage, StageRecord], record: StageRecord
) -> StageRecord:
    spec = model.spec.lifecycle
    request = TrainRequest(
        dataset_id=spec.train_dataset_id,
        dataset_connection_id=spec.dataset_connection_id,
        hyperparameters=spec.hyperparameters,
        resources=spec.resources.model_dump(),
        docker_image=spec.docker_image,
    )

    async def submit() -> Job:
        return await ctx.api.train(model.spec.id, request)

    return await _job_stage(ctx, model, record, submit, trained_model_id=None)


async def _evaluate(
    ctx: Context, model: ModelRecord, records: dict[Stage, StageRecord], record: StageRecord
) -> StageRecord:
    trained_model_id = _trained_model(records)
    spec = model.spec.lifecycle
    request = EvaluateRequest(
        dataset_id=spec.evaluate_dataset_id,
        dataset_connection_id=spec.dataset_connection_id,
        resources=spec.resources.model_dump(),
        docker_image=spec.docker_image,
    )

    async def submit() -> Job:
        return await ctx.api.evaluate(trained_model_id, request)

    async def finish(done: StageRecord) -> StageRecord:
        metrics = latest_metrics(await _call(ctx, lambda: ctx.api.events(trained_model_id)))
        if metrics is None:
            raise _StageFailed("evaluation completed but the version has no EVALUATED event")
        data = {**done.data, "metrics": metrics, **_monitor(model, metrics)}
        return await transition(ctx, done, S.SUCCEEDED, metrics=metrics, data=data)

    return await _job_stage(
        ctx, model, record, submit, trained_model_id=trained_model_id, finish=finish
    )


async def _approve(
    ctx: Context, model: ModelRecord, records: dict[Stage, StageRecord], record: StageRecord
) -> StageRecord:
    """Approve, or reject when the version fails its approval rule; the decision is recorded
    with the intent, before the call, so a restart makes the same call."""
    trained_model_id = _trained_model(records)
    async with ctx.limiters[Stage.APPROVE]:
        resumed = record.state is S.SUBMITTING
        if record.state in STARTABLE:
            decision = await _decide(ctx, model, records, trained_model_id)
            record = await _open_attempt(
                ctx, record, trained_model_id=trained_model_id, data={**record.data, **decision}
            )
        verdict = "REJECTED" if record.data.get("decision") == "rejected" else "APPROVED"
        call = ctx.api.reject if verdict == "REJECTED" else ctx.api.approve
        comment = str(record.data.get("comment") or model.spec.lifecycle.approval_comments)

        async def done() -> bool:
            events = await _call(ctx, lambda: ctx.api.events(trained_model_id))
            return any(e.status == verdict for e in events)

        if resumed and await done():
            return await transition(ctx, record, S.SUCCEEDED, detail=_FOUND_AFTER_RESTART)
        for _ in range(_UNKNOWN_OUTCOME_TRIES):
            try:
                await _call(ctx, lambda: call(trained_model_id, comment))
            except OutcomeUnknown:
                if await done():
                    return await transition(ctx, record, S.SUCCEEDED, detail=_FOUND_AFTER_LOSS)
                continue
            return await transition(ctx, record, S.SUCCEEDED, detail=comment)
        raise _StageFailed(_UNKNOWN_OUTCOME_FAILURE)


async def _decide(
    ctx: Context, model: ModelRecord, records: dict[Stage, StageRecord], trained_model_id: str
) -> dict[str, Any]:
    """Judge the new version by its approval rule: the decision, the rule, the values."""
    spec = model.spec.lifecycle
    rule = spec.approval()
    if rule is None:
        return {"decision": "approved", "comment": spec.approval_comments}
    metrics = await _metrics_of(ctx, records, trained_model_id)
    champion_id, champion = None, None
    if rule.uses_champion:
        champion_id, champion = await _champion(ctx, model, trained_model_id)
    verdict = rule.evaluate(metrics, champion, no_champion_passes=spec.no_champion == "allow")
    values = [
        {"text": c.text, "left": c.left, "op": c.op, "right": c.right, "passed": c.passed}
        for c in verdict.comparisons
    ]
    facts = {"rule": rule.text, "comparisons": values, "champion": champion_id}
    if verdict.passed is None:
        missing = ", ".join(verdict.missing)
        if spec.on_missing_metric == "fail":
            raise _StageFailed(f"approval rule needs {missing}, which the evaluation lacks")
        comment = f"Rejected by fleet: no value for {missing}, needed by rule {rule.text}"
        return {**facts, "decision": "rejected", "comment": comment}
    if verdict.passed:
        comment = f"{spec.approval_comments}. Rule {rule.text} passed: {verdict.describe()}"
        return {**facts, "decision": "approved", "comment": comment}
    comment = f"Rejected by fleet: rule {rule.text} failed: {verdict.describe()}"
    return {**facts, "decision": "rejected", "comment": comment}


async def _metrics_of(
    ctx: Context, records: dict[Stage, StageRecord], trained_model_id: str
) -> dict[str, str]:
    """The version's metrics: from this run's evaluation, else from its newest EVALUATED event."""
    evaluated = records.get(Stage.EVALUATE)
    if evaluated is not None and evaluated.data.get("metrics"):
        return dict(evaluated.data["metrics"])
    events = await _call(ctx, lambda: ctx.api.events(trained_model_id))
    return latest_metrics(events) or {}


async def _champion(
    ctx: Context, model: ModelRecord, trained_model_id: str
) -> tuple[str | None, dict[str, str] | None]:
    """The version in production for this model (not the new one) and its latest metrics."""
    active = await _call(ctx, lambda: ctx.api.active_deployments(model.spec.id))
    others = [d for d in active if d.trained_model_id and d.trained_model_id != trained_model_id]
    if not others:
        return None, None
    champion_id = others[-1].trained_model_id
    assert champion_id is not None
    events = await _call(ctx, lambda: ctx.api.events(champion_id))
    return champion_id, latest_metrics(events) or {}


async def _adopt(
    ctx: Context, model: ModelRecord, _records: dict[Stage, StageRecord], record: StageRecord
) -> StageRecord:
    """A stage before `--from-stage`: training adopts an existing version, the rest skip."""
    if record.stage is not Stage.TRAIN:
        return await transition(ctx, record, S.SKIPPED, detail="before from_stage")
    named = model.spec.lifecycle.trained_model_id
    version: str | None
    if named is not None:
        version, how = named, "named in the config"
    elif ctx.from_version == "deployed":
        active = await _call(ctx, lambda: ctx.api.active_deployments(model.spec.id))
        version = active[-1].trained_model_id if active else None
        how = "deployed"
    else:
        version = await _call(ctx, lambda: ctx.api.latest_version(model.spec.id))
        how = "latest"
    if version is None:
        raise _StageFailed(f"no {how} trained version to start from")
    return await transition(
        ctx, record, S.SKIPPED, trained_model_id=version, detail=f"starts from the {how} version"
    )


async def _skip_rejected(
    ctx: Context, _model: ModelRecord, _records: dict[Stage, StageRecord], record: StageRecord
) -> StageRecord:
    return await transition(ctx, record, S.SKIPPED, detail="the version was rejected")


async def _deploy(
    ctx: Context, model: ModelRecord, records: dict[Stage, StageRecord], record: StageRecord
) -> StageRecord:
    trained_model_id = _trained_model(records)
    spec = model.spec.lifecycle
    request = DeployRequest(
        engine_type=spec.engine_type,
        engine=spec.engine,
        docker_image=spec.docker_image,
        resources=spec.resources.model_dump(),
        language=spec.language,
        dataset_connection_id=spec.dataset_connection_id,
        dataset_template_id=spec.dataset_template_id,
        cron=spec.cron,
        publish_only=spec.publish_only,
    )

    async def submit() -> Job:
        return await ctx.api.deploy(trained_model_id, request)

    async def before() -> dict[str, Any]:
        # What is in production now is what `retire_mode = "previous"` retires afterwards.
        active = await _call(ctx, lambda: ctx.api.active_deployments(model.spec.id))
        previous = [
            {"trained_model_id": d.trained_model_id, "deployment_id": d.id}
            for d in active
            if d.trained_model_id != trained_model_id
        ]
        return {"previous": previous}

    async def finish(done: StageRecord) -> StageRecord:
        job_id = done.job_id
        assert job_id is not None
        deployment = await _call(ctx, lambda: ctx.api.deployment_for_job(job_id))
        return await transition(ctx, done, S.SUCCEEDED, deployment_id=deployment.id)

    return await _job_stage(
        ctx,
        model,
        record,
        submit,
        trained_model_id=trained_model_id,
        before=before,
        finish=finish,
    )


async def _retire(
    ctx: Context, model: ModelRecord, records: dict[Stage, StageRecord], record: StageRecord
) -> StageRecord:
    mode = model.spec.lifecycle.retire_mode
    deployed = records[Stage.DEPLOY]
    if mode == "none":
        return await transition(ctx, record, S.SKIPPED, detail="retire_mode is none")
    if mode == "deployed":
        target = {
            "trained_model_id": deployed.trained_model_id,
            "deployment_id": deployed.deployment_id,
        }
    else:
        previous = list(deployed.data.get("previous", []))
        if not previous:
            return await transition(
                ctx, record, S.SKIPPED, detail="no earlier version was deployed"
            )
        # The newest earlier deployment is the one the new version replaces; any older ones
        # still active were left there by hand: reported, not touched.
        target = previous[-1]
        if len(previous) > 1:
            log.warning(
                "fleet.retire.others_left_active",
                run_id=ctx.run_id,
                model_id=model.spec.id,
                deployments=[str(p["deployment_id"]) for p in previous[:-1]],
            )
    tm_id, dep_id = str(target["trained_model_id"]), str(target["deployment_id"])

    async def submit() -> Job:
        return await ctx.api.retire(tm_id, dep_id)

    async def retired() -> bool:
        active = await _call(ctx, lambda: ctx.api.active_deployments(model.spec.id))
        return all(d.id != dep_id for d in active)

    return await _job_stage(
        ctx,
        model,
        record,
        submit,
        trained_model_id=tm_id,
        deployment_id=dep_id,
        already_done=retired,
    )


_RUNNERS: dict[Stage, Runner] = {
    Stage.TRAIN: _train,
    Stage.EVALUATE: _evaluate,
    Stage.APPROVE: _approve,
    Stage.DEPLOY: _deploy,
    Stage.RETIRE: _retire,
}


# -- remote jobs -----------------------------------------------------------------------------


async def _job_stage(
    ctx: Context,
    model: ModelRecord,
    record: StageRecord,
    submit: Callable[[], Awaitable[Job]],
    *,
    trained_model_id: str | None,
    deployment_id: str | None = None,
    before: Callable[[], Awaitable[dict[str, Any]]] | None = None,
    finish: Callable[[StageRecord], Awaitable[StageRecord]] | None = None,
    already_done: Callable[[], Awaitable[bool]] | None = None,
) -> StageRecord:
    """Submit (or find) the stage's remote job, follow it to its end, and record the outcome.

    A job that ends in ERROR is tried again as a new attempt while the stage has tries left.
    """
    async with ctx.limiters[record.stage]:
        while True:
            # When the job was created, in server time, if known: a job resumed from an
            # earlier process is first read by id.
            created_at: datetime | None = None
            if record.state in STARTABLE:
                _stop_if_draining(ctx)
                _defer_training_past_deadline(ctx, record)
                data = dict(record.data)
                if before is not None and record.state is S.PENDING:
                    data.update(await before())
                record = await _open_attempt(ctx, record, data=data, deployment_id=deployment_id)
                record, created_at = await _submit(ctx, model, record, submit, trained_model_id)
            elif record.state is S.SUBMITTING:
                job = await _find_submitted(ctx, model, record, trained_model_id)
                if job is not None:
                    record = await _submitted(ctx, record, job, _FOUND_AFTER_RESTART)
                elif already_done is not None and await already_done():
                    return await transition(ctx, record, S.SUCCEEDED, detail=_FOUND_DONE)
                else:
                    record, created_at = await _submit(ctx, model, record, submit, trained_model_id)
            record = await _follow(ctx, record, created_at)
            if record.state is not S.RETRYING:
                break
    if record.state is S.FAILED:
        return record
    if finish is None:
        return await transition(ctx, record, S.SUCCEEDED)
    return await finish(record)


async def _open_attempt(ctx: Context, record: StageRecord, **changes: Any) -> StageRecord:
    """Record the intent to submit a new attempt: committed before its request goes out."""
    _stop_if_draining(ctx)
    return await transition(
        ctx,
        record,
        S.SUBMITTING,
        attempt=record.attempt + 1,
        submitted_at=ctx.now(),
        job_id=None,
        error=None,
        **changes,
    )


def _monitor(model: ModelRecord, metrics: Mapping[str, str]) -> dict[str, Any]:
    """Monitoring nights: flag a version whose fresh metrics fail the monitor rule."""
    rule = model.spec.lifecycle.monitor()
    if rule is None:
        return {}
    verdict = rule.evaluate(metrics, None, no_champion_passes=True)
    flag = {True: "ok", False: "degraded", None: "unknown"}[verdict.passed]
    if flag != "ok":
        log.warning(
            "fleet.monitor.flagged", model_id=model.spec.id, flag=flag, detail=verdict.describe()
        )
    return {"monitor": {"flag": flag, "rule": rule.text, "detail": verdict.describe()}}


def _defer_training_past_deadline(ctx: Context, record: StageRecord) -> None:
    deadline = ctx.stop_training_at
    if record.stage is Stage.TRAIN and deadline is not None and ctx.now() >= deadline:
        raise _Deferred


def _stop_if_draining(ctx: Context) -> None:
    if ctx.draining.is_set():
        raise _Paused


async def _submit(
    ctx: Context,
    model: ModelRecord,
    record: StageRecord,
    submit: Callable[[], Awaitable[Job]],
    trained_model_id: str | None,
) -> tuple[StageRecord, datetime | None]:
    """Send the stage's job; the record with its job id, and when the server created it."""
    for _ in range(_UNKNOWN_OUTCOME_TRIES):
        try:
            job = await _call(ctx, submit)
        except OutcomeUnknown:
            # The server may have created the job: look before sending it again.
            found = await _find_submitted(ctx, model, record, trained_model_id)
            if found is not None:
                return await _submitted(ctx, record, found, _FOUND_AFTER_LOSS), None
            continue
        return await _submitted(ctx, record, job, None), job.created_at
    raise _StageFailed(_UNKNOWN_OUTCOME_FAILURE)


async def _submitted(
    ctx: Context, record: StageRecord, job: Job, detail: str | None
) -> StageRecord:
    changes: dict[str, Any] = {"job_id": job.id}
    if record.stage is Stage.TRAIN:
        if job.trained_model_id is None:
            raise _StageFailed(f"training job {job.id} names no trained model")
        changes["trained_model_id"] = job.trained_model_id
    elif job.trained_model_id is not None:
        changes["trained_model_id"] = job.trained_model_id
    return await transition(ctx, record, S.SUBMITTED, detail=detail, **changes)


async def _follow(ctx: Context, record: StageRecord, created_at: datetime | None) -> StageRecord:
    """Wait for the stage's job to end: the record comes back failed, or still in flight (with
    how long the job ran) for the caller to finish. The stage's limiter is held by the caller.
    """
    job_id, jobs = record.job_id, ctx.jobs
    assert job_id is not None
    assert jobs is not None, "jobs are followed inside lifecycle.watching()"
    expected = ctx.expected.get((record.model_id, record.stage))
    done = await _call(ctx, lambda: jobs.finished(job_id, created_at, record.stage.value, expected))
    if done is None:
        # Draining: the job goes on without us; the next start follows it again.
        raise _Paused
    record = replace(record, data={**record.data, "ran_s": round(done.ran_s, 3)})
    if done.job.status == "COMPLETED":
        return record
    return await _ended_badly(ctx, record, done.job)


async def _ended_badly(ctx: Context, record: StageRecord, job: Job) -> StageRecord:
    """Close an attempt whose job ended in ERROR or CANCELLED: retry while tries are left."""
    error = f"{JOB_TYPES[record.stage].lower()} job {job.id} ended {job.status}"
    tries = ctx.max_attempts.get(record.stage, 1)
    if job.status == "ERROR" and record.attempt < tries:
        failed_jobs = [*record.data.get("failed_jobs", []), job.id]
        return await transition(
            ctx,
            record,
            S.RETRYING,
            error=error,
            data={**record.data, "failed_jobs": failed_jobs},
            detail=f"attempt {record.attempt} of {tries} failed",
        )
    return await transition(ctx, record, S.FAILED, error=error)


async def _find_submitted(
    ctx: Context, model: ModelRecord, record: StageRecord, trained_model_id: str | None
) -> Job | None:
    """The job this stage submitted before a crash or a lost response, if the server has it."""
    job_type = JOB_TYPES[record.stage]
    since = (record.submitted_at or ctx.now()) - _RECONCILE_SKEW
    earlier = set(record.data.get("failed_jobs", []))
    async for job in ctx.api.recent_jobs(_RECONCILE_SCAN):
        if job.created_at is not None and job.created_at < since:
            return None
        if job.type != job_type or job.model_id != model.spec.id or job.id in earlier:
            continue
        if trained_model_id is None or job.trained_model_id == trained_model_id:
            return job
    return None


def _trained_model(records: dict[Stage, StageRecord]) -> str:
    trained_model_id = records[Stage.TRAIN].trained_model_id
    if trained_model_id is None:
        raise _StageFailed("no trained model id recorded for this model")
    return trained_model_id


async def _call(ctx: Context, call: Callable[[], Awaitable[_T]]) -> _T:
    """Make an API call for one model, sorting its failures by whom they concern.

    A rejected token, or a server down past the outage budget, stops the run. A refusal or an
    unreadable answer fails this model. A transient failure that outlived the client's own
    retries while the rest of the server works is tried again a few rounds, a poll interval
    apart, before it fails the model. Unknown POST outcomes go back to the caller to reconcile.
    """
    for _ in range(_TRANSIENT_ROUNDS):
        try:
            return await call()
        except AuthError as exc:
            raise RunAborted(str(exc)) from exc
        except (OutcomeUnknown, ServerUnavailable):
            raise
        except TransientApiError as exc:
            last = exc
            log.warning("fleet.call.transient", error=str(exc))
            await ctx.sleep(ctx.poll_interval)
            _stop_if_draining(ctx)
        except (PermanentApiError, ProtocolError) as exc:
            raise _StageFailed(str(exc)) from exc
    raise _StageFailed(f"the server kept failing: {last}")
