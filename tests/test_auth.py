"""Token sources: static, a rotated file, OAuth2 client credentials; one renewal per 401."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import respx

from fleet.auth import ClientCredentials, StaticToken, TokenFile
from fleet.client import ModelOpsClient
from fleet.config import load_settings
from fleet.errors import AuthError, ConfigError
from fleet.store import Store
from support import InstantTime

BASE = "https://mo.example/modelops/core"
PROJECT = "5f1a3c9e-8d2b-4e7a-9c61-0f2d4b8a7e13"
JOB = "01f13098-f055-4816-aabd-af93a3823805"
TOKEN_URL = "https://idp.example/token"
SECRET = "client-secret-7b1c"


def _job() -> httpx.Response:
    return httpx.Response(200, json={"id": JOB, "status": "RUNNING"})


def _client(token: object) -> ModelOpsClient:
    return ModelOpsClient(BASE, PROJECT, token, pacing=InstantTime().pacing())  # type: ignore[arg-type]


async def test_a_static_token_rejected_stops_with_a_clear_error() -> None:
    """A 401 on a token from the environment is an AuthError after one request."""
    with respx.mock(using="httpx") as mock:
        route = mock.get(f"{BASE}/api/jobs/{JOB}").respond(401)
        async with _client(StaticToken("static-tok-1")) as api:
            with pytest.raises(AuthError, match="cannot be renewed"):
                await api.get_job(JOB)
    assert route.call_count == 1


async def test_a_rotated_token_file_is_read_again_after_a_401(tmp_path: Path) -> None:
    """The first token is rejected; the file now holds a new one, used for the one retry."""
    path = tmp_path / "token"
    path.write_text("old-token-aaaa\n")
    source = TokenFile(path)
    sent: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(request.headers["Authorization"])
        if request.headers["Authorization"] == "Bearer old-token-aaaa":
            path.write_text("new-token-bbbb\n")
            return httpx.Response(401)
        return _job()

    with respx.mock(using="httpx") as mock:
        mock.get(f"{BASE}/api/jobs/{JOB}").mock(side_effect=answer)
        async with _client(source) as api:
            job = await api.get_job(JOB)
    assert job.id == JOB
    assert sent == ["Bearer old-token-aaaa", "Bearer new-token-bbbb"]


async def test_a_token_file_that_still_holds_the_rejected_token_stops(tmp_path: Path) -> None:
    """Renewing from an unchanged file is an AuthError: two requests, no loop."""
    path = tmp_path / "token"
    path.write_text("same-token-cccc")
    with respx.mock(using="httpx") as mock:
        route = mock.get(f"{BASE}/api/jobs/{JOB}").respond(401)
        async with _client(TokenFile(path)) as api:
            with pytest.raises(AuthError, match="still holds the same token"):
                await api.get_job(JOB)
    assert route.call_count == 1


async def test_client_credentials_fetch_cache_and_renew_before_expiry() -> None:
    """One token fetch serves many requests; past its life minus a margin a new one is had."""
    time = InstantTime()
    issued = iter(["access-1-xxxxxx", "access-2-yyyyyy"])
    with respx.mock(using="httpx") as mock:
        token_route = mock.post(TOKEN_URL).mock(
            side_effect=lambda _: httpx.Response(
                200, json={"access_token": next(issued), "expires_in": 600}
            )
        )
        seen: list[str] = []
        mock.get(f"{BASE}/api/jobs/{JOB}").mock(
            side_effect=lambda r: (seen.append(r.headers["Authorization"]), _job())[1]
        )
        source = ClientCredentials(TOKEN_URL, "fleet", SECRET, clock=time.clock.now)
        async with _client(source) as api:
            for _ in range(3):
                await api.get_job(JOB)
            time.now += 600 - 59  # inside the early-renewal margin
            await api.get_job(JOB)
        request = token_route.calls[0].request
    assert seen == ["Bearer access-1-xxxxxx"] * 3 + ["Bearer access-2-yyyyyy"]
    assert token_route.call_count == 2
    assert request.headers["Authorization"].startswith("Basic ")
    assert request.content == b"grant_type=client_credentials"


async def test_client_credentials_renew_once_on_401_then_stop() -> None:
    """A 401 fetches a new token and retries once; a second 401 is an AuthError."""
    with respx.mock(using="httpx") as mock:
        mock.post(TOKEN_URL).respond(200, json={"access_token": "tok-zzzzzz", "expires_in": 3600})
        route = mock.get(f"{BASE}/api/jobs/{JOB}").respond(401)
        async with _client(ClientCredentials(TOKEN_URL, "fleet", SECRET)) as api:
            with pytest.raises(AuthError):
                await api.get_job(JOB)
    assert route.call_count == 2


async def test_refused_client_credentials_are_an_auth_error() -> None:
    """The token URL refusing the client is an AuthError naming the settings to check."""
    with respx.mock(using="httpx") as mock:
        mock.post(TOKEN_URL).respond(401, json={"error": "invalid_client"})
        async with _client(ClientCredentials(TOKEN_URL, "fleet", SECRET)) as api:
            with pytest.raises(AuthError, match="client credentials") as caught:
                await api.get_job(JOB)
    assert SECRET not in str(caught.value)


def test_plain_http_is_refused_except_to_this_machine() -> None:
    """http:// to another host is a config error unless allow_insecure_http says so."""
    flags = {"api.url": "http://mo.example/modelops/core"}
    with pytest.raises(ConfigError, match="unencrypted"):
        load_settings(None, flags, env={}, use_default_file=False)
    allowed = load_settings(
        None, {**flags, "api.allow_insecure_http": "true"}, env={}, use_default_file=False
    )
    assert allowed.api.url == flags["api.url"]
    for url in ("http://127.0.0.1:8080/modelops/core", "http://localhost/modelops/core"):
        assert load_settings(None, {"api.url": url}, env={}, use_default_file=False).api.url


def test_client_credentials_settings_need_their_parts(tmp_path: Path) -> None:
    """client_credentials without a secret is one clear config error; with a file it works."""
    flags = {
        "api.auth": "client_credentials",
        "api.token_url": TOKEN_URL,
        "api.client_id": "fleet",
    }
    settings = load_settings(None, flags, env={}, use_default_file=False)
    with pytest.raises(ConfigError, match="FLEET_API__CLIENT_SECRET"):
        settings.api.token_source()
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET)
    settings = load_settings(
        None, {**flags, "api.client_secret_file": str(secret_file)}, env={}, use_default_file=False
    )
    assert isinstance(settings.api.token_source(), ClientCredentials)
    assert SECRET not in repr(settings)


def test_a_secret_in_the_config_file_works_with_a_warning(tmp_path: Path) -> None:
    """api.token in fleet.toml is accepted, and the settings carry a warning about it."""
    config = tmp_path / "fleet.toml"
    config.write_text('[api]\ntoken = "file-token-dddd"\n')
    settings = load_settings(config, {}, env={})
    assert settings.api.bearer() == "file-token-dddd"
    assert any("api.token is in" in w for w in settings.warnings)


async def test_a_new_state_file_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    """fleet.db is created with mode 0600."""
    path = tmp_path / "fleet.db"
    async with Store.open(path):
        pass
    assert path.stat().st_mode & 0o777 == 0o600


async def test_a_token_file_rotated_to_garbage_is_one_config_error(tmp_path: Path) -> None:
    """Issue 13 #9: the file is rewritten mid-run with bytes that are not a token; the next
    read says so in one line naming the setting, as the first read would have."""
    path = tmp_path / "token"
    path.write_text("good-token-dddd\n")
    settings = load_settings(
        None,
        {"api.url": BASE, "api.project_id": PROJECT, "api.token_file": str(path)},
        env={},
        use_default_file=False,
    )
    source = settings.api.token_source()
    assert isinstance(source, TokenFile)
    assert await source.token() == "good-token-dddd"
    for garbage in (b"\xff\xfe-not-utf8\n", "caf\u00e9-token\n".encode(), b"two tokens\n"):
        path.write_bytes(garbage)
        source._mtime = -1.0  # the clock may not have moved between two writes
        with pytest.raises(ConfigError, match=r"^api\.token_file[: ]") as caught:
            await source.token()
        assert "\n" not in str(caught.value)
