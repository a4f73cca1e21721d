"""APIs (seed 002's API management): deploy an API from a container image, watch
its deployments, logs and metrics. Writes that change the API's replicas answer 202
with the operation that carries them out."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from starlette.responses import Response

from nefos.api.deps import (
    Access,
    CallsWritten,
    CoreDep,
    ObjectId,
    PageDep,
    ProjectHint,
    SessionDep,
    authorize,
)
from nefos.api.streams import calls_stream, output_stream
from nefos.config import Settings
from nefos.db.models import Api, ApiDeployment, Container, Operation
from nefos.db.types import as_utc
from nefos.domain.access import Permission
from nefos.domain.errors import NotFound, ValidationFailed
from nefos.gateway.envelope import listing, ok, page
from nefos.schemas.apis import (
    ApiAccepted,
    ApiCreate,
    ApiLogs,
    ApiOutputLine,
    ApiPublic,
    ApiUpdate,
    DeploymentPublic,
    LogLevel,
    LogSource,
)
from nefos.schemas.common import Envelope, Id, Page
from nefos.services import api_usage
from nefos.services.api_usage import MAX_FOLLOW
from nefos.services.apis import ApiService
from nefos.services.containers import ContainerService, operation_url
from nefos.services.discovery import ServiceRegistry
from nefos.services.endpoints import endpoint_url
from nefos.services.metrics import MetricsService
from nefos.services.operations import operation_public
from nefos.services.principal import resolve_project

router = APIRouter(prefix="/apis", tags=["apis"])

Period = Annotated[Literal["1h", "24h", "7d", "30d"], Query(description="How far back from now.")]


def deployment_public(d: ApiDeployment, op: Operation | None, status: str) -> dict[str, Any]:
    return {
        "id": d.id,
        "api_id": d.api_id,
        "number": d.number,
        "image": d.image,
        "environment_keys": sorted(d.environment),
        "resources": d.resources,
        "replicas": d.replicas,
        "status": status,
        "rollback_of": d.rollback_of,
        "operation_id": d.operation_id,
        "error": operation_public(op)["error"] if op is not None else None,
        "created_at": d.created_at,
        "finished_at": op.finished_at if op is not None else None,
    }


def api_public(
    settings: Settings,
    api: Api,
    container: Container | None,
    latest: tuple[ApiDeployment, Operation | None, str] | None,
    health: str | None = None,
) -> dict[str, Any]:
    return {
        "id": api.id,
        "name": api.name,
        "slug": api.slug,
        "project_id": api.project_id,
        "description": api.description,
        "status": container.status if container is not None else "deleted",
        "health": health,
        "image": container.image if container is not None else None,
        "port": api.port,
        "replicas": container.replicas if container is not None else None,
        "health_check_path": api.health_check_path,
        "base_path": api.base_path,
        "endpoint": (
            endpoint_url(settings, container.name, container.id)
            if container is not None and settings.ingress_enabled
            else None
        ),
        "container_id": api.container_id,
        "deployment": deployment_public(*latest) if latest else None,
        "has_openapi": api.openapi is not None,
        "openapi_path": api.openapi_path,
        "units": api.units or [],
        "units_header": api.units_header,
        "created_at": api.created_at,
        "updated_at": api.updated_at,
    }


async def _one(core: Any, session: Any, api: Api) -> dict[str, Any]:
    service = ApiService(core, session)
    container = (await service.containers([api])).get(api.container_id or "")
    latest = (await service.deployments([api], latest_only=True))[api.id]
    health = None
    if container is not None:
        health = (await ServiceRegistry(core, session).view(container)).health.value
    return api_public(core.settings, api, container, latest[0] if latest else None, health)


def _accepted(
    message: str,
    api_body: dict[str, Any],
    deployment: dict[str, Any] | None,
    op: Operation | None,
    status: int = 202,
) -> Response:
    body = {
        "message": message,
        "api_id": api_body["id"],
        "api": api_body,
        "deployment": deployment,
        "operation": {**operation_public(op), "url": operation_url(op.id)} if op else None,
    }
    headers = {"Location": operation_url(op.id)} if op is not None else None
    return ok(body, status, headers=headers)


@router.get("", response_model=Envelope[Page[ApiPublic]])
async def list_apis(
    core: CoreDep,
    session: SessionDep,
    params: PageDep,
    project_id: ProjectHint,
    access: Access = authorize(Permission.COMPUTE_READ),
) -> Response:
    """The APIs of one project (the default project unless one is named), oldest
    first, each with its latest deployment."""
    project, _ = await resolve_project(
        session, access.principal, project_id, Permission.COMPUTE_READ
    )
    service = ApiService(core, session)
    rows, total = await service.list_page(project, params)
    containers = await service.containers(rows)
    latest = await service.deployments(rows, latest_only=True)
    items = [
        api_public(
            core.settings,
            a,
            containers.get(a.container_id or ""),
            latest[a.id][0] if latest[a.id] else None,
        )
        for a in rows
    ]
    return listing(items, "apis", total, params)


@router.post("", status_code=202, response_model=Envelope[ApiAccepted])
async def deploy_api(
    body: ApiCreate,
    core: CoreDep,
    session: SessionDep,
    project_id: ProjectHint,
    access: Access = authorize(Permission.COMPUTE_WRITE),
) -> Response:
    """Deploy an API (seed 002): its container, `replicas` replicas of `image`
    serving `port`, each checked on `health_check_path` (a replica takes calls once
    it passes). Answers 202 with the first deployment and its operation."""
    project, _ = await resolve_project(
        session, access.principal, body.project_id or project_id, Permission.COMPUTE_WRITE
    )
    api, deployment, op = await ApiService(core, session).create(access.principal, project, body)
    return _accepted(
        "API deployment accepted",
        await _one(core, session, api),
        deployment_public(deployment, op, "in_progress"),
        op,
    )


@router.get("/{api_id}", response_model=Envelope[dict[str, ApiPublic]])
async def get_api(
    api_id: ObjectId,
    core: CoreDep,
    session: SessionDep,
    access: Access = authorize(Permission.COMPUTE_READ),
) -> Response:
    """The API with its status, health, endpoint and latest deployment."""
    api = await ApiService(core, session).visible(access.principal, api_id, Permission.COMPUTE_READ)
    return ok({"api": await _one(core, session, api)})


@router.put(
    "/{api_id}",
    response_model=Envelope[ApiAccepted],
    responses={202: {"model": Envelope[ApiAccepted], "description": "A new deployment"}},
)
async def update_api(
    api_id: ObjectId,
    body: ApiUpdate,
    core: CoreDep,
    session: SessionDep,
    access: Access = authorize(Permission.COMPUTE_WRITE),
) -> Response:
    """Change the API. A new image, environment or resources is a new deployment,
    rolled out replica by replica (each new replica takes calls once it passes its
    health check; one that never does rolls the deployment back), and so is a new
    replica count: 202 with the deployment and its operation. The description,
    paths, OpenAPI document, health-check path and units (`units`,
    `units_header`) change at once (200)."""
    service = ApiService(core, session)
    api = await service.visible(access.principal, api_id, Permission.COMPUTE_WRITE)
    api, deployment, op = await service.update(access.principal, api, body)
    api_body = await _one(core, session, api)
    if op is None:
        return _accepted("API updated", api_body, None, None, status=200)
    assert deployment is not None
    return _accepted(
        "API deployment accepted",
        api_body,
        deployment_public(deployment, op, "in_progress"),
        op,
    )


@router.post("/{api_id}/rollback", status_code=202, response_model=Envelope[ApiAccepted])
async def rollback_api(
    api_id: ObjectId,
    core: CoreDep,
    session: SessionDep,
    access: Access = authorize(Permission.COMPUTE_WRITE),
) -> Response:
    """Deploy again the spec of the last deployment that succeeded before the
    active one (a new deployment, rolled out like any other; 409 when there is
    none)."""
    service = ApiService(core, session)
    api = await service.visible(access.principal, api_id, Permission.COMPUTE_WRITE)
    deployment, op = await service.rollback(access.principal, api)
    return _accepted(
        "API rollback accepted",
        await _one(core, session, api),
        deployment_public(deployment, op, "in_progress"),
        op,
    )


@router.delete("/{api_id}", status_code=202, response_model=Envelope[ApiAccepted])
async def delete_api(
    api_id: ObjectId,
    core: CoreDep,
    session: SessionDep,
    access: Access = authorize(Permission.COMPUTE_WRITE),
) -> Response:
    """Delete the API: its replicas are drained and removed (follow the operation);
    its listing is unpublished and its subscriptions end at once (`cancelled`,
    `ended_reason: api_deleted`, keys revoked), each paid monthly period credited
    its unused part to the consumer (the creator gives back its share). Its
    deployments, calls and invoices stay."""
    service = ApiService(core, session)
    api = await service.visible(access.principal, api_id, Permission.COMPUTE_WRITE)
    api_body = await _one(core, session, api)
    op = await service.delete(access.principal, api)
    return _accepted("API deletion accepted", {**api_body, "status": "deleting"}, None, op)


@router.get("/{api_id}/deployments", response_model=Envelope[dict[str, list[DeploymentPublic]]])
async def list_deployments(
    api_id: ObjectId,
    core: CoreDep,
    session: SessionDep,
    access: Access = authorize(Permission.COMPUTE_READ),
) -> Response:
    """The API's deployments, newest first (at most its last 100)."""
    service = ApiService(core, session)
    api = await service.visible(access.principal, api_id, Permission.COMPUTE_READ)
    listed = (await service.deployments([api]))[api.id][:100]
    return ok({"deployments": [deployment_public(*d) for d in listed]})


@router.get("/{api_id}/openapi", response_model=Envelope[dict[str, Any]])
async def get_openapi(
    api_id: ObjectId,
    core: CoreDep,
    session: SessionDep,
    access: Access = authorize(Permission.COMPUTE_READ),
) -> Response:
    """The API's OpenAPI document, as given at deploy or update."""
    api = await ApiService(core, session).visible(access.principal, api_id, Permission.COMPUTE_READ)
    if api.openapi is None:
        raise NotFound("This API has no OpenAPI document", api_id=api.id)
    return ok({"openapi": api.openapi})


@router.get(
    "/{api_id}/logs",
    response_model=Envelope[ApiLogs],
    dependencies=[CallsWritten],
    responses={
        200: {
            "content": {
                "application/x-ndjson": {
                    "schema": {
                        "oneOf": [
                            {"$ref": "#/components/schemas/ApiCallLog"},
                            ApiOutputLine.model_json_schema(),
                        ]
                    },
                    "example": "One call (or output line, source=container) a line, as "
                    "they come (follow=true).",
                }
            }
        }
    },
)
async def api_logs(
    api_id: ObjectId,
    core: CoreDep,
    session: SessionDep,
    params: PageDep,
    source: Annotated[
        LogSource,
        Query(description="container: the replicas' output; gateway: the call log; all: both."),
    ] = "all",
    tail: Annotated[int, Query(ge=1, le=10_000, description="Lines per replica.")] = 100,
    since: Annotated[
        datetime | None, Query(description="Calls and output lines from then on.")
    ] = None,
    until: Annotated[
        datetime | None, Query(description="Calls and output lines before then.")
    ] = None,
    timestamps: Annotated[
        bool, Query(description="Each output line after the time its replica wrote it.")
    ] = False,
    status: Annotated[
        str | None,
        Query(pattern=r"^([1-5][0-9][0-9]|[1-5]xx)$", description="Calls answered 404, or 4xx."),
    ] = None,
    consumer: Annotated[
        Id | None, Query(description="Calls of this consumer organisation only.")
    ] = None,
    level: Annotated[
        LogLevel | None,
        Query(
            description="Output lines at this level or above (by their words); calls: "
            "error = 5xx, warning = 4xx and 5xx."
        ),
    ] = None,
    follow: Annotated[
        bool,
        Query(
            description="Stream the new calls (source gateway or all) or output lines "
            "(source container) as NDJSON, one a line, as they come."
        ),
    ] = False,
    seconds: Annotated[int, Query(ge=1, le=MAX_FOLLOW, description="How long to follow.")] = 60,
    access: Access = authorize(Permission.COMPUTE_READ),
) -> Response:
    """The API's logs: its replicas' output (the last `tail` lines of each, at `level`
    or above) and its gateway call log (method, path, status, latency, bytes,
    consumer, request id; newest first, paged, filtered by `since`/`until`,
    `status`, `consumer` and `level`). With `follow=true`, the calls made from now
    (or from `since`) on are streamed as NDJSON, one a line, for `seconds`."""
    api = await ApiService(core, session).visible(access.principal, api_id, Permission.COMPUTE_READ)
    where = api_usage.CallFilter(
        api_id=api.id, since=since, until=until, status=status, consumer=consumer, level=level
    )
    since, until = as_utc(since), as_utc(until)
    if follow:
        if source == "container":
            if until is not None:
                raise ValidationFailed("A followed log has no end", until="not with follow")
            return await output_stream(
                core, access, session, api.container_id, since=since, seconds=seconds, level=level
            )
        return await calls_stream(core, access, session, where, seconds)
    body: dict[str, Any] = {
        "api_id": api.id,
        "source": source,
        "logs": "",
        "replicas": [],
        "items": [],
        "calls": [],
        "pagination": None,
    }
    if source in ("container", "all"):
        container = await session.get(Container, api.container_id) if api.container_id else None
        if container is not None:
            per_replica = await ContainerService(core, session).logs(
                container, tail=tail, slot=None, since=since, until=until, timestamps=timestamps
            )
            body["replicas"] = [
                {**r, "logs": api_usage.at_least(r["logs"], level)} for r in per_replica
            ]
        body["logs"] = "\n".join(
            f"[replica {r['replica']}] {line}"
            for r in body["replicas"]
            for line in r["logs"].splitlines()
        )
    if source in ("gateway", "all"):
        calls, total = await api_usage.calls_page(session, where, params)
        listed = page([api_usage.call_public(c) for c in calls], total, params)
        body.update(listed, calls=listed["items"])
    return ok(body)


@router.get(
    "/{api_id}/metrics", response_model=Envelope[dict[str, Any]], dependencies=[CallsWritten]
)
async def api_metrics(
    api_id: ObjectId,
    core: CoreDep,
    session: SessionDep,
    period: Period = "1h",
    access: Access = authorize(Permission.MONITORING_READ),
) -> Response:
    """The API's calls over the `period` (`calls`: how many and their units, errors
    5xx and 4xx, latency p50/p95/p99, bytes, the busiest endpoints and consumers, a
    series) and
    its replicas' cpu and memory (% of their limits) and network."""
    api = await ApiService(core, session).visible(
        access.principal, api_id, Permission.MONITORING_READ
    )
    container = await session.get(Container, api.container_id) if api.container_id else None
    replicas: dict[str, Any] = {}
    if container is not None:
        replicas = await MetricsService(core, session).container_metrics(container, period)
    figures = await api_usage.call_figures(session, api.id, period)
    return ok({"api_id": api.id, **replicas, "calls": figures})
