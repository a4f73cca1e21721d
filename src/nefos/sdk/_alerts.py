"""Alert rules, alerts and webhooks (monitoring)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from nefos.schemas.alerts import (
    AlertPublic,
    AlertRulePublic,
    DeliveryPublic,
    WebhookCreated,
    WebhookPublic,
)
from nefos.schemas.common import Message, Page
from nefos.sdk._resources import _body, _idempotent, _paging, _Resource, _seg
from nefos.sdk._types import NOT_GIVEN, NotGiven

RULES = "/monitoring/alert-rules"
ALERTS = "/monitoring/alerts"
WEBHOOKS = "/monitoring/webhooks"


class AlertRules(_Resource):
    """Thresholds on metrics: ``cpu_percent gt 90`` for 300 seconds fires an alert."""

    def list(
        self,
        *,
        enabled: bool | None = None,
        project_id: str | None = None,
        page: int | None = None,
        limit: int | None = None,
        cursor: str | None = None,
        skip: int | None = None,
    ) -> Page[AlertRulePublic]:
        """One project's rules (default: the caller's default project)."""
        params = _paging(
            page, limit, cursor=cursor, skip=skip, enabled=enabled, project_id=project_id
        )
        return self._page(AlertRulePublic, RULES, params)

    def create(
        self,
        name: str,
        *,
        metric: str,
        threshold: float,
        comparison: str = "gt",
        duration_seconds: int = 0,
        severity: str = "warning",
        description: str | None = None,
        resource_kind: str | None = None,
        resource_id: str | None = None,
        enabled: bool = True,
        project_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> AlertRulePublic:
        """A rule: ``metric`` (``cpu_percent``, ``memory_percent``, ...) ``comparison``
        (``gt``, ``gte``, ``lt``, ``lte``) ``threshold``, held ``duration_seconds``.
        Without ``resource_kind``/``resource_id`` it watches every VM and container
        of the project."""
        body = _body(
            name=name,
            metric=metric,
            threshold=threshold,
            comparison=comparison,
            duration_seconds=duration_seconds,
            severity=severity,
            description=description,
            resource_kind=resource_kind,
            resource_id=resource_id,
            enabled=enabled,
            project_id=project_id,
        )
        headers = _idempotent(idempotency_key)
        return self._one(AlertRulePublic, "POST", RULES, json=body, headers=headers)

    def get(self, rule_id: str) -> AlertRulePublic:
        return self._one(AlertRulePublic, "GET", f"{RULES}/{_seg(rule_id)}")

    def update(
        self,
        rule_id: str,
        *,
        name: str | None = None,
        description: str | None = None,
        metric: str | None = None,
        comparison: str | None = None,
        threshold: float | None = None,
        duration_seconds: int | None = None,
        severity: str | None = None,
        resource_kind: str | None = None,
        resource_id: str | None = None,
        enabled: bool | None = None,
    ) -> AlertRulePublic:
        """Change what is given. Disabling a rule (or changing what it watches)
        resolves its open alerts."""
        body = _body(
            name=name,
            description=description,
            metric=metric,
            comparison=comparison,
            threshold=threshold,
            duration_seconds=duration_seconds,
            severity=severity,
            resource_kind=resource_kind,
            resource_id=resource_id,
            enabled=enabled,
        )
        return self._one(AlertRulePublic, "PUT", f"{RULES}/{_seg(rule_id)}", json=body)

    def delete(self, rule_id: str) -> Message:
        """Delete a rule; its open alerts are resolved, past ones kept."""
        return self._one(Message, "DELETE", f"{RULES}/{_seg(rule_id)}")


class Alerts(_Resource):
    """Alerts: pending, firing, resolved; kept as history."""

    def list(
        self,
        *,
        status: str | None = None,
        severity: str | None = None,
        resource_id: str | None = None,
        rule_id: str | None = None,
        since: datetime | str | None = None,
        platform: bool | None = None,
        project_id: str | None = None,
        page: int | None = None,
        limit: int | None = None,
        cursor: str | None = None,
        skip: int | None = None,
    ) -> Page[AlertPublic]:
        """A project's alerts, newest first; ``status`` ``open`` is pending or firing.
        ``platform=True`` (platform admins): the platform's (hosts down)."""
        when = since.isoformat() if isinstance(since, datetime) else since
        params: dict[str, Any] = _paging(
            page,
            limit,
            cursor=cursor,
            skip=skip,
            status=status,
            severity=severity,
            resource_id=resource_id,
            rule_id=rule_id,
            since=when,
            platform=platform,
            project_id=project_id,
        )
        return self._page(AlertPublic, ALERTS, params)

    def get(self, alert_id: str) -> AlertPublic:
        return self._one(AlertPublic, "GET", f"{ALERTS}/{_seg(alert_id)}")


class Webhooks(_Resource):
    """Signed HTTP callbacks of a project's alerts (``X-Nefos-Signature``)."""

    def create(
        self,
        url: str,
        *,
        events: list[str] | None = None,
        description: str | None = None,
        enabled: bool | NotGiven = NOT_GIVEN,
        project_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> WebhookCreated:
        """A webhook; the answer's ``secret`` (shown this once) verifies the
        signatures. ``events``: ``alert.firing``, ``alert.resolved`` (default both).
        A URL of a non-public address is a ValidationError."""
        body = _body(url=url, events=events, description=description, project_id=project_id)
        if not isinstance(enabled, NotGiven):
            body["enabled"] = enabled
        headers = _idempotent(idempotency_key)
        return self._one(WebhookCreated, "POST", WEBHOOKS, json=body, headers=headers)

    def list(
        self,
        *,
        project_id: str | None = None,
        page: int | None = None,
        limit: int | None = None,
        cursor: str | None = None,
        skip: int | None = None,
    ) -> Page[WebhookPublic]:
        params = _paging(page, limit, cursor=cursor, skip=skip, project_id=project_id)
        return self._page(WebhookPublic, WEBHOOKS, params)

    def get(self, webhook_id: str) -> WebhookPublic:
        return self._one(WebhookPublic, "GET", f"{WEBHOOKS}/{_seg(webhook_id)}")

    def delete(self, webhook_id: str) -> Message:
        return self._one(Message, "DELETE", f"{WEBHOOKS}/{_seg(webhook_id)}")

    def deliveries(
        self,
        webhook_id: str,
        *,
        status: str | None = None,
        page: int | None = None,
        limit: int | None = None,
        cursor: str | None = None,
        skip: int | None = None,
    ) -> Page[DeliveryPublic]:
        """The webhook's deliveries, newest first, each with its attempts' log."""
        params = _paging(page, limit, cursor=cursor, skip=skip, status=status)
        return self._page(DeliveryPublic, f"{WEBHOOKS}/{_seg(webhook_id)}/deliveries", params)

    def test(self, webhook_id: str) -> DeliveryPublic:
        """Queue a ``ping`` delivery; follow it with :meth:`deliveries`."""
        return self._one(DeliveryPublic, "POST", f"{WEBHOOKS}/{_seg(webhook_id)}/test")
