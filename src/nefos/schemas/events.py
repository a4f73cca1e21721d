"""What ``WS /ws`` sends: one message per event (seeds 003, 004)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

EVENT_TYPES = (
    "container_status_update",
    "vm_status_changed",
    "host_status_changed",
    "metrics_update",
    "billing_update",
    "resource_alert",
    "operation_update",
    "service_health_changed",
    "load_test_update",
    "usage_alert",
    "subscription.created",
    "subscription.plan_changed",
    "subscription.renewed",
    "subscription.past_due",
    "subscription.cancelled",
    "subscription.ended",
)
# Messages about the stream itself, not events.
CONTROL_TYPES = ("connected", "subscribed", "pong", "error", "events_dropped")


class EventMessage(BaseModel):
    """``{id, type, data, timestamp}``; control messages carry no ``id``."""

    id: str | None = None
    type: str
    data: dict[str, Any] = Field(default_factory=dict)
    timestamp: str

    @property
    def is_event(self) -> bool:
        return self.type in EVENT_TYPES


class WsTicket(BaseModel):
    """``POST /ws/ticket``: a one-time ticket for ``/ws?ticket=<ticket>``."""

    ticket: str
    expires_at: datetime
    expires_in: float = Field(description="Seconds the ticket stays valid.")
