"""fleet's exceptions: one tree, translated from httpx and sqlite at one boundary each.

    FleetError
    ├── ConfigError               bad settings, flags or model lists (exit 2)
    │   └── RuleError             an approval or monitor rule that does not parse (rule_syntax.py)
    ├── ApiError                  anything the ModelOps API answered or failed to answer
    │   ├── TransientApiError     timeouts, connection errors, 429, 500, 502, 503, 504 (retry_after)
    │   │   ├── OutcomeUnknown    a POST was sent but no answer came back: it may have been applied
    │   │   ├── Conflict          409: a concurrent change; not applied, may succeed later
    │   │   └── ServerUnavailable the server kept failing past the outage budget (exit 3)
    │   ├── PermanentApiError     other 4xx: status code and the server's message
    │   │   └── NotFound          404
    │   ├── AuthError             401 / 403: the token was rejected (the run stops, exit 3)
    │   └── ProtocolError         a response fleet cannot understand (not JSON, missing fields)
    ├── StoreError                the SQLite state file cannot be opened, migrated or written
    │   └── NewerStateFile        written by a newer fleet (schema or settings encoding) (exit 2)
    ├── LeaseHeld                 another live fleet process drives the state file (exit 4)
    ├── LeaseLost                 another process took the state file over mid-run (exit 4)
    ├── RunNotFound               a run id that is not in the state file (exit 2)
    └── InvalidTransition         a stage or run status change that its transition table forbids

Outside the tree, `RunAborted` is the engine's own signal, never seen by a caller: a model's
task raises it to stop its project (a rejected token), with the FleetError as its cause, and
the scheduler hands that cause on.

`session.py` is the only module that turns httpx exceptions into fleet's (`transport.py` sorts
httpx's own, `auth.py` maps its token request's); `store.py` and `schema.py` the
only ones that catch sqlite3 exceptions. Above them, code speaks this tree only.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fleet.records import Lease


class FleetError(Exception):
    """Base of every error fleet raises on purpose."""


class ConfigError(FleetError):
    """A setting, flag or model list is wrong; the message names it and says what is expected."""


class ApiError(FleetError):
    """The ModelOps API refused or failed a request."""

    def __init__(
        self, message: str, *, method: str = "", path: str = "", status: int | None = None
    ) -> None:
        super().__init__(message)
        self.method = method
        self.path = path
        self.status = status


class TransientApiError(ApiError):
    """Worth retrying later: the server was busy, slow or unreachable."""

    def __init__(
        self,
        message: str,
        *,
        method: str = "",
        path: str = "",
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, method=method, path=path, status=status)
        self.retry_after = retry_after


class OutcomeUnknown(TransientApiError):
    """A POST went out and no response came back: the server may or may not have applied it."""


class Conflict(TransientApiError):
    """409: the server refused the request over a concurrent change (nothing was applied)."""


class ServerUnavailable(TransientApiError):
    """The circuit breaker stayed open longer than its budget: the server is down for now."""


class PermanentApiError(ApiError):
    """The server understood the request and refused it (4xx); retrying will not help."""


class NotFound(PermanentApiError):
    """The server does not know the id in the path (404)."""


class AuthError(ApiError):
    """The token was rejected (401) or lacks the permission (403); nothing else can proceed."""


class ProtocolError(ApiError):
    """The server answered with something fleet cannot read."""


class StoreError(FleetError):
    """The state database cannot be opened, migrated or written."""


class NewerStateFile(StoreError):
    """The state file was written by a newer fleet: this one would misread it, so leaves it be."""

    def __init__(self, path: str, what: str, found: int, known: int) -> None:
        super().__init__(
            f"{path} was written by a newer fleet ({what} {found}, this fleet reads up to "
            f"{known}); upgrade fleet to read it"
        )


class LeaseHeld(FleetError):
    """Another live process drives this state file."""

    def __init__(self, lease: Lease, path: str) -> None:
        super().__init__(
            f"{path} is in use by fleet pid {lease.pid} on {lease.host} since "
            f"{lease.since.isoformat(timespec='seconds')} (last renewed "
            f"{lease.renewed_at.isoformat(timespec='seconds')}); wait for it to finish, or "
            "stop it; a holder that stops renewing is taken over after lease_ttl seconds"
        )
        self.lease = lease


class LeaseLost(FleetError):
    """Another process took the state file over while this one was running."""


class RunNotFound(FleetError):
    """The requested run id is not in the state database."""


class InvalidTransition(FleetError):
    """A stage was asked to move between two states the transition table does not connect."""


@contextmanager
def ungrouped() -> Iterator[None]:
    """Re-raise the first error of an exception group raised by a task group in the block.

    Task groups wrap whatever their tasks raise; callers of fleet's resources and engine
    should see the fleet error itself (when several tasks fail at once, as when a token is
    revoked mid-run, they fail for the same reason, and the first stands for all).
    """
    try:
        yield
    except BaseExceptionGroup as group:
        first = group.exceptions[0]
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        raise first from first.__cause__


class RunAborted(Exception):
    """The run cannot go on (token rejected, server gone); carries the fleet error."""
