"""structlog set-up: JSON lines off a terminal, readable lines on one, secrets redacted.

Every event name is a fixed dotted string (`fleet.stage.submitted`); the model's story is told
by the `run_id`, `model_id` and `stage` that lifecycle code binds with structlog.contextvars.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

_REDACTED = "[redacted]"


class Redactor:
    """A processor that removes known secret values from every field of every event."""

    def __init__(self) -> None:
        self._secrets: set[str] = set()

    def add(self, *secrets: str | None) -> None:
        self._secrets.update(s for s in secrets if s)

    def scrub(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, _REDACTED)
        return text

    def __call__(
        self, _logger: object, _name: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        if not self._secrets:
            return event
        for key, value in event.items():
            if isinstance(value, str):
                event[key] = self.scrub(value)
            elif not isinstance(value, int | float | bool | type(None)):
                event[key] = self.scrub(str(value))
        return event


redactor = Redactor()


class _CurrentStdout:
    """Writes to whatever `sys.stdout` is now, so a live display that redirects it still works."""

    def msg(self, message: str) -> None:
        stream: TextIO = sys.stdout
        stream.write(message + "\n")
        stream.flush()

    log = debug = info = warning = warn = error = critical = exception = msg


def configure(*, level: str = "info", json: bool | None = None) -> None:
    """Route fleet's events to stdout; JSON unless stdout is a terminal."""
    if json is None:
        json = not sys.stdout.isatty()
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redactor,
    ]
    renderer: Any
    if json:
        processors.append(structlog.processors.dict_tracebacks)
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stdout.isatty())
    structlog.configure(
        processors=[*processors, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=lambda *_: _CurrentStdout(),
        cache_logger_on_first_use=True,
    )
