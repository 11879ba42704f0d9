"""Admission: which model a free worker of the run takes next, and each project's part in it.

Models are admitted in one fixed order (priority, then the longest expected first). A free
worker takes the first model whose project is open and under its own bound on models in
flight, so a project at its bound never holds the others' models back. A project that cannot
go on (its token rejected, its server down past the outage budget) stops alone: its models in
flight are cancelled where they stand, and the rest of its models wait for the next start.
"""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from dataclasses import dataclass, field

import anyio
import structlog

from fleet.errors import ApiError, FleetError, RunAborted
from fleet.lifecycle import run_model
from fleet.modelops import ModelOps
from fleet.plan import ProjectBounds
from fleet.progress import Progress, ProgressSink, ProjectProgress
from fleet.project_run import ProjectRun, RunScope, project_run
from fleet.records import ModelRecord
from fleet.slots import project_slots, run_slots
from fleet.stages import Stage

log = structlog.get_logger("fleet.scheduler")

Rank = tuple[float, ...]  # smaller first


@dataclass(slots=True, eq=False)
class Project:
    """One project's part of the run as the scheduler admits it: how to enter it, its own
    bound on models in flight (None: only the run's), its models not yet admitted, the
    `ProjectRun` they run in once it is open, and the error that stopped it, if any."""

    name: str
    api: ModelOps
    enter: Callable[[], AbstractAsyncContextManager[ProjectRun]]
    limit: int | None
    named: bool  # several projects: lines about a model name its project
    # What is learned of its models once it is checked, before any is admitted (history.py).
    learn: Callable[[ModelOps, Sequence[ModelRecord]], Awaitable[None]] | None = None
    pending: deque[tuple[Rank, ModelRecord]] = field(default_factory=deque)
    in_flight: int = 0
    run: ProjectRun | None = None  # set while it is open
    error: FleetError | None = None
    _scopes: set[anyio.CancelScope] = field(default_factory=set)
    _admission: Admission | None = None

    @property
    def admits(self) -> bool:
        return (
            self.run is not None
            and bool(self.pending)
            and (self.limit is None or self.in_flight < self.limit)
        )

    async def open(self, admission: Admission, done: anyio.Event) -> None:
        """Check the project, then follow its jobs until the run's models are done."""
        self._admission = admission
        try:
            await self.api.check_project()
        except ApiError as exc:
            # A rejected token, an unknown project, a server down: nothing of it can start.
            self.stop(exc)
            return
        if self.learn is not None:
            await self.learn(self.api, [model for _, model in self.pending])
            admission.rerank(self)
        async with self.enter() as run:
            self.run = run
            admission.changed()
            await done.wait()

    async def run_model(self, model: ModelRecord, stages: tuple[Stage, ...]) -> None:
        run = self.run
        if run is None or self.error is not None:
            return
        with anyio.CancelScope() as scope, self._bound():
            self._scopes.add(scope)
            try:
                await run_model(run, model, stages)
            except RunAborted as exc:
                self.stop(_fleet_error(exc))
            except ApiError as exc:
                # Transient past every retry and the outage budget, or an answer that says
                # the project cannot go on: its models stop, to be resumed.
                self.stop(exc)
            finally:
                self._scopes.discard(scope)

    @contextmanager
    def _bound(self) -> Iterator[None]:
        if not self.named:
            yield
            return
        with structlog.contextvars.bound_contextvars(project=self.name):
            yield

    def stop(self, error: FleetError) -> None:
        """Admit none of this project's models, and cancel those in flight where they stand."""
        if self.error is None:
            self.error = error
            log.error("fleet.project.stopped", project=self.name, error=str(error))
        self.pending.clear()
        for scope in self._scopes:
            scope.cancel()
        if self._admission is not None:
            self._admission.changed()

    def why(self) -> str:
        return f"project {self.name}: {self.error}" if self.named else str(self.error)


class Admission:
    """Which model a free worker takes next: the first in admission order whose project is
    ready and under its own bound; a worker waits while none is.

    The order is `rank` (priority, then the most expected work first), then the order the
    models are given in; a project reranks its models once it has learned more of them."""

    def __init__(
        self,
        projects: Mapping[str, Project],
        models: list[ModelRecord],
        stop: anyio.Event,
        rank: Callable[[ModelRecord], Rank] = lambda _model: (),
    ) -> None:
        self._projects = tuple(projects.values())
        self._rank = rank
        for position, model in enumerate(models):
            projects[model.spec.project].pending.append(((*rank(model), position), model))
        for project in self._projects:
            project.pending = deque(sorted(project.pending, key=lambda entry: entry[0]))
        self._stop = stop
        self._changed = anyio.Event()

    def rerank(self, project: Project) -> None:
        """Rank the project's waiting models again (what it learned changed their work)."""
        entries = (((*self._rank(m), key[-1]), m) for key, m in project.pending)
        project.pending = deque(sorted(entries, key=lambda entry: entry[0]))

    def changed(self) -> None:
        """Wake the waiting workers: a project became ready, stopped, or has room again."""
        self._changed.set()
        self._changed = anyio.Event()

    @asynccontextmanager
    async def take(self) -> AsyncIterator[tuple[Project, ModelRecord] | None]:
        """The next model and its project, counted in flight for the block; None: no more."""
        while True:
            if self._stop.is_set() or not any(p.pending for p in self._projects):
                yield None
                return
            open_ = [p for p in self._projects if p.admits]
            if open_:
                break
            await self._changed.wait()
        project = min(open_, key=lambda p: p.pending[0][0])
        _, model = project.pending.popleft()
        project.in_flight += 1
        try:
            yield project, model
        finally:
            project.in_flight -= 1
            self.changed()


def projects_of(
    scope: RunScope,
    clients: Mapping[str, ModelOps],
    names: Sequence[str],
    progress: Progress,
    learn: Callable[[ModelOps, Sequence[ModelRecord]], Awaitable[None]] | None = None,
) -> dict[str, Project]:
    """Each project's part of the run: its client, the run's job slots and stage bounds with
    its own bounds over them, and what it learns of its models once checked."""
    shared = run_slots(scope.plan.jobs, scope.plan.limits)
    several = len(names) > 1
    projects = {}
    for name in names:
        bounds = scope.plan.projects.get(name, ProjectBounds())
        slots = project_slots(shared, bounds.limits, bounds.jobs)
        sink: ProgressSink = ProjectProgress(progress, name) if several else progress
        enter = functools.partial(project_run, scope, clients[name], slots, sink)
        projects[name] = Project(
            name, clients[name], enter, limit=bounds.concurrency, named=several, learn=learn
        )
    return projects


def _fleet_error(exc: RunAborted) -> FleetError:
    cause = exc.__cause__
    return cause if isinstance(cause, FleetError) else FleetError(str(exc))
