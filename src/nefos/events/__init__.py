"""Events: what changed, told to whoever is listening (WebSocket clients, webhooks).

An ``Event`` names its tenant (``project_id``, ``organisation_id``) so that a
subscriber receives only what its caller may see; an event with neither is a
platform event (hosts), for platform admins only.

Services do not publish in the middle of a transaction: ``record(session, event)``
keeps the event on the session, and it is published only when that session's
transaction commits (a rollback drops it). Status changes of VMs, containers and
hosts are recorded by ``nefos.events.capture`` without any service's help.

The bus (``nefos.events.bus``) is in-process by default, and Redis pub/sub when
``NEFOS_REDIS_URL`` is set, so that every server process delivers every event.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from nefos.schemas.events import EVENT_TYPES as WIRE_TYPES

PENDING_KEY = "nefos.events"


class EventType(StrEnum):
    CONTAINER_STATUS = "container_status_update"
    VM_STATUS = "vm_status_changed"
    HOST_STATUS = "host_status_changed"
    METRICS = "metrics_update"
    BILLING = "billing_update"
    ALERT = "resource_alert"
    OPERATION = "operation_update"
    SERVICE_HEALTH = "service_health_changed"
    LOAD_TEST = "load_test_update"
    USAGE_ALERT = "usage_alert"
    # A marketplace subscription's life (``billing/subevents.py``).
    SUBSCRIPTION_CREATED = "subscription.created"
    SUBSCRIPTION_PLAN_CHANGED = "subscription.plan_changed"
    SUBSCRIPTION_RENEWED = "subscription.renewed"
    SUBSCRIPTION_PAST_DUE = "subscription.past_due"
    SUBSCRIPTION_CANCELLED = "subscription.cancelled"
    SUBSCRIPTION_ENDED = "subscription.ended"


EVENT_TYPES: frozenset[str] = frozenset(t.value for t in EventType)
assert EVENT_TYPES == frozenset(WIRE_TYPES), "nefos.schemas.events lists the same types"


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True, slots=True)
class Event:
    """One event. ``data`` is the seed's payload; it always carries a ``timestamp``."""

    type: str
    data: dict[str, Any]
    project_id: str | None = None
    organisation_id: str | None = None
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    timestamp: str = field(default_factory=now_iso)

    @property
    def is_platform(self) -> bool:
        """For platform admins only (no tenant)."""
        return self.project_id is None and self.organisation_id is None

    def message(self) -> dict[str, Any]:
        """The wire form: ``{id, type, data, timestamp}`` (seeds 003, 004)."""
        return {"id": self.id, "type": self.type, "data": self.data, "timestamp": self.timestamp}

    def to_wire(self) -> dict[str, Any]:
        """The form carried between processes: the message plus its tenant."""
        return {
            **self.message(),
            "project_id": self.project_id,
            "organisation_id": self.organisation_id,
        }

    @classmethod
    def from_wire(cls, raw: dict[str, Any]) -> Event:
        return cls(
            type=str(raw["type"]),
            data=dict(raw["data"]),
            project_id=raw.get("project_id"),
            organisation_id=raw.get("organisation_id"),
            id=str(raw["id"]),
            timestamp=str(raw["timestamp"]),
        )

    def with_org(self, organisation_id: str | None) -> Event:
        return Event(
            type=self.type,
            data=self.data,
            project_id=self.project_id,
            organisation_id=organisation_id,
            id=self.id,
            timestamp=self.timestamp,
        )


def make(
    type: EventType | str,
    data: dict[str, Any],
    *,
    project_id: str | None = None,
    organisation_id: str | None = None,
) -> Event:
    """An event whose payload carries its timestamp (and project), as the seeds show."""
    stamp = now_iso()
    payload = {**data, "timestamp": stamp}
    if project_id is not None:
        payload.setdefault("project_id", project_id)
    return Event(
        type=str(type),
        data=payload,
        project_id=project_id,
        organisation_id=organisation_id,
        timestamp=stamp,
    )


def record(session: AsyncSession | Session, event: Event) -> None:
    """Publish ``event`` when ``session``'s current transaction commits.

    Works only on sessions of a ``Database`` whose events are captured (every
    ``Core``'s); elsewhere the event is silently never published.
    """
    sync = session.sync_session if isinstance(session, AsyncSession) else session
    sync.info.setdefault(PENDING_KEY, []).append(event)
