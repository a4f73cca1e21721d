"""Services (seed 004's service discovery): each container is a service whose
instances are its replicas, and so is each VM that declares a service port (its one
instance is the VM), with their server-side health."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from nefos.api.deps import (
    Access,
    CoreDep,
    ObjectId,
    PageDep,
    ProjectHint,
    SessionDep,
    authorize,
)
from nefos.domain.access import Permission
from nefos.domain.errors import RateLimited, ValidationFailed
from nefos.gateway.envelope import ok, page
from nefos.schemas.common import Envelope
from nefos.schemas.services import Maintenance, ServiceList, ServicePublic, ServiceUpdate
from nefos.services.discovery import (
    MAX_WAIT,
    InstanceView,
    ServiceFilter,
    ServiceRegistry,
    ServiceView,
    fingerprint,
    parse_metadata_filters,
)
from nefos.services.endpoints import endpoint_url
from nefos.services.principal import resolve_project
from nefos.services.vms import vm_domain

router = APIRouter(prefix="/services", tags=["services"])

#: Live stats of one instance wait at most this long (a detail answers regardless).
STATS_TIMEOUT = 2.0
_WAIT = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m)?$")


def parse_wait(text: str) -> float:
    """``30s``, ``2m``, ``500ms`` or seconds -> seconds (at most MAX_WAIT)."""
    m = _WAIT.match(text.strip())
    if not m:
        raise ValidationFailed("wait: a duration such as 30s, 2m or 500ms", wait=text)
    value = float(m.group(1)) * {"ms": 0.001, "s": 1.0, "m": 60.0, None: 1.0}[m.group(2)]
    return min(value, MAX_WAIT)


#: Blocking queries one user may hold open at once (in each API process).
MAX_WAITING = 8
_waiting: dict[str, int] = {}


@contextlib.contextmanager
def blocking_slot(user_id: str) -> Iterator[None]:
    """One of the user's blocking-query slots, or RateLimited (429): a wait holds a
    subscription and re-reads its list on every change, so their number is bounded
    per user, not only their rate."""
    if _waiting.get(user_id, 0) >= MAX_WAITING:
        raise RateLimited(
            f"At most {MAX_WAITING} blocking queries at once; wait for one to answer",
            retry_after=1,
        )
    _waiting[user_id] = _waiting.get(user_id, 0) + 1
    try:
        yield
    finally:
        left = _waiting[user_id] - 1
        if left:
            _waiting[user_id] = left
        else:
            del _waiting[user_id]


def summary(s: ServiceView, endpoint: str | None) -> dict[str, Any]:
    return {
        "id": s.id,
        "name": s.name,
        "kind": s.kind,
        "project_id": s.project_id,
        "version": s.version,
        "endpoint": endpoint,
        "health": s.health.value,
        "instances": len(s.instances),
        "passing": s.passing,
        "tags": s.tags,
        "metadata": s.metadata,
        "check": s.check.as_dict(),
        "created_at": s.created_at,
    }


def detail(
    s: ServiceView, endpoint: str | None, metrics: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    spec = s.check
    instances = []
    for i in s.instances:
        h = i.health
        instances.append(
            {
                "id": i.id,
                "slot": i.slot,
                "endpoint": i.endpoint,
                "host": i.host.hostname if i.host else None,
                "state": i.state,
                "health": i.status.value,
                "maintenance_reason": h.maintenance_reason if h else None,
                "checks": [
                    {
                        "type": spec.type,
                        "status": h.status if h else "critical",
                        "output": h.output if h else "not checked yet",
                        "checked_at": h.checked_at if h else None,
                        "history": list(h.checks) if h else [],
                    }
                ],
                "transitions": list(h.transitions) if h else [],
                "metrics": metrics.get(i.id),
            }
        )
    return {**summary(s, endpoint), "instances": instances}


async def instance_metrics(core: Any, s: ServiceView) -> dict[str, dict[str, Any]]:
    """cpu_usage and memory_usage of each running instance, read live (bounded)."""
    running = [i for i in s.instances if i.running and i.host is not None]
    limit_cores = s.cpu_limit

    async def one(i: InstanceView) -> Any:
        driver = core.drivers.for_host(i.host)
        name = i.driver_id or (vm_domain(s.vm) if s.vm is not None else f"nefos-{i.id}")
        return await asyncio.wait_for(driver.stats(name), STATS_TIMEOUT)

    samples = await asyncio.gather(*(one(i) for i in running), return_exceptions=True)
    out: dict[str, dict[str, Any]] = {}
    for i, sample in zip(running, samples, strict=True):
        if isinstance(sample, BaseException):
            continue
        out[i.id] = {
            "cpu_usage": round(sample.cpu_percent / limit_cores, 2),
            "memory_usage": round(100 * sample.memory_bytes / (sample.memory_limit_bytes or 1), 2),
        }
    return out


@router.get("", response_model=Envelope[ServiceList])
async def list_services(
    request: Request,
    core: CoreDep,
    session: SessionDep,
    params: PageDep,
    project_id: ProjectHint,
    health: Annotated[
        str | None,
        Query(
            pattern="^(passing|warning|critical|maintenance)$",
            description="Only services in this health.",
        ),
    ] = None,
    name: Annotated[str | None, Query(max_length=63)] = None,
    tag: Annotated[
        list[str] | None, Query(max_length=16, description="Only services with every tag.")
    ] = None,
    index: Annotated[
        int | None,
        Query(ge=0, description="A blocking query: answer once the list's `index` differs."),
    ] = None,
    wait: Annotated[
        str | None,
        Query(max_length=16, description="How long a blocking query waits (default 30s, max 5m)."),
    ] = None,
    access: Access = authorize(Permission.COMPUTE_READ),
) -> Response:
    """The services of one project (the default project unless one is named), with
    their health and number of instances. Filter with `health`, `name`, `tag` and
    `metadata.KEY=VALUE`."""
    project, _ = await resolve_project(
        session, access.principal, project_id, Permission.COMPUTE_READ
    )
    metadata = parse_metadata_filters(request.query_params.multi_items())
    if len(metadata) > 16:
        raise ValidationFailed("At most 16 metadata filters", metadata="too many")
    where = ServiceFilter(health=health, name=name, tags=tuple(tag or ()), metadata=metadata)
    registry = ServiceRegistry(core, session)
    if index is not None:
        seconds = parse_wait(wait or "30s")
        with blocking_slot(access.principal.user_id):
            services = await registry.watch(project, where, index, seconds)
    else:
        services = await registry.search(project, where)
    shown = services[params.offset : params.offset + params.limit]
    body = page(
        [summary(s, endpoint_url(core.settings, s.name, s.id)) for s in shown],
        len(services),
        params,
    )
    body["services"] = body["items"]
    body["index"] = fingerprint(services)
    return ok(body, headers={"X-Nefos-Index": str(body["index"])})


@router.get("/{service_id}", response_model=Envelope[dict[str, ServicePublic]])
async def get_service(
    service_id: ObjectId,
    request: Request,
    core: CoreDep,
    session: SessionDep,
    access: Access = authorize(Permission.COMPUTE_READ),
) -> Response:
    """The service with every instance: its endpoint, host, state, health, checks
    with their last output and history, its health transitions, and live metrics."""
    s = await ServiceRegistry(core, session).get(access.principal, service_id)
    metrics = await instance_metrics(core, s)
    ingress = getattr(request.app.state, "ingress", None)
    if ingress is not None:
        for i in s.instances:
            seen = ingress.traffic.of(i.id)
            if seen is not None:
                metrics.setdefault(i.id, {}).update(
                    requests_per_second=seen.requests_per_second,
                    error_rate=seen.error_rate,
                    p95_response_time=seen.p95_ms,
                )
    return ok({"service": detail(s, endpoint_url(core.settings, s.name, s.id), metrics)})


@router.put("/{service_id}", response_model=Envelope[dict[str, ServicePublic]])
async def update_service(
    service_id: ObjectId,
    body: ServiceUpdate,
    core: CoreDep,
    session: SessionDep,
    access: Access = authorize(Permission.COMPUTE_WRITE),
) -> Response:
    """Set the service's version, tags, metadata or health check."""
    s = await ServiceRegistry(core, session).update(access.principal, service_id, body)
    return ok({"service": detail(s, endpoint_url(core.settings, s.name, s.id), {})})


@router.post(
    "/{service_id}/instances/{instance_id}/maintenance",
    response_model=Envelope[dict[str, ServicePublic]],
)
async def instance_maintenance(
    service_id: ObjectId,
    instance_id: ObjectId,
    core: CoreDep,
    session: SessionDep,
    body: Maintenance | None = None,
    access: Access = authorize(Permission.COMPUTE_WRITE),
) -> Response:
    """Put an instance in maintenance (out of traffic, whatever its checks say), or
    back in service with `{"enabled": false}`."""
    s = await ServiceRegistry(core, session).maintenance(
        access.principal, service_id, instance_id, body or Maintenance()
    )
    return ok({"service": detail(s, endpoint_url(core.settings, s.name, s.id), {})})
