from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import pytest

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
    flag), which need no process of their own and so not its 0.6 s of start-up."""
    from fleet.cli import main  # noqa: PLC0415 - only the tests asking for it pay the import

    def run(*argv: str, cwd: Path, env: dict[str, str] | None = None) -> Ran:
        for name in [name for name in os.environ if name.startswith("FLEET_")]:
            monkeypatch.delenv(name)
        for name, value in (env or {}).items():
            monkeypatch.setenv(name, value)
        monkeypatch.chdir(cwd)
        capsys.readouterr()
        code = main(list(argv))
        out, err = capsys.readouterr()
        return Ran(code, out, err)

    return run
