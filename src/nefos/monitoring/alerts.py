"""The alert engine: alert rules evaluated on each collection pass, and built-in alerts.

The collector calls ``AlertEngine.on_samples(samples)`` after each pass. Then:

* Each enabled rule of the samples' projects (``metric comparison threshold``, for
  ``duration_seconds``, on the project's VMs and containers, one kind or one
  resource) is held against each sample it covers, in time order. A condition
  first true opens a ``pending`` alert (``started_at`` is the sample's time); it
  becomes ``firing`` once it has held for the duration (at once for a duration of
  0), stays open while it holds, and is ``resolved`` (with ``resolved_at``) at the
  first sample where it does not. A pending alert whose condition stops before it
  fires is resolved quietly: nobody was told of it.
* Built-in alerts, checked each pass against the database: ``host_down`` (a host
  whose status is ``offline``; a platform alert, project None) and
  ``instance_crashed`` (a VM or container in ``error``, in its project, unless its
  latest operation failed: a create whose image never arrived is that operation's
  failure, not a crash of something that ran); resolved
  when the resource recovers or is gone. A rule's alert on a resource that is gone
  is resolved too.

Firing and resolving record a ``resource_alert`` event and the webhook deliveries
of the alert's project in the same transaction. At most one alert is open per rule
(or built-in kind) and resource: ``Alert.open_key`` is unique, and NULL once
resolved, so two server processes evaluating the same pass cannot open two.
"""

from __future__ import annotations

import asyncio
import logging
import operator
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, func, select
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.exc import StaleDataError

from nefos.db.models import (
    Alert,
    AlertRule,
    Container,
    Host,
    Operation,
    Vm,
    Webhook,
    WebhookDelivery,
)
from nefos.db.session import Database, begin_write
from nefos.events import EventType, make, now_iso, record
from nefos.monitoring.types import Sample, format_metric

log = logging.getLogger("nefos.alerts")

OPEN = ("pending", "firing")
HOST_DOWN = "host_down"
INSTANCE_CRASHED = "instance_crashed"
BUILTIN_NAMES = {HOST_DOWN: "Host down", INSTANCE_CRASHED: "Instance crashed"}

COMPARISONS: dict[str, Callable[[float, float], bool]] = {
    "gt": operator.gt,
    "gte": operator.ge,
    "lt": operator.lt,
    "lte": operator.le,
}
SYMBOLS = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}


#: Operations that bring an instance up: when the latest one failed, the instance's
#: ``error`` is that failure (an image that never arrived, a start refused).
BRING_UP = ("container.create", "container.scale", "container.start", "vm.create", "vm.start")


async def _failed_by_operation(session: AsyncSession, resource_ids: Sequence[str]) -> set[str]:
    """The resources whose latest operation failed while bringing them up: their
    ``error`` is that operation's failure, which the operation itself reports -- not
    a crash of an instance that was running. (A failed stop does not hide a crash.)"""
    if not resource_ids:
        return set()
    latest = (
        select(Operation.resource_id, func.max(Operation.created_at).label("at"))
        .where(Operation.resource_id.in_(resource_ids))
        .group_by(Operation.resource_id)
        .subquery()
    )
    rows = await session.scalars(
        select(Operation.resource_id)
        .join(
            latest,
            and_(
                Operation.resource_id == latest.c.resource_id,
                Operation.created_at == latest.c.at,
            ),
        )
        .where(Operation.status == "failed", Operation.kind.in_(BRING_UP))
    )
    return set(rows.all())


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ") if value else None


def alert_public(a: Alert) -> dict[str, Any]:
    return {
        "id": a.id,
        "project_id": a.project_id,
        "rule_id": a.rule_id,
        "kind": a.kind,
        "name": a.name,
        "resource_kind": a.resource_kind,
        "resource_id": a.resource_id,
        "metric": a.metric,
        "status": a.status,
        "severity": a.severity,
        "value": a.value,
        "threshold": a.threshold,
        "message": a.message,
        "started_at": a.started_at,
        "fired_at": a.fired_at,
        "resolved_at": a.resolved_at,
        "updated_at": a.updated_at,
    }


def alert_wire(a: Alert) -> dict[str, Any]:
    """The alert as JSON (timestamps as ISO strings), for events and webhooks."""
    data = alert_public(a)
    for key in ("started_at", "fired_at", "resolved_at", "updated_at"):
        data[key] = _iso(data[key])
    return data


def _retryable(exc: DBAPIError) -> bool:
    return isinstance(exc, IntegrityError) or "deadlock" in str(exc).lower()


def _chunks(items: list[str], size: int) -> list[list[str]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def rule_key(rule_id: str, resource_id: str) -> str:
    return f"rule:{rule_id}:{resource_id}"


def builtin_key(kind: str, resource_id: str) -> str:
    return f"{kind}:{resource_id}"


def _aware(ts: datetime) -> datetime:
    return ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)


async def announce(session: AsyncSession, alert: Alert, transition: str) -> int:
    """Record the ``resource_alert`` event of ``alert`` having become ``transition``
    (firing or resolved), and queue a delivery to each enabled webhook of its
    project that takes the event. Part of the caller's transaction; how many
    deliveries were queued."""
    data = alert_wire(alert)
    record(
        session,
        make(
            EventType.ALERT,
            {
                "alert_id": alert.id,
                "alert": data,
                "status": alert.status,
                "severity": alert.severity,
                "message": alert.message,
                "resource_kind": alert.resource_kind,
                "resource_id": alert.resource_id,
            },
            project_id=alert.project_id,
        ),
    )
    if alert.project_id is None:
        return 0
    event_type = f"alert.{transition}"
    hooks = (
        await session.scalars(
            select(Webhook).where(Webhook.project_id == alert.project_id, Webhook.enabled)
        )
    ).all()
    queued = 0
    for hook in hooks:
        if event_type not in hook.events:
            continue
        delivery = new_delivery(hook, event_type, {"alert": data})
        session.add(delivery)
        queued += 1
    return queued


def new_delivery(hook: Webhook, event_type: str, data: dict[str, Any]) -> WebhookDelivery:
    import uuid

    event_id = f"evt_{uuid.uuid4().hex}"
    now = datetime.now(UTC)
    return WebhookDelivery(
        webhook_id=hook.id,
        event_id=event_id,
        event_type=event_type,
        payload={
            "id": event_id,
            "type": event_type,
            "created": now_iso(),
            "project_id": hook.project_id,
            "webhook_id": hook.id,
            "data": data,
        },
        status="pending",
        attempts=0,
        next_attempt_at=now,
        log=[],
    )


class AlertEngine:
    """Evaluates alert rules and built-in alerts; a ``SampleListener``."""

    def __init__(self, db: Database, *, on_deliveries: Callable[[], None] | None = None) -> None:
        self.db = db
        self.on_deliveries = on_deliveries  # the dispatcher's wake-up
        self._lock = asyncio.Lock()
        self.passes = 0

    async def on_samples(self, samples: Sequence[Sample]) -> None:
        async with self._lock:
            for attempt in range(3):
                try:
                    queued = await self._pass(samples)
                    break
                except (DBAPIError, StaleDataError) as exc:
                    # Another process opened or moved on the same alert first (or,
                    # on PostgreSQL, chose this pass as a deadlock's victim):
                    # evaluate again on what it committed.
                    if isinstance(exc, DBAPIError) and not _retryable(exc):
                        raise
                    if attempt == 2:
                        log.warning("alert pass gave up after repeated conflicts")
                        return
            self.passes += 1
        if queued and self.on_deliveries is not None:
            self.on_deliveries()

    async def check_builtins(self) -> None:
        """A pass with no samples: the built-in alerts only."""
        await self.on_samples([])

    async def _pass(self, samples: Sequence[Sample]) -> int:
        async with self.db.sessionmaker() as session:
            await begin_write(session)
            queued = await self._rules(session, samples)
            queued += await self._builtins(session)
            await session.commit()
            return queued

    # --- rules ----------------------------------------------------------------------
    async def _rules(self, session: AsyncSession, samples: Sequence[Sample]) -> int:
        projects = {s.project_id for s in samples if s.project_id is not None}
        if not projects:
            return 0
        rules = (
            await session.scalars(
                select(AlertRule).where(AlertRule.project_id.in_(projects), AlertRule.enabled)
            )
        ).all()
        if not rules:
            return 0
        open_alerts = {
            (a.rule_id, a.resource_id): a
            for a in (
                await session.scalars(
                    select(Alert).where(
                        Alert.rule_id.in_([r.id for r in rules]), Alert.status.in_(OPEN)
                    )
                )
            ).all()
        }
        queued = 0
        for sample in sorted(samples, key=lambda s: _aware(s.ts)):
            if sample.project_id is None:
                continue
            for rule in rules:
                if not self._covers(rule, sample):
                    continue
                key = (rule.id, sample.resource_id)
                alert, n = await self._evaluate(session, rule, sample, open_alerts.get(key))
                queued += n
                if alert is None or alert.status not in OPEN:
                    open_alerts.pop(key, None)
                else:
                    open_alerts[key] = alert
        return queued

    @staticmethod
    def _covers(rule: AlertRule, sample: Sample) -> bool:
        return (
            rule.project_id == sample.project_id
            and rule.metric == str(sample.metric)
            and (rule.resource_kind is None or rule.resource_kind == str(sample.kind))
            and (rule.resource_id is None or rule.resource_id == sample.resource_id)
        )

    async def _evaluate(
        self, session: AsyncSession, rule: AlertRule, sample: Sample, alert: Alert | None
    ) -> tuple[Alert | None, int]:
        ts = _aware(sample.ts)
        holds = COMPARISONS[rule.comparison](sample.value, rule.threshold)
        condition = (
            f"{rule.metric} {SYMBOLS[rule.comparison]} {format_metric(rule.metric, rule.threshold)}"
        )
        # The message's number is always the ``value`` beside it (the same sample).
        shown = format_metric(rule.metric, sample.value)
        if not holds:
            if alert is None:
                return None, 0
            alert.status = "resolved"
            alert.resolved_at = ts
            alert.open_key = None
            alert.value = sample.value
            if alert.fired_at is None:
                alert.message = f"{condition} stopped before {rule.duration_seconds}s"
                return alert, 0
            alert.message = (
                f"{rule.name}: {condition} no longer holds on {sample.kind} "
                f"{sample.resource_id} ({shown})"
            )
            await session.flush()
            return alert, await announce(session, alert, "resolved")
        if alert is None:
            alert = Alert(
                project_id=rule.project_id,
                rule_id=rule.id,
                kind="rule",
                name=rule.name,
                resource_kind=str(sample.kind),
                resource_id=sample.resource_id,
                metric=rule.metric,
                status="pending",
                severity=rule.severity,
                value=sample.value,
                threshold=rule.threshold,
                message=f"{condition} since {_iso(ts)}",
                open_key=rule_key(rule.id, sample.resource_id),
                started_at=ts,
            )
            session.add(alert)
        alert.value = sample.value
        firing = f"{rule.name}: {condition} on {sample.kind} {sample.resource_id} ({shown})"
        if alert.status == "pending" and (ts - alert.started_at).total_seconds() >= (
            rule.duration_seconds
        ):
            alert.status = "firing"
            alert.fired_at = ts
            alert.message = f"{firing} for {rule.duration_seconds}s"
            await session.flush()
            return alert, await announce(session, alert, "firing")
        if alert.status == "firing":
            alert.message = f"{firing} since {_iso(alert.fired_at)}"
        await session.flush()
        return alert, 0

    # --- built-ins ------------------------------------------------------------------
    async def _builtins(self, session: AsyncSession) -> int:
        now = datetime.now(UTC)
        # What is wrong now: (kind, resource kind, resource id, project, label).
        wrong: dict[str, tuple[str, str, str, str | None, str]] = {}
        for host_id, hostname, error in (
            await session.execute(
                select(Host.id, Host.hostname, Host.last_error).where(Host.status == "offline")
            )
        ).all():
            reason = f": {error}" if error else ""
            wrong[builtin_key(HOST_DOWN, host_id)] = (
                HOST_DOWN,
                "host",
                host_id,
                None,
                f"Host {hostname} is offline{reason}",
            )
        for model, kind in ((Vm, "vm"), (Container, "container")):
            in_error = (
                await session.execute(
                    select(model.id, model.name, model.project_id, model.status_reason).where(
                        model.status == "error"
                    )
                )
            ).all()
            failed = await _failed_by_operation(session, [row[0] for row in in_error])
            for rid, name, owner, status_reason in in_error:
                if rid in failed:
                    continue
                why = f": {status_reason}" if status_reason else ""
                wrong[builtin_key(INSTANCE_CRASHED, rid)] = (
                    INSTANCE_CRASHED,
                    kind,
                    rid,
                    owner,
                    f"{'VM' if kind == 'vm' else 'Container'} {name} is in error{why}",
                )
        open_alerts = (await session.scalars(select(Alert).where(Alert.status.in_(OPEN)))).all()
        queued = 0
        seen: set[str] = set()
        existing = await self._existing(session, [a for a in open_alerts if a.kind == "rule"])
        for alert in open_alerts:
            if alert.kind == "rule":
                if (alert.resource_kind, alert.resource_id) not in existing:
                    queued += await self._resolve(session, alert, now, "the resource is gone")
                continue
            if alert.kind not in BUILTIN_NAMES:
                continue  # raised and resolved by its owner (billing's low_balance)
            key = builtin_key(alert.kind, alert.resource_id)
            if key in wrong:
                seen.add(key)
            else:
                queued += await self._resolve(session, alert, now, "recovered")
        for key, (builtin, resource_kind, rid, project_id, message) in wrong.items():
            if key in seen:
                continue
            alert = Alert(
                project_id=project_id,
                rule_id=None,
                kind=builtin,
                name=BUILTIN_NAMES[builtin],
                resource_kind=resource_kind,
                resource_id=rid,
                metric=None,
                status="firing",
                severity="critical",
                value=None,
                threshold=None,
                message=message,
                open_key=key,
                started_at=now,
                fired_at=now,
            )
            session.add(alert)
            await session.flush()
            queued += await announce(session, alert, "firing")
        return queued

    @staticmethod
    async def _existing(session: AsyncSession, alerts: Sequence[Alert]) -> set[tuple[str, str]]:
        """Which of the alerts' resources still exist: (kind, id) pairs, one query a
        kind (a kind Nefos does not know is taken to exist)."""
        out: set[tuple[str, str]] = set()
        wanted: dict[str, set[str]] = {}
        for alert in alerts:
            wanted.setdefault(alert.resource_kind, set()).add(alert.resource_id)
        models: dict[str, Any] = {"vm": Vm, "container": Container, "host": Host}
        for kind, ids in wanted.items():
            model = models.get(kind)
            if model is None:
                out.update((kind, i) for i in ids)
                continue
            for chunk in _chunks(sorted(ids), 500):
                found = await session.scalars(select(model.id).where(model.id.in_(chunk)))
                out.update((kind, i) for i in found.all())
        return out

    @staticmethod
    async def _resolve(session: AsyncSession, alert: Alert, now: datetime, why: str) -> int:
        was_firing = alert.status == "firing"
        alert.status = "resolved"
        alert.resolved_at = now
        alert.open_key = None
        alert.message = f"{alert.message} (resolved: {why})"[:2000]
        await session.flush()
        return await announce(session, alert, "resolved") if was_firing else 0


async def resolve_open(session: AsyncSession, alerts: Sequence[Alert], why: str) -> int:
    """Resolve ``alerts`` (a rule deleted or disabled), telling of those that fired."""
    now = datetime.now(UTC)
    queued = 0
    for alert in alerts:
        queued += await AlertEngine._resolve(session, alert, now, why)
    return queued
