"""One model's lifecycle: train → evaluate → approve → deploy → retire, resumable at any step.

`transition()` is the only code that changes a stage's state: it checks the move against
`stages.ALLOWED`, makes it durable, logs it and updates the progress counts. Each stage runner
starts from whatever state the store holds, so a restarted run continues where it stopped:
finished stages are skipped, submitted jobs are polled again, and a stage caught between
"intent recorded" and "job id recorded" first looks for its job on the server.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, TypeVar

import anyio
import structlog

from fleet.client import (
    Deployment,
    DeployRequest,
    EvaluateRequest,
    Job,
    ModelOps,
    TrainRequest,
    Version,
    latest_metrics,
    metrics_of_job,
)
from fleet.errors import (
    AuthError,
    Conflict,
    InvalidTransition,
    NotFound,
    OutcomeUnknown,
    PermanentApiError,
    ProtocolError,
    RunAborted,
    ServerUnavailable,
    TransientApiError,
    ungrouped,
)
from fleet.polling import Finished, JobWatch, PollMode
from fleet.production import Production
from fleet.progress import ProgressSink
from fleet.records import ModelRecord, StageRecord, utc_now
from fleet.stages import (
    ALLOWED,
    DONE,
    FINISHED,
    JOB_NOUNS,
    RECORDED_JOB_TYPES,
    RECORDED_OTHER_JOB_TYPES,
    STAGE_ORDER,
    STARTABLE,
    Outcome,
    Stage,
    StageState,
)
from fleet.store import Store

log = structlog.get_logger("fleet.lifecycle")
_T = TypeVar("_T")
_R = TypeVar("_R")
_EPOCH = datetime.min.replace(tzinfo=UTC)

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
# still be ours, when the intent could not be stamped with the server's time (no answer of
# the server carried it yet): covers any plausible clock skew between this host and it.
_UNSTAMPED_SKEW = timedelta(minutes=5)
# Jobs of the listing read to reconcile a lost submission when the server is not seen to sort
# them newest first; past that, fleet cannot tell whether the job exists and sends nothing.
_RECONCILE_SCAN = 5000
# ...and it stops at the window's edge only after seeing this many jobs in that order.
_ORDER_EVIDENCE = 20
# Versions made since an intent whose jobs are read to find the one it started.
_TRAINING_CANDIDATES = 3
# Versions that `from_version = "latest"` may start from (not archived, not a failed training).
_USABLE_VERSION = frozenset({"TRAINED", "IMPORTED", "EVALUATED", "APPROVED", "DEPLOYED"})
# What is in production is read for all models at most this often (seconds of `clock`).
_PRODUCTION_TTL_S = 5.0
# Re-reads of a finished job's result start this far apart, doubling up to `poll_interval`.
_RESULT_FIRST_GAP_S = 1.0
# A submission whose answer is lost is looked for on the server and, if absent, sent again,
# this many times in all.
_UNKNOWN_OUTCOME_TRIES = 3
# Rounds of a call that keeps failing transiently (each after the client's own retries).
_TRANSIENT_ROUNDS = 5
_UNKNOWN_OUTCOME_FAILURE = "the server did not answer the submission and has no record of it"
_FOUND_AFTER_RESTART = "found on the server after restart"
_FOUND_AFTER_LOSS = "found on the server after a lost response"
_FOUND_DONE = "already done on the server"
# The stage data key of the server time an intent was stamped with.
_SERVER_SINCE = "server_since"


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
    poll_mode: PollMode = PollMode.EACH
    # Seconds a job of each kind (a stage's name, or "score") may run before its stage fails.
    job_timeouts: Mapping[str, float] = field(default_factory=dict)
    # Seconds to keep re-reading what a finished job produced before failing the stage.
    result_wait: float = 60.0
    # Follows the run's remote jobs, and knows what is in production; set by `watching()`.
    jobs: JobWatch | None = None
    production: Production | None = None
    # Every stage record as last written, so a failure is recorded on top of what the stage
    # had already written (its attempt, job and data), never on the record it started from.
    latest: dict[tuple[str, Stage], StageRecord] = field(default_factory=dict)


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
    production = Production(ctx.api, clock=ctx.clock, ttl_s=_PRODUCTION_TTL_S)
    with ungrouped():
        async with anyio.create_task_group() as tg:
            tg.start_soon(watch.run, ctx.draining)
            yield replace(ctx, jobs=watch, production=production)
            tg.cancel_scope.cancel()


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
                        record = await _fail(ctx, record, failed.reason)
                    except _Paused:
                        return Outcome.RUNNING
                    except _Deferred:
                        return Outcome.PENDING
                    finally:
                        ctx.latest.pop((record.model_id, stage), None)
                records[stage] = record
            if record.state is S.FAILED:
                ctx.progress.model_finished(model, record)
                return Outcome.FAILED
    if _rejected(records):
        ctx.progress.model_finished(model, None, rejected=True)
        return Outcome.REJECTED
    ctx.progress.model_finished(model, None)
    return Outcome.SUCCEEDED


async def _fail(ctx: Context, started: StageRecord, reason: str) -> StageRecord:
    """Record a stage's failure on the record as the stage last wrote it (with its attempt,
    job id and data): the record it started from would undo all that."""
    record = ctx.latest.pop((started.model_id, started.stage), started)
    if record.state in FINISHED:
        return record
    return await transition(ctx, record, S.FAILED, error=reason)


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
        resources=spec.resources.overrides(),
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
        resources=spec.resources.overrides(),
        docker_image=spec.docker_image,
    )

    async def submit() -> Job:
        return await ctx.api.evaluate(trained_model_id, request)

    async def finish(done: StageRecord) -> StageRecord:
        job_id = done.job_id
        assert job_id is not None

        async def own_metrics() -> dict[str, str] | None:
            # This evaluation's own event, never another's: the server may write it a
            # little after the job reads COMPLETED.
            return metrics_of_job(await ctx.api.events(trained_model_id), job_id)

        metrics = await _result(ctx, own_metrics, f"the EVALUATED event of evaluation job {job_id}")
        data = {**done.data, "metrics": metrics, **_monitor(model, metrics)}
        return await transition(ctx, done, S.SUCCEEDED, metrics=metrics, data=data)

    return await _job_stage(
        ctx,
        model,
        record,
        submit,
        trained_model_id=trained_model_id,
        finish=finish,
        known_jobs=_jobs_of(records),
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
        lost: OutcomeUnknown | None = None
        for _ in range(_UNKNOWN_OUTCOME_TRIES):
            try:
                await _call(ctx, lambda: call(trained_model_id, comment))
            except OutcomeUnknown as exc:
                lost = exc
                if await done():
                    return await transition(ctx, record, S.SUCCEEDED, detail=_FOUND_AFTER_LOSS)
                continue
            return await transition(ctx, record, S.SUCCEEDED, detail=comment)
        raise _StageFailed(_unknown_outcome(lost))


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
    active = await _in_production(ctx, model)
    others = [d for d in active if d.trained_model_id and d.trained_model_id != trained_model_id]
    if not others:
        return None, None
    champion_id = others[-1].trained_model_id
    assert champion_id is not None
    events = await _call(ctx, lambda: ctx.api.events(champion_id))
    return champion_id, latest_metrics(events) or {}


async def _in_production(ctx: Context, model: ModelRecord) -> list[Deployment]:
    """The model's deployments in production, oldest first (shared reads; see production.py)."""
    production = ctx.production
    assert production is not None, "production is read inside lifecycle.watching()"
    return await _call(ctx, lambda: production.of_model(model.spec.id))


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
        active = await _in_production(ctx, model)
        version = active[-1].trained_model_id if active else None
        how = "deployed"
    else:
        versions = await _call(ctx, lambda: ctx.api.versions(model.spec.id))
        version = _latest_usable(versions)
        how = "latest"
    if version is None:
        raise _StageFailed(f"no {how} trained version to start from")
    return await transition(
        ctx, record, S.SKIPPED, trained_model_id=version, detail=f"starts from the {how} version"
    )


def _latest_usable(versions: list[Version]) -> str | None:
    """The newest version that is not archived and did not fail its training."""
    usable = [
        v for v in versions if not v.archived and (v.status is None or v.status in _USABLE_VERSION)
    ]
    if not usable:
        return None
    return max(usable, key=lambda v: v.created_at or _EPOCH).id


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
        resources=spec.resources.overrides(),
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
        previous = [
            {"trained_model_id": d.trained_model_id, "deployment_id": d.id}
            for d in await _in_production(ctx, model)
            if d.trained_model_id != trained_model_id
        ]
        return {"previous": previous}

    async def finish(done: StageRecord) -> StageRecord:
        job_id = done.job_id
        assert job_id is not None

        async def created() -> Deployment | None:
            try:
                return await ctx.api.deployment_for_job(job_id)
            except NotFound:
                return None  # not written yet

        deployment = await _result(ctx, created, f"the deployment of deployment job {job_id}")
        if deployment.trained_model_id not in {
            None,
            trained_model_id,
        } or deployment.model_id not in {
            None,
            model.spec.id,
        }:
            raise _StageFailed(
                f"deployment job {job_id} made deployment {deployment.id} of another model or "
                f"version ({deployment.model_id}, {deployment.trained_model_id})"
            )
        data = dict(done.data)
        if spec.cron == "@once":
            data.update(await _scoring(ctx, deployment.id))
        return await transition(ctx, done, S.SUCCEEDED, deployment_id=deployment.id, data=data)

    return await _job_stage(
        ctx,
        model,
        record,
        submit,
        trained_model_id=trained_model_id,
        before=before,
        finish=finish,
        known_jobs=_jobs_of(records),
    )


async def _scoring(ctx: Context, deployment_id: str) -> dict[str, Any]:
    """The scoring job a `cron = "@once"` deployment started, if the server shows one."""
    try:
        jobs = await _call(ctx, lambda: ctx.api.scoring_jobs(deployment_id))
    except _StageFailed as failed:
        # A server without the finder (older than the 7.1.2 client), or one that refuses it:
        # the deployment stands; the scoring job is only not followed.
        _once("fleet.scoring.unavailable", error=failed.reason)
        return {}
    if not jobs:
        return {}
    newest = max(jobs, key=lambda j: j.created_at or _EPOCH)
    return {"scoring_job_id": newest.id, "scoring_status": newest.status}


async def _retire(
    ctx: Context, model: ModelRecord, records: dict[Stage, StageRecord], record: StageRecord
) -> StageRecord:
    target = _retire_target(ctx, model, records[Stage.DEPLOY])
    if isinstance(target, str):
        return await transition(ctx, record, S.SKIPPED, detail=target)
    tm_id, dep_id = target
    if record.state is S.PENDING and model.spec.lifecycle.retire_mode == "deployed":
        # Not while the deployment's scoring job runs; waited for before taking a slot.
        scored = await _scored(ctx, records[Stage.DEPLOY], dep_id)
        record = replace(record, data={**record.data, **scored})

    async def submit() -> Job:
        return await ctx.api.retire(tm_id, dep_id)

    async def retired() -> bool:
        active = await _call(ctx, lambda: ctx.api.deployments_of_version(tm_id))
        return all(d.id != dep_id for d in active)

    async def finish(done: StageRecord) -> StageRecord:
        async def gone() -> bool | None:
            return True if await retired() else None

        await _result(ctx, gone, f"the retirement of deployment {dep_id}")
        return await transition(ctx, done, S.SUCCEEDED)

    return await _job_stage(
        ctx,
        model,
        record,
        submit,
        trained_model_id=tm_id,
        deployment_id=dep_id,
        finish=finish,
        already_done=retired,
        known_jobs=_jobs_of(records),
    )


def _retire_target(
    ctx: Context, model: ModelRecord, deployed: StageRecord
) -> tuple[str, str] | str:
    """The version and deployment to retire, per `retire_mode`; or why nothing is retired."""
    mode = model.spec.lifecycle.retire_mode
    if mode == "none":
        return "retire_mode is none"
    if mode == "deployed":
        return str(deployed.trained_model_id), str(deployed.deployment_id)
    previous = list(deployed.data.get("previous", []))
    if not previous:
        return "no earlier version was deployed"
    # The newest earlier deployment is the one the new version replaces; any older ones
    # still active were left there by hand: reported, not touched.
    if len(previous) > 1:
        log.warning(
            "fleet.retire.others_left_active",
            run_id=ctx.run_id,
            model_id=model.spec.id,
            deployments=[str(p["deployment_id"]) for p in previous[:-1]],
        )
    return str(previous[-1]["trained_model_id"]), str(previous[-1]["deployment_id"])


async def _scored(ctx: Context, deployed: StageRecord, deployment_id: str) -> dict[str, Any]:
    """Wait for the scoring job of the deployment about to be retired, if it has one."""
    job_id = deployed.data.get("scoring_job_id")
    if job_id is None:
        found = await _scoring(ctx, deployment_id)
        job_id = found.get("scoring_job_id")
    if job_id is None:
        return {}
    jobs = ctx.jobs
    assert jobs is not None
    timeout = ctx.job_timeouts.get("score", math.inf)
    done = await _call(
        ctx, lambda: jobs.finished(str(job_id), None, "score", None, timeout_s=timeout)
    )
    if done is None:
        raise _Paused
    if done.timed_out:
        raise _StageFailed(
            f"scoring job {job_id} still {done.job.status or 'unfinished'} after "
            f"{_duration(timeout)}; its deployment {deployment_id} was not retired"
        )
    return {"scoring_job_id": job_id, "scoring_status": done.job.status}


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
    known_jobs: Iterable[str] = (),
) -> StageRecord:
    """Submit (or find) the stage's remote job, follow it to its end, and record the outcome.

    A job that ends in ERROR is tried again as a new attempt while the stage has tries left.
    `known_jobs` are the model's jobs of other stages, recorded with the intent: never taken
    for this stage's job when a lost submission is looked for.
    """
    async with ctx.limiters[record.stage]:
        while True:
            # When the job was created, in server time, if known: a job resumed from an
            # earlier process is first read by id.
            created_at: datetime | None = None
            if record.state in STARTABLE:
                data = await _intent(record, known_jobs, before)
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


async def _intent(
    record: StageRecord,
    known_jobs: Iterable[str],
    before: Callable[[], Awaitable[dict[str, Any]]] | None,
) -> dict[str, Any]:
    """What is recorded with the intent to submit: the jobs not to take for this one's, and
    what `before` finds before the first attempt."""
    data = dict(record.data)
    data.pop(_SERVER_SINCE, None)
    if known_jobs:
        data["known_jobs"] = sorted(set(known_jobs))
    if before is not None and record.state is S.PENDING:
        data.update(await before())
    return data


async def _open_attempt(ctx: Context, record: StageRecord, **changes: Any) -> StageRecord:
    """Record the intent to submit a new attempt: committed before its request goes out.
    Not while draining, and no new training past the run's deadline.

    The intent is stamped with the latest server time fleet has seen (a `Date` header, a
    job's `createdAt`): a time the server's clock had passed before the intent, in the
    server's own clock. A job found on the server later is this attempt's only if it was
    created after it, whatever the skew between the two clocks."""
    _stop_if_draining(ctx)
    _defer_training_past_deadline(ctx, record)
    floor = ctx.api.server_time_floor()
    if floor is not None:
        data = dict(changes.pop("data", record.data))
        changes["data"] = {**data, _SERVER_SINCE: floor.isoformat()}
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
    lost: OutcomeUnknown | None = None
    for _ in range(_UNKNOWN_OUTCOME_TRIES):
        try:
            job = await _call(ctx, submit)
        except OutcomeUnknown as exc:
            # The server may have created the job: look before sending it again.
            lost = exc
            found = await _find_submitted(ctx, model, record, trained_model_id)
            if found is not None:
                return await _submitted(ctx, record, found, _FOUND_AFTER_LOSS), None
            continue
        _check_owner(record, job, model.spec.id, trained_model_id)
        return await _submitted(ctx, record, job, None), job.created_at
    raise _StageFailed(_unknown_outcome(lost))


def _unknown_outcome(lost: OutcomeUnknown | None) -> str:
    """Why a submission failed: nothing came back, and the server has no record of it."""
    return _UNKNOWN_OUTCOME_FAILURE + (f" (last answer: {lost})" if lost is not None else "")


def _check_owner(
    record: StageRecord,
    job: Job,
    model_id: str,
    trained_model_id: str | None,
    *,
    job_id: str | None = None,
) -> None:
    """A job the server answered with must be the one asked about (`job_id`), of the model
    (and version) it was asked for: another model's job would be followed, deployed and
    retired as this model's."""
    if job_id is not None and job.id != job_id:
        raise _StageFailed(
            f"the server answered a read of {record.stage} job {job_id} with job {job.id}"
        )
    if job.model_id is not None and job.model_id != model_id:
        raise _StageFailed(
            f"the server answered the {record.stage} request with job {job.id} of another "
            f"model ({job.model_id})"
        )
    if (
        trained_model_id is not None
        and job.trained_model_id is not None
        and job.trained_model_id != trained_model_id
    ):
        raise _StageFailed(
            f"the server answered the {record.stage} request with job {job.id} of another "
            f"version ({job.trained_model_id})"
        )


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
    timeout = ctx.job_timeouts.get(record.stage.value, math.inf)

    async def finished() -> Finished | None:
        submitted = record.submitted_at
        age = 0.0 if submitted is None else max((ctx.now() - submitted).total_seconds(), 0.0)
        return await jobs.finished(
            job_id, created_at, record.stage.value, expected, age_s=age, timeout_s=timeout
        )

    done = await _call(ctx, finished)
    if done is None:
        # Draining: the job goes on without us; the next start follows it again.
        raise _Paused
    _check_owner(record, done.job, record.model_id, record.trained_model_id, job_id=job_id)
    if done.timed_out:
        noun = JOB_NOUNS[record.stage]
        still = done.job.status or "without a status"
        raise _StageFailed(f"{noun} job {job_id} still {still} after {_duration(timeout)}")
    record = replace(record, data={**record.data, "ran_s": round(done.ran_s, 3)})
    if done.job.status == "COMPLETED":
        return record
    return await _ended_badly(ctx, record, done.job)


async def _ended_badly(ctx: Context, record: StageRecord, job: Job) -> StageRecord:
    """Close an attempt whose job ended in ERROR or CANCELLED: retry while tries are left."""
    error = f"{JOB_NOUNS[record.stage]} job {job.id} ended {job.status}"
    tries = ctx.max_attempts.get(record.stage, 1)
    # Never taken for a later attempt's job (`--retry-failed` included).
    data = {**record.data, "failed_jobs": [*record.data.get("failed_jobs", []), job.id]}
    if job.status == "ERROR" and record.attempt < tries:
        return await transition(
            ctx,
            record,
            S.RETRYING,
            error=error,
            data=data,
            detail=f"attempt {record.attempt} of {tries} failed",
        )
    return await transition(ctx, record, S.FAILED, error=error, data=data)


async def _result(ctx: Context, read: Callable[[], Awaitable[_R | None]], what: str) -> _R:
    """What a finished job produced, re-read until it appears, for at most `result_wait`.

    The server may write a job's result (its EVALUATED event, its deployment) a little after
    the job reads COMPLETED; a result that never comes fails the stage, never the night.
    """
    started = ctx.clock()
    gap = _RESULT_FIRST_GAP_S
    while True:
        found = await _call(ctx, read)
        if found is not None:
            return found
        if ctx.clock() - started >= ctx.result_wait:
            raise _StageFailed(
                f"{what} did not appear within {_duration(ctx.result_wait)} of the job's end"
            )
        await ctx.sleep(gap)
        _stop_if_draining(ctx)
        gap = min(gap * 2, ctx.poll_interval)


# -- reconciliation --------------------------------------------------------------------------


async def _find_submitted(
    ctx: Context, model: ModelRecord, record: StageRecord, trained_model_id: str | None
) -> Job | None:
    """The job this stage submitted before a crash or a lost response, if the server has it.

    Matched by what is recorded of every job, never by a guessed type name: a training by
    the version it created (a version's `jobId` is the job that made it), the other stages by
    model, version and creation window in the jobs listing.
    """
    since = _since(record, ctx.now())
    known = set(record.data.get("failed_jobs", [])) | set(record.data.get("known_jobs", []))
    if record.stage is Stage.TRAIN:
        return await _find_training(ctx, model, since, known)
    assert trained_model_id is not None
    return await _find_in_listing(
        ctx, model, record, trained_model_id=trained_model_id, since=since, known=known
    )


def _since(record: StageRecord, now: datetime) -> datetime:
    """The earliest server time at which this attempt's job can have been created: the
    server time its intent was stamped with; for an intent without one, its local time less
    an allowance for clock skew."""
    stamp = record.data.get(_SERVER_SINCE)
    if isinstance(stamp, str):
        try:
            return datetime.fromisoformat(stamp)
        except ValueError:
            pass
    return (record.submitted_at or now) - _UNSTAMPED_SKEW


async def _find_training(
    ctx: Context, model: ModelRecord, since: datetime, earlier: set[str]
) -> Job | None:
    """The training this intent started: the newest version made since it, by a job of this
    model created since it (a version is written when its training ends, so its own date
    says little about when the job was sent)."""
    versions = await _call(ctx, lambda: ctx.api.versions(model.spec.id))
    made = sorted(
        (
            v
            for v in versions
            if v.job_id is not None
            and v.job_id not in earlier
            and v.created_at is not None
            and v.created_at >= since
        ),
        key=lambda v: v.created_at or _EPOCH,
        reverse=True,
    )
    for version in made[:_TRAINING_CANDIDATES]:
        job = await _call(ctx, partial(ctx.api.get_job, str(version.job_id)))
        if (
            job.id == version.job_id
            and job.model_id in {None, model.spec.id}
            and job.created_at is not None
            and job.created_at >= since
        ):
            return job
    return None


async def _find_in_listing(
    ctx: Context,
    model: ModelRecord,
    record: StageRecord,
    *,
    trained_model_id: str,
    since: datetime,
    known: set[str],
) -> Job | None:
    """Scan the jobs listing for this stage's job: the model's, on this version, created
    since the intent, not one fleet already knows; of a stage whose job type was recorded
    (EVALUATION, DEPLOYMENT) only that type, else any type but another stage's recorded one.
    Of several, the one created closest to the intent: what the server starts because of a
    job (a deployment's scoring job) comes after it. The scan stops at the window's edge
    only when the listing was seen newest first; otherwise it reads it all (to a bound)."""
    stage = record.stage
    candidates: list[Job] = []
    ordered, previous, seen = True, None, 0
    async for job in ctx.api.recent_jobs(_RECONCILE_SCAN + 1):
        seen += 1
        if seen > _RECONCILE_SCAN:
            raise _StageFailed(
                f"cannot tell whether the {stage} request reached the server: the jobs "
                f"listing is not sorted newest first and holds over {_RECONCILE_SCAN} jobs"
            )
        created = job.created_at
        if created is None:
            continue
        if previous is not None and created > previous:
            ordered = False  # the server ignores the sort: read on, never stop early
        previous = created
        if created < since:
            if ordered and seen >= _ORDER_EVIDENCE:
                break
            continue
        if _could_be(job, model.spec.id, trained_model_id, stage) and job.id not in known:
            candidates.append(job)
    if not candidates:
        return None
    # Every candidate was created since the intent (in the server's clock): the earliest.
    found = min(candidates, key=lambda j: j.created_at or since)
    if stage not in RECORDED_JOB_TYPES:
        _once("fleet.reconcile.unrecorded_job_type", job_type=found.type, stage=stage.value)
    return found


def _could_be(job: Job, model_id: str, trained_model_id: str, stage: Stage) -> bool:
    """Whether a job could be this stage's, by what every job records (never by a guess)."""
    if job.model_id != model_id or job.trained_model_id != trained_model_id:
        return False
    ours = RECORDED_JOB_TYPES.get(stage)
    if ours is not None:
        return job.type in {ours, None}  # not a scoring job the deployment started, say
    return job.type not in set(RECORDED_JOB_TYPES.values()) | RECORDED_OTHER_JOB_TYPES


_LOGGED_ONCE: set[tuple[str, str]] = set()


def _once(event: str, **fields: Any) -> None:
    """Log an event once per process for each set of values (an unseen job type, say)."""
    key = (event, repr(sorted(fields.items())))
    if key not in _LOGGED_ONCE:
        _LOGGED_ONCE.add(key)
        log.warning(event, **fields)


def _duration(seconds: float) -> str:
    """12 h, 90 min, 45 s: a timeout as an operator reads it."""
    if math.isinf(seconds):
        return "ever"
    if seconds >= 3600 and seconds % 3600 == 0:  # noqa: PLR2004
        return f"{seconds / 3600:g} h"
    if seconds >= 60 and seconds % 60 == 0:  # noqa: PLR2004
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s"


def _jobs_of(records: Mapping[Stage, StageRecord]) -> set[str]:
    """Every job recorded for the model in this run: its own, and its failed attempts'."""
    jobs = {r.job_id for r in records.values() if r.job_id is not None}
    for r in records.values():
        jobs.update(r.data.get("failed_jobs", []))
    return jobs


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
    A 409 was already tried again by the client (nothing was applied): it fails the model.
    """
    for _ in range(_TRANSIENT_ROUNDS):
        try:
            return await call()
        except AuthError as exc:
            raise RunAborted(str(exc)) from exc
        except (OutcomeUnknown, ServerUnavailable):
            raise
        except Conflict as exc:
            raise _StageFailed(f"the server kept refusing it as a conflict: {exc}") from exc
        except TransientApiError as exc:
            last = exc
            log.warning("fleet.call.transient", error=str(exc))
            await ctx.sleep(ctx.poll_interval)
            _stop_if_draining(ctx)
        except (PermanentApiError, ProtocolError) as exc:
            raise _StageFailed(str(exc)) from exc
    raise _StageFailed(f"the server kept failing: {last}")
