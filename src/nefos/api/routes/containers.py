"""Containers (seed 004). Writes answer 202 with the operation that carries them out."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, WebSocket
from starlette.responses import Response

from nefos.api import terminal
from nefos.api.deps import (
    ID_PATTERN,
    Access,
    CoreDep,
    ObjectId,
    PageDep,
    ProjectHint,
    SessionDep,
    authorize,
)
from nefos.api.streams import OUTPUT_STREAM_DOC, output_stream
from nefos.config import Settings
from nefos.db.models import Container, ContainerReplica, Host, Operation
from nefos.db.types import as_utc
from nefos.domain.access import Permission
from nefos.domain.errors import NotFound, ValidationFailed
from nefos.domain.lifecycle import ContainerStatus
from nefos.gateway.envelope import listing, ok
from nefos.schemas.common import Envelope
from nefos.schemas.compute import (
    ContainerAccepted,
    ContainerCreate,
    ContainerList,
    ContainerLogs,
    ContainerPublic,
    ContainerScale,
    ContainerUpdate,
    ContainerUpdated,
)
from nefos.services.api_usage import MAX_FOLLOW
from nefos.services.containers import ContainerService, operation_url, replica_view
from nefos.services.endpoints import endpoint_url, target_port
from nefos.services.metrics import MetricsService
from nefos.services.principal import resolve_project

router = APIRouter(prefix="/containers", tags=["containers"])

ContainerId = ObjectId
StatusFilter = Annotated[
    ContainerStatus | None,
    Query(
        description="Only containers in this status.",
    ),
]


def container_public(
    settings: Settings,
    c: Container,
    replicas: list[ContainerReplica] | None = None,
    hosts: dict[str, Host] | None = None,
    metrics: dict[str, Any] | None = None,
    usage: dict[str, Any] | None = None,
) -> dict[str, Any]:
    endpoint = None
    if settings.ingress_enabled and target_port(c.ports) is not None:
        endpoint = endpoint_url(settings, c.name, c.id)
    data: dict[str, Any] = {
        "endpoint": endpoint,
        "id": c.id,
        "user_id": c.user_id,
        "project_id": c.project_id,
        "name": c.name,
        "image": c.image,
        "status": c.status,
        "status_reason": c.status_reason,
        "ports": c.ports,
        "environment": c.environment,
        "command": c.command,
        "resources": c.resources,
        "replicas": c.replicas,
        "generation": c.generation,
        "created_at": c.created_at,
        "updated_at": c.updated_at,
    }
    if replicas is not None:
        data.update(replica_view(c, replicas, hosts or {}))
    if metrics is not None:
        data["metrics"] = metrics
    if usage is not None:
        data["usage"] = usage
    return ContainerPublic.model_validate(data).model_dump(mode="json", exclude_none=False)


def _ref(op: Operation) -> dict[str, str]:
    return {"id": op.id, "status": op.status, "url": operation_url(op.id)}


async def _accepted(
    service: ContainerService, message: str, c: Container, op: Operation, **extra: Any
) -> Response:
    """The 202: the container as it stands, with its replicas and endpoints (a scale
    of a running container shows those running), and the operation to follow."""
    replicas = (await service.replicas([c.id]))[c.id]
    hosts = await service._hosts(replicas)
    headers = {"Location": operation_url(op.id)}
    body = {
        "message": message,
        "container_id": c.id,
        "container": container_public(service.core.settings, c, replicas, hosts),
        "operation": _ref(op),
        **extra,
    }
    return ok(body, 202, headers=headers)


@router.get("", response_model=Envelope[ContainerList])
async def list_containers(
    core: CoreDep,
    session: SessionDep,
    params: PageDep,
    project_id: ProjectHint,
    status: StatusFilter = None,
    status_filter: StatusFilter = None,
    user_id: Annotated[str | None, Query(pattern=ID_PATTERN, description="Creator.")] = None,
    access: Access = authorize(Permission.COMPUTE_READ),
) -> Response:
    """Containers of one project (the default project unless one is named)."""
    project, _ = await resolve_project(
        session, access.principal, project_id, Permission.COMPUTE_READ
    )
    service = ContainerService(core, session)
    rows, total = await service.list_page(
        project, params, status=status or status_filter, user_id=user_id
    )
    replicas = await service.replicas([c.id for c in rows])
    usage = await MetricsService(core, session).usage_now([c.id for c in rows])
    items = [
        container_public(core.settings, c, replicas[c.id], usage=usage.get(c.id)) for c in rows
    ]
    return listing(items, "containers", total, params)


@router.post("", status_code=202, response_model=Envelope[ContainerAccepted])
async def create_container(
    body: ContainerCreate,
    core: CoreDep,
    session: SessionDep,
    project_id: ProjectHint,
    access: Access = authorize(Permission.COMPUTE_WRITE),
) -> Response:
    """Create and start a container (`replicas` engine containers, each placed on a
    host). Answers 202 in status `creating`; follow `operation.url`."""
    project, _ = await resolve_project(
        session, access.principal, body.project_id or project_id, Permission.COMPUTE_WRITE
    )
    service = ContainerService(core, session)
    container, op = await service.create(access.principal, project, body)
    return await _accepted(service, "Container creation accepted", container, op)


@router.get("/{container_id}", response_model=Envelope[dict[str, ContainerPublic]])
async def get_container(
    container_id: ContainerId,
    core: CoreDep,
    session: SessionDep,
    access: Access = authorize(Permission.COMPUTE_READ),
) -> Response:
    """The container with its replicas, published endpoints and live `metrics`
    (null while nothing runs or the host does not answer)."""
    service = ContainerService(core, session)
    c = await service.visible(access.principal, container_id, Permission.COMPUTE_READ)
    replicas = (await service.replicas([c.id]))[c.id]
    hosts = await service._hosts(replicas)
    metrics = await service.metrics(c, replicas)
    return ok({"container": container_public(core.settings, c, replicas, hosts, metrics)})


@router.put(
    "/{container_id}",
    response_model=Envelope[ContainerUpdated],
    responses={
        202: {
            "model": Envelope[ContainerAccepted],
            "description": "A rolling update: follow `operation`",
        }
    },
)
async def update_container(
    container_id: ContainerId,
    body: ContainerUpdate,
    core: CoreDep,
    session: SessionDep,
    access: Access = authorize(Permission.COMPUTE_WRITE),
) -> Response:
    """A rolling update to a new `image`, `environment`, `command` or `resources`: one
    new replica at a time comes up (and passes the service's own check) before one
    old replica is drained and removed; one that does not rolls the update back.
    202 with the `container.update` operation; 200 when nothing would change."""
    service = ContainerService(core, session)
    c = await service.visible(access.principal, container_id, Permission.COMPUTE_WRITE)
    await service.not_an_apis(c)
    c, op = await service.update(access.principal, c, body)
    if op is None:
        replicas = (await service.replicas([c.id]))[c.id]
        hosts = await service._hosts(replicas)
        view = container_public(core.settings, c, replicas, hosts)
        return ok({"message": "Nothing to change", "container_id": c.id, "container": view})
    return await _accepted(service, "Container update accepted", c, op)


@router.put("/{container_id}/start", status_code=202, response_model=Envelope[ContainerAccepted])
async def start_container(
    container_id: ContainerId,
    core: CoreDep,
    session: SessionDep,
    access: Access = authorize(Permission.COMPUTE_WRITE),
) -> Response:
    service = ContainerService(core, session)
    c = await service.visible(access.principal, container_id, Permission.COMPUTE_WRITE)
    c, op = await service.start(access.principal, c)
    return await _accepted(service, "Container start accepted", c, op)


@router.put("/{container_id}/stop", status_code=202, response_model=Envelope[ContainerAccepted])
async def stop_container(
    container_id: ContainerId,
    core: CoreDep,
    session: SessionDep,
    access: Access = authorize(Permission.COMPUTE_WRITE),
) -> Response:
    service = ContainerService(core, session)
    c = await service.visible(access.principal, container_id, Permission.COMPUTE_WRITE)
    c, op = await service.stop(access.principal, c)
    return await _accepted(service, "Container stop accepted", c, op)


@router.post("/{container_id}/scale", status_code=202, response_model=Envelope[ContainerAccepted])
async def scale_container(
    container_id: ContainerId,
    body: ContainerScale,
    core: CoreDep,
    session: SessionDep,
    access: Access = authorize(Permission.COMPUTE_WRITE),
) -> Response:
    """Change the number of replicas. `rolling` (default) starts new replicas before
    removing any; `recreate` removes every old replica, then starts the new ones."""
    service = ContainerService(core, session)
    c = await service.visible(access.principal, container_id, Permission.COMPUTE_WRITE)
    await service.not_an_apis(c)
    c, op = await service.scale(access.principal, c, body)
    return await _accepted(service, "Container scaling accepted", c, op, replicas=body.replicas)


@router.delete("/{container_id}", status_code=202, response_model=Envelope[ContainerAccepted])
async def delete_container(
    container_id: ContainerId,
    core: CoreDep,
    session: SessionDep,
    access: Access = authorize(Permission.COMPUTE_WRITE),
) -> Response:
    """Remove every engine container, free the allocations, then the record."""
    service = ContainerService(core, session)
    c = await service.visible(access.principal, container_id, Permission.COMPUTE_WRITE)
    await service.not_an_apis(c)
    c, op = await service.delete(access.principal, c)
    return await _accepted(service, "Container deletion accepted", c, op)


@router.websocket("/{container_id}/exec")
async def container_terminal(ws: WebSocket, container_id: str) -> None:
    """A terminal in a running replica: the protocol is in ``nefos.api.terminal``."""
    await terminal.serve(ws, container_id, terminal.ContainerExec(ws.app.state.core))


@router.get(
    "/{container_id}/logs",
    response_model=Envelope[ContainerLogs],
    responses={200: {"content": OUTPUT_STREAM_DOC}},
)
async def container_logs(
    container_id: ContainerId,
    core: CoreDep,
    session: SessionDep,
    tail: Annotated[int, Query(ge=1, le=10_000, description="Lines per replica.")] = 100,
    replica: Annotated[int | None, Query(ge=0, le=1000, description="Only this replica.")] = None,
    since: Annotated[datetime | None, Query(description="Lines written from then on.")] = None,
    until: Annotated[datetime | None, Query(description="Lines written before then.")] = None,
    timestamps: Annotated[
        bool, Query(description="Each line after the time its replica wrote it.")
    ] = False,
    follow: Annotated[
        bool,
        Query(
            description="Stream the lines written from now (or from `since`) on as "
            "NDJSON, one a line, with its replica and time."
        ),
    ] = False,
    seconds: Annotated[int, Query(ge=1, le=MAX_FOLLOW, description="How long to follow.")] = 60,
    access: Access = authorize(Permission.COMPUTE_READ),
) -> Response:
    """stdout and stderr of each replica (the last `tail` lines, of those written
    between `since` and `until`). With `follow=true`, the lines written from now (or
    `since`) on are streamed as NDJSON for `seconds` (at most 300)."""
    since, until = as_utc(since), as_utc(until)
    if since is not None and until is not None and since >= until:
        raise ValidationFailed("The window is empty", since="must be before until")
    service = ContainerService(core, session)
    c = await service.visible(access.principal, container_id, Permission.COMPUTE_READ)
    if follow:
        if until is not None:
            raise ValidationFailed("A followed log has no end", until="not with follow")
        if replica is not None and not any(
            r.slot == replica for r in (await service.replicas([c.id]))[c.id]
        ):
            raise NotFound("No such replica", replica=replica)  # now, not mid-stream
        return await output_stream(
            core, access, session, c.id, since=since, seconds=seconds, slot=replica
        )
    per_replica = await service.logs(
        c, tail=tail, slot=replica, since=since, until=until, timestamps=timestamps
    )
    text = (
        "\n".join(
            f"[replica {r['replica']}] {line}"
            for r in per_replica
            for line in r["logs"].splitlines()
        )
        if len(per_replica) > 1
        else (per_replica[0]["logs"] if per_replica else "")
    )
    return ok({"container_id": c.id, "logs": text, "replicas": per_replica})
