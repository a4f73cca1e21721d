"""Wallets and their append-only ledger: the one place a balance moves.

``post`` changes a wallet's ``balance`` with one guarded ``UPDATE ... RETURNING``
and appends the entry in the same transaction, so the balance always equals the
sum of the entries. The guard (``balance + amount >= 0``) holds under any
concurrency: on PostgreSQL the row lock orders concurrent posts, on SQLite the
write transaction (``begin_write``) does. An entry's ``key`` is unique within its
wallet: a retried top-up or charge finds its first entry instead of posting twice.

``post_groups`` posts many movements at once (the billing pass's charges of many
accounts): the wallets locked and read in one statement, each group of movements
all or nothing under the same guard, one ``UPDATE`` per wallet moved and one
``INSERT`` of the entries.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import func, insert, select, update
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


@dataclass(frozen=True)
class Move:
    """One movement for ``post_groups``: what ``post`` takes, with the wallet's id."""

    wallet_id: str
    kind: str
    amount: Decimal
    key: str
    description: str = ""
    reference: tuple[str, str] | None = None
    allow_negative: bool = False
    entry_id: str | None = None


#: Wallets (and keys) one look-up names at most.
_IN_LIMIT = 500


async def post_groups(session: AsyncSession, groups: Sequence[Sequence[Move]]) -> list[bool]:
    """Post each group of movements, in order, all of it or none of it: whether each
    was posted (a movement whose key its wallet has already is a no-op, as in
    ``post``). A group is refused when one of its movements would take its wallet
    below zero (unless ``allow_negative``). The wallets are locked (``FOR UPDATE``,
    in id order: concurrent callers cannot deadlock on them; on SQLite the write
    transaction the caller began does it) and read once; each moved wallet gets one
    ``UPDATE`` to its new balance, and the entries one ``INSERT``, so the balance
    still equals the sum of the entries. The caller commits."""
    ids = sorted({m.wallet_id for g in groups for m in g})
    balances: dict[str, Decimal] = {}
    known: set[tuple[str, str]] = set()
    wanted = {(m.wallet_id, m.key) for g in groups for m in g}
    for i in range(0, len(ids), _IN_LIMIT):
        chunk = ids[i : i + _IN_LIMIT]
        rows = await session.execute(
            select(Wallet.id, Wallet.balance)
            .where(Wallet.id.in_(chunk))
            .order_by(Wallet.id)
            .with_for_update()
        )
        balances.update({wallet_id: Decimal(b) for wallet_id, b in rows.all()})
        in_chunk = set(chunk)
        keys = sorted({m.key for g in groups for m in g if m.wallet_id in in_chunk})
        for j in range(0, len(keys), _IN_LIMIT):
            found = await session.execute(
                select(LedgerEntry.wallet_id, LedgerEntry.key).where(
                    LedgerEntry.wallet_id.in_(chunk), LedgerEntry.key.in_(keys[j : j + _IN_LIMIT])
                )
            )
            known.update((w, str(k)) for w, k in found.all() if (w, k) in wanted)
    missing = set(ids) - set(balances)
    if missing:
        raise ValueError(f"no wallet {sorted(missing)[0]}")
    now = utcnow()
    entries: list[dict[str, Any]] = []
    moved: set[str] = set()
    posted: list[bool] = []
    for group in groups:
        after = dict(balances)
        rows_of: list[dict[str, Any]] = []
        taken: set[tuple[str, str]] = set()
        ok = True
        for m in group:
            if m.kind not in KINDS:
                raise ValueError(f"unknown ledger kind {m.kind!r}")
            amount = exact(Decimal(m.amount))
            sign = _SIGN.get(m.kind)
            if amount == 0 or (sign is not None and (amount > 0) != (sign > 0)):
                raise ValueError(f"a {m.kind} of {amount} moves nothing or the wrong way")
            if (m.wallet_id, m.key) in known or (m.wallet_id, m.key) in taken:
                continue
            balance = after[m.wallet_id] + amount
            if amount < 0 and balance < 0 and not m.allow_negative:
                ok = False
                break
            after[m.wallet_id] = balance
            taken.add((m.wallet_id, m.key))
            rows_of.append(
                {
                    "id": m.entry_id or new_id(),
                    "wallet_id": m.wallet_id,
                    "kind": m.kind,
                    "amount": amount,
                    "balance_after": balance,
                    "description": m.description,
                    "reference_kind": m.reference[0] if m.reference else None,
                    "reference_id": m.reference[1] if m.reference else None,
                    "key": m.key,
                    "created_by": None,
                    "created_at": now,
                }
            )
        posted.append(ok)
        if ok:
            balances = after
            known |= taken
            entries += rows_of
            moved.update(r["wallet_id"] for r in rows_of)
    if moved:
        await session.execute(
            update(Wallet),
            [{"id": w, "balance": balances[w], "updated_at": now} for w in sorted(moved)],
        )
        await session.execute(insert(LedgerEntry), entries)
    return posted


async def ledger_sum(session: AsyncSession, wallet_id: str) -> Decimal:
    """The sum of the wallet's entries: what ``Wallet.balance`` must always equal."""
    total = await session.scalar(
        select(func.coalesce(func.sum(LedgerEntry.amount), 0)).where(
            LedgerEntry.wallet_id == wallet_id
        )
    )
    return Decimal(total or 0)
