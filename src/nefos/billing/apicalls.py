"""Charging marketplace calls: consumers pay for their priced calls, creators earn
their share (seed 002).

The gateway records every call with its price (``api_calls.price``; 0 within a free
quota or for an answer of 500 or more). The billing pass charges closed windows of
time, as usage-billing systems rate, and never rewrites a call:

- **The watermark.** Each consumer organisation and currency has one
  (``api_call_watermarks.charged_until``): its priced calls with ``created_at`` at or
  before it are charged, those after it are not. A pass charges the window
  ``watermark < created_at <= end`` with ``end`` the earliest of *now less the
  settling delay* (``NEFOS_MARKETPLACE_SETTLE_SECONDS``: a row is written, and
  committed, within it) and just before the oldest priced call of the organisation
  still in flight (it may yet be answered 5xx and cost nothing; one in flight for
  ``IN_FLIGHT_CHARGE_AFTER`` was forwarded by a process that died: it is charged as it
  stands). A row's ``created_at`` is when it is written; a 5xx call retried under its
  request id is taken back in flight with ``created_at`` moved to then, after any
  closed window.
- **The charge.** One aggregate of every account's window (a ``GROUP BY`` consumer,
  creator and currency, read outside any write transaction), then per account one
  short write transaction: the guarded ``UPDATE ... SET charged_until = :end WHERE
  charged_until = :as_read`` (two passes at once: one moves it, the other finds it
  moved and does nothing), the consumer's wallet debited by one ``charge`` entry
  (key ``apicalls:<start>/<end>``, unique in the wallet), each creator credited one
  ``revenue`` entry of its calls' total less the platform's fee
  (``NEFOS_MARKETPLACE_FEE_PERCENT``), and the window recorded
  (``api_call_windows``: its count, sum and each creator's part; its id is the
  charge's). A wallet that cannot pay rolls its account back: the watermark stays
  and the next pass tries a longer window. A window with no priced call is not
  charged and does not move the watermark.
- **The recount.** A row committed more than the settling delay after it was
  stamped (a stalled writer) may land in a window already charged. Each window is
  counted again once, ``NEFOS_MARKETPLACE_RECOUNT_SECONDS`` after it closed: a
  difference is charged to the consumer (or refunded), and each creator's share of
  it credited (or taken back), in the transaction that marks the window recounted
  (guarded, so once). So a call is charged exactly once if its row is committed
  within the recount delay of its stamp; a row committed later than that is never
  charged (the pass's transactions, and the gateway's, are far shorter).

Revenue is what payouts pay out (``services/payouts.py``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from sqlalchemy import ColumnElement, func, insert, literal, literal_column, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from nefos.billing import accounts, ledger
from nefos.billing.ledger import _insert
from nefos.billing.money import ZERO
from nefos.config import Settings
from nefos.db.models import (
    ApiCall,
    ApiCallWatermark,
    ApiCallWindow,
    Listing,
    ListingPlan,
    Subscription,
    Wallet,
)
from nefos.db.session import Database, begin_write
from nefos.db.types import UTCDateTime, new_id, utcnow
from nefos.domain.plans import CALL_IN_FLIGHT, IN_FLIGHT_CHARGE_AFTER

log = logging.getLogger("nefos.billing.apicalls")

#: The watermark of an account that has never been charged.
NEVER = datetime(1970, 1, 1, tzinfo=UTC)
#: A window ends just before a call in flight (timestamps are kept to the microsecond).
TICK = timedelta(microseconds=1)
#: Accounts (consumer organisation, currency) one aggregate covers.
ACCOUNTS_PER_QUERY = 500
#: Accounts charged in one write transaction (on SQLite the gateway's writes wait
#: for it).
ACCOUNTS_PER_CHARGE = 200
#: Accounts one pass charges at most (the next pass goes on).
MAX_ACCOUNTS = 20_000
#: Where this process's next pass starts among the consumer organisations, when its
#: last one stopped at MAX_ACCOUNTS.
_resume_after = ""
#: Calls in flight one pass reads at most (more: every window ends before the last).
MAX_IN_FLIGHT = 100_000
#: Windows one pass recounts at most.
RECOUNT_LIMIT = 1000

Parts = dict[str, tuple[int, Decimal]]


def creator_share(total: Decimal, fee_percent: Decimal) -> Decimal:
    """What the creator earns of ``total``: all of it less the platform's fee."""
    return total - total * fee_percent / Decimal(100)


@dataclass
class _Window:
    org_id: str
    currency: str
    start: datetime
    end: datetime
    parts: Parts = field(default_factory=dict)
    id: str = ""


def charged_until(org_id: object, currency: object) -> ColumnElement[datetime]:
    """SQL: the watermark of the account (organisation, currency), ``NEVER`` if it
    has none: its priced calls are charged if and only if at or before it."""
    return func.coalesce(
        select(ApiCallWatermark.charged_until)
        .where(
            ApiCallWatermark.organisation_id == org_id,
            ApiCallWatermark.currency == currency,
        )
        .scalar_subquery(),
        literal(NEVER, UTCDateTime()),
    )


async def charge_calls(
    db: Database, settings: Settings, now: datetime | None = None
) -> tuple[int, Decimal]:
    """Recount the windows due, then charge every account's closed window: (ledger
    charges posted, their net sum)."""
    now = now or utcnow()
    posted, total = await recount(db, settings, now)
    cut = now - timedelta(seconds=settings.marketplace_settle_seconds)
    windows = await _windows(db, now, cut)
    for i in range(0, len(windows), ACCOUNTS_PER_CHARGE):
        amounts = await _charge_chunk(db, settings, windows[i : i + ACCOUNTS_PER_CHARGE])
        posted += len(amounts)
        total += sum(amounts, ZERO)
    return posted, total


async def _windows(db: Database, now: datetime, cut: datetime) -> list[_Window]:
    """Every account's window closed at ``cut`` with its priced calls by creator."""
    stale = now - IN_FLIGHT_CHARGE_AFTER
    async with db.sessionmaker() as session:
        # The accounts: a consumer's subscriptions' currencies, at most MAX_ACCOUNTS
        # a pass, from where this process's last pass stopped.
        global _resume_after
        accounts_of = list(
            (
                await session.execute(
                    select(Subscription.organisation_id, Listing.currency)
                    .join(Listing, Listing.id == Subscription.listing_id)
                    .where(Subscription.organisation_id > _resume_after)
                    .distinct()
                    .order_by(Subscription.organisation_id, Listing.currency)
                    .limit(MAX_ACCOUNTS + 1)
                )
            ).all()
        )
        if len(accounts_of) > MAX_ACCOUNTS:
            # (The last organisation whole: the next pass starts after the one before.)
            last = accounts_of[-1][0]
            accounts_of = [a for a in accounts_of if a[0] != last]
            _resume_after = accounts_of[-1][0] if accounts_of else last
        else:
            _resume_after = ""
        if not accounts_of:
            return []
        marks = {
            (org, cur): at
            for org, cur, at in (
                await session.execute(
                    select(
                        ApiCallWatermark.organisation_id,
                        ApiCallWatermark.currency,
                        ApiCallWatermark.charged_until,
                    ).where(
                        ApiCallWatermark.organisation_id >= accounts_of[0][0],
                        ApiCallWatermark.organisation_id <= accounts_of[-1][0],
                    )
                )
            ).all()
        }
        # The oldest priced call still in flight of each organisation: the few rows
        # of ix_api_calls_in_flight, oldest first.
        flying = (
            await session.execute(
                select(ApiCall.organisation_id, ApiCall.created_at)
                .where(
                    # (A literal, so that the partial index serves it.)
                    ApiCall.status == literal_column(str(CALL_IN_FLIGHT)),
                    ApiCall.created_at >= stale,
                    ApiCall.price > 0,
                )
                .order_by(ApiCall.created_at)
                .limit(MAX_IN_FLIGHT)
            )
        ).all()
        held: dict[str, datetime] = {}
        for org, at in flying:
            held.setdefault(org, at)
        if len(flying) == MAX_IN_FLIGHT:
            # More in flight than read: no window ends past the last one read.
            cut = min(cut, flying[-1][1] - TICK)
        windows: dict[tuple[str, str], _Window] = {}
        for org, cur in accounts_of:
            start = marks.get((org, cur), NEVER)
            end = cut if org not in held else min(cut, held[org] - TICK)
            if end > start:
                windows[(org, cur)] = _Window(org, cur, start, end)
        # Accounts mostly share one window (from the last pass's end to this one's):
        # one aggregate per span and chunk of organisations.
        spans: dict[tuple[datetime, datetime], list[str]] = {}
        for w in windows.values():
            orgs = spans.setdefault((w.start, w.end), [])
            if not orgs or orgs[-1] != w.org_id:
                orgs.append(w.org_id)
        for (lo, hi), org_ids in sorted(spans.items()):
            for i in range(0, len(org_ids), ACCOUNTS_PER_QUERY):
                rows = await session.execute(
                    select(
                        ApiCall.organisation_id,
                        Listing.currency,
                        Listing.organisation_id,
                        func.count(),
                        func.sum(ApiCall.price),
                    )
                    .join(ListingPlan, ListingPlan.id == ApiCall.plan_id)
                    .join(Listing, Listing.id == ListingPlan.listing_id)
                    .where(
                        ApiCall.organisation_id.in_(org_ids[i : i + ACCOUNTS_PER_QUERY]),
                        ApiCall.created_at > lo,
                        ApiCall.created_at <= hi,
                        ApiCall.price > 0,
                    )
                    .group_by(ApiCall.organisation_id, Listing.currency, Listing.organisation_id)
                )
                for org, cur, creator, count, gross in rows.all():
                    window = windows.get((org, cur))
                    # (An organisation's account in another currency may have
                    # another span: its calls are counted in that span's aggregate.)
                    if window is not None and (window.start, window.end) == (lo, hi):
                        window.parts[creator] = (int(count), Decimal(gross))
    return [w for w in windows.values() if w.parts]


async def _charge_chunk(db: Database, settings: Settings, chunk: list[_Window]) -> list[Decimal]:
    """Charge accounts' windows in one write transaction: the amounts charged. A
    window whose watermark another pass has moved, or whose wallet cannot pay, is
    left (its account untouched)."""
    now = utcnow()
    async with db.sessionmaker() as session:
        await begin_write(session)
        new = [w for w in chunk if w.start == NEVER]
        if new:
            await session.execute(
                _insert(session, ApiCallWatermark).on_conflict_do_nothing(),
                [
                    {
                        "organisation_id": w.org_id,
                        "currency": w.currency,
                        "charged_until": NEVER,
                        "updated_at": now,
                    }
                    for w in new
                ],
            )
        # The watermarks locked, in order (so two passes cannot deadlock on them),
        # and checked: those another pass has moved since they were read are its.
        orgs = sorted({w.org_id for w in chunk})
        marks = {
            (org, cur): at
            for org, cur, at in (
                await session.execute(
                    select(
                        ApiCallWatermark.organisation_id,
                        ApiCallWatermark.currency,
                        ApiCallWatermark.charged_until,
                    )
                    .where(ApiCallWatermark.organisation_id.in_(orgs))
                    .order_by(ApiCallWatermark.organisation_id, ApiCallWatermark.currency)
                    .with_for_update()
                )
            ).all()
        }
        mine = [w for w in chunk if marks.get((w.org_id, w.currency)) == w.start]
        if not mine:
            await session.rollback()
            return []
        wallets = await _wallets(
            session,
            settings,
            {(w.org_id, w.currency) for w in mine}
            | {(creator, w.currency) for w in mine for creator in w.parts},
        )
        groups: list[list[ledger.Move]] = []
        for w in mine:
            w.id = new_id()
            amount = sum((gross for _, gross in w.parts.values()), ZERO)
            calls = sum(count for count, _ in w.parts.values())
            moves = [
                ledger.Move(
                    wallets[(w.org_id, w.currency)],
                    "charge",
                    -amount,
                    key=f"apicalls:{w.start.isoformat()}/{w.end.isoformat()}",
                    description=f"{calls} API calls through the marketplace",
                    reference=("api_call_windows", w.id),
                    entry_id=w.id,
                )
            ]
            for creator, (_, gross) in sorted(w.parts.items()):
                share = creator_share(gross, settings.marketplace_fee_percent)
                if share > 0:
                    moves.append(
                        ledger.Move(
                            wallets[(creator, w.currency)],
                            "revenue",
                            share,
                            key=f"apirevenue:{w.id}",
                            description="Marketplace calls, less the platform's fee",
                            reference=("api_call_windows", w.id),
                        )
                    )
            groups.append(moves)
        posted = await ledger.post_groups(session, groups)
        charged = [w for w, ok in zip(mine, posted, strict=True) if ok]
        for w, ok in zip(mine, posted, strict=True):
            if not ok:
                log.info("organisation %s cannot cover its API calls yet", w.org_id)
        if charged:
            await session.execute(
                update(ApiCallWatermark),
                [
                    {
                        "organisation_id": w.org_id,
                        "currency": w.currency,
                        "charged_until": w.end,
                        "updated_at": now,
                    }
                    for w in charged
                ],
            )
            await session.execute(
                insert(ApiCallWindow),
                [
                    {
                        "id": w.id,
                        "organisation_id": w.org_id,
                        "currency": w.currency,
                        "charged_after": w.start,
                        "charged_until": w.end,
                        "calls": sum(count for count, _ in w.parts.values()),
                        "amount": sum((gross for _, gross in w.parts.values()), ZERO),
                        "parts": _parts_json(w.parts),
                        "recounted_at": None,
                        "created_at": now,
                    }
                    for w in charged
                ],
            )
        await session.commit()
    return [sum((gross for _, gross in w.parts.values()), ZERO) for w in charged]


async def _wallets(
    session: AsyncSession, settings: Settings, wanted: set[tuple[str, str]]
) -> dict[tuple[str, str], str]:
    """The ids of the wallets (organisation, currency), made on first use."""
    out: dict[tuple[str, str], str] = {}
    orgs = sorted({org for org, _ in wanted})
    for i in range(0, len(orgs), ACCOUNTS_PER_QUERY):
        rows = await session.execute(
            select(Wallet.organisation_id, Wallet.currency, Wallet.id).where(
                Wallet.organisation_id.in_(orgs[i : i + ACCOUNTS_PER_QUERY])
            )
        )
        out.update({(org, cur): wallet_id for org, cur, wallet_id in rows.all()})
    for org, cur in sorted(wanted - set(out)):
        out[(org, cur)] = (await accounts.wallet(session, settings, org, cur)).id
    return out


async def _post_difference(
    session: AsyncSession,
    settings: Settings,
    org_id: str,
    currency: str,
    diff: Parts,
    window_id: str,
    description: str,
) -> None:
    """Move what a recount found (each creator's calls and gross more, or less,
    than the window charged) out of the consumer's wallet and into the creators'
    (less the fee); or back, when less."""
    amount = sum((gross for _, gross in diff.values()), ZERO)
    wallet = await accounts.wallet(session, settings, org_id, currency)
    if amount != 0:
        await ledger.post(
            session,
            wallet,
            "charge" if amount > 0 else "refund",
            -amount,
            key=f"apicalls-recount:{window_id}",
            description=description,
            reference=("api_call_windows", window_id),
            # Calls already forwarded: owed even past the balance.
            allow_negative=True,
        )
    for creator, (_, gross) in sorted(diff.items()):
        share = creator_share(gross, settings.marketplace_fee_percent)
        if share == 0:
            continue
        target = await accounts.wallet(session, settings, creator, currency)
        await ledger.post(
            session,
            target,
            "revenue" if share > 0 else "adjustment",
            share,
            key=f"apirevenue-recount:{window_id}",
            description="Marketplace calls written late, less the platform's fee",
            reference=("api_call_windows", window_id),
            allow_negative=True,
        )


def _parts_json(parts: Parts) -> dict[str, list[object]]:
    return {creator: [count, f"{gross:f}"] for creator, (count, gross) in parts.items()}


def _parts_of(raw: dict[str, list[object]]) -> Parts:
    return {
        creator: (int(str(count)), Decimal(str(gross))) for creator, (count, gross) in raw.items()
    }


async def recount(db: Database, settings: Settings, now: datetime) -> tuple[int, Decimal]:
    """Count once more the windows closed ``marketplace_recount_seconds`` ago and not
    recounted yet; charge or credit what changed: (entries posted, their net sum)."""
    due = now - timedelta(seconds=settings.marketplace_recount_seconds)
    async with db.sessionmaker() as session:
        found = (
            await session.execute(
                select(
                    ApiCallWindow.id,
                    ApiCallWindow.organisation_id,
                    ApiCallWindow.currency,
                    ApiCallWindow.charged_after,
                    ApiCallWindow.charged_until,
                    ApiCallWindow.parts,
                )
                .where(ApiCallWindow.recounted_at.is_(None), ApiCallWindow.charged_until < due)
                .order_by(ApiCallWindow.charged_until)
                .limit(RECOUNT_LIMIT)
            )
        ).all()
    posted, total = 0, ZERO
    for window_id, org_id, currency, start, end, raw in found:
        async with db.sessionmaker() as session:
            await begin_write(session)
            marked = await session.execute(
                update(ApiCallWindow)
                .where(ApiCallWindow.id == window_id, ApiCallWindow.recounted_at.is_(None))
                .values(recounted_at=now)
                .execution_options(synchronize_session=False)
            )
            if not marked.rowcount:  # type: ignore[attr-defined]
                await session.rollback()  # another pass recounted it
                continue
            counted = await window_parts(session, org_id, currency, start, end)
            before = _parts_of(raw)
            diff: Parts = {}
            for creator in {*before, *counted}:
                n0, g0 = before.get(creator, (0, ZERO))
                n1, g1 = counted.get(creator, (0, ZERO))
                if (n0, g0) != (n1, g1):
                    diff[creator] = (n1 - n0, g1 - g0)
            if diff:
                delta = sum((g for _, g in diff.values()), ZERO)
                calls = sum(n for n, _ in counted.values())
                log.warning(
                    "window %s of organisation %s recounted: %s more to charge",
                    window_id,
                    org_id,
                    delta,
                )
                await session.execute(
                    update(ApiCallWindow)
                    .where(ApiCallWindow.id == window_id)
                    .values(
                        calls=calls,
                        amount=sum((g for _, g in counted.values()), ZERO),
                        parts=_parts_json(counted),
                    )
                    .execution_options(synchronize_session=False)
                )
                await _post_difference(
                    session,
                    settings,
                    org_id,
                    currency,
                    diff,
                    window_id,
                    f"API calls through the marketplace written late "
                    f"({start:%Y-%m-%d %H:%M:%S} to {end:%Y-%m-%d %H:%M:%S})",
                )
                if delta != 0:
                    posted += 1
                    total += delta
            await session.commit()
    return posted, total


async def window_parts(
    session: AsyncSession, org_id: str, currency: str, start: datetime, end: datetime
) -> Parts:
    """The organisation's priced calls in ``currency`` with ``start < created_at <=
    end``, by creator: (count, sum)."""
    rows = await session.execute(
        select(Listing.organisation_id, func.count(), func.sum(ApiCall.price))
        .join(ListingPlan, ListingPlan.id == ApiCall.plan_id)
        .join(Listing, Listing.id == ListingPlan.listing_id)
        .where(
            ApiCall.organisation_id == org_id,
            ApiCall.created_at > start,
            ApiCall.created_at <= end,
            ApiCall.price > 0,
            Listing.currency == currency,
        )
        .group_by(Listing.organisation_id)
    )
    return {creator: (int(count), Decimal(gross)) for creator, count, gross in rows.all()}
