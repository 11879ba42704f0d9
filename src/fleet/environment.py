"""FLEET_* environment variables: their names, and the mapping `load_settings` reads them from.

A setting's variable is FLEET_ plus its dotted path in capitals with `__` for the dots
(`FLEET_LIMITS__TRAIN`). `load_settings` takes the environment as a mapping (tests pass their
own) and hands it, with the TOML document, to `Settings`' sources through two context variables.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import ContextVar
from typing import Any

from pydantic_settings import BaseSettings, EnvSettingsSource

ENV_PREFIX = "FLEET_"

TOML_READ: ContextVar[Mapping[str, Any] | None] = ContextVar("fleet_toml", default=None)


ENVIRON: ContextVar[Mapping[str, str] | None] = ContextVar("fleet_environ", default=None)


class MappingEnvSource(EnvSettingsSource):
    """FLEET_* variables from the mapping given to `load_settings`, not from `os.environ`."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return {k if self.case_sensitive else k.lower(): v for k, v in self._environ.items()}


def env_name(path: str) -> str:
    return ENV_PREFIX + path.replace(".", "__").upper()
