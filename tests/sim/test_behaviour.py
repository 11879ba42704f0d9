"""The plausible-server switches of `Behaviour`, each in its default and its alternatives."""

from __future__ import annotations

import math
import uuid
from typing import Any

import httpx
import pytest
from sim_support import (
    BASE_URL,
    DEPLOY,
    EVALUATE,
    EXPAND,
    HEADERS,
    JOBS_URL,
    LAG,
    STATS_URL,
    TRAIN,
    approved,
    behaving,
    finish,
    post,
)

from fleet.sim import Behaviour, ManualClock, SimSettings, World, create_app
from fleet.sim.behaviour import ALTERNATIVE_JOB_TYPES

EVENTS = "/api/trainedModelEvents/search/findByTrainedModelId"


async def listed(client, **params: str) -> list[dict[str, Any]]:
    body = (await client.get("/api/jobs", params={"size": 1000, **EXPAND, **params})).json()
    return list(body["_embedded"]["jobs"])


async def evaluation_of_new_version(client, clock, world) -> tuple[str, dict[str, Any]]:
    """A new version of the first model, trained, with its evaluation just POSTed."""
    train = await post(client, f"/api/models/{world.models()[0].id}/train", TRAIN)
    await finish(client, clock, train)
    tm_id = str(train["trainedModelId"])
    return tm_id, await post(client, f"/api/trainedModels/{tm_id}/evaluate", EVALUATE)


async def event_statuses(client, tm_id: str) -> list[str]:
    body = (await client.get(EVENTS, params={"trainedModelId": tm_id})).json()
    return [e["status"] for e in body["_embedded"]["trainedModelEvents"]]


# -- job_sort and updated_at -----------------------------------------------------------------


@pytest.mark.parametrize("settings", [behaving(job_sort="error")])
async def test_a_sort_by_updated_at_can_be_a_server_error(client):
    """job_sort "error": sort=updatedAt answers 500 with Spring Boot's body; createdAt works."""
    for path in ("/api/jobs", "/api/jobs/search/findByDeploymentId"):
        params = {"sort": "updatedAt,desc", "deploymentId": str(uuid.UUID(int=3))}
        response = await client.get(path, params=params)
        assert response.status_code == 500
        body = response.json()
        assert set(body) == {"timestamp", "status", "error", "message", "path"}
        assert body["error"] == "Internal Server Error"
    assert (await client.get("/api/jobs", params={"sort": "createdAt,desc"})).status_code == 200


@pytest.mark.parametrize("settings", [behaving(job_sort="honoured", updated_at="stale")])
async def test_a_stale_updated_at_sorts_like_creation(client, clock, world):
    """honoured + stale: sorted by updatedAt is creation order; finished jobs never rise."""
    models = world.models()
    first = await post(client, f"/api/models/{models[0].id}/train", TRAIN)
    clock.advance(10)
    await post(client, f"/api/models/{models[1].id}/train", TRAIN)
    clock.advance(3600)
    assert world._index is None  # creation order needs no index
    newest = await listed(client, sort="updatedAt,desc")
    assert [j["id"] for j in newest] == [j.id for j in reversed(world.jobs())]
    assert newest[1]["id"] == first["id"]
    assert all(j["updatedAt"] == j["createdAt"] for j in newest)


@pytest.mark.parametrize("settings", [behaving(job_sort="honoured", job_history=False)])
async def test_an_honoured_sort_works_without_showing_updated_at(client, clock, world):
    """honoured + absent: jobs sort by their last change, yet carry no updatedAt."""
    models = world.models()
    training = await post(client, f"/api/models/{models[0].id}/train", TRAIN)
    clock.advance(1)
    version = world.trained_models_of(models[1].id)[0]
    await post(client, f"/api/trainedModels/{version.id}/evaluate", EVALUATE)
    clock.advance(95)  # the evaluation ended; the training, older, still runs
    newest = await listed(client, sort="updatedAt,desc")
    assert [j["type"] for j in newest] == ["EVALUATION", "TRAINING"]
    assert newest[1]["id"] == training["id"]
    assert all("updatedAt" not in j for j in newest)


# -- status_missing_rate ---------------------------------------------------------------------


@pytest.mark.parametrize("settings", [behaving(status_missing_rate=1.0)])
async def test_every_job_read_can_lack_its_status(client, clock, world):
    """Rate 1: neither a read by id nor a listing item carries status, even with expandJob."""
    job = await post(client, f"/api/models/{world.models()[0].id}/train", TRAIN)
    clock.advance(3600)
    by_id = (await client.get(f"/api/jobs/{job['id']}", params=EXPAND)).json()
    assert "status" not in by_id
    assert by_id["id"] == job["id"]
    assert all("status" not in j for j in await listed(client))


async def missing_statuses(seed: int, reads: int = 300) -> list[bool]:
    """Which of `reads` reads of one job lack its status, at rate 0.3 and `seed`."""
    settings = SimSettings(models=1, seed=seed, behaviour=Behaviour(status_missing_rate=0.3))
    world = World(settings, ManualClock())
    transport = httpx.ASGITransport(app=create_app(world))
    job = world.jobs()[0]
    async with httpx.AsyncClient(transport=transport, base_url=BASE_URL, headers=HEADERS) as c:
        return [
            "status" not in (await c.get(f"/api/jobs/{job.id}", params=EXPAND)).json()
            for _ in range(reads)
        ]


async def test_a_seeded_share_of_job_reads_lacks_status():
    """At rate 0.3 about 30% of reads lack status: the same reads for the same seed."""
    first = await missing_statuses(seed=3)
    assert 60 < sum(first) < 120
    assert first == await missing_statuses(seed=3)
    assert first != await missing_statuses(seed=4)


# -- job_types -------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
async def test_other_job_types_rename_train_and_retire_jobs_where_shown(seed):
    """job_types "other": a seeded pair names train and retire jobs; the world stays canonical."""
    settings = SimSettings(models=2, seed=seed, behaviour=Behaviour(job_types="other"))
    world = World(settings, ManualClock())
    train_name, retire_name = world.job_type_names["TRAINING"], world.job_type_names["RETIREMENT"]
    assert (train_name, retire_name) in ALTERNATIVE_JOB_TYPES
    assert world.job_type_names == World(settings, ManualClock()).job_type_names
    transport = httpx.ASGITransport(app=create_app(world))
    async with httpx.AsyncClient(transport=transport, base_url=BASE_URL, headers=HEADERS) as c:
        model = world.models()[0]
        train = await post(c, f"/api/models/{model.id}/train", TRAIN)
        old = world.trained_models_of(model.id)[0]
        deployment_id = old.deployments[0].id
        retire = await post(
            c, f"/api/trainedModels/{old.id}/retire", {"deploymentId": deployment_id}
        )
        assert (train["type"], retire["type"]) == (train_name, retire_name)
        by_id = (await c.get(f"/api/jobs/{train['id']}", params=EXPAND)).json()
        assert by_id["type"] == train_name
        types = {j["type"] for j in await listed(c)}
        assert types == {train_name, retire_name, "EVALUATION", "DEPLOYMENT"}
        records = (await c.get(JOBS_URL)).json()
        assert [r["type"] for r in records] == ["TRAINING", "RETIREMENT"]
        stats = (await c.get(STATS_URL)).json()
        assert stats["jobs_by_type"]["TRAINING"] == stats["jobs_by_type"]["RETIREMENT"] == 1


def test_the_other_job_types_vary_with_the_seed():
    """Across seeds "other" picks each alternative pair; "guessed" renames nothing."""
    picks = {
        tuple(Behaviour(job_types="other").job_type_names(seed).values()) for seed in range(40)
    }
    assert picks == set(ALTERNATIVE_JOB_TYPES)
    assert Behaviour().job_type_names(0) == {}


# -- evaluated_lag_s -------------------------------------------------------------------------


async def test_the_evaluated_event_comes_a_little_after_its_job(client, clock, world):
    """Default lag: COMPLETED first; EVALUATED (and approval) only `evaluated_lag_s` later."""
    tm_id, evaluation = await evaluation_of_new_version(client, clock, world)
    ends_at = world.job(evaluation["id"]).ends_at
    clock.advance(ends_at - clock.now())
    status = await client.get(f"/api/jobs/{evaluation['id']}", params=EXPAND)
    assert status.json()["status"] == "COMPLETED"
    assert await event_statuses(client, tm_id) == ["TRAINED"]
    refused = await client.post(f"/api/trainedModels/{tm_id}/approve", json={"comments": "x"})
    assert refused.status_code == 400
    assert "must be EVALUATED first" in refused.json()["message"]
    clock.advance(LAG - 0.001)
    assert await event_statuses(client, tm_id) == ["TRAINED"]
    clock.advance(0.001)
    assert await event_statuses(client, tm_id) == ["TRAINED", "EVALUATED"]
    (event,) = [e for e in world.events_of(tm_id) if e.status == "EVALUATED"]
    assert event.created_at == ends_at + LAG
    assert event.job_id == evaluation["id"]
    assert world.trained_model(tm_id).status == "EVALUATED"


@pytest.mark.parametrize(
    ("settings", "lag"),
    [(behaving(evaluated_lag_s=0.0), 0.0), (behaving(evaluated_lag_s=math.inf), math.inf)],
    ids=["at once", "never"],
)
async def test_the_evaluated_event_at_once_or_never(client, clock, world, lag):
    """Lag 0: the event at the job's end; lag inf: the job completes and no event ever comes."""
    tm_id, evaluation = await evaluation_of_new_version(client, clock, world)
    clock.advance(world.job(evaluation["id"]).ends_at - clock.now())
    expected = ["TRAINED", "EVALUATED"] if lag == 0 else ["TRAINED"]
    assert await event_statuses(client, tm_id) == expected
    clock.advance(365 * 86_400)
    assert await event_statuses(client, tm_id) == expected
    assert world.trained_model(tm_id).status == ("EVALUATED" if lag == 0 else "TRAINED")


def test_the_lagged_event_is_deterministic_among_other_changes():
    """Two worlds driven alike write the same events at the same times."""

    def story() -> list[tuple[str, float]]:
        clock = ManualClock()
        world = World(SimSettings(models=6, seed=2), clock)
        for model in world.models():
            world.evaluate(world.trained_models_of(model.id)[0].id, EVALUATE)
            clock.advance(17.0)
        clock.advance(200.0)
        return [
            (e.status, e.created_at)
            for m in world.models()
            for e in world.events_of(world.trained_models_of(m.id)[0].id)
        ]

    assert story() == story()
    assert [status for status, _ in story()].count("EVALUATED") == 12


# -- archived models and versions ------------------------------------------------------------


@pytest.mark.parametrize("settings", [behaving(archived_models=4)])
async def test_archived_models_are_listed_after_the_active_ones(client, world):
    """archived_models N: N more models named on from the active ones, archived, undeployed."""
    models = (await client.get("/api/models", params={"size": 100})).json()["_embedded"]["models"]
    assert [m["name"] for m in models] == [f"store-{i:04d}" for i in range(1, 10)]
    assert [m["archived"] for m in models] == [False] * 5 + [True] * 4
    for model in models[5:]:
        body = (await client.get(f"/api/models/{model['id']}")).json()
        assert body["archived"] is True
        (version,) = world.trained_models_of(model["id"])
        assert version.deployments == []
    stats = (await client.get(STATS_URL)).json()
    assert (stats["models"], stats["archived_models"]) == (5, 4)
    assert stats["active_deployments"] == 5


@pytest.mark.parametrize("settings", [behaving(models=200)])
async def test_a_seeded_share_of_models_has_a_newer_archived_version(client, world):
    """archived_versions_rate: about 10% of models have a TRAINED, archived version 2."""
    with_archived = []
    for model in world.models():
        versions = world.trained_models_of(model.id)
        if len(versions) == 2:
            deployed, newer = versions
            assert newer.archived
            assert not deployed.archived
            assert newer.status == "TRAINED"
            assert [e.status for e in newer.events] == ["TRAINED"]
            assert newer.created_at > deployed.deployments[0].created_at
            with_archived.append(model.id)
    assert 8 <= len(with_archived) <= 35
    found = await client.get(
        "/api/trainedModels/search/findByModelId",
        params={"modelId": with_archived[0], "sort": "createdAt,desc"},
    )
    newest, deployed = found.json()["_embedded"]["trainedModels"]
    assert (newest["archived"], deployed["archived"]) == (True, False)
    assert (await client.get(f"/api/trainedModels/{newest['id']}")).json()["archived"] is True
    job = (await client.get(f"/api/jobs/{newest['jobId']}", params=EXPAND)).json()
    assert (job["type"], job["status"]) == ("TRAINING", "COMPLETED")
    same = World(SimSettings(models=200), ManualClock())
    again = [m.id for m in same.models() if len(same.trained_models_of(m.id)) == 2]
    assert again == with_archived


@pytest.mark.parametrize("settings", [behaving(models=50, archived_versions_rate=0.0)])
def test_no_archived_versions_at_rate_zero(world):
    """archived_versions_rate 0: every model has exactly its deployed version."""
    assert all(len(world.trained_models_of(m.id)) == 1 for m in world.models())


# -- events_listing --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "settings",
    [
        behaving(events_listing="hal"),
        behaving(events_listing="list"),
        behaving(events_listing="absent"),
    ],
    ids=["hal", "list", "absent"],
)
async def test_the_events_listing_takes_each_shape_and_the_finder_stays(client, world):
    """hal: _embedded without page; list: a bare array; absent: 404. The finder always works."""
    version = world.trained_models_of(world.models()[0].id)[0]
    response = await client.get(f"/api/trainedModels/{version.id}/events")
    finder = (await client.get(EVENTS, params={"trainedModelId": version.id})).json()
    expected = finder["_embedded"]["trainedModelEvents"]
    assert [e["status"] for e in expected] == ["TRAINED", "EVALUATED", "APPROVED", "DEPLOYED"]
    assert finder["page"]["totalElements"] == 4
    listing = world.behaviour.events_listing
    if listing == "absent":
        assert response.status_code == 404
        assert response.content == b""
    elif listing == "list":
        assert response.json() == expected
    else:
        assert response.json()["_embedded"]["trainedModelEvents"] == expected
        assert "page" not in response.json()


# -- deployments and scoring -----------------------------------------------------------------


async def test_a_deployed_version_stays_approved_by_default(client, clock, world):
    """deployed_version_status off: the version reads APPROVED while deployed and after."""
    tm_id = await approved(client, clock, world.models()[0].id)
    deploy = await post(client, f"/api/trainedModels/{tm_id}/deploy", DEPLOY)
    await finish(client, clock, deploy)
    deployment = world.deployment_by_job(deploy["id"])
    assert world.trained_model(tm_id).status == "APPROVED"
    retire = await post(
        client, f"/api/trainedModels/{tm_id}/retire", {"deploymentId": deployment.id}
    )
    await finish(client, clock, retire)
    assert world.trained_model(tm_id).status == "APPROVED"
    assert deployment.status == "RETIRED"
    assert await event_statuses(client, tm_id) == [
        "TRAINED",
        "EVALUATED",
        "APPROVED",
        "DEPLOYED",
        "RETIRED",
    ]
