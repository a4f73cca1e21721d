"""What a creator sees of the calls to its API (seed 002's ``api_calls``): the
gateway's call log, paged, filtered and followed, and the calls' figures over a
period.

**The call log** is the ``api_calls`` rows of the API (one per call the gateway
forwarded), newest first, keyset-paged on (``created_at``, ``id``). Filters: a time
window (``since``/``until``), a status (``404``) or class (``5xx``), the consumer
(its organisation), and a level (``error``: 5xx, ``warning``: 4xx and 5xx).

**Following** reads the rows committed since the last poll, every
:data:`FOLLOW_POLL` seconds, for at most the asked seconds (:data:`MAX_FOLLOW`).
A row is stamped when its call ends and committed a moment later, so a row may
commit after a later-stamped one: each poll looks :data:`FOLLOW_LAG` back from the
newest stamp seen and skips the ids it already sent.

**Figures** (calls, their units (those answered below 500: what quotas count and
prices multiply), errors, latency percentiles, bytes, by endpoint, by consumer,
over time) are aggregated in SQL. Percentiles are nearest-rank over the window's
latest :data:`MAX_RANKED` calls, ranked by ``ROW_NUMBER() OVER (ORDER BY
latency_ms)`` (the same figure on SQLite and PostgreSQL, and no latency leaves the
database); counts, sums and averages are over every call of the window.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import BigInteger, ColumnElement, Integer, and_, case, cast, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from nefos.db.models import ApiCall, Container
from nefos.db.session import Database
from nefos.db.types import as_utc
from nefos.domain.errors import NefosError, ValidationFailed
from nefos.domain.paging import PageParams
from nefos.domain.plans import CALL_IN_FLIGHT
from nefos.schemas.marketplace import price_text
from nefos.services.containers import ContainerService
from nefos.services.core import Core
from nefos.services.paging import fetch_page

C = ApiCall
Level = Literal["debug", "info", "warning", "error"]

PERIODS: dict[str, timedelta] = {
    "1h": timedelta(hours=1),
    "24h": timedelta(hours=24),
    "7d": timedelta(days=7),
    "30d": timedelta(days=30),
}
#: The time series' bucket of each period (seconds): 60, 24, 168 and 30 buckets.
STEPS: dict[str, int] = {"1h": 60, "24h": 3600, "7d": 3600, "30d": 86400}
PERCENTILES = (50, 95, 99)
#: The latest calls of a window whose latencies are ranked for percentiles.
MAX_RANKED = 100_000
#: Endpoints and consumers listed at most.
TOP = 20
#: Following: seconds between polls, how far back each looks, how long at most.
FOLLOW_POLL = 0.5
FOLLOW_LAG = timedelta(seconds=5)
MAX_FOLLOW = 300
#: Rows one poll reads at most (a busier API is read over several polls).
FOLLOW_BATCH = 500

_RANK = {"debug": 0, "info": 1, "warning": 2, "error": 3}
_LEVELS = (
    ("error", re.compile(r"\b(fatal|panic|critical|crit|error|err|exception|traceback)\b", re.I)),
    ("warning", re.compile(r"\bwarn(ing)?\b", re.I)),
    ("debug", re.compile(r"\b(debug|trace)\b", re.I)),
)

_SERVER_ERROR = case((C.status >= 500, 1), else_=0)
_CLIENT_ERROR = case((and_(C.status >= 400, C.status < 500), 1), else_=0)
#: The units a call counts against quotas (none when answered 500 or more).
_UNITS = case((C.status < 500, C.units), else_=0)


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _ms3(value: Any) -> float | None:
    return None if value is None else round(float(value), 3)


def _rate(part: int, total: int) -> float:
    return round(part / total * 100.0, 2) if total else 0.0


def line_level(line: str) -> str:
    """A line of output's level, by the words it holds (``info`` when none)."""
    for level, words in _LEVELS:
        if words.search(line):
            return level
    return "info"


def at_least(text: str, level: Level | None) -> str:
    """The lines of ``text`` at ``level`` or above (all of them without a level)."""
    if level is None:
        return text
    floor = _RANK[level]
    return "\n".join(line for line in text.splitlines() if _RANK[line_level(line)] >= floor)


def call_public(call: ApiCall) -> dict[str, Any]:
    """One line of the call log. ``request_id`` is the call's ``X-Request-ID`` (the
    one the API received), without the subscription the row is keyed by."""
    _, _, request_id = call.request_id.partition(":")
    return {
        "id": call.id,
        "request_id": request_id or call.request_id,
        "method": call.method,
        "path": call.path,
        "status": call.status,
        "latency_ms": call.latency_ms,
        "bytes_in": call.bytes_in,
        "bytes_out": call.bytes_out,
        "consumer": call.organisation_id,
        "subscription_id": call.subscription_id,
        "plan_id": call.plan_id,
        "units": call.units,
        "price": price_text(call.price),
        "created_at": call.created_at,
    }


@dataclass(frozen=True)
class CallFilter:
    """Which calls of an API: ``status`` is a code (``404``) or a class (``5xx``)."""

    api_id: str
    since: datetime | None = None
    until: datetime | None = None
    status: str | None = None
    consumer: str | None = None
    level: Level | None = None

    def __post_init__(self) -> None:
        for name in ("since", "until"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, as_utc(value))
        if self.since is not None and self.until is not None and self.since >= self.until:
            raise ValidationFailed("The window is empty", since="must be before until")

    def where(self) -> list[ColumnElement[bool]]:
        out: list[ColumnElement[bool]] = [C.api_id == self.api_id]
        if self.since is not None:
            out.append(C.created_at >= self.since)
        if self.until is not None:
            out.append(C.created_at < self.until)
        if self.status is not None:
            if self.status.endswith("xx"):
                low = int(self.status[0]) * 100
                out.append(and_(C.status >= low, C.status < low + 100))
            else:
                out.append(C.status == int(self.status))
        if self.consumer is not None:
            out.append(C.organisation_id == self.consumer)
        if self.level == "error":
            out.append(C.status >= 500)
        elif self.level == "warning":
            out.append(C.status >= 400)
        return out


async def calls_page(
    session: AsyncSession, where: CallFilter, page: PageParams
) -> tuple[Sequence[ApiCall], int]:
    """The matching calls, newest first."""
    return await fetch_page(
        session, ApiCall, *where.where(), order_by=(C.created_at.desc(), C.id.desc()), page=page
    )


async def follow(
    db: Database, where: CallFilter, *, seconds: float, start: datetime
) -> AsyncIterator[ApiCall]:
    """The matching calls stamped from ``start`` on, oldest first, as they are
    committed, for ``seconds`` (at most :data:`MAX_FOLLOW`)."""
    deadline = time.monotonic() + min(seconds, MAX_FOLLOW)
    newest = start
    sent: dict[str, datetime] = {}
    while True:
        async with db.sessionmaker() as session:
            rows = (
                await session.scalars(
                    select(ApiCall)
                    .where(
                        *where.where(),
                        # A call shows once answered (one the gateway holds in flight
                        # has no status yet): sent once, with its answer.
                        C.status != CALL_IN_FLIGHT,
                        C.created_at >= max(start, newest - FOLLOW_LAG),
                    )
                    .order_by(C.created_at, C.id)
                    .limit(FOLLOW_BATCH + len(sent))
                )
            ).all()
        for row in rows:
            if row.id in sent:
                continue
            sent[row.id] = row.created_at
            newest = max(newest, row.created_at)
            yield row
        horizon = newest - FOLLOW_LAG
        for key in [k for k, at in sent.items() if at < horizon]:
            del sent[key]
        left = deadline - time.monotonic()
        if left <= 0:
            return
        await asyncio.sleep(min(FOLLOW_POLL, left))


#: Lines of one replica's output one poll of a follow reads at most.
FOLLOW_LINES = 1000
_STAMPED = re.compile(
    r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d) (.*)$", re.S
)


@dataclass(frozen=True, slots=True)
class OutputLine:
    replica: int
    time: str
    line: str


def stamped(text: str) -> tuple[int, str, str] | None:
    """(nanoseconds since the epoch, the time as the engine wrote it, the line) of a
    line the engine wrote after its time; None for one without."""
    m = _STAMPED.match(text)
    if m is None:
        return None
    whole, fraction, zone, line = m.groups()
    try:
        at = datetime.fromisoformat(whole + ("+00:00" if zone == "Z" else zone))
    except ValueError:
        return None
    nanos = int(((fraction or "") + "000000000")[:9])
    return int(at.timestamp()) * 1_000_000_000 + nanos, text[: m.start(4) - 1], line


async def follow_output(
    core: Core,
    container_id: str,
    *,
    seconds: float,
    start: datetime,
    level: Level | None = None,
    slot: int | None = None,
) -> AsyncIterator[OutputLine]:
    """The lines the container's replicas (or replica ``slot``) write from ``start``
    on, each once, oldest first per replica, for ``seconds`` (at most
    :data:`MAX_FOLLOW`): the engine is asked every :data:`FOLLOW_POLL` for what each
    wrote since (its lines carry their times to the nanosecond). Ends early when the
    container, the replica or its host goes."""
    deadline = time.monotonic() + min(seconds, MAX_FOLLOW)
    floor = int(start.timestamp()) * 1_000_000_000
    # Per replica slot: the time of the newest line sent, and how many lines of that
    # time were sent (an engine may stamp to the second: Podman does; lines of one
    # time come back in the order they were written).
    newest: dict[int, tuple[int, int]] = {}
    while True:
        # Asked from a second before the oldest replica's newest line: the engine's
        # "since" is in its own precision; what was sent is skipped here.
        oldest = min((at for at, _ in newest.values()), default=floor)
        since = datetime.fromtimestamp(oldest // 10**9 - 1, UTC)
        try:
            async with core.db.sessionmaker() as session:
                container = await session.get(Container, container_id)
                if container is None:
                    return
                replicas = await ContainerService(core, session).logs(
                    container, tail=FOLLOW_LINES, slot=slot, since=since, timestamps=True
                )
        except NefosError:
            return  # its host does not answer: the stream ends
        for r in replicas:
            replica = int(r["replica"])
            last, sent = newest.get(replica, (floor, 0))
            seen = 0  # lines of the time ``last`` met in this answer
            for raw in str(r["logs"]).splitlines():
                found = stamped(raw)
                if found is None or found[0] < last:
                    continue
                if found[0] == last:
                    seen += 1
                    if seen <= sent:
                        continue  # sent by an earlier poll
                    sent += 1
                else:
                    last, sent, seen = found[0], 1, 1
                if level is None or at_least(found[2], level):
                    yield OutputLine(replica, found[1], found[2])
            newest[replica] = (last, sent)
        left = deadline - time.monotonic()
        if left <= 0:
            return
        await asyncio.sleep(min(FOLLOW_POLL, left))


def _epoch_seconds(session: AsyncSession) -> ColumnElement[int]:
    """``created_at`` in whole seconds since the epoch, in the database's dialect."""
    if session.get_bind().dialect.name == "sqlite":
        return cast(func.strftime("%s", C.created_at), Integer)
    return cast(func.floor(func.extract("epoch", C.created_at)), BigInteger)


async def _percentiles(
    session: AsyncSession, where: list[ColumnElement[bool]], group: Sequence[Any] = ()
) -> dict[tuple[Any, ...], dict[str, float | None]]:
    """Nearest-rank p50/p95/p99 of the latency of the latest MAX_RANKED matching
    calls, per ``group`` (the whole: key ``()``)."""
    latest = (
        select(C.latency_ms, *group)
        .where(*where)
        .order_by(C.created_at.desc(), C.id.desc())
        .limit(MAX_RANKED)
        .subquery()
    )
    keys = [latest.c[g.key] for g in group]
    partition = keys or None
    ranked = select(
        *keys,
        latest.c.latency_ms.label("d"),
        func.row_number().over(partition_by=partition, order_by=latest.c.latency_ms).label("rn"),
        func.count().over(partition_by=partition).label("n"),
    ).subquery()
    rkeys = [ranked.c[g.key] for g in group]
    ranks = {p: (p * ranked.c.n + 99) // 100 for p in PERCENTILES}
    query = (
        select(
            *rkeys,
            *(
                func.max(case((ranked.c.rn == rank, ranked.c.d))).label(f"p{p}")
                for p, rank in ranks.items()
            ),
        )
        .where(or_(*(ranked.c.rn == rank for rank in ranks.values())))
        .group_by(*rkeys, ranked.c.n)
    )
    out: dict[tuple[Any, ...], dict[str, float | None]] = {}
    for row in await session.execute(query):
        key = tuple(row[: len(rkeys)])
        values = row[len(rkeys) :]
        out[key] = {f"p{p}": _ms3(v) for p, v in zip(PERCENTILES, values, strict=True)}
    return out


async def call_figures(
    session: AsyncSession, api_id: str, period: str, now: datetime | None = None
) -> dict[str, Any]:
    """The API's calls over ``period`` (1h, 24h, 7d, 30d back from now): totals,
    latency, bytes, the busiest endpoints and consumers, and a series."""
    if period not in PERIODS:
        raise ValidationFailed("Unknown period", period=f"one of {', '.join(PERIODS)}")
    end = now or datetime.now(UTC)
    start = end - PERIODS[period]
    # Answered calls: one the gateway holds in flight has no status or latency yet.
    where = [
        C.api_id == api_id,
        C.created_at >= start,
        C.created_at < end,
        C.status != CALL_IN_FLIGHT,
    ]
    total, units, errors, client_errors, b_in, b_out, avg = (
        await session.execute(
            select(
                func.count(),
                func.coalesce(func.sum(_UNITS), 0),
                func.coalesce(func.sum(_SERVER_ERROR), 0),
                func.coalesce(func.sum(_CLIENT_ERROR), 0),
                func.coalesce(func.sum(C.bytes_in), 0),
                func.coalesce(func.sum(C.bytes_out), 0),
                func.avg(C.latency_ms),
            ).where(*where)
        )
    ).one()
    total, errors, client_errors = int(total), int(errors), int(client_errors)
    empty = dict.fromkeys(("p50", "p95", "p99"))
    latency = (await _percentiles(session, where)).get((), empty) if total else empty

    count = func.count().label("calls")
    endpoint_rows = (
        await session.execute(
            select(
                C.method,
                C.path,
                count,
                func.coalesce(func.sum(_UNITS), 0),
                func.coalesce(func.sum(_SERVER_ERROR), 0),
                func.coalesce(func.sum(_CLIENT_ERROR), 0),
                func.avg(C.latency_ms),
                func.coalesce(func.sum(C.bytes_out), 0),
            )
            .where(*where)
            .group_by(C.method, C.path)
            .order_by(count.desc(), C.path, C.method)
            .limit(TOP)
        )
    ).all()
    per_endpoint = await _percentiles(session, where, (C.method, C.path)) if endpoint_rows else {}
    consumer_rows = (
        await session.execute(
            select(
                C.organisation_id,
                count,
                func.coalesce(func.sum(_UNITS), 0),
                func.coalesce(func.sum(_SERVER_ERROR), 0),
                func.coalesce(func.sum(_CLIENT_ERROR), 0),
                func.coalesce(func.sum(C.bytes_out), 0),
                func.coalesce(func.sum(C.price), 0),
            )
            .where(*where)
            .group_by(C.organisation_id)
            .order_by(count.desc(), C.organisation_id)
            .limit(TOP)
        )
    ).all()

    step = STEPS[period]
    bucket = ((_epoch_seconds(session) // step) * step).label("bucket")
    found = {
        int(b): (int(n), int(u), int(e), int(ce), avg_ms)
        for b, n, u, e, ce, avg_ms in await session.execute(
            select(
                bucket,
                func.count(),
                func.coalesce(func.sum(_UNITS), 0),
                func.coalesce(func.sum(_SERVER_ERROR), 0),
                func.coalesce(func.sum(_CLIENT_ERROR), 0),
                func.avg(C.latency_ms),
            )
            .where(*where)
            .group_by(bucket)
        )
    }
    first = int(start.timestamp()) // step * step
    series = []
    for at in range(first, int(end.timestamp()) + 1, step):
        n, u, e, ce, avg_ms = found.get(at, (0, 0, 0, 0, None))
        series.append(
            {
                "timestamp": _iso(datetime.fromtimestamp(at, UTC)),
                "calls": n,
                "units": u,
                "errors": e,
                "client_errors": ce,
                "avg_latency_ms": _ms3(avg_ms),
            }
        )
    return {
        "period": period,
        "start": _iso(start),
        "end": _iso(end),
        "calls": total,
        "units": int(units),
        "errors": errors,
        "client_errors": client_errors,
        "error_rate": _rate(errors, total),
        "client_error_rate": _rate(client_errors, total),
        "latency_ms": {"avg": _ms3(avg), **latency, "ranked_at_most": MAX_RANKED},
        "bytes_in": int(b_in),
        "bytes_out": int(b_out),
        "endpoints": [
            {
                "method": method,
                "path": path,
                "calls": int(n),
                "units": int(u),
                "errors": int(e),
                "client_errors": int(ce),
                "avg_latency_ms": _ms3(a),
                "p50_ms": per_endpoint.get((method, path), {}).get("p50"),
                "p95_ms": per_endpoint.get((method, path), {}).get("p95"),
                "p99_ms": per_endpoint.get((method, path), {}).get("p99"),
                "bytes_out": int(b),
            }
            for method, path, n, u, e, ce, a, b in endpoint_rows
        ],
        "consumers": [
            {
                "consumer": org,
                "calls": int(n),
                "units": int(u),
                "errors": int(e),
                "client_errors": int(ce),
                "bytes_out": int(b),
                "amount": price_text(price),
            }
            for org, n, u, e, ce, b, price in consumer_rows
        ],
        "series": {"step_seconds": step, "buckets": series},
    }
