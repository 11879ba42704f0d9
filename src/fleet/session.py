"""One project's HTTP session: every send of every call, and the one boundary where httpx's
exceptions and answers become fleet's (`errors.py`).

A call is tried as `retries.py` says: its sends draw on one account, and only the sends that
may be repeated are. Each send first waits for the breaker (a server that is down) and the
throttle (a server that is overloaded), both shared by every request of the session
(`throttle.py`); it then goes out with the current bearer token, renewed once after a 401.
Its answer is read within `MAX_BODY_BYTES` and `timeout_s`, and sorted: JSON, or the fleet
error its status or failure says (transient, unknown outcome, refused, not found, ...).

Requests are built and handed to the transport by `transport.Requests`, not by
`httpx.AsyncClient`: ~250 µs of CPU per job read on loopback, where the client's
`build_request` and `send` took ~450 (aiohttp alone: ~155).
"""

from __future__ import annotations

import email.utils
import json
import ssl
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import anyio
import httpx
import structlog

from fleet.auth import TokenSource
from fleet.breaker import Breaker
from fleet.clock import SYSTEM_CLOCK, Clock
from fleet.errors import (
    ApiError,
    AuthError,
    Conflict,
    NotFound,
    OutcomeUnknown,
    PermanentApiError,
    ProtocolError,
    TransientApiError,
)
from fleet.modelops import excerpt
from fleet.retries import (
    REFUSED_STATUSES,
    RETRY_AFTER_MAX_S,
    TRANSIENT_STATUSES,
    Account,
    RetryPolicy,
    retryable,
)
from fleet.secrets import redactor
from fleet.throttle import Throttle
from fleet.transport import HttpOptions, Requests

log = structlog.get_logger("fleet.client")

# The largest answer fleet reads: a page of 100 jobs with their metadata is ~200 KB.
MAX_BODY_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class _Answer:
    """A response read whole: its status, headers and body."""

    status_code: int
    headers: httpx.Headers
    content: bytes


@dataclass(slots=True)
class ClientStats:
    """What the client sent and what went wrong, for the run's metrics."""

    requests: Counter[str] = field(default_factory=Counter)  # by HTTP method
    polls: int = 0  # GETs of one job's status
    errors: Counter[str] = field(default_factory=Counter)  # 4xx, 5xx, 429, timeout, connection
    retries: int = 0  # sends of a call after its first


@dataclass(frozen=True, slots=True, kw_only=True)
class Pacing:
    """What a session shares across its requests, and the clock its calls are measured on:
    one 429 slows every request (`throttle`), a server that is down pauses them all
    (`breaker`); `retry` says how each call is tried. `clock` times a call's failed sends,
    sleeps between them (tests give a virtual one, so no retry waits for real) and draws
    their jitter. Each default is a new one. The throttle and the breaker keep the clock
    they were built on: a test builds them on its virtual clock too."""

    throttle: Throttle = field(default_factory=Throttle)
    breaker: Breaker = field(default_factory=Breaker)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    clock: Clock = SYSTEM_CLOCK


class Session:
    """Sends the requests of one project's client over `http`, with `auth`'s token: each
    within the options' `timeout_s`, at most `max_connections` at once."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        auth: TokenSource,
        pacing: Pacing,
        options: HttpOptions,
    ) -> None:
        self._http = http
        self._auth = auth
        self._pacing = pacing
        self.throttle = pacing.throttle
        self.breaker = pacing.breaker
        # One request, from connecting to the last byte of its answer, ends within this: a
        # server that trickles its answer cannot hold a request (or the model behind it).
        self._timeout_s = options.timeout_s
        # Requests wait here rather than in the connection pool, whose queue costs
        # O(connections x waiting requests) on every request (a third of fleet's CPU at 300
        # models in flight before this). A free slot is taken without giving way to the
        # loop (`fast_acquire`): a request gives way soon enough, on the wire (a
        # CapacityLimiter's extra round of the loop cost ~5% of fleet's CPU on a first night).
        self._slots = anyio.Semaphore(options.max_connections, fast_acquire=True)
        self._requests = Requests(http)
        self.stats = ClientStats()
        self._server_time: datetime | None = None
        self._last_date: str | None = None  # the last `Date` header read (it changes each second)

    def account(self) -> Account:
        """A new call's account, under the session's retry policy."""
        return self._pacing.retry.account()

    def server_time_floor(self) -> datetime | None:
        """A time the server's clock has certainly passed, in that clock: the latest `Date`
        header it sent, or `createdAt` of a job it just created. None before any answer.

        A floor, not an estimate of the skew: a `Date` cached for a second, or an old one, is
        still a time the server had passed; so is anything from a clock that runs fast."""
        return self._server_time

    def _saw_date(self, value: str | None) -> None:
        """A `Date` header, parsed only when it differs from the last one: once a second, not
        for every answer."""
        if value != self._last_date:
            self._last_date = value
            self.saw_server_time(_http_date(value))

    def saw_server_time(self, at: datetime | None) -> None:
        if at is not None and (self._server_time is None or at > self._server_time):
            self._server_time = at

    async def send(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Mapping[str, Any] | None = None,
        account: Account | None = None,
    ) -> object:
        """The answer's JSON, from as many sends as the call's account allows (retries.py).

        Each send waits for the breaker and the throttle first; that wait costs the call
        nothing, and neither does a send the breaker let out as its probe of a server that
        is down: only the call's own failed sends, and the waits after them, are charged.
        """
        pacing = self._pacing
        account = account if account is not None else pacing.retry.account()
        while True:
            probe = await self._admit(path)
            started = pacing.clock.now()
            try:
                return await self._send_once(method, path, params=params, body=body)
            except TransientApiError as exc:
                if probe and retryable(exc):
                    wait = 0.0  # the outage goes on: wait for the breaker again
                else:
                    account.charge(pacing.clock.now() - started)
                    next_wait = account.wait_after(exc, pacing.clock.rng)
                    if next_wait is None:
                        raise
                    wait = next_wait
                self.stats.retries += 1
                log.info(
                    "fleet.call.retrying",
                    method=method,
                    path=path,
                    failures=account.failures,
                    probe=probe,
                    wait_s=round(wait, 3),
                    error=str(exc),
                )
            await pacing.clock.sleep(wait)

    async def _admit(self, path: str) -> bool:
        """Wait for the breaker, then the throttle; True when this send is the breaker's probe
        of a server that is down (it lets nothing else out while open)."""
        await self.breaker.admit(path)
        probe = self.breaker.is_open
        try:
            await self.throttle.wait()
        except BaseException:
            self.breaker.abandon()
            raise
        return probe

    async def _send_once(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None,
        body: Mapping[str, Any] | None,
    ) -> object:
        """One send (the breaker and the throttle have let it out), sorted into fleet's errors."""
        sent_at = self.throttle.now()
        self.stats.requests[method] += 1
        if method == "GET" and path.startswith("/api/jobs"):
            self.stats.polls += 1
        try:
            async with self._slots:
                token = await self._auth.token()
                response = await self._request(method, path, token, params, body)
                if response.status_code == 401:  # noqa: PLR2004
                    # Once: an expired or rotated token gets renewed and the request sent
                    # again (a 401 was not applied); a second 401 stops the run.
                    token = await self._auth.renew()
                    response = await self._request(method, path, token, params, body)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            self.stats.errors["connection"] += 1
            if _untrusted_certificate(exc):
                # No retry will change the certificate: say what to do, and stop.
                raise ApiError(
                    f"the TLS certificate of {self._http.base_url} is not trusted "
                    f"({_describe(exc)}); set api.ca_bundle to the PEM file of the CA that "
                    "signed it",
                    method=method,
                    path=path,
                ) from exc
            # A connection not made is the server's failure, whatever the resource.
            self.breaker.failure(None)
            # The request never left this machine: nothing can have been applied.
            raise TransientApiError(
                f"cannot reach ModelOps at {self._http.base_url}: {_describe(exc)}",
                method=method,
                path=path,
            ) from exc
        except httpx.TransportError as exc:
            self.stats.errors[
                "timeout" if isinstance(exc, httpx.TimeoutException) else "connection"
            ] += 1
            self.breaker.failure(path)
            error = OutcomeUnknown if method == "POST" else TransientApiError
            raise error(
                f"{method} {path}: no response ({_describe(exc)})", method=method, path=path
            ) from exc
        except BaseException:
            self.breaker.abandon()
            raise
        self._judge(response, path, sent_at)
        self._saw_date(response.headers.get("Date"))
        return _read(response, method, path)

    async def _request(
        self,
        method: str,
        path: str,
        token: str,
        params: Mapping[str, str] | None,
        body: Mapping[str, Any] | None,
    ) -> _Answer:
        """One exchange, bounded as a whole by the client's timeout (httpx's bounds each read)."""
        request = self._requests.build(method, path, token, params, body)
        transport = self._requests.transport(request)
        deadline = anyio.CancelScope(deadline=anyio.current_time() + self._timeout_s)
        try:
            with deadline:
                response = await transport.handle_async_request(request)
                try:
                    content = await _bounded_body(response, method, path)
                finally:
                    if not response.is_closed:  # an answer read whole closed itself
                        # Shielded: a cut-off answer still closes (and frees) its connection.
                        with anyio.CancelScope(shield=True):
                            await response.aclose()
        except httpx.TransportError as exc:
            if deadline.cancel_called:
                raise self._timed_out(method, path) from exc
            raise
        if deadline.cancel_called:
            raise self._timed_out(method, path)
        self._requests.answered(request, response)
        return _Answer(response.status_code, response.headers, content)

    def _timed_out(self, method: str, path: str) -> httpx.TimeoutException:
        return httpx.ReadTimeout(
            f"no complete answer to {method} {path} within {self._timeout_s:g} s (api.timeout)"
        )

    def _judge(self, response: _Answer, path: str, sent_at: float) -> None:
        """Tell the throttle and the breaker how the server took a request."""
        status = response.status_code
        if status >= 400:  # noqa: PLR2004
            self.stats.errors["429" if status == 429 else f"{status // 100}xx"] += 1  # noqa: PLR2004
        if status in REFUSED_STATUSES:
            retry_after = _retry_after(response.headers.get("Retry-After"))
            self.throttle.overloaded(retry_after, sent_at=sent_at)
        if status >= 500:  # noqa: PLR2004
            self.breaker.failure(path)
            return
        self.breaker.success()
        if status < 400:  # noqa: PLR2004
            self.throttle.succeeded()


async def _bounded_body(response: httpx.Response, method: str, path: str) -> bytes:
    """The (decompressed) body, refused past MAX_BODY_BYTES: a broken or hostile server
    cannot make fleet hold gigabytes in memory."""
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise ProtocolError(
            f"{method} {path}: answer of {declared} bytes is over {MAX_BODY_BYTES}",
            method=method,
            path=path,
            status=response.status_code,
        )
    chunks: list[bytes] = []
    size = 0
    # Read as it came unless the server compressed it (httpx decodes what it asked for) or
    # the transport read it already (a mock's answer).
    raw = (
        response.headers.get("Content-Encoding", "identity") == "identity"
        and not response.is_stream_consumed
    )
    async for chunk in response.aiter_raw() if raw else response.aiter_bytes():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise ProtocolError(
                f"{method} {path}: answer is over {MAX_BODY_BYTES} bytes",
                method=method,
                path=path,
                status=response.status_code,
            )
        chunks.append(chunk)
    return b"".join(chunks)


def _read(response: _Answer, method: str, path: str) -> object:
    status = response.status_code
    if status < 300:  # noqa: PLR2004
        try:
            return _json(response)
        except _Unreadable as exc:
            raise ProtocolError(
                f"{method} {path}: answer is not JSON: {excerpt(_text(response))}",
                method=method,
                path=path,
                status=status,
            ) from exc
    message = _server_message(response)
    text = f"{method} {path}: HTTP {status}" + (f": {message}" if message else "")
    if status in {401, 403}:
        raise AuthError(
            f"token rejected by ModelOps (HTTP {status}{': ' + message if message else ''}); "
            "check the token and that it may use this project",
            method=method,
            path=path,
            status=status,
        )
    if status in TRANSIENT_STATUSES or status >= 500:  # noqa: PLR2004 - every 5xx, 520-524 too
        if method == "POST" and status not in REFUSED_STATUSES:
            raise OutcomeUnknown(text, method=method, path=path, status=status)
        raise TransientApiError(
            text,
            method=method,
            path=path,
            status=status,
            retry_after=_retry_after(response.headers.get("Retry-After")),
        )
    if status == 404:  # noqa: PLR2004
        raise NotFound(text, method=method, path=path, status=status)
    if status == 409:  # noqa: PLR2004
        # Spring Data REST's answer to an optimistic-locking or integrity conflict: the
        # request was not applied, and may succeed a moment later.
        raise Conflict(text, method=method, path=path, status=status)
    raise PermanentApiError(text, method=method, path=path, status=status)


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds only; an HTTP date is rare and ignored)."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return max(0.0, min(seconds, RETRY_AFTER_MAX_S))


def _http_date(value: str | None) -> datetime | None:
    """An HTTP `Date` header as an aware datetime; None when absent or unreadable."""
    if not value:
        return None
    try:
        at = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


class _Unreadable(Exception):
    """A body that is not JSON fleet can read."""


def _json(response: _Answer) -> object:
    """The body as JSON, whatever it holds: huge numbers, deep nesting and odd bytes included."""
    try:
        return json.loads(response.content)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, digits
        raise _Unreadable from exc


def _text(response: _Answer) -> str:
    """The body as text for a message; a charset that lies cannot break an error path."""
    return response.content[:4096].decode("utf-8", errors="replace")


def _server_message(response: _Answer) -> str:
    try:
        data = _json(response)
    except _Unreadable:
        message = excerpt(_text(response))
    else:
        message = (
            str(data.get("message") or data.get("error") or "") if isinstance(data, dict) else ""
        )
    # A server or proxy that repeats the request's credentials back must not put them in an
    # error: the known secrets (`invalid api key <token>`) and anything after "Bearer".
    return redactor.scrub(message[:500])


def _untrusted_certificate(exc: BaseException) -> bool:
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def _describe(exc: httpx.TransportError) -> str:
    return str(exc) or type(exc).__name__


__all__ = ["MAX_BODY_BYTES", "ClientStats", "Pacing", "Session"]
