"""The marketplace (seed 002): browse listings without an account, publish one of
your APIs with its plans, change or unpublish it, invite organisations to a private
one; subscribe an organisation to a
listing's plan and manage the subscription's keys; review what you have used, and
reply to the reviews of your own listings."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Query, Request
from starlette.responses import Response

from nefos.api.deps import (
    ID_PATTERN,
    TEXT_PATTERN,
    Access,
    CallsWritten,
    CoreDep,
    ObjectId,
    OrgHint,
    PageDep,
    Public,
    SessionDep,
    authorize,
    get_principal,
)
from nefos.config import Settings
from nefos.domain.access import Permission
from nefos.domain.errors import NotFound
from nefos.gateway.envelope import listing, ok, page
from nefos.schemas.common import Envelope, Message
from nefos.schemas.marketplace import (
    ApiSubscriptionDetail,
    InvitationStatus,
    ListingInvitationAccept,
    ListingInvitationAccepted,
    ListingInvitationCreate,
    ListingInvitationCreated,
    ListingInvitationPage,
    ListingInvitationRevoked,
    ListingPage,
    ListingPublic,
    ListingUpdate,
    PublishRequest,
    ReplyCreate,
    ReviewCreate,
    ReviewPage,
    ReviewPublic,
    ReviewUpdate,
    Subscribed,
    SubscribeRequest,
    SubscriptionKeyCreate,
    SubscriptionKeyCreated,
    SubscriptionKeyPublic,
    SubscriptionPage,
    SubscriptionStatus,
    SubscriptionUpdate,
    SubscriptionUsage,
)
from nefos.services.market_invitations import InvitationService, invitation_public
from nefos.services.market_subscriptions import SubscriptionService, key_public
from nefos.services.marketplace import Found, MarketplaceService, plan_public
from nefos.services.principal import Principal
from nefos.services.reviews import WRITE as REVIEW
from nefos.services.reviews import ReviewService

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
    plans = [plan_public(p, lst.currency) for p in found.plans]
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
        "rating": found.rating,
        "calls_30d": found.calls_30d,
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
            max_length=200,
            pattern=TEXT_PATTERN,
            description="Words to find in titles, summaries, descriptions, tags.",
        ),
    ] = None,
    category: Annotated[str | None, Query(max_length=40, pattern=TEXT_PATTERN)] = None,
    tag: Annotated[str | None, Query(max_length=30, pattern=TEXT_PATTERN)] = None,
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


# --- invitations to private listings ------------------------------------------------
InvitationId = ObjectId
SELL = Permission.COMPUTE_WRITE  # what publishing and changing a listing take


@router.post(
    "/listings/{listing_id}/invitations",
    status_code=201,
    response_model=Envelope[dict[str, ListingInvitationCreated]],
)
async def invite(
    listing_id: ObjectId,
    body: ListingInvitationCreate,
    core: CoreDep,
    session: SessionDep,
    access: Access = authorize(SELL),
) -> Response:
    """Invite to your private listing an organisation (`organisation_id`: it sees the
    listing and may subscribe at once) or an e-mail address (`email`: the answer's
    `token`, shown this once, is for you to pass on -- Nefos sends no mail; its
    holder accepts it with `POST /marketplace/invitations/accept` for one of its
    organisations within `expires_in_days`). A live invitation of the same
    organisation or address is a 409; at most 100 pending and 1,000 accepted
    invitations a listing (409 `RESOURCE_EXHAUSTED`)."""
    new = await InvitationService(core, session).invite(
        access.principal,
        listing_id,
        email=body.email,
        organisation_id=body.organisation_id,
        expires_in_days=body.expires_in_days,
    )
    return ok({"invitation": new.public()}, 201)


@router.get("/listings/{listing_id}/invitations", response_model=Envelope[ListingInvitationPage])
async def list_invitations(
    listing_id: ObjectId,
    core: CoreDep,
    session: SessionDep,
    params: PageDep,
    status: Annotated[
        InvitationStatus | None, Query(description="pending, accepted, revoked or expired.")
    ] = None,
    access: Access = authorize(SELL),
) -> Response:
    """Your listing's invitations, newest first (never a token)."""
    rows, total = await InvitationService(core, session).list_page(
        access.principal, listing_id, params, status=status
    )
    return listing([invitation_public(i) for i in rows], "invitations", total, params)


@router.delete(
    "/listings/{listing_id}/invitations/{invitation_id}",
    response_model=Envelope[ListingInvitationRevoked],
)
async def revoke_invitation(
    listing_id: ObjectId,
    invitation_id: InvitationId,
    core: CoreDep,
    session: SessionDep,
    access: Access = authorize(SELL),
) -> Response:
    """Revoke an invitation: a pending one's token stops working; an accepted one's
    organisation no longer sees the private listing nor may subscribe, and its live
    subscription to it (unless another invitation still lets it in) is cancelled as
    if it had cancelled it: a free or past-due plan at once, a paid period at its
    end, unrenewed. Again: a no-op."""
    inv, cancelled = await InvitationService(core, session).revoke(
        access.principal, listing_id, invitation_id
    )
    return ok({"invitation": invitation_public(inv), "subscriptions_cancelled": cancelled})


@router.post("/invitations/accept", response_model=Envelope[ListingInvitationAccepted])
async def accept_invitation(
    body: ListingInvitationAccept,
    core: CoreDep,
    session: SessionDep,
    organisation_id: OrgHint,
    access: Access = authorize(Permission.BILLING_WRITE),
) -> Response:
    """Accept an invitation to a private listing sent to your e-mail address, for an
    organisation of yours (`organisation_id` in the body or query, or
    `X-Organisation-ID`; default: your default project's), which may then subscribe
    to it. Someone else's token, or a used, revoked or expired one, is a 404."""
    org = await access.org(body.organisation_id or organisation_id, Permission.BILLING_WRITE)
    inv = await InvitationService(core, session).accept(access.principal, org, body.token)
    view: dict[str, Any] | None = None
    try:
        found, api = await MarketplaceService(core, session).get(access.principal, inv.listing_id)
        view = listing_public(core.settings, found, api.slug, api.openapi)
    except NotFound:  # (unpublished for now: it shows once published)
        view = None
    return ok({"invitation": invitation_public(inv), "listing": view})


# --- subscriptions and their keys -----------------------------------------------------
SubscriptionId = ObjectId
KeyId = ObjectId
SUBSCRIBE = Permission.BILLING_WRITE  # subscribing spends the organisation's money
READ = Permission.BILLING_READ


@router.post(
    "/listings/{listing_id}/subscribe", status_code=201, response_model=Envelope[Subscribed]
)
async def subscribe(
    listing_id: ObjectId,
    body: SubscribeRequest,
    core: CoreDep,
    session: SessionDep,
    organisation_id: OrgHint,
    access: Access = authorize(SUBSCRIBE),
) -> Response:
    """Subscribe an organisation (`organisation_id` in the body or query, or
    `X-Organisation-ID`; default: your default project's) to a current plan of a
    listing. The answer holds the subscription's first key (`nfc_...`), shown this
    once. One live subscription per organisation and listing (409). A monthly plan's
    first period is charged to the organisation's wallet at once (its creator
    credited, less the platform's fee); a wallet that cannot pay it is a 402
    `RESOURCE_EXHAUSTED` and no subscription is made."""
    org = await access.org(body.organisation_id or organisation_id, SUBSCRIBE)
    service = SubscriptionService(core, session)
    sub, key = await service.subscribe(access.principal, org, listing_id, body.plan_id)
    (view,) = await service.views([sub])
    return ok({"subscription": view, "key": key.public()}, 201)


@router.get("/subscriptions", response_model=Envelope[SubscriptionPage])
async def list_subscriptions(
    core: CoreDep,
    session: SessionDep,
    params: PageDep,
    organisation_id: OrgHint,
    status: Annotated[
        SubscriptionStatus | None,
        Query(description="active, past_due, cancelled or ended (as of now)."),
    ] = None,
    access: Access = authorize(READ),
) -> Response:
    """Your organisations' subscriptions (one organisation's with `organisation_id`),
    newest first."""
    org = await access.org(organisation_id, READ) if organisation_id else None
    items, total = await SubscriptionService(core, session).list_page(
        access.principal, params, org=org, status=status
    )
    return listing(items, "subscriptions", total, params)


async def _subscription(
    core: CoreDep, session: SessionDep, access: Access, subscription_id: str
) -> tuple[SubscriptionService, Any]:
    service = SubscriptionService(core, session)
    sub = await service.visible(access.principal, subscription_id, access.permission)
    access.log_under(sub.organisation_id)
    return service, sub


@router.get(
    "/subscriptions/{subscription_id}",
    response_model=Envelope[dict[str, ApiSubscriptionDetail]],
)
async def get_subscription(
    subscription_id: SubscriptionId,
    core: CoreDep,
    session: SessionDep,
    access: Access = authorize(READ),
) -> Response:
    """A subscription with its keys (their prefixes: never a key)."""
    service, sub = await _subscription(core, session, access, subscription_id)
    return ok({"subscription": await service.detail(sub)})


@router.get(
    "/subscriptions/{subscription_id}/usage",
    response_model=Envelope[dict[str, SubscriptionUsage]],
    dependencies=[CallsWritten],
)
async def subscription_usage(
    subscription_id: SubscriptionId,
    core: CoreDep,
    session: SessionDep,
    access: Access = authorize(READ),
) -> Response:
    """The subscription's use of its current period: calls counted against the
    quota, the quota and what is left, what the calls cost and how much of it is
    charged, and the usage alerts told (50, 80, 100 %)."""
    service, sub = await _subscription(core, session, access, subscription_id)
    return ok({"usage": await service.usage(sub)})


@router.put(
    "/subscriptions/{subscription_id}",
    response_model=Envelope[dict[str, ApiSubscriptionDetail]],
)
async def change_plan(
    subscription_id: SubscriptionId,
    body: SubscriptionUpdate,
    core: CoreDep,
    session: SessionDep,
    access: Access = authorize(SUBSCRIBE),
) -> Response:
    """Change plan, to a current plan of the same listing. Between plans without a
    fee the period, and the calls counted in it, carry over. Leaving a paid monthly
    period credits its unused part (pro rata, to the second); moving to a monthly
    plan starts a new period now and charges its fee (402 `RESOURCE_EXHAUSTED`:
    nothing changed). A past-due subscription is paid or cancelled first (409)."""
    service, sub = await _subscription(core, session, access, subscription_id)
    sub = await service.change_plan(sub, body.plan_id)
    return ok({"subscription": await service.detail(sub)})


@router.delete(
    "/subscriptions/{subscription_id}",
    response_model=Envelope[dict[str, ApiSubscriptionDetail]],
)
async def cancel_subscription(
    subscription_id: SubscriptionId,
    core: CoreDep,
    session: SessionDep,
    access: Access = authorize(SUBSCRIBE),
) -> Response:
    """Cancel: a free plan, or a past-due one, ends at once (its keys stop working);
    a paid plan (pay_per_use, freemium, monthly) ends at its period's end
    (`cancel_at_period_end`) and is not renewed."""
    service, sub = await _subscription(core, session, access, subscription_id)
    sub = await service.cancel(sub)
    return ok({"subscription": await service.detail(sub)})


@router.post(
    "/subscriptions/{subscription_id}/keys",
    status_code=201,
    response_model=Envelope[dict[str, SubscriptionKeyCreated]],
)
async def create_key(
    subscription_id: SubscriptionId,
    core: CoreDep,
    session: SessionDep,
    body: Annotated[SubscriptionKeyCreate | None, Body()] = None,
    access: Access = authorize(SUBSCRIBE),
) -> Response:
    """A new key, shown this once. `rotate`: every other live key expires
    `overlap_seconds` from now (default an hour, at most 7 days; 0: at once). At
    most 10 live keys a subscription (409)."""
    body = body or SubscriptionKeyCreate()
    service, sub = await _subscription(core, session, access, subscription_id)
    key = await service.create_key(
        sub, name=body.name, rotate=body.rotate, overlap_seconds=body.overlap_seconds
    )
    return ok({"key": key.public()}, 201)


@router.delete(
    "/subscriptions/{subscription_id}/keys/{key_id}",
    response_model=Envelope[dict[str, SubscriptionKeyPublic]],
)
async def revoke_key(
    subscription_id: SubscriptionId,
    key_id: KeyId,
    core: CoreDep,
    session: SessionDep,
    access: Access = authorize(SUBSCRIBE),
) -> Response:
    """Revoke a key: it stops working at once."""
    service, sub = await _subscription(core, session, access, subscription_id)
    key = await service.revoke_key(sub, key_id)
    return ok({"key": key_public(key)})


# --- reviews ---------------------------------------------------------------------------
ReviewId = ObjectId


@router.get("/reviews", response_model=Envelope[ReviewPage], dependencies=[Public])
async def list_reviews(
    request: Request,
    core: CoreDep,
    session: SessionDep,
    params: PageDep,
    listing_id: Annotated[str, Query(pattern=ID_PATTERN, description="The listing.")],
    stars: Annotated[
        int | None, Query(ge=1, le=5, description="Only reviews of so many stars.")
    ] = None,
) -> Response:
    """A listing's reviews, newest first, with its rating (`average`, `count`,
    `histogram`). Public for a public published listing (no account needed); a
    private or unpublished listing's are a 404 except to its own organisation."""
    principal = await optional_principal(request)
    items, total, rating = await ReviewService(core, session).list_page(
        principal, listing_id, params, stars=stars
    )
    body = page(items, total, params)
    return ok({**body, "reviews": body["items"], "rating": rating})


@router.post(
    "/reviews",
    status_code=201,
    dependencies=[CallsWritten],
    response_model=Envelope[dict[str, ReviewPublic]],
    responses={200: {"model": Envelope[dict[str, ReviewPublic]], "description": "Changed."}},
)
async def post_review(
    body: ReviewCreate,
    core: CoreDep,
    session: SessionDep,
    organisation_id: OrgHint,
    access: Access = authorize(REVIEW),
) -> Response:
    """Review a listing for an organisation (`organisation_id` in the body or query,
    or `X-Organisation-ID`; default: your default project's): 201 for a new review,
    200 when it changes the organisation's review of the listing (one each).
    Only an organisation that has called the API successfully (an answer below 400
    through the gateway, on one of its subscriptions) may review it, and never the
    listing's own organisation or anyone in it: 403 `FORBIDDEN` otherwise."""
    org = await access.org(body.organisation_id or organisation_id, REVIEW)
    service = ReviewService(core, session)
    review, created = await service.post(
        access.principal, org, body.listing_id, stars=body.stars, text=body.text
    )
    (view,) = await service.views(access.principal, [review])
    return ok({"review": view}, 201 if created else 200)


@router.put("/reviews/{review_id}", response_model=Envelope[dict[str, ReviewPublic]])
async def update_review(
    review_id: ReviewId,
    body: ReviewUpdate,
    core: CoreDep,
    session: SessionDep,
    access: Access = authorize(REVIEW),
) -> Response:
    """Change your organisation's review (its stars, its text or both)."""
    service = ReviewService(core, session)
    review = await service.own(access.principal, review_id)
    access.log_under(review.organisation_id)
    review = await service.update(review, stars=body.stars, text=body.text)
    (view,) = await service.views(access.principal, [review])
    return ok({"review": view})


@router.delete("/reviews/{review_id}", response_model=Envelope[Message])
async def delete_review(
    review_id: ReviewId,
    core: CoreDep,
    session: SessionDep,
    access: Access = authorize(REVIEW),
) -> Response:
    """Withdraw your organisation's review (it may write another later)."""
    service = ReviewService(core, session)
    review = await service.own(access.principal, review_id)
    access.log_under(review.organisation_id)
    await service.delete(review)
    return ok(Message(message="Review deleted"))


@router.post(
    "/reviews/{review_id}/reply",
    status_code=201,
    response_model=Envelope[dict[str, ReviewPublic]],
)
async def reply_to_review(
    review_id: ReviewId,
    body: ReplyCreate,
    core: CoreDep,
    session: SessionDep,
    access: Access = authorize(REVIEW),
) -> Response:
    """Reply to a review of your listing, once (a second reply is a 409 `CONFLICT`).
    To anyone who may not change the listing the review is a 404."""
    service = ReviewService(core, session)
    review = await service.reply(access.principal, review_id, body.text)
    (view,) = await service.views(access.principal, [review])
    return ok({"review": view}, 201)
