"""structlog set-up: JSON lines off a terminal, readable lines on one, secrets redacted
(by `fleet.secrets.redactor`, the one redaction place, re-exported here).

Every event name is a fixed dotted string (`fleet.stage.submitted`); the model's story is told
by the `run_id`, `model_id` and `stage` that lifecycle code binds with structlog.contextvars.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog

from fleet.secrets import Redactor, redactor


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
        # Not cached: a cached logger keeps the configuration of its first use for the life
        # of the process, so a second `configure` (another level, a program that calls
        # run_batch twice, a test) would be ignored by every module that had logged. fleet
        # logs a few lines per stage; assembling the logger each time costs nothing visible.
        cache_logger_on_first_use=False,
    )


__all__ = ["Redactor", "configure", "redactor"]
