from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
import stamina

from fleet.secrets import redactor

if TYPE_CHECKING:
    from collections.abc import Iterator

_RETRY_ATTEMPTS = 3


@pytest.fixture
def retry_attempts() -> int:
    """How many times a call with the default retry policy is tried in tests."""
    return _RETRY_ATTEMPTS


@pytest.fixture(autouse=True)
def _retries_without_waiting() -> Iterator[None]:
    """Retries happen at once, at most three times, so no test sleeps for a backoff.

    `cap=True` keeps a smaller policy (a test asking for one attempt gets one).
    """
    with stamina.set_testing(True, attempts=_RETRY_ATTEMPTS, cap=True):
        yield


@pytest.fixture(autouse=True)
def _secrets_of_this_test_only() -> Iterator[None]:
    """The redactor is process-wide: a token like "token" added by one test would redact
    that word in every later test's messages."""
    yield
    redactor.forget()
