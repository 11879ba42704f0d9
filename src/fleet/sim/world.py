"""The in-memory ModelOps: projects, models, versions, jobs and deployments, with no HTTP.

Nothing runs in the background. Every call first `advance()`s the world to the clock's time,
applying due status changes (a job's queue phases, then its end) in time order, so the emulator
is as deterministic as its clock. Every lookup goes through a dict, an append-only list or the
job index (`index.py`), so it stays fast with 10,000 models and tens of thousands of jobs.

The world also records, for the benchmark and at no cost to the answers, when each job's end
was first noticed: the first request about its model after it ended (`note_request`).
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import math
import random
from array import array
from collections import Counter, deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fleet.sim import draws
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

if TYPE_CHECKING:
    from _collections_abc import dict_values
    from collections.abc import Collection, Iterable, Sequence

    from fleet.sim.clock import Clock

_DAY = 86_400.0
_END = -1  # the phase number of a job's end in the schedule of status changes
_FAULT_KINDS = ("http_500", "http_503", "http_429", "slow", "drop", "delay_after", "job_error")
_FAULT_METHODS = frozenset({"GET", "POST"})
# A version can be approved only from EVALUATED; evaluating again never demotes a decision.
_EVALUATED_FROM = frozenset({"TRAINED", "EVALUATED"})


# The settings that are probabilities, each within [0, 1].
RATE_FIELDS = (
    "job_error_rate",
    "http_500_rate",
    "http_503_rate",
    "http_429_rate",
    "slow_rate",
    "drop_rate",
    "delay_after_rate",
)


@dataclass(frozen=True, slots=True)
class SimSettings:
    """How big the emulated project is and how badly it behaves.

    Rates are probabilities in [0, 1]: `job_error_rate` per job (decided by a hash of the job,
    see `World.job_will_fail`), the others per API request whose method is in `fault_methods`.
    `drop_rate` and `delay_after_rate` strike after the request took effect: its answer is cut
    off mid-body (the client sees a transport error), or sent only after `delay_after_s`.

    With `client_id` and `client_secret` set, `POST /oauth2/token` hands out access tokens
    (OAuth2 client credentials) that expire `token_lifetime_s` later on the emulator's clock;
    the static `token` keeps working alongside them.
    """

    models: int = 200  # named store-0001 ... store-0200
    seed: int = 0  # everything random (ids, durations, metrics, failures) derives from it
    time_scale: float = 60.0  # simulated seconds per real second, for `SimClock`
    token: str = "fleet-demo-token"  # noqa: S105 - the emulator's own demo credential
    project_id: str = "5f1a3c9e-8d2b-4e7a-9c61-0f2d4b8a7e13"
    job_error_rate: float = 0.0
    http_500_rate: float = 0.0
    http_503_rate: float = 0.0
    http_429_rate: float = 0.0
    retry_after_s: float = 1.0  # sent with 429 and 503, rounded up to whole seconds
    slow_rate: float = 0.0
    slow_s: float = 0.5  # real seconds a slow request waits before it is handled
    drop_rate: float = 0.0
    delay_after_rate: float = 0.0
    delay_after_s: float = 5.0  # real seconds a handled request holds back its answer
    fault_methods: tuple[str, ...] = ("GET", "POST")  # the methods the HTTP faults strike
    initial_deployed: bool = True  # every model starts with a version deployed last night
    client_id: str | None = None  # None: no token URL, only the static `token`
    client_secret: str | None = None  # set together with client_id
    token_lifetime_s: float = 3600.0  # simulated seconds an issued access token is valid
    # GET /api/jobs/search/findByStatusIn and sort=updatedAt on GET /api/jobs, as the aoa 7.0
    # client knew them; False answers like a 7.3 server: 404 and 400.
    batch_finders: bool = True

    def __post_init__(self) -> None:
        if self.models < 0:
            raise ValueError(f"models must be >= 0, got {self.models}")
        if self.time_scale <= 0:
            raise ValueError(f"time_scale must be positive, got {self.time_scale}")
        for name in RATE_FIELDS:
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be within [0, 1], got {getattr(self, name)}")
        if self.http_500_rate + self.http_503_rate + self.http_429_rate > 1.0:
            raise ValueError("http_500_rate + http_503_rate + http_429_rate must not exceed 1")
        if self.drop_rate + self.delay_after_rate > 1.0:
            raise ValueError("drop_rate + delay_after_rate must not exceed 1")
        if self.retry_after_s < 0 or self.slow_s < 0 or self.delay_after_s < 0:
            raise ValueError("retry_after_s, slow_s and delay_after_s must be >= 0")
        methods = self.fault_methods
        if not isinstance(methods, tuple) or not _FAULT_METHODS.issuperset(methods):
            raise ValueError(
                f"fault_methods must be a tuple of GET and POST, got {self.fault_methods!r}"
            )
        self._check_client_credentials()

    def _check_client_credentials(self) -> None:
        if (self.client_id is None) != (self.client_secret is None):
            raise ValueError("client_id and client_secret must be set together")
        # HTTP Basic splits the credentials at the first colon, so an id cannot contain one.
        if self.client_id is not None and (not self.client_id or ":" in self.client_id):
            raise ValueError(f"client_id must be non-empty and without ':', got {self.client_id!r}")
        if self.client_secret == "":
            raise ValueError("client_secret must not be empty")
        if not 0 < self.token_lifetime_s < math.inf:
            raise ValueError(f"token_lifetime_s must be positive, got {self.token_lifetime_s}")


class SimError(Exception):
    """A request the emulated service refuses; `status` is the HTTP status it answers."""

    status = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFoundError(SimError):
    status = 404


class InvalidRequestError(SimError):
    status = 400


class World:
    """One emulated ModelOps project and everything in it."""

    def __init__(self, settings: SimSettings, clock: Clock) -> None:
        self.settings = settings
        self._clock = clock
        self._ids = random.Random(f"{settings.seed}:ids")  # noqa: S311 - reproducible ids
        self._seq = itertools.count()
        start = clock.now()
        self.project = Project(settings.project_id, "Store demand forecasting", start - 400 * _DAY)
        self._models: dict[str, Model] = {}
        self._model_list: list[Model] = []
        self._trained: dict[str, TrainedModel] = {}
        self._versions: dict[str, list[TrainedModel]] = {}
        self._jobs: dict[str, Job] = {}
        self._job_list: list[Job] = []
        # Heap of (time, seq, job id, phase): the job's next status change, where phase
        # numbers `Job.phase()` and `_END` is its end. Without batch finders nothing needs
        # the queue phases, so only ends are scheduled.
        self._due: list[tuple[float, int, str, int]] = []
        self._index = JobIndex() if settings.batch_finders else None
        self._jobs_per_key: Counter[tuple[str, str]] = Counter()
        self._deployments: dict[str, Deployment] = {}
        self._deployment_by_job: dict[str, Deployment] = {}
        self._active: dict[str, Deployment] = {}  # insertion order = creation order
        self._running = 0
        self._peak_running = 0
        self._max_per_key = 0
        self._jobs_by_type: Counter[str] = Counter(dict.fromkeys(draws.JOB_TYPES, 0))
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
        self._populate(start)

    # -- time -------------------------------------------------------------------------------

    def now(self) -> float:
        return self._clock.now()

    def advance(self) -> float:
        """Apply, in time order, every status change that is due; returns the time it is now."""
        now = self._clock.now()
        due = self._due
        while due and due[0][0] <= now:
            _, _, job_id, phase = heapq.heappop(due)
            job = self._jobs[job_id]
            if phase == _END:
                self._finish(job)
                continue
            assert self._index is not None  # phases are only scheduled for the index
            self._index.changed(job, QUEUE_PHASES[phase][0])
            following = phase + 1
            if following < len(QUEUE_PHASES):
                at = job.phase(following)[1]
                heapq.heappush(due, (at, next(self._seq), job.id, following))
            else:
                heapq.heappush(due, (job.ends_at, next(self._seq), job.id, _END))
        return now

    def duration(self, model_id: str, job_type: str, nth: int) -> float:
        """Simulated seconds the `nth` (1-based) job of `job_type` for a model takes."""
        return draws.job_duration(self.settings.seed, model_id, job_type, nth)

    def job_will_fail(self, model_id: str, job_type: str, nth: int) -> bool:
        """Whether the `nth` (1-based) job of `job_type` for a model ends in ERROR."""
        return draws.job_fails(
            self.settings.seed, model_id, job_type, nth, self.settings.job_error_rate
        )

    # -- reads ------------------------------------------------------------------------------

    def model(self, model_id: str) -> Model:
        try:
            return self._models[model_id]
        except KeyError:
            raise NotFoundError(f"Model {model_id} not found") from None

    def models(self) -> Sequence[Model]:
        return self._model_list

    def job(self, job_id: str) -> Job:
        self.advance()
        try:
            return self._jobs[job_id]
        except KeyError:
            raise NotFoundError(f"Job {job_id} not found") from None

    def jobs(self) -> Sequence[Job]:
        """All jobs, oldest first."""
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
            raise NotFoundError("Job finders by status are not offered by this server")
        now = self.advance()
        jobs = self._index.page(statuses, order, offset, limit, descending=descending)
        return jobs, self._index.count(statuses), now

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
        self.advance()
        model = self.model(model_id)
        now = self._clock.now()
        job_id = draws.uuid_from(self._ids)
        versions = self._versions.setdefault(model.id, [])
        tm = TrainedModel(
            id=draws.uuid_from(self._ids),
            model_id=model.id,
            version=len(versions) + 1,
            created_at=now,
            job_id=job_id,
            external_id=draws.uuid_from(self._ids),
            # Not a documented status: the version exists but has no TRAINED event yet.
            status="TRAINING",
        )
        versions.append(tm)
        self._trained[tm.id] = tm
        self._owner[tm.id] = model.id
        automation = _automation("base", _dict(request, "automationOverrides"))
        metadata = {"trainingRequest": request, **_job_context(request), "automation": automation}
        return self._start_job("TRAINING", tm, metadata, job_id=job_id)

    def evaluate(self, trained_model_id: str, request: JsonObject) -> Job:
        tm = self.trained_model(trained_model_id)
        if tm.status == "TRAINING":
            raise InvalidRequestError(
                f"Trained model {tm.id} cannot be evaluated: its training has not completed"
            )
        automation = _automation("base", _dict(request, "automationOverrides"))
        metadata = {
            "evaluationRequest": {**request, "automation": automation},
            **_job_context(request),
            "automation": automation,
        }
        return self._start_job("EVALUATION", tm, metadata)

    def approve(self, trained_model_id: str, comments: str) -> Event:
        return self._decide(trained_model_id, "APPROVED", comments)

    def reject(self, trained_model_id: str, comments: str) -> Event:
        return self._decide(trained_model_id, "REJECTED", comments)

    def deploy(self, trained_model_id: str, request: JsonObject) -> Job:
        tm = self.trained_model(trained_model_id)
        if tm.status != "APPROVED":
            raise InvalidRequestError(
                f"Trained model {tm.id} cannot be deployed: its status is {tm.status}, "
                "only an APPROVED version can be deployed"
            )
        engine_type = request.get("engineType")
        if not isinstance(engine_type, str) or not engine_type:
            raise InvalidRequestError("engineType is required")
        engine_config = _automation("deploy", _dict(request, "engineTypeConfig"))
        metadata = {
            "deploymentRequest": {
                **request,
                "engineTypeConfig": engine_config,
                "type": "MODEL_VERSION",
            },
            **_job_context(request),
            "automation": engine_config,
        }
        return self._start_job("DEPLOYMENT", tm, metadata)

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
        metadata = {"retirementRequest": {"deploymentId": deployment_id}}
        return self._start_job("RETIREMENT", tm, metadata, deployment_id=deployment_id)

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
        """What the benchmark needs of each job, in simulated seconds since the epoch."""
        self.advance()
        return [
            {
                "id": job.id,
                "type": job.type,
                "model_id": job.model_id,
                "created_at": job.created_at,
                "ends_at": job.ends_at,
                "outcome": job.outcome,
                "detected_at": job.detected_at,
            }
            for job in self._job_list
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
            "jobs_by_type": dict(self._jobs_by_type),
            "max_jobs_per_model_and_type": self._max_per_key,
            "peak_running_jobs": self._peak_running,
            "running_jobs": self._running,
            "jobs_total": len(self._job_list),
            "models": len(self._model_list),
            "active_deployments": len(self._active),
            "faults": dict(self._faults),
            "tokens_issued": self._tokens_issued,  # by the OAuth2 token URL
            # API requests refused with 401: no bearer token, an unknown one or an expired one.
            "token_rejections": self._token_rejections,
        }

    # -- internals --------------------------------------------------------------------------

    def _decide(self, trained_model_id: str, decision: str, comments: str) -> Event:
        tm = self.trained_model(trained_model_id)
        verb = "approved" if decision == "APPROVED" else "rejected"
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

    def _start_job(
        self,
        job_type: str,
        tm: TrainedModel,
        metadata: JsonObject,
        *,
        job_id: str | None = None,
        deployment_id: str | None = None,
    ) -> Job:
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
            deployment_id=deployment_id,
        )
        self._jobs[job.id] = job
        self._job_list.append(job)
        self._owner[job.id] = job.model_id
        if self._index is None:
            heapq.heappush(self._due, (job.ends_at, next(self._seq), job.id, _END))
        else:
            self._index.added(job, job.status_at(now))
            heapq.heappush(self._due, (job.phase(1)[1], next(self._seq), job.id, 1))
        self._jobs_by_type[job_type] += 1
        self._max_per_key = max(self._max_per_key, nth)
        self._running += 1
        self._peak_running = max(self._peak_running, self._running)
        return job

    def _finish(self, job: Job) -> None:
        self._running -= 1
        self._last_end = job.ends_at
        self._unnoticed.setdefault(job.model_id, deque()).append(job)
        job.outcome = "ERROR" if job.will_fail else "COMPLETED"
        if self._index is not None:
            self._index.changed(job, job.outcome)
        if job.will_fail:
            self._faults["job_error"] += 1
            return
        tm, at = job.trained_model, job.ends_at
        if job.type == "TRAINING":
            self._transition(tm, "TRAINED", at, job_id=job.id, set_status=True)
        elif job.type == "EVALUATION":
            self._transition(
                tm,
                "EVALUATED",
                at,
                job_id=job.id,
                dataset_id=_str_or_none(job.metadata["evaluationRequest"].get("datasetId")),
                metadata=draws.metrics(self.settings.seed, tm.model_id, tm.version),
                set_status=tm.status in _EVALUATED_FROM,
            )
        elif job.type == "DEPLOYMENT":
            self._open_deployment(tm, job.id, at, job.metadata["deploymentRequest"])
        else:
            self._close_deployment(self._deployments[job.deployment_id or ""], job.id, at)

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
        self._transition(tm, "DEPLOYED", at, job_id=job_id, set_status=True)
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
            self._transition(tm, "RETIRED", at, job_id=job_id, set_status=True)

    def _transition(
        self,
        tm: TrainedModel,
        status: str,
        at: float,
        *,
        set_status: bool,
        job_id: str | None = None,
        dataset_id: str | None = None,
        metadata: JsonObject | None = None,
    ) -> Event:
        """The one place a version gains an event and, with it, possibly a new status."""
        event = Event(draws.uuid_from(self._ids), tm.id, at, status, job_id, dataset_id, metadata)
        tm.events.append(event)
        if set_status:
            tm.status = status
        return event

    def _populate(self, start: float) -> None:
        seed = self.settings.seed
        for index in range(self.settings.models):
            model = Model(
                id=draws.model_id(seed, index),
                index=index,
                name=f"store-{index + 1:04d}",
                created_at=start - 180 * _DAY + index * 37.0,
            )
            self._models[model.id] = model
            self._model_list.append(model)
            self._owner[model.id] = model.id
            self._versions[model.id] = []
            if self.settings.initial_deployed:
                self._deploy_last_night(model, start)

    def _deploy_last_night(self, model: Model, start: float) -> None:
        """Version 1, trained, evaluated, approved and deployed last night without real jobs."""
        rng = draws.spread(self.settings.seed, model.id, "last-night")
        trained_at = start - 14 * 3600.0 + rng.uniform(0.0, 3600.0)
        evaluated_at = trained_at + rng.uniform(120.0, 1800.0)
        approved_at = evaluated_at + rng.uniform(60.0, 600.0)
        deployed_at = approved_at + rng.uniform(30.0, 300.0)
        # The jobs of last night's run are referenced by id but not kept by the emulator.
        train_job, eval_job, deploy_job = (draws.uuid_from(self._ids) for _ in range(3))
        tm = TrainedModel(
            id=draws.uuid_from(self._ids),
            model_id=model.id,
            version=1,
            created_at=trained_at - rng.uniform(300.0, 1200.0),
            job_id=train_job,
            external_id=draws.uuid_from(self._ids),
            status="TRAINING",
        )
        self._versions[model.id].append(tm)
        self._trained[tm.id] = tm
        self._owner[tm.id] = model.id
        self._transition(tm, "TRAINED", trained_at, job_id=train_job, set_status=True)
        self._transition(
            tm,
            "EVALUATED",
            evaluated_at,
            job_id=eval_job,
            dataset_id=self.eval_dataset_id,
            metadata=draws.metrics(self.settings.seed, model.id, tm.version),
            set_status=True,
        )
        self._transition(
            tm, "APPROVED", approved_at, metadata={"comments": "nightly run"}, set_status=True
        )
        request = {
            "engineType": "DOCKER_BATCH",
            "engineTypeConfig": {"engine": "python-batch"},
            "cron": "@daily",
        }
        self._open_deployment(tm, deploy_job, deployed_at, request)


_DEFAULT_RESOURCES = {"memory": "500m", "cpu": "0.5"}
_DEFAULT_IMAGE = "artifacts.td.teradata.com/tdproduct-docker-snapshot/avmo/vmo-python-base:3.9.4"


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
