"""The lifecycle as data: stages, their states and allowed moves; outcomes; run statuses.

    pending ──► submitting ──► submitted ──► running ──► succeeded
       │            │  ▲           │            ├──────► failed
       │            │  │           │            └──────► retrying ─┐
       │            │  └───────────┼───────────────────────────────┘ (a new attempt)
       │            │              └──► succeeded | failed | retrying
       │            └──► succeeded (approve is synchronous) | failed
       └──► skipped | failed                failed ──► retrying (fleet run --retry-failed)

`submitting` is written to the store *before* a request goes out, so a restart knows that a
submission may exist on the server and looks for it before sending another. `submitted` lasts
until the job is seen finished: the job watcher (polling.py) asks about jobs only near their
expected end, so fleet no longer records `running` (state files of earlier versions may
hold it, and it resumes as `submitted` does). `retrying` closes
an attempt whose job ended in ERROR; the next `submitting` opens a new one.
"""

from __future__ import annotations

from enum import StrEnum

from fleet.errors import InvalidTransition


class Stage(StrEnum):
    TRAIN = "train"
    EVALUATE = "evaluate"
    APPROVE = "approve"
    DEPLOY = "deploy"
    RETIRE = "retire"


STAGE_ORDER: tuple[Stage, ...] = tuple(Stage)

# What a stage's remote job is called in messages ("training job … ended ERROR").
JOB_NOUNS: dict[Stage, str] = {
    Stage.TRAIN: "training",
    Stage.EVALUATE: "evaluation",
    Stage.DEPLOY: "deployment",
    Stage.RETIRE: "retirement",
}
# Job types recorded from a live server (shared/fixtures/modelops). What ModelOps calls a
# training or a retirement job was never recorded, so fleet never relies on a name for those:
# reconciliation uses a type only to rule out a job of another stage.
RECORDED_JOB_TYPES: dict[Stage, str] = {
    Stage.EVALUATE: "EVALUATION",
    Stage.DEPLOY: "DEPLOYMENT",
}
RECORDED_OTHER_JOB_TYPES = frozenset({"IMPORT"})  # a version imported rather than trained


class StageState(StrEnum):
    PENDING = "pending"
    SUBMITTING = "submitting"
    SUBMITTED = "submitted"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"
    RETRYING = "retrying"


S = StageState
ALLOWED: frozenset[tuple[StageState, StageState]] = frozenset(
    {
        (S.PENDING, S.SUBMITTING),
        (S.PENDING, S.SKIPPED),
        (S.PENDING, S.FAILED),
        (S.SUBMITTING, S.SUBMITTED),
        (S.SUBMITTING, S.SUCCEEDED),
        (S.SUBMITTING, S.FAILED),
        (S.SUBMITTED, S.RUNNING),
        (S.SUBMITTED, S.SUCCEEDED),
        (S.SUBMITTED, S.FAILED),
        (S.RUNNING, S.SUCCEEDED),
        (S.RUNNING, S.FAILED),
        (S.SUBMITTED, S.RETRYING),
        (S.RUNNING, S.RETRYING),
        (S.SUBMITTING, S.RETRYING),
        (S.FAILED, S.RETRYING),
        (S.RETRYING, S.SUBMITTING),
        # A reopened stage that fails before its new attempt is sent (what it reads first).
        (S.RETRYING, S.FAILED),
        # A stage before --from-stage whose adoption failed, reopened by --retry-failed.
        (S.RETRYING, S.SKIPPED),
    }
)
# A stage ready to open a new attempt.
STARTABLE: frozenset[StageState] = frozenset({S.PENDING, S.RETRYING})
DONE: frozenset[StageState] = frozenset({S.SUCCEEDED, S.SKIPPED})
FINISHED: frozenset[StageState] = frozenset({S.SUCCEEDED, S.SKIPPED, S.FAILED})
IN_FLIGHT: frozenset[StageState] = frozenset({S.SUBMITTING, S.SUBMITTED, S.RUNNING, S.RETRYING})


class Outcome(StrEnum):
    """Where a model ended up in a run."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    REJECTED = "rejected"  # an approval gate turned the new version down: not a failure
    FAILED = "failed"


class RunStatus(StrEnum):
    """Where a run is. A run is created `running`; every later status is set by the scheduler
    through `RunStatus.move`, which holds it to `RUN_MOVES`.

        running ──► succeeded | failed              (finished: every model ended)
           │   └──► incomplete | interrupted | halted | aborted   (models left to resume)
           ▲                                │
           └────────────────────────────────┘  resumed by the same --run-id
        failed ──► running                          (fleet run --retry-failed)
    """

    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    INCOMPLETE = "incomplete"  # the deadline passed with models not started
    INTERRUPTED = "interrupted"  # a signal, or the process ended mid-run
    HALTED = "halted"  # the failure policy stopped admitting models
    ABORTED = "aborted"  # a project could not go on (token rejected, server down)

    @property
    def finished(self) -> bool:
        """Every model of the run ended: only --retry-failed opens it again."""
        return self in FINISHED_RUNS

    def move(self, to: RunStatus) -> RunStatus:
        """`to`, if a run may go there from here; else InvalidTransition."""
        if to is not self and (self, to) not in RUN_MOVES:
            raise InvalidTransition(f"run status {self} -> {to} is not allowed")
        return to


FINISHED_RUNS = frozenset({RunStatus.SUCCEEDED, RunStatus.FAILED})
_LEFT = frozenset(
    {RunStatus.INCOMPLETE, RunStatus.INTERRUPTED, RunStatus.HALTED, RunStatus.ABORTED}
)
RUN_MOVES: frozenset[tuple[RunStatus, RunStatus]] = frozenset(
    {(RunStatus.RUNNING, to) for to in RunStatus if to is not RunStatus.RUNNING}
    | {(left, RunStatus.RUNNING) for left in _LEFT}
    | {(RunStatus.FAILED, RunStatus.RUNNING)}
)
# When the shards of one run disagree, the merged run takes the first of these that any of
# them has: a run still going somewhere is still going; otherwise the worst ending is the run's.
MERGED_RUN_ORDER: tuple[RunStatus, ...] = (
    RunStatus.RUNNING,
    RunStatus.ABORTED,
    RunStatus.INTERRUPTED,
    RunStatus.HALTED,
    RunStatus.INCOMPLETE,
    RunStatus.FAILED,
    RunStatus.SUCCEEDED,
)
