"""The emulator's answers carry every key of the recorded ModelOps responses."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sim_support import EXPAND, LAG, TRAIN, behaving

FIXTURES = Path(__file__).parents[1] / "fixtures"
# Only BYOM (imported PMML) versions carry this; the emulator's models are trained from Git.
BYOM_ONLY = {"metadata.trainedModel.metadata.byomColumnExpression"}


def missing_keys(recorded: Any, ours: Any, path: str = "") -> set[str]:
    """Key paths present in `recorded` and absent from `ours`; list items are merged."""
    if isinstance(recorded, list):
        merged_recorded, merged_ours = _merge(recorded), _merge(ours)
        return missing_keys(merged_recorded, merged_ours, path) if merged_recorded else set()
    if not isinstance(recorded, dict):
        return set()
    if not isinstance(ours, dict):
        return {path or "<root>"}
    missing: set[str] = set()
    for key, value in recorded.items():
        child = f"{path}.{key}" if path else key
        if key not in ours:
            missing.add(child)
        else:
            missing |= missing_keys(value, ours[key], child)
    return missing


def _merge(items: Any) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for item in items if isinstance(items, list) else []:
        if isinstance(item, dict):
            for key, value in item.items():
                if isinstance(value, dict) and isinstance(merged.get(key), dict):
                    merged[key] = merged[key] | value
                else:
                    merged.setdefault(key, value)
    return merged


def recorded(name: str) -> dict[str, Any]:
    return dict(json.loads((FIXTURES / name).read_text()))


async def approved_version(client, clock, world) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """Train, evaluate with the recorded request, approve; returns (id, eval job, approval)."""
    train = (await client.post(f"/api/models/{world.models()[0].id}/train", json=TRAIN)).json()
    clock.advance(3600)
    request = recorded("job-evaluation.json")["metadata"]["evaluationRequest"]
    evaluation = (
        await client.post(
            f"/api/trainedModels/{train['trainedModelId']}/evaluate",
            json={
                "datasetId": request["datasetId"],
                "datasetConnectionId": request["datasetConnectionId"],
                "automationOverrides": {"dockerImage": "img", "resources": {"cpu": "1"}},
            },
        )
    ).json()
    clock.advance(90 + LAG)
    approval = (
        await client.post(
            f"/api/trainedModels/{train['trainedModelId']}/approve", json={"comments": "LGTM"}
        )
    ).json()
    return train["trainedModelId"], evaluation, approval


async def test_evaluation_job_and_approval_event_match_recordings(client, clock, world):
    """An evaluation job and an approval event have every recorded key."""
    _, evaluation, approval = await approved_version(client, clock, world)
    assert missing_keys(recorded("job-evaluation.json"), evaluation) <= BYOM_ONLY
    assert missing_keys(recorded("event-approved.json"), approval) == set()


async def test_deployment_job_matches_recording(client, clock, world):
    """A deployment job, sent the recorded request, has every recorded key."""
    tm_id, _, _ = await approved_version(client, clock, world)
    request = dict(recorded("job-deployment.json")["metadata"]["deploymentRequest"])
    del request["type"]
    request["engineTypeConfig"] = {
        k: v for k, v in request["engineTypeConfig"].items() if k != "@type"
    }
    deployment = (await client.post(f"/api/trainedModels/{tm_id}/deploy", json=request)).json()
    assert missing_keys(recorded("job-deployment.json"), deployment) <= BYOM_ONLY
    assert deployment["metadata"]["trainedModel"]["events"][0]["status"] == "APPROVED"


async def test_model_and_project_match_recordings(client, world):
    """A model and the project have every recorded key."""
    model = (await client.get(f"/api/models/{world.models()[0].id}")).json()
    assert missing_keys(recorded("model.json"), model) == set()
    project = (await client.get(f"/api/projects/{world.project.id}")).json()
    assert missing_keys(recorded("project.json"), project) == set()


@pytest.mark.parametrize("path", ["/api/models", "/api/jobs"])
async def test_timestamps_have_milliseconds_and_offset(client, world, path):
    """Timestamps read like 2025-07-03T21:51:36.960+00:00."""
    await client.post(f"/api/models/{world.models()[0].id}/train", json=TRAIN)
    body = (await client.get(path)).json()
    item = next(iter(body["_embedded"].values()))[0]
    assert len(item["createdAt"]) == len("2025-07-03T21:51:36.960+00:00")
    assert item["createdAt"].endswith("+00:00")
    assert item["createdAt"][19] == "."


async def test_last_nights_jobs_match_recordings(client, world):
    """Last night's evaluation and deployment jobs, read by id, have every recorded key."""
    history = world.jobs()[: world.stats()["history_jobs"]]
    for kind, fixture in (
        ("EVALUATION", "job-evaluation.json"),
        ("DEPLOYMENT", "job-deployment.json"),
    ):
        job = next(j for j in history if j.type == kind)
        body = (await client.get(f"/api/jobs/{job.id}", params=EXPAND)).json()
        byom = BYOM_ONLY | {"metadata.deploymentRequest.byomModelLocation"}
        assert missing_keys(recorded(fixture), body) <= byom
        assert body["status"] == "COMPLETED"


async def test_events_listing_matches_the_recorded_events(client, world):
    """A version's events (HAL, no page) carry every key of the events recorded in a job."""
    version = world.trained_models_of(world.models()[0].id)[0]
    events = (await client.get(f"/api/trainedModels/{version.id}/events")).json()
    assert set(events) == {"_embedded", "_links"}
    listed = events["_embedded"]["trainedModelEvents"]
    recorded_events = recorded("job-deployment.json")["metadata"]["trainedModel"]["events"]
    assert missing_keys(recorded_events, listed) == set()


@pytest.mark.parametrize(
    ("settings", "carried"),
    [
        (behaving(), False),
        (behaving(updated_at="fresh"), True),
        (behaving(updated_at="stale"), True),
    ],
    ids=["absent", "fresh", "stale"],
)
async def test_a_job_carries_updated_at_only_when_switched_on(client, clock, world, carried):
    """No recorded job has updatedAt; "fresh" moves it with the status, "stale" never moves."""
    job = (await client.post(f"/api/models/{world.models()[0].id}/train", json=TRAIN)).json()
    assert ("updatedAt" in job) is carried
    clock.advance(3600)
    for params in ({}, EXPAND):
        body = (await client.get(f"/api/jobs/{job['id']}", params=params)).json()
        assert ("updatedAt" in body) is carried
        if world.behaviour.updated_at == "fresh":
            assert body["updatedAt"] > body["createdAt"]
        elif carried:
            assert body["updatedAt"] == body["createdAt"]


def test_missing_keys_reports_nested_paths():
    """The shape comparison names nested and list-item keys."""
    recorded_body = {"a": {"b": 1, "c": [{"d": 1}, {"e": 2}]}}
    ours = {"a": {"b": 1, "c": [{"d": 1}]}}
    assert missing_keys(recorded_body, ours) == {"a.c.e"}
