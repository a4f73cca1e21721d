"""An organisation's money as the rest of Nefos asks about it: its billing account and
wallet (made with the process's defaults on first use), its reseller's margin, what
its uncharged usage costs, and whether it may spend at all.

Services call these (creates and starts check funds, quotes refund, the wallet view
shows what is pending); the billing pass calls them too. They take the process's
``Settings`` for the defaults and nothing above billing, so billing never imports a
service.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from decimal import Decimal
from typing import Protocol

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from nefos.billing import catalogue, ledger, metering
from nefos.billing.calllog import CallLog
from nefos.billing.money import ZERO, exact, minor_str
from nefos.billing.rating import record_cost
from nefos.config import Settings
from nefos.db.models import BillingAccount, Organisation, UsageRecord, Wallet
from nefos.db.session import Database
from nefos.db.types import utcnow
from nefos.domain.access import OrgKind
from nefos.domain.errors import PaymentRequired


class BillingParts(Protocol):
    """What the billing pass and the invoice run use of the process (the composition
    root hands them these; ``Core`` has both)."""

    @property
    def settings(self) -> Settings: ...
    @property
    def db(self) -> Database: ...
    @property
    def calls(self) -> CallLog: ...


async def account(session: AsyncSession, settings: Settings, org_id: str) -> BillingAccount:
    """The organisation's account, made with the defaults on first use (the caller
    commits)."""
    return await ledger.account(
        session,
        org_id,
        currency=settings.billing_currency,
        threshold=settings.billing_low_balance_threshold,
    )


async def wallet(
    session: AsyncSession, settings: Settings, org_id: str, currency: str | None = None
) -> Wallet:
    """The organisation's wallet (in its account's currency by default), made with the
    signup credit on first use. Opens (and leaves open) a write transaction when it
    has to make one; the caller commits."""
    currency = currency or (await account(session, settings, org_id)).currency
    found = await session.scalar(
        select(Wallet).where(Wallet.organisation_id == org_id, Wallet.currency == currency)
    )
    if found is not None:
        return found
    return await ledger.wallet(
        session, org_id, currency, signup_credit=settings.billing_signup_credit
    )


async def margin_of(
    session: AsyncSession, org: Organisation
) -> tuple[Decimal, Organisation | None]:
    """The margin (percent) the organisation's reseller puts on its prices, and that
    reseller (None: no parent reseller, margin 0)."""
    if org.parent_id is None:
        return Decimal(0), None
    parent = await session.get(Organisation, org.parent_id)
    if parent is None or parent.kind != OrgKind.RESELLER:
        return Decimal(0), None
    found = await session.get(BillingAccount, parent.id)
    return (found.margin_percent if found else Decimal(0)), parent


async def usage_cost(
    session: AsyncSession, currency: str, records: Sequence[UsageRecord], margin: Decimal
) -> tuple[Decimal, Decimal]:
    """(base, margin) of ``records`` at nine places, each with the prices in force at
    its start."""
    start = min(r.started_at for r in records)
    end = max(r.started_at for r in records) + timedelta(seconds=1)
    book = await catalogue.price_book(session, currency, start, end)
    base, markup = ZERO, ZERO
    for r in records:
        b, m = record_cost(r, book, margin)
        base += b
        markup += m
    return exact(base), exact(markup)


async def mark_charged(session: AsyncSession, ids: list[str], charge_id: str) -> int:
    """Mark the usage records ``ids`` as charged by ``charge_id`` (a ledger entry, or
    ``free:...`` for usage waived), those not charged yet only; how many were."""
    marked = 0
    for i in range(0, len(ids), 500):
        chunk = ids[i : i + 500]
        done = await session.execute(
            update(UsageRecord)
            .where(UsageRecord.id.in_(chunk), UsageRecord.charge_id.is_(None))
            .values(charge_id=charge_id)
            .execution_options(synchronize_session=False)
        )
        marked += done.rowcount  # type: ignore[attr-defined]
    return marked


async def pending_cost(session: AsyncSession, org_id: str, currency: str) -> Decimal:
    """What the organisation's usage not yet charged costs: the records waiting (a
    wallet that could not cover them) and the spans open until now."""
    records = [
        *(
            await session.scalars(
                select(UsageRecord).where(
                    UsageRecord.organisation_id == org_id, UsageRecord.charge_id.is_(None)
                )
            )
        ).all(),
        *await metering.open_spans(session, org_id, utcnow()),
    ]
    if not records:
        return ZERO
    org = await session.get(Organisation, org_id)
    margin = ZERO if org is None else (await margin_of(session, org))[0]
    base, markup = await usage_cost(session, currency, records, margin)
    return base + markup


async def require_funds(session: AsyncSession, settings: Settings, org_id: str) -> None:
    """Refuse (402) to make or start anything for an organisation whose wallet is
    empty (or whose usage it can no longer cover: the engine marks it depleted)."""
    if not settings.billing_enabled:
        return
    found = await session.get(BillingAccount, org_id)
    currency = found.currency if found else settings.billing_currency
    balance = await session.scalar(
        select(Wallet.balance).where(Wallet.organisation_id == org_id, Wallet.currency == currency)
    )
    if balance is None:  # no wallet yet: it will open with the signup credit
        balance = settings.billing_signup_credit
    if balance <= 0 or (found is not None and found.depleted_since is not None):
        raise PaymentRequired(
            "The organisation's wallet is empty; top it up to create or start instances",
            organisation_id=org_id,
            balance=minor_str(balance, currency),
            currency=currency,
        )


__all__ = [
    "BillingParts",
    "account",
    "margin_of",
    "mark_charged",
    "pending_cost",
    "require_funds",
    "usage_cost",
    "wallet",
]
