"""Metrics (seeds 000, 003, 004): series of VMs, containers and hosts, platform
summaries, and the Prometheus exposition. Series are ``[{timestamp, value}]``."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Header, Query, Request
from starlette.responses import Response

from nefos.api.deps import Access, CoreDep, ObjectId, SessionDep, authorize
from nefos.domain.access import Permission
from nefos.domain.errors import Forbidden
from nefos.gateway.counters import RequestCounters
from nefos.gateway.envelope import ok
from nefos.schemas.common import Envelope
from nefos.schemas.monitoring import (
    ContainerMetrics,
    HostMetrics,
    MetricsSummary,
    SystemMetrics,
    VmMetrics,
)
from nefos.services.containers import ContainerService
from nefos.services.metrics import MetricsService
from nefos.services.vms import VmService

router = APIRouter(tags=["monitoring"])

PROMETHEUS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: A year and a month: the 1-hour rollups' default retention.
MAX_HOURS = 24 * 400

Hours = Annotated[
    int, Query(ge=1, le=MAX_HOURS, description="How many hours back from now (default 24).")
]
Period = Annotated[
    Literal["1h", "24h", "7d", "30d"], Query(description="How far back from now (seed 004).")
]


@router.get("/monitoring/vm-metrics/{vm_id}", response_model=Envelope[VmMetrics])
async def vm_metrics(
    vm_id: ObjectId,
    core: CoreDep,
    session: SessionDep,
    hours: Hours = 24,
    access: Access = authorize(Permission.MONITORING_READ),
) -> Response:
    """The VM's cpu %, memory, network and disk rates over the last `hours`, at the
    finest resolution that gives at most 1,500 points a series (raw, 1m or 1h)."""
    vm = await VmService(core, session).visible(access.principal, vm_id, Permission.MONITORING_READ)
    return ok(await MetricsService(core, session).vm_metrics(vm, hours))


@router.get("/monitoring/host-metrics/{host_id}", response_model=Envelope[HostMetrics])
async def host_metrics(
    host_id: ObjectId,
    core: CoreDep,
    session: SessionDep,
    hours: Hours = 24,
    access: Access = authorize(Permission.PLATFORM_ADMIN),
) -> Response:
    """A host's own cpu % and memory over the last `hours` (platform admins)."""
    return ok(await MetricsService(core, session).host_metrics(host_id, hours))


@router.get("/containers/{container_id}/metrics", response_model=Envelope[ContainerMetrics])
async def container_metrics(
    container_id: ObjectId,
    core: CoreDep,
    session: SessionDep,
    period: Period = "1h",
    access: Access = authorize(Permission.MONITORING_READ),
) -> Response:
    """Seed 004: cpu and memory in % of the container's limits, network in bytes
    per second (in and out), over the `period`."""
    container = await ContainerService(core, session).visible(
        access.principal, container_id, Permission.MONITORING_READ
    )
    return ok(await MetricsService(core, session).container_metrics(container, period))


@router.get("/monitoring/system-metrics", response_model=Envelope[SystemMetrics])
async def system_metrics(
    core: CoreDep,
    session: SessionDep,
    access: Access = authorize(Permission.PLATFORM_ADMIN),
) -> Response:
    """Hosts, containers and VMs by status, and the platform's latest usage."""
    return ok(await MetricsService(core, session).system())


@router.get(
    "/metrics",
    response_model=Envelope[MetricsSummary],
    responses={200: {"content": {PROMETHEUS_TYPE: {}}}},
)
async def metrics_summary(
    request: Request,
    core: CoreDep,
    session: SessionDep,
    accept: Annotated[str | None, Header(include_in_schema=False)] = None,
    access: Access = authorize(Permission.MONITORING_READ),
) -> Response:
    """Seed 004's summary (JSON): `system` (containers, VMs, cpu and memory usage,
    network) and `requests` (from the request log, so every server process's:
    `total_requests` and `error_rate` (5xx, %) over the log's retention,
    `requests_per_second` over the last minute). A platform admin sees the
    platform; anyone else the projects and the requests of their organisations.

    With `Accept: text/plain` (what Prometheus sends), the Prometheus exposition of
    `GET /prometheus` instead (platform admins only)."""
    service = MetricsService(core, session)
    counters = request_counters(request)
    principal = access.principal
    platform = principal.is_admin and principal.key_organisation_id is None
    if accept and "text/plain" in accept and "json" not in accept:
        if not platform:
            principal.require_scope(Permission.PLATFORM_ADMIN)
            raise Forbidden("The Prometheus exposition is for platform administrators")
        text = await service.prometheus(counters, request.app.state.request_log)
        return Response(text, media_type=PROMETHEUS_TYPE)
    return ok(await service.summary_for(principal))


@router.get(
    "/prometheus",
    response_class=Response,
    responses={200: {"content": {PROMETHEUS_TYPE: {}}, "description": "Prometheus text"}},
)
async def prometheus(
    request: Request,
    core: CoreDep,
    session: SessionDep,
    access: Access = authorize(Permission.PLATFORM_ADMIN),
) -> Response:
    """Platform and per-instance metrics in the Prometheus text format, labelled
    `project`, `instance`, `name`, `host` (scrape with an admin API key)."""
    text = await MetricsService(core, session).prometheus(
        request_counters(request), request.app.state.request_log
    )
    return Response(text, media_type=PROMETHEUS_TYPE)


def request_counters(request: Request) -> RequestCounters:
    counters: RequestCounters = request.app.state.request_counters
    return counters
