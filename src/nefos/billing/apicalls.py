"""Charging marketplace calls: consumers pay for their priced calls, creators earn
their share (seed 002).

The gateway records every call with its price (``api_calls.price``; 0 within a free
quota or for an answer of 500 or more). A pass of the billing engine charges each
consumer organisation's uncharged priced calls in batches, set-based: one guarded
``UPDATE`` marks a batch of them (oldest first, at most ``BATCH``, only those still
uncharged) with the id of the ``charge`` ledger entry it is about to post; one
``GROUP BY`` over the calls marked with it (``ix_api_calls_charge``) gives the
total and each creator's part; then, in the same transaction, the consumer's wallet
is debited by one entry of that id and each creator organisation is credited one
``revenue`` entry of its calls' total less the platform's fee
(``NEFOS_MARKETPLACE_FEE_PERCENT``), keyed by the charge. Two passes at once mark
disjoint calls (the guard is re-checked on the rows the other pass locked), so
nothing is charged twice; a wallet that cannot pay rolls the batch back and its
calls wait for the next pass. Revenue is what payouts pay out
(``services/payouts.py``).
"""

from __future__ import annotations

import logging
import uuid
from decimal import Decimal

from sqlalchemy import ColumnElement, func, or_, select, update

from nefos.billing import accounts, ledger
from nefos.billing.money import ZERO
from nefos.config import Settings
from nefos.db.models import ApiCall, Listing, ListingPlan
from nefos.db.session import Database, begin_write
from nefos.db.types import utcnow
from nefos.domain.errors import PaymentRequired
from nefos.domain.plans import CALL_IN_FLIGHT, IN_FLIGHT_CHARGE_AFTER

log = logging.getLogger("nefos.billing.apicalls")

#: Calls one charge covers at most (one write transaction: on SQLite the gateway's
#: writes wait for it).
BATCH = 10_000
#: Batches one pass charges at most per consumer and currency (the next pass goes on).
MAX_BATCHES = 100


def creator_share(total: Decimal, fee_percent: Decimal) -> Decimal:
    """What the creator earns of ``total``: all of it less the platform's fee."""
    return total - total * fee_percent / Decimal(100)


def _uncharged() -> tuple[ColumnElement[bool], ...]:
    """Priced calls not charged yet, and not in flight (a call in flight may still
    be answered 5xx and cost nothing), unless in flight for so long that the process
    forwarding it died: it was forwarded, so it is charged as it stands."""
    stale = utcnow() - IN_FLIGHT_CHARGE_AFTER
    return (
        ApiCall.charge_id.is_(None),
        ApiCall.price > 0,
        or_(ApiCall.status != CALL_IN_FLIGHT, ApiCall.created_at < stale),
    )


async def charge_calls(db: Database, settings: Settings) -> tuple[int, Decimal]:
    """Charge every consumer's uncharged priced calls: (charges posted, their sum)."""
    async with db.sessionmaker() as session:
        accounts_due = (
            await session.execute(
                select(ApiCall.organisation_id, Listing.currency)
                .join(ListingPlan, ListingPlan.id == ApiCall.plan_id)
                .join(Listing, Listing.id == ListingPlan.listing_id)
                .where(*_uncharged())
                .distinct()
            )
        ).all()
    posted, total = 0, ZERO
    for org_id, currency in accounts_due:
        for _ in range(MAX_BATCHES):
            amount, more = await _charge_batch(db, settings, org_id, currency)
            if amount is not None:
                posted += 1
                total += amount
            if not more:
                break
    return posted, total


async def _charge_batch(
    db: Database, settings: Settings, org_id: str, currency: str
) -> tuple[Decimal | None, bool]:
    """Charge one batch: (its amount, or None if nothing was charged; whether more
    calls may be waiting)."""
    entry_id = str(uuid.uuid4())
    async with db.sessionmaker() as session:
        await begin_write(session)
        batch = (
            select(ApiCall.id)
            .join(ListingPlan, ListingPlan.id == ApiCall.plan_id)
            .join(Listing, Listing.id == ListingPlan.listing_id)
            .where(ApiCall.organisation_id == org_id, Listing.currency == currency, *_uncharged())
            .order_by(ApiCall.created_at, ApiCall.id)
            .limit(BATCH)
        )
        marked = await session.execute(
            update(ApiCall)
            .where(ApiCall.id.in_(batch.scalar_subquery()), ApiCall.charge_id.is_(None))
            .values(charge_id=entry_id)
            .execution_options(synchronize_session=False)
        )
        count = marked.rowcount  # type: ignore[attr-defined]
        if not count:
            await session.rollback()
            return None, False
        parts = (
            await session.execute(
                select(Listing.organisation_id, func.count(), func.sum(ApiCall.price))
                .join(ListingPlan, ListingPlan.id == ApiCall.plan_id)
                .join(Listing, Listing.id == ListingPlan.listing_id)
                .where(ApiCall.charge_id == entry_id)
                .group_by(Listing.organisation_id)
            )
        ).all()
        earned = {creator: Decimal(gross) for creator, _, gross in parts}
        amount = sum(earned.values(), ZERO)
        wallet = await accounts.wallet(session, settings, org_id, currency)
        try:
            await ledger.post(
                session,
                wallet,
                "charge",
                -amount,
                key=f"apicalls:{entry_id}",
                description=f"{count} API calls through the marketplace",
                reference=("api_calls", entry_id),
                entry_id=entry_id,
            )
            for creator, gross in sorted(earned.items()):
                share = creator_share(gross, settings.marketplace_fee_percent)
                if share > 0:
                    target = await accounts.wallet(session, settings, creator, currency)
                    await ledger.post(
                        session,
                        target,
                        "revenue",
                        share,
                        key=f"apirevenue:{entry_id}",
                        description="Marketplace calls, less the platform's fee",
                        reference=("charge", entry_id),
                    )
            await session.commit()
        except PaymentRequired:
            await session.rollback()
            log.info("organisation %s cannot cover %s of API calls yet", org_id, amount)
            return None, False
        return amount, count == BATCH
