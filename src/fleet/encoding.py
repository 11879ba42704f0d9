"""How the store keeps each model's lifecycle settings, so that a state file outlives its fleet.

A run started before an upgrade is resumed, reported and looked at after it. So the settings
a model runs with (`Lifecycle`) are kept in `run_models.lifecycle` as JSON beside the version
of their encoding (`run_models.encoding`), and read back tolerantly:

- a setting renamed since is read under its new name (`RENAMED`);
- a setting this fleet does not know (dropped since) is left out (`Decoded.ignored`);
- a value that no longer validates is left out too, so the setting takes its default
  (`Decoded.invalid`).

`SettingsReader` decides, for the store, what that means, because it depends on the use: an
unknown setting is left out with one warning per setting and file, and the run goes on without
it (this fleet has no such setting to act on); a value no longer valid is shown at its default
with a warning by a reader (`status`, `report`), but a run that would drive the model stops
with `StoreError`: acting on a default the run was not started with could deploy what it would
have rejected (an approval rule that no longer parses, read as none, approves every version).
A driven file logs each warning as an event (`fleet.store.setting_ignored`); a file only read
keeps them in `warnings` for its caller to show, as `status` and `report`, whose stdout is a
document, do.

Any change to `Lifecycle`'s settings (one added, dropped or renamed, a value's type or meaning
changed) raises `ENCODING` by one, and a rename adds a row to `RENAMED` under the new version;
`tests/test_encoding.py` pins the settings to the version. A file holding a newer encoding was
written by a newer fleet, whose settings this one would misread or drop: it is refused
(`NewerStateFile`), as is a newer schema (`schema.py`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from pydantic import BaseModel, ValidationError

from fleet.errors import NewerStateFile, StoreError
from fleet.inputs import parse_json, section_type
from fleet.models import Lifecycle

log = structlog.get_logger("fleet.store")

# The encoding this fleet writes, and the newest it reads.
ENCODING = 1

# The renames each encoding made, `{version: {old dotted name: new dotted name}}`, applied in
# order to settings written with an older encoding. None yet.
RENAMED: Mapping[int, Mapping[str, str]] = {}


@dataclass(frozen=True, slots=True)
class Decoded:
    """Stored settings read as this fleet's `Lifecycle`, with what had to change on the way."""

    lifecycle: Lifecycle
    renamed: tuple[tuple[str, str], ...] = ()  # (old name, new name)
    ignored: tuple[str, ...] = ()  # settings this fleet does not know, left out
    invalid: tuple[tuple[str, str], ...] = ()  # (setting, why): left out, so at their default


class SettingsReader:
    """Reads the models' settings of one open state file, saying once per setting what it did."""

    def __init__(self, path: str, *, driven: bool) -> None:
        self._path = path
        self._driven = driven
        self._noticed: set[tuple[str, str]] = set()
        self._warnings: list[str] = []
        # Most models of a run share their settings: each stored text is decoded once, and
        # its (frozen) Lifecycle shared by the models that hold it.
        self._decoded: dict[tuple[str, int], Decoded] = {}

    @property
    def warnings(self) -> tuple[str, ...]:
        return tuple(self._warnings)

    def read(self, text: str, version: int, model: str) -> Lifecycle:
        """The settings of `model` ("model NAME (ID)"), stored as `text` with `version`."""
        if version > ENCODING:  # a newer fleet wrote it since this one opened the file
            raise NewerStateFile(self._path, "settings encoding", version, ENCODING)
        decoded = self._decoded.get((text, version))
        if decoded is None:
            try:
                decoded = decode(text, version)
            except ValueError as exc:
                raise StoreError(
                    f"state file {self._path}: the settings of {model} cannot be read ({exc})"
                ) from None
            self._decoded[(text, version)] = decoded
        for old, new in decoded.renamed:
            self._notice("fleet.store.setting_renamed", old, renamed_to=new)
        for name in decoded.ignored:
            self._notice(
                "fleet.store.setting_ignored",
                name,
                warning=f"{self._path}: setting {name!r} is not one this fleet knows (dropped or "
                "renamed since the run was written); ignored",
            )
        for name, why in decoded.invalid:
            if self._driven:
                raise StoreError(
                    f"state file {self._path}: {model} was started with a value of {name!r} "
                    f"this fleet does not accept ({why}), and will not be driven with another; "
                    "finish the run with the fleet that started it, or start a new run"
                )
            self._notice(
                "fleet.store.setting_invalid",
                name,
                warning=f"{self._path}: setting {name!r} of {model} is not valid for this "
                f"fleet ({why}); shown at its default",
            )
        return decoded.lifecycle

    def _notice(self, event: str, setting: str, *, warning: str = "", **fields: str) -> None:
        """A warning (or, for a rename, an info event) once per setting: logged when driven,
        kept in `warnings` when only read."""
        if (event, setting) in self._noticed:
            return
        self._noticed.add((event, setting))
        if warning:
            self._warnings.append(warning)
        if not self._driven:
            return
        emit = log.warning if warning else log.info
        emit(event, setting=setting, db=self._path, **fields)


def encode(lifecycle: Lifecycle) -> str:
    """The settings as stored, with encoding `ENCODING`."""
    return lifecycle.model_dump_json()


def decode(text: str, version: int) -> Decoded:
    """Settings stored with encoding `version` (at most `ENCODING`) as this fleet's Lifecycle.

    ValueError, in one line, when the text is not a JSON object of settings at all.
    """
    data = parse_json(text)
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")  # noqa: TRY004 - the caller reads ValueErrors
    renamed = _renamed(data, version)
    ignored = _unknown(data, Lifecycle, "")
    invalid: list[tuple[str, str]] = []
    while True:
        try:
            lifecycle = Lifecycle.model_validate(data)
        except ValidationError as exc:
            invalid.extend(_left_out(data, exc))
            continue
        return Decoded(lifecycle, tuple(renamed), tuple(ignored), tuple(invalid))


def _renamed(data: dict[str, Any], version: int) -> list[tuple[str, str]]:
    moved = []
    for since in sorted(RENAMED):
        if version >= since:
            continue
        for old, new in RENAMED[since].items():
            if _move(data, old.split("."), new.split(".")):
                moved.append((old, new))
    return moved


def _move(data: dict[str, Any], old: Sequence[str], new: Sequence[str]) -> bool:
    """The value at `old` put at `new` (unless one is there already); False if `old` is unset."""
    node: Any = data
    for part in old[:-1]:
        node = node.get(part)
        if not isinstance(node, dict):
            return False
    if old[-1] not in node:
        return False
    value = node.pop(old[-1])
    target: Any = data
    for part in new[:-1]:
        target = target.setdefault(part, {})
        if not isinstance(target, dict):
            return True  # nowhere to put it: left out, as an unknown setting would be
    target.setdefault(new[-1], value)
    return True


def _unknown(data: dict[str, Any], model: type[BaseModel], prefix: str) -> list[str]:
    """Take the settings `model` does not have out of `data`, and name them."""
    names = []
    for key in list(data):
        if key not in model.model_fields:
            del data[key]
            names.append(f"{prefix}{key}")
            continue
        inner = section_type(model.model_fields[key].annotation)
        if inner is not None and isinstance(data[key], dict):
            names.extend(_unknown(data[key], inner, f"{prefix}{key}."))
    return names


def _left_out(data: dict[str, Any], exc: ValidationError) -> list[tuple[str, str]]:
    """Take the settings whose values do not validate out of `data`; ValueError if none can
    be (the settings as a whole are wrong), so that every round takes one out, or ends."""
    errors = exc.errors(include_url=False, include_input=False)
    left = []
    for error in errors:
        name = _drop(data, error["loc"])
        if name is not None:
            left.append((name, error["msg"]))
    if not left:
        raise ValueError(f"settings that do not validate ({errors[0]['msg']})") from None
    return left


def _drop(data: dict[str, Any], loc: tuple[int | str, ...]) -> str | None:
    """Remove the innermost setting on `loc` (a section's member, not its hyperparameters'
    keys); its dotted name, or None when `loc` names none."""
    node: dict[str, Any] = data
    model: type[BaseModel] = Lifecycle
    names: list[str] = []
    for part in loc:
        if not isinstance(part, str) or part not in node:
            return None
        names.append(part)
        inner = section_type(model.model_fields[part].annotation)
        if inner is None or not isinstance(node[part], dict) or len(names) == len(loc):
            del node[part]
            return ".".join(names)
        node, model = node[part], inner
    return None
