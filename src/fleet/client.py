"""The ModelOps REST client: every call the lifecycle needs, and the one boundary for httpx errors.

Shapes follow `shared/modelops-api.md` and the recorded responses in `tests/fixtures/`:
HAL envelopes for lists, bare objects from single-result finders, metrics as strings.
URLs are always built from ids; `_links` carry an internal host name and are never followed.
"""

from __future__ import annotations

import email.utils
import json
import math
import ssl
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, Self, TypeVar

import aiohttp
import anyio
import httpx
import stamina
from httpx_aiohttp import AiohttpTransport

from fleet.auth import ClientCredentials, StaticToken, TokenSource
from fleet.errors import (
    ApiError,
    AuthError,
    Conflict,
    NotFound,
    OutcomeUnknown,
    PermanentApiError,
    ProtocolError,
    ServerUnavailable,
    TransientApiError,
)
from fleet.secrets import redactor
from fleet.throttle import Breaker, Throttle
from fleet.version import __version__

TERMINAL_JOB_STATUSES = frozenset({"COMPLETED", "ERROR", "CANCELLED"})
_TRANSIENT_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
# A 429 or 503 is the server (or its gateway) refusing the request before acting on it,
# so a POST that got one may be sent again; any other failure of a POST may have been applied.
_REFUSED_STATUSES = frozenset({429, 503})
_PAGE_SIZE = 100
_MAX_PAGE = 1000  # Spring Data REST's cap on `size`
UNFINISHED_JOB_STATUSES = ("CREATED", "SCHEDULED", "ASSIGNED", "RUNNING")
# The largest answer fleet reads: a page of 100 jobs with their metadata is ~200 KB.
MAX_BODY_BYTES = 16 * 1024 * 1024
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class RemoteModel:
    id: str
    name: str
    archived: bool = False
    language: str | None = None


@dataclass(frozen=True, slots=True)
class Version:
    """A trained model (a model version), as its model's versions finder lists it."""

    id: str
    model_id: str | None
    created_at: datetime | None
    status: str | None
    archived: bool
    job_id: str | None  # the job that created it (its training or import)


@dataclass(frozen=True, slots=True)
class Job:
    id: str
    status: str | None
    type: str | None
    model_id: str | None
    trained_model_id: str | None
    created_at: datetime | None
    updated_at: datetime | None = None  # only with the expandJob projection

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_JOB_STATUSES


@dataclass(frozen=True, slots=True)
class Event:
    id: str
    trained_model_id: str
    status: str
    created_at: datetime | None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    job_id: str | None = None  # the job that wrote it: an EVALUATED event names its evaluation


@dataclass(frozen=True, slots=True)
class Deployment:
    id: str
    status: str | None
    trained_model_id: str | None
    model_id: str | None
    created_at: datetime | None = None


# Request bodies send what the official client and the tutorial send, and nothing a user did
# not set: unset resources or image leave the model's own automation settings in force.


@dataclass(frozen=True, slots=True)
class TrainRequest:
    dataset_id: str | None
    dataset_connection_id: str | None
    hyperparameters: Mapping[str, Any]
    resources: Mapping[str, str]
    docker_image: str | None

    def body(self) -> dict[str, Any]:
        hyperparameters = dict(self.hyperparameters)
        overrides = {"hyperParameters": hyperparameters} if hyperparameters else None
        return _drop_none(
            {
                "datasetId": self.dataset_id,
                "datasetConnectionId": self.dataset_connection_id,
                "modelConfigurationOverrides": overrides,
                "automationOverrides": _automation(self.resources, self.docker_image),
            }
        )


@dataclass(frozen=True, slots=True)
class EvaluateRequest:
    dataset_id: str | None
    dataset_connection_id: str | None
    resources: Mapping[str, str]
    docker_image: str | None

    def body(self) -> dict[str, Any]:
        return _drop_none(
            {
                "datasetId": self.dataset_id,
                "datasetConnectionId": self.dataset_connection_id,
                "automationOverrides": _automation(self.resources, self.docker_image),
            }
        )


@dataclass(frozen=True, slots=True)
class DeployRequest:
    engine_type: str
    engine: str
    docker_image: str | None
    resources: Mapping[str, str]
    language: str | None
    dataset_connection_id: str | None
    dataset_template_id: str | None
    cron: str
    publish_only: bool

    def body(self) -> dict[str, Any]:
        image = self.docker_image
        if image is None and self.engine_type == "IN_VANTAGE":
            image = ""  # what the recorded in-Vantage deployments send
        return _drop_none(
            {
                "engineType": self.engine_type,
                "engineTypeConfig": _drop_none(
                    {
                        "dockerImage": image,
                        "engine": self.engine,
                        "resources": dict(self.resources) or None,
                    }
                ),
                "language": self.language,
                "datasetConnectionId": self.dataset_connection_id,
                "datasetTemplateId": self.dataset_template_id,
                "cron": self.cron,
                "publishOnly": self.publish_only,
                "args": {},
            }
        )


class ModelOps(Protocol):
    """What the engine needs from ModelOps; `ModelOpsClient` speaks it over HTTP.

    Every method is a request some real client is recorded making, except the batched job
    looks (`job_page`, `changed_jobs`, `unfinished_jobs`), which the job watcher uses only
    once it has proven them on the server (see polling.py and docs/api-calls.md).
    """

    async def check_project(self) -> None: ...
    async def list_models(self) -> list[RemoteModel]: ...
    async def train(self, model_id: str, request: TrainRequest) -> Job: ...
    async def get_job(self, job_id: str) -> Job: ...
    def recent_jobs(self, limit: int) -> AsyncIterator[Job]: ...
    async def job_page(self, sort: str, size: int) -> tuple[list[Job], int | None]: ...
    async def changed_jobs(self, since: datetime | None, page_size: int = 20) -> list[Job]: ...
    async def unfinished_jobs(self) -> list[Job]: ...
    async def scoring_jobs(self, deployment_id: str) -> list[Job]: ...
    async def evaluate(self, trained_model_id: str, request: EvaluateRequest) -> Job: ...
    async def events(self, trained_model_id: str) -> list[Event]: ...
    async def approve(self, trained_model_id: str, comments: str) -> Event: ...
    async def reject(self, trained_model_id: str, comments: str) -> Event: ...
    async def deploy(self, trained_model_id: str, request: DeployRequest) -> Job: ...
    async def deployment_for_job(self, job_id: str) -> Deployment: ...
    async def active_deployments(self) -> list[Deployment]: ...
    async def deployments_of_version(self, trained_model_id: str) -> list[Deployment]: ...
    async def versions(self, model_id: str) -> list[Version]: ...
    async def retire(self, trained_model_id: str, deployment_id: str) -> Job: ...

    def server_time_floor(self) -> datetime | None: ...


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How GETs (and refused POSTs) are retried: jittered exponential backoff in a total budget."""

    attempts: int = 6
    budget_s: float = 60.0
    initial_s: float = 0.5
    max_s: float = 10.0
    jitter_s: float = 0.5


@dataclass(slots=True)
class ClientStats:
    """What the client sent and what went wrong, for the run's metrics."""

    requests: Counter[str] = field(default_factory=Counter)  # by HTTP method
    polls: int = 0  # GETs of one job's status
    errors: Counter[str] = field(default_factory=Counter)  # 4xx, 5xx, 429, timeout, connection
    retries: int = 0


class ModelOpsClient:
    """Async client for one ModelOps project. Use as `async with ModelOpsClient(...) as api:`."""

    def __init__(
        self,
        base_url: str,
        project_id: str,
        token: str | TokenSource,
        *,
        verify: bool | str = True,
        timeout_s: float = 30.0,
        max_connections: int = 100,
        retry: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        throttle: Throttle | None = None,
        breaker: Breaker | None = None,
    ) -> None:
        if not 0 < timeout_s < math.inf:
            raise ValueError(f"timeout_s must be positive, not {timeout_s}")
        self._retry = retry or RetryPolicy()
        # One request, from connecting to the last byte of its answer, ends within this: a
        # server that trickles its answer cannot hold a request (or the model behind it).
        self._timeout_s = timeout_s
        # Shared by every request: one 429 slows them all; a server down pauses them all.
        self.throttle = throttle or Throttle()
        self.breaker = breaker or Breaker()
        self.stats = ClientStats()
        verify_arg: bool | ssl.SSLContext = (
            ssl.create_default_context(cafile=verify) if isinstance(verify, str) else verify
        )
        limits = httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        )
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers={
                "AOA-Project-ID": project_id,
                "VMO-Project-ID": project_id,
                "Accept": "application/json, application/hal+json",
                "User-Agent": f"fleet/{__version__}",
            },
            timeout=timeout_s,
            verify=verify_arg,
            limits=limits,
            transport=transport or _AiohttpTransport(verify=verify_arg, limits=limits),
        )
        self._project_id = project_id
        self._auth: TokenSource = StaticToken(token) if isinstance(token, str) else token
        if isinstance(self._auth, ClientCredentials):
            self._auth.attach(self._http)
        # Requests wait here rather than in httpcore's pool, whose queue costs
        # O(connections x waiting requests) on every request (a third of fleet's CPU at 300
        # models in flight before this).
        self._slots = anyio.CapacityLimiter(max_connections)
        self._events_by_finder = False
        self._server_time: datetime | None = None
        self._last_date: str | None = None  # the last `Date` header read (it changes each second)

    @property
    def project_id(self) -> str:
        return self._project_id

    def server_time_floor(self) -> datetime | None:
        """A time the server's clock has certainly passed, in that clock: the latest `Date`
        header it sent, or `createdAt` of a job it just created. None before any answer.

        A floor, not an estimate of the skew: a `Date` cached for a second, or an old one, is
        still a time the server had passed; so is anything from a clock that runs fast."""
        return self._server_time

    def _saw_date(self, value: str | None) -> None:
        """A `Date` header, parsed only when it differs from the last one: once a second, not
        for every answer."""
        if value != self._last_date:
            self._last_date = value
            self._saw_server_time(_http_date(value))

    def _saw_server_time(self, at: datetime | None) -> None:
        if at is not None and (self._server_time is None or at > self._server_time):
            self._server_time = at

    async def __aenter__(self) -> Self:
        await self._http.__aenter__()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if not self._http.is_closed:
            await self._http.aclose()

    # -- reads -------------------------------------------------------------------------------

    async def check_project(self) -> None:
        """Fail fast when the server, the token or the project is wrong."""
        await self._get(f"/api/projects/{_uuid(self._project_id)}")

    async def list_models(self) -> list[RemoteModel]:
        return [
            RemoteModel(
                id=_req_str(item, "id"),
                name=str(item.get("name") or ""),
                archived=item.get("archived") is True,
                language=_opt_str(item, "language"),
            )
            async for item in self._pages("/api/models", "models", {})
        ]

    async def get_job(self, job_id: str) -> Job:
        """A job with its status (the `expandJob` projection). A body without `status` is a
        job not yet finished, as the official client's `JobApi.wait` reads it."""
        data = await self._get(f"/api/jobs/{_uuid(job_id)}", {"projection": "expandJob"})
        return _parse_job(data)

    async def recent_jobs(self, limit: int) -> AsyncIterator[Job]:
        """Jobs as `sort=createdAt,desc` lists them, at most `limit` (there is no finder by
        model). The caller checks the order it gets: it is not guaranteed."""
        params = {"sort": "createdAt,desc", "projection": "expandJob"}
        seen = 0
        async for item in self._pages("/api/jobs", "jobs", params):
            yield _parse_job(item)
            seen += 1
            if seen >= limit:
                return

    async def job_page(self, sort: str, size: int) -> tuple[list[Job], int | None]:
        """The first page of the jobs listing sorted by `sort` ("prop,dir"), and how many jobs
        the server says it has. One try: a probe is not worth retrying."""
        params = {"sort": sort, "projection": "expandJob", "page": "0", "size": str(size)}
        data = await self._get("/api/jobs", params, retry=False)
        items = _embedded(data, "jobs", "/api/jobs")
        page_info = data.get("page")
        total = page_info.get("totalElements") if isinstance(page_info, dict) else None
        return [_parse_job(item) for item in items], total if isinstance(total, int) else None

    async def changed_jobs(self, since: datetime | None, page_size: int = 20) -> list[Job]:
        """Jobs whose status changed at or after `since` (server time), most recent first.

        Pages of `page_size` are read until one reaches back past `since`; without `since`,
        only the first page: enough to learn where the changes are now. One try per page.
        Raises ProtocolError when a job has no `updatedAt` or the jobs are not in order.
        """
        params = {"sort": "updatedAt,desc", "projection": "expandJob"}
        jobs: list[Job] = []
        seen: set[str] = set()
        last: datetime | None = None
        pages = self._pages("/api/jobs", "jobs", params, size=page_size, retry=False)
        async for item in pages:
            job = _parse_job(item)
            if job.updated_at is None:
                raise ProtocolError(f"/api/jobs: a job has no updatedAt: {_excerpt(item)}")
            if job.id in seen:
                # Jobs that changed while the pages were read moved to the front, pushing
                # the rest down: the next page starts with ones already read. Not disorder.
                continue
            seen.add(job.id)
            if last is not None and job.updated_at > last:
                raise ProtocolError("/api/jobs: the server did not sort the jobs by updatedAt")
            last = job.updated_at
            if since is not None and last < since:
                break
            jobs.append(job)
            if since is None and len(jobs) >= page_size:
                break
        return jobs

    async def unfinished_jobs(self) -> list[Job]:
        """Every job not yet in a terminal status (the `findByStatusIn` finder), one try per
        page. Raises NotFound when the server does not offer the finder."""
        params = {"status": ",".join(UNFINISHED_JOB_STATUSES), "projection": "expandJob"}
        path = "/api/jobs/search/findByStatusIn"
        pages = self._pages(path, "jobs", params, size=_MAX_PAGE, retry=False)
        return [_parse_job(item) async for item in pages]

    async def scoring_jobs(self, deployment_id: str) -> list[Job]:
        """The jobs a deployment started (a `cron = "@once"` deployment scores at once)."""
        params = {"deploymentId": _uuid(deployment_id), "projection": "expandJob"}
        path = "/api/jobs/search/findByDeploymentId"
        return [_parse_job(item) async for item in self._pages(path, "jobs", params)]

    async def events(self, trained_model_id: str) -> list[Event]:
        """The version's events, from its association resource or, where a server has none
        (404), from the events finder (remembered for the rest of the run)."""
        tm_id = _uuid(trained_model_id)
        if not self._events_by_finder:
            path = f"/api/trainedModels/{tm_id}/events"
            try:
                return [_parse_event(i) async for i in self._pages(path, "trainedModelEvents", {})]
            except NotFound:
                # This server has no such route (or no such version): the finder answers for
                # every version, so it serves the rest of the run.
                self._events_by_finder = True
        path = "/api/trainedModelEvents/search/findByTrainedModelId"
        params = {"trainedModelId": tm_id}
        return [_parse_event(i) async for i in self._pages(path, "trainedModelEvents", params)]

    async def deployment_for_job(self, job_id: str) -> Deployment:
        data = await self._get("/api/deployments/search/findByJobId", {"jobId": _uuid(job_id)})
        return _parse_deployment(data)

    async def active_deployments(self) -> list[Deployment]:
        """Every active deployment of the project (what is in production), each naming its
        version and model (`expandDeployment`)."""
        path = "/api/deployments/search/findActive"
        params = {"projection": "expandDeployment"}
        return [
            _parse_deployment(item)
            async for item in self._pages(path, "deployments", params, size=_MAX_PAGE)
        ]

    async def deployments_of_version(self, trained_model_id: str) -> list[Deployment]:
        """The version's deployments whose status is DEPLOYED."""
        params = {
            "status": "DEPLOYED",
            "trainedModelId": _uuid(trained_model_id),
            "projection": "expandDeployment",
        }
        path = "/api/deployments/search/findByStatusAndTrainedModelId"
        return [_parse_deployment(d) async for d in self._pages(path, "deployments", params)]

    async def versions(self, model_id: str) -> list[Version]:
        """Every trained version of the model, in whatever order the server gives them."""
        path = "/api/trainedModels/search/findByModelId"
        params = {"modelId": _uuid(model_id)}
        return [_parse_version(item) async for item in self._pages(path, "trainedModels", params)]

    # -- writes ------------------------------------------------------------------------------

    async def train(self, model_id: str, request: TrainRequest) -> Job:
        path = f"/api/models/{_uuid(model_id)}/train"
        return await self._post(path, request.body(), _parse_job)

    async def evaluate(self, trained_model_id: str, request: EvaluateRequest) -> Job:
        path = f"/api/trainedModels/{_uuid(trained_model_id)}/evaluate"
        return await self._post(path, request.body(), _parse_job)

    async def approve(self, trained_model_id: str, comments: str) -> Event:
        path = f"/api/trainedModels/{_uuid(trained_model_id)}/approve"
        return await self._post(path, {"comments": comments}, _parse_event)

    async def reject(self, trained_model_id: str, comments: str) -> Event:
        path = f"/api/trainedModels/{_uuid(trained_model_id)}/reject"
        return await self._post(path, {"comments": comments}, _parse_event)

    async def deploy(self, trained_model_id: str, request: DeployRequest) -> Job:
        path = f"/api/trainedModels/{_uuid(trained_model_id)}/deploy"
        return await self._post(path, request.body(), _parse_job)

    async def retire(self, trained_model_id: str, deployment_id: str) -> Job:
        path = f"/api/trainedModels/{_uuid(trained_model_id)}/retire"
        body = {"deploymentId": _uuid(deployment_id)}
        return await self._post(path, body, _parse_job)

    # -- transport ---------------------------------------------------------------------------

    async def _pages(
        self,
        path: str,
        collection: str,
        params: Mapping[str, str],
        *,
        size: int = _PAGE_SIZE,
        retry: bool = True,
    ) -> AsyncIterator[dict[str, Any]]:
        """Every item of a listing, page by page: a HAL page, a HAL list without a `page`
        block (an association resource) or a bare JSON list are all read."""
        page = 0
        while True:
            query = {**params, "page": str(page), "size": str(size)}
            data = await self._send("GET", path, params=query, retry=retry)
            if isinstance(data, list):
                items: list[Any] = data
                total_pages = None
            elif isinstance(data, dict):
                items = _embedded(data, collection, path)
                page_info = data.get("page")
                total_pages = page_info.get("totalPages") if isinstance(page_info, dict) else None
            else:
                raise ProtocolError(f"GET {path}: answer is not a listing: {_excerpt(data)}")
            for item in items:
                if not isinstance(item, dict):
                    raise ProtocolError(f"{path}: an item of {collection} is not an object")
                yield item
            page += 1
            if not items or not isinstance(total_pages, int) or page >= total_pages:
                return

    async def _get(
        self, path: str, params: Mapping[str, str] | None = None, *, retry: bool = True
    ) -> dict[str, Any]:
        return _object(await self._send("GET", path, params=params, retry=retry), "GET", path)

    async def _post(
        self, path: str, body: Mapping[str, Any], parse: Callable[[Mapping[str, Any]], _T]
    ) -> _T:
        """POST and parse; a success answer that cannot be read may still have been applied."""
        try:
            parsed = parse(_object(await self._send("POST", path, body=body), "POST", path))
        except ProtocolError as exc:
            raise OutcomeUnknown(
                f"POST {path}: answer unreadable ({exc})", method="POST", path=path
            ) from exc
        if isinstance(parsed, Job):
            self._saw_server_time(parsed.created_at)  # created just now, in server time
        return parsed

    async def _send(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Mapping[str, Any] | None = None,
        retry: bool = True,
    ) -> object:
        """The answer's JSON; transient failures retried by the policy unless `retry` is off."""
        policy = self._retry
        retryable = _retryable_get if method == "GET" else _retryable_post
        while True:
            try:
                async for attempt in stamina.retry_context(
                    on=retryable,
                    attempts=policy.attempts if retry else 1,
                    timeout=policy.budget_s,
                    wait_initial=policy.initial_s,
                    wait_max=policy.max_s,
                    wait_jitter=policy.jitter_s,
                ):
                    if attempt.num > 1:
                        self.stats.retries += 1
                    with attempt:
                        return await self._send_once(method, path, params=params, body=body)
            except TransientApiError as exc:
                # While the server fails everything, the breaker decides when to give up
                # (outage_budget), not this request's own retries: go round and wait for it.
                if (
                    not retry
                    or isinstance(exc, OutcomeUnknown | ServerUnavailable)
                    or not self.breaker.is_open
                ):
                    raise
        raise AssertionError("unreachable: stamina re-raises the last error")  # pragma: no cover

    async def _send_once(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None,
        body: Mapping[str, Any] | None,
    ) -> object:
        await self.breaker.admit(path)
        await self.throttle.wait()
        sent_at = self.throttle.now()
        self.stats.requests[method] += 1
        if method == "GET" and path.startswith("/api/jobs"):
            self.stats.polls += 1
        try:
            async with self._slots:
                token = await self._auth.token()
                response = await self._request(method, path, token, params, body)
                if response.status_code == 401:  # noqa: PLR2004
                    # Once: an expired or rotated token gets renewed and the request sent
                    # again (a 401 was not applied); a second 401 stops the run.
                    token = await self._auth.renew()
                    response = await self._request(method, path, token, params, body)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            self.stats.errors["connection"] += 1
            if _untrusted_certificate(exc):
                # No retry will change the certificate: say what to do, and stop.
                raise ApiError(
                    f"the TLS certificate of {self._http.base_url} is not trusted "
                    f"({_describe(exc)}); set api.ca_bundle to the PEM file of the CA that "
                    "signed it",
                    method=method,
                    path=path,
                ) from exc
            # A connection not made is the server's failure, whatever the resource.
            self.breaker.failure(None)
            # The request never left this machine: nothing can have been applied.
            raise TransientApiError(
                f"cannot reach ModelOps at {self._http.base_url}: {_describe(exc)}",
                method=method,
                path=path,
            ) from exc
        except httpx.TransportError as exc:
            self.stats.errors[
                "timeout" if isinstance(exc, httpx.TimeoutException) else "connection"
            ] += 1
            self.breaker.failure(path)
            error = OutcomeUnknown if method == "POST" else TransientApiError
            raise error(
                f"{method} {path}: no response ({_describe(exc)})", method=method, path=path
            ) from exc
        except BaseException:
            self.breaker.abandon()
            raise
        self._judge(response, path, sent_at)
        self._saw_date(response.headers.get("Date"))
        return _read(response, method, path)

    async def _request(
        self,
        method: str,
        path: str,
        token: str,
        params: Mapping[str, str] | None,
        body: Mapping[str, Any] | None,
    ) -> httpx.Response:
        """One exchange, bounded as a whole by the client's timeout (httpx's bounds each read)."""
        headers = {"Authorization": f"Bearer {token}"}
        request = self._http.build_request(method, path, params=params, json=body, headers=headers)
        deadline = anyio.CancelScope(deadline=anyio.current_time() + self._timeout_s)
        try:
            with deadline:
                response = await self._http.send(request, stream=True)
                try:
                    content = await _bounded_body(response, method, path)
                finally:
                    # Shielded: a cut-off answer still closes (and frees) its connection.
                    with anyio.CancelScope(shield=True):
                        await response.aclose()
        except httpx.TransportError as exc:
            if deadline.cancel_called:
                raise self._timed_out(method, path) from exc
            raise
        if deadline.cancel_called:
            raise self._timed_out(method, path)
        return httpx.Response(
            response.status_code, headers=response.headers, content=content, request=request
        )

    def _timed_out(self, method: str, path: str) -> httpx.TimeoutException:
        return httpx.ReadTimeout(
            f"no complete answer to {method} {path} within {self._timeout_s:g} s (api.timeout)"
        )

    def _judge(self, response: httpx.Response, path: str, sent_at: float) -> None:
        """Tell the throttle and the breaker how the server took a request."""
        status = response.status_code
        if status >= 400:  # noqa: PLR2004
            self.stats.errors["429" if status == 429 else f"{status // 100}xx"] += 1  # noqa: PLR2004
        if status in _REFUSED_STATUSES:
            retry_after = _retry_after(response.headers.get("Retry-After"))
            self.throttle.overloaded(retry_after, sent_at=sent_at)
        if status >= 500:  # noqa: PLR2004
            self.breaker.failure(path)
            return
        self.breaker.success()
        if status < 400:  # noqa: PLR2004
            self.throttle.succeeded()


async def _bounded_body(response: httpx.Response, method: str, path: str) -> bytes:
    """The (decompressed) body, refused past MAX_BODY_BYTES: a broken or hostile server
    cannot make fleet hold gigabytes in memory."""
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise ProtocolError(
            f"{method} {path}: answer of {declared} bytes is over {MAX_BODY_BYTES}",
            method=method,
            path=path,
            status=response.status_code,
        )
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise ProtocolError(
                f"{method} {path}: answer is over {MAX_BODY_BYTES} bytes",
                method=method,
                path=path,
                status=response.status_code,
            )
        chunks.append(chunk)
    return b"".join(chunks)


def _read(response: httpx.Response, method: str, path: str) -> object:
    status = response.status_code
    if status < 300:  # noqa: PLR2004
        try:
            return _json(response)
        except _Unreadable as exc:
            raise ProtocolError(
                f"{method} {path}: answer is not JSON: {_excerpt(_text(response))}",
                method=method,
                path=path,
                status=status,
            ) from exc
    message = _server_message(response)
    text = f"{method} {path}: HTTP {status}" + (f": {message}" if message else "")
    if status in {401, 403}:
        raise AuthError(
            f"token rejected by ModelOps (HTTP {status}{': ' + message if message else ''}); "
            "check the token and that it may use this project",
            method=method,
            path=path,
            status=status,
        )
    if status in _TRANSIENT_STATUSES or status >= 500:  # noqa: PLR2004 - every 5xx, 520-524 too
        if method == "POST" and status not in _REFUSED_STATUSES:
            raise OutcomeUnknown(text, method=method, path=path, status=status)
        raise TransientApiError(
            text,
            method=method,
            path=path,
            status=status,
            retry_after=_retry_after(response.headers.get("Retry-After")),
        )
    if status == 404:  # noqa: PLR2004
        raise NotFound(text, method=method, path=path, status=status)
    if status == 409:  # noqa: PLR2004
        # Spring Data REST's answer to an optimistic-locking or integrity conflict: the
        # request was not applied, and may succeed a moment later.
        raise Conflict(text, method=method, path=path, status=status)
    raise PermanentApiError(text, method=method, path=path, status=status)


def _object(data: object, method: str, path: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ProtocolError(
            f"{method} {path}: answer is not a JSON object: {_excerpt(data)}",
            method=method,
            path=path,
        )
    return data


def _embedded(data: Mapping[str, Any], collection: str, path: str) -> list[Any]:
    embedded = data.get("_embedded")
    items = embedded.get(collection, []) if isinstance(embedded, dict) else []
    if not isinstance(items, list):
        raise ProtocolError(f"{path}: _embedded.{collection} is not a list", path=path)
    return items


def _retryable_get(exc: BaseException) -> bool | float:
    if isinstance(exc, ServerUnavailable):
        return False
    if isinstance(exc, TransientApiError):
        return exc.retry_after if exc.retry_after is not None else True
    return False


def _retryable_post(exc: BaseException) -> bool | float:
    if isinstance(exc, OutcomeUnknown):
        return False
    return _retryable_get(exc)


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds only; an HTTP date is rare and ignored)."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return max(0.0, min(seconds, 300.0))


def _http_date(value: str | None) -> datetime | None:
    """An HTTP `Date` header as an aware datetime; None when absent or unreadable."""
    if not value:
        return None
    try:
        at = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


class _Unreadable(Exception):
    """A body that is not JSON fleet can read."""


def _json(response: httpx.Response) -> object:
    """The body as JSON, whatever it holds: huge numbers, deep nesting and odd bytes included."""
    try:
        return json.loads(response.content)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, digits
        raise _Unreadable from exc


def _text(response: httpx.Response) -> str:
    """The body as text for a message; a charset that lies cannot break an error path."""
    return response.content[:4096].decode("utf-8", errors="replace")


def _server_message(response: httpx.Response) -> str:
    try:
        data = _json(response)
    except _Unreadable:
        message = _excerpt(_text(response))
    else:
        message = (
            str(data.get("message") or data.get("error") or "") if isinstance(data, dict) else ""
        )
    # A server or proxy that repeats the request's credentials back must not put them in an
    # error: the known secrets (`invalid api key <token>`) and anything after "Bearer".
    return redactor.scrub(message[:500])


def _untrusted_certificate(exc: BaseException) -> bool:
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def _describe(exc: httpx.TransportError) -> str:
    return str(exc) or type(exc).__name__


def _uuid(value: str) -> str:
    """Ids go into URL paths: only well-formed UUIDs may, so no id can reach another route."""
    try:
        return str(uuid.UUID(value))
    except (ValueError, AttributeError, TypeError) as exc:
        raise PermanentApiError(f"not a ModelOps id (UUID expected): {value!r}") from exc


def _parse_job(data: Mapping[str, Any]) -> Job:
    metadata = data.get("metadata") if isinstance(data.get("metadata"), dict) else {}
    trained_model = metadata.get("trainedModel") if isinstance(metadata, dict) else None
    trained_model_id = _opt_str(data, "trainedModelId")
    if trained_model_id is None and isinstance(trained_model, dict):
        # A train response names the new version only inside metadata.trainedModel.
        trained_model_id = _opt_str(trained_model, "id")
    return Job(
        id=_req_str(data, "id"),
        status=_opt_str(data, "status"),
        type=_opt_str(data, "type"),
        model_id=_opt_str(data, "modelId"),
        trained_model_id=trained_model_id,
        created_at=_timestamp(data.get("createdAt")),
        updated_at=_timestamp(data.get("updatedAt")),
    )


def _parse_event(data: Mapping[str, Any]) -> Event:
    metadata = data.get("metadata")
    return Event(
        id=_req_str(data, "id"),
        trained_model_id=_req_str(data, "trainedModelId"),
        status=_req_str(data, "status"),
        created_at=_timestamp(data.get("createdAt")),
        metadata=metadata if isinstance(metadata, dict) else {},
        job_id=_opt_str(data, "jobId"),
    )


def _parse_version(data: Mapping[str, Any]) -> Version:
    return Version(
        id=_req_str(data, "id"),
        model_id=_opt_str(data, "modelId"),
        created_at=_timestamp(data.get("createdAt")),
        status=_opt_str(data, "status"),
        archived=data.get("archived") is True,
        job_id=_opt_str(data, "jobId"),
    )


def _parse_deployment(data: Mapping[str, Any]) -> Deployment:
    trained_model = data.get("trainedModel")
    trained_model_id = _opt_str(data, "trainedModelId")
    model_id = _opt_str(data, "modelId")
    if isinstance(trained_model, dict):
        trained_model_id = trained_model_id or _opt_str(trained_model, "id")
        model_id = model_id or _opt_str(trained_model, "modelId")
    return Deployment(
        id=_req_str(data, "id"),
        status=_opt_str(data, "status"),
        trained_model_id=trained_model_id,
        model_id=model_id,
        created_at=_timestamp(data.get("createdAt")),
    )


def latest_metrics(events: list[Event]) -> dict[str, str] | None:
    """The metrics of the newest EVALUATED event, values kept as the strings the server sent.

    For a version judged without an evaluation of this run (a champion, `--from-stage
    approve`); an evaluation of this run reads its own event (`metrics_of_job`)."""
    evaluated = [e for e in events if e.status == "EVALUATED"]
    if not evaluated:
        return None
    newest = max(evaluated, key=lambda e: (e.created_at is not None, e.created_at or 0))
    return _metrics(newest)


def metrics_of_job(events: list[Event], job_id: str) -> dict[str, str] | None:
    """The metrics the evaluation job `job_id` wrote: its EVALUATED event names it."""
    mine = [e for e in events if e.status == "EVALUATED" and e.job_id == job_id]
    return _metrics(mine[-1]) if mine else None


def _metrics(event: Event) -> dict[str, str]:
    return {str(k): str(v) for k, v in event.metadata.items()}


def _req_str(data: Mapping[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise ProtocolError(f"response has no {key!r}: {_excerpt(data)}")
    return value


def _excerpt(body: object, limit: int = 200) -> str:
    """The start of a response body for an error message, on one line."""
    text = body if isinstance(body, str) else json.dumps(body, default=str)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "…"


def _opt_str(data: Mapping[str, Any], key: str) -> str | None:
    value = data.get(key)
    return value if isinstance(value, str) and value else None


def _timestamp(value: object) -> datetime | None:
    """An aware datetime; a time written without an offset is taken as UTC, as the server's are."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _automation(resources: Mapping[str, str], docker_image: str | None) -> dict[str, Any] | None:
    overrides = _drop_none({"resources": dict(resources) or None, "dockerImage": docker_image})
    return overrides or None


def _drop_none(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if v is not None}


__all__ = [
    "ApiError",
    "DeployRequest",
    "Deployment",
    "EvaluateRequest",
    "Event",
    "Job",
    "ModelOps",
    "ModelOpsClient",
    "RemoteModel",
    "RetryPolicy",
    "TrainRequest",
    "Version",
    "latest_metrics",
    "metrics_of_job",
]


class _AiohttpTransport(AiohttpTransport):
    """httpx-aiohttp, with failures sorted the way `_send_once` relies on.

    httpx-aiohttp maps every `aiohttp.ClientConnectionError`, a server that hung up after
    reading the request included, to `httpx.ConnectTimeout`, which fleet reads as "never
    sent" and may resend: a POST would then be applied twice. Here only a connection that
    was never made is a connect error; any other failure is a read error, whose outcome is
    unknown.
    """

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            response = await super().handle_async_request(request)
        except httpx.TransportError as exc:
            raise _sorted_failure(exc.__cause__ or exc) from exc.__cause__
        except (aiohttp.ClientError, TimeoutError) as exc:  # what httpx-aiohttp leaves unmapped
            raise _sorted_failure(exc) from exc
        response.stream = _SortedFailures(response.stream)
        return response


class _SortedFailures(httpx.AsyncByteStream):
    """A response body whose read failures are sorted like the request's own."""

    def __init__(self, stream: httpx.AsyncByteStream | httpx.SyncByteStream) -> None:
        assert isinstance(stream, httpx.AsyncByteStream)
        self._stream = stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._stream:
                yield chunk
        except httpx.TransportError as exc:
            raise _sorted_failure(exc.__cause__ or exc) from exc.__cause__
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _sorted_failure(exc) from exc

    async def aclose(self) -> None:
        await self._stream.aclose()


def _sorted_failure(cause: BaseException) -> BaseException:
    if isinstance(cause, httpx.TransportError):
        return cause
    if not isinstance(cause, aiohttp.ClientError | TimeoutError):
        return cause
    message = str(cause) or type(cause).__name__
    if isinstance(cause, aiohttp.ConnectionTimeoutError):
        return httpx.ConnectTimeout(message)
    if isinstance(cause, aiohttp.ClientConnectorError):
        # Refused, unresolvable, or a TLS handshake that failed: nothing was sent.
        return httpx.ConnectError(message)
    if isinstance(cause, aiohttp.ServerTimeoutError):
        return httpx.ReadTimeout(message)
    return httpx.ReadError(message)
