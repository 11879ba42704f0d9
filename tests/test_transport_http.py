"""The client's transport: a whole-request deadline, a breaker that one record cannot open, and
the server's clock learnt from `Date` headers (issue 13, items 2 and 3)."""

from __future__ import annotations

import gzip
import json
import socket
import uuid
from typing import Any

import httpx
import pytest
import respx

from fleet import sim
from fleet.breaker import Breaker
from fleet.client import ModelOpsClient
from fleet.errors import OutcomeUnknown, TransientApiError
from fleet.modelops import TrainRequest
from fleet.retries import RetryPolicy
from fleet.transport import HttpOptions, Requests
from support import InstantTime

BASE_URL = "https://mo.example/modelops/core"
API = f"{BASE_URL}/api"
PROJECT_ID = "419e5f05-b225-4b70-b075-6c309365d94f"
TOKEN = "tok-transport"
BROKEN = str(uuid.UUID(int=1))
HEALTHY = str(uuid.UUID(int=2))
TRAIN = TrainRequest(None, None, {}, {}, None)


# -- item 2: a trickled answer ends at api.timeout -------------------------------------------


@pytest.mark.timeout(30)  # a safety net only: the answers below would take minutes to arrive
async def test_an_answer_trickled_a_byte_at_a_time_times_out_as_a_whole() -> None:
    """Over real HTTP, an answer sent a byte every 50 ms (each read gets one, so no read ever
    times out) ends at the client's timeout: a GET is a transient timeout, a POST an unknown
    outcome, both counted as timeouts."""
    settings = sim.SimSettings(models=1, trickle_rate=1.0, trickle_interval_s=0.05)
    world, app = sim.build(settings)
    model = world.models()[0]
    async with (
        sim.serve(app) as url,
        ModelOpsClient(
            url,
            settings.project_id,
            settings.token,
            http=HttpOptions(timeout_s=0.5),
            pacing=InstantTime().pacing(retry=RetryPolicy(attempts=1)),
        ) as api,
    ):
        with pytest.raises(TransientApiError, match=r"within 0\.5 s") as read:
            await api.check_project()
        assert type(read.value) is TransientApiError
        with pytest.raises(OutcomeUnknown, match=r"within 0\.5 s"):
            await api.train(model.id, TRAIN)
        assert api.stats.errors["timeout"] == 2
    assert world.stats()["faults"]["trickle"] == 2


async def test_a_trickled_answer_within_the_timeout_is_read_whole() -> None:
    """A trickle that ends before the deadline is an answer like any other."""
    settings = sim.SimSettings(models=1, trickle_rate=1.0, trickle_interval_s=0.0001)
    _, app = sim.build(settings)
    async with (
        sim.serve(app) as url,
        ModelOpsClient(
            url,
            settings.project_id,
            settings.token,
            http=HttpOptions(timeout_s=20),
            pacing=InstantTime().pacing(),
        ) as api,
    ):
        await api.check_project()
        assert api.stats.errors["timeout"] == 0


def test_the_emulator_refuses_a_trickle_that_cannot_end() -> None:
    """Trickle settings are checked like the other faults."""
    with pytest.raises(ValueError, match="trickle_interval_s must be positive"):
        sim.SimSettings(trickle_interval_s=0)
    with pytest.raises(ValueError, match="must not exceed 1"):
        sim.SimSettings(drop_rate=0.5, trickle_rate=0.6)


# -- item 3: one broken resource fails only its own requests ---------------------------------


def _job(job_id: str) -> dict[str, str]:
    return {"id": job_id, "status": "RUNNING", "type": "TRAINING"}


async def test_one_resource_failing_for_ever_fails_only_its_own_reads() -> None:
    """A job whose every read answers 500 fails each of its reads on their own retries, again
    and again; the breaker never opens, and another job is read at once, without waiting."""
    time = InstantTime()
    breaker = Breaker(threshold=5, budget_s=60, clock=time.clock)
    with respx.mock(using="httpx", assert_all_called=False) as mock:
        broken = mock.get(f"{API}/jobs/{BROKEN}").respond(500)
        mock.get(f"{API}/jobs/{HEALTHY}").respond(200, json=_job(HEALTHY))
        async with ModelOpsClient(
            BASE_URL,
            PROJECT_ID,
            TOKEN,
            pacing=time.pacing(retry=RetryPolicy(attempts=3), breaker=breaker),
        ) as api:
            for _ in range(4):  # 12 failures in a row of one job, more than the threshold
                with pytest.raises(TransientApiError) as caught:
                    await api.get_job(BROKEN)
                assert type(caught.value) is TransientApiError  # not ServerUnavailable
                assert caught.value.status == 500
            assert not breaker.is_open
            started = time.now
            assert (await api.get_job(HEALTHY)).id == HEALTHY
            assert time.now == started  # nobody waited for a probe
    assert breaker.opened == 0
    assert broken.call_count == 12


# -- the server's clock ------------------------------------------------------------------------


async def test_the_emulator_dates_its_answers_by_its_own_clock_over_http() -> None:
    """Over HTTP the emulator, sped up, dates its answers with its own clock (the one that
    stamps createdAt), not uvicorn's: the floor fleet stamps intents with is in that clock."""
    settings = sim.SimSettings(models=1)
    world, app = sim.build(settings, sim.ManualClock(start=2_000_000_000.0))
    async with (
        sim.serve(app) as url,
        ModelOpsClient(
            url, settings.project_id, settings.token, pacing=InstantTime().pacing()
        ) as api,
    ):
        await api.check_project()
        floor = api.server_time_floor()
    assert floor is not None
    assert floor.timestamp() == world.now()


# -- what the client still does for a request it builds itself ---------------------------------


async def test_a_cookie_the_server_sets_goes_back_with_the_next_request() -> None:
    """Requests skip httpx's client machinery, not its cookies: a cookie set by the server (a
    gateway's sticky session, say) is sent with the requests after it."""
    with respx.mock(using="httpx", assert_all_called=False) as mock:
        route = mock.get(f"{API}/jobs/{HEALTHY}").mock(
            side_effect=[
                httpx.Response(200, json=_job(HEALTHY), headers={"Set-Cookie": "route=b7; Path=/"}),
                httpx.Response(200, json=_job(HEALTHY)),
            ]
        )
        async with ModelOpsClient(
            BASE_URL, PROJECT_ID, TOKEN, pacing=InstantTime().pacing()
        ) as api:
            await api.get_job(HEALTHY)
            await api.get_job(HEALTHY)
    first, second = (call.request for call in route.calls)
    assert "Cookie" not in first.headers
    assert second.headers["Cookie"] == "route=b7"
    assert second.headers["Authorization"] == f"Bearer {TOKEN}"


async def test_a_compressed_answer_is_read_decompressed() -> None:
    """An answer the server gzipped (fleet accepts gzip, as httpx does) is read as its JSON,
    and so is one sent as it is, over a transport that streams the body."""
    bodies = {
        f"/modelops/core/api/jobs/{HEALTHY}": (
            gzip.compress(json.dumps(_job(HEALTHY)).encode()),
            True,
        ),
        f"/modelops/core/api/jobs/{BROKEN}": (json.dumps(_job(BROKEN)).encode(), False),
    }
    accepted: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        body, zipped = bodies[scope["path"]]
        accepted.append(dict(scope["headers"])[b"accept-encoding"].decode())
        headers = [(b"content-type", b"application/json")]
        if zipped:
            headers.append((b"content-encoding", b"gzip"))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async with ModelOpsClient(
        BASE_URL,
        PROJECT_ID,
        TOKEN,
        http=HttpOptions(transport=httpx.ASGITransport(app=app)),
        pacing=InstantTime().pacing(),
    ) as api:
        assert (await api.get_job(HEALTHY)).id == HEALTHY
        assert (await api.get_job(BROKEN)).id == BROKEN
    assert all("gzip" in value for value in accepted)


@pytest.mark.parametrize(
    ("method", "params", "body"),
    [
        ("GET", {"sort": "createdAt,desc", "projection": "expandJob", "page": "0"}, None),
        ("GET", {"status": "CREATED,RUNNING", "q": "a b&c=d/é"}, None),
        ("GET", None, None),
        ("POST", None, {"datasetId": HEALTHY, "comments": 'approved: "é" ≥ 0.7', "n": [1, 2.5]}),
    ],
)
async def test_a_request_is_built_as_the_client_builds_it(method, params, body) -> None:
    """`Requests` builds, from parts made once, the very request `build_request` would: URL,
    query, headers and body, the second time (from its kept URL and headers) too."""
    async with httpx.AsyncClient(
        base_url=BASE_URL, headers={"AOA-Project-ID": PROJECT_ID}, timeout=7.0
    ) as http:
        http.cookies.set("route", "b7", domain="mo.example")
        requests = Requests(http)
        path = f"/api/jobs/{HEALTHY}"
        expected = http.build_request(
            method, path, params=params, json=body, headers={"Authorization": f"Bearer {TOKEN}"}
        )
        for _ in range(2):
            built = requests.build(method, path, TOKEN, params, body)
            assert str(built.url) == str(expected.url)
            assert sorted(built.headers.multi_items()) == sorted(expected.headers.multi_items())
            assert built.content == expected.content
            assert built.extensions == expected.extensions


# -- failures sorted by what the server may have done ----------------------------------------


async def test_a_server_not_listening_is_a_request_never_sent() -> None:
    """No connection made: a POST too is a transient failure (nothing can have been applied),
    counted as a connection error."""
    with socket.socket() as probe:  # a port nothing listens on once this closes
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with ModelOpsClient(
        f"http://127.0.0.1:{port}/modelops/core",
        PROJECT_ID,
        TOKEN,
        pacing=InstantTime().pacing(retry=RetryPolicy(attempts=1)),
    ) as api:
        with pytest.raises(TransientApiError, match="cannot reach ModelOps") as caught:
            await api.train(HEALTHY, TRAIN)
        assert type(caught.value) is TransientApiError
        assert api.stats.errors["connection"] == 1


async def test_a_connection_cut_after_the_request_is_an_unknown_outcome() -> None:
    """A server that reads a request and hangs up: the POST may have been applied (it was:
    the job exists), so it is an unknown outcome; a GET is a transient failure."""
    settings = sim.SimSettings(models=1, drop_rate=1.0)
    world, app = sim.build(settings)
    model = world.models()[0]
    request = TrainRequest(world.train_dataset_id, None, {}, {}, None)
    jobs_before = len(world.jobs())
    async with (
        sim.serve(app) as url,
        ModelOpsClient(
            url,
            settings.project_id,
            settings.token,
            pacing=InstantTime().pacing(retry=RetryPolicy(attempts=1)),
        ) as api,
    ):
        with pytest.raises(OutcomeUnknown, match="no response"):
            await api.train(model.id, request)
        with pytest.raises(TransientApiError, match="no response") as read:
            await api.check_project()
        assert type(read.value) is TransientApiError
        assert api.stats.errors["connection"] == 2
    assert len(world.jobs()) == jobs_before + 1
