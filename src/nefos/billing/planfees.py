"""Marketplace plan fees: a ``monthly`` plan's fee charged per period, credited
pro rata when a period is cut short, and subscriptions' periods rolled (seed 002).

A fee pays for one period in advance (Stripe's ``charge_automatically``):

- ``charge_fee`` debits the consumer's wallet (a ``charge`` entry) and credits the
  listing's organisation its fee less the platform's (``NEFOS_MARKETPLACE_FEE_PERCENT``,
  a ``revenue`` entry), in the caller's transaction, and records the
  ``SubscriptionCharge`` (kind ``fee``). The charge's ledger key and the charge row
  are both unique per subscription and period start, so one period is charged once
  whoever tries. A wallet that cannot pay raises ``PaymentDue`` (402
  ``RESOURCE_EXHAUSTED``) having moved nothing.
- ``credit_unused`` gives back the part of a paid period that is left (whole seconds,
  rounded half-up to the minor unit): a ``refund`` to the consumer and, from the
  creator, its share of it (an ``adjustment``; what the creator's balance cannot
  cover, the platform bears: a wallet never goes below zero). Once per period
  (kind ``credit``). Changing away from a monthly plan and deleting the API call it.
- ``renew_due`` is the billing pass's step: every live subscription whose period has
  ended is settled (cancelled at that end: ``ended``) or rolled to the period that
  holds now (a period that passed whole while no pass ran is not charged), each in a
  transaction of its own with the row locked and the roll guarded by the period it
  read (``UPDATE ... WHERE period_start = <as read>``), so passes at once roll it
  once. A monthly plan's new period is charged; a wallet that cannot pay leaves the
  subscription ``past_due`` for that period: the gateway answers its calls 402, each
  pass tries the fee again (paid: ``active``), and a period that ends unpaid ends
  the subscription (``ended``, reason ``unpaid``).

Fees are charged in the currency's minor unit (half-up), so the consumer's invoice
line is the ledger's amount to the cent.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy import or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from nefos.billing import accounts, ledger, subevents
from nefos.billing.apicalls import creator_share
from nefos.billing.money import ZERO, exact, money_str, round_money
from nefos.config import Settings
from nefos.db.models import (
    LedgerEntry,
    Listing,
    ListingPlan,
    Subscription,
    SubscriptionCharge,
)
from nefos.db.session import Database, begin_write
from nefos.db.types import utcnow
from nefos.domain.errors import PaymentDue, PaymentRequired
from nefos.domain.plans import (
    ACTIVE,
    ENDED,
    LIVE,
    PAST_DUE,
    has_fee,
    month_after,
    unused_fraction,
)
from nefos.events import EventType

log = logging.getLogger("nefos.billing.planfees")

FEE, CREDIT = "fee", "credit"
#: Subscriptions one pass renews at most (the next pass goes on).
MAX_RENEWALS = 2000
#: Periods one renewal skips at most to reach now (a pass missing for years).
MAX_SKIPPED_PERIODS = 1200


def fee_of(plan: ListingPlan, currency: str) -> Decimal:
    """The fee of one period of ``plan``, in the currency's minor unit."""
    return round_money(Decimal(plan.monthly_price or ZERO), currency)


def billed(plan: ListingPlan, currency: str) -> bool:
    """Whether subscribing to ``plan`` charges a fee each period (a monthly plan whose
    fee is at least the currency's minor unit)."""
    return has_fee(plan) and fee_of(plan, currency) > 0


def _stamp(at: datetime) -> str:
    return at.strftime("%Y%m%dT%H%M%S.%fZ")


async def charge_fee(
    session: AsyncSession,
    settings: Settings,
    sub: Subscription,
    plan: ListingPlan,
    listing: Listing,
    start: datetime,
    end: datetime,
) -> SubscriptionCharge:
    """Charge ``plan``'s fee for the period [start, end) of ``sub`` and credit the
    creator, in the caller's write transaction (PaymentDue: nothing moved). The
    caller commits."""
    currency = listing.currency
    amount = fee_of(plan, currency)
    wallet = await accounts.wallet(session, settings, sub.organisation_id, currency)
    try:
        entry = await ledger.post(
            session,
            wallet,
            "charge",
            -amount,
            key=f"planfee:{sub.id}:{_stamp(start)}",
            description=f"Plan fee: {listing.title} ({plan.name}), "
            f"{start:%Y-%m-%d} to {end:%Y-%m-%d}"[:2000],
            reference=("subscription", sub.id),
        )
    except PaymentRequired as exc:
        raise PaymentDue(
            f"The wallet cannot pay the {plan.name} plan's fee of {amount:f} {currency}: top it up",
            **{**exc.details, "subscription_id": sub.id, "fee": f"{amount:f}"},
        ) from None
    share = creator_share(amount, settings.marketplace_fee_percent)
    if share > 0:
        creator = await accounts.wallet(session, settings, listing.organisation_id, currency)
        await ledger.post(
            session,
            creator,
            "revenue",
            share,
            key=f"planrevenue:{entry.id}",
            description=f"Plan fee of a subscriber to {listing.title}, less the platform's fee"[
                :2000
            ],
            reference=("ledger_entry", entry.id),
        )
    row = SubscriptionCharge(
        subscription_id=sub.id,
        organisation_id=sub.organisation_id,
        plan_id=plan.id,
        kind=FEE,
        period_start=start,
        period_end=end,
        amount=amount,
        currency=currency,
        ledger_entry_id=entry.id,
        created_at=entry.created_at,
    )
    session.add(row)
    await session.flush()
    return row


async def credit_unused(
    session: AsyncSession,
    settings: Settings,
    sub: Subscription,
    listing: Listing,
    at: datetime,
) -> SubscriptionCharge | None:
    """Give back the part of ``sub``'s current period left at ``at``, if its fee was
    paid and the period was not credited yet (None: nothing to give). In the caller's
    write transaction; the caller commits."""
    paid = await session.scalar(
        select(SubscriptionCharge).where(
            SubscriptionCharge.subscription_id == sub.id,
            SubscriptionCharge.kind == FEE,
            SubscriptionCharge.period_start == sub.period_start,
        )
    )
    if paid is None:
        return None
    done = await session.scalar(
        select(SubscriptionCharge.id).where(
            SubscriptionCharge.subscription_id == sub.id,
            SubscriptionCharge.kind == CREDIT,
            SubscriptionCharge.period_start == sub.period_start,
        )
    )
    if done is not None:
        return None
    currency = paid.currency
    left, total = unused_fraction(paid.period_start, paid.period_end, at)
    amount = round_money(Decimal(paid.amount) * left / total, currency)
    if amount <= 0:
        return None
    wallet = await accounts.wallet(session, settings, sub.organisation_id, currency)
    entry = await ledger.post(
        session,
        wallet,
        "refund",
        amount,
        key=f"plancredit:{sub.id}:{_stamp(paid.period_start)}",
        description=f"Plan credit: {listing.title}, the unused {left} of {total} seconds "
        "of the period"[:2000],
        reference=("subscription", sub.id),
    )
    await _claw_back(session, settings, listing, currency, amount, entry)
    row = SubscriptionCharge(
        subscription_id=sub.id,
        organisation_id=sub.organisation_id,
        plan_id=paid.plan_id,
        kind=CREDIT,
        period_start=paid.period_start,
        period_end=paid.period_end,
        amount=-amount,
        currency=currency,
        ledger_entry_id=entry.id,
        created_at=entry.created_at,
    )
    session.add(row)
    await session.flush()
    return row


async def _claw_back(
    session: AsyncSession,
    settings: Settings,
    listing: Listing,
    currency: str,
    credit: Decimal,
    entry: LedgerEntry,
) -> None:
    """Take back from the creator its share of a credit, as far as its balance goes
    (the platform bears the rest: a wallet never goes below zero)."""
    share = exact(creator_share(credit, settings.marketplace_fee_percent))
    if share <= 0:
        return
    creator = await accounts.wallet(session, settings, listing.organisation_id, currency)
    take = min(share, Decimal(creator.balance))
    if take <= 0:
        log.info("creator %s cannot return %s of a credit", listing.organisation_id, share)
        return
    await ledger.post(
        session,
        creator,
        "adjustment",
        -take,
        key=f"planclawback:{entry.id}",
        description=f"A subscriber's credit on {listing.title}: its share of the fee back"[:2000],
        reference=("ledger_entry", entry.id),
    )


# --- the billing pass ------------------------------------------------------------------
@dataclass
class Renewals:
    rolled: int = 0
    charged: int = 0
    amount: Decimal = ZERO
    past_due: int = 0
    ended: int = 0


async def renew_due(db: Database, settings: Settings, now: datetime | None = None) -> Renewals:
    """Roll, charge, settle or end every live subscription whose period has ended,
    and try the fee of every past-due one again (see the module's docstring)."""
    now = now or utcnow()
    async with db.sessionmaker() as session:
        ids = (
            await session.scalars(
                select(Subscription.id)
                .where(
                    or_(
                        Subscription.status == PAST_DUE,
                        (Subscription.status == ACTIVE) & (Subscription.period_end <= now),
                    )
                )
                .order_by(Subscription.period_end, Subscription.id)
                .limit(MAX_RENEWALS)
            )
        ).all()
    done = Renewals()
    for sub_id in ids:
        try:
            await _renew(db, settings, sub_id, now, done)
        except IntegrityError:  # another process charged this very period meanwhile
            log.debug("subscription %s renewed by another pass", sub_id)
    return done


def _period_holding(end: datetime, now: datetime) -> tuple[datetime, datetime]:
    """The period after the one ending at ``end`` that holds ``now`` (or the next one,
    if ``now`` is before it)."""
    start = end
    for _ in range(MAX_SKIPPED_PERIODS):
        after = month_after(start)
        if after > now:
            return start, after
        start = after
    return start, month_after(start)


async def _renew(
    db: Database, settings: Settings, sub_id: str, now: datetime, done: Renewals
) -> None:
    async with db.sessionmaker() as session:
        await begin_write(session)
        sub = await session.scalar(
            select(Subscription)
            .where(Subscription.id == sub_id)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
        if sub is None or sub.status not in LIVE:
            await session.rollback()
            return
        if sub.status == ACTIVE and sub.period_end > now:  # renewed meanwhile
            await session.rollback()
            return
        plan = await session.get(ListingPlan, sub.plan_id)
        listing = await session.get(Listing, sub.listing_id)
        assert plan is not None and listing is not None
        if sub.status == PAST_DUE:
            await _retry(session, settings, sub, plan, listing, now, done)
            return
        if sub.cancel_at_period_end:
            sub.status, sub.ended_at, sub.ended_reason = ENDED, sub.period_end, "cancelled"
            sub.updated_at = now
            await subevents.tell(session, subevents.ENDED, sub, listing=listing, plan=plan, now=now)
            await session.commit()
            done.ended += 1
            return
        start, end = _period_holding(sub.period_end, now)
        rolled = await session.execute(
            update(Subscription)
            .where(
                Subscription.id == sub.id,
                Subscription.status == ACTIVE,
                Subscription.period_start == sub.period_start,
            )
            .values(period_start=start, period_end=end, updated_at=now)
            .execution_options(synchronize_session=False)
        )
        if rolled.rowcount != 1:  # type: ignore[attr-defined]
            await session.rollback()
            return
        await session.refresh(sub)
        done.rolled += 1
        told, charged = subevents.RENEWED, None
        if billed(plan, listing.currency):
            try:
                charge = await charge_fee(session, settings, sub, plan, listing, start, end)
            except PaymentDue:
                sub.status = PAST_DUE
                told = subevents.PAST_DUE
                done.past_due += 1
                log.info("subscription %s is past due: its wallet cannot pay", sub.id)
            else:
                done.charged += 1
                done.amount += charge.amount
                charged = charge.amount
        await _tell_renewal(session, told, sub, plan, listing, now, charged)
        await session.commit()


async def _retry(
    session: AsyncSession,
    settings: Settings,
    sub: Subscription,
    plan: ListingPlan,
    listing: Listing,
    now: datetime,
    done: Renewals,
) -> None:
    """A past-due subscription: its period's fee paid now (active again), or, its
    period over unpaid, ended."""
    if not billed(plan, listing.currency):  # (a plan without a fee is never past due; be safe)
        sub.status, sub.updated_at = ACTIVE, now
        await _tell_renewal(session, subevents.RENEWED, sub, plan, listing, now, None)
        await session.commit()
        return
    if sub.period_end <= now:
        sub.status, sub.ended_at, sub.ended_reason = ENDED, sub.period_end, "unpaid"
        sub.updated_at = now
        await subevents.tell(session, subevents.ENDED, sub, listing=listing, plan=plan, now=now)
        await session.commit()
        done.ended += 1
        return
    try:
        charge = await charge_fee(
            session, settings, sub, plan, listing, sub.period_start, sub.period_end
        )
    except PaymentDue:
        await session.rollback()
        return
    sub.status = ACTIVE
    sub.updated_at = now
    await _tell_renewal(session, subevents.RENEWED, sub, plan, listing, now, charge.amount)
    await session.commit()
    done.charged += 1
    done.amount += charge.amount


async def _tell_renewal(
    session: AsyncSession,
    event: EventType,
    sub: Subscription,
    plan: ListingPlan,
    listing: Listing,
    now: datetime,
    charged: Decimal | None,
) -> None:
    """``renewed`` (with the fee ``charged``, if any) or ``past_due`` (with the fee
    ``due``)."""
    currency = listing.currency
    extra = (
        {"charged": money_str(charged, currency)}
        if event == subevents.RENEWED
        else {"due": money_str(fee_of(plan, currency), currency)}
    )
    await subevents.tell(
        session, event, sub, listing=listing, plan=plan, now=now, currency=currency, **extra
    )


__all__ = [
    "CREDIT",
    "FEE",
    "Renewals",
    "billed",
    "charge_fee",
    "credit_unused",
    "fee_of",
    "renew_due",
]
