"""structlog set-up: JSON lines off a terminal, readable lines on one, secrets redacted.

Every event name is a fixed dotted string (`fleet.stage.submitted`); the model's story is told
by the `run_id`, `model_id` and `stage` that lifecycle code binds with structlog.contextvars.
"""

from __future__ import annotations

import io
import logging
import re
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any, TextIO

import structlog

_REDACTED = "[redacted]"
# Whatever follows "Bearer" (or an Authorization header's "Basic") is a credential.
_CREDENTIAL = re.compile(r"(?i)\b(bearer|authorization:\s*basic)(\s+)[A-Za-z0-9._~+/=-]{6,}")


class Redactor:
    """A processor that removes secrets from every field of every event, nested ones too.

    It knows the secrets fleet holds (tokens, client secrets, every access token fetched) and
    anything that looks like an Authorization header value.
    """

    def __init__(self) -> None:
        self._secrets: set[str] = set()

    def add(self, *secrets: str | None) -> None:
        self._secrets.update(s for s in secrets if s)

    def scrub(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, _REDACTED)
        return _CREDENTIAL.sub(rf"\1\2{_REDACTED}", text)

    def scrub_value(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.scrub(value)
        if isinstance(value, int | float | bool | type(None)):
            return value
        if isinstance(value, Mapping):
            return {self.scrub(str(k)): self.scrub_value(v) for k, v in value.items()}
        if isinstance(value, list | tuple | set | frozenset):
            return [self.scrub_value(v) for v in value]
        return self.scrub(str(value))

    def __call__(
        self, _logger: object, _name: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        for key, value in event.items():
            if key != "exc_info":  # rendered by the console renderer, scrubbed there
                event[key] = self.scrub_value(value)
        return event

    def traceback(self, sio: TextIO, exc_info: Any) -> None:
        """The console renderer's exception formatter, scrubbed like every other field."""
        buffer = io.StringIO()
        structlog.dev.plain_traceback(buffer, exc_info)
        sio.write(self.scrub(buffer.getvalue()))


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
    ]
    renderer: Any
    if json:
        # Tracebacks become data first (without frame locals, where secrets live), then the
        # redactor goes over all of it.
        processors.append(
            structlog.processors.ExceptionRenderer(
                structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
            )
        )
        processors.append(redactor)
        renderer = structlog.processors.JSONRenderer()
    else:
        processors.append(redactor)
        renderer = structlog.dev.ConsoleRenderer(
            colors=sys.stdout.isatty(), exception_formatter=redactor.traceback
        )
    structlog.configure(
        processors=[*processors, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=lambda *_: _CurrentStdout(),
        cache_logger_on_first_use=True,
    )
