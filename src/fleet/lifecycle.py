"""One model's lifecycle: train → evaluate → approve → deploy → retire, resumable at any step.

`run_model` drives a model through the run's stages, each from whatever state the store holds,
so a restarted run continues where it stopped: finished stages are skipped, submitted jobs are
followed again, and a stage caught between "intent recorded" and "job id recorded" first looks
for its job on the server (jobs.py, reconcile.py). The stage runners here say what each
stage's job is; approval.py judges and approves. Every state change goes through
`project_run.transition`, the only code that changes a stage's state.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import structlog

from fleet.approval import approve, monitored
from fleet.errors import NotFound
from fleet.jobs import RemoteJob, job_result, job_stage, jobs_of
from fleet.modelops import (
    Deployment,
    DeployRequest,
    EvaluateRequest,
    Job,
    TrainRequest,
    Version,
    metrics_of_job,
)
from fleet.polling import InFlight
from fleet.project_run import (
    Deferred,
    Paused,
    ProjectRun,
    StageFailed,
    api_call,
    duration,
    in_production,
    once,
    trained_model,
    transition,
)
from fleet.records import ModelRecord, StageRecord, version_rejected
from fleet.retries import Account
from fleet.stages import DONE, FINISHED, STAGE_ORDER, Outcome, Stage, StageState

log = structlog.get_logger("fleet.lifecycle")
_EPOCH = datetime.min.replace(tzinfo=UTC)
S = StageState
# Versions that `from_version = "latest"` may start from (not archived, not a failed training).
_USABLE_VERSION = frozenset({"TRAINED", "IMPORTED", "EVALUATED", "APPROVED", "DEPLOYED"})

Runner = Callable[
    [ProjectRun, ModelRecord, dict[Stage, StageRecord], StageRecord], Awaitable[StageRecord]
]


async def run_model(ctx: ProjectRun, model: ModelRecord, stages: tuple[Stage, ...]) -> Outcome:
    """Drive one model through the run's stages, from wherever the store says it is.

    A failed stage stops this model only; the stages after it stay pending.
    """
    records = dict(model.stages)
    with structlog.contextvars.bound_contextvars(run_id=ctx.plan.run_id, model_id=model.spec.id):
        for stage in stages:
            record = records[stage]
            if record.state is not S.FAILED and record.state not in DONE:
                with structlog.contextvars.bound_contextvars(stage=stage.value):
                    try:
                        record = await _runner(ctx, records, stage)(ctx, model, records, record)
                    except StageFailed as failed:
                        record = await _fail(ctx, record, failed.reason)
                    except Paused:
                        return Outcome.RUNNING
                    except Deferred:
                        return Outcome.PENDING
                    finally:
                        ctx.latest.pop((record.model_id, stage), None)
                records[stage] = record
            if record.state is S.FAILED:
                ctx.progress.model_finished(model, record)
                return Outcome.FAILED
    if version_rejected(records):
        ctx.progress.model_finished(model, None, rejected=True)
        return Outcome.REJECTED
    ctx.progress.model_finished(model, None)
    return Outcome.SUCCEEDED


async def _fail(ctx: ProjectRun, started: StageRecord, reason: str) -> StageRecord:
    """Record a stage's failure on the record as the stage last wrote it (with its attempt,
    job id and data): the record it started from would undo all that."""
    record = ctx.latest.pop((started.model_id, started.stage), started)
    if record.state in FINISHED:
        return record
    return await transition(ctx, record, S.FAILED, error=reason)


def _runner(ctx: ProjectRun, records: dict[Stage, StageRecord], stage: Stage) -> Runner:
    if STAGE_ORDER.index(stage) < STAGE_ORDER.index(ctx.plan.first_stage):
        return _adopt
    if stage in {Stage.DEPLOY, Stage.RETIRE} and version_rejected(records):
        return _skip_rejected
    return _RUNNERS[stage]


# -- stage runners ---------------------------------------------------------------------------


async def _train(
    ctx: ProjectRun, model: ModelRecord, _records: dict[Stage, StageRecord], record: StageRecord
) -> StageRecord:
    spec = model.spec.lifecycle
    request = TrainRequest(
        dataset_id=spec.train_dataset_id,
        dataset_connection_id=spec.dataset_connection_id,
        hyperparameters=spec.hyperparameters,
        resources=spec.resources.overrides(),
        docker_image=spec.docker_image,
    )

    async def submit(account: Account) -> Job:
        return await ctx.api.train(model.spec.id, request, account)

    return await job_stage(ctx, model, record, RemoteJob(submit, trained_model_id=None))


async def _evaluate(
    ctx: ProjectRun, model: ModelRecord, records: dict[Stage, StageRecord], record: StageRecord
) -> StageRecord:
    trained_model_id = trained_model(records)
    spec = model.spec.lifecycle
    request = EvaluateRequest(
        dataset_id=spec.evaluate_dataset_id,
        dataset_connection_id=spec.dataset_connection_id,
        resources=spec.resources.overrides(),
        docker_image=spec.docker_image,
    )

    async def submit(account: Account) -> Job:
        return await ctx.api.evaluate(trained_model_id, request, account)

    async def finish(done: StageRecord) -> StageRecord:
        job_id = done.job_id
        assert job_id is not None

        async def own_metrics() -> dict[str, str] | None:
            # This evaluation's own event, never another's: the server may write it a
            # little after the job reads COMPLETED.
            return metrics_of_job(await ctx.api.events(trained_model_id), job_id)

        metrics = await job_result(
            ctx, own_metrics, f"the EVALUATED event of evaluation job {job_id}"
        )
        data = {**done.data, "metrics": metrics, **monitored(model, metrics)}
        return await transition(ctx, done, S.SUCCEEDED, metrics=metrics, data=data)

    job = RemoteJob(submit, trained_model_id, finish=finish, known_jobs=jobs_of(records))
    return await job_stage(ctx, model, record, job)


async def _adopt(
    ctx: ProjectRun, model: ModelRecord, _records: dict[Stage, StageRecord], record: StageRecord
) -> StageRecord:
    """A stage before `--from-stage`: training adopts an existing version, the rest skip."""
    if record.stage is not Stage.TRAIN:
        return await transition(ctx, record, S.SKIPPED, detail="before from_stage")
    named = model.spec.lifecycle.trained_model_id
    version: str | None
    if named is not None:
        version, how = named, "named in the config"
    elif ctx.plan.from_version == "deployed":
        active = await in_production(ctx, model)
        version = active[-1].trained_model_id if active else None
        how = "deployed"
    else:
        versions = await api_call(lambda: ctx.api.versions(model.spec.id))
        version = _latest_usable(versions)
        how = "latest"
    if version is None:
        raise StageFailed(f"no {how} trained version to start from")
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
    ctx: ProjectRun, _model: ModelRecord, _records: dict[Stage, StageRecord], record: StageRecord
) -> StageRecord:
    return await transition(ctx, record, S.SKIPPED, detail="the version was rejected")


async def _deploy(
    ctx: ProjectRun, model: ModelRecord, records: dict[Stage, StageRecord], record: StageRecord
) -> StageRecord:
    trained_model_id = trained_model(records)
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

    async def submit(account: Account) -> Job:
        return await ctx.api.deploy(trained_model_id, request, account)

    async def before() -> dict[str, Any]:
        # What is in production now is what `retire_mode = "previous"` retires afterwards.
        previous = [
            {"trained_model_id": d.trained_model_id, "deployment_id": d.id}
            for d in await in_production(ctx, model)
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

        deployment = await job_result(ctx, created, f"the deployment of deployment job {job_id}")
        if deployment.trained_model_id not in {
            None,
            trained_model_id,
        } or deployment.model_id not in {
            None,
            model.spec.id,
        }:
            raise StageFailed(
                f"deployment job {job_id} made deployment {deployment.id} of another model or "
                f"version ({deployment.model_id}, {deployment.trained_model_id})"
            )
        data = dict(done.data)
        if spec.cron == "@once":
            data.update(await _scoring(ctx, deployment.id))
        return await transition(ctx, done, S.SUCCEEDED, deployment_id=deployment.id, data=data)

    job = RemoteJob(
        submit, trained_model_id, before=before, finish=finish, known_jobs=jobs_of(records)
    )
    return await job_stage(ctx, model, record, job)


async def _scoring(ctx: ProjectRun, deployment_id: str) -> dict[str, Any]:
    """The scoring job a `cron = "@once"` deployment started, if the server shows one."""
    try:
        jobs = await api_call(lambda: ctx.api.scoring_jobs(deployment_id))
    except StageFailed as failed:
        # A server without the finder (older than the 7.1.2 client), or one that refuses it:
        # the deployment stands; the scoring job is only not followed.
        once("fleet.scoring.unavailable", error=failed.reason)
        return {}
    if not jobs:
        return {}
    newest = max(jobs, key=lambda j: j.created_at or _EPOCH)
    return {"scoring_job_id": newest.id, "scoring_status": newest.status}


async def _retire(
    ctx: ProjectRun, model: ModelRecord, records: dict[Stage, StageRecord], record: StageRecord
) -> StageRecord:
    target = _retire_target(ctx, model, records[Stage.DEPLOY])
    if isinstance(target, str):
        return await transition(ctx, record, S.SKIPPED, detail=target)
    tm_id, dep_id = target
    if record.state is S.PENDING and model.spec.lifecycle.retire_mode == "deployed":
        # Not while the deployment's scoring job runs; waited for before taking a slot.
        scored = await _scored(ctx, records[Stage.DEPLOY], dep_id)
        record = replace(record, data={**record.data, **scored})

    async def submit(account: Account) -> Job:
        return await ctx.api.retire(tm_id, dep_id, account)

    async def retired() -> bool:
        active = await api_call(lambda: ctx.api.deployments_of_version(tm_id))
        return all(d.id != dep_id for d in active)

    async def finish(done: StageRecord) -> StageRecord:
        async def gone() -> bool | None:
            return True if await retired() else None

        await job_result(ctx, gone, f"the retirement of deployment {dep_id}")
        return await transition(ctx, done, S.SUCCEEDED)

    job = RemoteJob(
        submit,
        trained_model_id=tm_id,
        deployment_id=dep_id,
        finish=finish,
        already_done=retired,
        known_jobs=jobs_of(records),
    )
    return await job_stage(ctx, model, record, job)


def _retire_target(
    ctx: ProjectRun, model: ModelRecord, deployed: StageRecord
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
            run_id=ctx.plan.run_id,
            model_id=model.spec.id,
            deployments=[str(p["deployment_id"]) for p in previous[:-1]],
        )
    return str(previous[-1]["trained_model_id"]), str(previous[-1]["deployment_id"])


async def _scored(ctx: ProjectRun, deployed: StageRecord, deployment_id: str) -> dict[str, Any]:
    """Wait for the scoring job of the deployment about to be retired, if it has one."""
    job_id = deployed.data.get("scoring_job_id")
    if job_id is None:
        found = await _scoring(ctx, deployment_id)
        job_id = found.get("scoring_job_id")
    if job_id is None:
        return {}
    timeout = ctx.plan.job_timeouts.get("score", math.inf)
    done = await api_call(
        lambda: ctx.jobs.finished(InFlight(str(job_id), "score", timeout_s=timeout))
    )
    if done is None:
        raise Paused
    if done.timed_out:
        raise StageFailed(
            f"scoring job {job_id} still {done.job.status or 'unfinished'} after "
            f"{duration(timeout)}; its deployment {deployment_id} was not retired"
        )
    return {"scoring_job_id": job_id, "scoring_status": done.job.status}


_RUNNERS: dict[Stage, Runner] = {
    Stage.TRAIN: _train,
    Stage.EVALUATE: _evaluate,
    Stage.APPROVE: approve,
    Stage.DEPLOY: _deploy,
    Stage.RETIRE: _retire,
}
