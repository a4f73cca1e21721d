"""API analytics from the request log (``nefos.gateway.requestlog``): overview,
traffic over time, performance per endpoint, geography; and the ``requests`` block of
``GET /metrics``.

Scope: one organisation's own traffic (the requests recorded for it: its routes'
targets, its API keys, its members' personal calls when it is their personal
organisation), or the whole platform (platform admins).

Percentiles are nearest-rank (the smallest recorded duration with at least p % of
the window's requests at or below it), computed in SQL by ``ROW_NUMBER() OVER
(ORDER BY duration_ms)``: the same rows give the same figure on SQLite and
PostgreSQL, and no duration leaves the database. The cost is one sort of the
window's requests in the database: at most :data:`MAX_RANKED` of them (beyond,
every k-th by id, ``sampled_every``), and windows are at most :data:`MAX_SPAN`
(31 days, beyond the default retention of 30). Counts, rates and averages are
always over every request of the window.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, case, distinct, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from nefos.db.models import RequestLogEntry
from nefos.domain.errors import ValidationFailed

T = RequestLogEntry

PERIODS: dict[str, timedelta] = {
    "1h": timedelta(hours=1),
    "24h": timedelta(hours=24),
    "7d": timedelta(days=7),
    "30d": timedelta(days=30),
}
DEFAULT_PERIOD = "24h"
MAX_SPAN = timedelta(days=31)
#: Bucket sizes of ``/analytics/traffic``, in milliseconds.
INTERVALS: dict[str, int] = {"minute": 60_000, "hour": 3_600_000, "day": 86_400_000}
#: The interval a period gets when none is asked for.
DEFAULT_INTERVAL = {"1h": "minute", "24h": "hour", "7d": "hour", "30d": "day"}
MAX_BUCKETS = 1500
#: 9999-12-31T00:00:00Z: the latest end of a window (in epoch ms).
LATEST_MS = 253_402_214_400_000
PERCENTILES = (50, 95, 99)
#: Most requests whose durations are ranked for percentiles: beyond, every k-th
#: request by id (the same rows on both backends), so a busy month costs a bounded
#: sort; the answer says ``sampled_every`` = k.
MAX_RANKED = 200_000
#: The window of ``requests_per_second`` in ``GET /metrics``.
RPS_WINDOW_MS = 60_000


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4] + "Z"


def _ms(value: datetime) -> int:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return int(value.timestamp() * 1000)


@dataclass(frozen=True)
class Window:
    """``[start_ms, end_ms)`` of one organisation's traffic (``organisation_id``), or
    of the platform's (None)."""

    start_ms: int
    end_ms: int
    organisation_id: str | None
    period: str | None = None

    @classmethod
    def of(
        cls,
        organisation_id: str | None,
        *,
        period: str | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
        now: datetime | None = None,
    ) -> Window:
        """``end`` defaults to now; ``start`` to ``end`` minus the period (default
        24h). A window must be non-empty and at most :data:`MAX_SPAN` long."""
        if period is not None and period not in PERIODS:
            raise ValidationFailed("Unknown period", period=f"one of {', '.join(PERIODS)}")
        end_ms = _ms(end) if end is not None else _ms(now or datetime.now(UTC))
        if start is not None:
            start_ms = _ms(start)
        else:
            span = PERIODS[period or DEFAULT_PERIOD]
            start_ms = end_ms - int(span.total_seconds() * 1000)
        if start_ms < 0 or end_ms > LATEST_MS:
            raise ValidationFailed(
                "The window must lie between 1970 and 9999", start="from 1970", end="until 9999"
            )
        if start_ms >= end_ms:
            raise ValidationFailed("The window is empty", start="must be before end")
        if end_ms - start_ms > MAX_SPAN.total_seconds() * 1000:
            raise ValidationFailed(
                "The window is too long", start=f"at most {MAX_SPAN.days} days before end"
            )
        if start is None and end is None:
            period = period or DEFAULT_PERIOD
        elif start is not None:
            period = None
        return cls(start_ms, end_ms, organisation_id, period)

    def where(self) -> list[ColumnElement[bool]]:
        conditions: list[ColumnElement[bool]] = [T.ts >= self.start_ms, T.ts < self.end_ms]
        if self.organisation_id is not None:
            conditions.append(T.organisation_id == self.organisation_id)
        return conditions

    def head(self) -> dict[str, Any]:
        return {
            "scope": "platform" if self.organisation_id is None else "organisation",
            "organisation_id": self.organisation_id,
            "start": iso(self.start_ms),
            "end": iso(self.end_ms),
        }


def _ms3(value: Any) -> float | None:
    return None if value is None else round(float(value), 3)


def _rate(part: int, total: int) -> float:
    return round(part / total * 100.0, 2) if total else 0.0


_SERVER_ERROR = case((T.status >= 500, 1), else_=0)
_CLIENT_ERROR = case((and_(T.status >= 400, T.status < 500), 1), else_=0)


def nearest_rank(values: Sequence[float], p: int) -> float | None:
    """The nearest-rank percentile of ``values`` (what the SQL computes), for tests
    and callers holding durations already."""
    if not values:
        return None
    ordered = sorted(values)
    k = (p * len(ordered) + 99) // 100
    return ordered[max(k, 1) - 1]


def sampled_every(total: int) -> int:
    """1 when a window's requests are few enough to rank them all, else the k of
    "every k-th request" that ranks at most :data:`MAX_RANKED`."""
    return max(1, -(-total // MAX_RANKED))


class AnalyticsService:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def _percentiles(
        self, window: Window, group: Sequence[Any] = (), every: int = 1
    ) -> dict[tuple[Any, ...], dict[str, float | None]]:
        """p50/p95/p99 of ``duration_ms`` per ``group`` (the whole window: key ``()``),
        of every ``every``-th request by id."""
        partition = list(group) or None
        where = window.where()
        if every > 1:
            where.append(T.id % every == 0)
        ranked = (
            select(
                *group,
                T.duration_ms.label("d"),
                func.row_number().over(partition_by=partition, order_by=T.duration_ms).label("rn"),
                func.count().over(partition_by=partition).label("n"),
            )
            .where(*where)
            .subquery()
        )
        keys = [ranked.c[g.key] for g in group]
        ranks = {p: (p * ranked.c.n + 99) // 100 for p in PERCENTILES}
        query = (
            select(
                *keys,
                *(
                    func.max(case((ranked.c.rn == rank, ranked.c.d))).label(f"p{p}")
                    for p, rank in ranks.items()
                ),
            )
            .where(or_(*(ranked.c.rn == rank for rank in ranks.values())))
            .group_by(*keys, ranked.c.n)
        )
        out: dict[tuple[Any, ...], dict[str, float | None]] = {}
        for row in await self.session.execute(query):
            key = tuple(row[: len(keys)])
            values = row[len(keys) :]
            out[key] = {f"p{p}": _ms3(v) for p, v in zip(PERCENTILES, values, strict=True)}
        return out

    async def overview(self, window: Window, top: int = 10) -> dict[str, Any]:
        totals = (
            await self.session.execute(
                select(
                    func.count(),
                    func.coalesce(func.sum(_SERVER_ERROR), 0),
                    func.coalesce(func.sum(_CLIENT_ERROR), 0),
                    func.count(distinct(T.user_id)),
                    func.count(distinct(T.ip)),
                    func.coalesce(func.sum(T.bytes_in), 0),
                    func.coalesce(func.sum(T.bytes_out), 0),
                    func.avg(T.duration_ms),
                ).where(*window.where())
            )
        ).one()
        total, errors, client_errors, users, ips, b_in, b_out, avg = totals
        total, errors, client_errors = int(total), int(errors), int(client_errors)
        count = func.count().label("requests")
        endpoints = await self.session.execute(
            select(T.method, T.route, count, func.coalesce(func.sum(_SERVER_ERROR), 0))
            .where(*window.where())
            .group_by(T.method, T.route)
            .order_by(count.desc(), T.route, T.method)
            .limit(top)
        )
        every = sampled_every(total)
        latency = (await self._percentiles(window, every=every)).get(
            (), dict.fromkeys(("p50", "p95", "p99"))
        )
        seconds = (window.end_ms - window.start_ms) / 1000
        return {
            **window.head(),
            "period": window.period,
            "total_requests": total,
            "requests_per_second": round(total / seconds, 4),
            "errors": errors,
            "client_errors": client_errors,
            "error_rate": _rate(errors, total),
            "client_error_rate": _rate(client_errors, total),
            "latency_ms": {"avg": _ms3(avg), **latency, "sampled_every": every},
            "unique_users": int(users),
            "unique_ips": int(ips),
            "bytes_in": int(b_in),
            "bytes_out": int(b_out),
            "top_endpoints": [
                {
                    "method": method,
                    "route": route,
                    "requests": int(n),
                    "error_rate": _rate(int(e), int(n)),
                }
                for method, route, n, e in endpoints
            ],
        }

    async def traffic(self, window: Window, interval: str | None = None) -> dict[str, Any]:
        """Requests per bucket (epoch-aligned, UTC) with their status classes; every
        bucket of the window is listed, empty ones with zeros."""
        name = interval or DEFAULT_INTERVAL.get(window.period or "", "hour")
        if name not in INTERVALS:
            raise ValidationFailed("Unknown interval", interval=f"one of {', '.join(INTERVALS)}")
        step = INTERVALS[name]
        first = window.start_ms // step * step
        if (window.end_ms - first) / step > MAX_BUCKETS:
            raise ValidationFailed(
                f"More than {MAX_BUCKETS} buckets: use a longer interval or a shorter window",
                interval="too short for the window",
            )
        bucket = ((T.ts // step) * step).label("bucket")
        classes = [
            func.coalesce(func.sum(case((and_(T.status >= c, T.status < c + 100), 1), else_=0)), 0)
            for c in (200, 300, 400, 500)
        ]
        rows = await self.session.execute(
            select(bucket, func.count(), *classes).where(*window.where()).group_by(bucket)
        )
        found = {int(b): (int(n), *(int(x) for x in xs)) for b, n, *xs in rows}
        buckets = []
        for at in range(first, window.end_ms, step):
            n, s2, s3, s4, s5 = found.get(at, (0, 0, 0, 0, 0))
            buckets.append(
                {
                    "timestamp": iso(at),
                    "requests": n,
                    "status_2xx": s2,
                    "status_3xx": s3,
                    "status_4xx": s4,
                    "status_5xx": s5,
                }
            )
        return {
            **window.head(),
            "period": window.period,
            "interval": name,
            "step_seconds": step // 1000,
            "total_requests": sum(b["requests"] for b in buckets),
            "buckets": buckets,
        }

    async def performance(self, window: Window, limit: int = 100) -> dict[str, Any]:
        """Per endpoint (method and route template): requests, latency, error rates;
        the busiest first."""
        count = func.count().label("requests")
        rows = (
            await self.session.execute(
                select(
                    T.method,
                    T.route,
                    count,
                    func.avg(T.duration_ms),
                    func.coalesce(func.sum(_SERVER_ERROR), 0),
                    func.coalesce(func.sum(_CLIENT_ERROR), 0),
                )
                .where(*window.where())
                .group_by(T.method, T.route)
                .order_by(count.desc(), T.route, T.method)
                .limit(limit)
            )
        ).all()
        every = 1
        ranks: dict[tuple[Any, ...], dict[str, float | None]] = {}
        if rows:
            total = int(await self.session.scalar(select(func.count()).where(*window.where())) or 0)
            every = sampled_every(total)
            ranks = await self._percentiles(window, (T.method, T.route), every)
        endpoints = []
        for method, route, n, avg, errors, client_errors in rows:
            p = ranks.get((method, route), {})
            endpoints.append(
                {
                    "method": method,
                    "route": route,
                    "requests": int(n),
                    "avg_ms": _ms3(avg),
                    "p50_ms": p.get("p50"),
                    "p95_ms": p.get("p95"),
                    "p99_ms": p.get("p99"),
                    "errors": int(errors),
                    "client_errors": int(client_errors),
                    "error_rate": _rate(int(errors), int(n)),
                    "client_error_rate": _rate(int(client_errors), int(n)),
                }
            )
        return {
            **window.head(),
            "period": window.period,
            "sampled_every": every,
            "endpoints": endpoints,
        }

    async def geography(
        self, window: Window, *, by_country: bool, limit: int = 100
    ) -> dict[str, Any]:
        """Requests by the client's country (GeoIP) or, without a GeoIP database, by
        its network (/24 or /48); the busiest first."""
        key = T.country if by_country else T.network
        count = func.count().label("requests")
        rows = await self.session.execute(
            select(
                key,
                count,
                func.count(distinct(T.ip)),
                func.coalesce(func.sum(_SERVER_ERROR), 0),
            )
            .where(*window.where())
            .group_by(key)
            .order_by(count.desc(), key)
            .limit(limit)
        )
        items = [
            {
                "country": value if by_country else None,
                "network": None if by_country else value,
                "requests": int(n),
                "unique_ips": int(ips),
                "error_rate": _rate(int(errors), int(n)),
            }
            for value, n, ips, errors in rows
        ]
        return {
            **window.head(),
            "period": window.period,
            "grouped_by": "country" if by_country else "network",
            "items": items,
        }


async def request_totals(
    session: AsyncSession, org_ids: Sequence[str] | None, now_ms: int | None = None
) -> dict[str, Any]:
    """``GET /metrics``'s ``requests`` block from the request log, correct across
    server processes: ``total_requests`` and ``error_rate`` (5xx, %) over all the log
    keeps (the retention), ``requests_per_second`` over the last minute. ``org_ids``:
    those organisations' requests only (None: the platform's)."""
    now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
    if org_ids is not None and not org_ids:
        return {"total_requests": 0, "requests_per_second": 0.0, "error_rate": 0.0}
    recent = case((T.ts >= now_ms - RPS_WINDOW_MS, 1), else_=0)
    query = select(
        func.count(),
        func.coalesce(func.sum(_SERVER_ERROR), 0),
        func.coalesce(func.sum(recent), 0),
    )
    if org_ids is not None:
        query = query.where(T.organisation_id.in_(list(org_ids)))
    total, errors, last_minute = (await session.execute(query)).one()
    return {
        "total_requests": int(total),
        "requests_per_second": round(int(last_minute) / (RPS_WINDOW_MS / 1000), 2),
        "error_rate": _rate(int(errors), int(total)),
    }
