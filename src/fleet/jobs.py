"""A stage's remote job: the intent recorded before it is sent, its submission, following it
to its end, and what it produced.

A stage opens an attempt by recording its intent (`submitting`) before the request goes out,
so a restart knows a job may exist and looks for it (reconcile.py) before sending another. A
submission whose answer is lost is looked for the same way before it is sent again. A job
that ends in ERROR is tried again as a new attempt while the stage has tries left.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, TypeVar

import anyio

from fleet.errors import OutcomeUnknown, ungrouped
from fleet.modelops import Job
from fleet.polling import Finished, InFlight
from fleet.project_run import (
    Deferred,
    Paused,
    ProjectRun,
    StageFailed,
    api_call,
    duration,
    stop_if_draining,
    transition,
    work_left,
)
from fleet.reconcile import SERVER_SINCE, find_submitted
from fleet.records import ModelRecord, StageRecord
from fleet.retries import Account, settle
from fleet.stages import JOB_NOUNS, STARTABLE, Stage, StageState

S = StageState
_R = TypeVar("_R")
# Re-reads of a finished job's result start this far apart, doubling up to `poll_interval`.
_RESULT_FIRST_GAP_S = 1.0
_UNKNOWN_OUTCOME_FAILURE = "the server did not answer the submission and has no record of it"
FOUND_AFTER_RESTART = "found on the server after restart"
FOUND_AFTER_LOSS = "found on the server after a lost response"
_FOUND_DONE = "already done on the server"


@dataclass(frozen=True, slots=True)
class RemoteJob:
    """What a stage's remote job is to its runner: how to send it, and what to do around it.

    `known_jobs` are the model's jobs of other stages, recorded with the intent: never taken
    for this stage's job when a lost submission is looked for. `before` finds what is
    recorded with the first intent; `finish` records the outcome of a job that completed
    (default: the stage succeeded); `already_done` says whether a stage caught between intent
    and job id needs no job any more.
    """

    submit: Callable[[Account], Awaitable[Job]]
    trained_model_id: str | None
    deployment_id: str | None = None
    before: Callable[[], Awaitable[dict[str, Any]]] | None = None
    finish: Callable[[StageRecord], Awaitable[StageRecord]] | None = None
    already_done: Callable[[], Awaitable[bool]] | None = None
    known_jobs: frozenset[str] = frozenset()


async def job_stage(
    ctx: ProjectRun, model: ModelRecord, record: StageRecord, job: RemoteJob
) -> StageRecord:
    """Submit (or find) the stage's remote job, follow it to its end, and record the outcome.

    A job that ends in ERROR is tried again as a new attempt while the stage has tries left.
    """
    async with ctx.slots.hold(record.stage, work_left(ctx, record)):
        while True:
            # When the job was created, in server time, if known: a job resumed from an
            # earlier process is first read by id.
            created_at: datetime | None = None
            if record.state in STARTABLE:
                data = await _intent(record, job)
                record = await open_attempt(ctx, record, data=data, deployment_id=job.deployment_id)
                record, created_at = await _submit(
                    ctx, model, record, job.submit, job.trained_model_id
                )
            elif record.state is S.SUBMITTING:
                found = await find_submitted(ctx, model, record, job.trained_model_id)
                if found is not None:
                    record = await _submitted(ctx, record, found, FOUND_AFTER_RESTART)
                elif job.already_done is not None and await job.already_done():
                    return await transition(ctx, record, S.SUCCEEDED, detail=_FOUND_DONE)
                else:
                    record, created_at = await _submit(
                        ctx, model, record, job.submit, job.trained_model_id
                    )
            record = await _follow(ctx, record, created_at)
            if record.state is not S.RETRYING:
                break
    if record.state is S.FAILED:
        return record
    if job.finish is None:
        return await transition(ctx, record, S.SUCCEEDED)
    return await job.finish(record)


async def _intent(record: StageRecord, job: RemoteJob) -> dict[str, Any]:
    """What is recorded with the intent to submit: the jobs not to take for this one's, and
    what `before` finds before the first attempt."""
    data = dict(record.data)
    data.pop(SERVER_SINCE, None)
    if job.known_jobs:
        data["known_jobs"] = sorted(job.known_jobs)
    if job.before is not None and record.state is S.PENDING:
        data.update(await job.before())
    return data


async def open_attempt(ctx: ProjectRun, record: StageRecord, **changes: Any) -> StageRecord:
    """Record the intent to submit a new attempt: committed before its request goes out.
    Not while draining, and no new training past the run's deadline.

    The intent is stamped with the latest server time fleet has seen (a `Date` header, a
    job's `createdAt`): a time the server's clock had passed before the intent, in the
    server's own clock. A job found on the server later is this attempt's only if it was
    created after it, whatever the skew between the two clocks."""
    stop_if_draining(ctx)
    _defer_training_past_deadline(ctx, record)
    floor = ctx.api.server_time_floor()
    if floor is not None:
        data = dict(changes.pop("data", record.data))
        changes["data"] = {**data, SERVER_SINCE: floor.isoformat()}
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


def _defer_training_past_deadline(ctx: ProjectRun, record: StageRecord) -> None:
    deadline = ctx.plan.stop_training_at
    if record.stage is Stage.TRAIN and deadline is not None and ctx.now() >= deadline:
        raise Deferred


async def _submit(
    ctx: ProjectRun,
    model: ModelRecord,
    record: StageRecord,
    submit: Callable[[Account], Awaitable[Job]],
    trained_model_id: str | None,
) -> tuple[StageRecord, datetime | None]:
    """Send the stage's job; the record with its job id, and when the server created it.

    A lost answer is looked for on the server before the request goes again, and it goes
    again only from the same call's account (`retries.settle`)."""

    async def find() -> Job | None:
        return await find_submitted(ctx, model, record, trained_model_id)

    try:
        job, found = await settle(
            lambda account: api_call(lambda: submit(account)), find, ctx.api.retry_account()
        )
    except OutcomeUnknown as lost:
        raise StageFailed(unknown_outcome(lost)) from lost
    if found:
        return await _submitted(ctx, record, job, FOUND_AFTER_LOSS), None
    _check_owner(record, job, model.spec.id, trained_model_id)
    return await _submitted(ctx, record, job, None), job.created_at


def unknown_outcome(lost: OutcomeUnknown | None) -> str:
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
        raise StageFailed(
            f"the server answered a read of {record.stage} job {job_id} with job {job.id}"
        )
    if job.model_id is not None and job.model_id != model_id:
        raise StageFailed(
            f"the server answered the {record.stage} request with job {job.id} of another "
            f"model ({job.model_id})"
        )
    if (
        trained_model_id is not None
        and job.trained_model_id is not None
        and job.trained_model_id != trained_model_id
    ):
        raise StageFailed(
            f"the server answered the {record.stage} request with job {job.id} of another "
            f"version ({job.trained_model_id})"
        )


async def _submitted(
    ctx: ProjectRun, record: StageRecord, job: Job, detail: str | None
) -> StageRecord:
    changes: dict[str, Any] = {"job_id": job.id}
    if record.stage is Stage.TRAIN:
        if job.trained_model_id is None:
            raise StageFailed(f"training job {job.id} names no trained model")
        changes["trained_model_id"] = job.trained_model_id
    elif job.trained_model_id is not None:
        changes["trained_model_id"] = job.trained_model_id
    return await transition(ctx, record, S.SUBMITTED, detail=detail, **changes)


async def _follow(ctx: ProjectRun, record: StageRecord, created_at: datetime | None) -> StageRecord:
    """Wait for the stage's job to end: the record comes back failed, or still in flight (with
    how long the job ran) for the caller to finish. The caller holds the job's slot.
    """
    job_id, jobs = record.job_id, ctx.jobs
    assert job_id is not None
    timeout = ctx.plan.job_timeouts.get(record.stage.value, math.inf)

    async def finished() -> Finished | None:
        while True:
            submitted = record.submitted_at
            age = 0.0 if submitted is None else max((ctx.now() - submitted).total_seconds(), 0.0)
            job = InFlight(
                job_id,
                record.stage.value,
                created_at=created_at,
                expected_s=ctx.expected.timing(record.model_id, record.stage),
                age_s=age,
                timeout_s=timeout,
            )
            calibrating = ctx.expected.calibrating(record.model_id, record.stage)
            if calibrating is None:
                return await jobs.finished(job)
            # Followed with no prediction until history can time it, then handed over again.
            done = await _unless(functools.partial(jobs.finished, job), calibrating)
            if not isinstance(done, _Retimed):
                return done

    done = await api_call(finished)
    if done is None:
        # Draining: the job goes on without us; the next start follows it again.
        raise Paused
    _check_owner(record, done.job, record.model_id, record.trained_model_id, job_id=job_id)
    if done.timed_out:
        noun = JOB_NOUNS[record.stage]
        still = done.job.status or "without a status"
        raise StageFailed(f"{noun} job {job_id} still {still} after {duration(timeout)}")
    record = replace(record, data={**record.data, "ran_s": round(done.ran_s, 3)})
    if done.job.status == "COMPLETED":
        ctx.expected.finished(record.model_id, record.stage, done.ran_s)
        return record
    return await _ended_badly(ctx, record, done.job)


class _Retimed:
    """What `_unless` answers when its event came first."""


_RETIMED = _Retimed()


async def _unless(
    call: Callable[[], Awaitable[Finished | None]], event: anyio.Event
) -> Finished | _Retimed | None:
    """`call()`'s answer, or `_RETIMED` if `event` is set first (the call is then cancelled)."""
    answer: Finished | _Retimed | None = _RETIMED
    with ungrouped():
        async with anyio.create_task_group() as tg:

            async def run() -> None:
                nonlocal answer
                answer = await call()
                tg.cancel_scope.cancel()

            tg.start_soon(run)
            await event.wait()
            tg.cancel_scope.cancel()
    return answer


async def _ended_badly(ctx: ProjectRun, record: StageRecord, job: Job) -> StageRecord:
    """Close an attempt whose job ended in ERROR or CANCELLED: retry while tries are left."""
    error = f"{JOB_NOUNS[record.stage]} job {job.id} ended {job.status}"
    tries = ctx.plan.attempts.get(record.stage, 1)
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


async def job_result(ctx: ProjectRun, read: Callable[[], Awaitable[_R | None]], what: str) -> _R:
    """What a finished job produced, re-read until it appears, for at most `result_wait`.

    The server may write a job's result (its EVALUATED event, its deployment) a little after
    the job reads COMPLETED; a result that never comes fails the stage, never the night.
    """
    started = ctx.clock()
    gap = _RESULT_FIRST_GAP_S
    while True:
        found = await api_call(read)
        if found is not None:
            return found
        if ctx.clock() - started >= ctx.plan.result_wait:
            raise StageFailed(
                f"{what} did not appear within {duration(ctx.plan.result_wait)} of the job's end"
            )
        await ctx.sleep(gap)
        stop_if_draining(ctx)
        gap = min(gap * 2, ctx.plan.poll_interval)


def jobs_of(records: Mapping[Stage, StageRecord]) -> frozenset[str]:
    """Every job recorded for the model in this run: its own, and its failed attempts'."""
    jobs = {r.job_id for r in records.values() if r.job_id is not None}
    for r in records.values():
        jobs.update(r.data.get("failed_jobs", []))
    return frozenset(jobs)
