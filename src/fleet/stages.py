"""The lifecycle as data: the stages, the states a stage moves through, and the allowed moves.

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
    REJECTED = "rejected"  # an approval gate turned the new version down: not a failure
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
