"""One model's state machine: the transition table, stage outcomes, and resuming mid-stage."""

from __future__ import annotations

import math
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import pytest
from structlog.testing import capture_logs

from fleet import lifecycle
from fleet import project_run as project_run_module
from fleet.batch import plan_of
from fleet.durations import Durations
from fleet.errors import InvalidTransition, OutcomeUnknown
from fleet.modelops import Deployment, DeployRequest, Job, TrainRequest
from fleet.models import Lifecycle
from fleet.progress import Progress
from fleet.project_run import RunScope, project_run, transition
from fleet.records import ModelRecord
from fleet.retries import Account, RetryPolicy
from fleet.stages import ALLOWED, STAGE_ORDER, Outcome, Stage, StageState
from fleet.store import Store
from support import Emulated, emulated, settings_for

S = StageState


class _Through:
    """The emulated client; a test's subclass overrides the calls it makes go wrong."""

    sends = 0

    def __init__(self, env: Emulated) -> None:
        self._env = env

    def __getattr__(self, name: str) -> object:
        return getattr(self._env.api, name)


def _context(env: Emulated, store: Store, run_id: str = "r1", **plan: Any) -> RunScope:
    """What a run shares, on `env`'s virtual time; `plan` changes the run's plan."""
    settings = settings_for(env, Path("unused.db"))
    return RunScope(
        plan=replace(plan_of(settings, run_id=run_id), **plan),
        store=store,
        progress=Progress(),
        expected=Durations(),
        draining=anyio.Event(),
        sleep=env.time.sleep,
        clock=env.time.monotonic,
    )


async def _run_model(
    ctx: RunScope, model: ModelRecord, stages: tuple[Stage, ...], api: Any
) -> Outcome:
    """`run_model` in the project run of `api` (the emulated client, or a test's own)."""
    async with project_run(ctx, api) as run:
        return await lifecycle.run_model(run, model, stages)


async def _one_model(env: Emulated, store: Store, run_id: str = "r1") -> ModelRecord:
    settings = settings_for(env, Path("unused.db"))
    spec = settings.model_specs()[0]
    await store.create_run(run_id, STAGE_ORDER, [spec], "{}")
    return (await store.models(run_id))[0]


def test_the_transition_table_only_moves_forward() -> None:
    """Nothing goes back to pending; only a failure can be reopened, as a new attempt."""
    assert all(to is not S.PENDING for _, to in ALLOWED)
    leaving_finished = [pair for pair in ALLOWED if pair[0] in {S.SUCCEEDED, S.FAILED, S.SKIPPED}]
    assert leaving_finished == [(S.FAILED, S.RETRYING)]


async def test_an_illegal_transition_is_refused_and_not_recorded(tmp_path: Path) -> None:
    """pending → running raises InvalidTransition and leaves the store unchanged."""
    async with emulated(models=1) as env, Store.open(tmp_path / "f.db") as store:
        model = await _one_model(env, store)
        ctx = _context(env, store)
        with pytest.raises(InvalidTransition):
            await transition(ctx, model.stages[Stage.TRAIN], S.RUNNING)
        again = (await store.models("r1"))[0]
        assert again.stages[Stage.TRAIN].state is S.PENDING
        assert await store.transitions("r1", model.spec.id) == []


async def test_a_model_runs_every_stage_and_logs_each_step(tmp_path: Path) -> None:
    """Every stage succeeds; metrics are stored as strings; events carry model and stage."""
    async with emulated(models=1) as env, Store.open(tmp_path / "f.db") as store:
        model = await _one_model(env, store)
        with capture_logs() as logs:
            outcome = await _run_model(_context(env, store), model, STAGE_ORDER, env.api)
        done = (await store.models("r1"))[0]
    assert outcome.value == "succeeded"
    assert {r.state for r in done.stages.values()} == {S.SUCCEEDED}
    assert set(done.metrics) == {"Accuracy", "Recall", "Precision", "f1-score"}
    assert all(isinstance(v, str) for v in done.metrics.values())
    assert done.stages[Stage.DEPLOY].deployment_id is not None
    submitted = [e for e in logs if e["event"] == "fleet.stage.submitted"]
    assert [e["stage"] for e in submitted] == ["train", "evaluate", "deploy", "retire"]
    assert all(e["model_id"] == model.spec.id and e["run_id"] == "r1" for e in submitted)


async def test_resume_adopts_a_job_submitted_before_the_crash(tmp_path: Path) -> None:
    """A stage left in `submitting` finds its job on the server instead of training again."""
    async with emulated(models=1) as env, Store.open(tmp_path / "f.db") as store:
        model = await _one_model(env, store)
        ctx = _context(env, store)
        record = await transition(
            ctx,
            model.stages[Stage.TRAIN],
            S.SUBMITTING,
            attempt=1,
            submitted_at=ctx.now(),
        )
        # The POST reached the server, then the process died before recording the job id.
        job = await env.api.train(model.spec.id, _train_request(model.spec.lifecycle))
        resumed = replace(model, stages={**model.stages, Stage.TRAIN: record})
        outcome = await _run_model(ctx, resumed, STAGE_ORDER, env.api)
        done = (await store.models("r1"))[0]
        log = await store.transitions("r1", model.spec.id)
    assert outcome.value == "succeeded"
    assert done.stages[Stage.TRAIN].job_id == job.id
    assert env.world.stats()["jobs_by_type"]["TRAINING"] == 1
    assert any(t["detail"] == "found on the server after restart" for t in log)


async def test_a_lost_post_response_is_reconciled_not_resent(tmp_path: Path) -> None:
    """When the train POST's answer is lost, fleet adopts the job the server did create."""

    class LosesFirstAnswer(_Through):
        lost = False

        async def train(
            self, model_id: str, request: TrainRequest, account: Account | None = None
        ) -> Job:
            await self._env.api.train(model_id, request)
            if not self.lost:
                self.lost = True
                raise OutcomeUnknown("POST /train: no response (ReadTimeout)", method="POST")
            raise AssertionError("fleet sent the training twice")

    async with emulated(models=1) as env, Store.open(tmp_path / "f.db") as store:
        model = await _one_model(env, store)
        outcome = await _run_model(_context(env, store), model, STAGE_ORDER, LosesFirstAnswer(env))
        stats = env.world.stats()
    assert outcome.value == "succeeded"
    assert stats["jobs_by_type"]["TRAINING"] == 1


async def test_a_lost_deploy_answer_adopts_the_deploy_job_not_its_scoring_job(
    tmp_path: Path,
) -> None:
    """By the time fleet looks, the deployment has started its scoring job, newer and on the
    same model and version: the job adopted is the deployment job, which names a deployment."""

    class LosesDeployAnswer(_Through):
        async def deploy(
            self, trained_model_id: str, request: DeployRequest, account: Account | None = None
        ) -> Job:
            await self._env.api.deploy(trained_model_id, request)
            self._env.time.clock.advance(120.0)  # the deployment opens, its scoring job starts
            raise OutcomeUnknown("POST /deploy: no response (ReadTimeout)", method="POST")

    async with emulated(models=1) as env, Store.open(tmp_path / "f.db") as store:
        model = await _one_model(env, store)
        ctx = _context(env, store)
        outcome = await _run_model(ctx, model, STAGE_ORDER, LosesDeployAnswer(env))
        stats = env.world.stats()
        done = (await store.models("r1"))[0]
    assert outcome.value == "succeeded", done.stages[Stage.DEPLOY].error
    assert stats["scoring_jobs"] == 1
    assert stats["jobs_by_type"]["DEPLOYMENT"] == 1
    assert done.stages[Stage.DEPLOY].deployment_id is not None


async def test_a_submission_the_server_never_applied_fails_with_its_last_answer(
    tmp_path: Path,
) -> None:
    """500s and no job on the server: sent `api.retry_attempts` times in all, the stage fails,
    keeping the server's words."""

    class Fails500(_Through):
        async def train(
            self, model_id: str, request: TrainRequest, account: Account | None = None
        ) -> Job:
            self.sends += 1
            raise OutcomeUnknown(
                "POST /train: HTTP 500: dataset connection refused", method="POST", status=500
            )

    async with emulated(models=1) as env, Store.open(tmp_path / "f.db") as store:
        model = await _one_model(env, store)
        api = Fails500(env)
        outcome = await _run_model(_context(env, store), model, STAGE_ORDER, api)
        error = (await store.models("r1"))[0].stages[Stage.TRAIN].error
    assert outcome.value == "failed"
    assert api.sends == RetryPolicy().attempts  # one account for every send of the submission
    assert error is not None
    assert "has no record of it" in error
    assert "HTTP 500: dataset connection refused" in error


@pytest.mark.parametrize("names_model", [True, False], ids=["answer-names-it", "read-names-it"])
async def test_a_job_of_another_model_is_refused(tmp_path: Path, names_model: bool) -> None:
    """A server that answers a model's train request with another model's job fails the
    stage, whether its answer names that model or only the job read by id does (issue 13
    #5); nothing is evaluated, deployed or retired on its word."""

    class AnswersWithAnother(_Through):
        async def train(
            self, model_id: str, request: TrainRequest, account: Account | None = None
        ) -> Job:
            others = [m.id for m in self._env.world.models() if m.id != model_id]
            job = await self._env.api.train(others[0], request)
            return replace(job, model_id=others[0] if names_model else None)

    async with emulated(models=2) as env, Store.open(tmp_path / "f.db") as store:
        model = await _one_model(env, store)
        ctx = _context(env, store)
        outcome = await _run_model(ctx, model, STAGE_ORDER, AnswersWithAnother(env))
        error = (await store.models("r1"))[0].stages[Stage.TRAIN].error
        stats = env.world.stats()
    assert outcome.value == "failed"
    assert error is not None
    assert "of another model" in error
    assert stats["jobs_by_type"]["EVALUATION"] == 0
    assert stats["jobs_by_type"]["DEPLOYMENT"] == 0


async def test_a_lost_post_that_created_nothing_is_sent_again(tmp_path: Path) -> None:
    """When the server has no job after a lost answer, fleet submits once more, and only once."""

    class FailsFirstSend(_Through):
        async def train(
            self, model_id: str, request: TrainRequest, account: Account | None = None
        ) -> Job:
            self.sends += 1
            if self.sends == 1:
                raise OutcomeUnknown("POST /train: HTTP 502", method="POST", status=502)
            return await self._env.api.train(model_id, request)

    async with emulated(models=1) as env, Store.open(tmp_path / "f.db") as store:
        model = await _one_model(env, store)
        api = FailsFirstSend(env)
        outcome = await _run_model(_context(env, store), model, STAGE_ORDER, api)
        stats = env.world.stats()
    assert outcome.value == "succeeded"
    assert api.sends == 2
    assert stats["jobs_by_type"]["TRAINING"] == 1


async def test_a_lost_approval_answer_is_checked_not_repeated(tmp_path: Path) -> None:
    """An approve whose answer is lost but which the server applied is not sent again."""

    class LosesApproval(_Through):
        async def approve(
            self, trained_model_id: str, comments: str, account: Account | None = None
        ) -> object:
            self.sends += 1
            await self._env.api.approve(trained_model_id, comments)
            raise OutcomeUnknown("POST /approve: no response", method="POST")

    async with emulated(models=1) as env, Store.open(tmp_path / "f.db") as store:
        model = await _one_model(env, store)
        api = LosesApproval(env)
        outcome = await _run_model(_context(env, store), model, STAGE_ORDER, api)
    assert outcome.value == "succeeded"
    assert api.sends == 1


async def test_a_failed_stage_leaves_later_stages_pending(tmp_path: Path) -> None:
    """An evaluation job ending in ERROR fails the model there; approve..retire stay pending."""
    async with (
        emulated(models=1, job_error_rate=1.0) as env,
        Store.open(tmp_path / "f.db") as store,
    ):
        model = await _one_model(env, store)
        outcome = await _run_model(_context(env, store), model, STAGE_ORDER, env.api)
        done = (await store.models("r1"))[0]
    assert outcome.value == "failed"
    train = done.stages[Stage.TRAIN]
    assert train.state is S.FAILED
    assert train.error is not None
    assert "ended ERROR" in train.error
    assert [done.stages[s].state for s in STAGE_ORDER[1:]] == [S.PENDING] * 4


async def test_resume_of_an_approval_in_flight_does_not_approve_twice(tmp_path: Path) -> None:
    """An approve left in `submitting` that the server already applied is adopted."""
    async with emulated(models=1) as env, Store.open(tmp_path / "f.db") as store:
        model = await _one_model(env, store)
        ctx = _context(env, store)
        await _run_model(ctx, model, STAGE_ORDER[:2], env.api)
        model = (await store.models("r1"))[0]
        trained_model_id = model.stages[Stage.TRAIN].trained_model_id
        assert trained_model_id is not None
        record = await transition(
            ctx, model.stages[Stage.APPROVE], S.SUBMITTING, attempt=1, submitted_at=ctx.now()
        )
        await env.api.approve(trained_model_id, "LGTM")
        resumed = replace(model, stages={**model.stages, Stage.APPROVE: record})
        outcome = await _run_model(ctx, resumed, STAGE_ORDER[:3], env.api)
    assert outcome.value == "succeeded"


def _train_request(spec: Lifecycle) -> TrainRequest:
    return TrainRequest(
        dataset_id=spec.train_dataset_id,
        dataset_connection_id=spec.dataset_connection_id,
        hyperparameters=spec.hyperparameters,
        resources=spec.resources.model_dump(),
        docker_image=spec.docker_image,
    )


def test_every_state_a_stage_can_enter_has_a_log_event() -> None:
    """Each reachable state has its fixed dotted event name."""
    assert set(project_run_module._EVENTS) == {to for _, to in ALLOWED}


# -- issue 13: what a failure keeps, which jobs are adopted, whose jobs are trusted ---------


async def test_a_stage_failing_after_its_job_ran_keeps_its_attempt_job_and_log(
    tmp_path: Path,
) -> None:
    """Issue 13 #7: the evaluation ran, its result never appears. The failed row keeps the
    attempt, job and data; the log says submitted -> failed; the attempt row is closed; no
    live count goes below zero."""
    async with (
        emulated(models=1, evaluated_lag_s=math.inf) as env,
        Store.open(tmp_path / "f.db") as store,
    ):
        model = await _one_model(env, store)
        ctx = _context(env, store, result_wait=5.0)
        progress = ctx.progress
        assert isinstance(progress, Progress)
        progress.start([model], STAGE_ORDER)
        outcome = await _run_model(ctx, model, STAGE_ORDER, env.api)
        done = (await store.models("r1"))[0]
        log = await store.transitions("r1", model.spec.id)
        attempts = await store.attempts("r1")
    evaluate = done.stages[Stage.EVALUATE]
    assert outcome.value == "failed"
    assert evaluate.state is S.FAILED
    assert evaluate.error is not None
    assert "did not appear" in evaluate.error
    assert evaluate.attempt == 1
    assert evaluate.job_id is not None
    moves = [(t["from_state"], t["to_state"]) for t in log if t["stage"] == "evaluate"]
    assert moves[-1] in {("submitted", "failed"), ("running", "failed")}
    (attempt,) = [a for a in attempts if a["stage"] == "evaluate"]
    assert (attempt["outcome"], attempt["job_id"]) == ("failed", evaluate.job_id)
    assert all(n >= 0 for counts in progress.counts.values() for n in counts.values())


class _LosesFirstTrain(_Through):
    """The first train request is lost on its way: the server never applies it."""

    async def train(
        self, model_id: str, request: TrainRequest, account: Account | None = None
    ) -> Job:
        self.sends += 1
        if self.sends == 1:
            raise OutcomeUnknown("POST /train: no response", method="POST")
        return await self._env.api.train(model_id, request)


async def test_a_lost_submission_never_adopts_a_job_from_before_its_intent(
    tmp_path: Path,
) -> None:
    """Issue 13 #4: last run's training (a minute old) is not this run's lost one: the
    intent is stamped with the server's time, and only a later job can be its."""
    async with emulated(models=1) as env, Store.open(tmp_path / "f.db") as store:
        model = await _one_model(env, store, "r1")
        ctx = _context(env, store, "r1")
        assert (await _run_model(ctx, model, STAGE_ORDER[:1], env.api)).value == "succeeded"
        first = (await store.models("r1"))[0].stages[Stage.TRAIN].job_id
        await env.time.sleep(60.0)
        model = await _one_model(env, store, "r2")
        api = _LosesFirstTrain(env)
        outcome = await _run_model(_context(env, store, "r2"), model, STAGE_ORDER[:1], api)
        train = (await store.models("r2"))[0].stages[Stage.TRAIN]
        stats = env.world.stats()
    assert outcome.value == "succeeded"
    assert api.sends == 2  # looked, found nothing of its own, sent again
    assert train.job_id != first
    assert stats["jobs_by_type"]["TRAINING"] == 2


async def test_a_retried_failure_does_not_find_its_failed_job_again(tmp_path: Path) -> None:
    """Issue 13 #4: `--retry-failed` right after a run: the new attempt's lost answer does
    not adopt the job that failed before."""
    async with (
        emulated(models=1, job_error_rate=1.0) as env,
        Store.open(tmp_path / "f.db") as store,
    ):
        model = await _one_model(env, store)
        ctx = _context(env, store)
        assert (await _run_model(ctx, model, STAGE_ORDER[:1], env.api)).value == "failed"
        failed = (await store.models("r1"))[0].stages[Stage.TRAIN]
        reopened = await transition(ctx, failed, S.RETRYING, detail="--retry-failed")
        model = replace(model, stages={**model.stages, Stage.TRAIN: reopened})
        api = _LosesFirstTrain(env)
        await _run_model(ctx, model, STAGE_ORDER[:1], api)
        train = (await store.models("r1"))[0].stages[Stage.TRAIN]
    assert api.sends == 2
    assert train.job_id not in {None, failed.job_id}
    assert failed.job_id in train.data["failed_jobs"]


async def test_a_deployment_of_another_version_is_refused(tmp_path: Path) -> None:
    """Issue 13 #5: the deploy job's deployment names another version; the stage fails and
    nothing is retired on its word."""

    class AnswersWithAnotherDeployment(_Through):
        async def deployment_for_job(self, job_id: str) -> Deployment:
            found = await self._env.api.deployment_for_job(job_id)
            return replace(found, trained_model_id=str(uuid.uuid4()))

    async with emulated(models=1) as env, Store.open(tmp_path / "f.db") as store:
        model = await _one_model(env, store)
        ctx = _context(env, store)
        outcome = await _run_model(ctx, model, STAGE_ORDER, AnswersWithAnotherDeployment(env))
        done = (await store.models("r1"))[0]
        stats = env.world.stats()
    assert outcome.value == "failed"
    error = done.stages[Stage.DEPLOY].error
    assert error is not None
    assert "of another model or version" in error
    assert stats["jobs_by_type"]["RETIREMENT"] == 0
