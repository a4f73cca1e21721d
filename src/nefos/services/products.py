"""The catalogue as callers see it, its prices as platform admins set them, and an
organisation's billing settings (currency, low-balance threshold, a reseller's margin).

What a caller pays is the catalogue's price with its reseller's margin on top
(``BillingService.margin_of``, ``rating.with_margin``): the margin a reseller sets
applies to the organisations it created, never to the reseller itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import and_, func, not_, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from nefos.billing import catalogue, ledger
from nefos.billing.money import ZERO, check_currency, minor_unit, money_str, round_money
from nefos.billing.rating import with_margin
from nefos.db.models import (
    BillingAccount,
    Invoice,
    LedgerEntry,
    Organisation,
    Payment,
    Payout,
    Product,
    UsageRecord,
    Wallet,
)
from nefos.db.session import begin_write
from nefos.db.types import new_id, utcnow
from nefos.domain.access import OrgKind
from nefos.domain.errors import Conflict, ValidationFailed
from nefos.domain.paging import PageParams
from nefos.schemas.billing import BillingAccountUpdate, ProductPriceSet
from nefos.services.billing import BillingService
from nefos.services.core import Core
from nefos.services.paging import fetch_page
from nefos.services.principal import Principal

#: Ledger keys of entries that leave a wallet "untouched" (its currency may change).
SIGNUP_KEY = "signup-credit"
MOVE_PREFIX = "currency-change-"


def product_public(p: Product, unit_price: Decimal | None = None) -> dict[str, Any]:
    """``unit_price``: the price to show (default: the catalogue's own)."""
    info = catalogue.describe(p.sku)
    price = p.unit_price if unit_price is None else unit_price
    return {
        "id": p.id,
        "sku": p.sku,
        "meter": p.meter,
        "unit": info.unit,
        "name": p.name,
        "description": p.description,
        "flavor": p.flavor,
        "currency": p.currency,
        "unit_price": money_str(price, p.currency),
        "effective_from": p.effective_from,
        "effective_to": p.effective_to,
        "created_at": p.created_at,
    }


def account_status(account: BillingAccount) -> str:
    """active, low_balance (under the threshold, or out of funds within the grace
    period) or suspended (its instances were stopped for want of funds)."""
    if account.suspended_at is not None:
        return "suspended"
    if account.low_balance_since is not None or account.depleted_since is not None:
        return "low_balance"
    return "active"


def account_public(account: BillingAccount, org: Organisation) -> dict[str, Any]:
    cur = account.currency
    return {
        "organisation_id": account.organisation_id,
        "organisation_kind": org.kind,
        "currency": cur,
        "low_balance_threshold": money_str(account.low_balance_threshold, cur),
        "margin_percent": f"{account.margin_percent.normalize():f}",
        "status": account_status(account),
        "low_balance_since": account.low_balance_since,
        "depleted_since": account.depleted_since,
        "suspended_at": account.suspended_at,
        "created_at": account.created_at,
        "updated_at": account.updated_at,
    }


@dataclass(frozen=True)
class Catalogue:
    """A page of the prices in force for an organisation, margin included."""

    organisation_id: str
    currency: str
    items: list[dict[str, Any]]
    total: int


class ProductService:
    def __init__(self, core: Core, session: AsyncSession) -> None:
        self.core = core
        self.session = session
        self.billing = BillingService(core, session)

    async def currency_of(self, org_id: str) -> str:
        """The organisation's currency (its account's; the platform's if it has none
        yet), read without making anything."""
        found = await self.session.scalar(
            select(BillingAccount.currency).where(BillingAccount.organisation_id == org_id)
        )
        return found or self.core.settings.billing_currency

    async def ensure_catalogue(self, currency: str) -> None:
        """Give ``currency`` the default catalogue if it has none (a fresh install)."""
        if await self.session.scalar(
            select(Product.id).where(Product.currency == currency).limit(1)
        ):
            return
        await begin_write(self.session)
        try:
            await catalogue.ensure_defaults(self.session, currency)
            await self.session.commit()
        except IntegrityError:  # another request made it meanwhile
            await self.session.rollback()
        except BaseException:
            await self.session.rollback()
            raise

    # --- the catalogue ----------------------------------------------------------------
    async def catalogue(
        self, org: Organisation, page: PageParams, *, currency: str | None = None
    ) -> Catalogue:
        """The prices in force in ``currency`` (default: the organisation's), as the
        organisation pays them. Its own currency's catalogue is made if missing."""
        own = await self.currency_of(org.id)
        cur = check_currency(currency) if currency else own
        if cur in (own, self.core.settings.billing_currency):
            await self.ensure_catalogue(cur)
        margin, _ = await self.billing.margin_of(org)
        rows, total = await fetch_page(
            self.session,
            Product,
            Product.currency == cur,
            Product.effective_to.is_(None),
            order_by=(Product.sku, Product.id),
            page=page,
        )
        items = [product_public(p, with_margin(p.unit_price, margin)) for p in rows]
        return Catalogue(org.id, cur, items, total)

    async def history(
        self, sku: str, page: PageParams, *, currency: str | None = None
    ) -> tuple[Sequence[Product], int]:
        """Every price ``sku`` has had in ``currency``, newest first."""
        catalogue.describe(sku)
        cur = check_currency(currency) if currency else self.core.settings.billing_currency
        return await fetch_page(
            self.session,
            Product,
            Product.currency == cur,
            Product.sku == sku,
            order_by=(Product.effective_from.desc(), Product.id.desc()),
            page=page,
        )

    async def set_price(self, principal: Principal, sku: str, body: ProductPriceSet) -> Product:
        """Close the price in force for ``sku`` now and open ``body.unit_price``. A
        currency with no catalogue yet gets the default one first."""
        catalogue.describe(sku)
        cur = check_currency(body.currency or self.core.settings.billing_currency)
        for _ in range(3):
            await begin_write(self.session)
            try:
                await catalogue.ensure_defaults(self.session, cur)
                product = await catalogue.set_price(
                    self.session,
                    sku=sku,
                    currency=cur,
                    unit_price=body.unit_price,
                    name=body.name,
                    description=body.description,
                    created_by=principal.user_id,
                )
                await self.session.commit()
                return product
            except IntegrityError:
                # PostgreSQL: a concurrent change of the same SKU opened its own row
                # after this statement's snapshot. Close that one instead.
                await self.session.rollback()
            except BaseException:
                await self.session.rollback()
                raise
        raise Conflict("The price of this SKU is being changed concurrently; try again", sku=sku)

    async def retire(self, sku: str, *, currency: str | None = None) -> Product:
        """A flavor's price closes now, with none after it (see ``catalogue.retire``)."""
        cur = check_currency(currency or self.core.settings.billing_currency)
        await begin_write(self.session)
        try:
            product = await catalogue.retire(self.session, sku=sku, currency=cur)
            await self.session.commit()
        except BaseException:
            await self.session.rollback()
            raise
        return product

    # --- billing accounts -------------------------------------------------------------
    async def account(self, org: Organisation) -> BillingAccount:
        """The organisation's billing account, made with the defaults on first use."""
        found = await self.session.get(BillingAccount, org.id)
        if found is not None:
            return found
        await begin_write(self.session)
        try:
            made = await self.billing.account(org.id)
            await self.session.commit()
        except BaseException:
            await self.session.rollback()
            raise
        return made

    async def update_account(self, org: Organisation, body: BillingAccountUpdate) -> BillingAccount:
        if body.margin_percent is not None and org.kind != OrgKind.RESELLER:
            raise ValidationFailed(
                "Only a reseller organisation sets a margin",
                margin_percent="reseller organisations only",
            )
        new_currency = check_currency(body.currency) if body.currency else None
        await begin_write(self.session)
        try:
            await self.billing.account(org.id)
            account = await self.session.get(
                BillingAccount, org.id, populate_existing=True, with_for_update=True
            )
            assert account is not None
            if new_currency is not None and new_currency != account.currency:
                await self._change_currency(account, new_currency)
            if body.low_balance_threshold is not None:
                threshold = body.low_balance_threshold
                if threshold != round_money(threshold, account.currency):
                    raise ValidationFailed(
                        f"low_balance_threshold has more places than {account.currency} allows",
                        low_balance_threshold=str(threshold),
                        minor_unit=str(minor_unit(account.currency)),
                    )
                account.low_balance_threshold = threshold
            if body.margin_percent is not None:
                account.margin_percent = body.margin_percent
            account.updated_at = utcnow()
            await self.session.commit()
        except BaseException:
            await self.session.rollback()
            raise
        return account

    async def _change_currency(self, account: BillingAccount, new: str) -> None:
        """Switch an untouched organisation to ``new``: nothing paid, charged, earned
        or invoiced, no usage recorded. A signup credit moves along (an adjustment
        out of the old wallet, one into the new), so it is granted once."""
        org_id = account.organisation_id
        wallets = select(Wallet.id).where(Wallet.organisation_id == org_id)
        untouched = and_(
            LedgerEntry.kind == "adjustment",
            or_(LedgerEntry.key == SIGNUP_KEY, LedgerEntry.key.startswith(MOVE_PREFIX)),
        )
        used = await self.session.scalar(
            select(func.count())
            .select_from(LedgerEntry)
            .where(LedgerEntry.wallet_id.in_(wallets), not_(untouched))
        )
        for model in (UsageRecord, Invoice, Payment, Payout):
            if used:
                break
            used = await self.session.scalar(
                select(model.id).where(model.organisation_id == org_id).limit(1)
            )
        if used:
            raise Conflict(
                "The currency can change only while nothing has been paid, charged or used in it",
                currency=account.currency,
            )
        old = await self.session.scalar(
            select(Wallet)
            .where(Wallet.organisation_id == org_id, Wallet.currency == account.currency)
            .with_for_update()
        )
        account.currency = new
        await catalogue.ensure_defaults(self.session, new)
        if old is None:  # the new wallet opens with the signup credit on first use
            return
        # The credit keeps its figure, in the new currency's minor unit.
        moved = round_money(old.balance, new)
        change = new_id()
        if old.balance > 0:
            await ledger.post(
                self.session,
                old,
                "adjustment",
                -old.balance,
                key=f"{MOVE_PREFIX}out:{change}",
                description=f"Credit moved to the {new} wallet",
            )
        target = await self.session.scalar(
            select(Wallet).where(Wallet.organisation_id == org_id, Wallet.currency == new)
        )
        if target is None:  # made empty: the credit it gets is the one moved here
            target = await ledger.wallet(self.session, org_id, new, signup_credit=ZERO)
        if moved > 0:
            await ledger.post(
                self.session,
                target,
                "adjustment",
                moved,
                key=f"{MOVE_PREFIX}in:{change}",
                description=f"Credit moved from the {old.currency} wallet",
            )
