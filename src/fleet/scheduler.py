"""The run: admit models in a fixed order, bound them globally and per stage, resume by run id.

A pool of `concurrency` workers in one anyio task group takes models from a shared iterator in
admission order, so memory grows with the models in flight, not with the size of the fleet.
Each stage has a `CapacityLimiter` that bounds its remote jobs (or approval calls) at once.
"""

from __future__ import annotations

import json
import random
import secrets
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

import anyio
import structlog

from fleet.client import ModelOps
from fleet.config import Settings
from fleet.errors import ApiError, AuthError, FleetError, TransientApiError, ungrouped
from fleet.lifecycle import Context, RunAborted, run_model
from fleet.stages import DONE, Outcome, Stage, StageState
from fleet.store import ModelRecord, RunRecord, StageRecord, Store

log = structlog.get_logger("fleet.scheduler")

RUN_SUCCEEDED = "succeeded"
RUN_FAILED = "failed"
RUN_RUNNING = "running"
RUN_INTERRUPTED = "interrupted"
RUN_ABORTED = "aborted"
RUN_INCOMPLETE = "incomplete"
FINISHED_RUN_STATUSES = frozenset({RUN_SUCCEEDED, RUN_FAILED})


@dataclass(frozen=True, slots=True)
class Failure:
    model_id: str
    name: str
    stage: Stage
    reason: str


@dataclass(frozen=True, slots=True)
class ProgressSnapshot:
    elapsed_s: float
    models_total: int
    models_succeeded: int
    models_failed: int
    stages: dict[Stage, dict[StageState, int]]
    recent_failures: tuple[Failure, ...]

    @property
    def models_finished(self) -> int:
        return self.models_succeeded + self.models_failed

    def eta_s(self) -> float | None:
        """Time left at the rate models finished so far (None until one has)."""
        done = self.models_finished
        if done == 0 or done >= self.models_total:
            return None if done == 0 else 0.0
        return self.elapsed_s / done * (self.models_total - done)


@dataclass(slots=True)
class Progress:
    """Live counts per stage and state, fed by every transition; read by the CLI."""

    clock: Callable[[], float] = time.monotonic
    started: float = 0.0
    models_total: int = 0
    models_succeeded: int = 0
    models_failed: int = 0
    counts: dict[Stage, Counter[StageState]] = field(default_factory=dict)
    failures: deque[Failure] = field(default_factory=lambda: deque(maxlen=5))

    def start(self, models: list[ModelRecord], stages: tuple[Stage, ...]) -> None:
        self.started = self.clock()
        self.models_total = len(models)
        self.counts = {stage: Counter() for stage in stages}
        for model in models:
            for stage in stages:
                self.counts[stage][model.stages[stage].state] += 1

    def moved(self, stage: Stage, before: StageState, after: StageState) -> None:
        counts = self.counts.setdefault(stage, Counter())
        counts[before] -= 1
        counts[after] += 1

    def model_finished(self, model: ModelRecord, failed: StageRecord | None) -> None:
        if failed is None:
            self.models_succeeded += 1
            return
        self.models_failed += 1
        self.failures.append(
            Failure(model.spec.id, model.spec.name, failed.stage, failed.error or "")
        )

    def snapshot(self) -> ProgressSnapshot:
        return ProgressSnapshot(
            elapsed_s=self.clock() - self.started,
            models_total=self.models_total,
            models_succeeded=self.models_succeeded,
            models_failed=self.models_failed,
            stages={stage: dict(counts) for stage, counts in self.counts.items()},
            recent_failures=tuple(self.failures),
        )


@dataclass(frozen=True, slots=True)
class RunResult:
    run_id: str
    status: str
    models_total: int
    succeeded: int
    failed: tuple[Failure, ...]
    pending: int
    elapsed_s: float
    resumed: bool
    aborted: FleetError | None = None


def new_run_id(now: datetime | None = None) -> str:
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{secrets.token_hex(3)}"


async def run(
    settings: Settings,
    api: ModelOps,
    store: Store,
    *,
    run_id: str | None = None,
    progress: Progress | None = None,
    sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    rng: random.Random | None = None,
) -> RunResult:
    """Run (or resume) the lifecycle of every model; the run's state is in `store`."""
    progress = progress or Progress()
    run_id = run_id or new_run_id()
    started = time.monotonic()
    existing = await store.find_run(run_id)
    if existing is not None and existing.status in FINISHED_RUN_STATUSES:
        log.info("fleet.run.already_finished", run_id=run_id, status=existing.status)
        result = await summarize(store, existing, elapsed_s=0.0, resumed=True)
        return replace(result, status=existing.status)
    stages = existing.stages if existing is not None else settings.stages
    if existing is None:
        specs = settings.model_specs()
        await store.create_run(run_id, stages, specs, _settings_summary(settings))
    models = await store.models(run_id)
    progress.start(models, stages)
    log.info(
        "fleet.run.started",
        run_id=run_id,
        models=len(models),
        resumed=existing is not None,
        stages=",".join(stages),
    )
    ctx = Context(
        run_id=run_id,
        api=api,
        store=store,
        limiters={stage: anyio.CapacityLimiter(settings.limits.of(stage)) for stage in Stage},
        poll_interval=settings.poll_interval,
        progress=progress,
        sleep=sleep,
        rng=rng or random.Random(),  # noqa: S311 - jitter, not security
    )
    aborted: FleetError | None = None
    try:
        await api.check_project()
        await _drive(ctx, models, stages, settings.concurrency)
    except RunAborted as exc:
        aborted = _fleet_error(exc)
    except (AuthError, TransientApiError) as exc:
        aborted = exc
    except ApiError as exc:
        # A refusal before any model started (an unknown project, for one) stops the run.
        aborted = exc
    except BaseException:
        with anyio.CancelScope(shield=True):
            await store.set_run_status(run_id, RUN_INTERRUPTED, finished=False)
            log.warning("fleet.run.interrupted", run_id=run_id)
        raise
    record = await store.run(run_id)
    result = await summarize(
        store, record, elapsed_s=time.monotonic() - started, resumed=existing is not None
    )
    status = RUN_ABORTED if aborted is not None else result.status
    await store.set_run_status(run_id, status, finished=aborted is None)
    log.info(
        "fleet.run.finished",
        run_id=run_id,
        status=status,
        succeeded=result.succeeded,
        failed=len(result.failed),
        pending=result.pending,
        elapsed_s=round(result.elapsed_s, 3),
    )
    return replace(result, status=status, aborted=aborted)


async def _drive(
    ctx: Context,
    models: list[ModelRecord],
    stages: tuple[Stage, ...],
    concurrency: int,
) -> None:
    queue: Iterator[ModelRecord] = iter(models)

    async def worker() -> None:
        for model in queue:
            await run_model(ctx, model, stages)

    with ungrouped():
        async with anyio.create_task_group() as tg:
            for _ in range(min(concurrency, len(models))):
                tg.start_soon(worker)


async def summarize(
    store: Store, record: RunRecord, *, elapsed_s: float, resumed: bool
) -> RunResult:
    models = await store.models(record.id)
    succeeded = 0
    pending = 0
    failed: list[Failure] = []
    for model in models:
        outcome = model_outcome(model)
        if outcome is Outcome.SUCCEEDED:
            succeeded += 1
        elif outcome is Outcome.FAILED:
            stage, reason = next(
                (r.stage, r.error or "")
                for r in model.stages.values()
                if r.state is StageState.FAILED
            )
            failed.append(Failure(model.spec.id, model.spec.name, stage, reason))
        else:
            pending += 1
    status = RUN_INCOMPLETE if pending else (RUN_FAILED if failed else RUN_SUCCEEDED)
    return RunResult(
        run_id=record.id,
        status=status,
        models_total=len(models),
        succeeded=succeeded,
        failed=tuple(failed),
        pending=pending,
        elapsed_s=elapsed_s,
        resumed=resumed,
    )


def model_outcome(model: ModelRecord) -> Outcome:
    states = [r.state for r in model.stages.values()]
    if any(s is StageState.FAILED for s in states):
        return Outcome.FAILED
    if all(s in DONE for s in states):
        return Outcome.SUCCEEDED
    if all(s is StageState.PENDING for s in states):
        return Outcome.PENDING
    return Outcome.RUNNING


def _fleet_error(exc: RunAborted) -> FleetError:
    cause = exc.__cause__
    return cause if isinstance(cause, FleetError) else FleetError(str(exc))


def _settings_summary(settings: Settings) -> str:
    """What the run was started with, for reports; the token is excluded, never stored."""
    data = settings.model_dump(mode="json", exclude={"models": True, "api": {"token"}})
    return json.dumps(data, sort_keys=True)
