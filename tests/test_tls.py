from __future__ import annotations

from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import pytest
import trustme

from fleet import sim
from fleet.client import ModelOpsClient
from fleet.errors import ApiError, TransientApiError
from fleet.retries import RetryPolicy
from fleet.transport import HttpOptions
from support import InstantTime

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

SETTINGS = sim.SimSettings(models=3)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    """A throwaway certificate authority no system trusts."""
    return trustme.CA()


@asynccontextmanager
async def https_emulator(ca: trustme.CA, tmp_path: Path) -> AsyncIterator[str]:
    """The emulator over HTTPS, with a certificate for 127.0.0.1 and localhost from `ca`.

    A context manager, not a fixture: the server's task group must be left by the task that
    entered it, and pytest-asyncio tears fixtures down in another task.
    """
    cert = ca.issue_cert("127.0.0.1", "localhost")
    certfile, keyfile = tmp_path / "server.pem", tmp_path / "server.key"
    cert.private_key_pem.write_to_path(str(keyfile))
    # The server's certificate followed by its chain, as a web server expects them.
    certfile.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    _, app = sim.build(SETTINGS, sim.ManualClock())
    async with sim.serve(app, ssl_certfile=str(certfile), ssl_keyfile=str(keyfile)) as url:
        yield url


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> str:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


def client(base_url: str, verify: bool | str) -> ModelOpsClient:
    """A client that tries once and never waits, so a refusal is seen as it is."""
    return ModelOpsClient(
        base_url,
        SETTINGS.project_id,
        SETTINGS.token,
        http=HttpOptions(verify=verify),
        pacing=InstantTime().pacing(retry=RetryPolicy(attempts=1)),
    )


async def test_serve_with_a_certificate_announces_an_https_url(ca, tmp_path):
    """With ssl_certfile the emulator serves TLS and its base URL says https."""
    async with https_emulator(ca, tmp_path) as url:
        assert url.startswith("https://127.0.0.1:")
        assert url.endswith("/modelops/core")


async def test_a_client_trusting_the_ca_file_talks_to_the_emulator(ca, tmp_path, ca_file):
    """verify=<CA bundle path> trusts the emulator's private CA: the project and models load."""
    async with https_emulator(ca, tmp_path) as url, client(url, ca_file) as api:
        await api.check_project()
        listed = await api.list_models()
        assert len([m for m in listed if not m.archived]) == SETTINGS.models


async def test_the_default_trust_store_refuses_a_private_ca(ca, tmp_path):
    """With the default verify=True an untrusted certificate stops at once, saying what to do."""
    async with https_emulator(ca, tmp_path) as url, client(url, verify=True) as api:
        with pytest.raises(ApiError, match="CERTIFICATE_VERIFY_FAILED") as refused:
            await api.check_project()
    assert not isinstance(refused.value, TransientApiError)  # retrying cannot help
    assert "not trusted" in str(refused.value)
    assert "api.ca_bundle" in str(refused.value)


async def test_verify_false_connects_as_the_users_explicit_choice(ca, tmp_path):
    """verify=False skips certificate checks: it connects, which is the user's own risk."""
    async with https_emulator(ca, tmp_path) as url, client(url, verify=False) as api:
        await api.check_project()
        listed = await api.list_models()
        assert len([m for m in listed if not m.archived]) == SETTINGS.models


async def test_a_missing_certificate_file_is_raised_before_serving(tmp_path):
    """An unreadable certificate is the caller's error at once, not a server that never starts."""
    _, app = sim.build(SETTINGS, sim.ManualClock())
    with pytest.raises(FileNotFoundError):
        async with sim.serve(app, ssl_certfile=str(tmp_path / "missing.pem")):
            pytest.fail("the block must not run without a certificate")


async def test_a_key_without_a_certificate_is_refused(tmp_path):
    """ssl_keyfile alone cannot serve TLS."""
    _, app = sim.build(SETTINGS, sim.ManualClock())
    with pytest.raises(ValueError, match="ssl_keyfile needs ssl_certfile"):
        async with sim.serve(app, ssl_keyfile=str(tmp_path / "server.key")):
            pytest.fail("the block must not run without a certificate")
