from __future__ import annotations

import httpx
import pytest

from fleet.sim import SimSettings

CLIENT_ID = "fleet-nightly"
CLIENT_SECRET = "s3cret"
TOKEN_URL = "http://sim/oauth2/token"
STATS_URL = "http://sim/_sim/stats"
GRANT = {"grant_type": "client_credentials"}
WITH_CLIENT = SimSettings(models=3, client_id=CLIENT_ID, client_secret=CLIENT_SECRET)
EXPIRED = 'Bearer error="invalid_token", error_description="The access token expired"'


@pytest.fixture
def settings() -> SimSettings:
    """An emulator with a token URL; a test parametrizes `settings` to change it."""
    return WITH_CLIENT


async def fetch_token(client, auth=(CLIENT_ID, CLIENT_SECRET), data=GRANT) -> httpx.Response:
    """POST to the token URL as a service account does, without the API's bearer token."""
    request = client.build_request("POST", TOKEN_URL, data=data)
    del request.headers["Authorization"]
    return await client.send(request, auth=auth)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_right_credentials_get_a_bearer_token(client):
    """Basic client_id:client_secret and grant_type=client_credentials get a fresh token."""
    first, second = (await fetch_token(client), await fetch_token(client))
    assert first.status_code == 200
    body = first.json()
    assert set(body) == {"access_token", "token_type", "expires_in"}
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 3600
    assert len(body["access_token"]) >= 40
    assert body["access_token"] != second.json()["access_token"]
    assert first.headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize(
    "auth", [(CLIENT_ID, "wrong"), ("someone-else", CLIENT_SECRET), (CLIENT_ID, ""), None]
)
async def test_wrong_or_missing_client_credentials_are_401_invalid_client(client, auth):
    """A wrong secret, a wrong id or no Basic credentials at all get 401 invalid_client."""
    response = await fetch_token(client, auth=auth)
    assert response.status_code == 401
    assert response.json() == {"error": "invalid_client"}
    assert response.headers["WWW-Authenticate"].startswith("Basic")


@pytest.mark.parametrize(
    "authorization", ["Basic not-base64!", "Basic ZmxlZXQtbmlnaHRseQ==", "Bearer fleet-demo-token"]
)
async def test_malformed_basic_credentials_are_401_invalid_client(client, authorization):
    """Undecodable Basic, an id without a colon and secret, or a bearer token are not a client."""
    response = await client.post(TOKEN_URL, data=GRANT, headers={"Authorization": authorization})
    assert response.status_code == 401
    assert response.json() == {"error": "invalid_client"}


@pytest.mark.parametrize("grant", ["password", "authorization_code", ""])
async def test_other_grant_types_are_400_unsupported_grant_type(client, grant):
    """Only the client_credentials grant is offered."""
    response = await fetch_token(client, data={"grant_type": grant})
    assert response.status_code == 400
    assert response.json() == {"error": "unsupported_grant_type"}


async def test_a_missing_grant_type_or_a_json_body_is_400_invalid_request(client):
    """The request must be a form carrying exactly one grant_type (RFC 6749 3.2, 4.4.2)."""
    missing = await fetch_token(client, data={"scope": "all"})
    as_json = await client.post(TOKEN_URL, auth=(CLIENT_ID, CLIENT_SECRET), json=GRANT)
    for response in (missing, as_json):
        assert response.status_code == 400
        assert response.json() == {"error": "invalid_request"}


async def test_an_issued_token_opens_the_api(client):
    """The access token from the token URL works on the API like the static token."""
    token = (await fetch_token(client)).json()["access_token"]
    response = await client.get("/api/models", headers=bearer(token))
    assert response.status_code == 200
    assert response.json()["page"]["totalElements"] == 3 + 2  # and two archived


async def test_an_issued_token_expires_on_the_sim_clock(client, clock):
    """Past its lifetime on the emulator's clock a token is 401 invalid_token, not unknown."""
    token = (await fetch_token(client)).json()["access_token"]
    clock.advance(3599.9)
    assert (await client.get("/api/models", headers=bearer(token))).status_code == 200
    clock.advance(0.1)
    response = await client.get("/api/models", headers=bearer(token))
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == EXPIRED
    body = response.json()
    assert set(body) == {"timestamp", "status", "error", "message", "path"}
    assert body["status"] == 401
    assert body["message"] == "The access token expired"


async def test_the_static_token_keeps_working_and_unknown_tokens_stay_plain_401(client, clock):
    """Issuing tokens changes nothing for the static token; a made-up token is refused as before."""
    await fetch_token(client)
    clock.advance(10 * 3600)
    assert (await client.get("/api/models")).status_code == 200
    response = await client.get("/api/models", headers=bearer("made-up"))
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"


@pytest.mark.parametrize(
    ("settings", "expires_in"),
    [
        (SimSettings(client_id="a", client_secret="b", token_lifetime_s=90.9), 90),
        (SimSettings(client_id="a", client_secret="b", token_lifetime_s=0.25), 1),
    ],
)
async def test_expires_in_is_the_lifetime_in_whole_seconds_at_least_one(client, expires_in):
    """expires_in rounds the lifetime down, and never announces 0."""
    response = await fetch_token(client, auth=("a", "b"))
    assert response.json()["expires_in"] == expires_in


@pytest.mark.parametrize("settings", [SimSettings(models=1)])
async def test_no_token_url_without_client_credentials(client):
    """An emulator without a client_id has no token URL: 404, and nothing is counted."""
    response = await fetch_token(client)
    assert response.status_code == 404
    stats = (await client.get(STATS_URL)).json()
    assert stats["requests_by_route"] == {}
    assert stats["tokens_issued"] == 0


@pytest.mark.parametrize(
    "settings", [SimSettings(models=1, client_id="a", client_secret="b", http_500_rate=1.0)]
)
async def test_the_token_url_is_not_faulted(client):
    """Gateway faults strike the API only, never the token URL."""
    assert (await fetch_token(client, auth=("a", "b"))).status_code == 200
    assert (await client.get("/api/models")).status_code == 500


async def test_stats_count_issued_tokens_and_rejected_ones(client, clock):
    """tokens_issued counts tokens handed out; token_rejections counts the API's 401s."""
    tokens = [(await fetch_token(client)).json()["access_token"] for _ in range(2)]
    await fetch_token(client, auth=(CLIENT_ID, "wrong"))
    await fetch_token(client, data={"grant_type": "password"})
    await client.get("/api/models", headers=bearer(tokens[0]))
    clock.advance(3600)
    await client.get("/api/models", headers=bearer(tokens[0]))  # expired
    await client.get("/api/models", headers=bearer("made-up"))
    await client.get("/api/models")  # the static token
    stats = (await client.get(STATS_URL)).json()
    assert stats["tokens_issued"] == 2
    assert stats["token_rejections"] == 2
    assert stats["requests_by_route"] == {
        "POST /oauth2/token": 4,
        "GET /modelops/core/api/models": 4,
    }
    assert stats["requests_total"] == 8
