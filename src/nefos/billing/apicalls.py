"""Charging marketplace calls: consumers pay for their priced calls, creators earn
their share (seed 002).

The gateway records every call with its price (``api_calls.price``; 0 within a free
quota or for an answer of 500 or more). A pass of the billing engine charges each
consumer organisation's uncharged priced calls in batches: one ``charge`` ledger
entry per batch and currency (keyed by the batch, so a retried pass moves nothing
twice), the calls marked with it in the same transaction (a guarded UPDATE: calls
another process charged meanwhile roll the batch back), and for each creator
organisation in the batch one ``revenue`` entry of its calls' total less the
platform's fee (``NEFOS_MARKETPLACE_FEE_PERCENT``), keyed by the charge. Revenue is
what payouts pay out (``services/payouts.py``).
"""

from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from decimal import Decimal

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from nefos.billing import accounts, ledger
from nefos.billing.money import ZERO
from nefos.config import Settings
from nefos.db.models import ApiCall, Listing, ListingPlan
from nefos.db.session import Database, begin_write
from nefos.domain.errors import PaymentRequired

log = logging.getLogger("nefos.billing.apicalls")

#: Calls one charge covers at most.
BATCH = 5000
#: Batches one pass charges at most (the next pass goes on).
MAX_BATCHES = 100


def creator_share(total: Decimal, fee_percent: Decimal) -> Decimal:
    """What the creator earns of ``total``: all of it less the platform's fee."""
    return total - total * fee_percent / Decimal(100)


async def charge_calls(db: Database, settings: Settings) -> tuple[int, Decimal]:
    """Charge every consumer's uncharged priced calls: (charges posted, their sum)."""
    async with db.sessionmaker() as session:
        orgs = (
            await session.scalars(
                select(ApiCall.organisation_id)
                .where(ApiCall.charge_id.is_(None), ApiCall.price > 0)
                .distinct()
            )
        ).all()
    posted, total = 0, ZERO
    for org_id in orgs:
        for _ in range(MAX_BATCHES):
            amount, more = await _charge_batch(db, settings, org_id)
            if amount is not None:
                posted += 1
                total += amount
            if not more:
                break
    return posted, total


async def _charge_batch(
    db: Database, settings: Settings, org_id: str
) -> tuple[Decimal | None, bool]:
    async with db.sessionmaker() as session:
        await begin_write(session)
        rows = (
            await session.execute(
                select(ApiCall.id, ApiCall.price, Listing.currency, Listing.organisation_id)
                .join(ListingPlan, ListingPlan.id == ApiCall.plan_id)
                .join(Listing, Listing.id == ListingPlan.listing_id)
                .where(
                    ApiCall.organisation_id == org_id,
                    ApiCall.charge_id.is_(None),
                    ApiCall.price > 0,
                )
                .order_by(ApiCall.created_at, ApiCall.id)
                .limit(BATCH)
            )
        ).all()
        if not rows:
            await session.rollback()
            return None, False
        more = len(rows) == BATCH
        currency = rows[0].currency
        batch = [r for r in rows if r.currency == currency]
        ids = [r.id for r in batch]
        amount = sum((Decimal(r.price) for r in batch), ZERO)
        key = "apicalls:" + hashlib.sha256(",".join(ids).encode()).hexdigest()[:40]
        wallet = await accounts.wallet(session, settings, org_id, currency)
        try:
            entry = await ledger.post(
                session,
                wallet,
                "charge",
                -amount,
                key=key,
                description=f"{len(ids)} API calls through the marketplace",
                reference=("api_calls", ids[0]),
            )
            marked = 0
            for i in range(0, len(ids), 500):  # SQLite's bound on parameters
                done = await session.execute(
                    update(ApiCall)
                    .where(ApiCall.id.in_(ids[i : i + 500]), ApiCall.charge_id.is_(None))
                    .values(charge_id=entry.id)
                    .execution_options(synchronize_session=False)
                )
                marked += done.rowcount  # type: ignore[attr-defined]
            if marked != len(ids):  # another process charged some meanwhile
                await session.rollback()
                return None, True
            earned: dict[str, Decimal] = defaultdict(lambda: ZERO)
            for r in batch:
                earned[r.organisation_id] += Decimal(r.price)
            for creator, gross in sorted(earned.items()):
                share = creator_share(gross, settings.marketplace_fee_percent)
                if share > 0:
                    target = await accounts.wallet(session, settings, creator, currency)
                    await ledger.post(
                        session,
                        target,
                        "revenue",
                        share,
                        key=f"apirevenue:{entry.id}",
                        description="Marketplace calls, less the platform's fee",
                        reference=("charge", entry.id),
                    )
            await session.commit()
        except PaymentRequired:
            await session.rollback()
            log.info("organisation %s cannot cover %s of API calls yet", org_id, amount)
            return None, False
        except IntegrityError:  # a concurrent pass posted this very batch
            await session.rollback()
            return None, True
        return amount, more or len(batch) < len(rows)
