"""The marketplace (seed 002): browse listings without an account, publish one of
your APIs with its plans, change or unpublish it."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from nefos.api.deps import (
    Access,
    CoreDep,
    ObjectId,
    PageDep,
    Public,
    SessionDep,
    authorize,
    get_principal,
)
from nefos.config import Settings
from nefos.domain.access import Permission
from nefos.gateway.envelope import listing, ok
from nefos.schemas.common import Envelope
from nefos.schemas.marketplace import (
    ListingPage,
    ListingPublic,
    ListingUpdate,
    PublishRequest,
    price_text,
)
from nefos.services.marketplace import Found, MarketplaceService
from nefos.services.principal import Principal

router = APIRouter(prefix="/marketplace", tags=["marketplace"])

Sort = Literal["relevance", "popularity", "rating", "newest"]


async def optional_principal(request: Request) -> Principal | None:
    """The caller if the request carries credentials (then they must be valid), else
    None: the marketplace is browsable without an account."""
    headers = request.headers
    if not any(headers.get(h) for h in ("authorization", "x-auth-token", "x-api-key")):
        return None
    return await get_principal(request)


def listing_public(
    settings: Settings, found: Found, slug: str, docs: dict[str, Any] | None = None
) -> dict[str, Any]:
    lst = found.listing
    plans = [
        {
            "id": p.id,
            "key": p.key,
            "version": p.version,
            "name": p.name,
            "model": p.model,
            "currency": lst.currency,
            "price_per_call": price_text(p.price_per_call),
            "monthly_price": price_text(p.monthly_price),
            "included_calls": p.included_calls,
            "overage_price": price_text(p.overage_price),
            "rate_limit_per_minute": p.rate_limit_per_minute,
        }
        for p in found.plans
    ]
    return {
        "id": lst.id,
        "api_id": lst.api_id,
        "slug": slug,
        "title": lst.title,
        "summary": lst.summary,
        "description": lst.description,
        "category": lst.category,
        "tags": list(lst.tags or []),
        "visibility": lst.visibility,
        "status": lst.status,
        "currency": lst.currency,
        "price_models": sorted({p.model for p in found.plans}),
        "plans": plans,
        "rating": {"average": None, "count": 0},
        "calls_30d": 0,
        "organisation_id": lst.organisation_id,
        "docs": docs,
        "published_at": lst.published_at,
        "created_at": lst.created_at,
        "updated_at": lst.updated_at,
        "relevance": found.relevance,
    }


@router.get("/listings", response_model=Envelope[ListingPage], dependencies=[Public])
async def browse_listings(
    request: Request,
    core: CoreDep,
    session: SessionDep,
    params: PageDep,
    q: Annotated[
        str | None,
        Query(
            max_length=200, description="Words to find in titles, summaries, descriptions, tags."
        ),
    ] = None,
    category: Annotated[str | None, Query(max_length=40)] = None,
    tag: Annotated[str | None, Query(max_length=30)] = None,
    price_model: Annotated[
        Literal["free", "pay_per_use", "freemium", "monthly"] | None,
        Query(description="Only listings with a plan of this model."),
    ] = None,
    sort: Annotated[
        Sort | None, Query(description="relevance (with q), popularity, rating or newest.")
    ] = None,
) -> Response:
    """Published listings: public ones for everyone (no account needed), and your
    organisations' private ones. `q` searches (every word, as a prefix, ranked)."""
    principal = await optional_principal(request)
    found, total, slugs = await MarketplaceService(core, session).browse(
        principal,
        params,
        q=q,
        category=category,
        tag=tag,
        price_model=price_model,
        sort=sort,
    )
    items = [listing_public(core.settings, f, slugs[f.listing.id]) for f in found]
    return listing(items, "listings", total, params)


@router.get(
    "/listings/{listing_id}",
    response_model=Envelope[dict[str, ListingPublic]],
    dependencies=[Public],
)
async def get_listing(
    listing_id: ObjectId,
    request: Request,
    core: CoreDep,
    session: SessionDep,
) -> Response:
    """A listing with its plans and docs (the API's OpenAPI document). A private or
    unpublished one is a 404 except to its own organisation."""
    principal = await optional_principal(request)
    found, api = await MarketplaceService(core, session).get(principal, listing_id)
    return ok({"listing": listing_public(core.settings, found, api.slug, api.openapi)})


@router.post("/publish", status_code=201, response_model=Envelope[dict[str, ListingPublic]])
async def publish(
    body: PublishRequest,
    core: CoreDep,
    session: SessionDep,
    access: Access = authorize(Permission.COMPUTE_WRITE),
) -> Response:
    """List one of your APIs, with its plans (free, pay_per_use, freemium, monthly).
    An API is listed once (409): change it with `PUT /marketplace/listings/{id}`."""
    service = MarketplaceService(core, session)
    found = await service.publish(access.principal, body)
    found, api = await service.get(access.principal, found.listing.id)
    return ok({"listing": listing_public(core.settings, found, api.slug, api.openapi)}, 201)


@router.put("/listings/{listing_id}", response_model=Envelope[dict[str, ListingPublic]])
async def update_listing(
    listing_id: ObjectId,
    body: ListingUpdate,
    core: CoreDep,
    session: SessionDep,
    access: Access = authorize(Permission.COMPUTE_WRITE),
) -> Response:
    """Change your listing; `status: unpublished` takes it off the marketplace.
    `plans` is the whole new set: a changed plan gets a new version (subscribers
    keep theirs), one left out retires."""
    service = MarketplaceService(core, session)
    await service.update(access.principal, listing_id, body)
    found, api = await service.get(access.principal, listing_id)
    return ok({"listing": listing_public(core.settings, found, api.slug, api.openapi)})
