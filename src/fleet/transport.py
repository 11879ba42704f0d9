"""The connections fleet sends over: httpx's API on aiohttp's pool, with failures sorted.

httpx-aiohttp maps every `aiohttp.ClientConnectionError`, a server that hung up after reading
the request included, to `httpx.ConnectTimeout`, which the client reads as "never sent" and
may send again: a POST would then be applied twice. `Transport` sorts them as the client
relies on: only a connection that was never made is a connect error; any other failure is a
read error, whose outcome is unknown. It speaks httpx's exceptions only; `session.py` turns
them into fleet's. `HttpOptions` are how a client's connections are made and bounded.

aiohttp's pool costs 0.33 ms of CPU per request against httpcore's 1.1-1.35 ms (measured on
loopback, 10-50 connections), which is why fleet does not use httpx's own.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from dataclasses import dataclass

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


class Transport(AiohttpTransport):
    """httpx-aiohttp, with failures sorted into "never sent" and "outcome unknown"."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            response = await super().handle_async_request(request)
        except httpx.TransportError as exc:
            raise _sorted_failure(exc.__cause__ or exc) from exc.__cause__
        except (aiohttp.ClientError, TimeoutError) as exc:  # what httpx-aiohttp leaves unmapped
            raise _sorted_failure(exc) from exc
        response.stream = _SortedFailures(response.stream)
        return response


class _SortedFailures(httpx.AsyncByteStream):
    """A response body whose read failures are sorted like the request's own."""

    def __init__(self, stream: httpx.AsyncByteStream | httpx.SyncByteStream) -> None:
        assert isinstance(stream, httpx.AsyncByteStream)
        self._stream = stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._stream:
                yield chunk
        except httpx.TransportError as exc:
            raise _sorted_failure(exc.__cause__ or exc) from exc.__cause__
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _sorted_failure(exc) from exc

    async def aclose(self) -> None:
        await self._stream.aclose()


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


__all__ = ["HttpOptions", "Transport"]
