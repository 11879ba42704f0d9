"""Batched status finders: jobs by updatedAt, and findByStatusIn, as Spring Data REST has them."""

from __future__ import annotations

import random
import time
from types import SimpleNamespace

import httpx
import pytest

from cli_support import TOKEN, emulator
from fleet.sim import SimSettings
from fleet.sim.index import JobIndex

PROJECT_ID = SimSettings().project_id
EXPAND = {"projection": "expandJob"}
FINDER = "/api/jobs/search/findByStatusIn"
TERMINAL = "COMPLETED,ERROR,CANCELLED"


def assert_spring_error(response, status: int, message_part: str) -> None:
    assert response.status_code == status
    assert set(response.json()) == {"timestamp", "status", "error", "message", "path"}
    assert message_part in response.json()["message"]


async def all_jobs(client, path: str, params: dict[str, str]) -> list[dict]:
    """Every page of a job listing, in order."""
    jobs: list[dict] = []
    page = 0
    while True:
        body = (await client.get(path, params={**params, "page": page, "size": 7})).json()
        jobs += body["_embedded"]["jobs"]
        page += 1
        if page >= body["page"]["totalPages"]:
            return jobs


async def busy_night(client, clock, world, rng: random.Random) -> None:
    """Trainings started at random moments, some ending in ERROR, some still queued."""
    for _ in range(30):
        model = rng.choice(world.models())
        await client.post(f"/api/models/{model.id}/train", json={})
        clock.advance(rng.choice((0.0, 0.5, 3.0, 20.0, 200.0)))


@pytest.mark.parametrize("settings", [SimSettings(models=8, job_error_rate=0.3)])
@pytest.mark.parametrize("seed", range(3))
async def test_jobs_sort_by_their_latest_status_change(client, clock, world, seed):
    """sort=updatedAt orders every job by when its status last changed, either way."""
    rng = random.Random(seed)
    await busy_night(client, clock, world, rng)
    for _ in range(4):
        asc = await all_jobs(client, "/api/jobs", EXPAND | {"sort": "updatedAt,asc"})
        desc = await all_jobs(client, "/api/jobs", EXPAND | {"sort": "updatedAt,desc"})
        assert len(asc) == len(world.jobs()) == 30
        stamps = [j["updatedAt"] for j in asc]
        assert stamps == sorted(stamps)
        assert [j["id"] for j in desc] == [j["id"] for j in reversed(asc)]
        expected = {j.id: j.updated_at(clock.now()) for j in world.jobs()}
        assert {j["id"] for j in asc} == set(expected)
        clock.advance(rng.uniform(5, 900))


@pytest.mark.parametrize("settings", [SimSettings(models=8, job_error_rate=0.3)])
@pytest.mark.parametrize("seed", range(3))
async def test_find_by_status_in_lists_exactly_the_jobs_in_those_statuses(
    client, clock, world, seed
):
    """findByStatusIn pages through the jobs whose status now is one of those asked for."""
    rng = random.Random(seed)
    await busy_night(client, clock, world, rng)
    for statuses in (["RUNNING"], ["COMPLETED", "ERROR", "CANCELLED"], ["CREATED", "SCHEDULED"]):
        now = clock.now()
        expected = [j.id for j in world.jobs() if j.status_at(now) in statuses]
        found = await all_jobs(client, FINDER, EXPAND | {"status": ",".join(statuses)})
        assert [j["id"] for j in found] == expected  # oldest first by default
        assert all(j["status"] in statuses for j in found)
        newest = await all_jobs(
            client, FINDER, EXPAND | {"status": ",".join(statuses), "sort": "updatedAt,desc"}
        )
        assert {j["id"] for j in newest} == set(expected)
        stamps = [j["updatedAt"] for j in newest]
        assert stamps == sorted(stamps, reverse=True)
        clock.advance(rng.uniform(30, 700))


async def test_find_by_status_in_takes_a_list_either_way(client, clock, world):
    """status=A,B and status=A&status=B are the same list; the page block is Spring's."""
    for model in world.models():
        await client.post(f"/api/models/{model.id}/train", json={})
    clock.advance(3600)
    comma = await client.get(FINDER, params={"status": TERMINAL, "size": 2, "page": 1})
    repeated = await client.get(
        FINDER,
        params=[("status", "COMPLETED"), ("status", "ERROR"), ("size", "2"), ("page", "1")],
    )
    assert comma.status_code == repeated.status_code == 200
    assert comma.json() == repeated.json()
    assert comma.json()["page"] == {"size": 2, "totalElements": 5, "totalPages": 3, "number": 1}
    assert "status" not in comma.json()["_embedded"]["jobs"][0]  # only expandJob carries it
    none = await client.get(FINDER, params={"status": "COFFEE"})
    assert none.json()["_embedded"]["jobs"] == []
    assert none.json()["page"]["totalElements"] == 0


async def test_find_by_status_in_needs_a_status(client):
    """Without a status the finder is a 400 naming the parameter, like the other finders."""
    for params in ({}, {"status": ""}, {"status": " , "}):
        response = await client.get(FINDER, params=params)
        assert_spring_error(response, 400, "Required request parameter 'status'")


@pytest.mark.parametrize("settings", [SimSettings(models=3, batch_finders=False)])
async def test_without_batch_finders_the_server_answers_like_7_3(client, clock, world):
    """--no-batch-finders: findByStatusIn is an unrouted 404, sort=updatedAt an unknown 400."""
    await client.post(f"/api/models/{world.models()[0].id}/train", json={})
    missing = await client.get(FINDER, params={"status": "RUNNING"})
    assert_spring_error(missing, 404, "")
    unknown = await client.get("/api/jobs", params={"sort": "updatedAt,desc"})
    assert_spring_error(unknown, 400, "No property 'updatedAt' found for type 'Job'")
    created = await client.get("/api/jobs", params={"sort": "createdAt,desc"})
    assert created.json()["page"]["totalElements"] == 1
    stats = (await client.get("http://sim/_sim/stats")).json()
    assert stats["requests_by_route"]["GET <unrouted>"] == 1
    clock.advance(3600)
    assert world.jobs()[0].status_at(clock.now()) == "COMPLETED"


def test_index_pages_cost_the_page_not_the_jobs():
    """With 50,000 jobs through 250,000 changes, a page deep into any order is quick."""
    index = JobIndex()
    jobs = [SimpleNamespace(id=f"job-{i}") for i in range(50_000)]
    for job in jobs:
        index.added(job, "CREATED")
    for status in ("SCHEDULED", "ASSIGNED", "RUNNING"):
        for job in jobs:
            index.changed(job, status)
    for i, job in enumerate(jobs[:40_000]):
        index.changed(job, "ERROR" if i % 50 == 0 else "COMPLETED")
    started = time.process_time()
    for offset in range(0, 40_000, 400):
        page = index.page({"RUNNING"}, "updatedAt", offset % 10_000, 100, descending=True)
        assert len(page) == 100
        assert len(index.page({"ERROR"}, "createdAt", offset // 50, 100, descending=False)) > 0
        assert len(index.page(None, "updatedAt", offset, 100, descending=True)) == 100
    assert time.process_time() - started < 1.0
    assert index.count({"COMPLETED", "ERROR"}) == 40_000
    assert [j.id for j in index.page({"ERROR"}, "updatedAt", 0, 2, descending=True)] == [
        "job-39950",
        "job-39900",
    ]


@pytest.mark.e2e
@pytest.mark.parametrize(("flags", "finder_status"), [((), 200), (("--no-batch-finders",), 404)])
def test_fleet_sim_serves_the_finders_unless_told_not_to(tmp_path, flags, finder_status):
    """`fleet sim --no-batch-finders` serves a 7.3-like API over HTTP."""
    with emulator(tmp_path, "--models", "2", *flags) as url:
        headers = {"Authorization": f"Bearer {TOKEN}", "AOA-Project-ID": PROJECT_ID}
        found = httpx.get(f"{url}{FINDER}", params={"status": "RUNNING"}, headers=headers)
        assert found.status_code == finder_status
