"""Earnings and payouts (seed 002), and the wallet seen as seed 002 sees it: the
revenue overview, the transactions and the "subscription".

An organisation earns ``revenue`` ledger entries: the billing engine credits a
reseller with its margin on each of its child organisations' charges, and the
marketplace will credit API creators the same way. Its available earnings are its
revenue less what it has had paid out (a rejected payout gives its amount back),
and never more than its balance. A payout request debits the wallet at once (a
``payout`` entry keyed ``payout:<id>``) and waits, ``pending``, for a platform
admin to settle it (``paid``: the money left by bank transfer or the like) or to
reject it (an ``adjustment`` keyed ``payout-reject:<id>`` gives the amount back).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from nefos.billing import ledger
from nefos.billing.money import ZERO, check_currency, money_str, parse_amount
from nefos.billing.periods import period_bounds
from nefos.db.models import BillingAccount, LedgerEntry, Organisation, Payout, Wallet
from nefos.db.session import begin_write
from nefos.db.types import new_id, utcnow
from nefos.domain.access import Permission
from nefos.domain.errors import Conflict, Forbidden, NotFound, ValidationFailed
from nefos.domain.paging import PageParams
from nefos.schemas.billing import PayoutRequest
from nefos.services.billing import BillingService, entry_public
from nefos.services.core import Core
from nefos.services.paging import fetch_page
from nefos.services.principal import Principal, authorize_org
from nefos.services.products import ProductService, account_status

PENDING, PAID, REJECTED = "pending", "paid", "rejected"


# --- earnings ----------------------------------------------------------------------------
async def earnings(session: AsyncSession, wallet_id: str) -> Decimal:
    """The wallet's revenue entries less its payout entries (those of rejected payouts
    left out: their amount came back). May exceed the balance: see ``available``."""
    revenue = await session.scalar(
        select(func.sum(LedgerEntry.amount)).where(
            LedgerEntry.wallet_id == wallet_id, LedgerEntry.kind == "revenue"
        )
    )
    rejected = select(Payout.id).where(Payout.wallet_id == wallet_id, Payout.status == REJECTED)
    paid_out = await session.scalar(
        select(func.sum(LedgerEntry.amount)).where(
            LedgerEntry.wallet_id == wallet_id,
            LedgerEntry.kind == "payout",
            or_(LedgerEntry.reference_id.is_(None), LedgerEntry.reference_id.not_in(rejected)),
        )
    )
    return Decimal(revenue or ZERO) + Decimal(paid_out or ZERO)  # payouts are negative


def available(earned: Decimal, balance: Decimal) -> Decimal:
    """What a payout may take: the earnings, up to the balance, never negative."""
    return max(ZERO, min(earned, balance))


def payout_public(p: Payout) -> dict[str, Any]:
    return {
        "id": p.id,
        "organisation_id": p.organisation_id,
        "wallet_id": p.wallet_id,
        "amount": money_str(p.amount, p.currency),
        "currency": p.currency,
        "status": p.status,
        "method": p.method,
        "destination": p.destination,
        "note": p.note,
        "ledger_entry_id": p.ledger_entry_id,
        "requested_by": p.requested_by,
        "processed_at": p.processed_at,
        "created_at": p.created_at,
        "updated_at": p.updated_at,
    }


# --- periods -----------------------------------------------------------------------------
def bound(value: date | datetime | None, *, end: bool = False) -> datetime | None:
    """A query's start or end as an aware UTC instant. A date alone is its whole day:
    as an end, the next midnight (so ``end_date=2026-01-31`` includes the 31st)."""
    if value is None:
        return None
    try:
        if isinstance(value, datetime):
            if value.tzinfo is None:
                value = value.replace(tzinfo=UTC)
            return value.astimezone(UTC)
        instant = datetime.combine(value, time(), tzinfo=UTC)
        return instant + timedelta(days=1) if end else instant
    except (OverflowError, ValueError):
        raise ValidationFailed(
            "Date out of range", **{"end_date" if end else "start_date": str(value)}
        ) from None


@dataclass(frozen=True)
class Overview:
    organisation_id: str
    wallet: Wallet
    earned: Decimal
    totals: dict[str, Decimal]
    payouts: Decimal
    pending: Decimal
    start: datetime
    end: datetime

    def public(self) -> dict[str, Any]:
        cur = self.wallet.currency
        t = self.totals
        return {
            "organisation_id": self.organisation_id,
            "currency": cur,
            "balance": money_str(self.wallet.balance, cur),
            "available_earnings": money_str(available(self.earned, self.wallet.balance), cur),
            "total_revenue": money_str(t.get("revenue", ZERO), cur),
            "total_charges": money_str(-(t.get("charge", ZERO) + t.get("refund", ZERO)), cur),
            "total_top_ups": money_str(t.get("top_up", ZERO), cur),
            "total_payouts": money_str(self.payouts, cur),
            "pending_payouts": money_str(self.pending, cur),
            "period": {"start": self.start, "end": self.end},
        }


class PayoutService:
    def __init__(self, core: Core, session: AsyncSession) -> None:
        self.core = core
        self.session = session
        self.billing = BillingService(core, session)

    # --- the wallet -------------------------------------------------------------------
    async def wallet(self, org: Organisation, currency: str | None = None) -> Wallet:
        """The organisation's wallet in ``currency`` (default: its own), made with the
        signup credit on first use. A currency it has no wallet in is a 404."""
        account = await self.session.get(BillingAccount, org.id)
        own = account.currency if account else self.core.settings.billing_currency
        cur = check_currency(currency) if currency else own
        found = await self.session.scalar(
            select(Wallet).where(Wallet.organisation_id == org.id, Wallet.currency == cur)
        )
        if found is not None:
            return found
        if cur != own:
            raise NotFound(f"The organisation has no {cur} wallet", currency=cur)
        await begin_write(self.session)
        try:
            made = await self.billing.wallet(org.id)
            await self.session.commit()
        except BaseException:
            await self.session.rollback()
            raise
        return made

    # --- payouts ----------------------------------------------------------------------
    async def list_page(
        self, org: Organisation | None, page: PageParams, *, status: str | None = None
    ) -> tuple[Sequence[Payout], int]:
        """An organisation's payouts, newest first (``org`` None: everyone's)."""
        where: list[Any] = []
        if org is not None:
            where.append(Payout.organisation_id == org.id)
        if status:
            where.append(Payout.status == status)
        return await fetch_page(
            self.session,
            Payout,
            *where,
            order_by=(Payout.created_at.desc(), Payout.id.desc()),
            page=page,
        )

    async def visible(self, principal: Principal, payout_id: str, permission: Permission) -> Payout:
        payout = await self.session.get(Payout, payout_id)
        if payout is None:
            raise NotFound("Payout not found", payout_id=payout_id)
        try:
            await authorize_org(self.session, principal, payout.organisation_id, permission)
        except NotFound:
            raise NotFound("Payout not found", payout_id=payout_id) from None
        return payout

    async def _by_key(self, org_id: str, key: str) -> Payout | None:
        return await self.session.scalar(
            select(Payout).where(Payout.organisation_id == org_id, Payout.idempotency_key == key)
        )

    @staticmethod
    def _replay(existing: Payout, body: PayoutRequest) -> Payout:
        same = existing.amount == body.amount and (
            body.currency is None or existing.currency == body.currency.upper()
        )
        if not same:
            raise ValidationFailed(
                "This Idempotency-Key was used for another payout request",
                **{"Idempotency-Key": "reused with another amount or currency"},
            )
        return existing

    async def request(
        self,
        principal: Principal,
        org: Organisation,
        body: PayoutRequest,
        idempotency_key: str | None,
    ) -> tuple[Payout, bool]:
        """Pay out ``body.amount`` of the organisation's earnings: (the payout, whether
        this call made it). The same ``idempotency_key`` gives the first payout back;
        the key is unique per organisation in the database, so concurrent retries
        make one payout."""
        key = idempotency_key.strip()[:255] if idempotency_key else None
        if key:
            existing = await self._by_key(org.id, key)
            if existing is not None:
                return self._replay(existing, body), False
        minimum = self.core.settings.billing_min_payout
        await begin_write(self.session)
        try:
            account = await self.billing.account(org.id)
            currency = check_currency(body.currency) if body.currency else account.currency
            amount = parse_amount(body.amount, currency)
            if currency == account.currency:
                await self.billing.wallet(org.id, currency)
            # Row-locked (PostgreSQL): concurrent requests of one wallet check and
            # debit its earnings one after the other.
            wallet = await self.session.scalar(
                select(Wallet)
                .where(Wallet.organisation_id == org.id, Wallet.currency == currency)
                .with_for_update()
                .execution_options(populate_existing=True)
            )
            if wallet is None:
                raise ValidationFailed(
                    f"The organisation has no {currency} wallet", currency=currency
                )
            if key:
                existing = await self._by_key(org.id, key)
                if existing is not None:
                    await self.session.commit()
                    return self._replay(existing, body), False
            if amount < minimum:
                raise ValidationFailed(
                    f"The smallest payout is {money_str(minimum, currency)} {currency}",
                    amount=str(body.amount),
                    minimum=money_str(minimum, currency),
                )
            can = available(await earnings(self.session, wallet.id), wallet.balance)
            if amount > can:
                raise ValidationFailed(
                    "The amount exceeds the earnings available for payout",
                    amount=money_str(amount, currency),
                    available=money_str(can, currency),
                    currency=currency,
                )
            payout = Payout(
                id=new_id(),
                organisation_id=org.id,
                wallet_id=wallet.id,
                amount=amount,
                currency=currency,
                status=PENDING,
                method=body.method,
                destination=body.destination,
                note=body.note,
                requested_by=principal.user_id,
                idempotency_key=key,
            )
            self.session.add(payout)
            await self.session.flush()
            entry = await ledger.post(
                self.session,
                wallet,
                "payout",
                -amount,
                key=f"payout:{payout.id}",
                description=f"Payout by {body.method.replace('_', ' ')}",
                reference=("payout", payout.id),
                created_by=principal.user_id,
            )
            payout.ledger_entry_id = entry.id
            await self.session.commit()
        except IntegrityError:
            # PostgreSQL: a concurrent request with the same key made its payout first.
            await self.session.rollback()
            found = await self._by_key(org.id, key) if key else None
            if found is None:
                raise Conflict("The payout request collided with another; try again") from None
            return self._replay(found, body), False
        except BaseException:
            await self.session.rollback()
            raise
        return payout, True

    async def _decide(self, payout_id: str) -> Payout:
        await begin_write(self.session)
        payout = await self.session.get(
            Payout, payout_id, populate_existing=True, with_for_update=True
        )
        if payout is None:
            await self.session.rollback()
            raise NotFound("Payout not found", payout_id=payout_id)
        if payout.status != PENDING:
            status = payout.status
            await self.session.rollback()
            raise Conflict(f"The payout is {status} already", payout_id=payout_id, status=status)
        return payout

    async def settle(self, principal: Principal, payout_id: str, note: str | None) -> Payout:
        """A platform admin confirms the money went out: ``pending`` -> ``paid``."""
        payout = await self._decide(payout_id)
        try:
            payout.status = PAID
            payout.processed_at = payout.updated_at = utcnow()
            if note:
                payout.note = _append(payout.note, note)
            await self.session.commit()
        except BaseException:
            await self.session.rollback()
            raise
        return payout

    async def reject(self, principal: Principal, payout_id: str, note: str | None) -> Payout:
        """A platform admin refuses it: ``pending`` -> ``rejected``, the amount back in
        the wallet (an ``adjustment``), and so back in the earnings."""
        payout = await self._decide(payout_id)
        try:
            wallet = await self.session.get(Wallet, payout.wallet_id, populate_existing=True)
            if wallet is None:  # pragma: no cover - the wallet cascades with its payouts
                raise NotFound("Wallet not found", wallet_id=payout.wallet_id)
            await ledger.post(
                self.session,
                wallet,
                "adjustment",
                payout.amount,
                key=f"payout-reject:{payout.id}",
                description="Payout rejected: the amount is back",
                reference=("payout", payout.id),
                created_by=principal.user_id,
            )
            payout.status = REJECTED
            payout.processed_at = payout.updated_at = utcnow()
            if note:
                payout.note = _append(payout.note, note)
            await self.session.commit()
        except BaseException:
            await self.session.rollback()
            raise
        return payout

    # --- seed 002 views ---------------------------------------------------------------
    async def overview(
        self,
        org: Organisation,
        *,
        start: datetime | None = None,
        end: datetime | None = None,
        currency: str | None = None,
    ) -> Overview:
        """Seed 002's revenue summary over [start, end) (default: this invoice period)."""
        period = period_bounds(utcnow(), self.core.settings.billing_invoice_period)
        start, end = start or period[0], end or period[1]
        if start >= end:
            raise ValidationFailed("start_date must be before end_date")
        wallet = await self.wallet(org, currency)
        rows = await self.session.execute(
            select(LedgerEntry.kind, func.sum(LedgerEntry.amount))
            .where(
                LedgerEntry.wallet_id == wallet.id,
                LedgerEntry.created_at >= start,
                LedgerEntry.created_at < end,
            )
            .group_by(LedgerEntry.kind)
        )
        totals = {kind: Decimal(total or ZERO) for kind, total in rows.all()}
        requested = await self.session.scalar(
            select(func.sum(Payout.amount)).where(
                Payout.wallet_id == wallet.id,
                Payout.status != REJECTED,
                Payout.created_at >= start,
                Payout.created_at < end,
            )
        )
        pending = await self.session.scalar(
            select(func.sum(Payout.amount)).where(
                Payout.wallet_id == wallet.id, Payout.status == PENDING
            )
        )
        return Overview(
            organisation_id=org.id,
            wallet=wallet,
            earned=await earnings(self.session, wallet.id),
            totals=totals,
            payouts=Decimal(requested or ZERO),
            pending=Decimal(pending or ZERO),
            start=start,
            end=end,
        )

    async def transactions(
        self,
        org: Organisation,
        page: PageParams,
        *,
        kind: str | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
        currency: str | None = None,
    ) -> tuple[list[dict[str, Any]], int]:
        """The wallet's ledger entries, newest first."""
        wallet = await self.wallet(org, currency)
        where: list[Any] = [LedgerEntry.wallet_id == wallet.id]
        if kind:
            where.append(LedgerEntry.kind == kind)
        if start is not None:
            where.append(LedgerEntry.created_at >= start)
        if end is not None:
            where.append(LedgerEntry.created_at < end)
        rows, total = await fetch_page(
            self.session,
            LedgerEntry,
            *where,
            order_by=(LedgerEntry.created_at.desc(), LedgerEntry.id.desc()),
            page=page,
        )
        return [entry_public(e, wallet.currency) for e in rows], total

    async def subscription(self, org: Organisation) -> dict[str, Any]:
        """Seed 002's current subscription: Nefos is prepaid pay-as-you-go."""
        wallet = await self.wallet(org)
        account = await ProductService(self.core, self.session).account(org)
        start, end = period_bounds(utcnow(), self.core.settings.billing_invoice_period)
        cur = account.currency
        return {
            "organisation_id": org.id,
            "plan": "pay-as-you-go",
            "status": account_status(account),
            "currency": cur,
            "balance": money_str(wallet.balance, wallet.currency),
            "low_balance_threshold": money_str(account.low_balance_threshold, cur),
            "margin_percent": f"{account.margin_percent.normalize():f}",
            "current_period": {"start": start, "end": end},
            "next_invoice_date": end,
        }


def require_platform(principal: Principal) -> None:
    principal.require_scope(Permission.PLATFORM_ADMIN)
    if not principal.is_admin:
        raise Forbidden("Platform administrators only")


def _append(note: str, more: str) -> str:
    return f"{note}\n{more}" if note else more
