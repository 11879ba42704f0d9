from __future__ import annotations

import pytest

from fleet.sim import SimSettings
from fleet.sim.paging import PageRequest, page_request
from fleet.sim.world import InvalidRequestError


@pytest.mark.parametrize("settings", [SimSettings(models=45)])
async def test_models_page_through_in_name_order(client):
    """Models come in pages of `size`, 0-based, with Spring's page block."""
    names: list[str] = []
    for number in range(3):
        body = (await client.get("/api/models", params={"page": number, "size": 20})).json()
        assert body["page"] == {
            "size": 20,
            "totalElements": 45,
            "totalPages": 3,
            "number": number,
        }
        names += [m["name"] for m in body["_embedded"]["models"]]
    assert names == [f"store-{i:04d}" for i in range(1, 46)]
    default = (await client.get("/api/models")).json()
    assert default["page"]["size"] == 20
    newest = (await client.get("/api/models", params={"sort": "createdAt,desc", "size": 1})).json()
    assert newest["_embedded"]["models"][0]["name"] == "store-0045"


async def test_jobs_sort_by_created_at(client, clock, world):
    """Jobs list oldest first by default and newest first with sort=createdAt,desc."""
    created = []
    for model in world.models():
        job = (await client.post(f"/api/models/{model.id}/train", json={})).json()
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


def test_paging_parameters_are_read_leniently():
    """Bad numbers fall back to defaults, sizes are capped, unknown sort fields are refused."""
    request = page_request({"page": "x", "size": "-1"}, entity="Job")
    assert request == PageRequest(page=0, size=20, descending=False)
    assert page_request({"size": "5000"}, entity="Job").size == 1000
    assert page_request({"sort": "createdAt,DESC"}, entity="Job").descending
    with pytest.raises(InvalidRequestError, match="No property 'name' found for type 'Job'"):
        page_request({"sort": "name"}, entity="Job")
