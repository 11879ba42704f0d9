"""The approve stage: a new version judged by its approval rule, then approved or rejected on
the server; and the monitor rule, which flags a version whose fresh metrics fail it.

The decision is recorded with the intent, before the call, so a restart makes the same call;
an approval whose answer is lost is looked for in the version's events before it is sent
again. A rejection is not a failure: the model finishes with its version turned down.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import structlog

from fleet.errors import OutcomeUnknown
from fleet.jobs import FOUND_AFTER_LOSS, FOUND_AFTER_RESTART, open_attempt, unknown_outcome
from fleet.modelops import Event, latest_metrics
from fleet.project_run import (
    ProjectRun,
    StageFailed,
    api_call,
    in_production,
    trained_model,
    transition,
    work_left,
)
from fleet.records import APPROVED, REJECTED, ModelRecord, StageRecord
from fleet.retries import settle
from fleet.stages import STARTABLE, Stage, StageState

log = structlog.get_logger("fleet.lifecycle")
S = StageState


async def approve(
    ctx: ProjectRun, model: ModelRecord, records: dict[Stage, StageRecord], record: StageRecord
) -> StageRecord:
    """Approve, or reject when the version fails its approval rule; the decision is recorded
    with the intent, before the call, so a restart makes the same call."""
    trained_model_id = trained_model(records)
    async with ctx.slots.hold(Stage.APPROVE, work_left(ctx, record)):
        resumed = record.state is S.SUBMITTING
        if record.state in STARTABLE:
            decision = await _decide(ctx, model, records, trained_model_id)
            record = await open_attempt(
                ctx, record, trained_model_id=trained_model_id, data={**record.data, **decision}
            )
        verdict = "REJECTED" if record.data.get("decision") == REJECTED else "APPROVED"
        call = ctx.api.reject if verdict == "REJECTED" else ctx.api.approve
        comment = str(record.data.get("comment") or model.spec.lifecycle.approval_comments)

        async def applied() -> Event | None:
            events = await api_call(lambda: ctx.api.events(trained_model_id))
            return next((e for e in events if e.status == verdict), None)

        if resumed and await applied() is not None:
            return await transition(ctx, record, S.SUCCEEDED, detail=FOUND_AFTER_RESTART)
        try:
            _, found = await settle(
                lambda account: api_call(lambda: call(trained_model_id, comment, account)),
                applied,
                ctx.api.retry_account(),
            )
        except OutcomeUnknown as lost:
            raise StageFailed(unknown_outcome(lost)) from lost
        return await transition(
            ctx, record, S.SUCCEEDED, detail=FOUND_AFTER_LOSS if found else comment
        )


async def _decide(
    ctx: ProjectRun, model: ModelRecord, records: dict[Stage, StageRecord], trained_model_id: str
) -> dict[str, Any]:
    """Judge the new version by its approval rule: the decision, the rule, the values."""
    spec = model.spec.lifecycle
    rule = spec.approval()
    if rule is None:
        return {"decision": APPROVED, "comment": spec.approval_comments}
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
            raise StageFailed(f"approval rule needs {missing}, which the evaluation lacks")
        comment = f"Rejected by fleet: no value for {missing}, needed by rule {rule.text}"
        return {**facts, "decision": REJECTED, "comment": comment}
    if verdict.passed:
        comment = f"{spec.approval_comments}. Rule {rule.text} passed: {verdict.describe()}"
        return {**facts, "decision": APPROVED, "comment": comment}
    comment = f"Rejected by fleet: rule {rule.text} failed: {verdict.describe()}"
    return {**facts, "decision": REJECTED, "comment": comment}


async def _metrics_of(
    ctx: ProjectRun, records: dict[Stage, StageRecord], trained_model_id: str
) -> dict[str, str]:
    """The version's metrics: from this run's evaluation, else from its newest EVALUATED event."""
    evaluated = records.get(Stage.EVALUATE)
    if evaluated is not None and evaluated.data.get("metrics"):
        return dict(evaluated.data["metrics"])
    events = await api_call(lambda: ctx.api.events(trained_model_id))
    return latest_metrics(events) or {}


async def _champion(
    ctx: ProjectRun, model: ModelRecord, trained_model_id: str
) -> tuple[str | None, dict[str, str] | None]:
    """The version in production for this model (not the new one) and its latest metrics."""
    active = await in_production(ctx, model)
    others = [d for d in active if d.trained_model_id and d.trained_model_id != trained_model_id]
    if not others:
        return None, None
    champion_id = others[-1].trained_model_id
    assert champion_id is not None
    events = await api_call(lambda: ctx.api.events(champion_id))
    return champion_id, latest_metrics(events) or {}


def monitored(model: ModelRecord, metrics: Mapping[str, str]) -> dict[str, Any]:
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
