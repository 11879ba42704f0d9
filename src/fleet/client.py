"""The ModelOps REST client: every call the engine makes, as the URL, query and body it sends
and what its answer must hold (`modelops.ModelOps` is the protocol it implements).

URLs are always built from ids; `_links` carry an internal host name and are never followed.
How a request is sent, retried and its failures sorted is the session's (`session.py`); the
connections under it are `transport.py`'s.
"""

from __future__ import annotations

import ssl
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import datetime
from typing import Any, Self, TypeVar

import anyio
import httpx

from fleet.auth import ClientCredentials, StaticToken, TokenSource
from fleet.errors import NotFound, OutcomeUnknown, PermanentApiError, ProtocolError
from fleet.modelops import (
    UNFINISHED_JOB_STATUSES,
    Deployment,
    DeployRequest,
    EvaluateRequest,
    Event,
    Job,
    RemoteModel,
    TrainRequest,
    Version,
    excerpt,
    parse_deployment,
    parse_event,
    parse_job,
    parse_model,
    parse_version,
)
from fleet.retries import Account, one_send
from fleet.session import ClientStats, Pacing, Session
from fleet.transport import HttpOptions, Transport
from fleet.version import __version__

_PAGE_SIZE = 100
_MAX_PAGE = 1000  # Spring Data REST's cap on `size`
_T = TypeVar("_T")


class ModelOpsClient:
    """Async client for one ModelOps project. Use as `async with ModelOpsClient(...) as api:`.

    `http` says how it connects (transport.py); `pacing` how its requests are paced and its
    calls tried, and the clock that times them (session.py). Both default to fleet's own.
    """

    def __init__(
        self,
        base_url: str,
        project_id: str,
        token: str | TokenSource,
        *,
        http: HttpOptions | None = None,
        pacing: Pacing | None = None,
    ) -> None:
        http = http or HttpOptions()
        verify: bool | ssl.SSLContext = (
            ssl.create_default_context(cafile=http.verify)
            if isinstance(http.verify, str)
            else http.verify
        )
        limits = httpx.Limits(
            max_connections=http.max_connections, max_keepalive_connections=http.max_connections
        )
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers={
                "AOA-Project-ID": project_id,
                "VMO-Project-ID": project_id,
                "Accept": "application/json, application/hal+json",
                "User-Agent": f"fleet/{__version__}",
            },
            timeout=http.timeout_s,
            verify=verify,
            limits=limits,
            transport=http.transport or Transport(verify=verify, limits=limits),
        )
        self._project_id = project_id
        auth: TokenSource = StaticToken(token) if isinstance(token, str) else token
        if isinstance(auth, ClientCredentials):
            auth.attach(self._http)
        # A new one by default: its throttle and breaker are this client's alone.
        pacing = pacing or Pacing()
        self._session = Session(self._http, auth, pacing, http)
        self.throttle = pacing.throttle
        self.breaker = pacing.breaker
        self.stats: ClientStats = self._session.stats
        self._events_by_finder = False

    @property
    def project_id(self) -> str:
        return self._project_id

    def retry_account(self) -> Account:
        """A new call's account, under this client's retry policy (`api.retry_*`)."""
        return self._session.account()

    def server_time_floor(self) -> datetime | None:
        """A time the server's clock has certainly passed, in that clock (`Session`)."""
        return self._session.server_time_floor()

    async def __aenter__(self) -> Self:
        await self._http.__aenter__()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connections, also when the caller is being cancelled."""
        if not self._http.is_closed:
            with anyio.CancelScope(shield=True):
                await self._http.aclose()

    # -- reads -------------------------------------------------------------------------------

    async def check_project(self) -> None:
        """Fail fast when the server, the token or the project is wrong."""
        await self._get(f"/api/projects/{_uuid(self._project_id)}")

    async def list_models(self) -> list[RemoteModel]:
        return [parse_model(item) async for item in self._pages("/api/models", "models", {})]

    async def get_job(self, job_id: str, account: Account | None = None) -> Job:
        """A job with its status (the `expandJob` projection). A body without `status` is a
        job not yet finished, as the official client's `JobApi.wait` reads it."""
        path = f"/api/jobs/{_uuid(job_id)}"
        return parse_job(await self._get(path, {"projection": "expandJob"}, account=account))

    async def recent_jobs(self, limit: int) -> AsyncIterator[Job]:
        """Jobs as `sort=createdAt,desc` lists them, at most `limit` (there is no finder by
        model). The caller checks the order it gets: it is not guaranteed."""
        params = {"sort": "createdAt,desc", "projection": "expandJob"}
        seen = 0
        async for item in self._pages("/api/jobs", "jobs", params):
            yield parse_job(item)
            seen += 1
            if seen >= limit:
                return

    async def job_page(self, sort: str, size: int) -> tuple[list[Job], int | None]:
        """The first page of the jobs listing sorted by `sort` ("prop,dir"), and how many jobs
        the server says it has. One try: a probe is not worth retrying."""
        params = {"sort": sort, "projection": "expandJob", "page": "0", "size": str(size)}
        data = await self._get("/api/jobs", params, account=one_send())
        items = _embedded(data, "jobs", "/api/jobs")
        page_info = data.get("page")
        total = page_info.get("totalElements") if isinstance(page_info, dict) else None
        return [parse_job(item) for item in items], total if isinstance(total, int) else None

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
            job = parse_job(item)
            if job.updated_at is None:
                raise ProtocolError(f"/api/jobs: a job has no updatedAt: {excerpt(item)}")
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
        return [parse_job(item) async for item in pages]

    async def scoring_jobs(self, deployment_id: str) -> list[Job]:
        """The jobs a deployment started (a `cron = "@once"` deployment scores at once)."""
        params = {"deploymentId": _uuid(deployment_id), "projection": "expandJob"}
        path = "/api/jobs/search/findByDeploymentId"
        return [parse_job(item) async for item in self._pages(path, "jobs", params)]

    async def events(self, trained_model_id: str) -> list[Event]:
        """The version's events, from its association resource or, where a server has none
        (404), from the events finder (remembered for the rest of the run)."""
        tm_id = _uuid(trained_model_id)
        if not self._events_by_finder:
            path = f"/api/trainedModels/{tm_id}/events"
            try:
                return [parse_event(i) async for i in self._pages(path, "trainedModelEvents", {})]
            except NotFound:
                # This server has no such route (or no such version): the finder answers for
                # every version, so it serves the rest of the run.
                self._events_by_finder = True
        path = "/api/trainedModelEvents/search/findByTrainedModelId"
        params = {"trainedModelId": tm_id}
        return [parse_event(i) async for i in self._pages(path, "trainedModelEvents", params)]

    async def deployment_for_job(self, job_id: str) -> Deployment:
        data = await self._get("/api/deployments/search/findByJobId", {"jobId": _uuid(job_id)})
        return parse_deployment(data)

    async def active_deployments(self) -> list[Deployment]:
        """Every active deployment of the project (what is in production), each naming its
        version and model (`expandDeployment`)."""
        path = "/api/deployments/search/findActive"
        params = {"projection": "expandDeployment"}
        return [
            parse_deployment(item)
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
        return [parse_deployment(d) async for d in self._pages(path, "deployments", params)]

    async def versions(self, model_id: str) -> list[Version]:
        """Every trained version of the model, in whatever order the server gives them."""
        path = "/api/trainedModels/search/findByModelId"
        params = {"modelId": _uuid(model_id)}
        return [parse_version(item) async for item in self._pages(path, "trainedModels", params)]

    # -- writes ------------------------------------------------------------------------------

    async def train(
        self, model_id: str, request: TrainRequest, account: Account | None = None
    ) -> Job:
        path = f"/api/models/{_uuid(model_id)}/train"
        return await self._post(path, request.body(), parse_job, account)

    async def evaluate(
        self, trained_model_id: str, request: EvaluateRequest, account: Account | None = None
    ) -> Job:
        path = f"/api/trainedModels/{_uuid(trained_model_id)}/evaluate"
        return await self._post(path, request.body(), parse_job, account)

    async def approve(
        self, trained_model_id: str, comments: str, account: Account | None = None
    ) -> Event:
        path = f"/api/trainedModels/{_uuid(trained_model_id)}/approve"
        return await self._post(path, {"comments": comments}, parse_event, account)

    async def reject(
        self, trained_model_id: str, comments: str, account: Account | None = None
    ) -> Event:
        path = f"/api/trainedModels/{_uuid(trained_model_id)}/reject"
        return await self._post(path, {"comments": comments}, parse_event, account)

    async def deploy(
        self, trained_model_id: str, request: DeployRequest, account: Account | None = None
    ) -> Job:
        path = f"/api/trainedModels/{_uuid(trained_model_id)}/deploy"
        return await self._post(path, request.body(), parse_job, account)

    async def retire(
        self, trained_model_id: str, deployment_id: str, account: Account | None = None
    ) -> Job:
        path = f"/api/trainedModels/{_uuid(trained_model_id)}/retire"
        body = {"deploymentId": _uuid(deployment_id)}
        return await self._post(path, body, parse_job, account)

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
        """Every item of a listing, page by page (each page a call of its own; one send each
        without `retry`): a HAL page, a HAL list without a `page` block (an association
        resource) or a bare JSON list are all read."""
        page = 0
        while True:
            query = {**params, "page": str(page), "size": str(size)}
            account = None if retry else one_send()
            data = await self._session.send("GET", path, params=query, account=account)
            if isinstance(data, list):
                items: list[Any] = data
                total_pages = None
            elif isinstance(data, dict):
                items = _embedded(data, collection, path)
                page_info = data.get("page")
                total_pages = page_info.get("totalPages") if isinstance(page_info, dict) else None
            else:
                raise ProtocolError(f"GET {path}: answer is not a listing: {excerpt(data)}")
            for item in items:
                if not isinstance(item, dict):
                    raise ProtocolError(f"{path}: an item of {collection} is not an object")
                yield item
            page += 1
            if not items or not isinstance(total_pages, int) or page >= total_pages:
                return

    async def _get(
        self,
        path: str,
        params: Mapping[str, str] | None = None,
        *,
        account: Account | None = None,
    ) -> dict[str, Any]:
        answer = await self._session.send("GET", path, params=params, account=account)
        return _object(answer, "GET", path)

    async def _post(
        self,
        path: str,
        body: Mapping[str, Any],
        parse: Callable[[Mapping[str, Any]], _T],
        account: Account | None,
    ) -> _T:
        """POST and parse; a success answer that cannot be read may still have been applied."""
        try:
            answer = await self._session.send("POST", path, body=body, account=account)
            parsed = parse(_object(answer, "POST", path))
        except ProtocolError as exc:
            raise OutcomeUnknown(
                f"POST {path}: answer unreadable ({exc})", method="POST", path=path
            ) from exc
        if isinstance(parsed, Job):
            self._session.saw_server_time(parsed.created_at)  # created just now, in server time
        return parsed


def _object(data: object, method: str, path: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ProtocolError(
            f"{method} {path}: answer is not a JSON object: {excerpt(data)}",
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


def _uuid(value: str) -> str:
    """Ids go into URL paths: only well-formed UUIDs may, so no id can reach another route."""
    try:
        return str(uuid.UUID(value))
    except (ValueError, AttributeError, TypeError) as exc:
        raise PermanentApiError(f"not a ModelOps id (UUID expected): {value!r}") from exc


__all__ = ["ModelOpsClient"]
