"""One retry policy: a call's sends draw on one account, whichever layer sends them.

The policy as data; the client against respx on virtual time (a call's tries, its seconds,
the breaker's outage costing it nothing); `settle`, the rule for a lost POST; and a night on
the emulator where one read, and one submission, are each sent `api.retry_attempts` times in
all before their model fails (the engine's layers used to multiply that: 30 sends of one GET).
"""

from __future__ import annotations

import random
import time
import uuid
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from fleet import sim
from fleet.breaker import Breaker
from fleet.client import ModelOpsClient
from fleet.errors import (
    Conflict,
    OutcomeUnknown,
    PermanentApiError,
    ServerUnavailable,
    TransientApiError,
)
from fleet.modelops import Job, TrainRequest
from fleet.retries import Account, RetryPolicy, one_send, retryable, settle
from fleet.stages import Stage
from fleet.transport import HttpOptions
from support import BASE_URL, Emulated, InstantTime, VirtualTime, emulated, night, settings_for

# The waits between sends are what these tests count, on virtual clocks: they wait as a night.
pytestmark = pytest.mark.retry_waits

API = f"{BASE_URL}/api"
PROJECT_ID = "419e5f05-b225-4b70-b075-6c309365d94f"
TOKEN = "tok-retries"
TRAIN = TrainRequest(None, None, {}, {}, None)
# A policy without backoff, so virtual time moves only where a test says.
NO_WAIT = RetryPolicy(attempts=3, initial_s=0.0, max_s=0.0, jitter_s=0.0)


def uid(n: int) -> str:
    return str(uuid.UUID(int=n))


def _job(job_id: str) -> dict[str, str]:
    return {"id": job_id, "status": "RUNNING", "type": "TRAINING", "modelId": uid(100)}


def _client(
    clock: InstantTime,
    policy: RetryPolicy = NO_WAIT,
    breaker: Breaker | None = None,
) -> ModelOpsClient:
    pacing = clock.pacing(retry=policy, breaker=breaker)
    return ModelOpsClient(BASE_URL, PROJECT_ID, TOKEN, pacing=pacing)


# -- the policy as data ----------------------------------------------------------------------


def test_the_backoff_doubles_from_its_first_wait_to_its_cap_plus_jitter() -> None:
    """0.5, 1, 2, 4, 8, then 10 s at most, each with up to 0.5 s of jitter on top."""
    policy = RetryPolicy()
    rng = random.Random(1)
    waits = [policy.backoff(n, rng) for n in range(1, 8)]
    floors = [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert all(f <= w <= min(f + 0.5, 10.0) for w, f in zip(waits, floors, strict=True))


def test_an_account_gives_up_when_its_tries_or_seconds_are_spent() -> None:
    """A wait is granted (and charged) only while tries are left and it ends within budget."""
    error = TransientApiError("HTTP 503", status=503)
    account = RetryPolicy(attempts=3, budget_s=10.0, jitter_s=0.0).account()
    account.charge(1.0)
    assert account.wait_after(error, random.Random(0)) == 0.5
    account.charge(1.0)
    assert account.wait_after(error, random.Random(0)) == 1.0
    assert (account.failures, account.spent_s) == (2, 3.5)
    account.charge(1.0)
    assert account.wait_after(error, random.Random(0)) is None
    assert not account.may_send()


def test_a_retry_after_is_waited_as_the_server_asked_unless_it_ends_past_the_budget() -> None:
    """Retry-After replaces the backoff; one that would end past the budget ends the call."""
    account = RetryPolicy(budget_s=60.0).account()
    account.charge(0.0)
    assert account.wait_after(TransientApiError("429", retry_after=7.0), random.Random(0)) == 7.0
    account.charge(0.0)
    assert account.wait_after(TransientApiError("429", retry_after=60.0), random.Random(0)) is None


@pytest.mark.parametrize(
    ("error", "again"),
    [
        (TransientApiError("HTTP 503", status=503), True),
        (Conflict("HTTP 409", status=409), True),
        (OutcomeUnknown("POST: no response"), False),
        (ServerUnavailable("down for 300 s"), False),
        (PermanentApiError("HTTP 400", status=400), False),
        (ValueError("not an API error"), False),
    ],
    ids=["transient", "conflict", "outcome-unknown", "server-unavailable", "4xx", "other"],
)
def test_what_may_be_sent_again(error: BaseException, again: bool) -> None:
    """Only a transient failure that cannot have been applied is sent again."""
    assert retryable(error) is again


def test_a_policy_refuses_numbers_that_cannot_bound_a_call() -> None:
    """No tries, no budget, or a negative wait is refused at once."""
    with pytest.raises(ValueError, match="attempts"):
        RetryPolicy(attempts=0)
    with pytest.raises(ValueError, match="budget_s"):
        RetryPolicy(budget_s=0.0)
    with pytest.raises(ValueError, match="jitter_s"):
        RetryPolicy(jitter_s=-1.0)


# -- the client: one account per call ------------------------------------------------------------


async def test_a_get_failing_on_one_resource_is_sent_exactly_retry_attempts_times(mock) -> None:
    """A job whose reads answer 503 while the others work: its call makes `attempts` sends in
    all, the breaker stays closed, and the other reads go on meanwhile."""
    broken = mock.get(f"{API}/jobs/{uid(1)}").respond(503)
    healthy = mock.get(f"{API}/jobs/{uid(2)}").respond(200, json=_job(uid(2)))
    policy = RetryPolicy(attempts=6)
    async with _client(InstantTime(), policy) as api:
        read = 0

        async def others() -> None:
            nonlocal read
            for _ in range(10):
                await api.get_job(uid(2))
                read += 1

        async with anyio.create_task_group() as tg:
            tg.start_soon(others)
            with pytest.raises(TransientApiError) as caught:
                await api.get_job(uid(1))
        assert not api.breaker.is_open
    assert type(caught.value) is TransientApiError
    assert broken.call_count == policy.attempts
    assert healthy.call_count == read == 10


async def test_a_post_refused_with_429_then_accepted_is_sent_twice(mock) -> None:
    """A refusal was not applied: the POST goes again after the server's Retry-After, once."""
    clock = InstantTime()
    route = mock.post(f"{API}/models/{uid(100)}/train").mock(
        side_effect=[
            httpx.Response(429, headers={"Retry-After": "3"}),
            httpx.Response(200, json=_job(uid(1))),
        ]
    )
    account = RetryPolicy().account()
    async with _client(clock, RetryPolicy()) as api:
        job = await api.train(uid(100), TRAIN, account)
    assert job.id == uid(1)
    assert route.call_count == 2
    assert (account.failures, account.spent_s) == (1, 3.0)
    assert clock.slept == 3.0


async def test_a_call_waiting_at_an_open_breaker_spends_no_tries(mock) -> None:
    """The server is down (two resources failed): a call waits, its sends go out only as the
    breaker's probes, and four failed probes later, past the call's own budget in time, it
    succeeds with its account untouched."""
    clock = InstantTime()
    breaker = Breaker(threshold=2, budget_s=600, clock=clock.clock)
    mock.get(f"{API}/jobs/{uid(1)}").respond(503)
    mock.get(f"{API}/jobs/{uid(2)}").respond(503)
    waiting = mock.get(f"{API}/jobs/{uid(3)}").mock(
        side_effect=[httpx.Response(503)] * 4 + [httpx.Response(200, json=_job(uid(3)))]
    )
    policy = RetryPolicy(attempts=3, budget_s=5.0, initial_s=0.0, max_s=0.0, jitter_s=0.0)
    async with _client(clock, policy, breaker) as api:
        for failing in (uid(1), uid(2)):
            with pytest.raises(TransientApiError):
                await api.get_job(failing, one_send())
        assert breaker.is_open
        started = clock.now
        account = api.retry_account()
        job = await api.get_job(uid(3), account)
    assert job.id == uid(3)
    assert waiting.call_count == 5 > policy.attempts
    assert (account.failures, account.spent_s) == (0, 0.0)
    assert clock.now - started > policy.budget_s
    assert not breaker.is_open


async def test_the_breaker_gives_a_call_that_spent_its_tries_no_fresh_ones(mock) -> None:
    """A call whose last try opens the breaker ends there, with its own failure: it is not
    sent round again with a new set of tries while the breaker is open."""
    clock = InstantTime()
    breaker = Breaker(threshold=4, budget_s=600, clock=clock.clock)
    mock.get(f"{API}/jobs/{uid(1)}").respond(503)
    spent = mock.get(f"{API}/jobs/{uid(2)}").respond(503)
    async with _client(clock, NO_WAIT, breaker) as api:
        with pytest.raises(TransientApiError):
            await api.get_job(uid(1), one_send())
        with pytest.raises(TransientApiError) as caught:
            await api.get_job(uid(2))
        assert breaker.is_open  # opened by this call's third failure
    assert type(caught.value) is TransientApiError  # not ServerUnavailable: nothing waited
    assert spent.call_count == NO_WAIT.attempts


async def test_a_read_that_times_out_is_charged_its_time(mock) -> None:
    """Two reads that each time out after 30 s spend a 60 s budget: no third send."""
    clock = InstantTime()

    def times_out(request: httpx.Request) -> httpx.Response:
        clock.now += 30.0
        raise httpx.ReadTimeout("no answer", request=request)

    route = mock.get(f"{API}/jobs/{uid(1)}").mock(side_effect=times_out)
    policy = RetryPolicy(attempts=6, budget_s=60.0, initial_s=0.0, max_s=0.0, jitter_s=0.0)
    async with _client(clock, policy) as api:
        with pytest.raises(TransientApiError, match="no response"):
            await api.get_job(uid(1))
    assert route.call_count == 2


async def test_a_single_send_account_sends_once(mock) -> None:
    """`one_send()`: the watcher's re-read of a job goes out once, whatever the policy."""
    route = mock.get(f"{API}/jobs/{uid(1)}").respond(503)
    async with _client(InstantTime(), RetryPolicy()) as api:
        with pytest.raises(TransientApiError):
            await api.get_job(uid(1), one_send())
    assert route.call_count == 1


# -- settle: a lost POST is looked for, and sent again only from its own account -------------


async def test_a_lost_post_that_the_server_applied_is_found_not_sent_again(mock) -> None:
    """The answer to a train POST is lost; the job is on the server: it is adopted."""
    route = mock.post(f"{API}/models/{uid(100)}/train").mock(side_effect=httpx.ReadTimeout)
    found = Job(uid(7), "RUNNING", "TRAINING", uid(100), None, None)

    async def find() -> Job | None:
        return found

    async with _client(InstantTime()) as api:
        job, was_found = await settle(
            lambda account: api.train(uid(100), TRAIN, account), find, api.retry_account()
        )
    assert (job, was_found) == (found, True)
    assert route.call_count == 1


async def test_a_submission_makes_at_most_retry_attempts_sends_in_all(mock) -> None:
    """Refusals the client sends again and losses the engine sends again draw on one
    account: six sends in all, then the last loss is raised."""
    answers = [429, 502, 503, 500, 429, 504, 200, 200]
    route = mock.post(f"{API}/models/{uid(100)}/train").mock(
        side_effect=[httpx.Response(s, json=_job(uid(1))) for s in answers]
    )
    looked = 0

    async def find() -> Job | None:
        nonlocal looked
        looked += 1
        return None

    policy = RetryPolicy(attempts=6, initial_s=0.0, max_s=0.0, jitter_s=0.0)
    async with _client(InstantTime(), policy) as api:
        account = api.retry_account()
        with pytest.raises(OutcomeUnknown, match="HTTP 504"):
            await settle(lambda a: api.train(uid(100), TRAIN, a), find, account)
    assert route.call_count == policy.attempts
    assert looked == 3  # after each loss: 502, 500, 504
    assert account.failures == policy.attempts


async def test_settle_charges_a_loss_its_sender_did_not() -> None:
    """A `ModelOps` that keeps no accounts still gets a bounded number of sends."""
    sends = 0

    async def send(_account: Account) -> Job:
        nonlocal sends
        sends += 1
        raise OutcomeUnknown("POST /train: no response")

    async def find() -> Job | None:
        return None

    with pytest.raises(OutcomeUnknown):
        await settle(send, find, RetryPolicy(attempts=4).account())
    assert sends == 4


# -- the engine: no layer multiplies a call (these wait on the engine's use of retries.py) ---


class _FailingEvents:
    """A gateway that answers every read of a version's events 503, and counts them."""

    def __init__(self, app: Any) -> None:
        self._app = app
        self.refused = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].endswith("/events"):
            self.refused += 1
            await send({"type": "http.response.start", "status": 503, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        await self._app(scope, receive, send)


async def test_one_read_is_sent_retry_attempts_times_before_its_model_fails(
    tmp_path: Path,
) -> None:
    """An evaluation's metrics cannot be read (503 for ever, on that one resource): the read is
    sent `api.retry_attempts` times, then the stage fails. Not 5 rounds of 6 (30 sends)."""
    settings_sim = sim.SimSettings(models=1)
    clock = sim.ManualClock(start=time.time())
    world, app = sim.build(settings_sim, clock)
    gateway = _FailingEvents(app)
    policy = RetryPolicy(initial_s=0.0, max_s=0.0, jitter_s=0.0)
    async with ModelOpsClient(
        BASE_URL,
        settings_sim.project_id,
        settings_sim.token,
        http=HttpOptions(transport=httpx.ASGITransport(app=gateway)),
        pacing=InstantTime().pacing(retry=policy),
    ) as api:
        env = Emulated(world=world, api=api, time=VirtualTime(clock), settings=settings_sim)
        # No history read at the start: it would read last night's events from the same
        # refused resource (and give up), which is not what is counted here.
        result = await night(env, settings_for(env, tmp_path / "fleet.db", history="off"))
    [failure] = result.failed
    assert failure.stage is Stage.EVALUATE
    assert gateway.refused == policy.attempts


async def test_a_submission_never_applied_is_sent_retry_attempts_times_in_all(
    tmp_path: Path,
) -> None:
    """Every POST answers 500 (the training may or may not exist; it never does): the engine
    looks after each loss and sends again from the same account, `api.retry_attempts` sends
    in all, then fails the stage. Not 3 looks of their own account each."""
    async with emulated(models=1, http_500_rate=1.0, fault_methods=("POST",)) as env:
        result = await night(env, settings_for(env, tmp_path / "fleet.db"))
        posts = env.api.stats.requests["POST"]
        faults = env.world.stats()["faults"]
    [failure] = result.failed
    assert failure.stage is Stage.TRAIN
    assert "has no record of it" in failure.reason
    assert posts == faults["http_500"] == RetryPolicy().attempts
