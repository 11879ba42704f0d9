"""Reading a request as Spring binds it to a controller's parameters, and refusing it in
Spring's words: ids in the path and the query are UUIDs, a body is a JSON object, a list
parameter comes as "A,B" or repeated, a boolean as true/on/yes/1 or false/off/no/0."""

from __future__ import annotations

import json
import re
import uuid
from typing import TYPE_CHECKING

from fleet.sim.errors import InvalidRequestError

if TYPE_CHECKING:
    from starlette.requests import Request

    from fleet.sim.records import JsonObject

__all__ = [
    "boolean_parameter",
    "comments",
    "json_body",
    "list_parameter",
    "missing_parameter",
    "named_ids",
    "path_id",
    "query_id",
    "uuid_of",
]

_UUID = re.compile(r"[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}")
_TRUE = frozenset({"true", "on", "yes", "1"})
_FALSE = frozenset({"false", "off", "no", "0"})


async def named_ids(request: Request) -> list[str]:
    """The ids a request names in its path, its query or its body (for `note_request`)."""
    text = request.scope["path"] + "?" + request.scope["query_string"].decode("latin-1")
    if request.method == "POST":  # read once here; Starlette keeps it for the route
        text += (await request.body()).decode("latin-1")
    return [found.lower() for found in _UUID.findall(text)]


def uuid_of(value: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise InvalidRequestError(
            "Failed to convert value of type 'java.lang.String' to required type "
            f"'java.util.UUID'; Invalid UUID string: {value}"
        ) from None


def path_id(request: Request, name: str) -> str:
    return uuid_of(str(request.path_params[name]))


def missing_parameter(name: str, java_type: str) -> str:
    return (
        f"Required request parameter '{name}' for method parameter type {java_type} is not present"
    )


def query_id(request: Request, name: str) -> str:
    value = request.query_params.get(name)
    if value is None:
        raise InvalidRequestError(missing_parameter(name, "UUID"))
    return uuid_of(value)


def list_parameter(request: Request, name: str) -> frozenset[str]:
    """A List<String> parameter: Spring binds it from "A,B" and from repeated ones alike."""
    values = frozenset(
        item.strip()
        for value in request.query_params.getlist(name)
        for item in value.split(",")
        if item.strip()
    )
    if not values:
        raise InvalidRequestError(missing_parameter(name, "List"))
    return values


def boolean_parameter(request: Request, name: str) -> bool:
    value = request.query_params.get(name)
    if value is None:
        raise InvalidRequestError(missing_parameter(name, "Boolean"))
    if value.strip().lower() not in _TRUE | _FALSE:
        raise InvalidRequestError(
            "Failed to convert value of type 'java.lang.String' to required type "
            f"'java.lang.Boolean'; Invalid boolean value [{value}]"
        )
    return value.strip().lower() in _TRUE


async def json_body(request: Request) -> JsonObject:
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise InvalidRequestError(f"JSON parse error: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidRequestError("JSON parse error: the request body must be a JSON object")
    return body


def comments(body: JsonObject) -> str:
    """An approval's or rejection's comments, stored as given: plain text (the official
    client) or base64 (the Airflow tutorial)."""
    value = body.get("comments", "")
    if not isinstance(value, str):
        raise InvalidRequestError("comments must be a string")
    return value
