"""docs/api-calls.md against the official client's routes, tests/fixtures/tmo-routes.json."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

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
