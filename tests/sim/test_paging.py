from __future__ import annotations

import pytest
from sim_support import EXPAND, TRAIN, behaving
from starlette.datastructures import QueryParams

from fleet.sim import SimSettings
from fleet.sim.paging import PageRequest, page_request


@pytest.mark.parametrize("settings", [SimSettings(models=45)])
async def test_models_page_through_in_name_order(client):
    """Models come in pages of `size`, 0-based, with Spring's page block; archived ones last."""
    models: list[dict] = []
    for number in range(3):
        body = (await client.get("/api/models", params={"page": number, "size": 20})).json()
        assert body["page"] == {
            "size": 20,
            "totalElements": 47,
            "totalPages": 3,
            "number": number,
        }
        models += body["_embedded"]["models"]
    assert [m["name"] for m in models] == [f"store-{i:04d}" for i in range(1, 48)]
    assert [m["archived"] for m in models] == [False] * 45 + [True] * 2
    default = (await client.get("/api/models")).json()
    assert default["page"]["size"] == 20
    for sort in ("createdAt,desc", "name,desc", "updatedAt,desc"):
        newest = (await client.get("/api/models", params={"sort": sort, "size": 1})).json()
        assert newest["_embedded"]["models"][0]["name"] == "store-0047"


@pytest.mark.parametrize("settings", [SimSettings(models=45)])
async def test_models_found_by_archived(client):
    """findByArchived splits the listing into the active models and the archived ones."""
    for archived, total, first in (("false", 45, "store-0001"), ("TRUE", 2, "store-0046")):
        body = (
            await client.get("/api/models/search/findByArchived", params={"archived": archived})
        ).json()
        assert body["page"]["totalElements"] == total
        assert body["_embedded"]["models"][0]["name"] == first


@pytest.mark.parametrize("settings", [behaving(job_history=False)])
async def test_jobs_sort_by_created_at(client, clock, world):
    """Jobs list oldest first by default and newest first with sort=createdAt,desc."""
    created = []
    for model in world.models():
        job = (await client.post(f"/api/models/{model.id}/train", json=TRAIN)).json()
        created.append(job["id"])
        clock.advance(1)
    params = {"size": 2, "projection": "expandJob"}
    asc = (await client.get("/api/jobs", params=params | {"sort": "createdAt,asc"})).json()
    assert [j["id"] for j in asc["_embedded"]["jobs"]] == created[:2]
    desc = await client.get("/api/jobs", params=params | {"sort": "createdAt,desc", "page": 1})
    page = desc.json()
    assert [j["id"] for j in page["_embedded"]["jobs"]] == created[::-1][2:4]
    assert page["page"] == {"size": 2, "totalElements": 5, "totalPages": 3, "number": 1}
    first = page["_embedded"]["jobs"][0]
    assert {"modelId", "trainedModelId", "type", "createdAt", "status"} <= set(first)
    last = (await client.get("/api/jobs", params={"page": 2, "size": 2})).json()
    assert [j["id"] for j in last["_embedded"]["jobs"]] == created[4:]
    assert "status" not in last["_embedded"]["jobs"][0]


def test_window_cuts_lists_and_dict_views_alike():
    """A page of a dict's values matches the same page of a list, in both directions."""
    items = list(range(10))
    as_dict = {i: i for i in items}
    for descending in (False, True):
        for page in range(4):
            request = PageRequest(page=page, size=3, descending=descending)
            assert request.window(items) == request.window(as_dict.values())
    assert PageRequest(page=1, size=3, descending=True).window(items) == [6, 5, 4]
    assert PageRequest(page=5, size=3, descending=True).window(items) == []


async def test_last_nights_jobs_come_first_in_creation_order(client, clock, world):
    """The job history is listed before new jobs, by createdAt either way, all COMPLETED."""
    job = (await client.post(f"/api/models/{world.models()[0].id}/train", json=TRAIN)).json()
    size = {"size": 1000} | EXPAND
    asc = (await client.get("/api/jobs", params=size | {"sort": "createdAt,asc"})).json()
    desc = (await client.get("/api/jobs", params=size | {"sort": "createdAt,desc"})).json()
    jobs = asc["_embedded"]["jobs"]
    assert len(jobs) == world.stats()["history_jobs"] + 1
    assert [j["id"] for j in jobs] == [j["id"] for j in reversed(desc["_embedded"]["jobs"])]
    stamps = [j["createdAt"] for j in jobs]
    assert stamps == sorted(stamps)
    assert jobs[-1]["id"] == job["id"]
    assert {j["status"] for j in jobs[:-1]} == {"COMPLETED"}
    assert {j["type"] for j in jobs[:-1]} == {"TRAINING", "EVALUATION", "DEPLOYMENT"}


def test_paging_parameters_are_read_leniently():
    """Bad numbers fall back to defaults, sizes are capped, unknown sort fields are dropped."""
    request = page_request(QueryParams({"page": "x", "size": "-1"}))
    assert request == PageRequest(page=0, size=20, descending=False)
    assert page_request(QueryParams({"size": "5000"})).size == 1000
    assert page_request(QueryParams({"sort": "createdAt,DESC"})).descending
    dropped = page_request(QueryParams({"sort": "name,desc"}))
    assert dropped == PageRequest(page=0, size=20, descending=False, sort_by=None)
    second = page_request(QueryParams("sort=colour,asc&sort=createdAt,desc"))
    assert second.sort_by == "createdAt"
    assert second.descending
    assert second.unsorted() == PageRequest(page=0, size=20, descending=False)


@pytest.mark.parametrize("path", ["/api/jobs", "/api/models", "/api/deployments/search/findActive"])
async def test_unknown_sort_properties_are_dropped_on_every_collection(client, path):
    """A sort on a property the entity lacks is ignored: 200, the same as no sort."""
    plain = await client.get(path, params={"size": 50})
    for sort in ("colour,asc", "nothing,desc", "createdAt,sideways"):
        answer = await client.get(path, params={"size": 50, "sort": sort})
        assert answer.status_code == 200
        assert answer.json() == plain.json()
