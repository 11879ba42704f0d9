"""The model catalog: which models a run drives and with which lifecycle settings.

`ModelEntry` is a model as listed (`[[models]]`, a CSV or JSONL `models_file`, discovery);
`Lifecycle` is the settings its stages use; `ModelSpec` is a model resolved for a run, the
frozen value the engine and the store work with.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from fleet.errors import ConfigError
from fleet.inputs import (
    MAX_DEPTH,
    MODELS_MAX_BYTES,
    Priority,
    Section,
    check_uuid,
    deep_merge,
    depth,
    error_line,
    parse_json,
    read_text,
)
from fleet.rules import Rule
from fleet.stages import Stage

# The project of [api] and the top-level models; others are named by their [projects.NAME].
DEFAULT_PROJECT = "default"


class Resources(Section):
    """Container resources of a job; unset (the default): none sent, the model's own apply."""

    memory: str | None = Field(None, description="memory for the job's container, e.g. 2g")
    cpu: str | None = Field(None, description="CPUs for the job's container, e.g. 1")

    def overrides(self) -> dict[str, str]:
        """What to send: only the values that are set."""
        return {k: v for k, v in (("memory", self.memory), ("cpu", self.cpu)) if v is not None}


RetireMode = Literal["previous", "deployed", "none"]


class Lifecycle(Section):
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
        return None if value is None else check_uuid(value)

    @field_validator("hyperparameters")
    @classmethod
    def _shallow(cls, value: dict[str, Any]) -> dict[str, Any]:
        if depth(value) > MAX_DEPTH:
            raise ValueError(f"nested more than {MAX_DEPTH} levels deep")
        return value

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
    priority: Priority = 0

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        return check_uuid(value)

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
    """One model of a run with its lifecycle settings resolved, and the project it is in."""

    id: str
    name: str
    lifecycle: Lifecycle
    tags: tuple[str, ...] = ()
    priority: int = 0
    project: str = DEFAULT_PROJECT


def spec_of(entry: ModelEntry, base: Mapping[str, Any], project: str, prefix: str) -> ModelSpec:
    try:
        lifecycle = Lifecycle.model_validate(deep_merge(base, entry.overrides()))
    except ValidationError as exc:
        raise ConfigError(error_line(exc, prefix=f"{prefix}[{entry.id}]")) from None
    return ModelSpec(
        id=entry.id,
        name=entry.name or entry.id,
        lifecycle=lifecycle,
        tags=entry.tags,
        priority=entry.priority,
        project=project,
    )


# The dataset each stage cannot run without.
DATASETS = ((Stage.TRAIN, "train_dataset_id"), (Stage.EVALUATE, "evaluate_dataset_id"))


def check_datasets(lifecycle: Lifecycle, needed: Sequence[tuple[Stage, str]], where: str) -> None:
    for stage, name in needed:
        if getattr(lifecycle, name) is None:
            raise ConfigError(
                f"{where}.{name}: missing; stage {stage} needs a dataset: set {name} in "
                "[defaults] (or for this model) to the id of the dataset in ModelOps"
            )


def unique_entries(entries: tuple[ModelEntry, ...]) -> tuple[ModelEntry, ...]:
    seen: set[str] = set()
    for entry in entries:
        if entry.id in seen:
            raise ValueError(f"model {entry.id} is listed twice")
        seen.add(entry.id)
    return entries


def in_two(model_id: str, first: str, second: str) -> str:
    return f"model {model_id} is in projects {first} and {second}; a model is in one project"


def load_models_file(path: Path) -> list[ModelEntry]:
    """Models from a CSV (header row: id,name,<lifecycle settings>) or a JSONL file."""
    suffix = path.suffix.lower()
    if suffix not in {".csv", ".jsonl", ".ndjson"}:
        raise ConfigError(f"models_file {path}: use a .csv or .jsonl file")
    text = read_text(path, f"models_file {path}", MODELS_MAX_BYTES)
    rows = _jsonl_rows(path, text) if suffix != ".csv" else _csv_rows(path, text)
    entries = []
    for number, row in rows:
        try:
            entries.append(ModelEntry.model_validate(row))
        except ValidationError as exc:
            raise ConfigError(error_line(exc, prefix=f"models_file {path}:{number}")) from None
    return entries


def _jsonl_rows(path: Path, text: str) -> list[tuple[int, dict[str, Any]]]:
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = parse_json(line)
        except ValueError as exc:
            raise ConfigError(f"models_file {path}:{number}: {exc}") from None
        if not isinstance(row, dict):
            raise ConfigError(f"models_file {path}:{number}: expected a JSON object")
        rows.append((number, row))
    return rows


def _csv_rows(path: Path, text: str) -> list[tuple[int, dict[str, Any]]]:
    reader = csv.DictReader(text.splitlines())
    rows = []
    try:
        header = reader.fieldnames or []
        repeated = sorted({name for name in header if header.count(name) > 1})
        if repeated:
            raise ConfigError(
                f"models_file {path}:1: column {repeated[0]!r} is there twice; keep one"
            )
        for raw in reader:
            try:
                rows.append((reader.line_num, _csv_row(raw)))
            except ValueError as exc:
                raise ConfigError(f"models_file {path}:{reader.line_num}: {exc}") from None
    except csv.Error as exc:
        # The reader counts the lines it finished; the bad one is the next.
        where = f"{path}:{reader.line_num + 1}"
        raise ConfigError(f"models_file {where}: not valid CSV ({exc})") from None
    return rows


def _csv_row(raw: Mapping[str | None, str | None]) -> dict[str, Any]:
    """Empty cells inherit; `resources.memory` columns nest; `hyperparameters` holds JSON."""
    row: dict[str, Any] = {}
    for key, value in raw.items():
        if key is None or value is None or value == "":
            continue
        if key == "hyperparameters":
            try:
                row[key] = parse_json(value)
            except ValueError as exc:
                if "not JSON" in str(exc):
                    row[key] = value  # validation reports it as not a mapping
                    continue
                raise ValueError(f"hyperparameters: {exc}") from None
            continue
        node = row
        *parents, leaf = key.split(".")
        for level, parent in enumerate(parents, start=1):
            node = node.setdefault(parent, {})
            if not isinstance(node, dict):  # `resources` before `resources.memory`
                column = ".".join(parents[:level])
                raise ValueError(f"columns {column} and {key} both set it; keep one")  # noqa: TRY004
        if leaf in node:  # `resources` after `resources.memory`
            raise ValueError(f"columns {key} and {key}.* both set it; keep one")
        node[leaf] = value
    return row
