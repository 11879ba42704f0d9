"""Secrets at rest: one redactor, applied before anything is stored, reported or exported.

A server that echoes the token in an error message (`invalid api key <token>`) and a
Pushgateway URL with a password in the settings: neither reaches the state file, its WAL,
`fleet status --json`, a report in any format, or the metrics file; every file is 0600.
"""

from __future__ import annotations

import json
import stat
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from fleet import scheduler, sim
from fleet.batch import plan_of
from fleet.client import ModelOpsClient
from fleet.metrics import RunFigures, write_textfile
from fleet.report import render
from fleet.report.model import FORMATS, build_report
from fleet.report.statefiles import StateFiles
from fleet.report.status import status_document
from fleet.retries import RetryPolicy
from fleet.secrets import REDACTED, Redactor
from fleet.sim.behaviour import Behaviour
from fleet.store import Store
from fleet.transport import HttpOptions
from support import BASE_URL, Emulated, InstantTime, VirtualTime, files_in, settings_for

TOKEN = "echoed-bearer-7c41e9d2"
PUSH_PASSWORD = "push-pass-93be0f"
PUSHGATEWAY = f"https://fleet-metrics:{PUSH_PASSWORD}@push.example:9091/"


class _EchoingGateway:
    """A gateway that refuses one model's training, repeating the credential it was sent."""

    def __init__(self, app: Any, model_id: str) -> None:
        self._app = app
        self._path = f"/api/models/{model_id}/train"

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] == "POST"
            and scope["path"].endswith(self._path)
        ):
            headers = dict(scope["headers"])
            token = headers[b"authorization"].decode().removeprefix("Bearer ")
            body = json.dumps({"message": f"invalid api key {token}"}).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 400,
                    "headers": [(b"content-type", b"application/json")],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        await self._app(scope, receive, send)


def _modes(directory: Path) -> dict[str, int]:
    return {p.name: stat.S_IMODE(p.stat().st_mode) for p in directory.iterdir() if p.is_file()}


async def test_an_echoed_token_and_a_url_password_reach_no_file_status_or_report(
    tmp_path: Path,
) -> None:
    """Stored, reported, summarised: the token a server echoed and the URL password are gone."""
    settings_sim = sim.SimSettings(models=6, token=TOKEN, behaviour=Behaviour.profile("default"))
    clock = sim.ManualClock(start=time.time())
    world, app = sim.build(settings_sim, clock)
    refused = world.models()[0]
    transport = httpx.ASGITransport(app=_EchoingGateway(app, refused.id))
    async with ModelOpsClient(
        BASE_URL,
        settings_sim.project_id,
        TOKEN,
        http=HttpOptions(transport=transport),
        pacing=InstantTime().pacing(retry=RetryPolicy(initial_s=0.0, max_s=0.0, jitter_s=0.0)),
    ) as api:
        env = Emulated(world=world, api=api, time=VirtualTime(clock), settings=settings_sim)
        db = tmp_path / "state" / "fleet.db"
        db.parent.mkdir()
        settings = settings_for(env, db, pushgateway=PUSHGATEWAY)
        async with Store.open(db) as store:
            result = await scheduler.run(
                plan_of(settings, run_id="night"),
                env.api,
                store,
                controls=scheduler.Controls(sleep=env.time.sleep, clock=env.time.monotonic),
            )
            while_open = files_in(db.parent)  # the WAL holds the night's commits now
    assert "fleet.db-wal" in while_open
    [failure] = result.failed
    assert "invalid api key" in failure.reason
    assert REDACTED in failure.reason
    status = json.dumps(await status_document([db], None))
    assert "invalid api key" in status
    async with StateFiles.open([db]) as files:
        report = await build_report(files, "night")
    outputs = {fmt: render(report, fmt) for fmt in FORMATS}
    assert all("invalid api key" in text for text in outputs.values())
    figures = RunFigures(run_id="night", status=result.status, started_at=1.0, finished_at=2.0)
    write_textfile(figures, tmp_path / "fleet.prom", project="p")
    for secret in (TOKEN, PUSH_PASSWORD):
        assert secret not in failure.reason
        assert secret not in status
        for fmt, text in outputs.items():
            assert secret not in text, fmt
        for name, content in {**while_open, **files_in(db.parent)}.items():
            assert secret.encode() not in content, name
    stored = json.loads(await _settings_of(db))
    assert stored["pushgateway"] == "https://push.example:9091/"
    assert set(_modes(db.parent).values()) == {0o600}
    assert _modes(tmp_path)["fleet.prom"] == 0o600


async def _settings_of(db: Path) -> str:
    async with Store.open(db, readonly=True) as store:
        rows = await store._fetch("SELECT settings FROM runs")
    return str(rows[0][0])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "push to https://user:hunter2secret@push.example:9091/metrics failed",
            "push to https://push.example:9091/metrics failed",
        ),
        (
            "GET https://api.example/x?access_token=abc123xyz&page=2",
            f"GET https://api.example/x?access_token={REDACTED}&page=2",
        ),
        ("header Authorization: Basic dXNlcjpwYXNz", f"header Authorization: Basic {REDACTED}"),
        ("Bearer abcdef123456 was refused", f"Bearer {REDACTED} was refused"),
        ("a plain message = fine", "a plain message = fine"),
    ],
)
def test_patterns_are_redacted_without_knowing_the_secret(text: str, expected: str) -> None:
    """URL userinfo, secret query values and Authorization values go, the rest stays."""
    assert Redactor().scrub(text) == expected


def test_a_registered_url_password_is_redacted_on_its_own_too() -> None:
    """add_url: the password (and secret query values) are removed wherever they appear."""
    redactor = Redactor()
    redactor.add_url("https://fleet:p%40ss-w0rd@push.example/?token=tok-123456")
    text = redactor.scrub("gateway said: bad password p@ss-w0rd, token tok-123456")
    assert text == f"gateway said: bad password {REDACTED}, token {REDACTED}"


def test_scrub_value_goes_into_nested_data() -> None:
    """Mappings, lists and their keys are scrubbed; numbers and None stay as they are."""
    redactor = Redactor()
    redactor.add("s3cr3t-value")
    value = {"a": ["x s3cr3t-value"], "s3cr3t-value": 1, "n": None, "t": (2.5,)}
    assert redactor.scrub_value(value) == {
        "a": [f"x {REDACTED}"],
        REDACTED: 1,
        "n": None,
        "t": [2.5],
    }
