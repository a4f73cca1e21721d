"""The wallet ledger on SQLite and PostgreSQL: the balance is always the sum of the
entries, never below zero, an idempotency key posts once, entries never change,
and concurrent charges against one wallet admit exactly what the balance covers."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError

from nefos.billing import ledger
from nefos.config import async_database_url
from nefos.db.models import LedgerEntry, Organisation, Wallet
from nefos.db.session import Database, begin_write
from nefos.domain.errors import PaymentRequired
from tests.conftest import DatabaseFactory

D = Decimal


@pytest.fixture(scope="module")
async def db(databases: DatabaseFactory) -> AsyncIterator[Database]:
    url = await asyncio.to_thread(databases.new_url)
    database = Database(async_database_url(url))
    await database.migrate()
    yield database
    await database.dispose()


async def new_wallet(db: Database, opening: Decimal = D(0)) -> str:
    async with db.sessionmaker() as session:
        await begin_write(session)
        org = Organisation(name="t", slug=f"t-{uuid.uuid4().hex[:12]}")
        session.add(org)
        await session.flush()
        wallet = await ledger.wallet(session, org.id, "USD", signup_credit=opening)
        await session.commit()
        return wallet.id


async def balance_and_sum(db: Database, wallet_id: str) -> tuple[Decimal, Decimal]:
    async with db.sessionmaker() as session:
        balance = await session.scalar(select(Wallet.balance).where(Wallet.id == wallet_id))
        assert balance is not None
        return balance, await ledger.ledger_sum(session, wallet_id)


async def post(
    db: Database, wallet_id: str, kind: str, amount: Decimal, key: str | None = None
) -> LedgerEntry:
    async with db.sessionmaker() as session:
        await begin_write(session)
        wallet = await session.get(Wallet, wallet_id)
        assert wallet is not None
        try:
            entry = await ledger.post(session, wallet, kind, amount, key=key)
        except BaseException:
            await session.rollback()
            raise
        await session.commit()
        return entry


# Amounts as money is written: up to nine places (what the database keeps).
amounts = st.decimals(min_value=D("0.000000001"), max_value=D("5000"), places=9)
ops = st.lists(
    st.tuples(
        st.sampled_from(["top_up", "charge", "refund", "adjustment+", "adjustment-"]),
        amounts,
        st.sampled_from([None, "k1", "k2", "k3"]),
    ),
    min_size=1,
    max_size=12,
)


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(sequence=ops)
async def test_the_balance_is_the_sum_of_the_ledger_after_every_operation(db, sequence):
    wallet_id = await new_wallet(db)
    model = D(0)
    keys: dict[str, Decimal] = {}
    for kind, amount, key in sequence:
        signed = -amount if kind in ("charge", "adjustment-") else amount
        real_kind = kind.rstrip("+-")
        if key is not None and key in keys:
            # A replay: the first entry comes back and nothing moves.
            entry = await post(db, wallet_id, real_kind, signed, key)
            assert entry.amount == keys[key]
        elif model + signed < 0:
            with pytest.raises(PaymentRequired):
                await post(db, wallet_id, real_kind, signed, key)
        else:
            entry = await post(db, wallet_id, real_kind, signed, key)
            assert entry.amount == signed and entry.balance_after == model + signed
            model += signed
            if key is not None:
                keys[key] = signed
        balance, total = await balance_and_sum(db, wallet_id)
        assert balance == total == model
        assert balance >= 0


async def test_fifty_concurrent_charges_admit_what_the_balance_covers(db):
    wallet_id = await new_wallet(db, D("100.00"))
    outcomes = await asyncio.gather(
        *(post(db, wallet_id, "charge", D("-3.00")) for _ in range(50)), return_exceptions=True
    )
    admitted = [o for o in outcomes if isinstance(o, LedgerEntry)]
    refused = [o for o in outcomes if isinstance(o, PaymentRequired)]
    assert len(admitted) + len(refused) == 50, [o for o in outcomes if isinstance(o, Exception)]
    assert len(admitted) == 33
    balance, total = await balance_and_sum(db, wallet_id)
    assert balance == total == D("100.00") - 33 * D("3.00") == D("1.00")
    # Every entry's balance_after is distinct: each saw the one before it.
    assert len({e.balance_after for e in admitted}) == 33


async def test_one_key_posts_once_under_concurrency(db):
    wallet_id = await new_wallet(db)

    async def attempt() -> str:
        for _ in range(20):
            try:
                return (await post(db, wallet_id, "top_up", D("25.00"), "same-key")).id
            except DBAPIError:  # the unique key refused a concurrent twin: look again
                await asyncio.sleep(0.01)
        raise AssertionError("never settled")

    ids = await asyncio.gather(*(attempt() for _ in range(20)))
    assert len(set(ids)) == 1
    balance, total = await balance_and_sum(db, wallet_id)
    assert balance == total == D("25.00")


async def test_entries_are_append_only(db):
    wallet_id = await new_wallet(db, D("5.00"))
    async with db.sessionmaker() as session:
        await begin_write(session)
        with pytest.raises(DBAPIError, match="append-only"):
            await session.execute(
                text("UPDATE ledger_entries SET description = 'x' WHERE wallet_id = :w"),
                {"w": wallet_id},
            )
        await session.rollback()


async def test_amounts_are_exact_on_both_databases(db):
    wallet_id = await new_wallet(db)
    for _ in range(10):
        await post(db, wallet_id, "top_up", D("0.1"))
    await post(db, wallet_id, "charge", D("-0.000000001"))
    balance, total = await balance_and_sum(db, wallet_id)
    assert balance == total == D("0.999999999")


async def post_groups(db: Database, groups: list[list[ledger.Move]]) -> list[bool]:
    async with db.sessionmaker() as session:
        await begin_write(session)
        posted = await ledger.post_groups(session, groups)
        await session.commit()
        return posted


async def test_groups_post_all_or_nothing_once_and_keep_the_balance_the_sum(db):
    payer, payee = await new_wallet(db, D("10.00")), await new_wallet(db)

    def group(n: int, amount: str, credit: str) -> list[ledger.Move]:
        return [
            ledger.Move(payer, "charge", -D(amount), key=f"c{n}"),
            ledger.Move(payee, "revenue", D(credit), key=f"r{n}"),
        ]

    # The second would take the payer below zero: refused whole (the payee's too).
    got = await post_groups(db, [group(1, "6", "5"), group(2, "6", "5"), group(3, "4", "3")])
    assert got == [True, False, True]
    assert await balance_and_sum(db, payer) == (D(0), D(0))
    assert await balance_and_sum(db, payee) == (D(8), D(8))
    # Posted again: the keys are there, nothing moves.
    assert await post_groups(db, [group(1, "6", "5")]) == [True]
    assert await balance_and_sum(db, payee) == (D(8), D(8))
    async with db.sessionmaker() as session:
        entries = (
            await session.scalars(
                select(LedgerEntry)
                .where(LedgerEntry.wallet_id == payee)
                .order_by(LedgerEntry.balance_after)
            )
        ).all()
    assert [(e.key, e.amount, e.balance_after) for e in entries] == [
        ("r1", D(5), D(5)),
        ("r3", D(3), D(8)),
    ]


async def test_concurrent_groups_admit_what_the_balance_covers(db):
    payer, payee = await new_wallet(db, D("10.00")), await new_wallet(db)
    outcomes = await asyncio.gather(
        *(
            post_groups(
                db,
                [
                    [
                        ledger.Move(payer, "charge", -D(3), key=f"c{i}"),
                        ledger.Move(payee, "revenue", D(2), key=f"r{i}"),
                    ]
                ],
            )
            for i in range(8)
        )
    )
    assert sum(o == [True] for o in outcomes) == 3
    assert await balance_and_sum(db, payer) == (D(1), D(1))
    assert await balance_and_sum(db, payee) == (D(6), D(6))
