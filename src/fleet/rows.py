"""The state file's rows: the SQL that records a run, its models and their steps, and the
records read back from rows.

Every text goes through `fleet.secrets.redactor` on its way in, and again on its way out (a
file written before redaction may hold secrets). A model's settings are the one exception to
plain columns: they are encoded with a version (`encoding.py`), and the store reads them.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from fleet import encoding
from fleet.models import ModelSpec
from fleet.records import RunRecord, StageRecord
from fleet.secrets import redactor
from fleet.stages import STAGE_ORDER, Stage, StageState

# One statement with its parameters, as the store's writer batches them.
Statement = tuple[str, Sequence[Any]]

INSERT_RUN = (
    "INSERT INTO runs (id, created_at, updated_at, status, stages, settings, from_stage)"
    " VALUES (?, ?, ?, 'running', ?, ?, ?)"
)
UPDATE_RUN = "UPDATE runs SET status = ?, updated_at = ?, finished_at = ?, reason = ? WHERE id = ?"
# How long each model's stages ran (`ran_s`, seconds) in the latest few other runs, oldest
# run first so that the latest wins.
DURATIONS = (
    "SELECT s.model_id, s.stage, json_extract(s.data, '$.ran_s') AS ran FROM stages AS s"
    " JOIN (SELECT id, created_at FROM runs WHERE id != ? ORDER BY created_at DESC LIMIT ?)"
    " AS r ON s.run_id = r.id WHERE s.state = 'succeeded' AND ran IS NOT NULL"
    " ORDER BY r.created_at"
)
_INSERT_MODEL = (
    "INSERT INTO run_models (run_id, model_id, position, name, lifecycle, project, encoding)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_STAGE = (
    "INSERT INTO stages (run_id, model_id, stage, state, updated_at) VALUES (?, ?, ?, 'pending', ?)"
)
_UPDATE_STAGE = (
    "UPDATE stages SET (state, attempt, job_id, trained_model_id, deployment_id, error, data,"
    " submitted_at, finished_at, updated_at) = (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " WHERE run_id = ? AND model_id = ? AND stage = ?"
)
_INSERT_TRANSITION = (
    "INSERT INTO transitions (run_id, model_id, stage, from_state, to_state, at, detail)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_UPSERT_ATTEMPT = (
    "INSERT OR REPLACE INTO attempts (run_id, model_id, stage, attempt, job_id, trained_model_id,"
    " outcome, error, submitted_at, finished_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_UPSERT_METRIC = (
    "INSERT OR REPLACE INTO metrics (run_id, model_id, trained_model_id, name, value)"
    " VALUES (?, ?, ?, ?, ?)"
)


def model_rows(
    run_id: str, specs: Sequence[ModelSpec], stages: Sequence[Stage], now: str
) -> list[Statement]:
    """A new run's models, each with its settings and a pending row per stage."""
    statements: list[Statement] = []
    for position, spec in enumerate(specs):
        settings = encoding.encode(spec.lifecycle)
        statements.append(
            (
                _INSERT_MODEL,
                (run_id, spec.id, position, spec.name, settings, spec.project, encoding.ENCODING),
            )
        )
        statements.extend((_INSERT_STAGE, (run_id, spec.id, stage.value, now)) for stage in stages)
    return statements


def stage_rows(
    record: StageRecord,
    previous: StageState,
    detail: str | None,
    metrics: Mapping[str, str],
    data_json: str,
) -> list[Statement]:
    """A stage's new state (its data as `data_json`), its transition log entry, the attempt
    as it stands, and metrics: one logical write."""
    at = iso(record.updated_at)
    statements: list[Statement] = [
        (
            _UPDATE_STAGE,
            (
                record.state.value,
                record.attempt,
                record.job_id,
                record.trained_model_id,
                record.deployment_id,
                record.error,
                data_json,
                iso(record.submitted_at),
                iso(record.finished_at),
                at,
                record.run_id,
                record.model_id,
                record.stage.value,
            ),
        ),
        (
            _INSERT_TRANSITION,
            (
                record.run_id,
                record.model_id,
                record.stage.value,
                previous.value,
                record.state.value,
                at,
                detail,
            ),
        ),
    ]
    if record.attempt > 0:
        # One row per attempt, kept as it was when the attempt closed.
        outcome = StageState.FAILED if record.state is StageState.RETRYING else record.state
        statements.append(
            (
                _UPSERT_ATTEMPT,
                (
                    record.run_id,
                    record.model_id,
                    record.stage.value,
                    record.attempt,
                    record.job_id,
                    record.trained_model_id,
                    outcome.value,
                    record.error,
                    iso(record.submitted_at),
                    iso(record.finished_at),
                ),
            )
        )
    statements.extend(
        (_UPSERT_METRIC, (record.run_id, record.model_id, record.trained_model_id, name, value))
        for name, value in metrics.items()
    )
    return statements


def scrubbed(data: Mapping[str, Any]) -> tuple[Mapping[str, Any], str]:
    """`data` without secrets, and its JSON: serialised once, and the same object when there
    were none (the common case)."""
    text = json.dumps(dict(data), sort_keys=True)
    if redactor.scrub(text) == text:
        return data, text
    clean = redactor.scrub_value(data)
    return clean, json.dumps(clean, sort_keys=True)


def without_secrets(row: sqlite3.Row) -> dict[str, Any]:
    """A row read back, its texts scrubbed (a file written before redaction may hold secrets)."""
    return {
        key: redactor.scrub(value) if isinstance(value, str) else value
        for key, value in dict(row).items()
    }


def run_record(row: sqlite3.Row) -> RunRecord:
    return RunRecord(
        id=row["id"],
        created_at=datetime.fromisoformat(row["created_at"]),
        updated_at=datetime.fromisoformat(row["updated_at"]),
        finished_at=_dt(row["finished_at"]),
        status=row["status"],
        stages=tuple(Stage(s) for s in row["stages"].split(",") if s),
        reason=redactor.scrub_optional(row["reason"]),
        from_stage=Stage(row["from_stage"]) if row["from_stage"] else None,
    )


def stage_record(row: sqlite3.Row) -> StageRecord:
    return StageRecord(
        run_id=row["run_id"],
        model_id=row["model_id"],
        stage=Stage(row["stage"]),
        state=StageState(row["state"]),
        attempt=row["attempt"],
        job_id=row["job_id"],
        trained_model_id=row["trained_model_id"],
        deployment_id=row["deployment_id"],
        error=redactor.scrub_optional(row["error"]),  # a file written before redaction
        data=json.loads(row["data"]),
        submitted_at=_dt(row["submitted_at"]),
        finished_at=_dt(row["finished_at"]),
        updated_at=_dt(row["updated_at"]),
    )


def in_stage_order(stages: Mapping[Stage, StageRecord]) -> dict[Stage, StageRecord]:
    return dict(sorted(stages.items(), key=lambda item: STAGE_ORDER.index(item[0])))


def iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat(timespec="milliseconds")


def _dt(value: str | None) -> datetime | None:
    return None if value is None else parse_time(value)


def parse_time(value: str) -> datetime:
    """A time as `iso` wrote it."""
    return datetime.fromisoformat(value)
