"""Settings: one pydantic-settings model for the TOML file, FLEET_* variables and flags.

Precedence, highest first: command-line flags > environment (`FLEET_LIMITS__TRAIN=20`) >
`fleet.toml` > defaults. Every leaf setting of a scalar type gets a flag named by its dotted
path (`--limits.train 20`, `--api.timeout 10`); see `flag_specs()`. Secrets have no flag: a
token on the command line would show in `ps`.

Any mistake becomes one `ConfigError` line that names the setting, where it came from and what
is expected. Nothing here does I/O beyond reading the config, token and model files.
"""

from __future__ import annotations

import csv
import ipaddress
import json
import os
import tomllib
import uuid
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime, timedelta
from datetime import time as dt_time
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import httpx
from pydantic import (
    BaseModel,
    ConfigDict,
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
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

from fleet.auth import ClientCredentials, StaticToken, TokenFile, TokenSource
from fleet.errors import ConfigError
from fleet.policy import Rule
from fleet.shards import Shard
from fleet.stages import STAGE_ORDER, Stage

ENV_PREFIX = "FLEET_"
# Variables fleet reads itself, outside the settings model.
_OWN_ENV = frozenset({"FLEET_CONFIG"})
DEFAULT_CONFIG = Path("fleet.toml")

PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ApiSettings(_Section):
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
        return value.rstrip("/")

    @model_validator(mode="after")
    def _plain_http_only_to_loopback(self) -> ApiSettings:
        for name in ("url", "token_url"):
            value = getattr(self, name)
            if value and value.startswith("http://") and not self.allow_insecure_http:
                host = httpx.URL(value).host
                if not _is_loopback(host):
                    raise ValueError(
                        f"{name} {value} sends the token unencrypted to {host}: use https://, "
                        "or set api.allow_insecure_http = true if you really mean it"
                    )
        return self

    def token_source(self) -> TokenSource:
        """Where requests get their bearer token from, per `auth`."""
        if self.auth == "client_credentials":
            if not self.token_url or not self.client_id:
                raise ConfigError(
                    "api.auth = client_credentials needs api.token_url and api.client_id"
                )
            return ClientCredentials(self.token_url, self.client_id, self._client_secret())
        if self.token is not None:
            return StaticToken(self.bearer())
        if self.token_file is not None:
            return TokenFile(self.token_file)
        raise ConfigError("api.token: missing; set FLEET_API__TOKEN or api.token_file")

    def _client_secret(self) -> str:
        if self.client_secret is not None and self.client_secret.get_secret_value().strip():
            return self.client_secret.get_secret_value()
        if self.client_secret_file is not None:
            return _read_secret(self.client_secret_file, "api.client_secret_file")
        raise ConfigError(
            "api.client_secret: missing; set FLEET_API__CLIENT_SECRET or api.client_secret_file"
        )

    @field_validator("project_id")
    @classmethod
    def _project(cls, value: str | None) -> str | None:
        return None if value is None else _check_uuid(value)

    def bearer(self) -> str:
        """The token, from FLEET_API__TOKEN (or the file) or from `api.token_file`."""
        if self.token is not None:
            if not self.token.get_secret_value().strip():
                raise ConfigError("api.token: FLEET_API__TOKEN is empty; set the token")
            return self.token.get_secret_value()
        if self.token_file is None:
            raise ConfigError("api.token: missing; set FLEET_API__TOKEN or api.token_file")
        return _read_token(self.token_file)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _PerStage(_Section):
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


class Resources(_Section):
    memory: str = Field("1g", description="memory for the job's container")
    cpu: str = Field("1", description="CPUs for the job's container")


RetireMode = Literal["previous", "deployed", "none"]


class Lifecycle(_Section):
    """What every model's lifecycle uses, unless a model overrides it."""

    train_dataset_id: str | None = Field(None, description="dataset to train on")
    evaluate_dataset_id: str | None = Field(None, description="dataset to evaluate on")
    dataset_connection_id: str | None = Field(None, description="dataset connection")
    dataset_template_id: str | None = Field(None, description="dataset template (deploy)")
    hyperparameters: dict[str, Any] = Field(default_factory=dict, description="training")
    resources: Resources = Field(default_factory=Resources)
    docker_image: str | None = Field(None, description="job image; the model's own if unset")
    engine_type: Literal["DOCKER_BATCH", "IN_VANTAGE"] = Field("DOCKER_BATCH", description="")
    engine: str = Field("python-batch", description="python-batch, byom, ...")
    language: str | None = Field(None, description="model language sent on deploy")
    cron: str = Field("@once", description="@once, @manual or a cron expression")
    publish_only: bool = Field(default=False, description="publish without scheduling")
    approval_comments: str = Field("Approved by fleet", description="comment on approval")
    approval_rule: str | None = Field(
        None, description="approve only versions whose metrics pass it; reject the others"
    )
    on_missing_metric: Literal["reject", "fail"] = Field(
        "reject", description="a metric the rule needs is missing: reject, or fail the model"
    )
    no_champion: Literal["allow", "reject"] = Field(
        "allow", description="champion.* comparisons when nothing is deployed yet"
    )
    monitor_rule: str | None = Field(
        None, description="after evaluation, flag versions whose metrics fail it"
    )
    trained_model_id: str | None = Field(
        None, description="the version --from-stage starts from (default: see from_version)"
    )
    retire_mode: RetireMode = Field("previous", description="previous, deployed or none")

    @field_validator(
        "train_dataset_id",
        "evaluate_dataset_id",
        "dataset_connection_id",
        "dataset_template_id",
        "trained_model_id",
    )
    @classmethod
    def _ids(cls, value: str | None) -> str | None:
        return None if value is None else _check_uuid(value)

    @field_validator("approval_rule", "monitor_rule")
    @classmethod
    def _rule(cls, value: str | None) -> str | None:
        if value is not None:
            Rule.parse(value)  # a RuleError is a ValueError: reported with its column
        return value

    def approval(self) -> Rule | None:
        return None if self.approval_rule is None else Rule.parse(self.approval_rule)

    def monitor(self) -> Rule | None:
        return None if self.monitor_rule is None else Rule.parse(self.monitor_rule)


class ModelEntry(BaseModel):
    """A `[[models]]` entry: an id, a display name, and overrides of any lifecycle setting."""

    model_config = ConfigDict(extra="allow", frozen=True)

    id: str
    name: str | None = None
    tags: tuple[str, ...] = ()
    priority: int = 0

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        return _check_uuid(value)

    @field_validator("tags", mode="before")
    @classmethod
    def _split_tags(cls, value: object) -> object:
        if isinstance(value, str):  # a CSV cell: "eu, large"
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    def overrides(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """One model of a run with its lifecycle settings resolved."""

    id: str
    name: str
    lifecycle: Lifecycle
    tags: tuple[str, ...] = ()
    priority: int = 0


class Discovery(_Section):
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
    max_failures: Annotated[int, Field(ge=0)] | None = Field(
        None, description="stop admitting models after this many failed"
    )
    min_success_ratio: Annotated[float, Field(gt=0, le=1)] | None = Field(
        None, description="stop admitting models when fewer succeed (after 10 finished)"
    )
    grace_period: PositiveFloat = Field(
        30.0, description="seconds to wind down after SIGTERM/SIGINT before cancelling"
    )
    lease_ttl: PositiveFloat = Field(
        60.0, description="seconds after which a silent holder of the state file is taken over"
    )
    max_connections: PositiveInt = Field(50, description="HTTP connections to ModelOps")
    max_rps: PositiveFloat | None = Field(None, description="cap on requests per second")
    poll_interval: PositiveFloat = Field(
        5.0, description="longest gap, in seconds, between two looks at a running job"
    )
    poll_floor: PositiveFloat = Field(
        0.2, description="shortest gap, in seconds, between two looks at the server's jobs"
    )
    poll_mode: Literal["auto", "changes", "finder", "each"] = Field(
        "auto", description="how one look asks about many jobs (auto: the best the server has)"
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
        seen: set[str] = set()
        for entry in value:
            if entry.id in seen:
                raise ValueError(f"model {entry.id} is listed twice")
            seen.add(entry.id)
        return value

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
        toml_path = _toml_path.get()
        if toml_path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_path))
        return tuple(sources)

    def require_api(self) -> None:
        """Check what `fleet run` needs that a demo or `fleet status` does not."""
        if self.api.url is None:
            raise ConfigError("api.url: missing; set it in fleet.toml, FLEET_API__URL or --api.url")
        if self.api.project_id is None:
            raise ConfigError(
                "api.project_id: missing; set it in fleet.toml, FLEET_API__PROJECT_ID "
                "or --api.project-id"
            )
        self.api.token_source()
        if self.api.ca_bundle is not None and not self.api.ca_bundle.is_file():
            raise ConfigError(f"api.ca_bundle: {self.api.ca_bundle} is not a readable file")

    def model_specs(self) -> list[ModelSpec]:
        """Every model of the config, inline and from `models_file`, with overrides applied."""
        entries = list(self.models)
        if self.models_file is not None:
            entries.extend(load_models_file(self.models_file))
        specs: list[ModelSpec] = []
        seen: set[str] = set()
        base = self.defaults.model_dump()
        for entry in entries:
            if entry.id in seen:
                raise ConfigError(f"models: model {entry.id} is listed twice")
            seen.add(entry.id)
            merged = _deep_merge(base, entry.overrides())
            try:
                lifecycle = Lifecycle.model_validate(merged)
            except ValidationError as exc:
                raise ConfigError(
                    _first_error_line(exc, prefix=f"models[{entry.id}]", sources=None)
                ) from None
            specs.append(
                ModelSpec(
                    id=entry.id,
                    name=entry.name or entry.id,
                    lifecycle=lifecycle,
                    tags=entry.tags,
                    priority=entry.priority,
                )
            )
        return specs


_toml_path: ContextVar[Path | None] = ContextVar("fleet_toml_path", default=None)
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
    toml = _read_toml(config) if config is not None else {}
    _reject_unknown_env(env)
    sources = _Sources(flags=flags, env=env, toml=toml, config=config)
    token = _toml_path.set(config)
    env_token = _environ.set(env)
    try:
        settings = Settings(**_nest(flags))
    except ValidationError as exc:
        raise ConfigError(_first_error_line(exc, prefix="", sources=sources)) from None
    except SettingsError as exc:
        raise ConfigError(f"environment: {exc}") from None
    finally:
        _environ.reset(env_token)
        _toml_path.reset(token)
    if settings.api.token_file is not None and settings.api.token is None:
        _read_token(settings.api.token_file)
    api_table = toml.get("api")
    api_in_file: dict[str, Any] = api_table if isinstance(api_table, dict) else {}
    settings._warnings.extend(  # noqa: SLF001 - load_settings builds the object it annotates
        f"api.{name} is in {config}: anyone who can read the file can use it; prefer "
        f"{env_name('api.' + name)} or api.{name}_file"
        for name in ("token", "client_secret")
        if name in api_in_file
    )
    return settings


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
        nested = _model_type(annotation)
        if nested is not None:
            yield from _walk_flags(nested, f"{path}.")
            continue
        if name in {"token", "client_secret", "models", "hyperparameters"}:
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


def _model_type(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _literal_choices(annotation: Any) -> tuple[str, ...] | None:
    if get_origin(annotation) is Literal:
        return tuple(str(a) for a in get_args(annotation))
    if get_origin(annotation) in {tuple, list}:
        return None  # a list of values: checked by the model, not by the parser
    for arg in (annotation, *get_args(annotation)):
        if isinstance(arg, type) and issubclass(arg, Enum):
            return tuple(str(member.value) for member in arg)
    return None


def env_name(path: str) -> str:
    return ENV_PREFIX + path.replace(".", "__").upper()


def _known_env_names() -> set[str]:
    names = set(_OWN_ENV)
    for model, prefix in _all_sections():
        for name in model.model_fields:
            names.add(env_name(f"{prefix}{name}"))
    return names


def _all_sections() -> Iterator[tuple[type[BaseModel], str]]:
    stack: list[tuple[type[BaseModel], str]] = [(Settings, "")]
    while stack:
        model, prefix = stack.pop()
        yield model, prefix
        for name, info in model.model_fields.items():
            nested = _model_type(info.annotation)
            if nested is not None:
                stack.append((nested, f"{prefix}{name}."))


def _reject_unknown_env(env: Mapping[str, str]) -> None:
    known = _known_env_names()
    for name in sorted(env):
        if name.upper().startswith(ENV_PREFIX) and name.upper() not in known:
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


def _first_error_line(exc: ValidationError, prefix: str, sources: _Sources | None) -> str:
    lines = []
    for error in exc.errors():
        loc = [str(p) for p in error["loc"] if not isinstance(p, int)]
        path = ".".join(loc)
        where = f"{prefix}.{path}" if prefix and path else (prefix or path or "settings")
        message = str(error["msg"]).removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown setting; check its spelling against fleet.toml's comments"
        elif error["type"] == "missing":
            message = "missing"
        source = sources.of(path) if sources is not None and path else "default"
        origin = f" (from {source})" if source != "default" else ""
        lines.append(f"{where}{origin}: {message}")
    extra = f" (and {len(lines) - 1} more)" if len(lines) > 1 else ""
    return lines[0] + extra


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config {path}: file not found; pass --config PATH") from None
    except OSError as exc:
        raise ConfigError(f"config {path}: cannot read ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config {path}: not valid TOML: {exc}") from None


def _read_token(path: Path) -> str:
    return _read_secret(path, "api.token_file")


def _read_secret(path: Path, setting: str) -> str:
    try:
        secret = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"{setting}: cannot read {path} ({exc.strerror})") from None
    if not secret:
        raise ConfigError(f"{setting}: {path} is empty")
    return secret


def load_models_file(path: Path) -> list[ModelEntry]:
    """Models from a CSV (header row: id,name,<lifecycle settings>) or a JSONL file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"models_file: cannot read {path} ({exc.strerror})") from None
    suffix = path.suffix.lower()
    if suffix in {".jsonl", ".ndjson"}:
        rows = _jsonl_rows(path, text)
    elif suffix == ".csv":
        rows = [(n, _csv_row(raw)) for n, raw in enumerate(csv.DictReader(text.splitlines()), 2)]
    else:
        raise ConfigError(f"models_file {path}: use a .csv or .jsonl file")
    entries = []
    for number, row in rows:
        try:
            entries.append(ModelEntry.model_validate(row))
        except ValidationError as exc:
            raise ConfigError(
                _first_error_line(exc, prefix=f"models_file {path}:{number}", sources=None)
            ) from None
    return entries


def _jsonl_rows(path: Path, text: str) -> list[tuple[int, dict[str, Any]]]:
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"models_file {path}:{number}: not JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise ConfigError(f"models_file {path}:{number}: expected a JSON object")
        rows.append((number, row))
    return rows


def _csv_row(raw: Mapping[str | None, str | None]) -> dict[str, Any]:
    """Empty cells inherit; `resources.memory` columns nest; `hyperparameters` holds JSON."""
    row: dict[str, Any] = {}
    for key, value in raw.items():
        if key is None or value is None or value == "":
            continue
        if key == "hyperparameters":
            try:
                row[key] = json.loads(value)
            except json.JSONDecodeError:
                row[key] = value  # validation reports it as not a mapping
            continue
        node = row
        *parents, leaf = key.split(".")
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    return row


def _nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for path, value in flat.items():
        node = nested
        *parents, leaf = path.split(".")
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    return nested


def _deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def time_of_day(text: str) -> dt_time:
    hours, _, minutes = text.partition(":")
    if not (hours.isdigit() and minutes.isdigit() and len(minutes) == 2):  # noqa: PLR2004
        raise ValueError(text)
    return dt_time(int(hours), int(minutes))


def _check_uuid(value: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise ValueError(f"{value!r} is not a UUID") from None
