"""What the emulated service refuses: each error is the HTTP status it answers with and the
message Spring would put in the body (`app.py` shapes the body, 404s of reads have none)."""

from __future__ import annotations

__all__ = ["InvalidRequestError", "NotFoundError", "ServerError", "SimError", "missing_field"]


class SimError(Exception):
    """A request the emulated service refuses; `status` is the HTTP status it answers."""

    status = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFoundError(SimError):
    status = 404


class InvalidRequestError(SimError):
    status = 400


class ServerError(SimError):
    status = 500


def missing_field(name: str, request: str) -> InvalidRequestError:
    """A request body without a field the service requires, as Spring's validation words it."""
    return InvalidRequestError(
        f"Validation failed for object='{request}'. Error count: 1. "
        f"Field '{name}': must not be null"
    )
