"""The emulator's HTTP face: ModelOps' REST routes over a `World`, as a Starlette app.

Every API request goes through the same gate, in the order a real deployment applies it:
authentication (the static token or one issued by the OAuth2 token URL), project membership,
gateway faults, then the world catches up with the clock and the route runs. A fault answers
before the route runs, so a faulted POST creates nothing; only a dropped, delayed or trickled
answer comes after the route, so its POST did take effect.

The routes, headers, payloads and statuses are those the official client (tmo 7.3) and the
Model Factory tutorial use against real servers. Where no real answer was recorded the route
answers as Spring Data REST does by default, and `Behaviour` (`behaviour.py`) switches to the
other plausible answers:

- An unknown entity id or an unknown search method: 404 with an empty body (SDR's
  `handleNotFound`); an unrouted path outside the repositories: Spring Boot's JSON error body.
  Refusals of the lifecycle POSTs (custom controllers) carry Spring Boot's body too.
- `GET /api/jobs?sort=updatedAt,…`: the sort is dropped, 200 unsorted, as for every property
  not in the entity's JSON (`job_sort` "honoured" sorts, "error" answers 500);
  `sort=createdAt` is always honoured.
- `GET /api/jobs/search/findByStatusIn`: absent, 404 (`status_finder` serves it).
- A job read by id or in a listing may lack `status` (`status_missing_rate`, default never).
- `GET /api/trainedModels/{id}/events`: HAL `_embedded` without a `page` block, as an
  association resource (`events_listing` "list": a bare array, "absent": 404).
  `GET /api/trainedModelEvents/search/findByTrainedModelId` is a HAL page in every case.
- `GET /api/jobs/search/findByDeploymentId`: the scoring (and retirement) jobs of a
  deployment, as tmo's `JobApi.find_by_deployment_id` reads them.
"""

from __future__ import annotations

import email.utils
import random
import re
from typing import TYPE_CHECKING

import anyio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from fleet.sim import binding, views
from fleet.sim.errors import (
    InvalidRequestError,
    NotFoundError,
    ServerError,
    SimError,
    missing_field,
)
from fleet.sim.faults import DroppedResponse, Fault, FaultInjector, TrickledResponse
from fleet.sim.oauth import TOKEN_PATH, TokenEndpoint, Tokens
from fleet.sim.paging import PageRequest, hal_page, page_request

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping, Sequence

    from starlette.requests import Request
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from fleet.sim.index import Order
    from fleet.sim.records import Job, JsonObject, Model
    from fleet.sim.world import World

    Handler = Callable[[Request], Awaitable[Response]]

PREFIX = "/modelops/core"
_HAL = "application/hal+json"
_PROJECT_HEADERS = ("aoa-project-id", "vmo-project-id")
_EXPIRED_CHALLENGE = 'Bearer error="invalid_token", error_description="The access token expired"'
# A repository's search resource: SDR answers an unknown method there with an empty 404.
_SEARCH = re.compile(re.escape(PREFIX) + r"/api/[A-Za-z]+/search/[^/]+/?")
# `updatedAt` is parsed as a sort so that `Behaviour.job_sort` decides what it does.
_JOB_SORTS = frozenset({"createdAt", "updatedAt"})
_MODEL_SORTS = frozenset({"createdAt", "updatedAt", "name"})


def create_app(
    world: World, *, sleep: Callable[[float], Awaitable[None]] = anyio.sleep
) -> Starlette:
    """The ModelOps API under `/modelops/core`, plus `GET /_sim/stats` and `GET /_sim/jobs`.

    `/_sim/stats?since=T` takes `first_request_at` as the first API request at or after the
    simulated time T. `/_sim/jobs` lists every job clients caused (not last night's) with its
    simulated creation, end and detection times, for the benchmark. Neither is an API
    request: they are not counted.

    With a `client_id` configured, also the OAuth2 token URL `POST /oauth2/token` (outside the
    API: no bearer token, no faults). Slow and delayed answers wait with `sleep` (real seconds;
    tests pass their own).
    """
    tokens = Tokens(world)
    api = _Api(world, tokens, sleep)
    routes = [
        Route(PREFIX + path, api.gate(method, path, handler), methods=[method])
        for method, path, handler in api.routes()
    ]
    routes.append(Route("/_sim/stats", api.stats, methods=["GET"]))
    routes.append(Route("/_sim/jobs", api.sim_jobs, methods=["GET"]))
    if world.settings.client_id is not None:
        routes.append(Route(TOKEN_PATH, TokenEndpoint(world, tokens).handle, methods=["POST"]))
    return Starlette(
        routes=routes,
        exception_handlers={HTTPException: api.unrouted},
        middleware=[Middleware(_ServerDate, world=world)],
    )


class _ServerDate:
    """Every answer carries a `Date` header from the service's own clock, as a real server's
    does (Tomcat's, from the clock that stamps `createdAt`): with a sped-up clock, the
    emulator's time, not this machine's."""

    def __init__(self, app: ASGIApp, *, world: World) -> None:
        self._app = app
        self._world = world

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return

        async def dated(message: Message) -> None:
            if message["type"] == "http.response.start":
                stamp = email.utils.formatdate(self._world.now(), usegmt=True)
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"date"]
                message = {**message, "headers": [*headers, (b"date", stamp.encode("latin-1"))]}
            await send(message)

        await self._app(scope, receive, dated)


def _hal(payload: JsonObject) -> JSONResponse:
    return JSONResponse(payload, media_type=_HAL)


class _Api:
    def __init__(
        self, world: World, tokens: Tokens, sleep: Callable[[float], Awaitable[None]]
    ) -> None:
        self._world = world
        self._sleep = sleep
        self._faults = FaultInjector(world.settings)
        self._tokens = tokens
        self._project_id = world.project.id.lower()
        self._behaviour = world.behaviour
        self._shape = views.JobShape(world.behaviour.updated_at, world.job_type_names)
        # Its own stream, so turning it on moves no other draw.
        self._status_rng = random.Random(f"{world.settings.seed}:status-missing")  # noqa: S311

    def routes(self) -> list[tuple[str, str, Handler]]:
        finders: list[tuple[str, str, Handler]] = []
        if self._behaviour.status_finder:
            finders.append(("GET", "/api/jobs/search/findByStatusIn", self.find_jobs_by_status))
        return [
            ("GET", "/api/projects/{project_id}", self.get_project),
            ("GET", "/api/models", self.list_models),
            ("GET", "/api/models/search/findByArchived", self.find_models_by_archived),
            ("GET", "/api/models/{model_id}", self.get_model),
            ("POST", "/api/models/{model_id}/train", self.train),
            ("GET", "/api/jobs", self.list_jobs),
            *finders,
            ("GET", "/api/jobs/search/findByDeploymentId", self.find_jobs_by_deployment),
            ("GET", "/api/jobs/{job_id}", self.get_job),
            ("GET", "/api/trainedModels/search/findByModelId", self.find_versions),
            ("GET", "/api/trainedModels/search/findByModelIdAndStatus", self.find_versions),
            ("GET", "/api/trainedModels/{trained_model_id}", self.get_trained_model),
            ("GET", "/api/trainedModels/{trained_model_id}/events", self.list_events),
            ("GET", "/api/trainedModelEvents/search/findByTrainedModelId", self.find_events),
            ("POST", "/api/trainedModels/{trained_model_id}/evaluate", self.evaluate),
            ("POST", "/api/trainedModels/{trained_model_id}/approve", self.approve),
            ("POST", "/api/trainedModels/{trained_model_id}/reject", self.reject),
            ("POST", "/api/trainedModels/{trained_model_id}/deploy", self.deploy),
            ("POST", "/api/trainedModels/{trained_model_id}/retire", self.retire),
            ("GET", "/api/deployments/search/findByJobId", self.find_deployment_by_job),
            (
                "GET",
                "/api/deployments/search/findByStatusAndTrainedModelId",
                self.find_deployments,
            ),
            ("GET", "/api/deployments/search/findActive", self.find_active),
        ]

    # -- the gate ---------------------------------------------------------------------------

    def gate(self, method: str, path: str, handler: Handler) -> Handler:
        route = f"{method} {PREFIX}{path}"
        # The route's method, so a HEAD on a GET route is faulted as the GET it stands for.
        faulty = self._faults.applies_to(method)

        async def endpoint(request: Request) -> Response:
            self._world.count_request(route)
            refusal = self._admit(request)
            if refusal is not None:
                return refusal
            if not faulty:
                return await self._handle(request, handler)
            fault = self._faults.draw()
            if fault is not None:
                return self._fault(request, fault)
            if self._faults.slow():
                self._world.count_fault("slow")
                await self._sleep(self._world.settings.slow_s)
            after = self._faults.after()  # drawn on arrival, so the draws follow arrival order
            answer = await self._handle(request, handler)
            if after is not None:
                self._world.count_fault(after)
            if after == "drop":
                return DroppedResponse(answer)
            if after == "delay_after":
                await self._sleep(self._world.settings.delay_after_s)
            if after == "trickle":
                return TrickledResponse(
                    answer, self._world.settings.trickle_interval_s, self._sleep
                )
            return answer

        return endpoint

    async def _handle(self, request: Request, handler: Handler) -> Response:
        ids = await binding.named_ids(request)
        self._world.advance()
        try:
            return await handler(request)
        except NotFoundError as exc:
            # Every GET is a Spring Data REST resource: its 404 has no body. The POSTs are
            # ModelOps' own controllers, whose refusals carry Spring Boot's error body.
            if request.method == "GET":
                return Response(status_code=404)
            return self._error(request, exc.status, exc.message)
        except SimError as exc:
            return self._error(request, exc.status, exc.message)
        finally:
            # Noticed as of the world the answer was built from: a handler advances the world
            # itself, on a clock that moves while it runs, so a job it reports ended may have
            # ended after the request arrived (noticed at arrival, it would never be).
            self._world.note_request(ids, self._world.advance())

    def _fault(self, request: Request, fault: Fault) -> Response:
        self._world.count_fault(fault.kind)
        headers = {} if fault.retry_after is None else {"Retry-After": str(fault.retry_after)}
        return self._error(request, fault.status, fault.message, headers)

    def _admit(self, request: Request) -> Response | None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        state = self._tokens.check(token) if scheme.lower() == "bearer" else "unknown"
        if state != "valid":
            self._world.count_token_rejection()
            if state == "expired":
                message, challenge = "The access token expired", _EXPIRED_CHALLENGE
            else:
                message = "Full authentication is required to access this resource"
                challenge = "Bearer"
            return self._error(request, 401, message, {"WWW-Authenticate": challenge})
        project = next((request.headers[h] for h in _PROJECT_HEADERS if h in request.headers), None)
        if project is None:
            return self._error(
                request, 400, "Required request header 'AOA-Project-ID' is not present"
            )
        if project.strip().lower() != self._project_id:
            return self._error(request, 403, f"User is not a member of project {project}")
        return None

    def _error(
        self, request: Request, status: int, message: str, headers: Mapping[str, str] | None = None
    ) -> Response:
        body = views.error(status, message, request.url.path, self._world.now())
        return JSONResponse(body, status_code=status, headers=headers)

    async def unrouted(self, request: Request, exc: Exception) -> Response:
        """Unknown paths and methods get Spring's error body too."""
        assert isinstance(exc, HTTPException)  # the only exception this handles
        if request.url.path.startswith(PREFIX):
            self._world.count_request(f"{request.method} <unrouted>")
        if exc.status_code == 404 and _SEARCH.fullmatch(request.url.path):  # noqa: PLR2004
            return Response(status_code=404)
        message = f"{exc.detail}: {request.method} {request.url.path}"
        return self._error(request, exc.status_code, message, exc.headers)

    async def stats(self, request: Request) -> Response:
        since = request.query_params.get("since")
        try:
            return JSONResponse(self._world.stats(None if since is None else float(since)))
        except ValueError:
            return JSONResponse({"error": f"since must be a number, got {since!r}"}, 400)

    async def sim_jobs(self, _request: Request) -> Response:
        return JSONResponse(self._world.job_records())

    # -- routes -----------------------------------------------------------------------------

    async def get_project(self, request: Request) -> Response:
        project_id = binding.path_id(request, "project_id")
        if project_id != self._project_id:
            raise NotFoundError(f"Project {project_id} not found")
        return _hal(views.project(self._world.project))

    async def list_models(self, request: Request) -> Response:
        return self._models_page(request, self._world.listed_models())

    async def find_models_by_archived(self, request: Request) -> Response:
        archived = binding.boolean_parameter(request, "archived")
        models = self._world.archived_models() if archived else self._world.models()
        return self._models_page(request, models)

    async def get_model(self, request: Request) -> Response:
        model = self._world.model(binding.path_id(request, "model_id"))
        return _hal(views.model(model, self._project_id))

    async def train(self, request: Request) -> Response:
        model_id = binding.path_id(request, "model_id")
        job = self._world.train(model_id, await binding.json_body(request))
        return self._job(job, expand=False)

    async def list_jobs(self, request: Request) -> Response:
        paging, order = self._job_paging(request)
        if order == "updatedAt":
            return self._jobs_page(request, paging, None, order)
        jobs = self._world.jobs()
        now = self._world.now()
        items = [self._job_body(j, now, request) for j in paging.window(jobs)]
        return _hal(hal_page("jobs", items, paging, len(jobs)))

    async def find_jobs_by_status(self, request: Request) -> Response:
        statuses = binding.list_parameter(request, "status")
        paging, order = self._job_paging(request)
        return self._jobs_page(request, paging, statuses, order)

    async def find_jobs_by_deployment(self, request: Request) -> Response:
        deployment_id = binding.query_id(request, "deploymentId")
        paging, order = self._job_paging(request)
        jobs = self._world.jobs_of_deployment(deployment_id)
        now = self._world.now()
        if order == "updatedAt":  # a deployment has a handful of jobs: sorting them is cheap
            jobs.sort(key=lambda j: j.updated_at(now))
        items = [self._job_body(j, now, request) for j in paging.window(jobs)]
        return _hal(hal_page("jobs", items, paging, len(jobs)))

    async def get_job(self, request: Request) -> Response:
        job = self._world.job(binding.path_id(request, "job_id"))
        return _hal(self._job_body(job, self._world.now(), request))

    async def get_trained_model(self, request: Request) -> Response:
        tm = self._world.trained_model(binding.path_id(request, "trained_model_id"))
        return _hal(views.trained_model(tm, self._project_id, with_status=True))

    async def find_versions(self, request: Request) -> Response:
        model_id = binding.query_id(request, "modelId")
        status = request.query_params.get("status")
        if request.url.path.endswith("AndStatus") and not status:
            raise InvalidRequestError(binding.missing_parameter("status", "String"))
        paging = page_request(request.query_params)
        versions = self._world.trained_models_of(model_id, status)
        items = [
            views.trained_model(tm, self._project_id, with_status=True)
            for tm in paging.window(versions)
        ]
        return _hal(hal_page("trainedModels", items, paging, len(versions)))

    async def list_events(self, request: Request) -> Response:
        listing = self._behaviour.events_listing
        tm_id = binding.path_id(request, "trained_model_id")
        if listing == "absent":
            raise NotFoundError(f"No events resource for trained model {tm_id}")
        tm = self._world.trained_model(tm_id)
        items = [views.event(e, self._project_id) for e in self._world.events_of(tm.id)]
        if listing == "list":
            return JSONResponse(items)
        path = f"trainedModels/{tm.id}/events"
        return _hal(views.association(path, "trainedModelEvents", items))

    async def find_events(self, request: Request) -> Response:
        trained_model_id = binding.query_id(request, "trainedModelId")
        paging = page_request(request.query_params)
        events = self._world.events_of(trained_model_id)
        items = [views.event(e, self._project_id) for e in paging.window(events)]
        return _hal(hal_page("trainedModelEvents", items, paging, len(events)))

    async def evaluate(self, request: Request) -> Response:
        trained_model_id = binding.path_id(request, "trained_model_id")
        job = self._world.evaluate(trained_model_id, await binding.json_body(request))
        return self._job(job, expand=False)

    async def approve(self, request: Request) -> Response:
        trained_model_id = binding.path_id(request, "trained_model_id")
        event = self._world.approve(
            trained_model_id, binding.comments(await binding.json_body(request))
        )
        return _hal(views.event(event, self._project_id))

    async def reject(self, request: Request) -> Response:
        trained_model_id = binding.path_id(request, "trained_model_id")
        event = self._world.reject(
            trained_model_id, binding.comments(await binding.json_body(request))
        )
        return _hal(views.event(event, self._project_id))

    async def deploy(self, request: Request) -> Response:
        trained_model_id = binding.path_id(request, "trained_model_id")
        job = self._world.deploy(trained_model_id, await binding.json_body(request))
        return self._job(job, expand=False)

    async def retire(self, request: Request) -> Response:
        trained_model_id = binding.path_id(request, "trained_model_id")
        body = await binding.json_body(request)
        deployment_id = body.get("deploymentId")
        if not isinstance(deployment_id, str):
            raise missing_field("deploymentId", "retirementRequest")
        job = self._world.retire(trained_model_id, binding.uuid_of(deployment_id))
        return self._job(job, expand=False)

    async def find_deployment_by_job(self, request: Request) -> Response:
        deployment = self._world.deployment_by_job(binding.query_id(request, "jobId"))
        return _hal(views.deployment(deployment, self._project_id))

    async def find_deployments(self, request: Request) -> Response:
        trained_model_id = binding.query_id(request, "trainedModelId")
        status = request.query_params.get("status")
        if not status:
            raise InvalidRequestError(binding.missing_parameter("status", "String"))
        paging = page_request(request.query_params)
        deployments = self._world.deployments_of(trained_model_id, status)
        items = [views.deployment(d, self._project_id) for d in paging.window(deployments)]
        return _hal(hal_page("deployments", items, paging, len(deployments)))

    async def find_active(self, request: Request) -> Response:
        paging = page_request(request.query_params)
        active = self._world.active_deployments()
        items = [views.deployment(d, self._project_id) for d in paging.window(active)]
        return _hal(hal_page("deployments", items, paging, len(active)))

    # -- helpers ----------------------------------------------------------------------------

    def _models_page(self, request: Request, models: Sequence[Model]) -> Response:
        # Names follow creation order (archived models are numbered last) and a model's
        # updatedAt is its createdAt, so every sort is a read of the list one way or the other.
        paging = page_request(request.query_params, sortable=_MODEL_SORTS)
        items = [views.model(m, self._project_id) for m in paging.window(models)]
        return _hal(hal_page("models", items, paging, len(models)))

    def _job_paging(self, request: Request) -> tuple[PageRequest, Order]:
        """The page asked for, and the order the server really lists jobs in."""
        paging = page_request(request.query_params, sortable=_JOB_SORTS)
        if paging.sort_by != "updatedAt":
            return paging, "createdAt"
        if self._behaviour.job_sort == "error":
            raise ServerError("No property 'updatedAt' found for type 'Job'")
        if self._behaviour.job_sort == "dropped":
            return paging.unsorted(), "createdAt"
        # Honoured, by the server's own updatedAt: a stale one is the creation time.
        return paging, "createdAt" if self._behaviour.updated_at == "stale" else "updatedAt"

    def _jobs_page(
        self,
        request: Request,
        paging: PageRequest,
        statuses: frozenset[str] | None,
        order: Order,
    ) -> Response:
        jobs, total, now = self._world.find_jobs(
            statuses, order, paging.offset, paging.size, descending=paging.descending
        )
        # Shown as of the time they were matched at, so each carries a status it matched.
        items = [self._job_body(j, now, request) for j in jobs]
        return _hal(hal_page("jobs", items, paging, total))

    def _job_body(self, job: Job, now: float, request: Request) -> JsonObject:
        """A job as a read shows it; with `expandJob`, a seeded share lacks its `status`."""
        expand = request.query_params.get("projection") == "expandJob"
        body = views.job(job, self._project_id, now, expand=expand, shape=self._shape)
        rate = self._behaviour.status_missing_rate
        if expand and rate > 0 and self._status_rng.random() < rate:
            del body["status"]
        return body

    def _job(self, job: Job, *, expand: bool) -> Response:
        now = self._world.now()
        return _hal(views.job(job, self._project_id, now, expand=expand, shape=self._shape))
