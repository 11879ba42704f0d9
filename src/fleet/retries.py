"""Every retry fleet makes, as data: what is sent again, how often, and within what budget.

A *call* is one request fleet wants answered: read a job, list a model's versions, submit a
training. A call has one `Account`: at most `RetryPolicy.attempts` sends (`api.retry_attempts`,
6), whose own time, each failed exchange and each wait before the next send, adds up to at
most `RetryPolicy.budget_s` (`api.retry_budget`, 60 s). Every send of the call draws on that
one account, whichever layer makes it: the client's retry loop, or the engine sending again
a submission whose answer was lost (`settle`). No layer above the client goes round a call
again, so these two numbers are the worst case of a call, not a factor of it.

What is sent again (`retryable`; `session.py` sorts the failures):

- a GET that timed out, lost its connection, or was answered 408, 429 or any 5xx;
- a POST only when nothing can have been applied: refused with 429 or 503
  (`REFUSED_STATUSES`), refused as a conflict (409), or never sent (no connection was
  made). A POST whose answer was lost (`OutcomeUnknown`: a timeout or a dropped connection
  after it was sent, 500, 502, 504, an unreadable answer) is never sent again blind: the
  engine first looks for what it did (`settle`).

The wait before sending again is the server's `Retry-After` when it sent one (up to
`RETRY_AFTER_MAX_S`), else 0.5, 1, 2, 4, 8 s, at most 10 s, each plus up to 0.5 s of jitter
(`RetryPolicy.backoff`). A wait that would end past the budget is not taken: the call
fails at once, with the last failure.

What costs a call nothing:

- An outage. While the breaker (`breaker.py`) is open, a call waits for it and its
  sends do not go out; a send the breaker lets out as its probe of the server is the
  breaker's, not the call's. The wait is bounded by `api.outage_budget` (600 s), past which
  `ServerUnavailable` stops the project (exit 3; the same command resumes).
- Waiting for a turn: the throttle's pace, a burst's pause.
- A 401 answered by sending the same request once more with a renewed token: the first was
  not applied, and a second 401 stops the run.

Above a call, two things repeat work, and neither is a retry of a call:

- A job that ends in ERROR is followed by a new job, a new attempt of its stage, up to
  `attempts.<stage>` (1 by default: none).
- The job watcher (`polling.py`) reads a job by id as one call; a job whose read failed is
  read again on the watcher's own schedule, one send each time (`one_send`), and its stage
  fails once `READ_FAILURES` reads in a row have failed over at least
  `READ_BUDGET_INTERVALS` poll intervals.

A call that outlives its budget fails its model's stage; `fleet run --retry-failed` reopens
it. `docs/operations.md` ("Retries: every number in one place") tabulates all of this.

`without_waiting()` is for tests, as stamina's `set_testing` was: inside it a call is sent
again at once, its waits still charged to its budget, so a test of retries sleeps for nothing
and counts exactly what a night would.
"""

from __future__ import annotations

import math
import random
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

from fleet.errors import OutcomeUnknown, ServerUnavailable, TransientApiError

_T = TypeVar("_T")

# Answers that say "not now": a gateway's timeout (408), a refusal (429), and every 5xx.
TRANSIENT_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
# A 429 or 503 is the server (or its gateway) refusing a request before acting on it, so a
# POST that got one may be sent again; any other failure of a POST may have been applied.
REFUSED_STATUSES = frozenset({429, 503})
# A `Retry-After` longer than this is read as this (a server asking for an hour is down).
RETRY_AFTER_MAX_S = 300.0
# A job whose reads by id keep failing fails its stage after this many failed reads in a
# row, spanning at least this many poll intervals (polling.py).
READ_FAILURES = 5
READ_BUDGET_INTERVALS = 10.0


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How a call is tried: sends and seconds in all, and the backoff between sends."""

    attempts: int = 6  # api.retry_attempts
    budget_s: float = 60.0  # api.retry_budget
    initial_s: float = 0.5
    max_s: float = 10.0
    jitter_s: float = 0.5

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"attempts must be at least 1, not {self.attempts}")
        if not 0 < self.budget_s < math.inf:
            raise ValueError(f"budget_s must be positive, not {self.budget_s}")
        for name in ("initial_s", "max_s", "jitter_s"):
            value = getattr(self, name)
            if not 0 <= value < math.inf:
                raise ValueError(f"{name} must be zero or more, not {value}")

    def account(self) -> Account:
        """A new call's account."""
        return Account(self)

    def backoff(self, failures: int, rng: random.Random) -> float:
        """The wait after the call's `failures`-th failed send, when the server named none."""
        exponential = self.initial_s * 2.0 ** min(failures - 1, 64)
        return min(self.max_s, exponential + rng.uniform(0.0, self.jitter_s))


class Account:
    """What one call has spent: its failed sends and the seconds they and their waits took.

    The client charges every send that fails, except a probe of an outage; a success ends
    the call. Whoever holds the account may send the call again while `may_send()`.
    """

    __slots__ = ("failures", "policy", "spent_s")

    def __init__(self, policy: RetryPolicy) -> None:
        self.policy = policy
        self.failures = 0
        self.spent_s = 0.0

    def may_send(self) -> bool:
        """Whether a send is left: fewer failures than attempts, and seconds to spare."""
        return self.failures < self.policy.attempts and self.spent_s < self.policy.budget_s

    def charge(self, seconds: float) -> None:
        """A send failed after `seconds` on the wire."""
        self.failures += 1
        self.spent_s += max(seconds, 0.0)

    def wait_after(self, error: BaseException, rng: random.Random) -> float | None:
        """After a charged failure: the seconds to wait before sending again (charged now), or
        None when the call is over: `error` is not retryable, or no send or second is left."""
        if not retryable(error) or not self.may_send():
            return None
        assert isinstance(error, TransientApiError)
        wait = error.retry_after
        if wait is None:
            wait = self.policy.backoff(self.failures, rng)
        if self.spent_s + wait >= self.policy.budget_s:
            return None
        self.spent_s += wait
        return wait if _waits[0] else 0.0


# Whether a call waits before sending again (False only inside `without_waiting`).
_waits = [True]


@contextmanager
def without_waiting() -> Iterator[None]:
    """Calls sent again at once for the block (their waits charged all the same): tests."""
    before = _waits[0]
    _waits[0] = False
    try:
        yield
    finally:
        _waits[0] = before


def retryable(error: BaseException) -> bool:
    """Whether a failed send may be sent again: a transient failure that cannot have been
    applied. `OutcomeUnknown` may have been (`settle` handles it); `ServerUnavailable` ends
    the project."""
    return isinstance(error, TransientApiError) and not isinstance(
        error, OutcomeUnknown | ServerUnavailable
    )


_ONE_SEND = RetryPolicy(attempts=1)


def one_send() -> Account:
    """An account for a single send: for callers that retry on their own schedule (the job
    watcher's re-reads, probes of a batched look)."""
    return Account(_ONE_SEND)


async def settle(
    send: Callable[[Account], Awaitable[_T]],
    find: Callable[[], Awaitable[_T | None]],
    account: Account,
) -> tuple[_T, bool]:
    """Send a POST from `account` until the server answers it or is found to have applied it.

    When an answer is lost (`OutcomeUnknown`), `find` looks on the server for what the
    request would have done; only when it finds nothing is the request sent again, from the
    same account, so a submission makes at most `attempts` sends in all. A loss the sender
    did not charge (a `ModelOps` that keeps no accounts) is charged here: the loop always
    ends. Returns the answer, or what `find` found and True; raises the last
    `OutcomeUnknown` when the account is spent and nothing was found.
    """
    while True:
        failures = account.failures
        try:
            return await send(account), False
        except OutcomeUnknown:
            if account.failures == failures:
                account.charge(0.0)
            found = await find()
            if found is not None:
                return found, True
            if not account.may_send():
                raise


__all__ = [
    "READ_BUDGET_INTERVALS",
    "READ_FAILURES",
    "REFUSED_STATUSES",
    "RETRY_AFTER_MAX_S",
    "TRANSIENT_STATUSES",
    "Account",
    "RetryPolicy",
    "one_send",
    "retryable",
    "settle",
    "without_waiting",
]
