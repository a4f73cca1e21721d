"""The time-series store: raw samples, 1-minute and 1-hour rollups, in the main DB.

* **Write**: :meth:`MetricStore.write` hands a batch straight to the database
  driver: one ``executemany`` on SQLite, one ``COPY`` (asyncpg's
  ``copy_records_to_table``) on PostgreSQL. No ORM objects, no per-row work
  beyond making a tuple.
* **Rollup**: :meth:`MetricStore.rollup` aggregates closed buckets (raw ->
  minute, minute -> hour) with ``INSERT ... SELECT ... GROUP BY ... ON CONFLICT
  DO UPDATE``, from the newest bucket already rolled up onwards. Re-running it
  recomputes the same buckets from the same rows: it is idempotent.
* **Prune**: :meth:`MetricStore.prune` drops what is older than each table's
  retention (``metrics_*_retention_*`` settings).
* **Query**: :meth:`MetricStore.series` picks the finest resolution that still
  holds the range and gives at most :data:`MAX_POINTS` points per series, and
  fills the rolled-up tables' not-yet-rolled tail from the finer table.

Times: raw samples are stamped in epoch milliseconds, buckets in epoch seconds
(their start), see ``nefos.db.models.MetricSample``.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, literal, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from nefos.db.models import MetricRollupHour, MetricRollupMinute, MetricSample
from nefos.db.session import WRITE_OPTION, Database
from nefos.monitoring.types import Sample

#: The most points one series of a query may have (24 h of minutes fit).
MAX_POINTS = 1500

#: The raw table's columns, in the order the write path's tuples hold them.
COLUMNS = ("resource_id", "metric", "ts", "kind", "project_id", "value")
Row = tuple[str, str, int, str, str | None, float]


class Resolution(enum.StrEnum):
    RAW = "raw"
    MINUTE = "1m"
    HOUR = "1h"


@dataclass(frozen=True, slots=True)
class Retention:
    raw: timedelta
    minute: timedelta
    hour: timedelta


@dataclass(frozen=True, slots=True)
class Point:
    ts: int  # epoch ms (a sample's time, or a bucket's start)
    value: float  # the sample, or the bucket's average
    max: float | None = None  # a bucket's highest sample; None for a raw sample


@dataclass
class Series:
    resolution: Resolution
    step_seconds: float
    points: dict[str, list[Point]] = field(default_factory=dict)  # by metric


def epoch_ms(ts: datetime) -> int:
    if ts.tzinfo is None:
        raise ValueError("naive datetime")
    return int(ts.timestamp() * 1000)


def from_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def sample_row(s: Sample) -> Row:
    return (s.resource_id, s.metric.value, epoch_ms(s.ts), s.kind.value, s.project_id, s.value)


_INSERT = (
    "INSERT INTO metric_samples (resource_id, metric, ts, kind, project_id, value) "
    "VALUES (?, ?, ?, ?, ?, ?)"
)

_UPSERT_SET = (
    "ON CONFLICT (resource_id, metric, bucket) DO UPDATE SET kind = excluded.kind, "
    "project_id = excluded.project_id, avg = excluded.avg, min = excluded.min, "
    "max = excluded.max, count = excluded.count"
)
# SQLite needs the WHERE of an INSERT ... SELECT ... ON CONFLICT (it parses the
# ON as a join otherwise); both statements have one.
_ROLL_MINUTES = text(
    "INSERT INTO metric_rollups_1m "  # noqa: S608 - constants only
    "(resource_id, metric, bucket, kind, project_id, avg, min, max, count) "
    "SELECT resource_id, metric, (ts / 60000) * 60, MIN(kind), MIN(project_id), "
    "AVG(value), MIN(value), MAX(value), COUNT(*) FROM metric_samples "
    "WHERE ts >= :start AND ts < :end GROUP BY resource_id, metric, ts / 60000 " + _UPSERT_SET
)
_ROLL_HOURS = text(
    "INSERT INTO metric_rollups_1h "  # noqa: S608 - constants only
    "(resource_id, metric, bucket, kind, project_id, avg, min, max, count) "
    "SELECT resource_id, metric, (bucket / 3600) * 3600, MIN(kind), MIN(project_id), "
    "SUM(avg * count) / SUM(count), MIN(min), MAX(max), SUM(count) FROM metric_rollups_1m "
    "WHERE bucket >= :start AND bucket < :end GROUP BY resource_id, metric, bucket / 3600 "
    + _UPSERT_SET
)


class MetricStore:
    """Samples in, series out. One per process (``Core.metrics``); stateless."""

    def __init__(self, db: Database, *, retention: Retention, interval: float) -> None:
        self.db = db
        self.retention = retention
        self.interval = interval  # seconds between raw samples of one series
        self._writer = db.engine.execution_options(**{WRITE_OPTION: True})

    # --- write ------------------------------------------------------------------------
    async def write(self, samples: Iterable[Sample]) -> int:
        """Store ``samples`` (one transaction); how many. A (resource, metric, time)
        stored twice is an integrity error: the collector stamps each pass once."""
        rows: list[Row] = []
        stamp: datetime | None = None
        ms = 0
        for s in samples:
            if s.ts is not stamp:  # a pass stamps all its samples with one datetime
                stamp, ms = s.ts, epoch_ms(s.ts)
            rows.append((s.resource_id, s.metric.value, ms, s.kind.value, s.project_id, s.value))
        return await self.write_rows(rows)

    async def write_rows(self, rows: Sequence[Row]) -> int:
        """The write path proper, for callers that already hold :data:`Row` tuples."""
        if not rows:
            return 0
        if self.db.is_sqlite:
            async with self._writer.begin() as conn:
                await conn.exec_driver_sql(_INSERT, list(rows))
            return len(rows)
        async with self.db.engine.connect() as conn:
            raw = await conn.get_raw_connection()
            pg: Any = raw.driver_connection
            # Outside a transaction COPY commits on its own: all rows or none.
            await pg.copy_records_to_table("metric_samples", records=rows, columns=COLUMNS)
        return len(rows)

    # --- rollup and pruning -------------------------------------------------------------
    async def rollup(self, now: datetime | None = None) -> tuple[int, int]:
        """Aggregate every closed minute of raw samples and every closed hour of
        minutes not rolled up yet (the newest bucket done is redone). Idempotent.
        Returns the (minute, hour) buckets written."""
        now_s = int((now or datetime.now(UTC)).timestamp())
        minute_end = now_s - now_s % 60
        hour_end = now_s - now_s % 3600
        async with self._writer.begin() as conn:
            done = await conn.scalar(text("SELECT MAX(bucket) FROM metric_rollups_1m"))
            if done is None:
                first = await conn.scalar(text("SELECT MIN(ts) FROM metric_samples"))
                start_ms = None if first is None else int(first) // 60000 * 60000
            else:
                start_ms = int(done) * 1000
            minutes = 0
            if start_ms is not None and start_ms < minute_end * 1000:
                result = await conn.execute(
                    _ROLL_MINUTES, {"start": start_ms, "end": minute_end * 1000}
                )
                minutes = max(result.rowcount or 0, 0)
            done = await conn.scalar(text("SELECT MAX(bucket) FROM metric_rollups_1h"))
            if done is None:
                first = await conn.scalar(text("SELECT MIN(bucket) FROM metric_rollups_1m"))
                start_s = None if first is None else int(first) // 3600 * 3600
            else:
                start_s = int(done)
            hours = 0
            if start_s is not None and start_s < hour_end:
                result = await conn.execute(_ROLL_HOURS, {"start": start_s, "end": hour_end})
                hours = max(result.rowcount or 0, 0)
        return minutes, hours

    async def prune(self, now: datetime | None = None) -> tuple[int, int, int]:
        """Delete what is past each table's retention; the (raw, minute, hour) rows gone."""
        now = now or datetime.now(UTC)
        cuts = (
            delete(MetricSample).where(MetricSample.ts < epoch_ms(now - self.retention.raw)),
            delete(MetricRollupMinute).where(
                MetricRollupMinute.bucket < int((now - self.retention.minute).timestamp())
            ),
            delete(MetricRollupHour).where(
                MetricRollupHour.bucket < int((now - self.retention.hour).timestamp())
            ),
        )
        gone: list[int] = []
        async with self._writer.begin() as conn:
            for statement in cuts:
                result = await conn.execute(statement)
                gone.append(max(result.rowcount or 0, 0))
        return gone[0], gone[1], gone[2]

    # --- query ------------------------------------------------------------------------
    def resolution_for(self, start: datetime, end: datetime, now: datetime) -> Resolution:
        """The finest resolution whose table still holds ``start`` and gives at most
        :data:`MAX_POINTS` points over the range."""
        span = max((end - start).total_seconds(), 0.0)
        if start >= now - self.retention.raw and span / self.interval <= MAX_POINTS:
            return Resolution.RAW
        if start >= now - self.retention.minute and span / 60 <= MAX_POINTS:
            return Resolution.MINUTE
        return Resolution.HOUR

    async def series(
        self,
        resource_id: str,
        metrics: Sequence[str],
        start: datetime,
        end: datetime,
        *,
        now: datetime | None = None,
        resolution: Resolution | None = None,
    ) -> Series:
        """``metrics`` of one resource over ``[start, end)``, oldest first."""
        now = now or datetime.now(UTC)
        resolution = resolution or self.resolution_for(start, end, now)
        start_ms, end_ms = epoch_ms(start), epoch_ms(end)
        out = Series(resolution, self.interval, {m: [] for m in metrics})
        # A bare connection, not an ORM session: rows, not objects, come back.
        async with self.db.engine.connect() as session:
            if resolution is Resolution.RAW:
                rows = await session.execute(
                    select(MetricSample.metric, MetricSample.ts, MetricSample.value)
                    .where(
                        MetricSample.resource_id == resource_id,
                        MetricSample.metric.in_(metrics),
                        MetricSample.ts >= start_ms,
                        MetricSample.ts < end_ms,
                    )
                    .order_by(MetricSample.metric, MetricSample.ts)
                )
                for metric, ts, value in rows:
                    out.points[metric].append(Point(ts, value))
                return out
            step = 60 if resolution is Resolution.MINUTE else 3600
            out.step_seconds = step
            table = MetricRollupMinute if resolution is Resolution.MINUTE else MetricRollupHour
            first_bucket = start_ms // 1000 // step * step
            buckets = await session.execute(
                select(table.metric, table.bucket, table.avg, table.max)
                .where(
                    table.resource_id == resource_id,
                    table.metric.in_(metrics),
                    table.bucket >= first_bucket,
                    table.bucket < end_ms // 1000,
                )
                .order_by(table.metric, table.bucket)
            )
            last = first_bucket - step
            for metric, bucket, value, peak in buckets:
                out.points[metric].append(Point(bucket * 1000, value, peak))
                last = max(last, bucket)
            # The buckets after the newest rolled-up one, from the finer table.
            tail_from = last + step
            if tail_from * 1000 < end_ms:
                await self._tail(session, out, resource_id, metrics, tail_from, end_ms, step)
        return out

    async def _tail(
        self,
        session: Any,
        out: Series,
        resource_id: str,
        metrics: Sequence[str],
        from_s: int,
        end_ms: int,
        step: int,
    ) -> None:
        query: Any
        if step == 60:  # minutes from raw samples (ms)
            query = select(
                MetricSample.metric,
                MetricSample.ts / 1000,
                MetricSample.value,
                literal(1),
                MetricSample.value,
            ).where(
                MetricSample.resource_id == resource_id,
                MetricSample.metric.in_(metrics),
                MetricSample.ts >= from_s * 1000,
                MetricSample.ts < end_ms,
            )
        else:  # hours from minutes, weighted by their sample counts
            m = MetricRollupMinute
            query = select(m.metric, m.bucket, m.avg, m.count, m.max).where(
                m.resource_id == resource_id,
                m.metric.in_(metrics),
                m.bucket >= from_s,
                m.bucket < end_ms // 1000,
            )
        # (weighted sum, weight, highest) per bucket
        sums: dict[tuple[str, int], list[float]] = {}
        for metric, seconds, value, weight, peak in await session.execute(query):
            acc = sums.setdefault((metric, int(seconds) // step * step), [0.0, 0.0, float("-inf")])
            acc[0] += value * weight
            acc[1] += weight
            acc[2] = max(acc[2], peak)
        for (metric, bucket), (total, n, highest) in sorted(sums.items()):
            if n:
                out.points[metric].append(Point(bucket * 1000, total / n, highest))

    async def latest(
        self,
        within: timedelta,
        now: datetime | None = None,
        *,
        resource_ids: Sequence[str] | None = None,
        session: AsyncSession | None = None,
    ) -> list[Row]:
        """The newest raw sample of every (resource, metric) stamped in the last
        ``within``: what the Prometheus exposition shows; of ``resource_ids`` only
        when given (a page of a list: the primary key's prefix). On ``session`` when
        given (a request's own: not a second connection from the pool for one
        request), else on one of its own."""
        if resource_ids is not None and not resource_ids:
            return []
        since = epoch_ms((now or datetime.now(UTC)) - within)
        query = select(
            MetricSample.resource_id,
            MetricSample.metric,
            MetricSample.ts,
            MetricSample.kind,
            MetricSample.project_id,
            MetricSample.value,
        ).where(MetricSample.ts >= since)
        if resource_ids is not None:
            query = query.where(MetricSample.resource_id.in_(list(resource_ids)))
        if session is not None:
            rows = (await session.execute(query)).all()
        else:
            async with self.db.sessionmaker() as own:
                rows = (await own.execute(query)).all()
        newest: dict[tuple[str, str], Row] = {}
        for r in rows:
            row: Row = (r[0], r[1], r[2], r[3], r[4], r[5])
            seen = newest.get((row[0], row[1]))
            if seen is None or seen[2] < row[2]:
                newest[(row[0], row[1])] = row
        return list(newest.values())
