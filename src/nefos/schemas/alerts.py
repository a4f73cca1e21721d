"""Wire schemas of alert rules, alerts, webhooks and webhook deliveries (monitoring)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, Field, field_validator

from nefos.schemas.common import Id, Request, ShortName

Comparison = Literal["gt", "gte", "lt", "lte"]
Severity = Literal["info", "warning", "critical"]
AlertStatus = Literal["pending", "firing", "resolved"]
#: What a rule may watch: a project's own VMs and containers (hosts are the platform's).
RuleResourceKind = Literal["vm", "container"]
MetricName = Literal[
    "cpu_percent",
    "memory_percent",
    "memory_bytes",
    "net_rx_bps",
    "net_tx_bps",
    "disk_read_bps",
    "disk_write_bps",
]
#: Events a webhook may subscribe to (``ping`` is sent by ``POST .../test`` only):
#: its project's alerts, ``usage_alert`` (a marketplace subscription of the
#: project's organisation at 50, 80 or 100 % of its quota), and the life of the
#: organisation's marketplace subscriptions (``subscription.*``: those it holds, and
#: the creation, cancellation and end of those to its own listings).
WebhookEvent = Literal[
    "alert.firing",
    "alert.resolved",
    "usage_alert",
    "subscription.created",
    "subscription.plan_changed",
    "subscription.renewed",
    "subscription.past_due",
    "subscription.cancelled",
    "subscription.ended",
]
WEBHOOK_EVENTS: tuple[WebhookEvent, ...] = get_args(WebhookEvent)
#: What a webhook made without ``events`` subscribes to.
DEFAULT_WEBHOOK_EVENTS: tuple[WebhookEvent, ...] = ("alert.firing", "alert.resolved")

RuleName = ShortName
Threshold = Annotated[float, Field(allow_inf_nan=False, ge=-1e15, le=1e15)]
Duration = Annotated[
    int, Field(ge=0, le=7 * 86400, description="Seconds the condition must hold before firing.")
]
Description = Annotated[str, Field(max_length=2000)]
ResourceId = Annotated[str, Field(min_length=1, max_length=36, pattern=r"^[A-Za-z0-9_-]+$")]


# --- alert rules -----------------------------------------------------------------------
class AlertRuleCreate(Request):
    """``metric comparison threshold`` held for ``duration_seconds`` fires an alert:
    e.g. ``cpu_percent gt 90`` for 300 seconds. Without ``resource_kind`` and
    ``resource_id`` the rule watches every VM and container of the project."""

    name: RuleName
    description: Description = ""
    metric: MetricName
    comparison: Comparison = "gt"
    threshold: Threshold
    duration_seconds: Duration = 0
    severity: Severity = "warning"
    resource_kind: RuleResourceKind | None = None
    resource_id: ResourceId | None = None
    enabled: bool = True
    project_id: Id | None = None


class AlertRuleUpdate(Request):
    """Fields to change; those left out (or null) keep their value."""

    name: RuleName | None = None
    description: Description | None = None
    metric: MetricName | None = None
    comparison: Comparison | None = None
    threshold: Threshold | None = None
    duration_seconds: Duration | None = None
    severity: Severity | None = None
    resource_kind: RuleResourceKind | None = None
    resource_id: ResourceId | None = None
    enabled: bool | None = None


class AlertRulePublic(BaseModel):
    id: str
    project_id: str
    name: str
    description: str
    metric: str
    comparison: str
    threshold: float
    duration_seconds: int
    severity: str
    resource_kind: str | None
    resource_id: str | None
    enabled: bool
    created_at: datetime
    updated_at: datetime


# --- alerts ----------------------------------------------------------------------------
class AlertPublic(BaseModel):
    id: str
    project_id: str | None = Field(description="null for platform alerts (a host down)")
    rule_id: str | None
    kind: str = Field(description="rule, host_down or instance_crashed")
    name: str
    resource_kind: str
    resource_id: str
    metric: str | None
    status: str = Field(description="pending, firing or resolved")
    severity: str
    value: float | None
    threshold: float | None
    message: str
    started_at: datetime
    fired_at: datetime | None
    resolved_at: datetime | None
    updated_at: datetime


# --- webhooks --------------------------------------------------------------------------
class WebhookCreate(Request):
    """An http(s) endpoint told of the project's alerts. It must resolve to a public
    address (see the operations guide for ``webhook_allowed_networks``)."""

    url: Annotated[str, Field(min_length=1, max_length=2000, examples=["https://example.com/hook"])]
    events: Annotated[list[WebhookEvent], Field(max_length=10)] = Field(
        default_factory=lambda: list(DEFAULT_WEBHOOK_EVENTS)
    )
    description: Description = ""
    enabled: bool = True
    project_id: Id | None = None

    @field_validator("events")
    @classmethod
    def _events(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("subscribe to at least one event")
        return sorted(set(v))


class WebhookPublic(BaseModel):
    id: str
    project_id: str
    url: str
    events: list[str]
    description: str
    enabled: bool
    created_by: str | None
    created_at: datetime
    updated_at: datetime


class WebhookCreated(WebhookPublic):
    secret: str = Field(
        description="The signing secret, shown this once: verify X-Nefos-Signature with it."
    )


class DeliveryPublic(BaseModel):
    id: str
    webhook_id: str
    event_id: str
    event_type: str
    status: str = Field(description="pending, succeeded or failed")
    attempts: int
    next_attempt_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    log: list[dict[str, Any]]
    payload: dict[str, Any]
    created_at: datetime
    delivered_at: datetime | None
