"""The in-memory ModelOps: projects, models, versions, jobs and deployments, with no HTTP.

Nothing runs in the background. Every call first `advance()`s the world to the clock's time,
applying due status changes (a job's queue phases, its end, an evaluation's EVALUATED event)
in time order, so the emulator is as deterministic as its clock. Every lookup goes through a
dict, an append-only list or the job index (`index.py`), so it stays fast with 10,000 models
and tens of thousands of jobs.

What the world does, and where it comes from:

- Recorded (tmo 7.3 notebooks, the Model Factory tutorial): the lifecycle train → evaluate →
  approve/reject → deploy → retire, the job statuses, metrics as strings on the EVALUATED
  event with the `jobId` of its evaluation, a `cron = "@once"` deployment starting a scoring
  job at once, and the fields the official client refuses to send without (`datasetId` on
  train and evaluate, `engineType` on deploy, `deploymentId` on retire).
- Not recorded, so the least helpful plausible answer (a Spring Data REST service's, where
  SDR decides it), each with a switch in `Behaviour` for the others: the project has a job
  history (last night's jobs, `job_history`), archived models and archived versions
  (`archived_models`, `archived_versions_rate`); an evaluation's EVALUATED event comes a
  little after its job completes (`evaluated_lag_s`); a deployed version keeps its APPROVED
  status and only the deployment says DEPLOYED (`deployed_version_status`); train and retire
  jobs are TRAINING and RETIREMENT (`job_types`: internally types stay canonical, `views.py`
  names them). Jobs by status or last change (`status_finder`, `job_sort`) need the job
  index, which is kept only then.

The stats describe what clients caused: `jobs_by_type`, `jobs_total` and
`max_jobs_per_model_and_type` count the lifecycle jobs they submitted, not last night's
history jobs nor the scoring jobs deployments start (counted in `scoring_jobs`).

The world also records, for the benchmark and at no cost to the answers, when each job's end
was first noticed: the first request about its model after it ended (`note_request`).

Why this module is long: the world is one state machine. Its maps, its schedule of due
changes and the job index change together in every call, after `advance()` has applied what
is due, and both tonight's lifecycle calls and the project as it is found (last night's
versions, jobs and deployments) go through the same private steps (`_new_version`,
`_start_job`, `_transition`, `_open_deployment`) that keep them consistent. Splitting reads
from writes, or last night from tonight, would hand those steps to another module to call;
what stands alone is in modules of its own (errors, request binding, records, views, the job
index, the seeded draws).
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import math
import random
from array import array
from collections import Counter, deque
from typing import TYPE_CHECKING, Any, TypedDict, Unpack

from fleet.sim import draws
from fleet.sim.errors import InvalidRequestError, NotFoundError, missing_field
from fleet.sim.index import JobIndex, Order
from fleet.sim.records import (
    QUEUE_PHASES,
    Deployment,
    Event,
    Job,
    JsonObject,
    Model,
    Project,
    TrainedModel,
)
from fleet.sim.settings import RATE_FIELDS, SimSettings

if TYPE_CHECKING:
    from _collections_abc import dict_values
    from collections.abc import Collection, Iterable, Sequence

    from fleet.sim.clock import Clock

__all__ = ["RATE_FIELDS", "SimSettings", "World"]

_DAY = 86_400.0
# Phase numbers in the schedule of status changes, besides `Job.phase()`'s queue phases.
_END = -1  # the job's end
_EVALUATED = -2  # an evaluation's EVALUATED event, `evaluated_lag_s` after its end
_FAULT_KINDS = (
    "http_500",
    "http_503",
    "http_429",
    "slow",
    "drop",
    "delay_after",
    "job_error",
    "job_stuck",
)
# A version can be approved only from EVALUATED; evaluating again never demotes a decision.
_EVALUATED_FROM = frozenset({"TRAINED", "EVALUATED"})


class _EventOf(TypedDict, total=False):
    """What an event may name besides its version, status and time."""

    job_id: str | None
    dataset_id: str | None
    metadata: JsonObject | None


class World:
    """One emulated ModelOps project and everything in it."""

    def __init__(self, settings: SimSettings, clock: Clock) -> None:
        self.settings = settings
        self.behaviour = settings.behaviour
        # What the server calls each canonical job type (TRAINING ...), where it differs.
        self.job_type_names = self.behaviour.job_type_names(settings.seed)
        self._clock = clock
        self._ids = random.Random(f"{settings.seed}:ids")  # noqa: S311 - reproducible ids
        self._seq = itertools.count()
        start = clock.now()
        self.project = Project(settings.project_id, "Store demand forecasting", start - 400 * _DAY)
        self._models: dict[str, Model] = {}  # active and archived
        self._model_list: list[Model] = []  # active
        self._archived: list[Model] = []
        self._trained: dict[str, TrainedModel] = {}
        self._versions: dict[str, list[TrainedModel]] = {}
        self._jobs: dict[str, Job] = {}
        self._job_list: list[Job] = []
        # Heap of (time, seq, job id, phase): the job's next status change, where phase
        # numbers `Job.phase()`, `_END` is its end and `_EVALUATED` its EVALUATED event.
        # When no answer needs jobs by status, only ends and events are scheduled.
        self._due: list[tuple[float, int, str, int]] = []
        self._index = JobIndex() if self.behaviour.needs_job_index else None
        self._jobs_per_key: Counter[tuple[str, str]] = Counter()
        self._scoring_per_model: Counter[str] = Counter()
        self._deployments: dict[str, Deployment] = {}
        self._deployment_by_job: dict[str, Deployment] = {}
        self._active: dict[str, Deployment] = {}  # insertion order = creation order
        self._running = 0
        self._peak_running = 0
        self._max_per_key = 0
        self._jobs_by_type: Counter[str] = Counter(dict.fromkeys(draws.JOB_TYPES, 0))
        self._scoring_jobs = 0
        self._retired_while_scoring = 0
        self._history_jobs = 0
        self._requests: Counter[str] = Counter()
        self._faults: Counter[str] = Counter(dict.fromkeys(_FAULT_KINDS, 0))
        self._tokens_issued = 0
        self._token_rejections = 0
        # Measurement: arrival times of API requests, the model each known id belongs to,
        # and per model the jobs that ended and no request about the model has seen since.
        self._request_times = array("d")
        self._owner: dict[str, str] = {}
        self._unnoticed: dict[str, deque[Job]] = {}
        self._last_end: float | None = None
        self.train_dataset_id = draws.uuid_from(self._ids)
        self.eval_dataset_id = draws.uuid_from(self._ids)
        # Last night's requests name these; the emulator accepts any (it keeps neither).
        self.dataset_connection_id = draws.uuid_from(draws.spread(settings.seed, "connection"))
        self.dataset_template_id = draws.uuid_from(draws.spread(settings.seed, "template"))
        self._populate(start)

    # -- time -------------------------------------------------------------------------------

    def now(self) -> float:
        return self._clock.now()

    def advance(self) -> float:
        """Apply, in time order, every status change that is due; returns the time it is now."""
        now = self._clock.now()
        due = self._due
        while due and due[0][0] <= now:
            at, _, job_id, phase = heapq.heappop(due)
            job = self._jobs[job_id]
            if phase == _END:
                self._finish(job)
            elif phase == _EVALUATED:
                self._evaluated(job, at)
            else:
                assert self._index is not None  # phases are only scheduled for the index
                self._index.changed(job, QUEUE_PHASES[phase][0])
                following = phase + 1
                if following < len(QUEUE_PHASES):
                    self._schedule(job.phase(following)[1], job, following)
                else:
                    self._schedule(job.ends_at, job, _END)
        return now

    def duration(self, model_id: str, job_type: str, nth: int) -> float:
        """Simulated seconds the `nth` (1-based) job of `job_type` for a model takes."""
        return draws.job_duration(self.settings.seed, model_id, job_type, nth)

    def job_will_fail(self, model_id: str, job_type: str, nth: int) -> bool:
        """Whether the `nth` (1-based) job of `job_type` for a model ends in ERROR."""
        return draws.job_fails(
            self.settings.seed, model_id, job_type, nth, self.settings.job_error_rate
        )

    def job_will_stick(self, model_id: str, job_type: str, nth: int) -> bool:
        """Whether the `nth` (1-based) job of `job_type` for a model never ends."""
        return draws.job_sticks(
            self.settings.seed, model_id, job_type, nth, self.settings.stuck_rate
        )

    # -- reads ------------------------------------------------------------------------------

    def model(self, model_id: str) -> Model:
        try:
            return self._models[model_id]
        except KeyError:
            raise NotFoundError(f"Model {model_id} not found") from None

    def models(self) -> Sequence[Model]:
        """The active models, oldest first (what `--models N` counts)."""
        return self._model_list

    def archived_models(self) -> Sequence[Model]:
        return self._archived

    def listed_models(self) -> list[Model]:
        """What `GET /api/models` lists: the active models, then the archived ones."""
        return [*self._model_list, *self._archived]

    def job(self, job_id: str) -> Job:
        self.advance()
        try:
            return self._jobs[job_id]
        except KeyError:
            raise NotFoundError(f"Job {job_id} not found") from None

    def jobs(self) -> Sequence[Job]:
        """All jobs, oldest first: last night's, then those clients and deployments started."""
        self.advance()
        return self._job_list

    def find_jobs(
        self,
        statuses: Collection[str] | None,
        order: Order,
        offset: int,
        limit: int,
        *,
        descending: bool,
    ) -> tuple[list[Job], int, float]:
        """A page of the jobs whose status now is one of `statuses` (None: any status).

        Returns the page, how many jobs match, and the time "now" they were matched at: show
        them as of that time, so each shows a status it was selected by.
        """
        if self._index is None:
            raise NotFoundError("Jobs by status or last change are not offered by this server")
        now = self.advance()
        jobs = self._index.page(statuses, order, offset, limit, descending=descending)
        return jobs, self._index.count(statuses), now

    def jobs_of_deployment(self, deployment_id: str) -> list[Job]:
        """The jobs naming a deployment (scoring, retirement), oldest first; a finder."""
        self.advance()
        deployment = self._deployments.get(deployment_id)
        return [] if deployment is None else list(deployment.jobs)

    def trained_model(self, trained_model_id: str) -> TrainedModel:
        self.advance()
        try:
            return self._trained[trained_model_id]
        except KeyError:
            raise NotFoundError(f"Trained model {trained_model_id} not found") from None

    def trained_models_of(self, model_id: str, status: str | None = None) -> list[TrainedModel]:
        """Versions of a model, oldest first; a finder, so an unknown model gives none."""
        self.advance()
        versions = self._versions.get(model_id, [])
        return [tm for tm in versions if status is None or tm.status == status]

    def events_of(self, trained_model_id: str) -> list[Event]:
        """Events of a version, oldest first; a finder, so an unknown id gives none."""
        self.advance()
        tm = self._trained.get(trained_model_id)
        return [] if tm is None else list(tm.events)

    def deployment_by_job(self, job_id: str) -> Deployment:
        self.advance()
        try:
            return self._deployment_by_job[job_id]
        except KeyError:
            # Until the deploy job completes there is no deployment to find.
            raise NotFoundError(f"No deployment for job {job_id}") from None

    def deployments_of(self, trained_model_id: str, status: str | None = None) -> list[Deployment]:
        self.advance()
        tm = self._trained.get(trained_model_id)
        deployments = [] if tm is None else tm.deployments
        return [d for d in deployments if status is None or d.status == status]

    def active_deployments(self) -> dict_values[str, Deployment]:
        self.advance()
        return self._active.values()

    # -- lifecycle --------------------------------------------------------------------------

    def train(self, model_id: str, request: JsonObject) -> Job:
        _require(request, "datasetId", "trainingRequest")
        self.advance()
        model = self.model(model_id)
        if model.archived:
            raise InvalidRequestError(f"Model {model.id} is archived and cannot be trained")
        job_id = draws.uuid_from(self._ids)
        tm = self._new_version(model, self._clock.now(), job_id)
        return self._start_job("TRAINING", tm, _training_metadata(request), job_id=job_id)

    def evaluate(self, trained_model_id: str, request: JsonObject) -> Job:
        _require(request, "datasetId", "evaluationRequest")
        tm = self._writable(trained_model_id, "evaluated")
        if tm.status == "TRAINING":
            raise InvalidRequestError(
                f"Trained model {tm.id} cannot be evaluated: its training has not completed"
            )
        return self._start_job("EVALUATION", tm, _evaluation_metadata(request))

    def approve(self, trained_model_id: str, comments: str) -> Event:
        return self._decide(trained_model_id, "APPROVED", comments)

    def reject(self, trained_model_id: str, comments: str) -> Event:
        return self._decide(trained_model_id, "REJECTED", comments)

    def deploy(self, trained_model_id: str, request: JsonObject) -> Job:
        _require(request, "engineType", "deploymentRequest")
        tm = self._writable(trained_model_id, "deployed")
        if tm.status != "APPROVED":
            raise InvalidRequestError(
                f"Trained model {tm.id} cannot be deployed: its status is {tm.status}, "
                "only an APPROVED version can be deployed"
            )
        return self._start_job("DEPLOYMENT", tm, _deployment_metadata(request))

    def retire(self, trained_model_id: str, deployment_id: str) -> Job:
        tm = self.trained_model(trained_model_id)
        deployment = self._deployments.get(deployment_id)
        if deployment is None or deployment.trained_model is not tm:
            raise InvalidRequestError(
                f"Deployment {deployment_id} is not a deployment of trained model {tm.id}"
            )
        if deployment.status != "DEPLOYED":
            raise InvalidRequestError(
                f"Deployment {deployment_id} is not active (status {deployment.status})"
            )
        scoring = deployment.scoring_job
        if scoring is not None and scoring.outcome is None:
            self._retired_while_scoring += 1  # accepted, as nothing says a server refuses it
        metadata = {"retirementRequest": {"deploymentId": deployment_id}}
        job = self._start_job("RETIREMENT", tm, metadata, deployment=deployment)
        deployment.jobs.append(job)
        return job

    # -- bookkeeping ------------------------------------------------------------------------

    def count_request(self, route: str) -> None:
        self._requests[route] += 1
        self._request_times.append(self._clock.now())

    def note_request(self, ids: Iterable[str], at: float) -> None:
        """A request naming these ids arrived at `at`: the jobs of their models that had
        ended by then are noticed now (a job's `detected_at`). Unknown ids are ignored."""
        for entity_id in ids:
            model_id = self._owner.get(entity_id)
            unnoticed = self._unnoticed.get(model_id) if model_id is not None else None
            # Ended jobs queue in end order; a concurrent request may have advanced the world
            # past `at`, so only the ones that ended by then count.
            while unnoticed and unnoticed[0].ends_at <= at:
                unnoticed.popleft().detected_at = at

    def job_records(self) -> list[JsonObject]:
        """What the benchmark needs of each job clients caused (last night's are left out),
        in simulated seconds since the epoch; a stuck job has no end (`ends_at` None)."""
        self.advance()
        return [
            {
                "id": job.id,
                "type": job.type,
                "model_id": job.model_id,
                "created_at": job.created_at,
                "ends_at": None if job.stuck else job.ends_at,
                "outcome": job.outcome,
                "detected_at": job.detected_at,
            }
            for job in itertools.islice(self._job_list, self._history_jobs, None)
        ]

    def count_fault(self, kind: str) -> None:
        self._faults[kind] += 1

    def count_token_issued(self) -> None:
        self._tokens_issued += 1

    def count_token_rejection(self) -> None:
        self._token_rejections += 1

    def stats(self, since: float | None = None) -> dict[str, Any]:
        """Counts since the start; `first_request_at` is the first API request at or after
        `since` (default: the first of all), or None."""
        now = self.advance()
        times = self._request_times
        first = bisect.bisect_left(times, since) if since is not None else 0
        return {
            "now": now,
            "first_request_at": times[first] if first < len(times) else None,
            "last_job_end_at": self._last_end,
            "requests_total": self._requests.total(),
            "requests_by_route": dict(self._requests),
            # Lifecycle jobs clients submitted: no history job, no scoring job.
            "jobs_by_type": dict(self._jobs_by_type),
            "max_jobs_per_model_and_type": self._max_per_key,
            "peak_running_jobs": self._peak_running,
            "running_jobs": self._running,
            "jobs_total": self._jobs_by_type.total(),
            "scoring_jobs": self._scoring_jobs,
            # Retire requests accepted while the deployment's scoring job was still running.
            "retired_while_scoring": self._retired_while_scoring,
            "history_jobs": self._history_jobs,  # last night's, in the job list from the start
            "models": len(self._model_list),
            "archived_models": len(self._archived),
            "active_deployments": len(self._active),
            "faults": dict(self._faults),
            "tokens_issued": self._tokens_issued,  # by the OAuth2 token URL
            # API requests refused with 401: no bearer token, an unknown one or an expired one.
            "token_rejections": self._token_rejections,
        }

    # -- internals --------------------------------------------------------------------------

    def _writable(self, trained_model_id: str, verb: str) -> TrainedModel:
        """A version a lifecycle step may act on: neither it nor its model is archived."""
        tm = self.trained_model(trained_model_id)
        if self._models[tm.model_id].archived:
            raise InvalidRequestError(
                f"Model {tm.model_id} is archived: its trained models cannot be {verb}"
            )
        if tm.archived:
            raise InvalidRequestError(f"Trained model {tm.id} is archived and cannot be {verb}")
        return tm

    def _decide(self, trained_model_id: str, decision: str, comments: str) -> Event:
        verb = "approved" if decision == "APPROVED" else "rejected"
        tm = self._writable(trained_model_id, verb)
        if tm.status in {"APPROVED", "REJECTED"}:
            raise InvalidRequestError(
                f"Trained model {tm.id} cannot be {verb}: it is already {tm.status}"
            )
        if tm.status != "EVALUATED":
            raise InvalidRequestError(
                f"Trained model {tm.id} cannot be {verb}: its status is {tm.status}, "
                "it must be EVALUATED first"
            )
        return self._transition(
            tm, decision, self._clock.now(), metadata={"comments": comments}, set_status=True
        )

    def _new_version(
        self, model: Model, at: float, job_id: str, *, archived: bool = False
    ) -> TrainedModel:
        versions = self._versions[model.id]
        tm = TrainedModel(
            id=draws.uuid_from(self._ids),
            model_id=model.id,
            version=len(versions) + 1,
            created_at=at,
            job_id=job_id,
            external_id=draws.uuid_from(self._ids),
            # Not a documented status: the version exists but has no TRAINED event yet.
            status="TRAINING",
            archived=archived,
        )
        versions.append(tm)
        self._trained[tm.id] = tm
        self._owner[tm.id] = model.id
        return tm

    def _start_job(
        self,
        job_type: str,
        tm: TrainedModel,
        metadata: JsonObject,
        *,
        job_id: str | None = None,
        deployment: Deployment | None = None,
    ) -> Job:
        """A lifecycle job a client submitted, created now."""
        # Every change due by now is applied first: the index's change log stays in time order.
        now = self.advance()
        key = (tm.model_id, job_type)
        self._jobs_per_key[key] += 1
        nth = self._jobs_per_key[key]
        job = Job(
            id=job_id or draws.uuid_from(self._ids),
            type=job_type,
            model_id=tm.model_id,
            trained_model=tm,
            created_at=now,
            ends_at=now + self.duration(tm.model_id, job_type, nth),
            will_fail=self.job_will_fail(tm.model_id, job_type, nth),
            metadata=metadata,
            events_seen=len(tm.events),
            deployment_id=None if deployment is None else deployment.id,
            stuck=self.job_will_stick(tm.model_id, job_type, nth),
        )
        self._add_job(job)
        self._jobs_by_type[job_type] += 1
        self._max_per_key = max(self._max_per_key, nth)
        self._running += 1
        self._peak_running = max(self._peak_running, self._running)
        return job

    def _start_scoring(self, deployment: Deployment, at: float) -> None:
        """The batch scoring a `cron = "@once"` deployment runs at once (not a lifecycle job)."""
        tm = deployment.trained_model
        self._scoring_per_model[tm.model_id] += 1
        nth = self._scoring_per_model[tm.model_id]
        job = Job(
            id=draws.uuid_from(self._ids),
            type=draws.SCORING,
            model_id=tm.model_id,
            trained_model=tm,
            created_at=at,
            ends_at=at + self.duration(tm.model_id, draws.SCORING, nth),
            will_fail=False,
            metadata={
                "scoringRequest": {"engineType": deployment.engine_type, "cron": deployment.cron},
                "automation": deployment.engine_type_config,
            },
            events_seen=len(tm.events),
            deployment_id=deployment.id,
        )
        deployment.scoring_job = job
        deployment.jobs.append(job)
        self._add_job(job)
        self._scoring_jobs += 1

    def _add_job(self, job: Job) -> None:
        """A job created at `job.created_at`, which is now in the world's time."""
        self._jobs[job.id] = job
        self._job_list.append(job)
        self._owner[job.id] = job.model_id
        if self._index is None:
            self._schedule(job.ends_at, job, _END)
        else:
            self._index.added(job, job.status_at(job.created_at))
            self._schedule(job.phase(1)[1], job, 1)

    def _schedule(self, at: float, job: Job, phase: int) -> None:
        heapq.heappush(self._due, (at, next(self._seq), job.id, phase))

    def _finish(self, job: Job) -> None:
        if job.stuck:
            self._faults["job_stuck"] += 1  # it stays RUNNING: nothing else happens
            return
        at = job.ends_at
        job.outcome = "ERROR" if job.will_fail else "COMPLETED"
        if self._index is not None:
            self._index.changed(job, job.outcome)
        self._unnoticed.setdefault(job.model_id, deque()).append(job)
        if job.type == draws.SCORING:
            return
        self._running -= 1
        self._last_end = at
        if job.will_fail:
            self._faults["job_error"] += 1
            return
        tm = job.trained_model
        if job.type == "TRAINING":
            self._transition(tm, "TRAINED", at, job_id=job.id, set_status=True)
        elif job.type == "EVALUATION":
            lag = self.behaviour.evaluated_lag_s
            if lag < math.inf:
                self._schedule(at + lag, job, _EVALUATED)
        elif job.type == "DEPLOYMENT":
            self._open_deployment(tm, job.id, at, job.metadata["deploymentRequest"])
        else:
            self._close_deployment(self._deployments[job.deployment_id or ""], job.id, at)

    def _evaluated(self, job: Job, at: float) -> None:
        tm = job.trained_model
        self._transition(
            tm,
            "EVALUATED",
            at,
            job_id=job.id,
            dataset_id=_str_or_none(job.metadata["evaluationRequest"].get("datasetId")),
            metadata=draws.metrics(self.settings.seed, tm.model_id, tm.version),
            set_status=tm.status in _EVALUATED_FROM,
        )

    def _open_deployment(
        self, tm: TrainedModel, job_id: str, at: float, request: JsonObject
    ) -> Deployment:
        deployment = Deployment(
            id=draws.uuid_from(self._ids),
            trained_model=tm,
            job_id=job_id,
            created_at=at,
            updated_at=at,
            status="DEPLOYED",
            engine_type=str(request.get("engineType", "DOCKER_BATCH")),
            engine_type_config=_automation("deploy", _dict(request, "engineTypeConfig")),
            cron=str(request.get("cron", "@once")),
        )
        self._deployments[deployment.id] = deployment
        self._owner[deployment.id] = tm.model_id
        self._deployment_by_job[job_id] = deployment
        self._active[deployment.id] = deployment
        tm.deployments.append(deployment)
        self._transition(
            tm, "DEPLOYED", at, job_id=job_id, set_status=self.behaviour.deployed_version_status
        )
        if deployment.cron == "@once":
            self._start_scoring(deployment, at)
        return deployment

    def _close_deployment(self, deployment: Deployment, job_id: str, at: float) -> None:
        # Two retire jobs for one deployment can both complete; the second changes nothing.
        if deployment.status != "DEPLOYED":
            return
        deployment.status = "RETIRED"
        deployment.updated_at = at
        deployment.retirement_job_id = job_id
        del self._active[deployment.id]
        tm = deployment.trained_model
        if not tm.active_deployments():
            self._transition(
                tm, "RETIRED", at, job_id=job_id, set_status=self.behaviour.deployed_version_status
            )

    def _transition(
        self,
        tm: TrainedModel,
        status: str,
        at: float,
        *,
        set_status: bool,
        **of: Unpack[_EventOf],
    ) -> Event:
        """The one place a version gains an event and, with it, possibly a new status."""
        event = Event(draws.uuid_from(self._ids), tm.id, at, status, **of)
        tm.events.append(event)
        if set_status:
            tm.status = status
        return event

    # -- the project as it is found --------------------------------------------------------

    def _populate(self, start: float) -> None:
        history: list[Job] = []
        for index in range(self.settings.models):
            model = self._new_model(index, start, archived=False)
            if self.settings.initial_deployed:
                self._deploy_last_night(model, start, history)
        for index in range(self.behaviour.archived_models):
            model = self._new_model(self.settings.models + index, start, archived=True)
            self._archive_long_ago(model)
        if self.behaviour.job_history:
            self._keep_history(history)

    def _new_model(self, index: int, start: float, *, archived: bool) -> Model:
        model = Model(
            id=draws.model_id(self.settings.seed, index),
            index=index,
            name=f"store-{index + 1:04d}",
            # Archived models are numbered after the active ones, so name order is age order.
            created_at=start - 180 * _DAY + index * 37.0,
            archived=archived,
        )
        self._models[model.id] = model
        (self._archived if archived else self._model_list).append(model)
        self._owner[model.id] = model.id
        self._versions[model.id] = []
        return model

    def _deploy_last_night(self, model: Model, start: float, history: list[Job]) -> None:
        """Version 1, trained, evaluated, approved and deployed last night; its jobs go to
        `history`. A seeded share of models also trained a version 2 that was archived."""
        seed = self.settings.seed
        rng = draws.spread(seed, model.id, "last-night")
        trained_at = start - 14 * 3600.0 + rng.uniform(0.0, 3600.0)
        evaluated_at = trained_at + rng.uniform(120.0, 1800.0)
        approved_at = evaluated_at + rng.uniform(60.0, 600.0)
        deployed_at = approved_at + rng.uniform(30.0, 300.0)
        train_job, eval_job, deploy_job = (draws.uuid_from(self._ids) for _ in range(3))
        # Last night's jobs took what this model's jobs take (its job 0 of each type): the
        # history a client can learn tonight's durations from, as on a real server.
        training = draws.job_duration(seed, model.id, "TRAINING", 0)
        tm = self._new_version(model, trained_at - training, train_job)
        span = (tm.created_at, trained_at)
        history.append(self._past_job("TRAINING", tm, train_job, span, self._train_request))
        self._transition(tm, "TRAINED", trained_at, job_id=train_job, set_status=True)
        span = (evaluated_at - draws.job_duration(seed, model.id, "EVALUATION", 0), evaluated_at)
        history.append(self._past_job("EVALUATION", tm, eval_job, span, self._eval_request))
        self._transition(
            tm,
            "EVALUATED",
            evaluated_at,
            job_id=eval_job,
            dataset_id=self.eval_dataset_id,
            metadata=draws.metrics(seed, model.id, tm.version),
            set_status=True,
        )
        self._transition(
            tm, "APPROVED", approved_at, metadata={"comments": "nightly run"}, set_status=True
        )
        request = {
            "engineType": "DOCKER_BATCH",
            "engineTypeConfig": {"engine": "python-batch"},
            "language": "PYTHON",
            "publishOnly": False,
            "datasetConnectionId": self.dataset_connection_id,
            "datasetTemplateId": self.dataset_template_id,
            "cron": "@daily",
        }
        deploying = deployed_at - draws.job_duration(seed, model.id, "DEPLOYMENT", 0)
        span = (max(approved_at, deploying), deployed_at)
        history.append(self._past_job("DEPLOYMENT", tm, deploy_job, span, request))
        self._open_deployment(tm, deploy_job, deployed_at, request)
        rate = self.behaviour.archived_versions_rate
        if rate > 0 and draws.spread(seed, model.id, "archived-version").random() < rate:
            created = deployed_at + rng.uniform(600.0, 3600.0)
            history.append(self._archived_version(model, created))

    def _archived_version(self, model: Model, created: float) -> Job:
        """A version trained after the deployed one, then archived; returns its train job."""
        trained = created + draws.job_duration(self.settings.seed, model.id, "TRAINING", 0)
        job_id = draws.uuid_from(self._ids)
        tm = self._new_version(model, created, job_id, archived=True)
        job = self._past_job("TRAINING", tm, job_id, (created, trained), self._train_request)
        self._transition(tm, "TRAINED", trained, job_id=job_id, set_status=True)
        return job

    @property
    def _train_request(self) -> JsonObject:
        return {
            "datasetId": self.train_dataset_id,
            "datasetConnectionId": self.dataset_connection_id,
        }

    @property
    def _eval_request(self) -> JsonObject:
        return {
            "datasetId": self.eval_dataset_id,
            "datasetConnectionId": self.dataset_connection_id,
        }

    def _past_job(
        self,
        job_type: str,
        tm: TrainedModel,
        job_id: str,
        span: tuple[float, float],
        request: JsonObject,
    ) -> Job:
        """A COMPLETED job of last night's run, from `span[0]` to `span[1]`; made before the
        transition it causes, so it shows the events the version had when it was created."""
        metadata = {
            "TRAINING": _training_metadata,
            "EVALUATION": _evaluation_metadata,
            "DEPLOYMENT": _deployment_metadata,
        }[job_type](request)
        return Job(
            id=job_id,
            type=job_type,
            model_id=tm.model_id,
            trained_model=tm,
            created_at=span[0],
            ends_at=span[1],
            will_fail=False,
            metadata=metadata,
            events_seen=len(tm.events),
            history=True,
            outcome="COMPLETED",
        )

    def _keep_history(self, history: list[Job]) -> None:
        """Last night's jobs become the start of the job list, in creation order."""
        history.sort(key=lambda job: job.created_at)
        for job in history:
            self._jobs[job.id] = job
            self._owner[job.id] = job.model_id
        self._job_list.extend(history)
        self._history_jobs = len(history)
        if self._index is not None:
            self._index.add_ended(history)

    def _archive_long_ago(self, model: Model) -> None:
        """An archived model keeps the version it had: trained and evaluated, never deployed."""
        rng = draws.spread(self.settings.seed, model.id, "archived")
        trained_at = model.created_at + rng.uniform(5 * _DAY, 30 * _DAY)
        job_id = draws.uuid_from(self._ids)
        tm = self._new_version(model, trained_at - rng.uniform(300.0, 1200.0), job_id)
        self._transition(tm, "TRAINED", trained_at, job_id=job_id, set_status=True)
        self._transition(
            tm,
            "EVALUATED",
            trained_at + rng.uniform(120.0, 1800.0),
            job_id=draws.uuid_from(self._ids),
            dataset_id=self.eval_dataset_id,
            metadata=draws.metrics(self.settings.seed, model.id, tm.version),
            set_status=True,
        )


_DEFAULT_RESOURCES = {"memory": "500m", "cpu": "0.5"}
_DEFAULT_IMAGE = "artifacts.td.teradata.com/tdproduct-docker-snapshot/avmo/vmo-python-base:3.9.4"


def _require(request: JsonObject, name: str, request_name: str) -> None:
    value = request.get(name)
    if not isinstance(value, str) or not value:
        raise missing_field(name, request_name)


def _training_metadata(request: JsonObject) -> JsonObject:
    automation = _automation("base", _dict(request, "automationOverrides"))
    return {"trainingRequest": request, **_job_context(request), "automation": automation}


def _evaluation_metadata(request: JsonObject) -> JsonObject:
    automation = _automation("base", _dict(request, "automationOverrides"))
    return {
        "evaluationRequest": {**request, "automation": automation},
        **_job_context(request),
        "automation": automation,
    }


def _deployment_metadata(request: JsonObject) -> JsonObject:
    engine_config = _automation("deploy", _dict(request, "engineTypeConfig"))
    return {
        "deploymentRequest": {
            **request,
            "engineTypeConfig": engine_config,
            "type": "MODEL_VERSION",
        },
        **_job_context(request),
        "automation": engine_config,
    }


def _automation(kind: str, overrides: JsonObject) -> JsonObject:
    """The automation a job runs with: the project's defaults under what the request overrides."""
    resources = overrides.get("resources")
    return {
        "@type": kind,
        "dockerImage": _DEFAULT_IMAGE,
        **overrides,
        "resources": _DEFAULT_RESOURCES | (resources if isinstance(resources, dict) else {}),
    }


def _dict(request: JsonObject, key: str) -> JsonObject:
    value = request.get(key)
    return dict(value) if isinstance(value, dict) else {}


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _job_context(request: JsonObject) -> JsonObject:
    """The request fields ModelOps repeats at the top of a job's metadata."""
    connection = request.get("datasetConnectionId")
    return {} if connection is None else {"datasetConnectionId": connection}
