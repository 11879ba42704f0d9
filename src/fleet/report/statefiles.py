"""Several state files read as one: the shards of a run, merged for `fleet status` and
`fleet report`.

`StateFiles` opens each file read-only and reads a run from all of them at once. The merged
run's models are the union of the files' models, its times span them all, its status is the
one that matters most (`merged_status`: running anywhere, else the worst ending), and its
attempts and metrics are each model's own. Two things are kept as warnings beside the merged
run, never passed over silently:

- a file that lacks the run (a shard that has not started it, or selected no model): the run
  is read from the others; only a run in none of the files is an error;
- a model found in two files (overlapping shards, a copied file): it is counted once, from
  the first file that holds it in the order given.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleet.errors import RunNotFound
from fleet.records import ModelRecord, RunRecord
from fleet.stages import MERGED_RUN_ORDER, STAGE_ORDER
from fleet.store import Store

_NAMES_SHOWN = 3  # models named in an overlap warning; the JSON lists them all


@dataclass(frozen=True, slots=True)
class Source:
    """One state file read for a run: its status there (None: the file lacks the run)."""

    db: str
    status: str | None
    reason: str | None
    models: int


@dataclass(frozen=True, slots=True)
class RunState:
    """One run as read from one or more state files."""

    run: RunRecord  # merged over the files that hold it
    models: tuple[ModelRecord, ...]  # each model once, in file order then admission order
    attempts: Mapping[str, tuple[dict[str, Any], ...]]  # by model id
    origin: Mapping[str, str]  # model id → the file it was read from
    sources: tuple[Source, ...]
    overlaps: Mapping[str, tuple[str, ...]]  # model id → every file that holds it (2+)
    warnings: tuple[str, ...]


class StateFiles:
    """State files read together: `async with StateFiles.open(paths) as files:`."""

    def __init__(self, stores: Mapping[str, Store]) -> None:
        self._stores = dict(stores)

    @classmethod
    @asynccontextmanager
    async def open(cls, paths: Sequence[Path]) -> AsyncIterator[StateFiles]:
        """Every file read-only: reading neither creates, migrates nor changes one."""
        async with AsyncExitStack() as stack:
            stores = {
                str(path): await stack.enter_async_context(Store.open(path, readonly=True))
                for path in paths
            }
            yield cls(stores)

    @classmethod
    def of(cls, store: Store, name: str = "the state file") -> StateFiles:
        return cls({name: store})

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._stores)

    async def latest_run_id(self) -> str:
        """The id of the run created last in any of the files."""
        latest: RunRecord | None = None
        for store in self._stores.values():
            record = await store.latest_run()
            if record is not None and (latest is None or record.created_at > latest.created_at):
                latest = record
        if latest is None:
            names = ", ".join(self._stores)
            raise RunNotFound(
                f"{names} holds no run yet"
                if len(self._stores) == 1
                else f"none of {names} holds a run yet"
            )
        return latest.id

    async def previous_run_id(self, run_id: str) -> str | None:
        """The run created just before `run_id`, the latest such over the files."""
        previous: RunRecord | None = None
        for store in self._stores.values():
            if await store.find_run(run_id) is None:
                continue
            record = await store.previous_run(run_id)
            if record is not None and (previous is None or record.created_at > previous.created_at):
                previous = record
        return None if previous is None else previous.id

    async def read(self, run_id: str | None = None) -> RunState:
        """The run (default: the latest) over every file that holds it.

        RunNotFound if none does; files that lack it are named in a warning.
        """
        run_id = run_id if run_id is not None else await self.latest_run_id()
        found: list[tuple[str, Store, RunRecord]] = []
        for name, store in self._stores.items():
            record = await store.find_run(run_id)
            if record is not None:
                found.append((name, store, record))
        if len(self._stores) == 1 and not found:
            raise RunNotFound(f"run {run_id!r} is not in the state file")
        if not found:
            raise RunNotFound(f"run {run_id!r} is in none of {', '.join(self._stores)}")
        return await self._merged(run_id, found)

    async def _merged(self, run_id: str, found: list[tuple[str, Store, RunRecord]]) -> RunState:
        models: list[ModelRecord] = []
        attempts: dict[str, tuple[dict[str, Any], ...]] = {}
        origin: dict[str, str] = {}
        holders: dict[str, list[str]] = {}
        counts: dict[str, int] = {}
        for name, store, _ in found:
            by_model: dict[str, list[dict[str, Any]]] = {}
            for row in await store.attempts(run_id):
                by_model.setdefault(row["model_id"], []).append(row)
            held = await store.models(run_id)
            counts[name] = len(held)
            for model in held:
                holders.setdefault(model.spec.id, []).append(name)
                if model.spec.id in origin:
                    continue  # the first file's copy is the one counted
                origin[model.spec.id] = name
                models.append(model)
                attempts[model.spec.id] = tuple(by_model.get(model.spec.id, ()))
        overlaps = {mid: tuple(names) for mid, names in holders.items() if len(names) > 1}
        present = {name: record for name, _, record in found}
        sources = tuple(
            Source(name, present[name].status, present[name].reason, counts[name])
            if name in present
            else Source(name, None, None, 0)
            for name in self._stores
        )
        return RunState(
            run=merged_run([record for _, _, record in found], [name for name, _, _ in found]),
            models=tuple(models),
            attempts=attempts,
            origin=origin,
            sources=sources,
            overlaps=overlaps,
            warnings=(
                *_warnings(run_id, sources, found, overlaps, models),
                *(warning for _, store, _ in found for warning in store.warnings),
            ),
        )


def merged_status(statuses: Sequence[str]) -> str:
    """One status for a run spread over files: running anywhere, else the worst ending."""
    distinct = set(statuses)
    if len(distinct) == 1:
        return statuses[0]
    unknown = sorted(distinct - set(MERGED_RUN_ORDER))
    if unknown:  # a status this fleet does not know (a newer fleet wrote it): show it
        return unknown[0]
    return next(status for status in MERGED_RUN_ORDER if status in distinct)


def merged_run(records: Sequence[RunRecord], names: Sequence[str]) -> RunRecord:
    """The run as one record: earliest start, latest update, finished when all finished."""
    first = records[0]
    if len(records) == 1:
        return first
    finished = [r.finished_at for r in records]
    reasons = [(name, r.reason) for name, r in zip(names, records, strict=True) if r.reason]
    reason = None
    if len({text for _, text in reasons}) == 1:
        reason = reasons[0][1]
    elif reasons:
        reason = "; ".join(f"{name}: {text}" for name, text in reasons)
    stages = {stage for r in records for stage in r.stages}
    return RunRecord(
        id=first.id,
        created_at=min(r.created_at for r in records),
        updated_at=max(r.updated_at for r in records),
        finished_at=None if None in finished else max(f for f in finished if f is not None),
        status=merged_status([r.status for r in records]),
        stages=tuple(stage for stage in STAGE_ORDER if stage in stages),
        reason=reason,
        from_stage=next((r.from_stage for r in records if r.from_stage), None),
    )


def _warnings(
    run_id: str,
    sources: Sequence[Source],
    found: Sequence[tuple[str, Store, RunRecord]],
    overlaps: Mapping[str, tuple[str, ...]],
    models: Sequence[ModelRecord],
) -> list[str]:
    warnings: list[str] = []
    missing = [source.db for source in sources if source.status is None]
    if missing:
        warnings.append(
            f"run {run_id!r} is not in {', '.join(missing)}: that shard has not started it, "
            "or selected no model"
        )
    if len({record.stages for _, _, record in found}) > 1:
        ran = "; ".join(f"{name}: {','.join(record.stages)}" for name, _, record in found)
        warnings.append(f"the files ran different stages ({ran})")
    names = {model.spec.id: model.spec.name for model in models}
    pairs: dict[tuple[str, ...], list[str]] = {}
    for model_id, holders in overlaps.items():
        pairs.setdefault(holders, []).append(names[model_id])
    for holders, overlapping in pairs.items():
        count = len(overlapping)
        shown = ", ".join(overlapping[:_NAMES_SHOWN]) + (", …" if count > _NAMES_SHOWN else "")
        *others, last = holders
        where = (
            f"both {others[0]} and {last}" if len(others) == 1 else f"each of {', '.join(holders)}"
        )
        warnings.append(
            f"{count} {'model is' if count == 1 else 'models are'} in {where} ({shown}): "
            f"counted once, from {holders[0]}; do the shards overlap?"
        )
    return warnings
