"""The wallet (seed 000) and usage costs (seed 004): ``/wallet``, ``/wallet/ledger``,
``/billing/summary``, ``/billing/containers/{id}/usage``, ``/billing/vms/{id}/usage``.

Each acts for one organisation: ``organisation_id`` (query) or ``X-Organisation-ID``,
else the organisation of the caller's default project.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from starlette.responses import Response

from nefos.api.deps import Access, CoreDep, ObjectId, OrgHint, PageDep, SessionDep, authorize
from nefos.db.types import utcnow
from nefos.domain.access import Permission
from nefos.gateway.envelope import ok, page
from nefos.schemas.billing import (
    BillingSummary,
    LedgerEntryPublic,
    LedgerPage,
    ResourceUsage,
    WalletPublic,
)
from nefos.schemas.common import Envelope
from nefos.services.billing import UsageService, entry_public, usage_owner

READ = Permission.BILLING_READ

wallet = APIRouter(prefix="/wallet", tags=["billing"])
router = APIRouter(prefix="/billing", tags=["billing"])

EntryKind = Literal["top_up", "charge", "refund", "adjustment", "payout", "revenue"]
Since = Annotated[datetime | None, Query(description="From (ISO 8601).")]
Until = Annotated[datetime | None, Query(description="Until, exclusive (ISO 8601).")]


def _aware(value: datetime | None) -> datetime | None:
    from datetime import UTC

    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


@wallet.get("", response_model=Envelope[WalletPublic])
async def get_wallet(
    core: CoreDep, session: SessionDep, organisation_id: OrgHint, access: Access = authorize(READ)
) -> Response:
    """The organisation's wallet: `balance` (the sum of its ledger), `pending_charges`
    (usage not yet charged), `available` (what is left), and its status
    (`active`, `low_balance`, `depleted`, `suspended`)."""
    org = await access.org(organisation_id, READ)
    return ok(WalletPublic.model_validate(await UsageService(core, session).wallet_view(org)))


@wallet.get("/ledger", response_model=Envelope[LedgerPage])
async def get_ledger(
    core: CoreDep,
    session: SessionDep,
    params: PageDep,
    organisation_id: OrgHint,
    kind: EntryKind | None = None,
    start_date: Since = None,
    end_date: Until = None,
    access: Access = authorize(READ),
) -> Response:
    """The wallet's ledger, newest first: every top-up, charge, refund, adjustment,
    payout and revenue entry, with the balance after it."""
    org = await access.org(organisation_id, READ)
    currency, rows, total = await UsageService(core, session).ledger_page(
        org, params, kind=kind, start=_aware(start_date), end=_aware(end_date)
    )
    entries = [LedgerEntryPublic.model_validate(entry_public(e, currency)) for e in rows]
    body = page(entries, total, params)
    body["entries"] = body["items"]
    return ok(body)


@router.get("/summary", response_model=Envelope[BillingSummary])
async def billing_summary(
    core: CoreDep, session: SessionDep, organisation_id: OrgHint, access: Access = authorize(READ)
) -> Response:
    """Seed 004: the current period's cost so far, per container (and VM and volume),
    with its usage in vCPU-hours, GB-hours of memory and GB-days of storage."""
    org = await access.org(organisation_id, READ)
    summary = await UsageService(core, session).summary(access.principal, org, utcnow())
    return ok(BillingSummary.model_validate(summary))


async def _usage(
    core: Any,
    session: Any,
    access: Access,
    kind: str,
    resource_id: str,
    start_date: datetime | None,
    end_date: datetime | None,
) -> Response:
    org_id, name = await usage_owner(session, kind, resource_id)
    org = await access.org(org_id, READ, missing=(kind, resource_id))
    data = await UsageService(core, session).resource_usage(
        org, kind, resource_id, name, _aware(start_date), _aware(end_date)
    )
    return ok(ResourceUsage.model_validate(data))


@router.get("/containers/{container_id}/usage", response_model=Envelope[ResourceUsage])
async def container_usage(
    container_id: ObjectId,
    core: CoreDep,
    session: SessionDep,
    start_date: Since = None,
    end_date: Until = None,
    access: Access = authorize(READ),
) -> Response:
    """Seed 004: a container's usage and cost per meter (cpu, memory, storage,
    network) over the period (default: the current billing period). Works for a
    deleted container too, for as long as its usage is kept."""
    return await _usage(core, session, access, "container", container_id, start_date, end_date)


@router.get("/vms/{vm_id}/usage", response_model=Envelope[ResourceUsage])
async def vm_usage(
    vm_id: ObjectId,
    core: CoreDep,
    session: SessionDep,
    start_date: Since = None,
    end_date: Until = None,
    access: Access = authorize(READ),
) -> Response:
    """A VM's usage and cost per meter, like a container's."""
    return await _usage(core, session, access, "vm", vm_id, start_date, end_date)
