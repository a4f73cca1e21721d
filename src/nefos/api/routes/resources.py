"""Hosts and capacity (seed 003 "resources"). Platform administrators only."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.routing import APIRoute
from starlette.responses import Response

from nefos.api.deps import Access, CoreDep, ObjectId, PageDep, SessionDep, authorize
from nefos.db.models import Host
from nefos.domain.access import Permission
from nefos.gateway.envelope import ok, page
from nefos.schemas.common import Envelope, Page
from nefos.schemas.compute import (
    HostCreate,
    HostDraining,
    HostPublic,
    HostRemoved,
    OperationRef,
    ResourceStats,
)
from nefos.services.containers import operation_url
from nefos.services.hosts import HostService

router = APIRouter(prefix="/resources", tags=["hosts"])


def host_public(h: Host) -> dict[str, Any]:
    return HostPublic(
        id=h.id,
        hostname=h.hostname,
        ip_address=h.ip_address,
        driver=h.driver,
        uri=h.uri,
        hypervisor_type=h.hypervisor_type,
        status=h.status,
        enabled=h.enabled,
        cpu_cores=h.cpu_cores,
        memory_gb=round(h.memory_mb / 1024, 2),
        memory_mb=h.memory_mb,
        storage_gb=h.storage_gb,
        max_instances=h.max_instances,
        used={
            "cpu_cores": h.used_cpu_milli / 1000,
            "memory_gb": round(h.used_memory_mb / 1024, 2),
            "storage_gb": h.used_storage_gb,
            "instances": h.instance_count,
        },
        last_error=h.last_error,
        last_seen_at=h.last_seen_at,
        created_at=h.created_at,
        updated_at=h.updated_at,
    ).model_dump(mode="json")


@router.get("/hosts", response_model=Envelope[Page[HostPublic]])
async def list_hosts(
    core: CoreDep,
    session: SessionDep,
    params: PageDep,
    access: Access = authorize(Permission.PLATFORM_ADMIN),
) -> Response:
    rows, total = await HostService(core, session).list_page(params)
    return ok(page([host_public(h) for h in rows], total, params))


@router.post("/hosts", status_code=201, response_model=Envelope[HostPublic])
async def register_host(
    body: HostCreate,
    core: CoreDep,
    session: SessionDep,
    access: Access = authorize(Permission.PLATFORM_ADMIN),
) -> Response:
    """Add a host. Nefos connects at once and reads its capacity: `active` if it
    answers, else `offline` (checked again periodically; it gets no work meanwhile)."""
    host = await HostService(core, session).register(body)
    return ok(host_public(host), 201)


@router.get("/hosts/{host_id}", response_model=Envelope[HostPublic])
async def get_host(
    host_id: ObjectId,
    core: CoreDep,
    session: SessionDep,
    access: Access = authorize(Permission.PLATFORM_ADMIN),
) -> Response:
    return ok(host_public(await HostService(core, session).get(host_id)))


@router.delete(
    "/hosts/{host_id}",
    response_model=Envelope[HostRemoved],
    responses={
        202: {
            "model": Envelope[HostDraining],
            "description": "Draining: the host's instances move first (follow `operation`)",
        }
    },
)
async def delete_host(
    host_id: ObjectId,
    core: CoreDep,
    session: SessionDep,
    drain: Annotated[
        bool, Query(description="Move the host's instances to other hosts, then remove it.")
    ] = False,
    access: Access = authorize(Permission.PLATFORM_ADMIN),
) -> Response:
    """Remove a host with no instances (200); with `?drain=true` one that has some
    is drained first (202 with the operation)."""
    op = await HostService(core, session).delete(
        host_id, drain=drain, user_id=access.principal.user_id
    )
    if op is None:
        return ok({"message": "Host removed", "host_id": host_id})
    ref = OperationRef(id=op.id, status=op.status, url=operation_url(op.id))
    return ok({"message": "Host draining", "host_id": host_id, "operation": ref}, 202)


@router.get("/stats", response_model=Envelope[ResourceStats])
async def resource_stats(
    core: CoreDep,
    session: SessionDep,
    access: Access = authorize(Permission.PLATFORM_ADMIN),
) -> Response:
    """Capacity and use over all hosts (seed 003), with a breakdown by resource class."""
    return ok(await HostService(core, session).stats())


# `/hosts`: where people who guess look for the hosts. The same endpoints as
# /resources/hosts, left out of the OpenAPI document (it names the canonical paths).
hosts = APIRouter(prefix="/hosts", tags=["hosts"], include_in_schema=False)
for _route in router.routes:
    assert isinstance(_route, APIRoute)
    if _route.path.startswith("/resources/hosts"):
        hosts.add_api_route(
            _route.path.removeprefix("/resources/hosts"),
            _route.endpoint,
            methods=sorted(_route.methods or ()),
            status_code=_route.status_code,
            response_model=_route.response_model,
            name=f"{_route.name}_alias",
        )
