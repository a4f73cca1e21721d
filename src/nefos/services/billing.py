"""Billing use cases shared by the wallet, payments, invoices, quotes and payouts.

Billing is per organisation: a request names it (``organisation_id`` in the query
or body, or ``X-Organisation-ID``), else it is the organisation of the caller's
default project (an API key bound to an organisation: that one). Another tenant's
organisation is a 404, as everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from nefos.billing import accounts, catalogue, metering
from nefos.billing.accounts import pending_cost
from nefos.billing.money import ZERO, exact, money_str
from nefos.billing.periods import period_bounds
from nefos.billing.rating import RatedLine, merge, rate, rate_span, record_totals
from nefos.db.models import (
    BillingAccount,
    Container,
    LedgerEntry,
    Organisation,
    Project,
    UsageRecord,
    Vm,
    Volume,
    Wallet,
)
from nefos.db.session import begin_write
from nefos.db.types import utcnow
from nefos.domain.access import Permission, Role
from nefos.domain.errors import NotFound, ValidationFailed
from nefos.domain.paging import PageParams
from nefos.services.core import Core
from nefos.services.paging import fetch_page
from nefos.services.principal import Principal, authorize_org


async def resolve_org(
    session: AsyncSession,
    principal: Principal,
    org_id: str | None,
    permission: Permission,
    *,
    missing: tuple[str, str] | None = None,
) -> tuple[Organisation, Role]:
    """The organisation a billing request acts for, checked against ``permission``.
    With ``missing`` (kind, id), an organisation the caller may not see reads as that
    object not being found."""
    if org_id is None:
        if missing is not None:
            raise _not_found(*missing)
        org_id = await _default_org_id(session, principal)
    try:
        return await authorize_org(session, principal, org_id, permission)
    except NotFound:
        if missing is not None:
            raise _not_found(*missing) from None
        raise


def _not_found(kind: str, resource_id: str) -> NotFound:
    label = {"vm": "VM", "container": "Container", "volume": "Volume"}.get(kind, kind)
    return NotFound(f"{label} not found", **{f"{kind}_id": resource_id})


async def usage_owner(session: AsyncSession, kind: str, resource_id: str) -> tuple[str | None, str]:
    """(organisation, name) of a VM, container or volume, also once it is deleted (from
    its usage records); (None, "") if Nefos knows nothing of it."""
    model: Any = {"vm": Vm, "container": Container, "volume": Volume}[kind]
    found = (
        await session.execute(
            select(Project.organisation_id, model.name)
            .join(Project, Project.id == model.project_id)
            .where(model.id == resource_id)
        )
    ).first()
    if found is not None:
        return found[0], found[1]
    past = (
        await session.execute(
            select(UsageRecord.organisation_id, UsageRecord.resource_name)
            .where(UsageRecord.resource_kind == kind, UsageRecord.resource_id == resource_id)
            .limit(1)
        )
    ).first()
    return (past[0], past[1]) if past is not None else (None, "")


async def _default_org_id(session: AsyncSession, principal: Principal) -> str:
    if principal.key_organisation_id is not None:
        return principal.key_organisation_id
    project_id = principal.user.default_project_id
    if project_id is not None:
        org_id = await session.scalar(
            select(Project.organisation_id).where(Project.id == project_id)
        )
        if org_id is not None:
            return org_id
    raise ValidationFailed(
        "No organisation given and you have no default project",
        organisation_id="name one (organisation_id or X-Organisation-ID)",
    )


def wallet_public(w: Wallet, account: BillingAccount | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": w.id,
        "organisation_id": w.organisation_id,
        "currency": w.currency,
        "balance": money_str(w.balance, w.currency),
        "created_at": w.created_at,
        "updated_at": w.updated_at,
    }
    if account is not None:
        out["low_balance_threshold"] = money_str(account.low_balance_threshold, w.currency)
    return out


def entry_public(e: LedgerEntry, currency: str) -> dict[str, Any]:
    return {
        "id": e.id,
        "wallet_id": e.wallet_id,
        "kind": e.kind,
        "type": e.kind,
        "amount": money_str(e.amount, currency),
        "amount_exact": money_str(e.amount, currency),
        "balance_after": money_str(e.balance_after, currency),
        "balance_after_exact": money_str(e.balance_after, currency),
        "currency": currency,
        "description": e.description,
        "reference_kind": e.reference_kind,
        "reference_id": e.reference_id,
        "created_by": e.created_by,
        "created_at": e.created_at,
    }


class BillingService:
    """The organisation's billing account and wallet; what every billing route needs."""

    def __init__(self, core: Core, session: AsyncSession) -> None:
        self.core = core
        self.session = session

    @property
    def currency(self) -> str:
        return self.core.settings.billing_currency

    async def account(self, org_id: str) -> BillingAccount:
        """The account, made with the defaults on first use (the caller commits)."""
        return await accounts.account(self.session, self.core.settings, org_id)

    async def wallet(self, org_id: str, currency: str | None = None) -> Wallet:
        """The organisation's wallet (in its account's currency by default), made with
        the signup credit on first use. Opens (and leaves open) a write transaction
        when it has to make one; the caller commits."""
        return await accounts.wallet(self.session, self.core.settings, org_id, currency)

    async def margin_of(self, org: Organisation) -> tuple[Decimal, Organisation | None]:
        """The margin (percent) the organisation's reseller puts on its prices, and
        that reseller (None: no parent reseller, margin 0)."""
        return await accounts.margin_of(self.session, org)


# --- usage and costs (seed 004) ----------------------------------------------------------
def _hours(q: Decimal) -> float:
    return float(round(q, 6))


def usage_block(lines: Sequence[RatedLine], currency: str) -> dict[str, Any]:
    """Seed 004's ``usage`` of one resource: quantity and cost per meter."""
    by_meter: dict[str, tuple[Decimal, Decimal]] = {}
    for ln in lines:
        q, a = by_meter.get(ln.meter, (ZERO, ZERO))
        by_meter[ln.meter] = (q + ln.quantity, a + ln.amount)
    names = {
        "cpu": "total_hours",
        "memory": "total_gb_hours",
        "storage": "total_gb_days",
        "network": "total_gb",
        "instance": "total_hours",
    }
    out: dict[str, Any] = {}
    for meter, key in names.items():
        q, a = by_meter.get(meter, (ZERO, ZERO))
        out[meter] = {key: _hours(q), "cost": money_str(a, currency)}
    return out


def _short_usage(lines: Sequence[RatedLine]) -> dict[str, float]:
    q = {ln.sku: ln.quantity for ln in lines}
    return {
        "cpu_hours": _hours(q.get("vcpu_hour", ZERO)),
        "memory_gb_hours": _hours(q.get("ram_gb_hour", ZERO)),
        "storage_gb_days": _hours(q.get("storage_gb_day", ZERO)),
        "network_gb": _hours(q.get("network_gb", ZERO)),
    }


class UsageService(BillingService):
    """What an organisation's resources used and cost: the records written, plus the
    spans still open now (priced with the catalogue in force now)."""

    async def lines(
        self,
        org: Organisation,
        start: datetime,
        end: datetime,
        *,
        resource: tuple[str, str] | None = None,
    ) -> tuple[str, list[RatedLine]]:
        """(currency, lines) of the organisation's usage in [start, end)."""
        account = await self.account(org.id)
        currency = account.currency
        margin, _ = await self.margin_of(org)
        book = await catalogue.price_book(self.session, currency, start, max(end, utcnow()))
        where: list[Any] = [UsageRecord.organisation_id == org.id]
        if resource is not None:
            where += [
                UsageRecord.resource_kind == resource[0],
                UsageRecord.resource_id == resource[1],
            ]
        lines = await rate_span(self.session, book, start, end, *where, margin_percent=margin)
        now = utcnow()
        if start <= now < end:
            for rec in await metering.open_spans(self.session, org.id, now, resource=resource):
                lines.extend(rate(record_totals(rec), book, now, margin))
        return currency, merge(lines)

    async def summary(
        self, principal: Principal, org: Organisation, at: datetime
    ) -> dict[str, Any]:
        start, end = period_bounds(at, self.core.settings.billing_invoice_period)
        currency, lines = await self.lines(org, start, end)
        per: dict[tuple[str, str], list[RatedLine]] = {}
        for ln in lines:
            per.setdefault((ln.resource_kind, ln.resource_id), []).append(ln)
        groups: dict[str, list[dict[str, Any]]] = {"container": [], "vm": [], "volume": []}
        for (kind, rid), mine in per.items():
            entry = {
                f"{kind}_id": rid,
                "name": mine[0].resource_name,
                "cost": money_str(sum((ln.amount for ln in mine), ZERO), currency),
                "usage": _short_usage(mine),
            }
            groups.setdefault(kind, []).append(entry)
        total = sum((ln.amount for ln in lines), ZERO)
        await self.session.commit()  # the account, if this made it
        return {
            "user_id": principal.user_id,
            "organisation_id": org.id,
            "current_period": {
                "start_date": start,
                "end_date": end - timedelta(seconds=1),
                "total_cost": money_str(total, currency),
                "currency": currency,
            },
            "containers": groups["container"],
            "vms": groups["vm"],
            "volumes": groups["volume"],
            "currency": currency,
        }

    async def resource_usage(
        self,
        org: Organisation,
        kind: str,
        resource_id: str,
        name: str,
        start: datetime | None,
        end: datetime | None,
    ) -> dict[str, Any]:
        """Seed 004's usage of one container or VM over [start, end) (default: the
        current period)."""
        now = utcnow()
        p_start, p_end = period_bounds(now, self.core.settings.billing_invoice_period)
        start = start or p_start
        end = end or p_end
        if end <= start:
            raise ValidationFailed("end_date must be after start_date")
        currency, lines = await self.lines(org, start, end, resource=(kind, resource_id))
        await self.session.commit()
        return {
            f"{kind}_id": resource_id,
            "name": name or (lines[0].resource_name if lines else ""),
            "period": {"start_date": start, "end_date": end},
            "usage": usage_block(lines, currency),
            "total_cost": money_str(sum((ln.amount for ln in lines), ZERO), currency),
            "currency": currency,
        }

    async def wallet_view(self, org: Organisation) -> dict[str, Any]:
        """The wallet, what its uncharged usage costs, and what is left."""
        await begin_write(self.session)
        account = await self.account(org.id)
        wallet = await self.wallet(org.id, account.currency)
        await self.session.commit()
        owed = await pending_cost(self.session, org.id, wallet.currency)
        cur = wallet.currency
        status = "active"
        if account.suspended_at is not None:
            status = "suspended"
        elif account.depleted_since is not None:
            status = "depleted"
        elif account.low_balance_since is not None:
            status = "low_balance"
        return {
            **wallet_public(wallet, account),
            "pending_charges": money_str(exact(owed), cur),
            "available": money_str(exact(wallet.balance - owed), cur),
            "status": status,
            "depleted_since": account.depleted_since,
            "suspended_at": account.suspended_at,
        }

    async def ledger_page(
        self,
        org: Organisation,
        page: PageParams,
        *,
        kind: str | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> tuple[str, Sequence[LedgerEntry], int]:
        await begin_write(self.session)
        wallet = await self.wallet(org.id)
        await self.session.commit()
        where: list[Any] = [LedgerEntry.wallet_id == wallet.id]
        if kind is not None:
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
        return wallet.currency, rows, total
