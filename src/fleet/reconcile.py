"""Finding a stage's job on the server again: after a crash between "intent recorded" and "job
id recorded", or after a submission whose answer was lost.

Matched by what is recorded of every job, never by a guessed type name: a training by the
version it created (a version's `jobId` is the job that made it), the other stages by model,
version and creation window in the jobs listing. The window opens at the intent, stamped with
the server's own time (`SERVER_SINCE`), so last night's job is never taken for tonight's.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial

from fleet.modelops import Job
from fleet.project_run import ProjectRun, StageFailed, api_call, once
from fleet.records import ModelRecord, StageRecord
from fleet.stages import RECORDED_JOB_TYPES, RECORDED_OTHER_JOB_TYPES, Stage

_EPOCH = datetime.min.replace(tzinfo=UTC)
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
# The stage data key of the server time an intent was stamped with.
SERVER_SINCE = "server_since"


async def find_submitted(
    ctx: ProjectRun, model: ModelRecord, record: StageRecord, trained_model_id: str | None
) -> Job | None:
    """The job this stage submitted before a crash or a lost response, if the server has it.

    Matched by what is recorded of every job, never by a guessed type name: a training by
    the version it created (a version's `jobId` is the job that made it), the other stages by
    model, version and creation window in the jobs listing.
    """
    window = _Window(
        since=_since(record, ctx.now()),
        known=frozenset(record.data.get("failed_jobs", []))
        | frozenset(record.data.get("known_jobs", [])),
    )
    if record.stage is Stage.TRAIN:
        return await _find_training(ctx, model, window)
    assert trained_model_id is not None
    return await _find_in_listing(ctx, model, record.stage, trained_model_id, window)


@dataclass(frozen=True, slots=True)
class _Window:
    """Where an attempt's job can be: created since `since` (server time), not one of `known`
    (the model's other jobs, and this stage's failed attempts)."""

    since: datetime
    known: frozenset[str]


def _since(record: StageRecord, now: datetime) -> datetime:
    """The earliest server time at which this attempt's job can have been created: the
    server time its intent was stamped with; for an intent without one, its local time less
    an allowance for clock skew."""
    stamp = record.data.get(SERVER_SINCE)
    if isinstance(stamp, str):
        try:
            return datetime.fromisoformat(stamp)
        except ValueError:
            pass
    return (record.submitted_at or now) - _UNSTAMPED_SKEW


async def _find_training(ctx: ProjectRun, model: ModelRecord, window: _Window) -> Job | None:
    """The training this intent started: the newest version made since it, by a job of this
    model created since it (a version is written when its training ends, so its own date
    says little about when the job was sent)."""
    since = window.since
    versions = await api_call(lambda: ctx.api.versions(model.spec.id))
    made = sorted(
        (
            v
            for v in versions
            if v.job_id is not None
            and v.job_id not in window.known
            and v.created_at is not None
            and v.created_at >= since
        ),
        key=lambda v: v.created_at or _EPOCH,
        reverse=True,
    )
    for version in made[:_TRAINING_CANDIDATES]:
        job = await api_call(partial(ctx.api.get_job, str(version.job_id)))
        if (
            job.id == version.job_id
            and job.model_id in {None, model.spec.id}
            and job.created_at is not None
            and job.created_at >= since
        ):
            return job
    return None


async def _find_in_listing(
    ctx: ProjectRun, model: ModelRecord, stage: Stage, trained_model_id: str, window: _Window
) -> Job | None:
    """Scan the jobs listing for this stage's job: the model's, on this version, created
    since the intent, not one fleet already knows; of a stage whose job type was recorded
    (EVALUATION, DEPLOYMENT) only that type, else any type but another stage's recorded one.
    Of several, the one created closest to the intent: what the server starts because of a
    job (a deployment's scoring job) comes after it. The scan stops at the window's edge
    only when the listing was seen newest first; otherwise it reads it all (to a bound)."""
    since = window.since
    candidates: list[Job] = []
    ordered, previous, seen = True, None, 0
    async for job in ctx.api.recent_jobs(_RECONCILE_SCAN + 1):
        seen += 1
        if seen > _RECONCILE_SCAN:
            raise StageFailed(
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
        if _could_be(job, model.spec.id, trained_model_id, stage) and job.id not in window.known:
            candidates.append(job)
    if not candidates:
        return None
    # Every candidate was created since the intent (in the server's clock): the earliest.
    found = min(candidates, key=lambda j: j.created_at or since)
    if stage not in RECORDED_JOB_TYPES:
        once("fleet.reconcile.unrecorded_job_type", job_type=found.type, stage=stage.value)
    return found


def _could_be(job: Job, model_id: str, trained_model_id: str, stage: Stage) -> bool:
    """Whether a job could be this stage's, by what every job records (never by a guess)."""
    if job.model_id != model_id or job.trained_model_id != trained_model_id:
        return False
    ours = RECORDED_JOB_TYPES.get(stage)
    if ours is not None:
        return job.type in {ours, None}  # not a scoring job the deployment started, say
    return job.type not in set(RECORDED_JOB_TYPES.values()) | RECORDED_OTHER_JOB_TYPES
