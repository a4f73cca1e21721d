"""Seed 002's billing routes: payouts of earnings (a reseller's margins, a creator's
marketplace revenue), the revenue overview, the transactions and the subscription.

Each acts for an organisation: ``organisation_id`` (query or body) or
``X-Organisation-ID``, else the organisation of the caller's default project.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Header, Query
from starlette.responses import Response

from nefos.api.deps import Access, CoreDep, ObjectId, OrgHint, PageDep, SessionDep, authorize
from nefos.db.models import Organisation
from nefos.domain.access import Permission
from nefos.domain.errors import ValidationFailed
from nefos.gateway.envelope import listing, ok
from nefos.schemas.billing import (
    BillingOverview,
    PayoutDecision,
    PayoutPublic,
    PayoutRequest,
    TransactionPublic,
)
from nefos.schemas.common import Envelope, Page
from nefos.schemas.marketplace import BillingSubscriptionPublic
from nefos.services.market_subscriptions import SubscriptionService
from nefos.services.payouts import PayoutService, bound, payout_public, require_platform

router = APIRouter(prefix="/billing", tags=["billing"])

PayoutId = ObjectId
READ = Permission.BILLING_READ
WRITE = Permission.BILLING_WRITE
CurrencyQuery = Annotated[
    str | None,
    Query(pattern=r"^[A-Za-z]{3}$", description="A wallet currency (default: the organisation's)."),
]
StartDate = Annotated[
    date | datetime | None,
    Query(description="From this instant (a date alone: its midnight UTC)."),
]
EndDate = Annotated[
    date | datetime | None,
    Query(description="Until this instant, excluded (a date alone: that whole day)."),
]
TransactionType = Literal["top_up", "charge", "refund", "adjustment", "payout", "revenue"]


def _payout(p: Any) -> PayoutPublic:
    return PayoutPublic.model_validate(payout_public(p))


def _period(
    start_date: date | datetime | None, end_date: date | datetime | None
) -> tuple[datetime | None, datetime | None]:
    start, end = bound(start_date), bound(end_date, end=True)
    if start is not None and end is not None and start >= end:
        raise ValidationFailed("start_date must be before end_date", start_date=str(start_date))
    return start, end


@router.get("/payouts", response_model=Envelope[Page[PayoutPublic]])
async def list_payouts(
    core: CoreDep,
    session: SessionDep,
    params: PageDep,
    organisation_id: OrgHint,
    status: Literal["pending", "paid", "rejected"] | None = None,
    every: Annotated[
        bool,
        Query(alias="all", description="Every organisation's payouts (platform admins)."),
    ] = False,
    access: Access = authorize(READ),
) -> Response:
    """Payout history (seed 002), newest first."""
    org: Organisation | None = None
    if every:
        require_platform(access.principal)
    else:
        org = await access.org(organisation_id, READ)
    rows, total = await PayoutService(core, session).list_page(org, params, status=status)
    return listing([_payout(p) for p in rows], "payouts", total, params)


@router.get("/payouts/{payout_id}", response_model=Envelope[PayoutPublic])
async def get_payout(
    payout_id: PayoutId, core: CoreDep, session: SessionDep, access: Access = authorize(READ)
) -> Response:
    payout = await PayoutService(core, session).visible(access.principal, payout_id, READ)
    return ok(_payout(payout))


@router.post("/payout-request", status_code=201, response_model=Envelope[PayoutPublic])
async def request_payout(
    body: PayoutRequest,
    core: CoreDep,
    session: SessionDep,
    organisation_id: OrgHint,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            max_length=255,
            description="Send one: a retried request gives the first payout back.",
        ),
    ] = None,
    access: Access = authorize(WRITE),
) -> Response:
    """Request a payout of earnings (seed 002): at least `billing_min_payout`, at most
    the earnings not yet paid out (and the balance). The wallet is debited at once;
    the payout waits, `pending`, for a platform admin to settle or reject it. 201
    with the payout; 200 with the first one for a repeated `Idempotency-Key`."""
    org = await access.org(body.organisation_id or organisation_id, WRITE)
    payout, made = await PayoutService(core, session).request(
        access.principal, org, body, idempotency_key
    )
    return ok(_payout(payout), 201 if made else 200)


@router.post("/payouts/{payout_id}/settle", response_model=Envelope[PayoutPublic])
async def settle_payout(
    payout_id: PayoutId,
    core: CoreDep,
    session: SessionDep,
    body: Annotated[PayoutDecision | None, Body()] = None,
    access: Access = authorize(Permission.PLATFORM_ADMIN),
) -> Response:
    """Mark a pending payout paid (platform admins), once the money went out."""
    payout = await PayoutService(core, session).settle(
        access.principal, payout_id, body.note if body else None
    )
    return ok(_payout(payout))


@router.post("/payouts/{payout_id}/reject", response_model=Envelope[PayoutPublic])
async def reject_payout(
    payout_id: PayoutId,
    core: CoreDep,
    session: SessionDep,
    body: Annotated[PayoutDecision | None, Body()] = None,
    access: Access = authorize(Permission.PLATFORM_ADMIN),
) -> Response:
    """Reject a pending payout (platform admins): its amount goes back to the wallet
    (an `adjustment`) and to the earnings."""
    payout = await PayoutService(core, session).reject(
        access.principal, payout_id, body.note if body else None
    )
    return ok(_payout(payout))


@router.get("/overview", response_model=Envelope[BillingOverview])
async def billing_overview(
    core: CoreDep,
    session: SessionDep,
    organisation_id: OrgHint,
    start_date: StartDate = None,
    end_date: EndDate = None,
    currency: CurrencyQuery = None,
    access: Access = authorize(READ),
) -> Response:
    """Revenue summary (seed 002): the balance and the earnings available for payout
    now, and the period's revenue, charges, top-ups and payouts (default period: the
    current invoice period)."""
    org = await access.org(organisation_id, READ)
    start, end = _period(start_date, end_date)
    found = await PayoutService(core, session).overview(
        org, start=start, end=end, currency=currency
    )
    return ok(BillingOverview.model_validate(found.public()))


@router.get("/transactions", response_model=Envelope[Page[TransactionPublic]])
async def list_transactions(
    core: CoreDep,
    session: SessionDep,
    params: PageDep,
    organisation_id: OrgHint,
    type: TransactionType | None = None,
    start_date: StartDate = None,
    end_date: EndDate = None,
    currency: CurrencyQuery = None,
    access: Access = authorize(READ),
) -> Response:
    """Transaction history (seed 002): the wallet's ledger, newest first."""
    org = await access.org(organisation_id, READ)
    start, end = _period(start_date, end_date)
    rows, total = await PayoutService(core, session).transactions(
        org, params, kind=type, start=start, end=end, currency=currency
    )
    items = [TransactionPublic.model_validate(r) for r in rows]
    return listing(items, "transactions", total, params)


@router.get("/subscription", response_model=Envelope[BillingSubscriptionPublic])
async def current_subscription(
    core: CoreDep,
    session: SessionDep,
    organisation_id: OrgHint,
    access: Access = authorize(READ),
) -> Response:
    """Current subscription (seed 002). Nefos is prepaid pay-as-you-go: the plan is
    the wallet; `status` is `active`, `low_balance` or `suspended`. `marketplace`:
    the organisation's active API subscriptions, and the plans of its own listings."""
    org = await access.org(organisation_id, READ)
    data = await PayoutService(core, session).subscription(org)
    data["marketplace"] = await SubscriptionService(core, session).account(org)
    return ok(BillingSubscriptionPublic.model_validate(data))
