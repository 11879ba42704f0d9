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
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
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
from fleet.stages import Stage

log = structlog.get_logger("fleet.scheduler")


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
    pending: deque[tuple[int, ModelRecord]] = field(default_factory=deque)
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
    ready and under its own bound; a worker waits while none is."""

    def __init__(
        self, projects: Mapping[str, Project], models: list[ModelRecord], stop: anyio.Event
    ) -> None:
        self._projects = tuple(projects.values())
        for position, model in enumerate(models):
            projects[model.spec.project].pending.append((position, model))
        self._stop = stop
        self._changed = anyio.Event()

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
    scope: RunScope, clients: Mapping[str, ModelOps], names: Sequence[str], progress: Progress
) -> dict[str, Project]:
    """Each project's part of the run: its client, and the shared stage limiters or its own."""
    shared = {stage: anyio.CapacityLimiter(scope.plan.limits[stage]) for stage in Stage}
    several = len(names) > 1
    projects = {}
    for name in names:
        bounds = scope.plan.projects.get(name, ProjectBounds())
        limiters = {
            stage: anyio.CapacityLimiter(bounds.limits[stage]) if stage in bounds.limits else own
            for stage, own in shared.items()
        }
        sink: ProgressSink = ProjectProgress(progress, name) if several else progress
        enter = functools.partial(project_run, scope, clients[name], limiters, sink)
        projects[name] = Project(
            name, clients[name], enter, limit=bounds.concurrency, named=several
        )
    return projects


def _fleet_error(exc: RunAborted) -> FleetError:
    cause = exc.__cause__
    return cause if isinstance(cause, FleetError) else FleetError(str(exc))
