"""Which models a run takes, in which order, and what it would do with each (`fleet plan`).

Models come from the config (inline and `models_file`) and, with `[discover]`, from the
project's model list on the server; `--shard K/N` keeps one shard of them (see `shards.py`),
then a `Selection` (`--models` globs, `--tag`, `--only-failed`) narrows them; `priority` orders
admission (higher first, config order among equals).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from fnmatch import fnmatchcase
from pathlib import Path

import anyio
import structlog

from fleet.errors import ConfigError
from fleet.modelops import ModelOps
from fleet.models import DEFAULT_PROJECT, ModelEntry, ModelSpec
from fleet.records import ModelRecord, model_outcome
from fleet.settings import Settings
from fleet.shards import Shard
from fleet.stages import DONE, STAGE_ORDER, Outcome, Stage, StageState
from fleet.store import Store

log = structlog.get_logger("fleet.selection")


async def discovered(
    api: ModelOps, settings: Settings, project: str = DEFAULT_PROJECT
) -> list[ModelEntry]:
    """The project's models whose names match its `[discover] names` and not `exclude`;
    archived models are left out. A model's language, when the server gives it, is what its
    deployment says it is written in."""
    discover = settings.every_project()[project].discover
    names, exclude = discover.names, discover.exclude
    if not names:
        return []
    matching = [
        model
        for model in await api.list_models()
        if any(fnmatchcase(model.name, g) for g in names)
        and not any(fnmatchcase(model.name, g) for g in exclude)
    ]
    archived = [model.name for model in matching if model.archived]
    if archived:
        log.info("fleet.discover.archived_skipped", project=project, models=len(archived))
    return [
        ModelEntry(id=m.id, name=m.name, **({"language": m.language} if m.language else {}))
        for m in matching
        if not m.archived
    ]


@dataclass(frozen=True, slots=True)
class Selection:
    """Which models of the configured and discovered ones a new run takes: those whose id or
    name matches one of `globs`, with one of `tags`, among the failed of run `only_failed`
    (each filter, when given)."""

    globs: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    only_failed: str | None = None


async def chosen_models(
    settings: Settings, selection: Selection, clients: Mapping[str, ModelOps]
) -> list[ModelSpec]:
    """The models of a new run: config + discovery, the shard, then the selection.

    `clients` are those of the projects to discover models in."""
    settings.require_datasets()  # before discovery's requests: a config error costs none
    found = {name: await discovered(api, settings, name) for name, api in clients.items()}
    only = None
    if selection.only_failed is not None:
        only = await _failed_in(settings.db, selection.only_failed)
    every = settings.model_specs(found)
    specs = select(
        every, globs=selection.globs, tags=selection.tags, only=only, shard=settings.shard
    )
    if settings.shard is not None:
        log.info(
            "fleet.shard.selected",
            shard=str(settings.shard),
            models=len(specs),
            of_models=len(every),
            db=str(settings.db),
        )
    if not specs:
        where = f" in shard {settings.shard}" if settings.shard is not None else ""
        raise ConfigError(
            f"models: none selected{where}; add [[models]], a models_file or [discover] names, "
            "or loosen --models/--tag/--only-failed"
        )
    return specs


async def _failed_in(db: Path, run_id: str) -> frozenset[str]:
    """The ids of the models that failed in run `run_id` of the state file `db`."""
    if not await anyio.Path(db).is_file():
        raise ConfigError(f"--only-failed: {db} does not exist; no run to take from")
    async with Store.open(db, readonly=True) as store:
        models = await store.models((await store.run(run_id)).id)
    return frozenset(m.spec.id for m in models if model_outcome(m) is Outcome.FAILED)


def specs_with(settings: Settings, extra: Iterable[ModelEntry]) -> list[ModelSpec]:
    """The config's models plus ones discovered in the default project; a configured entry
    wins over a discovered one."""
    return settings.model_specs({DEFAULT_PROJECT: list(extra)})


def select(
    specs: Sequence[ModelSpec],
    *,
    globs: Sequence[str] = (),
    tags: Sequence[str] = (),
    only: frozenset[str] | None = None,
    shard: Shard | None = None,
) -> list[ModelSpec]:
    """The models matching every filter given, highest priority first (stable).

    The shard is taken of every model given (configured and discovered) before the other
    filters narrow it, so a model's shard never depends on the flags of one night.
    """
    sharded = [spec for spec in specs if shard is None or shard.holds(spec.id)]
    chosen = [
        spec
        for spec in sharded
        if (not globs or any(fnmatchcase(spec.id, g) or fnmatchcase(spec.name, g) for g in globs))
        and (not tags or set(tags) & set(spec.tags))
        and (only is None or spec.id in only)
    ]
    return sorted(chosen, key=lambda spec: -spec.priority)


@dataclass(frozen=True, slots=True)
class PlanRow:
    model_id: str
    name: str
    action: str  # submit | adopt | reconcile | poll | retry | skip | nothing
    detail: str
    project: str = DEFAULT_PROJECT


def plan_new(specs: Sequence[ModelSpec], settings: Settings) -> list[PlanRow]:
    """What a new run would do first for each model."""
    first = settings.first_stage()
    if first is Stage.TRAIN:
        action, detail = "submit", "train, then the stages after it"
    else:
        action, detail = "adopt", f"start from the {settings.from_version} version at {first}"
    return [PlanRow(s.id, s.name, action, detail, s.project) for s in specs]


def plan_resume(models: Sequence[ModelRecord], stages: Sequence[Stage]) -> list[PlanRow]:
    """What resuming an unfinished run would do next for each model."""
    return [replace(_next_step(m, stages), project=m.spec.project) for m in models]


def _next_step(model: ModelRecord, stages: Sequence[Stage]) -> PlanRow:
    spec = model.spec
    for stage in sorted(stages, key=STAGE_ORDER.index):
        record = model.stages[stage]
        state = record.state
        if state in DONE:
            continue
        if state is StageState.FAILED:
            return PlanRow(spec.id, spec.name, "nothing", f"failed at {stage}: {record.error}")
        if state is StageState.PENDING:
            return PlanRow(spec.id, spec.name, "submit", f"{stage}")
        if state is StageState.SUBMITTING:
            return PlanRow(
                spec.id, spec.name, "reconcile", f"look for the {stage} job; submit if absent"
            )
        if state is StageState.RETRYING:
            return PlanRow(spec.id, spec.name, "retry", f"{stage}, attempt {record.attempt + 1}")
        return PlanRow(spec.id, spec.name, "poll", f"{stage} job {record.job_id}")
    return PlanRow(spec.id, spec.name, "skip", "done")


def totals(rows: Iterable[PlanRow]) -> Mapping[str, int]:
    return dict(Counter(row.action for row in rows))


def totals_by_project(rows: Iterable[PlanRow]) -> Mapping[str, Mapping[str, int]]:
    """`totals` of each project's rows, the projects in the order their first rows come."""
    by_project: dict[str, Counter[str]] = {}
    for row in rows:
        by_project.setdefault(row.project, Counter())[row.action] += 1
    return {project: dict(counts) for project, counts in by_project.items()}
