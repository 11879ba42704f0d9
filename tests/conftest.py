from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import pytest
import respx
import structlog

from fleet.retries import without_waiting
from fleet.secrets import redactor

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


@pytest.fixture(autouse=True)
def _retries_without_waiting(request: pytest.FixtureRequest) -> Iterator[None]:
    """A call is sent again at once (its waits still count against its budget), so no test
    sleeps for a backoff, in-process runs of the CLI included. A test of the waits
    themselves (on a virtual clock) is marked `retry_waits` and waits as a night would."""
    if request.node.get_closest_marker("retry_waits") is not None:
        yield
        return
    with without_waiting():
        yield


@pytest.fixture(autouse=True)
def _secrets_of_this_test_only() -> Iterator[None]:
    """The redactor is process-wide: a token like "token" added by one test would redact
    that word in every later test's messages."""
    yield
    redactor.forget()


@dataclass(frozen=True)
class Ran:
    """What a `fleet` command did: its exit code and what it printed."""

    code: int
    out: str
    err: str


class FleetHere(Protocol):
    def __call__(self, *argv: str, cwd: Path, env: dict[str, str] | None = None) -> Ran: ...


@pytest.fixture
def fleet_here(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> FleetHere:
    """`fleet ARGV` run in this process (`fleet.cli.main`) in `cwd`, with no FLEET_* variable
    but `env`: for the commands an end-to-end test only reads with (`status`, `plan`, a refused
    flag), which need no process of their own and so not its 0.6 s of start-up.

    Each command runs as if in a process of its own: it logs as its own flags say (structlog's
    defaults are back after it, so the next command or test does not inherit its level or
    format), and the process-wide redactor knows only the secrets it learns, so an earlier
    command's cannot hide one this command fails to redact."""
    from fleet.cli import main  # noqa: PLC0415 - only the tests asking for it pay the import

    def run(*argv: str, cwd: Path, env: dict[str, str] | None = None) -> Ran:
        for name in [name for name in os.environ if name.startswith("FLEET_")]:
            monkeypatch.delenv(name)
        for name, value in (env or {}).items():
            monkeypatch.setenv(name, value)
        monkeypatch.chdir(cwd)
        capsys.readouterr()
        redactor.forget()
        try:
            code = main(list(argv))
        finally:
            structlog.reset_defaults()
            redactor.forget()
        out, err = capsys.readouterr()
        return Ran(code, out, err)

    return run


@pytest.fixture
def mock() -> Iterator[respx.MockRouter]:
    """Every httpx request of the test answered by respx routes; a route left uncalled is
    no failure."""
    with respx.mock(using="httpx", assert_all_called=False) as router:
        yield router
