"""OAuth2 client credentials: the token URL service accounts fetch their access tokens from.

A client POSTs `grant_type=client_credentials` with HTTP Basic `client_id:client_secret` and
gets an access token valid for `token_lifetime_s` of the emulator's clock, so a test on a
`ManualClock` expires it by advancing the clock. The static `SimSettings.token` keeps working
next to the issued tokens.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
import secrets
from typing import TYPE_CHECKING, Literal
from urllib.parse import parse_qs

from starlette.responses import JSONResponse

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response

    from fleet.sim.world import World

TOKEN_PATH = "/oauth2/token"  # noqa: S105 - a URL path, not a credential
TokenState = Literal["valid", "expired", "unknown"]

_FORM = "application/x-www-form-urlencoded"
# RFC 6749 5.1: token answers must not be cached.
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


class Tokens:
    """The access tokens the API accepts: the static one and those issued, with their expiry."""

    __slots__ = ("_expires_at", "_static", "_world")

    def __init__(self, world: World) -> None:
        self._world = world
        self._static = world.settings.token.encode()
        # Keyed by a digest, so finding a token is a dict lookup that leaks nothing by timing.
        # Expired tokens stay, so their use is told apart from an unknown token.
        self._expires_at: dict[bytes, float] = {}

    def issue(self) -> tuple[str, int]:
        """A fresh access token and its `expires_in`, in whole seconds, at least 1."""
        lifetime = self._world.settings.token_lifetime_s
        # A recognisable prefix lets a test search logs and files for any issued token.
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        self._expires_at[_digest(token)] = self._world.now() + lifetime
        return token, max(1, math.floor(lifetime))

    def check(self, token: str) -> TokenState:
        # compare_digest: a token check should not leak, by timing, how much of it matched.
        if secrets.compare_digest(token.encode(), self._static):
            return "valid"
        expires_at = self._expires_at.get(_digest(token))
        if expires_at is None:
            return "unknown"
        return "valid" if self._world.now() < expires_at else "expired"


class TokenEndpoint:
    """`POST /oauth2/token`: answers as RFC 6749 section 5 says, errors as `{"error": ...}`."""

    __slots__ = ("_client_id", "_client_secret", "_tokens", "_world")

    def __init__(self, world: World, tokens: Tokens) -> None:
        settings = world.settings
        if settings.client_id is None or settings.client_secret is None:
            raise ValueError("the token URL needs client_id and client_secret")
        self._world = world
        self._tokens = tokens
        self._client_id = settings.client_id.encode()
        self._client_secret = settings.client_secret.encode()

    async def handle(self, request: Request) -> Response:
        self._world.count_request(f"POST {TOKEN_PATH}")
        if not self._authenticated(request.headers.get("authorization", "")):
            # RFC 6749 5.2: a failed Basic authentication answers 401 with a Basic challenge.
            return _error(401, "invalid_client", {"WWW-Authenticate": 'Basic realm="oauth2"'})
        content_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
        if content_type != _FORM:
            return _error(400, "invalid_request")
        try:
            form = parse_qs((await request.body()).decode(), keep_blank_values=True)
        except UnicodeDecodeError:
            return _error(400, "invalid_request")
        grant_types = form.get("grant_type", [])
        if len(grant_types) != 1:  # missing or repeated, both invalid (RFC 6749 3.2)
            return _error(400, "invalid_request")
        if grant_types[0] != "client_credentials":
            return _error(400, "unsupported_grant_type")
        token, expires_in = self._tokens.issue()
        self._world.count_token_issued()
        body = {"access_token": token, "token_type": "Bearer", "expires_in": expires_in}
        return JSONResponse(body, headers=_NO_STORE)

    def _authenticated(self, authorization: str) -> bool:
        scheme, _, encoded = authorization.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True)
        except binascii.Error:
            return False
        client_id, colon, client_secret = decoded.partition(b":")
        # Both compared every time, so the timing does not tell a right id from a wrong one.
        id_ok = secrets.compare_digest(client_id, self._client_id)
        secret_ok = secrets.compare_digest(client_secret, self._client_secret)
        return bool(colon) and id_ok and secret_ok


TOKEN_PREFIX = "simtok-"  # noqa: S105 - a marker, not a credential


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def _error(status: int, error: str, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse({"error": error}, status_code=status, headers=_NO_STORE | (headers or {}))
