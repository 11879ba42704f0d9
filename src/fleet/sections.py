"""The tables of the settings: `[api]`, `[limits]`, `[attempts]`, `[job_timeout]`,
`[discover]` and `[projects.NAME]` with its own `limits`.

Each is a frozen `Section` (unknown keys are errors). `ApiSettings` also turns its credentials
into a token source, and refuses a token sent over plain HTTP to anything but this machine.
"""

from __future__ import annotations

import ipaddress
import ssl
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import httpx
from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import NoDecode

from fleet.auth import ClientCredentials, StaticToken, TokenFile, TokenSource
from fleet.environment import env_name
from fleet.errors import ConfigError
from fleet.inputs import (
    CONFIG_MAX_BYTES,
    PositiveFloat,
    PositiveInt,
    Section,
    check_uuid,
    clean_secret,
    read_secret,
    read_text,
    url_problem,
)
from fleet.models import DEFAULT_PROJECT, ModelEntry, unique_entries
from fleet.stages import Stage


class ApiSettings(Section):
    url: str | None = Field(None, description="ModelOps base URL, e.g. https://host/modelops/core")
    project_id: str | None = Field(None, description="ModelOps project id (UUID)")
    token: SecretStr | None = Field(None, description="bearer token: set FLEET_API__TOKEN")
    token_file: Path | None = Field(None, description="file holding the bearer token")
    verify_tls: bool = Field(default=True, description="verify the server's TLS certificate")
    ca_bundle: Path | None = Field(None, description="PEM file of CAs to trust instead of certifi")
    timeout: PositiveFloat = Field(30.0, description="seconds for one HTTP request")
    retry_attempts: PositiveInt = Field(6, description="tries of a request that failed transiently")
    retry_budget: PositiveFloat = Field(60.0, description="seconds all tries of a request may take")
    outage_budget: PositiveFloat = Field(
        600.0, description="seconds the server may fail every request before the run stops"
    )
    auth: Literal["bearer", "client_credentials"] = Field(
        "bearer", description="bearer (a token) or client_credentials (OAuth2)"
    )
    token_url: str | None = Field(None, description="OAuth2 token URL (client_credentials)")
    client_id: str | None = Field(None, description="OAuth2 client id (client_credentials)")
    client_secret: SecretStr | None = Field(
        None, description="OAuth2 client secret: set FLEET_API__CLIENT_SECRET"
    )
    client_secret_file: Path | None = Field(None, description="file holding the client secret")
    allow_insecure_http: bool = Field(
        default=False, description="allow http:// to hosts other than this machine"
    )

    @field_validator("url", "token_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        # Never echoed: a URL may carry a password.
        problem = url_problem(value)
        if problem is not None:
            raise ValueError(problem)
        if urlsplit(value).password is not None or "@" in urlsplit(value).netloc:
            raise ValueError(
                "must not hold a user or password (user:password@); the token or the client "
                "credentials authenticate"
            )
        return value.rstrip("/")

    @field_validator("token", "client_secret")
    @classmethod
    def _secret(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        """Surrounding whitespace dropped (a secret from a file ends with a newline); what is
        left must be sendable in an HTTP header. An empty one is reported where it is needed."""
        if value is None:
            return None
        return SecretStr(clean_secret(value.get_secret_value(), space=info.field_name != "token"))

    @model_validator(mode="after")
    def _plain_http_only_to_loopback(self) -> ApiSettings:
        for name in ("url", "token_url"):
            value = getattr(self, name)
            if value and value.startswith("http://") and not self.allow_insecure_http:
                host = httpx.URL(value).host
                if not is_loopback(host):
                    raise ValueError(
                        f"{name} sends the token unencrypted to {host}: use https://, "
                        "or set api.allow_insecure_http = true if you really mean it"
                    )
        return self

    def token_source(self, section: str = "api") -> TokenSource:
        """Where requests get their bearer token from, per `auth`; errors name `section`
        (`api`, or a project's `projects.NAME.api`)."""
        s = section
        if self.auth == "client_credentials":
            if not self.token_url or not self.client_id:
                raise ConfigError(
                    f"{s}.auth = client_credentials needs {s}.token_url and {s}.client_id"
                )
            return ClientCredentials(
                self.token_url, self.client_id, self._client_secret(s), section=s
            )
        if self.token is not None:
            return StaticToken(self.bearer(s), section=s)
        if self.token_file is not None:
            setting = f"{s}.token_file"
            return TokenFile(
                self.token_file, section=s, read=lambda path: read_secret(path, setting)
            )
        raise ConfigError(f"{s}.token: missing; set {env_name(s + '.token')} or {s}.token_file")

    def _client_secret(self, s: str) -> str:
        if self.client_secret is not None and self.client_secret.get_secret_value().strip():
            return self.client_secret.get_secret_value()
        if self.client_secret_file is not None:
            return read_secret(self.client_secret_file, f"{s}.client_secret_file")
        raise ConfigError(
            f"{s}.client_secret: missing; set {env_name(s + '.client_secret')} "
            f"or {s}.client_secret_file"
        )

    def secrets(self) -> list[str]:
        """The secrets given in the settings themselves (files are read by their sources)."""
        return [
            secret.get_secret_value()
            for secret in (self.token, self.client_secret)
            if secret is not None and secret.get_secret_value()
        ]

    @field_validator("project_id")
    @classmethod
    def _project(cls, value: str | None) -> str | None:
        return None if value is None else check_uuid(value)

    def bearer(self, section: str = "api") -> str:
        """The token, from FLEET_API__TOKEN (or the file) or from `api.token_file`."""
        s, variable = section, env_name(section + ".token")
        if self.token is not None:
            if not self.token.get_secret_value().strip():
                raise ConfigError(f"{s}.token: {variable} is empty; set the token")
            return self.token.get_secret_value()
        if self.token_file is None:
            raise ConfigError(f"{s}.token: missing; set {variable} or {s}.token_file")
        return read_secret(self.token_file, f"{s}.token_file")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _PerStage(Section):
    """One number per stage, looked up by stage."""

    def of(self, stage: Stage) -> int:
        value: int = getattr(self, stage.value)
        return value


class Limits(Section):
    """A stage's own bound, within `jobs`; unset: none (the job cap bounds it)."""

    train: PositiveInt | None = Field(None, description="training jobs running at once")
    evaluate: PositiveInt | None = Field(None, description="evaluation jobs running at once")
    approve: PositiveInt | None = Field(None, description="approval calls at once")
    deploy: PositiveInt | None = Field(None, description="deployment jobs running at once")
    retire: PositiveInt | None = Field(None, description="retirement jobs running at once")

    def of(self, stage: Stage) -> int | None:
        value: int | None = getattr(self, stage.value)
        return value


class Attempts(_PerStage):
    """Tries of a stage whose remote job ends in ERROR (1: no retry)."""

    train: PositiveInt = Field(1, description="tries of a training that ends in ERROR")
    evaluate: PositiveInt = Field(1, description="tries of an evaluation that ends in ERROR")
    approve: PositiveInt = Field(1, description="tries of an approval")
    deploy: PositiveInt = Field(1, description="tries of a deployment that ends in ERROR")
    retire: PositiveInt = Field(1, description="tries of a retirement that ends in ERROR")


class JobTimeouts(Section):
    """Seconds a remote job may take before its stage fails (the night goes on).

    No client version has a cancel endpoint: a job past its timeout is left to the server,
    and its stage fails, so that nothing waits on it for ever.
    """

    train: PositiveFloat = Field(43_200.0, description="seconds a training job may take")
    evaluate: PositiveFloat = Field(43_200.0, description="seconds an evaluation job may take")
    deploy: PositiveFloat = Field(3_600.0, description="seconds a deployment job may take")
    retire: PositiveFloat = Field(3_600.0, description="seconds a retirement job may take")
    score: PositiveFloat = Field(
        3_600.0,
        description="seconds retire_mode = deployed waits for the deployment's scoring job",
    )


class Discovery(Section):
    """Select the project's models from the API instead of listing them."""

    names: Annotated[tuple[str, ...], NoDecode] = Field(
        (), description="name globs of the models to take, comma-separated"
    )
    exclude: Annotated[tuple[str, ...], NoDecode] = Field(
        (), description="name globs of the models to leave out, comma-separated"
    )

    @field_validator("names", "exclude", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value


class ProjectLimits(Limits):
    """A project's own bounds; a setting left out shares the run's (`concurrency`, `jobs`,
    `[limits]`)."""

    concurrency: PositiveInt | None = Field(
        None, description="this project's models in flight at once (within concurrency)"
    )
    jobs: PositiveInt | None = Field(
        None, description="this project's remote jobs running at once (within jobs)"
    )


class ProjectSettings(Section):
    """A `[projects.NAME]` table: one ModelOps project, its models, and maybe its own limits.

    `api` is `[api]` with the project's own keys over it (see `_inherit_api`): a second project
    on the same server needs only its `project_id` and its token.
    """

    api: ApiSettings = Field(default_factory=ApiSettings)
    models: tuple[ModelEntry, ...] = ()
    models_file: Path | None = None
    discover: Discovery = Field(default_factory=Discovery)
    # Overrides of [defaults] for the project's models (its datasets, say), checked on load.
    defaults: dict[str, Any] = Field(default_factory=dict)
    limits: ProjectLimits = Field(default_factory=ProjectLimits)

    @field_validator("models")
    @classmethod
    def _unique_models(cls, value: tuple[ModelEntry, ...]) -> tuple[ModelEntry, ...]:
        return unique_entries(value)

    def has_models(self) -> bool:
        return bool(self.models or self.models_file or self.discover.names)


def check_ca_bundle(path: Path, setting: str) -> None:
    """The bundle is a file of PEM certificates the TLS library takes (it would otherwise fail
    at the first request, with a traceback)."""
    if not path.is_file():
        raise ConfigError(f"{setting}: {path} is not a readable file")
    read_text(path, f"{setting} {path}", CONFIG_MAX_BYTES)
    try:
        ssl.create_default_context().load_verify_locations(cafile=str(path))
    except (ssl.SSLError, OSError):
        raise ConfigError(
            f"{setting}: {path} holds no PEM certificate (-----BEGIN CERTIFICATE-----) that "
            "can be read; name the CA bundle file"
        ) from None


def models_section(project: str) -> str:
    """Where a project's models are: `models` for the default one."""
    return "models" if project == DEFAULT_PROJECT else f"projects.{project}.models"


def api_section(project: str) -> str:
    """Where a project's API settings are: `api` for the default one."""
    return "api" if project == DEFAULT_PROJECT else f"projects.{project}.api"
