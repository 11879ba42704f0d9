"""docs/api-calls.md against the official client's routes, tests/fixtures/tmo-routes.json."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import httpx
import pytest

from fleet.client import ModelOpsClient
from fleet.modelops import DeployRequest, EvaluateRequest, TrainRequest
from fleet.transport import HttpOptions
from support import emulated, night, settings_for

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "api-calls.md"
ROUTES = ROOT / "tests" / "fixtures" / "tmo-routes.json"
SCRIPT = ROOT / "scripts" / "tmo-routes"

FLEET_TABLE = "## Requests fleet makes"
OTHER_TABLE = "## Client routes fleet does not use"
REQUEST = re.compile(r"`(GET|POST|PUT|PATCH|DELETE) ([^`\s]+)")
PROBE = re.compile(r"probe: `[^`]+`")


def _rows(heading: str) -> list[list[str]]:
    """The cells of each data row of the first table under `heading`."""
    text = DOC.read_text(encoding="utf-8")
    section = text.split(heading, 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]


def _template(path: str) -> str:
    """`/api/jobs/{jobId}?x=1` and `/api/jobs/{id}/` both read `/api/jobs/{}`."""
    return re.sub(r"\{[^}]*\}", "{}", path.split("?", 1)[0]).rstrip("/")


def _requests(cell: str) -> set[tuple[str, str]]:
    return {(method, _template(path)) for method, path in REQUEST.findall(cell)}


def _fleet_requests() -> set[tuple[str, str]]:
    """The first table's `request` cells (its first cell is the row number)."""
    return {request for row in _rows(FLEET_TABLE) for request in _requests(row[1])}


def _unused_routes() -> list[tuple[str, str]]:
    return [request for row in _rows(OTHER_TABLE) for request in _requests(row[0])]


def _client_routes() -> set[tuple[str, str]]:
    routes = json.loads(ROUTES.read_text(encoding="utf-8"))["routes"]
    return {(route["method"], _template(route["path"])) for route in routes}


def test_every_client_route_is_listed_in_the_doc():
    """Each route the official client can call appears in one of the doc's two tables."""
    documented = _fleet_requests() | set(_unused_routes())
    assert sorted(_client_routes() - documented) == []


def test_routes_fleet_does_not_use_are_client_routes():
    """The second table lists only routes of the client, none twice, none fleet uses."""
    listed = _unused_routes()
    assert len(listed) == len(set(listed))
    assert sorted(set(listed) - _client_routes()) == []
    assert sorted(set(listed) & _fleet_requests()) == []


def test_every_fleet_request_is_verified_or_guarded_by_a_named_probe():
    """Each of fleet's requests is marked verified or guarded, and a guarded one names its probe."""
    rows = _rows(FLEET_TABLE)
    assert rows
    for row in rows:
        assert _requests(row[1]), row[1]
        mark = row[-1]
        assert ("**verified**" in mark) != ("**guarded**" in mark), row[1]
        if "**guarded**" in mark:
            assert PROBE.search(mark), row[1]


@pytest.mark.skipif(os.environ.get("RUN_TMO_ROUTES") != "1", reason="set RUN_TMO_ROUTES=1")
@pytest.mark.timeout(900)
def test_committed_routes_match_a_fresh_extraction(tmp_path):
    """scripts/tmo-routes run again (wheels from PyPI or TMO_ROUTES_CACHE) gives the fixture."""
    out = tmp_path / "tmo-routes.json"
    command = [sys.executable, str(SCRIPT), "--out", str(out)]
    if cache := os.environ.get("TMO_ROUTES_CACHE"):
        command += ["--cache", cache]
    subprocess.run(command, check=True, capture_output=True, timeout=880)
    assert out.read_text(encoding="utf-8") == ROUTES.read_text(encoding="utf-8")


# -- fleet's own client against the doc -----------------------------------------------------

BASE = "http://localhost/modelops/core"
ID = "00000000-0000-4000-8000-000000000001"
DEPLOY = DeployRequest("DOCKER_BATCH", "python-batch", None, {}, None, None, None, "@once", False)
_CALLS = {
    "check_project": lambda api: api.check_project(),
    "list_models": lambda api: api.list_models(),
    "train": lambda api: api.train(ID, TrainRequest(ID, None, {}, {}, None)),
    "get_job": lambda api: api.get_job(ID),
    "recent_jobs": lambda api: _drain(api.recent_jobs(5)),
    "job_page": lambda api: api.job_page("updatedAt,asc", 2),
    "changed_jobs": lambda api: api.changed_jobs(None),
    "unfinished_jobs": lambda api: api.unfinished_jobs(),
    "scoring_jobs": lambda api: api.scoring_jobs(ID),
    "evaluate": lambda api: api.evaluate(ID, EvaluateRequest(ID, None, {}, None)),
    "events": lambda api: api.events(ID),
    "approve": lambda api: api.approve(ID, "ok"),
    "reject": lambda api: api.reject(ID, "no"),
    "deploy": lambda api: api.deploy(
        ID,
        DeployRequest("DOCKER_BATCH", "python-batch", None, {}, None, None, None, "@once", False),
    ),
    "deployment_for_job": lambda api: api.deployment_for_job(ID),
    "active_deployments": lambda api: api.active_deployments(),
    "deployments_of_version": lambda api: api.deployments_of_version(ID),
    "versions": lambda api: api.versions(ID),
    "retire": lambda api: api.retire(ID, ID),
}


async def _drain(jobs: AsyncIterator[object]) -> None:
    async for _ in jobs:
        pass


def _answer(request: httpx.Request) -> httpx.Response:
    """A plausible body for any call: an object that is a job, an event and a deployment."""
    item = {
        "id": ID,
        "status": "RUNNING",
        "trainedModelId": ID,
        "modelId": ID,
        "createdAt": "2026-11-25T00:00:00.000+00:00",
        "updatedAt": "2026-11-25T00:00:00.000+00:00",
    }
    single = request.url.path.endswith(ID) or "findByJobId" in request.url.path
    if request.method == "POST" or single:
        return httpx.Response(200, json=item)
    collection = "trainedModelEvents" if "vent" in request.url.path else "x"
    embedded = {name: [item] for name in ("jobs", "models", "deployments", "trainedModels")}
    page = {"size": 1, "totalElements": 1, "totalPages": 1, "number": 0}
    if request.url.path.endswith("/events"):
        return httpx.Response(200, json={"_embedded": {collection: [item]}})
    return httpx.Response(200, json={"_embedded": embedded, "page": page})


# Client methods that send no request of their own.
_SENDS_NOTHING = frozenset({"aclose", "retry_account", "server_time_floor"})


def test_every_request_of_fleets_client_is_in_the_doc():
    """Every method of ModelOpsClient sends a request the doc's first table lists."""
    public = {
        name
        for name, value in vars(ModelOpsClient).items()
        if not name.startswith("_") and callable(value) and name not in _SENDS_NOTHING
    }
    assert public == set(_CALLS), "a new client method needs a row in docs/api-calls.md"
    sent: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return _answer(request)

    async def every_call() -> None:
        transport = httpx.MockTransport(record)
        async with ModelOpsClient(BASE, ID, "token", http=HttpOptions(transport=transport)) as api:
            for call in _CALLS.values():
                await call(api)

    anyio.run(every_call)
    requests = {
        (r.method, _template(r.url.path.replace(ID, "{id}")[len("/modelops/core") :])) for r in sent
    }
    assert sorted(requests - _fleet_requests()) == []


def _verified() -> set[tuple[str, str]]:
    return {
        request
        for row in _rows(FLEET_TABLE)
        if "**verified**" in row[-1]
        for request in _requests(row[1])
    }


CHAMPION_RULE = "Accuracy >= champion.Accuracy"


async def test_a_default_night_sends_only_verified_requests(tmp_path):
    """poll_mode each, no crash, no lost answer: every request is a verified row."""
    async with emulated(models=12, seed=3) as env:
        rule = {"defaults.approval_rule": CHAMPION_RULE}
        await night(env, settings_for(env, tmp_path / "f.db", **rule))
        routes = env.world.stats()["requests_by_route"]
    sent = set()
    for route in routes:
        method, path = route.split(" ", 1)
        sent.add((method, _template(path.removeprefix("/modelops/core"))))
    assert ("GET", "/api/jobs/{}") in sent
    assert sorted(sent - _verified()) == []
