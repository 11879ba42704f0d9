"""One command-line flag per setting, derived from the settings schema.

Every scalar leaf of `Settings` gets a flag named by its dotted path (`--limits.train 20`,
`--api.timeout 10`); secrets, dictionaries and model lists get none.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel

from fleet.inputs import section_type
from fleet.settings import Settings


@dataclass(frozen=True, slots=True)
class FlagSpec:
    """A command-line flag derived from a setting."""

    path: str  # dotted settings path, e.g. "limits.train"
    flag: str  # e.g. "--limits.train"
    help: str
    choices: tuple[str, ...] | None
    switch: bool = False  # a boolean: the bare flag means true


def flag_specs() -> list[FlagSpec]:
    """One flag per scalar leaf setting (secrets, dicts and model lists have none)."""
    return list(_walk_flags(Settings, ""))


def _walk_flags(model: type[BaseModel], prefix: str) -> Iterator[FlagSpec]:
    for name, info in model.model_fields.items():
        path = f"{prefix}{name}"
        annotation = info.annotation
        nested = section_type(annotation)
        if nested is not None:
            yield from _walk_flags(nested, f"{path}.")
            continue
        if name in {"token", "client_secret", "models", "hyperparameters", "projects"}:
            continue
        flag = "--" + path.replace("_", "-")
        choices = _literal_choices(annotation)
        yield FlagSpec(
            path=path,
            flag=flag,
            help=info.description or "",
            choices=choices,
            switch=annotation is bool,
        )


def _literal_choices(annotation: Any) -> tuple[str, ...] | None:
    if get_origin(annotation) is Literal:
        return tuple(str(a) for a in get_args(annotation))
    if get_origin(annotation) in {tuple, list}:
        return None  # a list of values: checked by the model, not by the parser
    for arg in (annotation, *get_args(annotation)):
        if isinstance(arg, type) and issubclass(arg, Enum):
            return tuple(str(member.value) for member in arg)
    return None
