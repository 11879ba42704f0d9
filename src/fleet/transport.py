"""The connections fleet sends over: httpx's API on aiohttp's pool, with failures sorted.

httpx-aiohttp maps every `aiohttp.ClientConnectionError`, a server that hung up after reading
the request included, to `httpx.ConnectTimeout`, which the client reads as "never sent" and
may send again: a POST would then be applied twice. `Transport` keeps httpx-aiohttp's pool
and settings but sends the request itself and sorts aiohttp's failures as the client relies
on: only a connection that was never made is a connect error; any other failure is a read
error, whose outcome is unknown. It speaks httpx's exceptions only; `session.py` turns
them into fleet's. `HttpOptions` are how a client's connections are made and bounded;
`Requests` how a request is built and handed to them.

aiohttp's pool costs 0.33 ms of CPU per request against httpcore's 1.1-1.35 ms (measured on
loopback, 10-50 connections), which is why fleet does not use httpx's own. httpx's client
machinery (`build_request` and `send`: URL merging and parsing, auth flows, redirects,
cookie jars) cost as much again, ~200 µs a request: `Requests` builds the same request from
parts made once and hands it to the transport the client would have used. Sending it
directly rather than through httpx-aiohttp's `handle_async_request` (its exceptions mapped,
then sorted again; its body stream wrapped in a second one) saves ~15 µs more.
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport


@dataclass(frozen=True, slots=True)
class HttpOptions:
    """How a client connects: `verify` the server's certificate (True: against the system's
    CAs; a path: against that PEM bundle); end every request within `timeout_s`; keep at most
    `max_connections` open; and send over `transport` (None: fleet's `Transport`; tests give
    an ASGI or mock one)."""

    verify: bool | str = True
    timeout_s: float = 30.0
    max_connections: int = 100
    transport: httpx.AsyncBaseTransport | None = None

    def __post_init__(self) -> None:
        if not 0 < self.timeout_s < math.inf:
            raise ValueError(f"timeout_s must be positive, not {self.timeout_s}")
        if self.max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, not {self.max_connections}")


# URLs kept built (~0.7 KB each): more than the jobs followed at once, each read again
# and again; the oldest goes first.
_URLS = 1024
# Header sets kept built: one per token and kind of request (a renewed token adds two).
_HEADER_SETS = 8


class Requests:
    """The requests of one `httpx.AsyncClient`, built as its `build_request` builds them and
    sent as its `send` sends them (fleet uses neither its redirects, auth flows nor event
    hooks): from the client's base URL, headers, timeouts and cookies, with a bearer token."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self._http = http
        self._base_url = str(http.base_url).rstrip("/")
        self._extensions = {"timeout": http.timeout.as_dict()}
        self._headers: dict[tuple[str, bool], httpx.Headers] = {}
        self._urls: dict[tuple[str, tuple[tuple[str, str], ...]], httpx.URL] = {}

    def build(
        self,
        method: str,
        path: str,
        token: str,
        params: Mapping[str, str] | None = None,
        body: Mapping[str, Any] | None = None,
    ) -> httpx.Request:
        """`method` on the base URL's `path` with `params`, and `body` as JSON."""
        json_body = body is not None
        headers = self._headers.get((token, json_body))
        if headers is None:
            headers = httpx.Headers(self._http.headers)
            headers["Authorization"] = f"Bearer {token}"
            if json_body:
                headers["Content-Type"] = "application/json"
            if len(self._headers) >= _HEADER_SETS:  # tokens renewed over a long night
                self._headers.clear()
            self._headers[token, json_body] = headers
        content = None
        if body is not None:  # as httpx encodes `json=`
            text = json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
            content = text.encode()
        request = httpx.Request(
            method,
            self._url(path, params),
            headers=headers,
            content=content,
            extensions=self._extensions,
        )
        if self._http.cookies:
            self._http.cookies.set_cookie_header(request)
        return request

    def transport(self, request: httpx.Request) -> httpx.AsyncBaseTransport:
        """The transport the client would send `request` over: its own, or a test's respx
        mock. httpx's one private name fleet uses: httpx is pinned to 0.28 (pyproject.toml)."""
        return self._http._transport_for_url(request.url)  # noqa: SLF001 - see the docstring

    def answered(self, request: httpx.Request, response: httpx.Response) -> None:
        """Keep the cookies an answer sets, as the client does."""
        if "set-cookie" in response.headers:
            response.request = request
            self._http.cookies.extract_cookies(response)

    def _url(self, path: str, params: Mapping[str, str] | None) -> httpx.URL:
        key = (path, tuple(params.items()) if params else ())
        url = self._urls.get(key)
        if url is None:
            url = httpx.URL(self._base_url + path, params=params)
            if len(self._urls) >= _URLS:
                del self._urls[next(iter(self._urls))]  # the oldest
            self._urls[key] = url
        return url


class Transport(AiohttpTransport):
    """httpx's transport API on aiohttp's pool (httpx-aiohttp's connections and settings),
    with failures sorted into "never sent" and "outcome unknown".

    A request goes to aiohttp as httpx-aiohttp sends it, less what fleet never needs
    (proxies, streamed request bodies) and with each failure sorted once, here."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if not isinstance(self.client, aiohttp.ClientSession):
            self.client = self.get_client()
        try:
            response = await self.client.request(
                request.method,
                str(request.url),
                headers=request.headers.multi_items(),
                data=request.content or None,
                allow_redirects=False,
                auto_decompress=False,  # httpx decodes what it asked for
                compress=False,
                timeout=_timeout(request),
                server_hostname=request.extensions.get("sni_hostname"),
            ).__aenter__()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _sorted_failure(exc) from exc
        return httpx.Response(
            status_code=response.status,
            headers=response.raw_headers,
            stream=_Body(response),
            request=request,
            extensions={
                "http_version": b"HTTP/1.1",
                "reason_phrase": (response.reason or "").encode(),
            },
        )


class _Body(httpx.AsyncByteStream):
    """An answer's body as aiohttp reads it, its failures sorted like the request's own."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_chunked(_CHUNK):
                yield chunk
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _sorted_failure(exc) from exc

    async def aclose(self) -> None:
        try:
            await self._response.__aexit__(None, None, None)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _sorted_failure(exc) from exc


_CHUNK = 16 * 1024
_TIMEOUTS: dict[tuple[float | None, ...], aiohttp.ClientTimeout] = {}


def _timeout(request: httpx.Request) -> aiohttp.ClientTimeout:
    """httpx's timeouts of `request` as aiohttp's (one object per set of values)."""
    given = request.extensions.get("timeout", {})
    key = (given.get("connect"), given.get("read"), given.get("pool"))
    timeout = _TIMEOUTS.get(key)
    if timeout is None:
        timeout = _TIMEOUTS[key] = aiohttp.ClientTimeout(
            sock_connect=key[0], sock_read=key[1], connect=key[2]
        )
    return timeout


def _sorted_failure(cause: BaseException) -> BaseException:
    if isinstance(cause, httpx.TransportError):
        return cause
    if not isinstance(cause, aiohttp.ClientError | TimeoutError):
        return cause
    message = str(cause) or type(cause).__name__
    if isinstance(cause, aiohttp.ConnectionTimeoutError):
        return httpx.ConnectTimeout(message)
    if isinstance(cause, aiohttp.ClientConnectorError):
        # Refused, unresolvable, or a TLS handshake that failed: nothing was sent.
        return httpx.ConnectError(message)
    if isinstance(cause, aiohttp.ServerTimeoutError):
        return httpx.ReadTimeout(message)
    return httpx.ReadError(message)


__all__ = ["HttpOptions", "Requests", "Transport"]
