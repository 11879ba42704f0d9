"""Where the bearer token comes from, and how a new one is had when the server rejects it.

- `StaticToken`: a token from the environment; it cannot be renewed.
- `TokenFile`: a file that Kubernetes or a Vault agent rewrites when it rotates the secret; it
  is re-read when it changes, and after a 401.
- `ClientCredentials`: OAuth2 client credentials (HTTP Basic to the token URL); the access token
  is fetched again before it expires, and after a 401.

Every secret a source holds or fetches is registered with `fleet.secrets.redactor` at once, so
it is taken out of whatever is logged, stored or reported.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import anyio
import httpx

from fleet.errors import AuthError, ConfigError, TransientApiError
from fleet.secrets import redactor

# Fetch a new access token this long before the old one expires (at most 10% of its life).
_EARLY_S = 60.0


class TokenSource(Protocol):
    """Gives the token for the next request; `renew()` after the server rejected one."""

    async def token(self) -> str: ...
    async def renew(self) -> str: ...


class StaticToken:
    def __init__(self, token: str, *, section: str = "api") -> None:
        redactor.add(token)
        self._token = token
        self._section = section

    async def token(self) -> str:
        return self._token

    async def renew(self) -> str:
        s = self._section
        variable = "FLEET_" + f"{s}.token".replace(".", "__").upper()
        raise AuthError(
            "token rejected by ModelOps (HTTP 401) and it cannot be renewed: set a fresh "
            f"{variable}, or use {s}.token_file or {s}.auth = 'client_credentials'",
            status=401,
        )


class TokenFile:
    """A token kept in a file that is rewritten when the secret rotates."""

    def __init__(
        self,
        path: Path,
        *,
        section: str = "api",
        read: Callable[[Path], str] | None = None,
    ) -> None:
        """`read` gives the file's token, checked (the settings' own reader: size, encoding,
        characters), or raises ConfigError; a rotated file is read the same way."""
        self._path = path
        self._setting = f"{section}.token_file"
        self._read_token = read or self._read_plain
        self._mtime = -1.0
        self._token = ""
        self._read()

    def _read_plain(self, path: Path) -> str:
        try:
            token = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{self._setting}: cannot read {path} ({exc})") from None
        if not token:
            raise ConfigError(f"{self._setting}: {path} is empty")
        return token

    def _read(self) -> None:
        try:
            mtime = self._path.stat().st_mtime
        except OSError as exc:
            raise ConfigError(
                f"{self._setting}: cannot read {self._path} ({exc.strerror})"
            ) from None
        if mtime == self._mtime:
            return
        token = self._read_token(self._path)
        redactor.add(token)
        self._token, self._mtime = token, mtime

    async def token(self) -> str:
        self._read()
        return self._token

    async def renew(self) -> str:
        before = self._token
        self._mtime = -1.0  # read it again even if the clock did not move
        self._read()
        if self._token == before:
            raise AuthError(
                f"token rejected by ModelOps (HTTP 401), and {self._path} still holds the same "
                "token; rotate the secret",
                status=401,
            )
        return self._token


class ClientCredentials:
    """OAuth2 client credentials: POST to the token URL with HTTP Basic, cache until expiry."""

    def __init__(
        self,
        token_url: str,
        client_id: str,
        client_secret: str,
        *,
        clock: Callable[[], float] = time.monotonic,
        section: str = "api",
    ) -> None:
        redactor.add(client_secret)
        self._section = section
        self._http: httpx.AsyncClient | None = None
        self._url = token_url
        self._auth = httpx.BasicAuth(client_id, client_secret)
        self._clock = clock
        self._lock = anyio.Lock()
        self._token: str | None = None
        self._renew_at = 0.0
        self.fetched = 0

    def attach(self, http: httpx.AsyncClient) -> None:
        """Fetch tokens over the API client's connections (same TLS settings)."""
        self._http = http

    async def token(self) -> str:
        if self._token is not None and self._clock() < self._renew_at:
            return self._token
        return await self._fetch(stale=self._token)

    async def renew(self) -> str:
        return await self._fetch(stale=self._token)

    async def _fetch(self, stale: str | None) -> str:
        # One fetch for everyone: hundreds of requests may find the token expired at once.
        async with self._lock:
            if self._token is not None and self._token != stale:
                return self._token
            if self._http is None:
                raise RuntimeError("ClientCredentials used before attach()")
            try:
                response = await self._http.post(
                    self._url, data={"grant_type": "client_credentials"}, auth=self._auth
                )
            except httpx.TransportError as exc:
                raise TransientApiError(
                    f"cannot reach the token URL {self._url}: {exc or type(exc).__name__}"
                ) from exc
            if response.status_code in {400, 401, 403}:
                raise AuthError(
                    f"the token URL refused the client credentials (HTTP {response.status_code});"
                    f" check {self._section}.client_id and the client secret",
                    status=response.status_code,
                )
            if response.status_code >= 300:  # noqa: PLR2004
                raise TransientApiError(
                    f"the token URL answered HTTP {response.status_code}",
                    status=response.status_code,
                )
            token, lifetime = _read_token_answer(response)
            redactor.add(token)
            self._token = token
            self._renew_at = self._clock() + lifetime - min(_EARLY_S, lifetime / 10)
            self.fetched += 1
            return token


def _read_token_answer(response: httpx.Response) -> tuple[str, float]:
    try:
        data = response.json()
    except (ValueError, RecursionError):
        raise AuthError("the token URL did not answer with JSON") from None
    token = data.get("access_token") if isinstance(data, dict) else None
    if not isinstance(token, str) or not token:
        raise AuthError("the token URL's answer has no access_token")
    lifetime = data.get("expires_in", 300)
    if not isinstance(lifetime, int | float) or lifetime <= 0:
        lifetime = 300
    return token, float(lifetime)
