"""Throttle and Breaker on a fake clock: time moves only when a test moves it, never for real."""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import pairwise

import anyio
import anyio.lowlevel
import pytest

from fleet.breaker import Breaker, ProbeSchedule
from fleet.clock import Clock
from fleet.errors import ServerUnavailable
from fleet.throttle import Throttle

# Scheduling rounds that let every task woken by one step of the clock run until it blocks.
_ROUNDS = 20


class FakeTime:
    """A clock that moves only when the test moves it; `sleep` returns once it has moved enough.

    A sleep that merely advanced the clock would make concurrent sleeps add up, and a task that
    sleeps until a far deadline would carry every other task's "now" along with it.
    """

    def __init__(self) -> None:
        self.now = 0.0
        self._sleepers: list[tuple[float, int, anyio.Event]] = []
        self._seq = itertools.count()
        # What the throttle and the breaker are given: this time, and a seeded jitter.
        self.clock = Clock(now=lambda: self.now, sleep=self.sleep, rng=random.Random(7))

    async def sleep(self, seconds: float) -> None:
        entry = (self.now + seconds, next(self._seq), anyio.Event())
        heapq.heappush(self._sleepers, entry)
        try:
            await entry[2].wait()
        finally:
            if not entry[2].is_set():  # cancelled: forget the deadline
                self._sleepers.remove(entry)
                heapq.heapify(self._sleepers)

    async def settle(self) -> None:
        for _ in range(_ROUNDS):
            await anyio.lowlevel.checkpoint()

    async def advance(self, seconds: float) -> None:
        """Move the clock on by `seconds`, waking sleepers in deadline order on the way."""
        target = self.now + seconds
        await self.settle()
        while self._sleepers and self._sleepers[0][0] <= target:
            self._wake_next()
            await self.settle()
        self.now = target

    async def run(self) -> None:
        """Jump from deadline to deadline until nothing sleeps."""
        await self.settle()
        while self._sleepers:
            self._wake_next()
            await self.settle()

    def _wake_next(self) -> None:
        at, _, event = heapq.heappop(self._sleepers)
        self.now = max(self.now, at)
        event.set()


def throttle_on(
    t: FakeTime, *, max_rps: float | None = None, min_rps: float = 1.0, recovery_s: float = 5.0
) -> Throttle:
    return Throttle(max_rps=max_rps, min_rps=min_rps, recovery_s=recovery_s, clock=t.clock)


async def requests(t: FakeTime, throttle: Throttle, n: int) -> list[tuple[int, float, float]]:
    """Send `n` concurrent requests through `throttle`: (arrival index, start time, waited)."""
    starts: list[tuple[int, float, float]] = []

    async def request(index: int) -> None:
        waited = await throttle.wait()
        starts.append((index, t.now, waited))

    async with anyio.create_task_group() as tg:
        for index in range(n):
            tg.start_soon(request, index)
        await t.run()
    assert len(starts) == n
    return starts


async def steady_traffic(
    t: FakeTime, throttle: Throttle, n: int, every: float, *, answered_every: int = 1
) -> None:
    """One request every `every` seconds (unthrottled), `n` times; one in `answered_every`
    succeeds, the others get no answer yet."""
    for i in range(n):
        await throttle.wait()
        if i % answered_every == 0:
            throttle.succeeded()
        await t.advance(every)


async def offered(
    t: FakeTime, throttle: Throttle, *, rps: float, seconds: float, refused: Callable[[], bool]
) -> tuple[int, int]:
    """A client that wants `rps` requests a second for `seconds`, each answered at once and
    refused when `refused()` says so: (requests sent, requests refused)."""
    counts = [0, 0]

    async def client() -> None:
        end = t.now + seconds
        while t.now < end:
            await throttle.wait()
            sent_at = t.now
            counts[0] += 1
            if refused():
                counts[1] += 1
                throttle.overloaded(1.0, sent_at=sent_at)
            else:
                throttle.succeeded()
            await t.sleep(1.0 / rps)

    async with anyio.create_task_group() as tg:
        tg.start_soon(client)
        await t.run()
    return counts[0], counts[1]


# -- Throttle -----------------------------------------------------------------------------------


async def test_no_limit_never_waits() -> None:
    """Without a limit or a pause, requests start at once and nothing counts as waiting."""
    t = FakeTime()
    throttle = throttle_on(t)
    starts = await requests(t, throttle, 100)
    assert {(at, waited) for _, at, waited in starts} == {(0.0, 0.0)}
    assert throttle.rate_limit is None
    assert throttle.waited_s == 0.0


async def test_max_rps_spaces_requests_in_arrival_order() -> None:
    """With max_rps=10, fifty concurrent requests start 0.1 s apart in arrival order, over ~5 s."""
    t = FakeTime()
    throttle = throttle_on(t, max_rps=10)
    starts = await requests(t, throttle, 50)
    assert [index for index, _, _ in starts] == list(range(50))
    times = [at for _, at, _ in starts]
    assert all(b - a == pytest.approx(0.1) for a, b in pairwise(times))
    assert times[-1] == pytest.approx(4.9)


async def test_one_refusal_pauses_no_one() -> None:
    """A single 429 concerns its own request (which waits its Retry-After): nobody else pauses."""
    t = FakeTime()
    throttle = throttle_on(t)
    await steady_traffic(t, throttle, 40, every=0.05)
    throttle.overloaded(retry_after=30.0)
    assert throttle.paused_until < t.now
    starts = await requests(t, throttle, 3)
    assert max(at for _, at, _ in starts) < t.now + 1.0
    assert (throttle.overloads, throttle.pauses) == (1, 0)


async def test_a_burst_of_refusals_pauses_everyone_for_retry_after() -> None:
    """Five 429s in a row, no success between, hold every request until Retry-After passed."""
    t = FakeTime()
    throttle = throttle_on(t)
    await requests(t, throttle, 20)
    for _ in range(4):
        throttle.overloaded(retry_after=3.0)
    assert throttle.paused_until < t.now
    throttle.overloaded(retry_after=3.0)
    assert throttle.paused_until == 3.0
    starts = await requests(t, throttle, 10)
    assert min(at for _, at, _ in starts) == 3.0
    assert starts[0][2] == 3.0
    assert (throttle.overloads, throttle.pauses) == (5, 1)


async def test_most_answers_refused_within_a_second_is_a_burst() -> None:
    """Refusals interleaved with successes pause everyone once they are half of the last second's
    answers, and only then."""
    t = FakeTime()
    throttle = throttle_on(t)
    for _ in range(6):  # one refusal in three: not a burst
        throttle.overloaded(retry_after=2.0)
        throttle.succeeded()
        throttle.succeeded()
        await t.advance(0.1)
    assert throttle.pauses == 0
    await t.advance(2.0)
    for _ in range(2):  # two in three
        throttle.overloaded(retry_after=2.0)
        throttle.overloaded(retry_after=2.0)
        throttle.succeeded()
        await t.advance(0.01)
    throttle.overloaded(retry_after=2.0)
    assert throttle.pauses == 1
    assert throttle.paused_until == pytest.approx(t.now + 2.0)


async def test_backoff_without_retry_after_grows_and_resets() -> None:
    """Without Retry-After the burst pause doubles (with jitter) per consecutive burst, capped
    at 30 s, and a success starts it over."""
    t = FakeTime()
    throttle = throttle_on(t)
    for _ in range(4):
        throttle.overloaded(None)
    pauses = []
    for _ in range(7):
        throttle.overloaded(None)
        pauses.append(throttle.paused_until - t.now)
        await t.advance(pauses[-1])
    for n, pause in enumerate(pauses):
        nominal = min(2.0**n, 30.0)
        assert 0.75 * nominal <= pause <= nominal
    assert pauses[:6] == sorted(pauses[:6])
    throttle.succeeded()
    for _ in range(5):
        throttle.overloaded(None)
    assert 0.75 <= throttle.paused_until - t.now <= 1.0


async def test_overloads_during_a_pause_count_once() -> None:
    """Many 429s answering requests sent before the pause do not escalate the backoff or the cut."""
    t = FakeTime()
    throttle = throttle_on(t)
    await steady_traffic(t, throttle, 40, every=0.05)
    for _ in range(5):
        throttle.overloaded(None)
    cuts, paused_until = throttle.cuts, throttle.paused_until
    await t.advance(0.5)
    for _ in range(100):
        throttle.overloaded(None)
    assert (throttle.overloads, throttle.pauses) == (105, 1)
    assert throttle.cuts == cuts
    assert throttle.paused_until == paused_until
    throttle.overloaded(retry_after=5.0)  # but the server may ask for a longer pause
    assert throttle.paused_until == t.now + 5.0


async def test_a_refusal_halves_the_rate_which_recovers_in_seconds() -> None:
    """A refusal while few requests get through halves the rate requests start at; the limit
    climbs back linearly in time and is lifted after `recovery_s`, however few went out."""
    t = FakeTime()
    throttle = throttle_on(t, recovery_s=4.0)
    await steady_traffic(t, throttle, 40, every=0.05, answered_every=5)  # 20 sent, 4 answered
    throttle.overloaded(retry_after=1.0)
    cut_at = t.now
    assert throttle.rate_limit == pytest.approx(10.0)
    starts = await requests(t, throttle, 3)
    assert starts[0][1] == pytest.approx(cut_at + 0.05)
    await t.advance(cut_at + 2.0 - t.now)  # halfway back
    assert throttle.rate_limit == pytest.approx(15.0)
    await t.advance(2.0)
    assert throttle.rate_limit is None


async def test_a_refusal_while_the_server_answers_freely_cuts_nothing() -> None:
    """A refusal among a steady flow of successes leaves the rate alone: the server is
    answering more than the rate a cut would set."""
    t = FakeTime()
    throttle = throttle_on(t)
    await steady_traffic(t, throttle, 40, every=0.05)
    throttle.overloaded(retry_after=1.0)
    assert throttle.rate_limit is None
    assert throttle.cuts == 0


async def test_refusals_of_requests_sent_before_the_cut_do_not_cut_again() -> None:
    """One cut per round trip: refusals answering requests already in flight at the cut echo it."""
    t = FakeTime()
    throttle = throttle_on(t)
    await steady_traffic(t, throttle, 80, every=0.025, answered_every=4)  # 40 sent, 10 answered
    in_flight = throttle.now()
    await t.advance(0.1)
    throttle.overloaded(1.0, sent_at=in_flight)
    assert throttle.rate_limit == pytest.approx(20.0, rel=0.05)
    for _ in range(3):
        throttle.overloaded(1.0, sent_at=in_flight)
    assert throttle.cuts == 1
    throttle.overloaded(1.0, sent_at=throttle.now())  # sent after the cut: a new signal
    assert throttle.cuts == 2
    assert throttle.rate_limit == pytest.approx(throttle.floor)  # 1.25 x the ~10 answered
    assert 10.0 < throttle.floor < 15.0


async def test_no_cut_goes_below_what_the_server_accepts() -> None:
    """However many refusals, the limit stays above the rate of successful answers."""
    t = FakeTime()
    throttle = throttle_on(t)
    await steady_traffic(t, throttle, 200, every=0.01, answered_every=2)  # 100 sent, 50 answered
    for _ in range(40):
        throttle.overloaded(1.0)
        for _ in range(2):
            throttle.succeeded()
            await t.advance(0.02)
        assert throttle.rate_limit is not None
        assert throttle.rate_limit >= 50.0
    assert throttle.floor == pytest.approx(62.5, rel=0.1)


async def test_random_refusals_cost_little_throughput() -> None:
    """A server refusing 5% of requests at random still gets most of what the client wants
    (before: every refusal paused everyone, and the rate fell to 1 a second)."""
    t = FakeTime()
    throttle = throttle_on(t)
    rng = random.Random(3)
    sent, refused = await offered(
        t, throttle, rps=100, seconds=60, refused=lambda: rng.random() < 0.05
    )
    assert refused > 100
    assert sent >= 0.45 * 100 * 60
    assert throttle.pauses == 0


async def test_a_real_rate_limit_is_found_and_not_hammered() -> None:
    """Against a gateway that admits 20 requests a second, a client that wants 100 settles near
    20: most of its requests are answered, and it never falls to the 1 rps floor."""
    t = FakeTime()
    throttle = throttle_on(t)
    admitted: list[float] = []

    def refused() -> bool:
        while admitted and admitted[0] <= t.now - 1.0:
            admitted.pop(0)
        if len(admitted) >= 20:
            return True
        admitted.append(t.now)
        return False

    sent, refusals = await offered(t, throttle, rps=100, seconds=120, refused=refused)
    answered = sent - refusals
    assert answered >= 0.5 * 20 * 120
    assert refusals <= 0.5 * sent


async def test_adaptive_limit_recovers_to_max_rps_and_respects_min_rps() -> None:
    """Under max_rps the cut recovers to max_rps, and no cut goes below min_rps."""
    t = FakeTime()
    throttle = throttle_on(t, max_rps=10, min_rps=4.0, recovery_s=5.0)
    await requests(t, throttle, 30)
    throttle.overloaded(retry_after=0.0)
    assert throttle.rate_limit == pytest.approx(5.0, rel=0.05)
    await t.advance(1.0)
    throttle.overloaded(retry_after=0.0)
    assert throttle.rate_limit == 4.0
    await t.advance(6.0)  # 4 rps back to 10 at a halving (5 rps) in recovery_s
    assert throttle.rate_limit == 10.0


async def test_waited_s_accumulates() -> None:
    """waited_s is the total of what every caller waited."""
    t = FakeTime()
    throttle = throttle_on(t, max_rps=2)
    starts = await requests(t, throttle, 5)
    assert [waited for _, _, waited in starts] == [0.0, 0.5, 1.0, 1.5, 2.0]
    assert throttle.waited_s == 5.0


def test_throttle_rejects_bad_arguments() -> None:
    """Non-positive rates or recovery times are refused."""
    with pytest.raises(ValueError, match="max_rps must be positive"):
        Throttle(max_rps=0.0)
    with pytest.raises(ValueError, match="min_rps must be positive"):
        Throttle(min_rps=-1.0)
    with pytest.raises(ValueError, match="recovery_s must be positive"):
        Throttle(recovery_s=0)


# -- Breaker ------------------------------------------------------------------------------------


@dataclass
class Call:
    """One request through the breaker; the test decides how it ends."""

    abandon_on_cancel: bool = True
    resource: str | None = None
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    decided: anyio.Event = field(default_factory=anyio.Event)
    outcome: str = ""
    admitted_at: float | None = None
    error: ServerUnavailable | None = None

    async def run(self, breaker: Breaker, t: FakeTime) -> None:
        with self.scope:
            try:
                await breaker.admit(self.resource)
            except ServerUnavailable as exc:
                self.error = exc
                return
            self.admitted_at = t.now
            try:
                await self.decided.wait()
            except anyio.get_cancelled_exc_class():
                if self.abandon_on_cancel:
                    breaker.abandon()
                raise
            if self.outcome == "success":
                breaker.success()
            else:
                breaker.failure(self.resource)

    def succeed(self) -> None:
        self.outcome = "success"
        self.decided.set()

    def fail(self) -> None:
        self.outcome = "failure"
        self.decided.set()


def admitted(calls: list[Call]) -> list[Call]:
    return [c for c in calls if c.admitted_at is not None]


def open_breaker(
    t: FakeTime, *, budget_s: float = 300.0, probes: ProbeSchedule | None = None
) -> Breaker:
    probes = probes or ProbeSchedule()
    breaker = Breaker(threshold=3, budget_s=budget_s, probes=probes, clock=t.clock)
    for _ in range(3):
        breaker.failure()
    assert breaker.is_open
    return breaker


async def test_threshold_failures_open_the_breaker() -> None:
    """A closed breaker admits at once; `threshold` failures in a row open it."""
    t = FakeTime()
    breaker = Breaker(threshold=3, clock=t.clock)
    await breaker.admit()
    breaker.failure()
    breaker.failure()
    assert not breaker.is_open
    assert breaker.opened_at is None
    await t.advance(7.0)
    breaker.failure()
    assert breaker.is_open
    assert breaker.opened_at == 7.0
    assert breaker.opened == 1


async def test_success_resets_the_failure_count() -> None:
    """Failures separated by a success do not add up to the threshold."""
    breaker = Breaker(threshold=3)
    for _ in range(2):
        breaker.failure()
    breaker.success()
    for _ in range(2):
        breaker.failure()
    assert not breaker.is_open


async def test_failures_of_one_resource_never_open_the_breaker() -> None:
    """However often one resource fails, the breaker stays closed: that is the record's fault."""
    breaker = Breaker(threshold=3)
    for _ in range(100):
        breaker.failure("/api/jobs/1")
    assert not breaker.is_open


async def test_failures_of_two_resources_or_of_the_server_open_it() -> None:
    """Consecutive failures spanning two resources, or one of the server itself, open it."""
    two = Breaker(threshold=3)
    for resource in ("/api/jobs/1", "/api/jobs/1", "/api/jobs/2"):
        two.failure(resource)
    assert two.is_open
    server = Breaker(threshold=3)
    for resource in ("/api/jobs/1", None, "/api/jobs/1"):
        server.failure(resource)
    assert server.is_open


async def test_a_success_anywhere_starts_the_count_over() -> None:
    """A broken resource failing between other resources' successes never adds up."""
    breaker = Breaker(threshold=3)
    for n in range(50):
        breaker.failure("/api/jobs/broken")
        breaker.failure(f"/api/jobs/{n}") if n % 10 == 0 else breaker.success()
    assert not breaker.is_open


async def test_a_probe_failing_on_its_resource_lets_another_resource_probe() -> None:
    """Open, the probe of a resource that failed is not retried while another resource waits:
    a broken record cannot hold the whole server closed to everyone."""
    t = FakeTime()
    breaker = open_breaker(t, probes=ProbeSchedule(initial_s=1.0))
    broken = [Call(resource="/api/jobs/broken") for _ in range(3)]
    others = [Call(resource=f"/api/jobs/{n}") for n in range(5)]
    async with anyio.create_task_group() as tg:
        for call in broken:
            tg.start_soon(call.run, breaker, t)
        await t.settle()
        for call in others:
            tg.start_soon(call.run, breaker, t)
        await t.advance(1.0)
        [first] = admitted(broken + others)
        assert first in broken  # it came first
        first.fail()
        await t.advance(2.0)
        second = [c for c in admitted(broken + others) if c is not first]
        assert len(second) == 1
        assert second[0] in others
        second[0].succeed()
        await t.settle()
        assert not breaker.is_open
        assert len(admitted(broken + others)) == 8
        tg.cancel_scope.cancel()


async def test_a_failed_resource_probes_again_when_no_one_else_waits() -> None:
    """With only the failed resource waiting, it probes again (the server may be back)."""
    t = FakeTime()
    breaker = open_breaker(t, probes=ProbeSchedule(initial_s=1.0))
    calls = [Call(resource="/api/jobs/broken") for _ in range(2)]
    async with anyio.create_task_group() as tg:
        for call in calls:
            tg.start_soon(call.run, breaker, t)
        await t.advance(1.0)
        admitted(calls)[0].fail()
        await t.advance(2.0)
        assert len(admitted(calls)) == 2
        tg.cancel_scope.cancel()


async def test_successful_probe_releases_every_waiter() -> None:
    """Waiters hold until the first probe (after its initial_s); its success lets all through."""
    t = FakeTime()
    breaker = open_breaker(t, probes=ProbeSchedule(initial_s=1.0))
    calls = [Call() for _ in range(20)]
    async with anyio.create_task_group() as tg:
        for call in calls:
            tg.start_soon(call.run, breaker, t)
        await t.advance(0.5)
        assert admitted(calls) == []
        await t.advance(0.5)
        [probe] = admitted(calls)
        assert probe.admitted_at == 1.0
        probe.succeed()
        await t.settle()
        assert len(admitted(calls)) == 20
        assert {c.admitted_at for c in calls} == {1.0}
        assert not breaker.is_open
        assert breaker.opened_at is None
        tg.cancel_scope.cancel()


async def test_only_one_probe_at_a_time() -> None:
    """While a probe is out, however long it takes (within its timeout_s), no one else goes."""
    t = FakeTime()
    breaker = open_breaker(t, probes=ProbeSchedule(timeout_s=120.0))
    calls = [Call() for _ in range(10)]
    async with anyio.create_task_group() as tg:
        for call in calls:
            tg.start_soon(call.run, breaker, t)
        await t.advance(1.0)
        assert len(admitted(calls)) == 1
        await t.advance(100.0)
        assert len(admitted(calls)) == 1
        assert breaker.is_open
        tg.cancel_scope.cancel()


async def test_probe_delays_double_up_to_the_max() -> None:
    """After each failed probe the next comes twice as late: 1, 2, 4, 8, then 8 s again."""
    t = FakeTime()
    breaker = open_breaker(t, probes=ProbeSchedule(initial_s=1.0, max_s=8.0))
    calls = [Call() for _ in range(10)]
    async with anyio.create_task_group() as tg:
        for call in calls:
            tg.start_soon(call.run, breaker, t)
        for n, delay in enumerate([1.0, 2.0, 4.0, 8.0, 8.0, 8.0]):
            await t.advance(delay / 2)
            assert len(admitted(calls)) == n
            await t.advance(delay / 2)
            probes = admitted(calls)
            assert len(probes) == n + 1
            probes[-1].fail()
        assert breaker.is_open
        assert breaker.opened == 1
        tg.cancel_scope.cancel()


async def test_past_budget_admit_raises_for_waiters_and_new_callers() -> None:
    """Open longer than budget_s, every waiter and every later caller gets ServerUnavailable."""
    t = FakeTime()
    breaker = open_breaker(t, budget_s=10.0)
    calls = [Call() for _ in range(10)]
    async with anyio.create_task_group() as tg:
        for call in calls:
            tg.start_soon(call.run, breaker, t)
        await t.advance(9.5)
        assert not any(c.error for c in calls)
        await t.advance(0.5)
        refused = [c.error for c in calls if c.error]
        assert len(refused) == 9  # all but the probe, which is still out
        assert str(refused[0]) == "ModelOps has failed every request for 10 s (budget 10 s)"
        await t.advance(5.0)
        with pytest.raises(ServerUnavailable, match=r"for 15 s \(budget 10 s\)"):
            await breaker.admit()
        tg.cancel_scope.cancel()


async def test_the_budget_ends_an_outage_whatever_time_it_opened_at() -> None:
    """Past budget_s a waiter gets ServerUnavailable at the very time it slept to: for about
    a fifth of opening times `now - opened_at` there is an ulp short of the budget, and a
    waiter used to spin at that instant for ever."""
    now = 74.64457875235838  # 60 s after this, `now - opened_at` is 59.999999999999986
    sleeps = 0

    def clock() -> float:
        return now

    async def sleep(seconds: float) -> None:
        nonlocal now, sleeps
        sleeps += 1
        assert sleeps < 100, "the waiter spins"
        now += seconds
        await anyio.lowlevel.checkpoint()

    breaker = Breaker(
        threshold=1,
        budget_s=60.0,
        probes=ProbeSchedule(initial_s=100.0, max_s=100.0),
        clock=Clock(now=clock, sleep=sleep),
    )
    breaker.failure(None)
    with pytest.raises(ServerUnavailable, match=r"budget 60 s"):
        await breaker.admit()
    assert sleeps == 1


async def test_cancelled_probe_passes_its_turn_on() -> None:
    """A probe cancelled before it reports abandons its turn, and another waiter probes at once."""
    t = FakeTime()
    breaker = open_breaker(t)
    calls = [Call() for _ in range(5)]
    async with anyio.create_task_group() as tg:
        for call in calls:
            tg.start_soon(call.run, breaker, t)
        await t.advance(1.0)
        [first] = admitted(calls)
        first.scope.cancel()
        await t.settle()
        [_, second] = admitted(calls)
        assert second.admitted_at == 1.0
        second.succeed()
        await t.settle()
        assert len(admitted(calls)) == 5
        tg.cancel_scope.cancel()


async def test_silent_lost_probe_is_replaced_after_probe_timeout() -> None:
    """A probe that vanishes without a word is presumed lost after its timeout_s."""
    t = FakeTime()
    breaker = open_breaker(t, probes=ProbeSchedule(timeout_s=10.0))
    calls = [Call(abandon_on_cancel=False) for _ in range(5)]
    async with anyio.create_task_group() as tg:
        for call in calls:
            tg.start_soon(call.run, breaker, t)
        await t.advance(1.0)
        admitted(calls)[0].scope.cancel()
        await t.advance(9.5)
        assert len(admitted(calls)) == 1
        await t.advance(0.5)
        assert [c.admitted_at for c in admitted(calls)] == [1.0, 11.0]
        tg.cancel_scope.cancel()


async def test_cancelled_waiter_does_not_wedge_the_others() -> None:
    """Cancelling the waiter that keeps the clock hands the job over; the probe still goes."""
    t = FakeTime()
    breaker = open_breaker(t)
    calls = [Call() for _ in range(5)]
    async with anyio.create_task_group() as tg:
        for call in calls:
            tg.start_soon(call.run, breaker, t)
        await t.advance(0.5)
        for call in calls[:2]:
            call.scope.cancel()
        await t.advance(0.5)
        [probe] = admitted(calls)
        assert probe in calls[2:]
        assert probe.admitted_at == 1.0
        tg.cancel_scope.cancel()


def test_breaker_rejects_bad_arguments() -> None:
    """A zero threshold, non-positive times or a max probe delay below the first are refused."""
    with pytest.raises(ValueError, match="threshold must be at least 1"):
        Breaker(threshold=0)
    with pytest.raises(ValueError, match="budget_s must be positive"):
        Breaker(budget_s=0.0)
    with pytest.raises(ValueError, match="probe initial_s must be positive"):
        ProbeSchedule(initial_s=-1.0)
    with pytest.raises(ValueError, match="probe timeout_s must be positive"):
        ProbeSchedule(timeout_s=0.0)
    with pytest.raises(ValueError, match="must be at least initial_s"):
        ProbeSchedule(initial_s=5.0, max_s=2.0)
