"""Property tests of the config loader: any file, variables or flags give settings or one
ConfigError line, never another exception."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleet.config import load_settings
from fleet.errors import ConfigError
from fleet.flags import flag_specs
from fleet.models import load_models_file
from fleet.settings import Settings

PATHS = [spec.path for spec in flag_specs()]
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(10**6), 10**6)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30)
    | st.sampled_from(["train,evaluate", "deploy,train", "Accuracy >= 0.8", "Accuracy >>", "-1"])
)


def _outcome(**kwargs: Any) -> Settings | ConfigError:
    try:
        return load_settings(use_default_file=False, **kwargs)
    except ConfigError as exc:
        message = str(exc)
        assert "\n" not in message.strip() or "(in:" in message
        assert "Traceback" not in message
        return exc


@settings(max_examples=200, deadline=None)
@given(flags=st.dictionaries(st.sampled_from(PATHS), SCALARS.map(str), max_size=6))
def test_any_flags_give_settings_or_a_config_error(flags: dict[str, str]) -> None:
    """Flag values of any shape are validated into settings or refused with ConfigError."""
    _outcome(config=None, flags=flags, env={})


@settings(max_examples=200, deadline=None)
@given(
    env=st.dictionaries(
        st.sampled_from([f"FLEET_{p.replace('.', '__').upper()}" for p in PATHS])
        | st.text(alphabet="ABCDEFGHIJ_", min_size=1, max_size=8).map(lambda s: f"FLEET_{s}"),
        st.text(max_size=20),
        max_size=5,
    )
)
def test_any_environment_gives_settings_or_a_config_error(env: dict[str, str]) -> None:
    """FLEET_* variables, known or not, with any text are validated or refused."""
    _outcome(config=None, flags={}, env=env)


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else "nan"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    entries=st.dictionaries(
        st.sampled_from(PATHS) | st.text(alphabet="abcxyz_", min_size=1, max_size=6),
        SCALARS.filter(lambda v: v is not None),
        max_size=6,
    ),
    garbage=st.text(max_size=40),
)
def test_any_toml_file_gives_settings_or_a_config_error(
    entries: dict[str, object], garbage: str
) -> None:
    """A TOML file with any keys and values (or not TOML at all) loads or is refused."""
    tables: dict[str, list[str]] = {}
    for path, value in entries.items():
        table, _, key = path.rpartition(".")
        tables.setdefault(table, []).append(f"{key} = {_toml_value(value)}")
    text = "\n".join(tables.pop("", []))
    for table, lines in tables.items():
        text += f"\n[{table}]\n" + "\n".join(lines)
    with tempfile.TemporaryDirectory() as directory:
        for body in (text, garbage):
            path = Path(directory) / "fleet.toml"
            path.write_text(body)
            _outcome(config=path, flags={}, env={})


PROJECT_PATHS = [
    "api.url",
    "api.project_id",
    "api.token_file",
    "api.timeout",
    "api.auth",
    "limits.train",
    "limits.concurrency",
    "models_file",
    "defaults.retire_mode",
    "discover.names",
    "colour",
]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    projects=st.dictionaries(
        st.text(alphabet="abAB_1-.", min_size=1, max_size=6),
        st.dictionaries(
            st.sampled_from(PROJECT_PATHS),
            SCALARS.filter(lambda v: v is not None)
            | st.just("7c0f6d2e-3b1a-4e5f-9a8b-2d4c6e8f0a1b"),
            max_size=4,
        ),
        max_size=3,
    ),
    env=st.dictionaries(
        st.sampled_from(["FLEET_PROJECTS__A__API__TOKEN", "FLEET_PROJECTS__B__LIMITS__TRAIN"]),
        st.text(max_size=10),
        max_size=2,
    ),
)
def test_any_projects_give_settings_or_a_config_error(
    projects: dict[str, dict[str, object]], env: dict[str, str]
) -> None:
    """[projects.NAME] tables with any names, keys and values load or are refused."""
    text = ""
    for name, entries in projects.items():
        tables: dict[str, list[str]] = {}
        for path, value in entries.items():
            table, _, key = path.rpartition(".")
            tables.setdefault(table, []).append(f"{key} = {_toml_value(value)}")
        quoted = _toml_value(name)
        text += f"\n[projects.{quoted}]\n" + "\n".join(tables.pop("", []))
        for table, lines in tables.items():
            text += f"\n[projects.{quoted}.{table}]\n" + "\n".join(lines)
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "fleet.toml"
        path.write_text(text)
        outcome = _outcome(config=path, flags={}, env=env)
        if isinstance(outcome, Settings):
            assert "\n" not in _what_run_would_refuse(outcome)


def _what_run_would_refuse(loaded: Settings) -> str:
    try:
        loaded.require_api()
        loaded.model_specs()
    except ConfigError as exc:
        return str(exc)
    return ""


_MODEL_LINE = b'{"id": "088d1992-06bc-46cc-9f92-c2a1c2b03ca9"}\n'
# Bytes that break decoders: invalid UTF-8, a BOM, NUL, CR, brackets, quotes and digits.
_AWKWARD = st.binary(max_size=60) | st.sampled_from(
    [b"\xef\xbb\xbf", b"\xff\xfe", b"\0", b"\r\n", b"[[[[", b"{{", b'"', b"9" * 50, b"\xe9"]
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(parts=st.lists(_AWKWARD, max_size=6))
def test_any_bytes_in_the_config_file_give_settings_or_a_config_error(parts: list[bytes]) -> None:
    """fleet.toml of any bytes (not UTF-8, NUL, BOM, deep brackets) loads or is one line."""
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "fleet.toml"
        path.write_bytes(b"".join(parts))
        _outcome(config=path, flags={}, env={})


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(parts=st.lists(_AWKWARD | st.just(_MODEL_LINE), max_size=6), csv=st.booleans())
def test_any_bytes_in_a_models_file_give_models_or_a_config_error(
    parts: list[bytes], csv: bool
) -> None:
    """A models file (CSV or JSONL) of any bytes gives models or one ConfigError line."""
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / ("models.csv" if csv else "models.jsonl")
        header = b"id,name,resources,resources.memory,hyperparameters\n" if csv else b""
        path.write_bytes(header + b"".join(parts))
        assert "\n" not in _models_refusal(path)


def _models_refusal(path: Path) -> str:
    try:
        load_models_file(path)
    except ConfigError as exc:
        return str(exc)
    return ""
