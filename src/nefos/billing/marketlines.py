"""The marketplace on a consumer's invoice: its priced API calls and its plan fees
and credits of the period, as lines beside its usage (seed 002).

- **API calls**: one line per API and plan version, of the priced calls made in
  the period (``api_calls.created_at``): "API calls: <listing> (<plan>) N calls"
  (", M units" when they are not one unit each), its quantity the priced units (a
  call weighs its ``units``; those of a call within a free quota cost nothing, so a
  call straddling the quota's end brings its units beyond it only) times the plan's
  unit price (``plans.unit_price``). The quantity is the calls' prices' sum divided
  by that unit price, exact since each call's price is its priced units times it.
  Their unrounded sum is what the billing pass charged for those calls
  (``apicalls``); a line is rounded once, half-up, like a usage line, so with prices
  in the currency's minor unit the line is the charge to the cent.
- **Plan fees and credits**: one line per ``SubscriptionCharge`` made in the period
  (its ledger entry's time): "Plan fee: <listing> (<plan>) <period>", and a credit
  as a negative line. Fees and credits are moved in the minor unit
  (``planfees``), so these lines are the wallet's movements exactly.

Only lines in the invoice's currency: a listing sold in another currency is charged
to the consumer's wallet in that currency, which has no invoice of its own yet.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from decimal import Decimal
from typing import NamedTuple

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from nefos.billing.apicalls import charged_until
from nefos.billing.rating import RatedLine
from nefos.db.models import ApiCall, Listing, ListingPlan, Subscription, SubscriptionCharge
from nefos.domain.plans import unit_price

CALL_METER, FEE_METER, CREDIT_METER = "api_calls", "plan_fee", "plan_credit"
CALL_SKU, PLAN_SKU = "marketplace_call", "marketplace_plan"
# Organisations named in one lookup's ``IN`` list.
_IN_LIMIT = 500


class _Terms(NamedTuple):
    model: str
    price_per_call: Decimal | None
    overage_price: Decimal | None
    monthly_price: Decimal | None = None
    included_calls: int | None = None


def _priced_units(total: Decimal, calls: int, terms: _Terms) -> tuple[Decimal, int]:
    """(The unit price, the priced units) of calls of one plan version costing
    ``total``: each call's price is its priced units times the plan's unit price."""
    price = unit_price(terms)
    if price:
        units = total / price
        if units == units.to_integral_value():
            return price, int(units)
    return total / calls, calls  # (no unit price to divide by: priced per call)


def _days(start: datetime, end: datetime) -> str:
    return f"{start:%Y-%m-%d} to {end:%Y-%m-%d}"


async def lines(
    session: AsyncSession,
    org_ids: Collection[str],
    currency: str,
    start: datetime,
    end: datetime,
) -> dict[str, list[RatedLine]]:
    """Each organisation's marketplace lines for [start, end) in ``currency``."""
    out: dict[str, list[RatedLine]] = {}
    ids = sorted(org_ids)
    for i in range(0, len(ids), _IN_LIMIT):
        chunk = ids[i : i + _IN_LIMIT]
        calls = await session.execute(
            select(
                ApiCall.organisation_id,
                ApiCall.api_id,
                ApiCall.plan_id,
                func.sum(ApiCall.price),
                func.count(),
                func.max(Listing.title),
                func.max(ListingPlan.name),
                func.max(ListingPlan.model),
                func.max(ListingPlan.price_per_call),
                func.max(ListingPlan.overage_price),
            )
            .join(ListingPlan, ListingPlan.id == ApiCall.plan_id)
            .join(Listing, Listing.id == ListingPlan.listing_id)
            .where(
                ApiCall.organisation_id.in_(chunk),
                ApiCall.price > 0,
                ApiCall.created_at >= start,
                ApiCall.created_at < end,
                Listing.currency == currency,
            )
            .group_by(ApiCall.organisation_id, ApiCall.api_id, ApiCall.plan_id)
            .order_by(ApiCall.organisation_id, func.max(Listing.title), ApiCall.plan_id)
        )
        for org_id, api_id, _plan_id, total, count, title, plan, *terms in calls.all():
            total = Decimal(total)
            price, units = _priced_units(total, int(count), _Terms(*terms))
            text = f"API calls: {title} ({plan}) {count} calls"
            out.setdefault(org_id, []).append(
                RatedLine(
                    resource_kind="api",
                    resource_id=api_id,
                    resource_name=title[:63],
                    meter=CALL_METER,
                    sku=CALL_SKU,
                    quantity=Decimal(units),
                    unit="unit",
                    unit_price=price,
                    exact_amount=total,
                    currency=currency,
                    units=units,
                    description=text if units == count else f"{text}, {units} units",
                )
            )
        charges = await session.execute(
            select(SubscriptionCharge, Listing.title, ListingPlan.name)
            .join(Subscription, Subscription.id == SubscriptionCharge.subscription_id)
            .join(Listing, Listing.id == Subscription.listing_id)
            .join(ListingPlan, ListingPlan.id == SubscriptionCharge.plan_id)
            .where(
                SubscriptionCharge.organisation_id.in_(chunk),
                SubscriptionCharge.currency == currency,
                SubscriptionCharge.created_at >= start,
                SubscriptionCharge.created_at < end,
            )
            .order_by(SubscriptionCharge.created_at, SubscriptionCharge.id)
        )
        for charge, title, plan in charges.all():
            amount = Decimal(charge.amount)
            days = _days(charge.period_start, charge.period_end)
            fee = charge.kind == "fee"
            out.setdefault(charge.organisation_id, []).append(
                RatedLine(
                    resource_kind="subscription",
                    resource_id=charge.subscription_id,
                    resource_name=title[:63],
                    meter=FEE_METER if fee else CREDIT_METER,
                    sku=PLAN_SKU,
                    quantity=Decimal(1),
                    unit="period",
                    unit_price=amount,
                    exact_amount=amount,
                    currency=currency,
                    units=1,
                    description=(
                        f"Plan fee: {title} ({plan}) {days}"
                        if fee
                        else f"Plan credit: {title} ({plan}), the unused part of {days}"
                    ),
                )
            )
    return out


async def active_orgs(session: AsyncSession, start: datetime, end: datetime) -> set[str]:
    """Organisations with priced calls or plan charges in [start, end)."""
    called = await session.scalars(
        select(ApiCall.organisation_id)
        .where(ApiCall.price > 0, ApiCall.created_at >= start, ApiCall.created_at < end)
        .distinct()
    )
    charged = await session.scalars(
        select(SubscriptionCharge.organisation_id)
        .where(SubscriptionCharge.created_at >= start, SubscriptionCharge.created_at < end)
        .distinct()
    )
    return {*called.all(), *charged.all()}


async def calls_charged(session: AsyncSession, org_id: str, start: datetime, end: datetime) -> bool:
    """Whether every priced call the organisation made in [start, end) is charged."""
    waiting = await session.scalar(
        select(
            select(ApiCall.id)
            .join(ListingPlan, ListingPlan.id == ApiCall.plan_id)
            .join(Listing, Listing.id == ListingPlan.listing_id)
            .where(
                ApiCall.organisation_id == org_id,
                ApiCall.price > 0,
                ApiCall.created_at >= start,
                ApiCall.created_at < end,
                # Not charged: after its account's watermark (``apicalls``).
                ApiCall.created_at > charged_until(org_id, Listing.currency),
            )
            .exists()
        )
    )
    return not waiting


__all__ = ["active_orgs", "calls_charged", "lines"]
