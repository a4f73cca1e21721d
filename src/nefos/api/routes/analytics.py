"""API analytics (issue 7): ``/analytics/overview``, ``/analytics/traffic``,
``/analytics/performance``, ``/analytics/geography``, from the request log.

Each covers a window (``period`` = 1h, 24h, 7d or 30d back from now, default 24h;
or ``start`` and/or ``end``) of one organisation's traffic (``organisation_id`` or
``X-Organisation-ID``, else the organisation of the caller's default project;
another tenant's is a 404), or with ``scope=platform`` the whole platform's
(platform admins only: 403 for anyone else).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from nefos.api.deps import Access, OrgHint, SessionDep, authorize
from nefos.domain.access import Permission
from nefos.domain.errors import Forbidden
from nefos.gateway.envelope import ok
from nefos.gateway.requestlog import RequestLog
from nefos.schemas.analytics import (
    AnalyticsGeography,
    AnalyticsOverview,
    AnalyticsPerformance,
    AnalyticsTraffic,
)
from nefos.schemas.common import Envelope
from nefos.services.analytics import AnalyticsService, Window

READ = Permission.MONITORING_READ

router = APIRouter(prefix="/analytics", tags=["analytics"])

Period = Annotated[
    Literal["1h", "24h", "7d", "30d"] | None,
    Query(description="How far back from `end` (default 24h); ignored with `start`."),
]
Start = Annotated[datetime | None, Query(description="From (ISO 8601, inclusive).")]
End = Annotated[datetime | None, Query(description="Until (ISO 8601, exclusive; default now).")]
ScopeQ = Annotated[
    Literal["organisation", "platform"],
    Query(description="`platform`: every organisation's traffic (platform admins)."),
]
Limit = Annotated[int, Query(ge=1, le=500, description="Most rows (the busiest first).")]


async def _window(
    access: Access,
    scope: str,
    organisation_id: str | None,
    period: str | None,
    start: datetime | None,
    end: datetime | None,
) -> Window:
    principal = access.principal
    if scope == "platform":
        if not (principal.is_admin and principal.key_organisation_id is None):
            principal.require_scope(Permission.PLATFORM_ADMIN)
            raise Forbidden("Platform-wide analytics are for platform administrators")
        return Window.of(None, period=period, start=start, end=end)
    org = await access.org(organisation_id, READ)
    return Window.of(org.id, period=period, start=start, end=end)


@router.get("/overview", response_model=Envelope[AnalyticsOverview])
async def overview(
    session: SessionDep,
    organisation_id: OrgHint,
    scope: ScopeQ = "organisation",
    period: Period = None,
    start: Start = None,
    end: End = None,
    access: Access = authorize(READ),
) -> Response:
    """Totals of the window: requests, error rates (5xx and 4xx), latency (avg and
    nearest-rank p50, p95, p99 in ms), unique users and IPs, bytes in and out, and
    the ten busiest endpoints (method and route template)."""
    window = await _window(access, scope, organisation_id, period, start, end)
    return ok(await AnalyticsService(session).overview(window))


@router.get("/traffic", response_model=Envelope[AnalyticsTraffic])
async def traffic(
    session: SessionDep,
    organisation_id: OrgHint,
    scope: ScopeQ = "organisation",
    period: Period = None,
    start: Start = None,
    end: End = None,
    interval: Annotated[
        Literal["minute", "hour", "day"] | None,
        Query(description="Bucket size (default: minute for 1h, day for 30d, else hour)."),
    ] = None,
    access: Access = authorize(READ),
) -> Response:
    """Requests per bucket (UTC, every bucket of the window, at most 1,500) with their
    status classes (2xx, 3xx, 4xx, 5xx)."""
    window = await _window(access, scope, organisation_id, period, start, end)
    return ok(await AnalyticsService(session).traffic(window, interval))


@router.get("/performance", response_model=Envelope[AnalyticsPerformance])
async def performance(
    session: SessionDep,
    organisation_id: OrgHint,
    scope: ScopeQ = "organisation",
    period: Period = None,
    start: Start = None,
    end: End = None,
    limit: Limit = 100,
    access: Access = authorize(READ),
) -> Response:
    """Per endpoint (method and route template): requests, latency (avg, p50, p95,
    p99 in ms) and error rates, the busiest first."""
    window = await _window(access, scope, organisation_id, period, start, end)
    return ok(await AnalyticsService(session).performance(window, limit))


@router.get("/geography", response_model=Envelope[AnalyticsGeography])
async def geography(
    request: Request,
    session: SessionDep,
    organisation_id: OrgHint,
    scope: ScopeQ = "organisation",
    period: Period = None,
    start: Start = None,
    end: End = None,
    limit: Limit = 100,
    access: Access = authorize(READ),
) -> Response:
    """Requests by the client's country (from the offline GeoIP database of
    `NEFOS_GEOIP_DATABASE`) or, when none is configured, by the client's network
    (/24 for IPv4, /48 for IPv6)."""
    window = await _window(access, scope, organisation_id, period, start, end)
    request_log: RequestLog = request.app.state.request_log
    by_country = request_log.geoip is not None
    return ok(await AnalyticsService(session).geography(window, by_country=by_country, limit=limit))
