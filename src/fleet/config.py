"""Loading the settings: the TOML file, FLEET_* variables and flags, into one `Settings`.

Precedence, highest first: command-line flags > environment (`FLEET_LIMITS__TRAIN=20`) >
`fleet.toml` > defaults. The flags are derived from the settings' schema (flags.py); secrets
have no flag: a token on the command line would show in `ps`. The schema is settings.py and
sections.py; the FLEET_* names are environment.py's.

Any mistake becomes one `ConfigError` line that names the setting, where it came from and what
is expected. Nothing here does I/O beyond reading the config, token and model files.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_settings import SettingsError

from fleet.environment import ENV_PREFIX, ENVIRON, TOML_READ, env_name
from fleet.errors import ConfigError
from fleet.inputs import (
    MAX_DEPTH,
    error_line,
    json_too_deep,
    nest,
    read_secret,
    read_toml,
    section_type,
)
from fleet.models import Lifecycle
from fleet.sections import ProjectSettings, api_section
from fleet.settings import Settings

# Variables fleet reads itself, outside the settings model.
_OWN_ENV = frozenset({"FLEET_CONFIG"})
DEFAULT_CONFIG = Path("fleet.toml")


def load_settings(
    config: Path | None = None,
    flags: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    *,
    use_default_file: bool = True,
) -> Settings:
    """Build the settings from a TOML file, the environment and dotted-path flags.

    Without `config`, FLEET_CONFIG names the file, else ./fleet.toml if there is one.
    """
    flags = dict(flags or {})
    env = os.environ if env is None else env
    if config is None and use_default_file:
        named = env.get("FLEET_CONFIG")
        config = Path(named) if named else (DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None)
    toml = read_toml(config) if config is not None else {}
    in_file = toml.get("projects")
    _reject_unknown_env(env, in_file if isinstance(in_file, dict) else {})
    for name, value in env.items():
        if name.upper().startswith(ENV_PREFIX) and json_too_deep(value):
            raise ConfigError(f"environment {name}: nested more than {MAX_DEPTH} levels deep")
    sources = _Sources(flags=flags, env=env, toml=toml, config=config)
    token = TOML_READ.set(toml if config is not None else None)
    env_token = ENVIRON.set(env)
    try:
        settings = Settings(**nest(flags))
    except ValidationError as exc:
        raise ConfigError(error_line(exc, prefix="", source_of=sources.of)) from None
    except SettingsError as exc:
        raise ConfigError(f"environment: {exc}") from None
    finally:
        ENVIRON.reset(env_token)
        TOML_READ.reset(token)
    for name, project in settings.every_project().items():
        api = project.api
        if api.token_file is not None and api.token is None:
            read_secret(api.token_file, f"{api_section(name)}.token_file")
    settings.warn(
        *(
            f"{section}.{name} is in {config}: anyone who can read the file can use it; "
            f"prefer {env_name(section + '.' + name)} or {section}.{name}_file"
            for section, table in _api_tables(toml)
            for name in ("token", "client_secret")
            if name in table
        )
    )
    return settings


def _api_tables(toml: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """Each `api` table of the file (`[api]`, `[projects.NAME.api]`) with its section path."""
    if isinstance(toml.get("api"), dict):
        yield "api", toml["api"]
    projects = toml.get("projects")
    for name, project in (projects if isinstance(projects, dict) else {}).items():
        if isinstance(project, dict) and isinstance(project.get("api"), dict):
            yield f"projects.{name}.api", project["api"]


def _known_env_names() -> set[str]:
    names = set(_OWN_ENV)
    for model, prefix in _all_sections():
        for name in model.model_fields:
            names.add(env_name(f"{prefix}{name}"))
    return names


def _known_project_env_names() -> set[str]:
    """What may follow FLEET_PROJECTS__<NAME>__: a project's settings, [defaults] keys too."""
    names = set()
    for model, prefix in (*_all_sections(ProjectSettings), *_all_sections(Lifecycle, "defaults.")):
        for name in model.model_fields:
            names.add(f"{prefix}{name}".replace(".", "__").upper())
    return names


def _all_sections(
    root: type[BaseModel] = Settings, root_prefix: str = ""
) -> Iterator[tuple[type[BaseModel], str]]:
    stack: list[tuple[type[BaseModel], str]] = [(root, root_prefix)]
    while stack:
        model, prefix = stack.pop()
        yield model, prefix
        for name, info in model.model_fields.items():
            nested = section_type(info.annotation)
            if nested is not None:
                stack.append((nested, f"{prefix}{name}."))


def _reject_unknown_env(env: Mapping[str, str], projects: Mapping[str, Any]) -> None:
    """Refuse a FLEET_* variable fleet does not read: a typo would be ignored silently.

    A project's variable (FLEET_PROJECTS__RETAIL__API__TOKEN) must name a project of the file.
    """
    known = _known_env_names()
    in_project = _known_project_env_names()
    head = env_name("projects") + "__"
    for name in sorted(env):
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX) or upper in known:
            continue
        project, _, rest = upper.removeprefix(head).partition("__")
        if upper.startswith(head) and rest in in_project:
            if project.lower() in projects:
                continue
            listed = ", ".join(projects) or "none"
            raise ConfigError(
                f"environment {name}: no project {project.lower()!r} in the config file "
                f"(its projects: {listed}); remove the variable or fix its name"
            )
        raise ConfigError(
            f"environment {name}: not a fleet setting; remove it or fix its name "
            "(nested settings use __, e.g. FLEET_LIMITS__TRAIN)"
        )


@dataclass(frozen=True, slots=True)
class _Sources:
    flags: Mapping[str, Any]
    env: Mapping[str, str]
    toml: Mapping[str, Any]
    config: Path | None

    def of(self, path: str) -> str:
        if path in self.flags:
            return "flag --" + path.replace("_", "-")
        upper = {k.upper() for k in self.env}
        parts = path.split(".")
        for depth in range(len(parts), 0, -1):
            name = env_name(".".join(parts[:depth]))
            if name in upper:
                return f"environment {name}"
        node: Any = self.toml
        for part in parts:
            if isinstance(node, list):
                break  # inside an array of tables ([[models]]): the file set it
            if not isinstance(node, dict) or part not in node:
                return "default"
            node = node[part]
        return str(self.config)
