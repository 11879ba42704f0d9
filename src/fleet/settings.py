"""`Settings`: the whole configuration of a run, one pydantic-settings model.

Its fields are the top-level settings and the tables of `sections.py`; its validators are the
checks that span tables (a project inherits `[api]` key by key, a model is in one project only,
`from_stage` is one of `stages`, a shard names its own state file). `config.load_settings`
builds it from flags, FLEET_* variables, `fleet.toml` and defaults, in that precedence.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from fleet.environment import ENV_PREFIX, ENVIRON, TOML_READ, MappingEnvSource, env_name
from fleet.errors import ConfigError
from fleet.inputs import (
    MAX_COUNT,
    MAX_RPS,
    PositiveFloat,
    PositiveInt,
    deep_merge,
    error_line,
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
from fleet.sections import (
    ApiSettings,
    Attempts,
    Discovery,
    JobTimeouts,
    Limits,
    ProjectLimits,
    ProjectSettings,
    api_section,
    check_ca_bundle,
    models_section,
)
from fleet.shards import Shard
from fleet.stages import STAGE_ORDER, Stage

_PROJECT_NAME = re.compile(r"[a-z](?:_?[a-z0-9])*")


_PROJECT_NAME_MAX = 32


# Credentials a project replaces as a whole rather than key by key (see Settings._inherit_api).
_CREDENTIALS = (
    frozenset({"token", "token_file"}),
    frozenset({"client_secret", "client_secret_file"}),
)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
        validate_default=True,
    )

    api: ApiSettings = Field(default_factory=ApiSettings)
    jobs: PositiveInt = Field(
        32, description="remote jobs running at once, all stages together (the capacity)"
    )
    concurrency: PositiveInt | None = Field(
        None, description="models in flight at once, to keep memory flat (default: 4 x jobs)"
    )
    limits: Limits = Field(default_factory=Limits)
    history: Literal["off", "versions", "jobs"] = Field(
        "jobs",
        description="on a model's first night, learn its durations from the server: versions "
        "(its training, 2 reads a model), jobs (also evaluation and deployment, 4), or off",
    )
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
        5.0,
        description="longest gap, in seconds, between two looks at a job with no prediction "
        "(a predicted job's looks follow its expected duration)",
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

    def warn(self, *warnings: str) -> None:
        """Keep something to say once logging is set up (`load_settings` finds them)."""
        self._warnings.extend(warnings)

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
        environ = ENVIRON.get()
        if environ is not None:
            env_settings = MappingEnvSource(settings_cls, environ)
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        toml = TOML_READ.get()
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
                check_ca_bundle(api.ca_bundle, f"{s}.ca_bundle")

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
