"""API analytics from the request log (``/analytics``).

Each call covers a window: ``period`` (``1h``, ``24h``, ``7d``, ``30d`` back from
``end`` or now; default 24h) or ``start`` and/or ``end``, at most 31 days; of one
organisation's traffic (``organisation_id``, else your default project's) or, with
``platform=True``, the whole platform's (platform admins).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from nefos.schemas.analytics import (
    AnalyticsGeography,
    AnalyticsOverview,
    AnalyticsPerformance,
    AnalyticsTraffic,
)
from nefos.sdk._resources import _body, _Resource, _when


def _window(
    period: str | None,
    start: datetime | str | None,
    end: datetime | str | None,
    organisation_id: str | None,
    platform: bool,
    **extra: Any,
) -> dict[str, Any]:
    return _body(
        period=period,
        start=_when(start),
        end=_when(end),
        organisation_id=organisation_id,
        scope="platform" if platform else None,
        **extra,
    )


class Analytics(_Resource):
    """Requests, errors, latency and where they came from."""

    def overview(
        self,
        *,
        period: str | None = None,
        start: datetime | str | None = None,
        end: datetime | str | None = None,
        organisation_id: str | None = None,
        platform: bool = False,
    ) -> AnalyticsOverview:
        """Totals: requests, error rates, latency (avg, p50, p95, p99 in ms), unique
        users and IPs, bytes, the ten busiest endpoints."""
        params = _window(period, start, end, organisation_id, platform)
        return self._one(AnalyticsOverview, "GET", "/analytics/overview", params=params)

    def traffic(
        self,
        *,
        period: str | None = None,
        start: datetime | str | None = None,
        end: datetime | str | None = None,
        interval: str | None = None,
        organisation_id: str | None = None,
        platform: bool = False,
    ) -> AnalyticsTraffic:
        """Requests per ``interval`` (``minute``, ``hour``, ``day``) with their status
        classes."""
        params = _window(period, start, end, organisation_id, platform, interval=interval)
        return self._one(AnalyticsTraffic, "GET", "/analytics/traffic", params=params)

    def performance(
        self,
        *,
        period: str | None = None,
        start: datetime | str | None = None,
        end: datetime | str | None = None,
        limit: int | None = None,
        organisation_id: str | None = None,
        platform: bool = False,
    ) -> AnalyticsPerformance:
        """Per endpoint: requests, latency percentiles, error rates (busiest first)."""
        params = _window(period, start, end, organisation_id, platform, limit=limit)
        return self._one(AnalyticsPerformance, "GET", "/analytics/performance", params=params)

    def geography(
        self,
        *,
        period: str | None = None,
        start: datetime | str | None = None,
        end: datetime | str | None = None,
        limit: int | None = None,
        organisation_id: str | None = None,
        platform: bool = False,
    ) -> AnalyticsGeography:
        """Requests by country (with a GeoIP database on the server) or by network."""
        params = _window(period, start, end, organisation_id, platform, limit=limit)
        return self._one(AnalyticsGeography, "GET", "/analytics/geography", params=params)
