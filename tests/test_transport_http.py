"""The client's transport: a whole-request deadline, a breaker that one record cannot open, and
the server's clock learnt from `Date` headers (issue 13, items 2 and 3)."""

from __future__ import annotations

import uuid

import pytest
import respx

from fleet import sim
from fleet.breaker import Breaker
from fleet.client import ModelOpsClient
from fleet.errors import OutcomeUnknown, TransientApiError
from fleet.modelops import TrainRequest
from fleet.retries import RetryPolicy
from fleet.transport import HttpOptions
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
