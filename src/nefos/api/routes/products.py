"""The price catalogue (``/products``) and an organisation's billing settings
(``/billing/account``).

Billing requests act for an organisation: ``organisation_id`` (query or body) or
``X-Organisation-ID``, else the organisation of the caller's default project.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from starlette.responses import Response

from nefos.api.deps import Access, CoreDep, OrgHint, PageDep, SessionDep, authorize
from nefos.domain.access import Permission
from nefos.gateway.envelope import ok, page
from nefos.schemas.billing import (
    SKU_PATTERN,
    BillingAccountPublic,
    BillingAccountUpdate,
    ProductPage,
    ProductPriceSet,
    ProductPublic,
)
from nefos.schemas.common import Envelope, Page
from nefos.services.products import ProductService, account_public, product_public

router = APIRouter(prefix="/products", tags=["billing"])
accounts = APIRouter(prefix="/billing", tags=["billing"])

READ = Permission.BILLING_READ
WRITE = Permission.BILLING_WRITE

Sku = Annotated[
    str,
    Path(
        pattern=SKU_PATTERN,
        max_length=80,
        description="vcpu_hour, ram_gb_hour, storage_gb_day, network_gb, container_hour, "
        "vm_hour, api_call or flavor:<name>.",
    ),
]
CurrencyQuery = Annotated[
    str | None,
    Query(pattern=r"^[A-Za-z]{3}$", description="ISO 4217 code (default: the organisation's)."),
]


def _product(p: Any) -> ProductPublic:
    return ProductPublic.model_validate(p)


@router.get("", response_model=Envelope[ProductPage])
async def list_products(
    core: CoreDep,
    session: SessionDep,
    params: PageDep,
    organisation_id: OrgHint,
    currency: CurrencyQuery = None,
    access: Access = authorize(READ),
) -> Response:
    """The catalogue in force, each price as the organisation pays it (its reseller's
    margin included), in its currency unless `currency` names another."""
    org = await access.org(organisation_id, READ)
    found = await ProductService(core, session).catalogue(org, params, currency=currency)
    items = [_product(p) for p in found.items]
    body = page(
        items,
        found.total,
        params,
        products=[i.model_dump(mode="json") for i in items],
        currency=found.currency,
        organisation_id=found.organisation_id,
    )
    return ok(body)


@router.get("/{sku}/history", response_model=Envelope[Page[ProductPublic]])
async def product_history(
    sku: Sku,
    core: CoreDep,
    session: SessionDep,
    params: PageDep,
    currency: CurrencyQuery = None,
    access: Access = authorize(Permission.PLATFORM_ADMIN),
) -> Response:
    """Every price the SKU has had (platform admins), newest first: each row is in
    force from `effective_from` until `effective_to` (null: now)."""
    rows, total = await ProductService(core, session).history(sku, params, currency=currency)
    return ok(page([_product(product_public(p)) for p in rows], total, params))


@router.put("/{sku}", response_model=Envelope[ProductPublic])
async def set_product_price(
    sku: Sku,
    body: ProductPriceSet,
    core: CoreDep,
    session: SessionDep,
    access: Access = authorize(Permission.PLATFORM_ADMIN),
) -> Response:
    """Set a SKU's price from now on (platform admins). The price in force is closed,
    not changed: usage is always rated with the price in force when it happened."""
    product = await ProductService(core, session).set_price(access.principal, sku, body)
    return ok(_product(product_public(product)))


@router.delete("/{sku}", response_model=Envelope[ProductPublic])
async def retire_product(
    sku: Sku,
    core: CoreDep,
    session: SessionDep,
    currency: CurrencyQuery = None,
    access: Access = authorize(Permission.PLATFORM_ADMIN),
) -> Response:
    """Retire a flavor (platform admins): its price in force closes now, with none
    after it, so VMs of that flavor are rated by their vCPUs, memory and storage
    from then on; usage before stays rated as it was. The answer is the closed price.
    The base SKUs rate every resource: retiring one is a 409; a SKU with no price in
    force is a 404. `PUT` offers the flavor again."""
    product = await ProductService(core, session).retire(sku, currency=currency)
    return ok(_product(product_public(product)))


# --- billing account -------------------------------------------------------------------
@accounts.get("/account", response_model=Envelope[BillingAccountPublic])
async def get_billing_account(
    core: CoreDep,
    session: SessionDep,
    organisation_id: OrgHint,
    access: Access = authorize(READ),
) -> Response:
    """The organisation's billing settings: currency, low-balance threshold, margin
    (resellers), and its status (active, low_balance, suspended)."""
    org = await access.org(organisation_id, READ)
    account = await ProductService(core, session).account(org)
    return ok(BillingAccountPublic.model_validate(account_public(account, org)))


@accounts.put("/account", response_model=Envelope[BillingAccountPublic])
async def update_billing_account(
    body: BillingAccountUpdate,
    core: CoreDep,
    session: SessionDep,
    organisation_id: OrgHint,
    access: Access = authorize(WRITE),
) -> Response:
    """Change the billing settings (organisation admins). `margin_percent` (0 to
    1000) is a reseller's markup on its child organisations' prices; `currency` may
    change only while nothing has been paid, charged or used."""
    org = await access.org(body.organisation_id or organisation_id, WRITE)
    account = await ProductService(core, session).update_account(org, body)
    return ok(BillingAccountPublic.model_validate(account_public(account, org)))
