"""History: what the server remembers of each model's last night, read as durations.

On a first night the state file knows nothing, but the server does. A model's versions
(`GET /api/trainedModels/search/findByModelId`) carry their `createdAt`, which is when the
training job that made the version started, and a version's events
(`GET /api/trainedModels/{id}/events`) include TRAINED, stamped when that job ended: the
difference is how long the training ran. With `history = "jobs"`, the EVALUATED and DEPLOYED
events name their jobs, each read by id (`GET /api/jobs/{id}`) for when it started: how long the
evaluation and the deployment ran. Every request is one a real client is recorded making
(docs/api-calls.md #19, #9, #3).

What history gives ranks models (durations.py): the longest chains are admitted first and
take free job slots first. A model whose history cannot be read (no version yet, a failed
read, times that make no sense) stays unknown, and the whole read is bounded in time: history
makes a first night faster, it never stops one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Literal

import anyio
import structlog

from fleet.durations import Key
from fleet.errors import ApiError, NotFound
from fleet.modelops import Event, ModelOps, Version
from fleet.stages import Stage

log = structlog.get_logger("fleet.history")

HistoryDepth = Literal["off", "versions", "jobs"]

# A duration read from history is believed only within these bounds (seconds): a clock
# change or an event written by hand must not rank a model first for a week.
_SHORTEST_S = 0.5
_LONGEST_S = 2 * 86_400.0
# Versions looked at per model, newest first, for a TRAINED (and EVALUATED, DEPLOYED) event.
_VERSIONS_LOOKED_AT = 2
_EVENT_STAGES = {"EVALUATED": Stage.EVALUATE, "DEPLOYED": Stage.DEPLOY}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Reads that fail before any succeeds: the history is not to be had (no such route, no
# rights to it), and the night goes on without it.
_GIVE_UP_AFTER = 3


def stages_to_learn(depth: HistoryDepth, stages: Sequence[Stage]) -> frozenset[Stage]:
    """The stages among `stages` (the run's) whose durations `depth` reads."""
    if depth == "off":
        return frozenset()
    read = {Stage.TRAIN} if depth == "versions" else {Stage.TRAIN, *_EVENT_STAGES.values()}
    return frozenset(read & set(stages))


async def learn(
    api: ModelOps,
    model_ids: Sequence[str],
    wanted: frozenset[Stage],
    *,
    at_once: int,
    budget_s: float,
) -> dict[Key, float]:
    """The durations of `wanted` stages that the server's history gives for `model_ids`,
    read `at_once` models at a time for at most `budget_s` seconds."""
    if not wanted or not model_ids:
        return {}
    learned: dict[Key, float] = {}
    failed = 0
    started = time.monotonic()
    queue = iter(model_ids)

    async def reader(scope: anyio.CancelScope) -> None:
        nonlocal failed
        for model_id in queue:
            try:
                found = await _model_history(api, model_id, wanted)
            except NotFound:
                continue  # gone since it was listed: nothing to learn of it
            except ApiError:
                failed += 1
                if failed >= _GIVE_UP_AFTER and not learned:
                    scope.cancel()  # the history is not to be had here: go on without it
                    return
                continue
            learned.update({(model_id, stage): seconds for stage, seconds in found.items()})

    with anyio.move_on_after(budget_s) as scope:
        async with anyio.create_task_group() as tg:
            for _ in range(min(at_once, len(model_ids))):
                tg.start_soon(reader, scope)
    log.info(
        "fleet.history.read",
        models=len(model_ids),
        learned=len({model for model, _ in learned}),
        durations=len(learned),
        failed=failed,
        cut_short=scope.cancelled_caught,
        seconds=round(time.monotonic() - started, 3),
    )
    return learned


async def _model_history(
    api: ModelOps, model_id: str, wanted: frozenset[Stage]
) -> dict[Stage, float]:
    versions = sorted(
        (v for v in await api.versions(model_id) if v.created_at is not None),
        key=lambda v: v.created_at or _EPOCH,
        reverse=True,
    )
    found: dict[Stage, float] = {}
    for version in versions[:_VERSIONS_LOOKED_AT]:
        events = await api.events(version.id)
        if Stage.TRAIN in wanted and Stage.TRAIN not in found:
            _keep(found, Stage.TRAIN, _training_s(version, events))
        for event in events:
            stage = _EVENT_STAGES.get(event.status)
            if stage in wanted and stage not in found and event.job_id is not None:
                job = await api.get_job(event.job_id)
                _keep(found, stage, _between(job.created_at, event.created_at))
        if wanted <= found.keys():
            break
    return found


def _training_s(version: Version, events: Sequence[Event]) -> float | None:
    trained = [e.created_at for e in events if e.status == "TRAINED" and e.created_at is not None]
    return _between(version.created_at, min(trained)) if trained else None


def _between(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return (end - start).total_seconds()


def _keep(found: dict[Stage, float], stage: Stage, seconds: float | None) -> None:
    if seconds is not None and math.isfinite(seconds) and _SHORTEST_S <= seconds <= _LONGEST_S:
        found[stage] = seconds
