"""Settings: one pydantic-settings model for the TOML file, FLEET_* variables and flags.

Precedence, highest first: command-line flags > environment (`FLEET_LIMITS__TRAIN=20`) >
`fleet.toml` > defaults. Every leaf setting of a scalar type gets a flag named by its dotted
path (`--limits.train 20`, `--api.timeout 10`); see `flag_specs()`. Secrets have no flag: a
token on the command line would show in `ps`.

Any mistake becomes one `ConfigError` line that names the setting, where it came from and what
is expected. Nothing here does I/O beyond reading the config, token and model files.
"""

from __future__ import annotations

import ipaddress
import os
import re
import ssl
from collections.abc import Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import httpx
from pydantic import (
    BaseModel,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    InitSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from fleet.auth import ClientCredentials, StaticToken, TokenFile, TokenSource
from fleet.errors import ConfigError
from fleet.inputs import (
    CONFIG_MAX_BYTES,
    MAX_COUNT,
    MAX_DEPTH,
    MAX_RPS,
    PositiveFloat,
    PositiveInt,
    Section,
    check_uuid,
    clean_secret,
    deep_merge,
    error_line,
    json_too_deep,
    nest,
    read_secret,
    read_text,
    read_toml,
    time_of_day,
    url_problem,
)
from fleet.models import (
    DATASETS,
    DEFAULT_PROJECT,
    Lifecycle,
    ModelEntry,
    ModelSpec,
    check_datasets,
    in_two,
    load_models_file,
    spec_of,
    unique_entries,
)
from fleet.shards import Shard
from fleet.stages import STAGE_ORDER, Stage

ENV_PREFIX = "FLEET_"
_PROJECT_NAME = re.compile(r"[a-z](?:_?[a-z0-9])*")
_PROJECT_NAME_MAX = 32
# Credentials a project replaces as a whole rather than key by key (see Settings._inherit_api).
_CREDENTIALS = (
    frozenset({"token", "token_file"}),
    frozenset({"client_secret", "client_secret_file"}),
)
# Variables fleet reads itself, outside the settings model.
_OWN_ENV = frozenset({"FLEET_CONFIG"})
DEFAULT_CONFIG = Path("fleet.toml")


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


class Limits(_PerStage):
    train: PositiveInt = Field(20, description="training jobs running at once")
    evaluate: PositiveInt = Field(20, description="evaluation jobs running at once")
    approve: PositiveInt = Field(20, description="approval calls at once")
    deploy: PositiveInt = Field(20, description="deployment jobs running at once")
    retire: PositiveInt = Field(20, description="retirement jobs running at once")


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


class ProjectLimits(Section):
    """A project's own bounds; a setting left out shares the run's (`concurrency`, `[limits]`)."""

    concurrency: PositiveInt | None = Field(
        None, description="this project's models in flight at once (within concurrency)"
    )
    train: PositiveInt | None = Field(None, description="this project's training jobs at once")
    evaluate: PositiveInt | None = Field(None, description="its evaluation jobs at once")
    approve: PositiveInt | None = Field(None, description="its approval calls at once")
    deploy: PositiveInt | None = Field(None, description="its deployment jobs at once")
    retire: PositiveInt | None = Field(None, description="its retirement jobs at once")

    def of(self, stage: Stage) -> int | None:
        value: int | None = getattr(self, stage.value)
        return value


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


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
        validate_default=True,
    )

    api: ApiSettings = Field(default_factory=ApiSettings)
    concurrency: PositiveInt = Field(100, description="models in flight at once")
    limits: Limits = Field(default_factory=Limits)
    attempts: Attempts = Field(default_factory=Attempts)
    max_failures: Annotated[int, Field(ge=0, le=MAX_COUNT)] | None = Field(
        None, description="stop admitting models after this many failed"
    )
    min_success_ratio: Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)] | None = Field(
        None, description="stop admitting models when fewer succeed (after 10 finished)"
    )
    grace_period: PositiveFloat = Field(
        30.0, description="seconds to wind down after SIGTERM/SIGINT before cancelling"
    )
    lease_ttl: PositiveFloat = Field(
        60.0, description="seconds after which a silent holder of the state file is taken over"
    )
    max_connections: PositiveInt = Field(50, description="HTTP connections to ModelOps")
    max_rps: Annotated[float, Field(gt=0, le=MAX_RPS, allow_inf_nan=False)] | None = Field(
        None, description="cap on requests per second"
    )
    poll_interval: PositiveFloat = Field(
        5.0, description="longest gap, in seconds, between two looks at a running job"
    )
    poll_floor: PositiveFloat = Field(
        0.2, description="shortest gap, in seconds, between two looks at the server's jobs"
    )
    poll_mode: Literal["each", "auto", "changes", "finder"] = Field(
        "each",
        description="each: a GET per job (what every client does); auto, changes, finder: "
        "also try batched looks, each adopted only once proven on the server",
    )
    job_timeout: JobTimeouts = Field(default_factory=JobTimeouts)
    result_wait: PositiveFloat = Field(
        60.0,
        description="seconds to keep re-reading what a finished job produced (its EVALUATED "
        "event, its deployment) before failing the stage",
    )
    stages: Annotated[tuple[Stage, ...], NoDecode] = Field(
        STAGE_ORDER, description="stages to run, comma-separated, in lifecycle order"
    )
    from_stage: Stage | None = Field(
        None, description="start at this stage from an existing version instead of training"
    )
    from_version: Literal["latest", "deployed"] = Field(
        "latest", description="the version --from-stage starts from: latest or deployed"
    )
    fail_on_reject: bool = Field(default=False, description="exit 1 when a gate rejected a model")
    # Declared before db: db's validator reads it.
    shard: Annotated[Shard | None, NoDecode] = Field(
        None, description="run only shard K of N (K/N, K from 0), in its own state file"
    )
    db: Path = Field(Path("fleet.db"), description="SQLite state file")
    progress_interval: PositiveFloat = Field(10.0, description="seconds between progress lines")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="")
    defaults: Lifecycle = Field(default_factory=Lifecycle)
    models: tuple[ModelEntry, ...] = ()
    models_file: Path | None = Field(None, description="CSV or JSONL file of models")
    discover: Discovery = Field(default_factory=Discovery)
    # More ModelOps projects in the same run, by name (see ProjectSettings).
    projects: dict[str, ProjectSettings] = Field(default_factory=dict)
    metrics_file: Path | None = Field(
        None, description="write Prometheus metrics here for node-exporter's textfile collector"
    )
    pushgateway: str | None = Field(None, description="push Prometheus metrics to this URL")
    deadline: str | None = Field(
        None, description="HH:MM after which no new training starts (in timezone)"
    )
    timezone: str = Field("UTC", description="time zone of the deadline, e.g. Europe/Berlin")
    max_duration: PositiveFloat | None = Field(
        None, description="seconds after the start past which no new training starts"
    )
    # Things worth saying once logging is set up (a secret kept in the config file, say).
    _warnings: list[str] = PrivateAttr(default_factory=list)

    @property
    def warnings(self) -> list[str]:
        return list(self._warnings)

    @field_validator("stages", mode="before")
    @classmethod
    def _split_stages(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("stages")
    @classmethod
    def _stage_run(cls, value: tuple[Stage, ...]) -> tuple[Stage, ...]:
        start = STAGE_ORDER.index(value[0]) if value else 0
        if not value or value != STAGE_ORDER[start : start + len(value)]:
            order = ",".join(STAGE_ORDER)
            raise ValueError(f"must be consecutive stages of {order}, in that order")
        return value

    def active_stages(self) -> tuple[Stage, ...]:
        """The stages this run performs: `stages`, cut at `from_stage`."""
        if self.from_stage is None:
            return self.stages
        return tuple(
            s for s in self.stages if STAGE_ORDER.index(s) >= STAGE_ORDER.index(self.from_stage)
        )

    def first_stage(self) -> Stage:
        """Where the run starts; stages before it adopt an existing version."""
        return self.active_stages()[0]

    @field_validator("shard", mode="before")
    @classmethod
    def _k_of_n(cls, value: object) -> object:
        if isinstance(value, str):
            return Shard.parse(value)
        if value is None or isinstance(value, Shard):
            return value
        raise ValueError("must be K/N: shard K (counted from 0) of N, e.g. 3/8")

    @field_validator("db")
    @classmethod
    def _shard_state_file(cls, value: Path, info: ValidationInfo) -> Path:
        """With a shard, each shard keeps its own file: fleet.db → fleet.shard-3-of-8.db."""
        shard = info.data.get("shard")
        return value if shard is None else shard.state_file(value)

    @field_validator("pushgateway")
    @classmethod
    def _gateway(cls, value: str | None) -> str | None:
        # Never echoed: a `user:password@` in it is a secret.
        if value is None:
            return None
        full = value if value.startswith(("http://", "https://")) else f"http://{value}"
        if "://" in value and not value.startswith(("http://", "https://")):
            problem: str | None = "must be host:port or an http:// or https:// URL"
        else:
            problem = url_problem(full)
        if problem is not None:
            raise ValueError(
                f"not a Pushgateway address ({problem}); give host:port or an http(s) URL, "
                "e.g. http://pushgateway:9091"
            )
        return value

    @field_validator("deadline")
    @classmethod
    def _hh_mm(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                time_of_day(value)
            except ValueError:
                raise ValueError("must be HH:MM (24-hour), e.g. 05:30") from None
        return value

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r} (e.g. UTC, Europe/Berlin)") from None
        return value

    def stop_training_at(self, started: datetime) -> datetime | None:
        """When no new training may start: the earlier of the deadline and max_duration."""
        limits: list[datetime] = []
        if self.max_duration is not None:
            limits.append(started + timedelta(seconds=self.max_duration))
        if self.deadline is not None:
            zone = ZoneInfo(self.timezone)
            local = started.astimezone(zone)
            at = datetime.combine(local.date(), time_of_day(self.deadline), zone)
            if at <= local:  # a deadline earlier than now is tomorrow morning's
                at += timedelta(days=1)
            limits.append(at)
        return min(limits) if limits else None

    @model_validator(mode="after")
    def _from_stage_in_stages(self) -> Settings:
        if not self.active_stages():
            raise ValueError(f"from_stage {self.from_stage} is after the last of the stages")
        return self

    @field_validator("models")
    @classmethod
    def _unique_models(cls, value: tuple[ModelEntry, ...]) -> tuple[ModelEntry, ...]:
        return unique_entries(value)

    @model_validator(mode="before")
    @classmethod
    def _inherit_api(cls, data: Any) -> Any:
        """Each project's `api` is `[api]` with the project's own keys over it.

        Not inherited: `project_id` (each project names its own), and a credential the project
        replaces: its own `token` or `token_file` drops both of `[api]`'s, and likewise for the
        client secret, so a project's token file is not shadowed by FLEET_API__TOKEN.
        """
        if not isinstance(data, dict) or not isinstance(data.get("projects"), Mapping):
            return data
        base = data.get("api", {})
        if isinstance(base, BaseModel):
            base = base.model_dump(exclude_unset=True)
        if not isinstance(base, Mapping):
            return data  # reported by the validation of `api`
        projects: dict[str, Any] = {}
        for name, project in data["projects"].items():
            if isinstance(project, Mapping) and isinstance(project.get("api", {}), Mapping):
                own = project.get("api", {})
                inherited = {k: v for k, v in base.items() if k != "project_id"}
                for group in _CREDENTIALS:
                    if group & own.keys():
                        inherited = {k: v for k, v in inherited.items() if k not in group}
                project = {**project, "api": {**inherited, **own}}  # noqa: PLW2901
            projects[name] = project
        return {**data, "projects": projects}

    @model_validator(mode="after")
    def _projects_are_distinct(self) -> Settings:
        if self.projects and DEFAULT_PROJECT in self.projects and self._has_default_models():
            raise ValueError(
                f"projects.{DEFAULT_PROJECT}: the name is taken by the top-level models of "
                "[api]'s project; rename the project"
            )
        where: dict[tuple[str | None, str], str] = {}
        owner: dict[str, str] = {}
        for name, project in self.every_project().items():
            self._check_project(name, project)
            key = (project.api.url, project.api.project_id or "")
            if key in where:
                raise ValueError(
                    f"{api_section(name)}.project_id: {where[key]} names the same project on the "
                    "same server; a project is configured once"
                )
            if project.api.project_id is not None:
                where[key] = name
            for entry in project.models:
                if entry.id in owner:
                    raise ValueError(in_two(entry.id, owner[entry.id], name))
                owner[entry.id] = name
        return self

    def _check_project(self, name: str, project: ProjectSettings) -> None:
        if not _PROJECT_NAME.fullmatch(name) or len(name) > _PROJECT_NAME_MAX:
            raise ValueError(
                f"projects.{name}: a project's name is 1 to 32 lower-case letters, digits "
                "and single underscores, starting with a letter (it is part of "
                "FLEET_PROJECTS__<NAME>__... variables, in logs and in reports)"
            )
        if name == DEFAULT_PROJECT and not self.projects:
            return  # [api] alone: checked by require_api, when a command needs the server
        if project.api.project_id is None and name != DEFAULT_PROJECT:
            raise ValueError(
                f"{api_section(name)}.project_id: missing; every project names its own"
            )
        try:
            Lifecycle.model_validate(deep_merge(self.defaults.model_dump(), project.defaults))
        except ValidationError as exc:
            raise ValueError(error_line(exc, prefix=f"projects.{name}.defaults")) from None
        if name != DEFAULT_PROJECT and not project.has_models():
            raise ValueError(
                f"projects.{name}.models: none; list [[projects.{name}.models]], set "
                f"projects.{name}.models_file or [projects.{name}.discover] names"
            )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,  # noqa: ARG003
        file_secret_settings: PydanticBaseSettingsSource,  # noqa: ARG003
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        environ = _environ.get()
        if environ is not None:
            env_settings = _MappingEnvSource(settings_cls, environ)
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        toml = _toml.get()
        if toml is not None:
            # The file as load_settings read and checked it (encoding, size, depth), not read
            # a second time by pydantic-settings.
            sources.append(InitSettingsSource(settings_cls, init_kwargs=dict(toml)))
        return tuple(sources)

    def _has_default_models(self) -> bool:
        return bool(self.models or self.models_file or self.discover.names)

    def every_project(self) -> dict[str, ProjectSettings]:
        """The run's projects by name: `[api]`'s own (named `default`: the top-level models)
        when there are no `[projects]` or it has models, then each `[projects.NAME]`."""
        projects: dict[str, ProjectSettings] = {}
        if not self.projects or self._has_default_models():
            projects[DEFAULT_PROJECT] = ProjectSettings.model_construct(
                api=self.api,
                models=self.models,
                models_file=self.models_file,
                discover=self.discover,
                defaults={},
                limits=ProjectLimits(),
            )
        projects.update(self.projects)
        return projects

    def require_api(self) -> None:
        """Check what `fleet run` needs that a demo or `fleet status` does not."""
        for name, project in self.every_project().items():
            api, s = project.api, api_section(name)
            if api.url is None:
                flag = " or --api.url" if s == "api" else ""
                raise ConfigError(
                    f"{s}.url: missing; set it in fleet.toml, {env_name(s + '.url')}{flag}"
                )
            if api.project_id is None:
                flag = " or --api.project-id" if s == "api" else ""
                raise ConfigError(
                    f"{s}.project_id: missing; set it in fleet.toml, "
                    f"{env_name(s + '.project_id')}{flag}"
                )
            api.token_source(s)
            if api.ca_bundle is not None:
                _check_ca_bundle(api.ca_bundle, f"{s}.ca_bundle")

    def require_paths(self) -> None:
        """The files a run writes can be written: `db` and `metrics_file` name files (not
        directories) in directories that exist, checked before anything is written."""
        for name, path in (("db", self.db), ("metrics_file", self.metrics_file)):
            if path is None:
                continue
            if path.exists() and not path.is_file():
                raise ConfigError(
                    f"{name}: {path} is a directory or device, not a file; name a file in it"
                )
            parent = path.parent
            if not parent.is_dir():
                raise ConfigError(f"{name}: directory {parent} of {path} does not exist")
            if not path.exists() and not os.access(parent, os.W_OK | os.X_OK):
                raise ConfigError(
                    f"{name}: cannot create {path}: directory {parent} is not writable"
                )

    def require_datasets(self, specs: Sequence[ModelSpec] | None = None) -> None:
        """Each stage that runs has its dataset, checked before any request: the official
        client refuses to send a training or an evaluation without one.

        Without `specs`: the configured models, and the defaults that discovered ones get.
        """
        needed = [(s, name) for s, name in DATASETS if s in self.active_stages()]
        if not needed:
            return
        if specs is None:
            for project, settings in self.every_project().items():
                if settings.discover.names:
                    base = deep_merge(self.defaults.model_dump(), settings.defaults)
                    where = (
                        "defaults" if project == DEFAULT_PROJECT else f"projects.{project}.defaults"
                    )
                    check_datasets(Lifecycle.model_validate(base), needed, where)
            specs = self.model_specs()
        for spec in specs:
            check_datasets(spec.lifecycle, needed, f"{models_section(spec.project)}[{spec.id}]")

    def model_specs(
        self, found: Mapping[str, Sequence[ModelEntry]] | None = None
    ) -> list[ModelSpec]:
        """Every model of every project, inline and from `models_file`, then those `found` by
        discovery (by project; a configured entry wins), with overrides applied."""
        specs: list[ModelSpec] = []
        owner: dict[str, str] = {}
        for name, project in self.every_project().items():
            entries = list(project.models)
            if project.models_file is not None:
                entries.extend(load_models_file(project.models_file))
            configured = {entry.id for entry in entries}
            entries.extend(e for e in (found or {}).get(name, ()) if e.id not in configured)
            base = deep_merge(self.defaults.model_dump(), project.defaults)
            prefix = models_section(name)
            for entry in entries:
                if entry.id in owner:
                    message = (
                        f"model {entry.id} is listed twice"
                        if owner[entry.id] == name
                        else in_two(entry.id, owner[entry.id], name)
                    )
                    raise ConfigError(f"{prefix}: {message}")
                owner[entry.id] = name
                specs.append(spec_of(entry, base, name, prefix))
        return specs


def _check_ca_bundle(path: Path, setting: str) -> None:
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


_toml: ContextVar[Mapping[str, Any] | None] = ContextVar("fleet_toml", default=None)
_environ: ContextVar[Mapping[str, str] | None] = ContextVar("fleet_environ", default=None)


class _MappingEnvSource(EnvSettingsSource):
    """FLEET_* variables from the mapping given to `load_settings`, not from `os.environ`."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return {k if self.case_sensitive else k.lower(): v for k, v in self._environ.items()}


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
    token = _toml.set(toml if config is not None else None)
    env_token = _environ.set(env)
    try:
        settings = Settings(**nest(flags))
    except ValidationError as exc:
        raise ConfigError(error_line(exc, prefix="", source_of=sources.of)) from None
    except SettingsError as exc:
        raise ConfigError(f"environment: {exc}") from None
    finally:
        _environ.reset(env_token)
        _toml.reset(token)
    for name, project in settings.every_project().items():
        api = project.api
        if api.token_file is not None and api.token is None:
            read_secret(api.token_file, f"{api_section(name)}.token_file")
    settings._warnings.extend(  # noqa: SLF001 - load_settings builds the object it annotates
        f"{section}.{name} is in {config}: anyone who can read the file can use it; prefer "
        f"{env_name(section + '.' + name)} or {section}.{name}_file"
        for section, table in _api_tables(toml)
        for name in ("token", "client_secret")
        if name in table
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


def env_name(path: str) -> str:
    return ENV_PREFIX + path.replace(".", "__").upper()


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


def section_type(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None
