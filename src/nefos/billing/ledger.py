"""Wallets and their append-only ledger: the one place a balance moves.

``post`` changes a wallet's ``balance`` with one guarded ``UPDATE ... RETURNING``
and appends the entry in the same transaction, so the balance always equals the
sum of the entries. The guard (``balance + amount >= 0``) holds under any
concurrency: on PostgreSQL the row lock orders concurrent posts, on SQLite the
write transaction (``begin_write``) does. An entry's ``key`` is unique within its
wallet: a retried top-up or charge finds its first entry instead of posting twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.attributes import set_committed_value

from nefos.billing.money import ZERO, exact
from nefos.db.models import BillingAccount, LedgerEntry, Wallet
from nefos.db.types import new_id, utcnow
from nefos.domain.errors import PaymentRequired, ValidationFailed

KINDS = ("top_up", "charge", "refund", "adjustment", "payout", "revenue")
# The sign each kind's amount must have (adjustments go either way).
_SIGN = {"top_up": 1, "charge": -1, "refund": 1, "payout": -1, "revenue": 1}


@dataclass(frozen=True)
class Account:
    """An organisation's billing settings (``BillingAccount``) as plain values."""

    organisation_id: str
    currency: str
    margin_percent: Decimal
    low_balance_threshold: Decimal


def _insert(session: AsyncSession, model: Any) -> Any:
    dialect = session.get_bind().dialect.name
    return (postgresql if dialect == "postgresql" else sqlite).insert(model)


async def account(
    session: AsyncSession, org_id: str, *, currency: str, threshold: Decimal
) -> BillingAccount:
    """The organisation's billing account, made with the defaults on first use."""
    found = await session.get(BillingAccount, org_id)
    if found is not None:
        return found
    await session.execute(
        _insert(session, BillingAccount)
        .values(
            organisation_id=org_id,
            currency=currency,
            margin_percent=ZERO,
            low_balance_threshold=threshold,
            created_at=utcnow(),
            updated_at=utcnow(),
        )
        .on_conflict_do_nothing()
    )
    made = await session.get(BillingAccount, org_id)
    assert made is not None
    return made


async def wallet(
    session: AsyncSession,
    org_id: str,
    currency: str,
    *,
    signup_credit: Decimal = ZERO,
) -> Wallet:
    """The organisation's wallet in ``currency``, made on first use (with the signup
    credit, posted once: its key is fixed). Call inside a write transaction."""
    found = await session.scalar(
        select(Wallet).where(Wallet.organisation_id == org_id, Wallet.currency == currency)
    )
    if found is not None:
        return found
    now = utcnow()
    await session.execute(
        _insert(session, Wallet)
        .values(
            id=new_id(),
            organisation_id=org_id,
            currency=currency,
            balance=ZERO,
            created_at=now,
            updated_at=now,
        )
        .on_conflict_do_nothing()
    )
    made = await session.scalar(
        select(Wallet).where(Wallet.organisation_id == org_id, Wallet.currency == currency)
    )
    assert made is not None
    if signup_credit > 0:
        await post(
            session,
            made,
            "adjustment",
            signup_credit,
            key="signup-credit",
            description="Welcome credit",
        )
    return made


async def find_entry(session: AsyncSession, wallet_id: str, key: str) -> LedgerEntry | None:
    return await session.scalar(
        select(LedgerEntry).where(LedgerEntry.wallet_id == wallet_id, LedgerEntry.key == key)
    )


async def post(
    session: AsyncSession,
    target: Wallet,
    kind: str,
    amount: Decimal,
    *,
    key: str | None = None,
    description: str = "",
    reference: tuple[str, str] | None = None,
    created_by: str | None = None,
    allow_negative: bool = False,
    entry_id: str | None = None,
) -> LedgerEntry:
    """Move ``amount`` (signed: a charge is negative) in and out of ``target``.

    With ``key``, a second post with the same key returns the first entry and moves
    nothing. A post that would take the balance below zero raises PaymentRequired
    (unless ``allow_negative``). On PostgreSQL two concurrent posts with one new key
    both pass the lookup; the second's INSERT then violates the unique key and its
    transaction (with its UPDATE) rolls back: the caller retries and finds the first.
    The caller commits. ``entry_id``: the new entry's id, when the caller has already
    marked what the entry covers with it (in the same transaction).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown ledger kind {kind!r}")
    amount = exact(Decimal(amount))
    if amount == 0:
        raise ValidationFailed("An amount of zero moves nothing")
    sign = _SIGN.get(kind)
    if sign is not None and (amount > 0) != (sign > 0):
        raise ValueError(f"a {kind} has the wrong sign: {amount}")
    if key is not None:
        existing = await find_entry(session, target.id, key)
        if existing is not None:
            return existing
    guard = [Wallet.id == target.id]
    if not allow_negative and amount < 0:
        guard.append(Wallet.balance + amount >= 0)
    balance = await session.scalar(
        update(Wallet)
        .where(*guard)
        .values(balance=Wallet.balance + amount, updated_at=utcnow())
        .returning(Wallet.balance)
        .execution_options(synchronize_session=False)
    )
    if balance is None:
        current = await session.scalar(select(Wallet.balance).where(Wallet.id == target.id))
        raise PaymentRequired(
            "Insufficient wallet balance",
            wallet_id=target.id,
            balance=f"{current or ZERO:f}",
            required=f"{-amount:f}",
            currency=target.currency,
        )
    set_committed_value(target, "balance", balance)  # as the UPDATE left it
    entry = LedgerEntry(
        wallet_id=target.id,
        kind=kind,
        amount=amount,
        balance_after=balance,
        description=description,
        reference_kind=reference[0] if reference else None,
        reference_id=reference[1] if reference else None,
        key=key,
        created_by=created_by,
        created_at=utcnow(),
    )
    if entry_id is not None:
        entry.id = entry_id
    session.add(entry)
    await session.flush()
    return entry


async def ledger_sum(session: AsyncSession, wallet_id: str) -> Decimal:
    """The sum of the wallet's entries: what ``Wallet.balance`` must always equal."""
    total = await session.scalar(
        select(func.coalesce(func.sum(LedgerEntry.amount), 0)).where(
            LedgerEntry.wallet_id == wallet_id
        )
    )
    return Decimal(total or 0)
