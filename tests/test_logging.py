"""Logging: JSON or console lines, with every known secret and bearer value redacted."""

from __future__ import annotations

import json

import pytest
import structlog

from fleet import logging as fleet_logging

SECRET = "sekrit-value-5521"


@pytest.fixture(autouse=True)
def _restore_structlog():
    yield
    structlog.reset_defaults()


def _fail_with_secret() -> None:
    token = SECRET  # a frame local: JSON tracebacks must not render it
    raise ValueError(f"server said: Authorization: Bearer {token}")


@pytest.mark.parametrize("as_json", [True, False])
def test_secrets_are_redacted_in_fields_nested_values_and_tracebacks(capsys, as_json):
    """A known secret and anything after 'Bearer' vanish from fields, nests and tracebacks."""
    fleet_logging.configure(level="debug", json=as_json)
    fleet_logging.redactor.add(SECRET)
    log = structlog.get_logger("test")
    log.info("fleet.test.event", detail=f"token={SECRET}", nested={"headers": [SECRET]})
    try:
        _fail_with_secret()
    except ValueError:
        log.exception("fleet.test.failed")
    out = capsys.readouterr().out
    assert SECRET not in out
    assert "[redacted]" in out
    assert "fleet.test.failed" in out
    if as_json:
        lines = [json.loads(line) for line in out.splitlines()]
        assert lines[0]["event"] == "fleet.test.event"
        assert "locals" not in json.dumps(lines[1])


def test_json_lines_carry_level_timestamp_and_bound_context(capsys):
    """Off a terminal each event is one JSON object with level, timestamp and context."""
    fleet_logging.configure(level="info", json=True)
    with structlog.contextvars.bound_contextvars(run_id="r1", model_id="m1", stage="train"):
        structlog.get_logger("test").info("fleet.stage.submitted", job_id="j1")
        structlog.get_logger("test").debug("fleet.hidden")
    [line] = capsys.readouterr().out.splitlines()
    event = json.loads(line)
    assert event["event"] == "fleet.stage.submitted"
    assert {event["run_id"], event["model_id"], event["stage"]} == {"r1", "m1", "train"}
    assert event["level"] == "info"
    assert "timestamp" in event
