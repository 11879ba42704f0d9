"""Batched status finders: jobs by updatedAt, and findByStatusIn, when the server has them.

By default it has neither (`Behaviour`): a sort by `updatedAt` is dropped and the finder is a
404. These tests switch them on where they test them.
"""

from __future__ import annotations

import random
from types import SimpleNamespace

import httpx
import pytest
from sim_support import EXPAND, TRAIN, behaving, optimistic

from cli_support import TOKEN, emulator
from fleet.sim import Behaviour, SimSettings
from fleet.sim.index import JobIndex

PROJECT_ID = SimSettings().project_id
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
        await client.post(f"/api/models/{model.id}/train", json=TRAIN)
        clock.advance(rng.choice((0.0, 0.5, 3.0, 20.0, 200.0)))


def night(*, job_history: bool = False) -> SimSettings:
    """8 models, some jobs failing, the finders on; no job history unless asked."""
    behaviour = Behaviour.optimistic(job_history=job_history)
    return SimSettings(models=8, job_error_rate=0.3, behaviour=behaviour)


@pytest.mark.parametrize("settings", [night(), night(job_history=True)], ids=["new", "history"])
@pytest.mark.parametrize("seed", range(3))
async def test_jobs_sort_by_their_latest_status_change(client, clock, world, seed):
    """sort=updatedAt (honoured) orders every job by its last status change, either way."""
    rng = random.Random(seed)
    await busy_night(client, clock, world, rng)
    for _ in range(4):
        asc = await all_jobs(client, "/api/jobs", EXPAND | {"sort": "updatedAt,asc"})
        desc = await all_jobs(client, "/api/jobs", EXPAND | {"sort": "updatedAt,desc"})
        assert len(asc) == len(world.jobs()) == 30 + world.stats()["history_jobs"]
        stamps = [j["updatedAt"] for j in asc]
        assert stamps == sorted(stamps)
        assert [j["id"] for j in desc] == [j["id"] for j in reversed(asc)]
        expected = {j.id: j.updated_at(clock.now()) for j in world.jobs()}
        assert {j["id"] for j in asc} == set(expected)
        clock.advance(rng.uniform(5, 900))


@pytest.mark.parametrize("settings", [night(), night(job_history=True)], ids=["new", "history"])
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


@pytest.mark.parametrize("settings", [optimistic(job_history=False)])
async def test_find_by_status_in_takes_a_list_either_way(client, clock, world):
    """status=A,B and status=A&status=B are the same list; the page block is Spring's."""
    for model in world.models():
        await client.post(f"/api/models/{model.id}/train", json=TRAIN)
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


@pytest.mark.parametrize("settings", [behaving(status_finder=True)])
async def test_find_by_status_in_needs_a_status(client):
    """Without a status the finder is a 400 naming the parameter, like the other finders."""
    for params in ({}, {"status": ""}, {"status": " , "}):
        response = await client.get(FINDER, params=params)
        assert_spring_error(response, 400, "Required request parameter 'status'")


async def test_by_default_the_finder_is_absent_and_the_sort_dropped(client, clock, world):
    """Default: findByStatusIn is an empty 404, sort=updatedAt answers 200 in creation order."""
    for model in world.models():
        await client.post(f"/api/models/{model.id}/train", json=TRAIN)
        clock.advance(1)
    missing = await client.get(FINDER, params={"status": "RUNNING"})
    assert missing.status_code == 404
    assert missing.content == b""
    created = [j.id for j in world.jobs()]
    for sort in ("updatedAt,desc", "updatedAt,asc", "updatedAt", "colour,desc"):
        page = await client.get("/api/jobs", params=EXPAND | {"sort": sort, "size": 1000})
        assert page.status_code == 200
        assert [j["id"] for j in page.json()["_embedded"]["jobs"]] == created
    stats = (await client.get("http://sim/_sim/stats")).json()
    assert stats["requests_by_route"]["GET <unrouted>"] == 1


def test_index_pages_deep_into_fifty_thousand_jobs():
    """With 50,000 jobs through 250,000 changes, pages deep into any order are right."""
    index = JobIndex()
    jobs = [SimpleNamespace(id=f"job-{i}") for i in range(50_000)]
    for job in jobs:
        index.added(job, "CREATED")
    for status in ("SCHEDULED", "ASSIGNED", "RUNNING"):
        for job in jobs:
            index.changed(job, status)
    for i, job in enumerate(jobs[:40_000]):
        index.changed(job, "ERROR" if i % 50 == 0 else "COMPLETED")
    for offset in range(0, 40_000, 400):
        page = index.page({"RUNNING"}, "updatedAt", offset % 10_000, 100, descending=True)
        assert len(page) == 100
        assert len(index.page({"ERROR"}, "createdAt", offset // 50, 100, descending=False)) > 0
        assert len(index.page(None, "updatedAt", offset, 100, descending=True)) == 100
    assert index.count({"COMPLETED", "ERROR"}) == 40_000
    assert [j.id for j in index.page({"ERROR"}, "updatedAt", 0, 2, descending=True)] == [
        "job-39950",
        "job-39900",
    ]


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("flags", "finder_status"),
    [((), 404), (("--status-finder",), 200), (("--profile", "optimistic"), 200)],
)
def test_fleet_sim_serves_the_finder_only_when_told_to(tmp_path, flags, finder_status):
    """`fleet sim --status-finder` (or the optimistic profile) serves findByStatusIn."""
    with emulator(tmp_path, "--models", "2", *flags) as url:
        headers = {"Authorization": f"Bearer {TOKEN}", "AOA-Project-ID": PROJECT_ID}
        found = httpx.get(f"{url}{FINDER}", params={"status": "RUNNING"}, headers=headers)
        assert found.status_code == finder_status
