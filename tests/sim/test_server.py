from __future__ import annotations

import anyio
import httpx
import pytest

from fleet.sim import ManualClock, SimSettings, build, serve, serve_forever

SETTINGS = SimSettings(models=3)
HEADERS = {"Authorization": f"Bearer {SETTINGS.token}", "AOA-Project-ID": SETTINGS.project_id}


async def test_serve_listens_on_loopback_and_stops():
    """serve() binds a free loopback port, answers over real HTTP, and closes on exit."""
    _, app = build(SimSettings(models=3), ManualClock())
    async with serve(app) as base_url:
        assert base_url.startswith("http://127.0.0.1:")
        assert base_url.endswith("/modelops/core")
        async with httpx.AsyncClient(base_url=base_url, headers=HEADERS) as client:
            response = await client.get("/api/models")
            assert response.status_code == 200
            assert response.json()["page"]["totalElements"] == 3 + 2  # and two archived
    async with httpx.AsyncClient() as client:
        with pytest.raises(httpx.ConnectError):
            await client.get(base_url + "/api/models")


async def test_serve_reports_a_port_it_cannot_bind():
    """A port already in use is an OSError, not a hang or a process exit."""
    _, app = build(SimSettings(models=1), ManualClock())
    async with serve(app) as base_url:
        port = int(base_url.split(":")[2].split("/")[0])
        with pytest.raises(OSError, match="could not listen"):
            async with serve(app, port=port):
                pass


async def test_an_error_in_the_block_propagates_unwrapped():
    """An exception raised while serving reaches the caller as itself, after shutdown."""
    _, app = build(SimSettings(models=1), ManualClock())
    with pytest.raises(LookupError, match="boom"):
        async with serve(app):
            raise LookupError("boom")


async def test_serve_forever_stops_cleanly_when_cancelled():
    """serve_forever reports its URL, serves, and shuts down when its scope is cancelled."""
    _, app = build(SETTINGS, ManualClock())
    ready: list[str] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: serve_forever(app, port=0, on_ready=ready.append))
        while not ready:  # noqa: ASYNC110 - polling a plain list in a test
            await anyio.sleep(0.005)
        async with httpx.AsyncClient(base_url=ready[0], headers=HEADERS) as client:
            assert (await client.get("/api/models")).status_code == 200
        tg.cancel_scope.cancel()
    async with httpx.AsyncClient() as client:
        with pytest.raises(httpx.ConnectError):
            await client.get(ready[0] + "/api/models")


async def test_cancelling_during_startup_does_not_hang():
    """A caller cancelled while the server starts still gets the server stopped."""
    _, app = build(SETTINGS, ManualClock())
    with anyio.move_on_after(0):
        async with serve(app):
            pytest.fail("the block must not run once cancelled")
