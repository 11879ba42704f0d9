"""The circuit breaker of a client's requests: one probe at a time while the server is down.

`Breaker` stops a fleet of hundreds of tasks from hammering a server that fails every request,
and only then: it opens on failures of the *server*, not of one record. Each failure names its
resource (the request's path, the query left out), or none when it is the server's by nature (a
connection that could not be made). `threshold` consecutive failures, with no success on any
resource between them, open the breaker only when they span at least two resources, or one
that is the server's: one job whose reads fail for ever is that job's problem, and its request
fails on its own retry budget while every other request goes on. While open, one probe at a
time goes out; when a probe fails, the next is taken by a request for a resource whose probe
has not yet failed in this outage, if one waits, so a resource that is broken on its own cannot
keep everyone waiting. Past `budget_s` open, every caller gets `ServerUnavailable`.

It is shared by hundreds of anyio tasks. Waiters block on an event, never spin; at most one
task sleeps on the clock, and the clock is injectable (`clock.py`). `throttle.py` paces the
requests of a server that is up but overloaded.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import anyio
import structlog

from fleet.clock import SYSTEM_CLOCK, Clock
from fleet.errors import ServerUnavailable

log = structlog.get_logger("fleet.breaker")


@dataclass(frozen=True, slots=True)
class ProbeSchedule:
    """When an open breaker lets a probe out: `initial_s` after opening, then twice as long
    after each failed probe, up to `max_s` apart; a probe with no verdict after `timeout_s`
    is presumed lost, and another waiter probes."""

    initial_s: float = 1.0
    max_s: float = 30.0
    timeout_s: float = 120.0

    def __post_init__(self) -> None:
        for name, value in (("initial_s", self.initial_s), ("timeout_s", self.timeout_s)):
            if not value > 0:
                raise ValueError(f"probe {name} must be positive, not {value}")
        if not self.max_s >= self.initial_s:
            raise ValueError(
                f"probe max_s ({self.max_s}) must be at least initial_s ({self.initial_s})"
            )


class Breaker:
    """A circuit breaker: open after `threshold` failures of the server, then one probe at a time.

    Call `admit(resource)` before each request and then exactly one of `success()` (the server
    answered), `failure(resource)` (it failed: timeout, connection error, 5xx) or `abandon()`
    (the request ended without telling anything about the server, e.g. it was cancelled).
    `resource` is the request's path without its query; None is the server as a whole (a
    connection that could not be made says nothing about any one resource). `probes` says
    when probes go out while it is open.
    """

    __slots__ = (
        "_budget_s",
        "_changed",
        "_clock",
        "_delay",
        "_failed_probes",
        "_failing",
        "_failures",
        "_next_probe_at",
        "_opened_at",
        "_probe",
        "_probe_expires",
        "_probe_resource",
        "_probes",
        "_server_failed",
        "_threshold",
        "_timer",
        "_waiting",
        "opened",
    )

    def __init__(
        self,
        *,
        threshold: int = 5,
        budget_s: float = 300.0,
        probes: ProbeSchedule = ProbeSchedule(),
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if threshold < 1:
            raise ValueError(f"threshold must be at least 1, not {threshold}")
        if not budget_s > 0:
            raise ValueError(f"budget_s must be positive, not {budget_s}")
        self._threshold = threshold
        self._budget_s = budget_s
        self._probes = probes
        self._clock = clock
        # Failures since the last success: how many, and of which resources (two are enough
        # to tell), or whether one was the server's own.
        self._failures = 0
        self._failing: set[str] = set()
        self._server_failed = False
        self._opened_at: float | None = None
        self._delay = probes.initial_s
        self._next_probe_at = 0.0
        self._probe: int | None = None  # the anyio task id of the probe in flight
        self._probe_resource: str | None = None
        self._probe_expires = 0.0
        self._failed_probes: set[str | None] = set()  # resources whose probe failed, this outage
        self._waiting: Counter[str | None] = Counter()  # resources of the callers waiting
        self._changed = anyio.Event()
        self._timer: anyio.CancelScope | None = None
        self.opened = 0

    @property
    def is_open(self) -> bool:
        return self._opened_at is not None

    @property
    def opened_at(self) -> float | None:
        """Clock time at which the breaker opened, None while it is closed."""
        return self._opened_at

    async def admit(self, resource: str | None = None) -> None:
        """Return when this caller may send a request; raise `ServerUnavailable` past the budget."""
        if self._opened_at is None:
            return
        self._waiting[resource] += 1
        admitted = False
        try:
            await self._wait_turn(resource)
            admitted = True
        finally:
            self._waiting[resource] -= 1
            if not self._waiting[resource]:
                del self._waiting[resource]
            if not admitted and self._opened_at is not None:
                # This waiter may have been the one the next probe was left to.
                self._notify()

    async def _wait_turn(self, resource: str | None) -> None:
        while self._opened_at is not None:
            now = self._clock.now()
            failing_s = now - self._opened_at
            # Against the very time `_keep_time` sleeps to: `now - opened_at` may fall an ulp
            # short of the budget at that time, and a waiter would then spin there for ever.
            if now >= self._opened_at + self._budget_s:
                raise ServerUnavailable(
                    f"ModelOps has failed every request for {_seconds(failing_s)} s "
                    f"(budget {_seconds(self._budget_s)} s)"
                )
            probe_lost = self._probe is not None and now >= self._probe_expires
            if (self._probe is None or probe_lost) and now >= self._next_probe_at:
                if self._may_probe(resource):
                    self._probe = _task_id()
                    self._probe_resource = resource
                    self._probe_expires = now + self._probes.timeout_s
                    log.info(
                        "fleet.breaker.probing",
                        failing_s=round(failing_s, 3),
                        lost=probe_lost,
                        resource=resource,
                    )
                    self._notify()  # another waiter takes over the clock while this one probes
                    return
                await self._changed.wait()  # a waiter for a resource not yet tried probes
            elif self._timer is None:
                await self._keep_time(now)
            else:
                await self._changed.wait()

    def _may_probe(self, resource: str | None) -> bool:
        """A resource whose probe failed in this outage probes again only if no one waits for
        another: a broken resource must not stand for the whole server."""
        if resource not in self._failed_probes:
            return True
        return all(waiting in self._failed_probes for waiting in self._waiting)

    def success(self) -> None:
        """The server answered: reset the failure count and close, releasing every waiter."""
        self._failures = 0
        self._failing.clear()
        self._server_failed = False
        if self._opened_at is None:
            return
        log.info("fleet.breaker.closed", failing_s=round(self._clock.now() - self._opened_at, 3))
        self._opened_at = None
        self._probe = None
        self._failed_probes.clear()
        self._delay = self._probes.initial_s
        self._notify()

    def failure(self, resource: str | None = None) -> None:
        """The server failed a request for `resource` (None: the server as a whole): count it
        while closed; schedule the next probe if open."""
        now = self._clock.now()
        if self._opened_at is None:
            self._failures += 1
            if resource is None:
                self._server_failed = True
            elif len(self._failing) < 2:  # noqa: PLR2004 - two resources tell a server
                self._failing.add(resource)
            spans_server = self._server_failed or len(self._failing) >= 2  # noqa: PLR2004
            if self._failures >= self._threshold and spans_server:
                self._open(now)
            return
        # Requests admitted before the breaker opened may still fail; only the probe's counts.
        if self._probe is not None and self._probe == _task_id():
            self._failed_probes.add(self._probe_resource)
            self._probe = None
            self._delay = min(self._delay * 2, self._probes.max_s)
            self._next_probe_at = now + self._delay
            self._notify()

    def abandon(self) -> None:
        """The admitted request ended with no verdict on the server; a probe's turn passes on."""
        if self._probe is not None and self._probe == _task_id():
            self._probe = None
            self._notify()

    def _open(self, now: float) -> None:
        self._opened_at = now
        self.opened += 1
        self._delay = self._probes.initial_s
        self._next_probe_at = now + self._delay
        self._probe = None
        self._failed_probes.clear()
        log.warning(
            "fleet.breaker.opened",
            failures=self._failures,
            resources=sorted(self._failing),
            budget_s=self._budget_s,
        )
        self._notify()

    async def _keep_time(self, now: float) -> None:
        """Sleep, as the one waiter on the clock, until the next thing due (probe, lost probe,
        budget) or until something changes; then wake the others to look again."""
        assert self._opened_at is not None
        due = self._probe_expires if self._probe is not None else self._next_probe_at
        deadline = min(due, self._opened_at + self._budget_s)
        scope = anyio.CancelScope()
        try:
            with scope:
                self._timer = scope
                await self._clock.sleep(deadline - now)
        finally:
            if self._timer is scope:
                self._timer = None
            # Cancelled by `_notify`, everyone is awake already. Otherwise the time came (the
            # budget may be spent: all must look) or this waiter was cancelled (another must
            # take over the clock).
            if not scope.cancel_called:
                self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()
        if self._timer is not None:
            self._timer.cancel()


def _seconds(value: float) -> str:
    return f"{value:.0f}" if value >= 10 else f"{value:.1f}"  # noqa: PLR2004


def _task_id() -> int:
    return anyio.get_current_task().id


__all__ = ["Breaker", "ProbeSchedule"]
