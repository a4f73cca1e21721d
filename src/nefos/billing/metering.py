"""Metering: each VM's, container's and volume's time in a billable state.

A resource's ``billed_since`` marks how far it has been metered. Whenever what it
costs changes (it starts or stops running, is resized or scaled, or goes away),
the time since ``billed_since`` in the *previous* state becomes a ``UsageRecord``
and ``billed_since`` moves to now, in the same transaction as the change: start
and stop are exact to the flush, and a change that rolls back leaves no usage
behind. ``install`` hooks this into the database's Session class (``before_flush``,
which sees every ORM change; code deleting rows with a bulk ``DELETE`` calls
``close`` first). The billing engine's ``cut`` closes every open span at each hour,
so running resources are charged at least hourly.

A record's ``key`` is the resource and the start of its span: recording the same
span twice is a no-op (``cut`` inserts with ``ON CONFLICT DO NOTHING``, and only
after moving ``billed_since`` with a guarded ``UPDATE``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import event as sa_event
from sqlalchemy import func, inspect, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstanceState, Session

from nefos.billing.ledger import _insert
from nefos.db.models import Container, MetricRollupMinute, Project, UsageRecord, Vm, Volume
from nefos.db.session import Database, begin_write
from nefos.db.types import new_id, utcnow
from nefos.monitoring.types import Metric

Metered = Vm | Container | Volume
KIND: dict[type[Any], str] = {Vm: "vm", Container: "container", Volume: "volume"}
# States in which compute (vCPUs, memory, instance-hours) is billed. Storage is
# billed for as long as the resource exists.
RUNNING = {"vm": {"running", "rebooting"}, "container": {"running", "scaling", "updating"}}
# Attributes whose change changes the price of a resource.
_WATCHED = {
    Vm: ("status", "cpu_cores", "memory_mb", "storage_gb", "flavor"),
    Container: ("status", "cpu_milli", "memory_mb", "storage_gb", "replicas"),
    Volume: ("size_gb",),
}


@dataclass(frozen=True)
class Span:
    """What a resource costs while nothing changes."""

    state: str  # running | stopped | allocated
    cpu_milli: int
    memory_mb: int
    storage_gb: int
    instances: int
    flavor: str | None


def span_of(kind: str, values: dict[str, Any]) -> Span:
    if kind == "volume":
        return Span("allocated", 0, 0, int(values["size_gb"] or 0), 1, None)
    running = values["status"] in RUNNING[kind]
    if kind == "vm":
        return Span(
            "running" if running else "stopped",
            int(values["cpu_cores"] or 0) * 1000,
            int(values["memory_mb"] or 0),
            int(values["storage_gb"] or 0),
            1,
            values["flavor"],
        )
    return Span(
        "running" if running else "stopped",
        int(values["cpu_milli"] or 0),
        int(values["memory_mb"] or 0),
        int(values["storage_gb"] or 0),
        max(int(values["replicas"] or 0), 1),
        None,
    )


def watched(kind: str) -> tuple[str, ...]:
    """The attributes of a ``kind`` whose change changes its price."""
    return _WATCHED[{"vm": Vm, "container": Container, "volume": Volume}[kind]]


def _values(obj: Metered, *, previous: bool) -> dict[str, Any]:
    """The watched attributes of ``obj``: as flushed last (``previous``) or as now."""
    state: InstanceState[Any] = inspect(obj)
    out: dict[str, Any] = {}
    for name in _WATCHED[type(obj)]:
        if previous:
            history = state.attrs[name].history
            if history.deleted:
                out[name] = history.deleted[0]
                continue
        out[name] = getattr(obj, name)
    return out


def record_for(
    obj: Metered, org_id: str, span: Span, start: datetime, end: datetime
) -> dict[str, Any] | None:
    """The usage record of ``obj`` in ``span`` from ``start`` to ``end`` (None when the
    span is empty)."""
    return usage_row(KIND[type(obj)], obj.id, obj.name, obj.project_id, org_id, span, start, end)


def usage_row(
    kind: str,
    resource_id: str,
    name: str,
    project_id: str,
    org_id: str,
    span: Span,
    start: datetime,
    end: datetime,
) -> dict[str, Any] | None:
    seconds = int((end - start).total_seconds())
    if seconds <= 0:
        return None
    return {
        "id": new_id(),
        "key": f"{kind}:{resource_id}:{start.isoformat()}",
        "organisation_id": org_id,
        "project_id": project_id,
        "resource_kind": kind,
        "resource_id": resource_id,
        "resource_name": name,
        "state": span.state,
        "started_at": start,
        "ended_at": end,
        "seconds": seconds,
        "cpu_milli": span.cpu_milli,
        "memory_mb": span.memory_mb,
        "storage_gb": span.storage_gb,
        "instances": span.instances,
        "flavor": span.flavor,
        "network_bytes": 0,
        "created_at": utcnow(),
    }


def now_s() -> datetime:
    """Now, to the second: spans start and end on whole seconds, so their seconds
    add up exactly to the time between their ends."""
    return utcnow().replace(microsecond=0)


def _org_of(session: Session, project_id: str) -> str | None:
    project = session.get(Project, project_id)
    return project.organisation_id if project is not None else None


def _before_flush(session: Session, _context: Any, _instances: Any) -> None:
    now = now_s()
    for obj in list(session.new):
        if type(obj) in KIND and obj.billed_since is None:
            obj.billed_since = now
    for obj in list(session.dirty):
        if type(obj) not in KIND or not session.is_modified(obj):
            continue
        kind = KIND[type(obj)]
        before = span_of(kind, _values(obj, previous=True))
        after = span_of(kind, _values(obj, previous=False))
        if before == after:
            continue
        _close(session, obj, before, now)
        obj.billed_since = now
    for obj in list(session.deleted):
        if type(obj) in KIND:
            _close(session, obj, span_of(KIND[type(obj)], _values(obj, previous=True)), now)


def _close(session: Session, obj: Metered, span: Span, now: datetime) -> None:
    if obj.billed_since is None:
        return
    org_id = _org_of(session, obj.project_id)
    if org_id is None:
        return
    row = record_for(obj, org_id, span, obj.billed_since, now)
    if row is not None:
        session.add(UsageRecord(**row))


async def close(session: AsyncSession, obj: Metered) -> None:
    """Record ``obj``'s last span before a bulk ``DELETE`` removes it (the ORM does not
    see those). ``obj`` must be current (loaded ``with_for_update`` in this
    transaction)."""
    now = now_s()
    span = span_of(KIND[type(obj)], _values(obj, previous=False))
    project = await session.get(Project, obj.project_id)
    if project is None or obj.billed_since is None:
        return
    row = record_for(obj, project.organisation_id, span, obj.billed_since, now)
    if row is not None:
        await session.execute(_insert(session, UsageRecord).values(**row).on_conflict_do_nothing())
    obj.billed_since = now


async def cut(db: Database, until: datetime, *, batch: int = 500) -> int:
    """Close every span open since before ``until`` at ``until`` (the engine passes
    the top of the current hour). Returns the number of records written.

    Each resource moves with a guarded ``UPDATE ... WHERE billed_since = <as read>``:
    a change committed meanwhile (which closed the span itself) or another process
    cutting at the same time wins, and this pass skips the resource.
    """
    written = 0
    models: tuple[type[Vm] | type[Container] | type[Volume], ...] = (Vm, Container, Volume)
    for model in models:
        kind = KIND[model]
        last_id = ""
        while True:
            async with db.sessionmaker() as session:
                found = (
                    await session.execute(
                        select(model, Project.organisation_id)
                        .join(Project, Project.id == model.project_id)
                        .where(model.billed_since < until, model.id > last_id)
                        .order_by(model.id)
                        .limit(batch)
                    )
                ).all()
                if not found:
                    break
                rows = [_plain(o, org) for o, org in found]
                last_id = rows[-1][0]
                await begin_write(session)
                for rid, name, project_id, org_id, since, values in rows:
                    moved = await session.execute(
                        update(model)
                        .where(model.id == rid, model.billed_since == since)
                        .values(billed_since=until)
                        .execution_options(synchronize_session=False)
                    )
                    if not moved.rowcount:  # type: ignore[attr-defined]
                        continue
                    span = span_of(kind, values)
                    row = usage_row(kind, rid, name, project_id, org_id, span, since, until)
                    if row is None:
                        continue
                    done = await session.execute(
                        _insert(session, UsageRecord).values(**row).on_conflict_do_nothing()
                    )
                    written += done.rowcount  # type: ignore[attr-defined]
                await session.commit()
    return written


def _plain(obj: Any, org_id: str) -> tuple[str, str, str, str, datetime, dict[str, Any]]:
    o: Metered = obj
    assert o.billed_since is not None
    return o.id, o.name, o.project_id, org_id, o.billed_since, _values(o, previous=False)


async def open_spans(
    session: AsyncSession, org_id: str, now: datetime, *, resource: tuple[str, str] | None = None
) -> list[UsageRecord]:
    """The organisation's usage since each resource was last metered, as the records
    closing the spans now would write (not added to the session)."""
    out: list[UsageRecord] = []
    projects = select(Project.id).where(Project.organisation_id == org_id)
    kinds: tuple[tuple[Any, str], ...] = ((Vm, "vm"), (Container, "container"), (Volume, "volume"))
    for model, kind in kinds:
        if resource is not None and resource[0] != kind:
            continue
        query = select(model).where(model.project_id.in_(projects), model.billed_since < now)
        if resource is not None:
            query = query.where(model.id == resource[1])
        for obj in (await session.scalars(query)).all():
            span = span_of(kind, _values(obj, previous=False))
            row = usage_row(
                kind, obj.id, obj.name, obj.project_id, org_id, span, obj.billed_since, now
            )
            if row is not None:
                out.append(UsageRecord(**row))
    return out


async def network(db: Database, hour: datetime) -> int:
    """Write the network usage of every VM and container in the hour starting at
    ``hour``: bytes in and out, from the monitoring's per-minute rollups of
    ``net_rx_bps`` and ``net_tx_bps`` (each minute's average rate times 60 s).
    Idempotent: one record per resource and hour (its key). Returns records written."""
    start = int(hour.timestamp())
    r = MetricRollupMinute
    async with db.sessionmaker() as session:
        rows = (
            await session.execute(
                select(r.kind, r.resource_id, Project.id, Project.organisation_id)
                .add_columns(func.sum(r.avg * 60))
                .join(Project, Project.id == r.project_id)
                .where(
                    r.metric.in_((Metric.NET_RX_BPS.value, Metric.NET_TX_BPS.value)),
                    r.bucket >= start,
                    r.bucket < start + 3600,
                    r.kind.in_(("vm", "container")),
                )
                .group_by(r.kind, r.resource_id, Project.id, Project.organisation_id)
            )
        ).all()
        if not rows:
            return 0
        names: dict[str, str] = {}
        for model in (Vm, Container):
            ids = [rid for kind, rid, *_ in rows if kind == KIND[model]]
            if ids:
                found = await session.execute(select(model.id, model.name).where(model.id.in_(ids)))
                names.update({i: n for i, n in found.all()})
        await begin_write(session)
        written = 0
        for kind, rid, project_id, org_id, total in rows:
            volume = int(total or 0)
            if volume <= 0:
                continue
            values = {
                "id": new_id(),
                "key": f"{kind}:{rid}:network:{hour.isoformat()}",
                "organisation_id": org_id,
                "project_id": project_id,
                "resource_kind": kind,
                "resource_id": rid,
                "resource_name": names.get(rid, ""),
                "state": "network",
                "started_at": hour,
                "ended_at": hour + timedelta(hours=1),
                "seconds": 0,
                "network_bytes": volume,
                "created_at": utcnow(),
            }
            done = await session.execute(
                _insert(session, UsageRecord).values(**values).on_conflict_do_nothing()
            )
            written += done.rowcount  # type: ignore[attr-defined]
        await session.commit()
        return written


def install(db: Database) -> None:
    """Meter ``db``'s VMs, containers and volumes at every flush."""
    sa_event.listen(db.sync_session_class, "before_flush", _before_flush)
