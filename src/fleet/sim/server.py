"""Serving the emulator over real HTTP (or HTTPS) on loopback, as an async context manager."""

from __future__ import annotations

import contextlib
import logging
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, TypedDict, Unpack

import anyio
import uvicorn

from fleet.sim.app import PREFIX
from fleet.sim.faults import ConnectionDropped

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Generator, Iterator

    from starlette.types import ASGIApp

_STARTUP_POLL_S = 0.005
_GRACEFUL_SHUTDOWN_S = 5


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        # The host program owns SIGINT/SIGTERM (fleet's two-phase shutdown); uvicorn must not
        # swallow them. Leaving `serve()` is what stops this server.
        yield


@contextlib.contextmanager
def _drops_unlogged() -> Iterator[None]:
    """Keep uvicorn from logging, as an application error, a drop the emulator meant."""

    def not_a_drop(record: logging.LogRecord) -> bool:
        return record.exc_info is None or not isinstance(record.exc_info[1], ConnectionDropped)

    # One filter per server: two servers at once must not remove each other's.
    logger = logging.getLogger("uvicorn.error")
    logger.addFilter(not_a_drop)
    try:
        yield
    finally:
        logger.removeFilter(not_a_drop)


@asynccontextmanager
async def serve(
    app: ASGIApp,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    ssl_certfile: str | None = None,
    ssl_keyfile: str | None = None,
) -> AsyncIterator[str]:
    """Serve `app` until the block exits; yields the base URL including `/modelops/core`.

    With `ssl_certfile` (PEM, the server certificate and its chain; the key too unless
    `ssl_keyfile` is given) it serves HTTPS and the URL starts with `https://`.
    """
    if ssl_keyfile is not None and ssl_certfile is None:
        raise ValueError("ssl_keyfile needs ssl_certfile")
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        lifespan="off",
        access_log=False,
        log_level="warning",
        date_header=False,  # the app's own, from the emulator's clock
        timeout_graceful_shutdown=_GRACEFUL_SHUTDOWN_S,
        ssl_certfile=ssl_certfile,
        ssl_keyfile=ssl_keyfile,
    )
    # Loaded here rather than when the server starts, so an unreadable certificate or key is
    # raised to the caller as itself, not from inside the server's task.
    config.load()
    server = _Server(config)
    scheme = "https" if ssl_certfile is not None else "http"
    # After `Config`, which (re)configures uvicorn's loggers.
    with _drops_unlogged():
        async with _serving(server, scheme, host, port) as base_url:
            yield base_url


@asynccontextmanager
async def _serving(server: _Server, scheme: str, host: str, port: int) -> AsyncIterator[str]:
    stopped = anyio.Event()
    failed: list[BaseException] = []

    async def run() -> None:
        # Shielded: when the host is cancelled, the server still gets to close its sockets.
        with anyio.CancelScope(shield=True):
            try:
                await server.serve()
            except SystemExit as exc:  # uvicorn exits the process when it cannot bind
                failed.append(exc)
            finally:
                stopped.set()

    body_error: Exception | None = None
    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        try:
            # Polling is the one wait here: uvicorn offers no startup event to wait on.
            while not server.started and not stopped.is_set():  # noqa: ASYNC110
                await anyio.sleep(_STARTUP_POLL_S)
            if server.started:
                bound_port = server.servers[0].sockets[0].getsockname()[1]
                shown_host = f"[{host}]" if ":" in host else host
                yield f"{scheme}://{shown_host}:{bound_port}{PREFIX}"
        except Exception as exc:  # noqa: BLE001 - re-raised below
            body_error = exc
        finally:
            # Also reached when cancelled during startup: the shielded server must be told.
            server.should_exit = True
            with anyio.CancelScope(shield=True):
                await stopped.wait()
    # Errors are raised outside the task group so the caller gets them as they are, not
    # wrapped in an exception group.
    if body_error is not None:
        raise body_error
    if not server.started:
        raise OSError(f"the emulator could not listen on {host}:{port}") from (
            failed[0] if failed else None
        )


class TlsFiles(TypedDict, total=False):
    """The emulator's certificate and key, as `serve` takes them (absent: plain HTTP)."""

    ssl_certfile: str | None
    ssl_keyfile: str | None


async def serve_forever(
    app: ASGIApp,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    on_ready: Callable[[str], object] | None = None,
    **tls: Unpack[TlsFiles],
) -> None:
    """Serve until cancelled; `on_ready` receives the base URL once it listens."""
    async with serve(app, host, port, **tls) as base_url:
        if on_ready is not None:
            on_ready(base_url)
        await anyio.sleep_forever()
