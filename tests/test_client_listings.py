"""What the client makes of listings that move while it reads them, and of the server's time."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import httpx
import respx

from fleet.client import ModelOpsClient
from fleet.modelops import TrainRequest
from fleet.retries import RetryPolicy
from fleet.transport import HttpOptions
from support import InstantTime

BASE_URL = "https://mo.example/modelops/core"
PROJECT_ID = "419e5f05-b225-4b70-b075-6c309365d94f"
EPOCH = datetime(2026, 12, 1, tzinfo=UTC)


def _job(name: str, updated_s: int) -> dict[str, object]:
    stamp = (EPOCH + timedelta(seconds=updated_s)).isoformat()
    return {
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, name)),
        "status": "COMPLETED",
        "type": "TRAINING",
        "createdAt": stamp,
        "updatedAt": stamp,
    }


def _page(jobs: list[dict[str, object]], number: int) -> dict[str, object]:
    return {
        "_embedded": {"jobs": jobs},
        "page": {"size": 3, "number": number, "totalElements": 9, "totalPages": 3},
    }


def _client() -> ModelOpsClient:
    return ModelOpsClient(
        BASE_URL,
        PROJECT_ID,
        "token",
        http=HttpOptions(transport=httpx.AsyncHTTPTransport()),
        pacing=InstantTime().pacing(retry=RetryPolicy(initial_s=0.0, max_s=0.0, jitter_s=0.0)),
    )


@respx.mock
async def test_jobs_pushed_down_between_two_pages_are_not_taken_for_disorder() -> None:
    """Issue 13 #12: two jobs changed between the pages of one look; the second page starts
    with two already read. That is a shift, not a server that does not sort."""
    a, b, c, d, e = (_job(n, s) for n, s in (("a", 10), ("b", 9), ("c", 8), ("d", 7), ("e", 6)))
    pages = {"0": _page([a, b, c], 0), "1": _page([b, c, d], 1), "2": _page([e], 2)}
    respx.get(f"{BASE_URL}/api/jobs").mock(
        side_effect=lambda request: httpx.Response(200, json=pages[request.url.params["page"]])
    )
    async with _client() as api:
        jobs = await api.changed_jobs(EPOCH, page_size=3)
    assert [j.id for j in jobs] == [j["id"] for j in (a, b, c, d, e)]


@respx.mock
async def test_the_server_time_floor_follows_date_headers_and_created_jobs() -> None:
    """The latest server time seen: a Date header, or createdAt of a job just created."""
    model_id = str(uuid.uuid4())
    dated = {"Date": "Tue, 01 Dec 2026 00:01:00 GMT"}
    respx.get(f"{BASE_URL}/api/projects/{PROJECT_ID}").mock(
        return_value=httpx.Response(200, json={"id": PROJECT_ID}, headers=dated)
    )
    created = _job("t", 120)
    respx.post(f"{BASE_URL}/api/models/{model_id}/train").mock(
        return_value=httpx.Response(200, json={**created, "trainedModelId": str(uuid.uuid4())})
    )
    async with _client() as api:
        assert api.server_time_floor() is None
        await api.check_project()
        assert api.server_time_floor() == EPOCH + timedelta(seconds=60)
        request = TrainRequest(str(uuid.uuid4()), None, {}, {}, None)
        await api.train(model_id, request)
        assert api.server_time_floor() == EPOCH + timedelta(seconds=120)
