"""Alert rules, alerts (seed 003's ``GET /monitoring/alerts``) and signed webhooks.

Each lives in a project, named like other resources (``project_id`` in the body or
query, or ``X-Project-ID``; default: the caller's default project). Platform
alerts (a host down) have no project: ``GET /monitoring/alerts?platform=true``,
for platform admins.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from nefos.api.deps import Access, CoreDep, ObjectId, PageDep, ProjectHint, SessionDep, authorize
from nefos.db.models import Project
from nefos.domain.access import Permission
from nefos.domain.errors import ValidationFailed
from nefos.gateway.envelope import listing, ok
from nefos.schemas.alerts import (
    AlertPublic,
    AlertRuleCreate,
    AlertRulePublic,
    AlertRuleUpdate,
    DeliveryPublic,
    WebhookCreate,
    WebhookCreated,
    WebhookPublic,
)
from nefos.schemas.common import Envelope, Message
from nefos.services.alerts import (
    AlertService,
    alert_public,
    delivery_public,
    require_platform,
    rule_public,
    webhook_public,
)
from nefos.services.principal import resolve_project

router = APIRouter(prefix="/monitoring", tags=["monitoring"])

RuleId = ObjectId
AlertId = ObjectId
WebhookId = ObjectId
IdFilter = Annotated[str | None, Query(pattern=r"^[A-Za-z0-9_-]{1,64}$")]

READ = Permission.MONITORING_READ
WRITE = Permission.MONITORING_WRITE


def _rule(r: Any) -> AlertRulePublic:
    return AlertRulePublic.model_validate(rule_public(r))


def _alert(a: Any) -> AlertPublic:
    return AlertPublic.model_validate(alert_public(a))


def _hook(w: Any) -> WebhookPublic:
    return WebhookPublic.model_validate(webhook_public(w))


def _delivery(d: Any) -> DeliveryPublic:
    return DeliveryPublic.model_validate(delivery_public(d))


def _wake(request: Request) -> None:
    dispatcher = getattr(request.app.state, "webhooks", None)
    if dispatcher is not None:
        dispatcher.wake()


# --- alert rules -----------------------------------------------------------------------
@router.get("/alert-rules", response_model=Envelope[dict[str, Any]])
async def list_alert_rules(
    core: CoreDep,
    session: SessionDep,
    params: PageDep,
    project_id: ProjectHint,
    enabled: bool | None = None,
    access: Access = authorize(READ),
) -> Response:
    """A project's alert rules."""
    project: Project
    project, _ = await resolve_project(session, access.principal, project_id, READ)
    rows, total = await AlertService(core, session).list_rules(project, params, enabled=enabled)
    return listing([_rule(r) for r in rows], "alert_rules", total, params)


@router.post("/alert-rules", status_code=201, response_model=Envelope[AlertRulePublic])
async def create_alert_rule(
    body: AlertRuleCreate,
    core: CoreDep,
    session: SessionDep,
    project_id: ProjectHint,
    access: Access = authorize(WRITE),
) -> Response:
    """A rule such as "cpu_percent gt 90 for 300 seconds": evaluated on each metrics
    collection; an alert is pending once the condition holds and firing once it has
    held for `duration_seconds`."""
    project, _ = await resolve_project(
        session, access.principal, body.project_id or project_id, WRITE
    )
    rule = await AlertService(core, session).create_rule(access.principal, project, body)
    return ok(_rule(rule), 201)


@router.get("/alert-rules/{rule_id}", response_model=Envelope[AlertRulePublic])
async def get_alert_rule(
    rule_id: RuleId, core: CoreDep, session: SessionDep, access: Access = authorize(READ)
) -> Response:
    rule = await AlertService(core, session).rule(access.principal, rule_id, READ)
    return ok(_rule(rule))


@router.put("/alert-rules/{rule_id}", response_model=Envelope[AlertRulePublic])
async def update_alert_rule(
    rule_id: RuleId,
    body: AlertRuleUpdate,
    core: CoreDep,
    session: SessionDep,
    access: Access = authorize(WRITE),
) -> Response:
    """Change a rule; disabling it (or changing what it watches) resolves its open
    alerts."""
    service = AlertService(core, session)
    rule = await service.rule(access.principal, rule_id, WRITE)
    rule = await service.update_rule(rule, body)
    return ok(_rule(rule))


@router.delete("/alert-rules/{rule_id}", response_model=Envelope[Message])
async def delete_alert_rule(
    rule_id: RuleId, core: CoreDep, session: SessionDep, access: Access = authorize(WRITE)
) -> Response:
    """Delete a rule; its open alerts are resolved, its past alerts are kept."""
    service = AlertService(core, session)
    rule = await service.rule(access.principal, rule_id, WRITE)
    await service.delete_rule(rule)
    return ok(Message(message="Alert rule deleted"))


# --- alerts ----------------------------------------------------------------------------
def _since(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    try:
        value = value.astimezone(UTC)
    except (OverflowError, ValueError):
        raise ValidationFailed("since is out of range", since="out of range") from None
    return value


@router.get("/alerts", response_model=Envelope[dict[str, Any]])
async def list_alerts(
    core: CoreDep,
    session: SessionDep,
    params: PageDep,
    project_id: ProjectHint,
    status: Annotated[
        Literal["pending", "firing", "resolved", "open"] | None,
        Query(description="`open`: pending or firing."),
    ] = None,
    severity: Literal["info", "warning", "critical"] | None = None,
    resource_id: IdFilter = None,
    rule_id: IdFilter = None,
    since: Annotated[
        datetime | None, Query(description="Only alerts started at or after this time.")
    ] = None,
    platform: Annotated[
        bool, Query(description="The platform's alerts (hosts), for platform admins.")
    ] = False,
    access: Access = authorize(READ),
) -> Response:
    """System alerts and warnings (seed 003), newest first: a project's, or with
    `platform=true` the platform's."""
    project: Project | None = None
    if platform:
        require_platform(access.principal, READ)
    else:
        project, _ = await resolve_project(session, access.principal, project_id, READ)
    rows, total = await AlertService(core, session).list_alerts(
        project,
        params,
        status=status,
        severity=severity,
        resource_id=resource_id,
        rule_id=rule_id,
        since=_since(since),
    )
    return listing([_alert(a) for a in rows], "alerts", total, params)


@router.get("/alerts/{alert_id}", response_model=Envelope[AlertPublic])
async def get_alert(
    alert_id: AlertId, core: CoreDep, session: SessionDep, access: Access = authorize(READ)
) -> Response:
    alert = await AlertService(core, session).alert(access.principal, alert_id, READ)
    return ok(_alert(alert))


# --- webhooks --------------------------------------------------------------------------
@router.get("/webhooks", response_model=Envelope[dict[str, Any]])
async def list_webhooks(
    core: CoreDep,
    session: SessionDep,
    params: PageDep,
    project_id: ProjectHint,
    access: Access = authorize(READ),
) -> Response:
    """A project's webhooks (their secrets are never shown again)."""
    project, _ = await resolve_project(session, access.principal, project_id, READ)
    rows, total = await AlertService(core, session).list_webhooks(project, params)
    return listing([_hook(w) for w in rows], "webhooks", total, params)


@router.post("/webhooks", status_code=201, response_model=Envelope[WebhookCreated])
async def create_webhook(
    body: WebhookCreate,
    core: CoreDep,
    session: SessionDep,
    project_id: ProjectHint,
    access: Access = authorize(WRITE),
) -> Response:
    """An endpoint told of the project's alerts with signed POSTs. The answer holds
    the signing `secret`, shown this once. A URL whose host is (or resolves to) a
    loopback, private, link-local or otherwise non-public address is refused (422)."""
    project, _ = await resolve_project(
        session, access.principal, body.project_id or project_id, WRITE
    )
    hook = await AlertService(core, session).create_webhook(access.principal, project, body)
    created = WebhookCreated.model_validate({**webhook_public(hook), "secret": hook.secret})
    return ok(created, 201)


@router.get("/webhooks/{webhook_id}", response_model=Envelope[WebhookPublic])
async def get_webhook(
    webhook_id: WebhookId, core: CoreDep, session: SessionDep, access: Access = authorize(READ)
) -> Response:
    hook = await AlertService(core, session).webhook(access.principal, webhook_id, READ)
    return ok(_hook(hook))


@router.delete("/webhooks/{webhook_id}", response_model=Envelope[Message])
async def delete_webhook(
    webhook_id: WebhookId, core: CoreDep, session: SessionDep, access: Access = authorize(WRITE)
) -> Response:
    """Delete a webhook and its delivery log."""
    service = AlertService(core, session)
    hook = await service.webhook(access.principal, webhook_id, WRITE)
    await service.delete_webhook(hook)
    return ok(Message(message="Webhook deleted"))


@router.get("/webhooks/{webhook_id}/deliveries", response_model=Envelope[dict[str, Any]])
async def list_deliveries(
    webhook_id: WebhookId,
    core: CoreDep,
    session: SessionDep,
    params: PageDep,
    status: Literal["pending", "succeeded", "failed"] | None = None,
    access: Access = authorize(READ),
) -> Response:
    """The webhook's deliveries, newest first, each with its attempts."""
    service = AlertService(core, session)
    hook = await service.webhook(access.principal, webhook_id, READ)
    rows, total = await service.deliveries(hook, params, status=status)
    return listing([_delivery(d) for d in rows], "deliveries", total, params)


@router.post(
    "/webhooks/{webhook_id}/test", status_code=202, response_model=Envelope[DeliveryPublic]
)
async def test_webhook(
    webhook_id: WebhookId,
    request: Request,
    core: CoreDep,
    session: SessionDep,
    access: Access = authorize(WRITE),
) -> Response:
    """Send a `ping` delivery; 202 with the delivery (follow it in `deliveries`)."""
    service = AlertService(core, session)
    hook = await service.webhook(access.principal, webhook_id, WRITE)
    delivery = await service.ping(access.principal, hook)
    _wake(request)
    return ok(_delivery(delivery), 202)
