"""Reading what an operator hands fleet: files, secrets, JSON, URLs, ids and bounds.

Every file is read with a size cap, as UTF-8 (a BOM allowed), and refused with one
`ConfigError` line that names it; nested values are refused past `MAX_DEPTH`. `Section` is
the base of every settings table: unknown keys are errors, values are frozen.
"""

from __future__ import annotations

import json
import re
import tomllib
import uuid
from collections.abc import Callable, Mapping
from datetime import time as dt_time
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fleet.errors import ConfigError

# Bounds of every count and duration: far beyond any real night, and within what timedelta,
# SQLite integers and the event loop's timers take (`--max-duration 1e12` overflowed a date).
MAX_COUNT = 1_000_000
MAX_SECONDS = 30 * 24 * 3600.0
MAX_RPS = 1_000_000.0
PositiveInt = Annotated[int, Field(gt=0, le=MAX_COUNT)]
PositiveFloat = Annotated[float, Field(gt=0, le=MAX_SECONDS, allow_inf_nan=False)]
Priority = Annotated[int, Field(ge=-MAX_COUNT, le=MAX_COUNT)]


# What fleet reads is refused past a size no real file reaches, so that a wrong path
# (`--config /dev/zero`) is one line, not a read that never ends.
MiB = 2**20
CONFIG_MAX_BYTES = 4 * MiB
SECRET_MAX_BYTES = 64 * 2**10
MODELS_MAX_BYTES = 64 * MiB


# Nesting of TOML tables and arrays and of JSON values (hyperparameters): deeper is a mistake
# or an attack, and Python's parsers would fail on it with a RecursionError.
MAX_DEPTH = 32
UTF8_BOM = b"\xef\xbb\xbf"


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# A run id names the run in the state file, in logs, metrics labels and file names; it is
# what resumes a night, so it is never made up when one was given (`--run-id ""`).
RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")


def check_run_id(value: str, flag: str = "--run-id") -> str:
    """`value` if it is a run id fleet accepts, else one ConfigError line."""
    if RUN_ID.fullmatch(value):
        return value
    what = "is empty (did a template expand to nothing?)" if not value else f"{value[:80]!r}"
    raise ConfigError(
        f"{flag}: {what}; a run id is 1 to 64 letters, digits, '.', '_', ':' or '-', starting "
        "with a letter or digit (leave the flag out for a new run)"
    )


def read_text(path: Path, name: str, limit: int, *, missing: str | None = None) -> str:
    """The text of a UTF-8 file (a leading BOM dropped), or one ConfigError line starting with
    `name`: not readable, larger than `limit` bytes, not UTF-8 (naming the byte's offset), or
    holding a NUL byte (a binary or UTF-16 file)."""
    try:
        with path.open("rb") as handle:
            data = handle.read(limit + 1)
    except OSError as exc:
        if missing is not None and isinstance(exc, FileNotFoundError):
            raise ConfigError(f"{name}: {missing}") from None
        raise ConfigError(f"{name}: cannot read ({exc.strerror or exc})") from None
    if len(data) > limit:
        raise ConfigError(f"{name}: larger than {_size(limit)}; is it the right file?")
    start = len(UTF8_BOM) if data.startswith(UTF8_BOM) else 0
    try:
        text = data[start:].decode("utf-8")
    except UnicodeDecodeError as exc:
        offset = start + exc.start
        raise ConfigError(
            f"{name}: not UTF-8 (byte 0x{data[offset]:02x} at offset {offset}); save it as UTF-8"
        ) from None
    nul = data.find(b"\0")
    if nul >= 0:
        raise ConfigError(f"{name}: a NUL byte at offset {nul}; is it a text file (not UTF-16)?")
    return text


def _size(limit: int) -> str:
    return f"{limit // MiB} MiB" if limit >= MiB else f"{limit // 1024} KiB"


def depth(value: object) -> int:
    """How deeply lists and mappings nest in `value` (a scalar: 0), without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, Mapping):
            node = list(node.values())
        if isinstance(node, list | tuple):
            deepest = max(deepest, level)
            stack.extend((child, level + 1) for child in node)
    return deepest


def json_too_deep(text: str) -> bool:
    """Whether JSON text nests more than `MAX_DEPTH` levels, told before parsing it (json
    would recurse). Text with fewer brackets than that cannot: it is not walked."""
    return text.count("[") + text.count("{") > MAX_DEPTH and _json_depth(text) > MAX_DEPTH


def _json_depth(text: str) -> int:
    """How deeply JSON text nests."""
    deepest = level = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            level += 1
            deepest = max(deepest, level)
        elif char in "]}":
            level -= 1
    return deepest


def parse_json(text: str) -> Any:
    """JSON of a models file or a variable; ValueError with what is wrong in one line."""
    if json_too_deep(text):
        raise ValueError(f"nested more than {MAX_DEPTH} levels deep")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc.msg})") from None
    except ValueError:  # an integer past Python's 4,300 digits
        raise ValueError("a number has too many digits") from None


def read_toml(path: Path) -> dict[str, Any]:
    name = f"config {path}"
    text = read_text(path, name, CONFIG_MAX_BYTES, missing="file not found; pass --config PATH")
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{name}: not valid TOML: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{name}: nested more than {MAX_DEPTH} levels deep") from None
    except ValueError:  # an integer past Python's 4,300 digits
        raise ConfigError(f"{name}: not valid TOML: a number has too many digits") from None
    if depth(document) > MAX_DEPTH:
        raise ConfigError(f"{name}: nested more than {MAX_DEPTH} levels deep")
    return document


def read_secret(path: Path, setting: str) -> str:
    text = read_text(path, f"{setting} {path}", SECRET_MAX_BYTES)
    try:
        secret = clean_secret(text, space=not setting.endswith("token_file"))
    except ValueError as exc:
        raise ConfigError(f"{setting}: {path} {exc}") from None
    if not secret:
        raise ConfigError(f"{setting}: {path} is empty")
    return secret


def clean_secret(text: str, *, space: bool) -> str:
    """`text` without surrounding whitespace (CRLF too); ValueError if what is left cannot be
    sent in an HTTP header. The message never holds the secret."""
    secret = text.strip()
    for char in secret:
        if not char.isascii():
            raise ValueError(
                "holds a non-ASCII character; a token or secret is visible ASCII (was it "
                "copied from a document with typographic characters?)"
            )
        if not char.isprintable() or (char == " " and not space):
            raise ValueError(
                "holds whitespace or a control character inside; a token is one line of "
                "visible ASCII characters (was it wrapped, or two values joined?)"
            )
    return secret


def url_problem(url: str) -> str | None:
    """What is wrong with an http(s) URL, in words that do not repeat it (it may hold a
    password), or None."""
    if any(char.isspace() or not char.isprintable() for char in url):
        return "holds whitespace or a control character"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        return "not a valid URL (check its port and brackets)"
    if parts.scheme not in {"http", "https"}:
        return "must be an http:// or https:// URL"
    if not parts.hostname:
        return "has no host name"
    return None


def nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for path, value in flat.items():
        node = nested
        *parents, leaf = path.split(".")
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    return nested


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def time_of_day(text: str) -> dt_time:
    hours, _, minutes = text.partition(":")
    if not (hours.isdigit() and minutes.isdigit() and len(minutes) == 2):  # noqa: PLR2004
        raise ValueError(text)
    return dt_time(int(hours), int(minutes))


def check_uuid(value: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise ValueError(f"{value!r} is not a UUID") from None


def error_line(
    exc: ValidationError, prefix: str, source_of: Callable[[str], str] | None = None
) -> str:
    """One line for a validation error: the setting, where it came from and what is wrong."""
    lines = []
    for error in exc.errors():
        loc = [str(p) for p in error["loc"] if not isinstance(p, int)]
        path = ".".join(loc)
        where = f"{prefix}.{path}" if prefix and path else (prefix or path or "settings")
        message = str(error["msg"]).removeprefix("Value error, ")
        named = _NAMED.match(message) if not path and not prefix else None
        if named:  # a check across settings names the one at fault
            path, message = named["path"], named["message"]
            where = path
        if error["type"] == "extra_forbidden":
            message = "unknown setting; check its spelling against fleet.toml's comments"
        elif error["type"] == "missing":
            message = "missing"
        source = source_of(path) if source_of is not None and path else "default"
        origin = f" (from {source})" if source != "default" else ""
        lines.append(f"{where}{origin}: {message}")
    extra = f" (and {len(lines) - 1} more)" if len(lines) > 1 else ""
    return lines[0] + extra


_NAMED = re.compile(r"(?P<path>[a-z_]+(?:\.[^\s:.]+)+): (?P<message>.*)", re.DOTALL)


def section_type(annotation: Any) -> type[BaseModel] | None:
    """The settings table a field's annotation names, if it names one (flags and FLEET_*
    names walk the schema through it)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None
