"""Alert rules, alerts and webhooks of a project (the requests; the evaluation is
``nefos.monitoring.alerts``, the sending ``nefos.monitoring.webhooks``)."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.exc import StaleDataError

from nefos.db.models import Alert, AlertRule, Project, Webhook, WebhookDelivery
from nefos.db.session import begin_write
from nefos.domain.access import Permission
from nefos.domain.errors import Conflict, Forbidden, NotFound
from nefos.domain.paging import PageParams
from nefos.monitoring.alerts import OPEN, alert_public, new_delivery, resolve_open
from nefos.monitoring.webhooks import validate_webhook_url
from nefos.schemas.alerts import AlertRuleCreate, AlertRuleUpdate, WebhookCreate
from nefos.services.core import Core
from nefos.services.paging import fetch_page
from nefos.services.principal import Principal, authorize_project

SECRET_PREFIX = "whsec_"


def rule_public(r: AlertRule) -> dict[str, Any]:
    return {
        "id": r.id,
        "project_id": r.project_id,
        "name": r.name,
        "description": r.description,
        "metric": r.metric,
        "comparison": r.comparison,
        "threshold": r.threshold,
        "duration_seconds": r.duration_seconds,
        "severity": r.severity,
        "resource_kind": r.resource_kind,
        "resource_id": r.resource_id,
        "enabled": r.enabled,
        "created_at": r.created_at,
        "updated_at": r.updated_at,
    }


def webhook_public(w: Webhook) -> dict[str, Any]:
    return {
        "id": w.id,
        "project_id": w.project_id,
        "url": w.url,
        "events": list(w.events),
        "description": w.description,
        "enabled": w.enabled,
        "created_by": w.created_by,
        "created_at": w.created_at,
        "updated_at": w.updated_at,
    }


def delivery_public(d: WebhookDelivery) -> dict[str, Any]:
    return {
        "id": d.id,
        "webhook_id": d.webhook_id,
        "event_id": d.event_id,
        "event_type": d.event_type,
        "status": d.status,
        "attempts": d.attempts,
        "next_attempt_at": d.next_attempt_at,
        "last_status_code": d.last_status_code,
        "last_error": d.last_error,
        "log": list(d.log),
        "payload": dict(d.payload),
        "created_at": d.created_at,
        "delivered_at": d.delivered_at,
    }


__all__ = ["OPEN", "AlertService", "alert_public", "delivery_public", "rule_public"]


class AlertService:
    def __init__(self, core: Core, session: AsyncSession) -> None:
        self.core = core
        self.session = session

    async def _visible(
        self, model: Any, principal: Principal, object_id: str, permission: Permission
    ) -> Any:
        """The object if the caller may act on it; another tenant's is NotFound."""
        what = {AlertRule: "Alert rule", Alert: "Alert", Webhook: "Webhook"}[model]
        obj = await self.session.get(model, object_id)
        if obj is None:
            raise NotFound(f"{what} not found", id=object_id)
        if obj.project_id is None:  # a platform alert
            principal.require_scope(permission)
            if not principal.is_admin:
                raise NotFound(f"{what} not found", id=object_id)
            return obj
        try:
            await authorize_project(self.session, principal, obj.project_id, permission)
        except NotFound:
            raise NotFound(f"{what} not found", id=object_id) from None
        return obj

    # --- rules ------------------------------------------------------------------------
    async def list_rules(
        self, project: Project, page: PageParams, *, enabled: bool | None = None
    ) -> tuple[Sequence[AlertRule], int]:
        where: list[Any] = [AlertRule.project_id == project.id]
        if enabled is not None:
            where.append(AlertRule.enabled == enabled)
        return await fetch_page(
            self.session,
            AlertRule,
            *where,
            order_by=(AlertRule.created_at, AlertRule.id),
            page=page,
        )

    async def rule(self, principal: Principal, rule_id: str, permission: Permission) -> AlertRule:
        rule: AlertRule = await self._visible(AlertRule, principal, rule_id, permission)
        return rule

    async def create_rule(
        self, principal: Principal, project: Project, body: AlertRuleCreate
    ) -> AlertRule:
        await begin_write(self.session)
        rule = AlertRule(
            project_id=project.id,
            user_id=principal.user_id,
            name=body.name,
            description=body.description,
            metric=body.metric,
            comparison=body.comparison,
            threshold=body.threshold,
            duration_seconds=body.duration_seconds,
            severity=body.severity,
            resource_kind=body.resource_kind,
            resource_id=body.resource_id,
            enabled=body.enabled,
        )
        self.session.add(rule)
        await self._commit_named(body.name)
        return rule

    async def _commit_named(self, name: str) -> None:
        try:
            await self.session.commit()
        except IntegrityError as exc:
            await self.session.rollback()
            raise Conflict("An alert rule with this name exists in the project", name=name) from exc
        except StaleDataError as exc:
            await self.session.rollback()
            raise Conflict("The rule's alerts changed meanwhile; try again") from exc

    async def _open_alerts(self, rule_id: str) -> Sequence[Alert]:
        return (
            await self.session.scalars(
                select(Alert).where(Alert.rule_id == rule_id, Alert.status.in_(OPEN))
            )
        ).all()

    async def update_rule(self, rule: AlertRule, body: AlertRuleUpdate) -> AlertRule:
        """Change a rule. Its open alerts are resolved when it is disabled or what it
        watches changes (the next pass opens them again if the new condition holds)."""
        rule_id = rule.id
        await begin_write(self.session)
        current = await self.session.get(AlertRule, rule_id, populate_existing=True)
        if current is None:
            await self.session.rollback()
            raise NotFound("Alert rule not found", id=rule_id)
        changes = body.model_dump(exclude_unset=True, exclude_none=True)
        watched = ("metric", "comparison", "threshold", "resource_kind", "resource_id")
        reset = changes.get("enabled") is False or any(
            k in changes and changes[k] != getattr(current, k) for k in watched
        )
        for key, value in changes.items():
            setattr(current, key, value)
        if reset:
            await resolve_open(self.session, await self._open_alerts(rule_id), "rule changed")
        await self._commit_named(current.name)
        return current

    async def delete_rule(self, rule: AlertRule) -> None:
        await begin_write(self.session)
        current = await self.session.get(AlertRule, rule.id, populate_existing=True)
        if current is None:
            await self.session.rollback()
            raise NotFound("Alert rule not found", id=rule.id)
        await resolve_open(self.session, await self._open_alerts(current.id), "rule deleted")
        await self.session.delete(current)
        await self._commit_named(current.name)

    # --- alerts -----------------------------------------------------------------------
    async def list_alerts(
        self,
        project: Project | None,
        page: PageParams,
        *,
        status: str | None = None,
        severity: str | None = None,
        resource_id: str | None = None,
        rule_id: str | None = None,
        since: datetime | None = None,
    ) -> tuple[Sequence[Alert], int]:
        """A project's alerts (``project`` None: the platform's), newest first."""
        where: list[Any] = [
            Alert.project_id == project.id if project is not None else Alert.project_id.is_(None)
        ]
        if status == "open":
            where.append(Alert.status.in_(OPEN))
        elif status:
            where.append(Alert.status == status)
        if severity:
            where.append(Alert.severity == severity)
        if resource_id:
            where.append(Alert.resource_id == resource_id)
        if rule_id:
            where.append(Alert.rule_id == rule_id)
        if since is not None:
            where.append(Alert.started_at >= since)
        return await fetch_page(
            self.session,
            Alert,
            *where,
            order_by=(Alert.started_at.desc(), Alert.id.desc()),
            page=page,
        )

    async def alert(self, principal: Principal, alert_id: str, permission: Permission) -> Alert:
        alert: Alert = await self._visible(Alert, principal, alert_id, permission)
        return alert

    # --- webhooks ---------------------------------------------------------------------
    async def list_webhooks(
        self, project: Project, page: PageParams
    ) -> tuple[Sequence[Webhook], int]:
        return await fetch_page(
            self.session,
            Webhook,
            Webhook.project_id == project.id,
            order_by=(Webhook.created_at, Webhook.id),
            page=page,
        )

    async def webhook(
        self, principal: Principal, webhook_id: str, permission: Permission
    ) -> Webhook:
        hook: Webhook = await self._visible(Webhook, principal, webhook_id, permission)
        return hook

    async def create_webhook(
        self, principal: Principal, project: Project, body: WebhookCreate
    ) -> Webhook:
        """The URL is checked (scheme, and every address its host resolves to) first;
        the secret is made here and returned this once."""
        await validate_webhook_url(body.url, self.core.settings.webhook_allowed_networks)
        await begin_write(self.session)
        hook = Webhook(
            project_id=project.id,
            created_by=principal.user_id,
            url=body.url,
            description=body.description,
            events=list(body.events),
            secret=SECRET_PREFIX + secrets.token_urlsafe(32),
            enabled=body.enabled,
        )
        self.session.add(hook)
        await self.session.commit()
        return hook

    async def delete_webhook(self, hook: Webhook) -> None:
        await begin_write(self.session)
        current = await self.session.get(Webhook, hook.id, populate_existing=True)
        if current is None:
            await self.session.rollback()
            raise NotFound("Webhook not found", id=hook.id)
        await self.session.delete(current)
        await self.session.commit()

    async def deliveries(
        self, hook: Webhook, page: PageParams, *, status: str | None = None
    ) -> tuple[Sequence[WebhookDelivery], int]:
        where: list[Any] = [WebhookDelivery.webhook_id == hook.id]
        if status:
            where.append(WebhookDelivery.status == status)
        return await fetch_page(
            self.session,
            WebhookDelivery,
            *where,
            order_by=(WebhookDelivery.created_at.desc(), WebhookDelivery.id.desc()),
            page=page,
        )

    async def ping(self, principal: Principal, hook: Webhook) -> WebhookDelivery:
        """Queue a ``ping`` delivery (sent by the dispatcher like any other)."""
        if not hook.enabled:
            raise Conflict("The webhook is disabled", id=hook.id)
        await begin_write(self.session)
        current = await self.session.get(Webhook, hook.id, populate_existing=True)
        if current is None:
            await self.session.rollback()
            raise NotFound("Webhook not found", id=hook.id)
        delivery = new_delivery(
            current,
            "ping",
            {"message": "Nefos webhook test", "requested_by": principal.user_id},
        )
        self.session.add(delivery)
        await self.session.commit()
        return delivery


def require_platform(principal: Principal, permission: Permission) -> None:
    """Platform alerts (hosts) are for platform admins."""
    principal.require_scope(permission)
    if not principal.is_admin:
        raise Forbidden("Platform alerts are for platform administrators")
