"""HTTP fault injection: the gateway trouble a real ModelOps sometimes answers with.

Faults before handling (429/503/500 answers, slowness) leave the world untouched. Faults after
handling are the nasty ones for a client: the request took effect, but the answer is dropped
mid-body (`drop`), held back (`delay_after`) or sent a byte at a time (`trickle`), so the client
cannot tell that it did.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import anyio
import httpx
from starlette.responses import Response

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from starlette.types import Receive, Scope, Send

    from fleet.sim.settings import SimSettings

AfterFault = Literal["drop", "delay_after", "trickle"]


@dataclass(frozen=True, slots=True)
class Fault:
    kind: str  # the key it is counted under in the stats' "faults"
    status: int
    message: str
    retry_after: int | None = None


class FaultInjector:
    """Draws, per request, whether it fails, is slow, or has its answer lost, all seeded.

    Which request gets a fault depends on arrival order, unlike job errors: HTTP faults only
    need the right rate, and a failed request changes nothing, so no test has to predict them.
    Only requests whose method is in `fault_methods` draw at all, so "the nth POST" is what
    counts when faults target POSTs.
    """

    __slots__ = ("_after", "_after_rng", "_faults", "_methods", "_rng", "_slow_rate")

    def __init__(self, settings: SimSettings) -> None:
        self._rng = random.Random(f"{settings.seed}:http-faults")  # noqa: S311 - simulation
        # A stream of its own, so turning drops on does not move the faults drawn before them.
        self._after_rng = random.Random(f"{settings.seed}:http-after")  # noqa: S311
        self._methods = frozenset(settings.fault_methods)
        retry_after = math.ceil(settings.retry_after_s)
        # Cumulative thresholds, so a single draw picks at most one fault.
        self._faults: list[tuple[float, Fault]] = []
        threshold = 0.0
        for rate, fault in (
            (settings.http_429_rate, Fault("http_429", 429, "Rate limit exceeded", retry_after)),
            (settings.http_503_rate, Fault("http_503", 503, "Service unavailable", retry_after)),
            (settings.http_500_rate, Fault("http_500", 500, "Injected internal error")),
        ):
            threshold += rate
            self._faults.append((threshold, fault))
        self._slow_rate = settings.slow_rate
        # Cumulative, trickle last: seeds without it draw as they did before it existed.
        delayed = settings.drop_rate + settings.delay_after_rate
        self._after: list[tuple[float, AfterFault]] = [
            (settings.drop_rate, "drop"),
            (delayed, "delay_after"),
            (delayed + settings.trickle_rate, "trickle"),
        ]

    def applies_to(self, method: str) -> bool:
        return method in self._methods

    def draw(self) -> Fault | None:
        roll = self._rng.random()
        for threshold, fault in self._faults:
            if roll < threshold:
                return fault
        return None

    def slow(self) -> bool:
        return self._slow_rate > 0 and self._rng.random() < self._slow_rate

    def after(self) -> AfterFault | None:
        """What happens to the answer of a request that is handled: nothing, drop, delay or
        trickle."""
        if self._after[-1][0] <= 0:
            return None  # no draw, so seeds behave as before these faults existed
        roll = self._after_rng.random()
        return next((kind for threshold, kind in self._after if roll < threshold), None)


class ConnectionDropped(httpx.RemoteProtocolError):
    """Raised by a dropped answer after its partial body, so the server closes the socket.

    It is an httpx transport error on purpose: httpx's in-process `ASGITransport` re-raises
    what the app raises, so a client on it sees the same kind of error as one on a real socket.
    `serve()` keeps uvicorn from logging it as an application error.
    """


class DroppedResponse(Response):
    """An answer cut off mid-body: full headers, half the body, then the connection is gone."""

    def __init__(self, answer: Response) -> None:
        super().__init__(answer.body, answer.status_code, media_type=answer.media_type)
        # The answer's own headers, with its true content-length, which is never satisfied.
        self.raw_headers = list(answer.raw_headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:  # noqa: ARG002
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        partial = self.body[: len(self.body) // 2]
        await send({"type": "http.response.body", "body": partial, "more_body": True})
        raise ConnectionDropped(
            f"connection dropped after {len(partial)} of {len(self.body)} body bytes"
        )


class TrickledResponse(Response):
    """An answer sent one byte every `interval_s` real seconds: each read gets something, so
    only a bound on the whole answer ends it."""

    def __init__(
        self, answer: Response, interval_s: float, sleep: Callable[[float], Awaitable[None]]
    ) -> None:
        super().__init__(answer.body, answer.status_code, media_type=answer.media_type)
        self.raw_headers = list(answer.raw_headers)
        self._interval_s = interval_s
        self._sleep = sleep

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:  # noqa: ARG002
        # Stop when the client hangs up, as Starlette's StreamingResponse does: a server cannot
        # shut down while it is still trickling to a client long gone.
        async with anyio.create_task_group() as tg:

            async def hang_up() -> None:
                while (await receive())["type"] != "http.disconnect":
                    pass
                tg.cancel_scope.cancel()

            tg.start_soon(hang_up)
            await self._trickle(send)
            tg.cancel_scope.cancel()

    async def _trickle(self, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        body = bytes(self.body)
        for index in range(len(body)):
            last = index == len(body) - 1
            await send(
                {
                    "type": "http.response.body",
                    "body": body[index : index + 1],
                    "more_body": not last,
                }
            )
            if not last:
                await self._sleep(self._interval_s)
        if not body:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
