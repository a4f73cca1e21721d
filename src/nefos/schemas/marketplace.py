"""Wire shapes of the marketplace: listings of APIs and their plans (seed 002)."""

from __future__ import annotations

import re
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, Field, model_validator

from nefos.schemas.billing import Money, Price, Priced, PriceIn, SubscriptionPublic
from nefos.schemas.common import Email, Id, Pagination, Request

PriceModel = Literal["free", "pay_per_use", "freemium", "monthly"]
Visibility = Literal["public", "private"]
_CATEGORY = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")
_TAG = re.compile(r"^[a-z0-9][a-z0-9+#.-]{0,29}$")
_KEY_UNSAFE = re.compile(r"[^a-z0-9]+")
MAX_PLANS = 8
STAR_KEYS = ("1", "2", "3", "4", "5")
#: The longest review, and the longest reply to one.
MAX_REVIEW_TEXT = 4000


def plan_key(name: str) -> str:
    """A plan's stable key across versions: its name, slugged (``Pro Plus`` -> ``pro-plus``)."""
    return _KEY_UNSAFE.sub("-", name.lower()).strip("-")[:40] or "plan"


def _distinct(plans: list[PlanIn]) -> None:
    keys = [plan_key(p.name) for p in plans]
    if len(set(keys)) != len(keys):
        raise ValueError("each plan has a name of its own")


def _category(value: str) -> str:
    value = value.strip().lower()
    if not _CATEGORY.match(value):
        raise ValueError("1-40 lowercase letters, digits and '-' (e.g. 'weather')")
    return value


def _tags(value: list[str]) -> list[str]:
    out = []
    for tag in value:
        tag = tag.strip().lower()
        if not _TAG.match(tag):
            raise ValueError(
                f"tag {tag[:30]!r}: 1-30 lowercase letters, digits, '+', '#', '.', '-'"
            )
        if tag not in out:
            out.append(tag)
    return out


class PlanIn(Request):
    """One plan of a listing. ``free``: ``included_calls`` a month (none: unlimited);
    ``pay_per_use``: ``price_per_call``; ``freemium``: ``included_calls`` free a
    month, then ``price_per_call``; ``monthly``: ``monthly_price`` for
    ``included_calls``, then ``overage_price`` a call (none: refused beyond)."""

    name: Annotated[str, Field(min_length=1, max_length=80)]
    model: PriceModel
    price_per_call: PriceIn | None = None
    monthly_price: PriceIn | None = None
    included_calls: Annotated[int, Field(ge=1, le=10**12)] | None = None
    overage_price: PriceIn | None = None
    rate_limit_per_minute: Annotated[int, Field(ge=1, le=100_000)] = 60

    @model_validator(mode="after")
    def _terms(self) -> PlanIn:
        m = self.model
        given = {
            k
            for k in ("price_per_call", "monthly_price", "overage_price", "included_calls")
            if getattr(self, k) is not None
        }
        allowed = {
            "free": {"included_calls"},
            "pay_per_use": {"price_per_call"},
            "freemium": {"included_calls", "price_per_call"},
            "monthly": {"monthly_price", "included_calls", "overage_price"},
        }[m]
        needed = {
            "free": set(),
            "pay_per_use": {"price_per_call"},
            "freemium": {"included_calls", "price_per_call"},
            "monthly": {"monthly_price", "included_calls"},
        }[m]
        if extra := sorted(given - allowed):
            raise ValueError(f"a {m} plan takes no {', '.join(extra)}")
        if missing := sorted(needed - given):
            raise ValueError(f"a {m} plan needs {', '.join(missing)}")
        for k in ("price_per_call", "monthly_price"):
            value = getattr(self, k)
            if k in needed and value is not None and value <= 0:
                raise ValueError(f"{k} of a {m} plan is above 0 (use a free plan)")
        return self


class PublishRequest(Request):
    """``POST /marketplace/publish``: a listing for one of the caller's APIs."""

    api_id: Id
    title: Annotated[str, Field(min_length=1, max_length=120)]
    summary: Annotated[str, Field(max_length=300)] = ""
    description: Annotated[
        str, Field(max_length=20_000, description="Markdown; default: the API's description.")
    ] = ""
    category: Annotated[str, Field(max_length=40), AfterValidator(_category)]
    tags: Annotated[list[Annotated[str, Field(max_length=30)]], Field(max_length=10)] = []
    visibility: Visibility = "public"
    plans: Annotated[list[PlanIn], Field(min_length=1, max_length=MAX_PLANS)]

    @model_validator(mode="after")
    def _unique(self) -> PublishRequest:
        self.tags = _tags(self.tags)
        _distinct(self.plans)
        return self


class ListingUpdate(Request):
    """``PUT /marketplace/listings/{id}``: what is given replaces what was. ``plans``
    is the whole new set: a plan whose terms changed gets a new version (subscribers
    keep theirs), a plan left out is retired, a new one is added."""

    title: Annotated[str, Field(min_length=1, max_length=120)] | None = None
    summary: Annotated[str, Field(max_length=300)] | None = None
    description: Annotated[str, Field(max_length=20_000)] | None = None
    category: Annotated[str, Field(max_length=40), AfterValidator(_category)] | None = None
    tags: Annotated[list[Annotated[str, Field(max_length=30)]], Field(max_length=10)] | None = None
    visibility: Visibility | None = None
    status: Literal["published", "unpublished"] | None = None
    plans: Annotated[list[PlanIn], Field(min_length=1, max_length=MAX_PLANS)] | None = None

    @model_validator(mode="after")
    def _unique(self) -> ListingUpdate:
        if self.tags is not None:
            self.tags = _tags(self.tags)
        if self.plans is not None:
            _distinct(self.plans)
        return self


class PlanPublic(BaseModel):
    id: str
    key: str
    version: int
    name: str
    model: PriceModel
    currency: str
    price_per_call: Price | None
    monthly_price: Price | None
    included_calls: int | None
    overage_price: Price | None
    rate_limit_per_minute: int


class Rating(BaseModel):
    """A listing's reviews in figures: the average of their stars (2 places; null
    with none), how many there are, and how many gave each number of stars."""

    average: float | None
    count: int
    histogram: dict[str, int] = Field(
        description='Reviews by stars: {"1": n, ..., "5": n}.',
        default_factory=lambda: dict.fromkeys(STAR_KEYS, 0),
    )


class ListingPublic(BaseModel):
    id: str
    api_id: str
    slug: str
    title: str
    summary: str
    description: str
    category: str
    tags: list[str]
    visibility: Visibility
    status: str
    currency: str
    price_models: list[PriceModel]
    plans: list[PlanPublic]
    rating: Rating
    calls_30d: int
    organisation_id: str
    docs: dict[str, Any] | None = Field(
        None, description="The API's OpenAPI document (in a listing's own page)."
    )
    published_at: datetime | None
    created_at: datetime
    updated_at: datetime
    relevance: float | None = Field(None, description="With `q`: how well it matches.")


class ListingPage(BaseModel):
    items: list[ListingPublic]
    listings: list[ListingPublic]
    pagination: Pagination


def price_text(value: Decimal | None) -> str | None:
    """A plan's price as the wire shows it: its own places, no exponent."""
    return None if value is None else format(Decimal(value).normalize(), "f")


# --- subscriptions and their keys ---------------------------------------------------
SubscriptionStatus = Literal["active", "past_due", "cancelled", "ended"]
EndedReason = Literal["cancelled", "unpaid", "api_deleted"]
#: The longest overlap a rotation gives the keys it replaces (7 days).
MAX_OVERLAP_SECONDS = 7 * 24 * 3600


class SubscribeRequest(Request):
    """``POST /marketplace/listings/{id}/subscribe``: a current plan of the listing,
    for an organisation of the caller's (default: its default project's)."""

    plan_id: Id
    organisation_id: Id | None = None


class SubscriptionUpdate(Request):
    """``PUT /marketplace/subscriptions/{id}``: move to another current plan of the
    same listing. Between plans without a fee the period, and the calls counted in
    it, carry over; leaving a paid monthly period credits its unused part, and a
    monthly plan starts a new period now with its fee charged (402 if the wallet
    cannot pay it)."""

    plan_id: Id


class SubscriptionKeyCreate(Request):
    """``POST /marketplace/subscriptions/{id}/keys``. With ``rotate``, every other
    live key of the subscription expires ``overlap_seconds`` from now."""

    name: Annotated[str, Field(max_length=80)] = ""
    rotate: bool = False
    overlap_seconds: Annotated[int, Field(ge=0, le=MAX_OVERLAP_SECONDS)] = 3600


class SubscriptionKeyPublic(BaseModel):
    """A consumer key as it is shown after its creation: never the key nor its hash."""

    id: str
    name: str
    prefix: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None


class SubscriptionKeyCreated(SubscriptionKeyPublic):
    key: str = Field(description="The key (`nfc_...`): shown this once, kept only as a hash.")


class NextCharge(Priced):
    """The fee the subscription's renewal will charge, and when."""

    amount: Money
    currency: str
    at: datetime


class ApiSubscriptionPublic(BaseModel):
    """An organisation's subscription to one listing's plan (the plan version it
    agreed to). ``status`` is as of now: a paid plan cancelled at its period's end
    reads ``ended`` once that end has passed; ``past_due``: its renewal's fee is
    unpaid (calls answer 402 until a billing pass charges it)."""

    id: str
    listing_id: str
    title: str
    api_slug: str
    plan: PlanPublic
    organisation_id: str
    status: SubscriptionStatus
    period_start: datetime
    period_end: datetime
    cancel_at_period_end: bool
    ended_at: datetime | None
    ended_reason: EndedReason | None = Field(
        description="Why it ended: cancelled, unpaid (a renewal never paid) or api_deleted."
    )
    renews_at: datetime | None = Field(
        description="When its next period starts (none once it ends there or has ended)."
    )
    next_charge: NextCharge | None = Field(
        description="A monthly plan's fee at its renewal (none without a fee or renewal)."
    )
    created_at: datetime
    updated_at: datetime


class ApiSubscriptionDetail(ApiSubscriptionPublic):
    keys: list[SubscriptionKeyPublic]


class SubscriptionUsage(BaseModel):
    """A subscription's use of its current period, as its consumer sees it."""

    subscription_id: str
    listing_id: str
    title: str
    api_slug: str
    plan: PlanPublic
    status: SubscriptionStatus
    period_start: datetime
    period_end: datetime
    calls: int = Field(description="Calls answered below 500 (those counted).")
    units: int = Field(
        0, description="Their units: what the quota counts (a call is 1 unless its API says)."
    )
    errors: int = Field(description="Calls answered 500 or more: neither counted nor billed.")
    quota: int | None = Field(description="The plan's included units (null: no quota).")
    remaining: int | None = Field(description="Units left of the quota.")
    percent_used: float | None = Field(description="Units used, % of the quota.")
    currency: str
    amount: str = Field(description="What this period's calls cost.")
    charged: str = Field(description="Of which charged to the wallet already.")
    pending: str = Field(description="Of which the billing pass charges next.")
    alerts: list[int] = Field(description="The usage alerts told this period (50, 80, 100 %).")


class Subscribed(BaseModel):
    subscription: ApiSubscriptionPublic
    key: SubscriptionKeyCreated


class SubscriptionPage(BaseModel):
    items: list[ApiSubscriptionPublic]
    subscriptions: list[ApiSubscriptionPublic]
    pagination: Pagination


class PlansSold(BaseModel):
    listing_id: str
    title: str
    status: str
    plans: list[PlanPublic]
    subscribers: int = Field(description="Its active subscriptions.")


class MarketplaceAccount(BaseModel):
    """An organisation's side of the marketplace: what it subscribes to, what it sells."""

    subscriptions: list[ApiSubscriptionPublic]
    plans_sold: list[PlansSold]


class BillingSubscriptionPublic(SubscriptionPublic):
    """``GET /billing/subscription``: the wallet's plan, and the marketplace's."""

    marketplace: MarketplaceAccount


# --- reviews ------------------------------------------------------------------------
Stars = Annotated[int, Field(ge=1, le=5, description="1 (poor) to 5 (excellent).")]


# Requests strip whitespace first: a text of blanks is too short.
ReviewText = Annotated[str, Field(min_length=1, max_length=MAX_REVIEW_TEXT)]


class ReviewCreate(Request):
    """``POST /marketplace/reviews``: your organisation's review of a listing (a
    second one changes the first). Only an organisation that has called the API
    successfully (an answer below 400 through the gateway, on one of its
    subscriptions) may review it, and never the listing's own."""

    listing_id: Id
    stars: Stars
    text: ReviewText
    organisation_id: Id | None = None


class ReviewUpdate(Request):
    """``PUT /marketplace/reviews/{id}``: new stars, a new text, or both."""

    stars: Stars | None = None
    text: ReviewText | None = None

    @model_validator(mode="after")
    def _something(self) -> ReviewUpdate:
        if self.stars is None and self.text is None:
            raise ValueError("give stars, text or both")
        return self


class ReplyCreate(Request):
    """``POST /marketplace/reviews/{id}/reply``: the creator's one answer to a review."""

    text: ReviewText


class ReviewReply(BaseModel):
    text: str
    replied_at: datetime


class ReviewPublic(BaseModel):
    """A review as everyone who may see the listing reads it: by a consumer
    organisation that called the API (which one is not shown), with the creator's
    reply if any. ``mine``: written by one of your organisations."""

    id: str
    listing_id: str
    stars: int
    text: str
    mine: bool
    reply: ReviewReply | None
    created_at: datetime
    updated_at: datetime


class ReviewPage(BaseModel):
    items: list[ReviewPublic]
    reviews: list[ReviewPublic]
    pagination: Pagination
    rating: Rating


# --- invitations to private listings --------------------------------------------------
InvitationStatus = Literal["pending", "accepted", "revoked", "expired"]


class ListingInvitationCreate(Request):
    """``POST /marketplace/listings/{id}/invitations``: an organisation (by id: in at
    once) or an e-mail address (a token for its holder to accept), not both."""

    email: Email | None = None
    organisation_id: Id | None = None
    expires_in_days: Annotated[
        int, Field(ge=1, le=90, description="How long an e-mail invitation's token holds.")
    ] = 7

    @model_validator(mode="after")
    def _one_invitee(self) -> ListingInvitationCreate:
        if (self.email is None) == (self.organisation_id is None):
            raise ValueError("give either email or organisation_id")
        return self


class ListingInvitationPublic(BaseModel):
    """An invitation to a private listing. ``status``: ``pending`` (an e-mail's, not
    accepted yet), ``accepted`` (its organisation sees the listing and may subscribe),
    ``revoked``, or ``expired`` (a pending one past ``expires_at``)."""

    id: str
    listing_id: str
    organisation_id: str | None = Field(
        description="The organisation invited, or the one an e-mail invitation was accepted for."
    )
    email: str | None
    status: InvitationStatus
    invited_by: str | None
    accepted_by: str | None
    created_at: datetime
    expires_at: datetime
    accepted_at: datetime | None
    revoked_at: datetime | None


class ListingInvitationCreated(ListingInvitationPublic):
    token: str | None = Field(
        description="An e-mail invitation's token (``nfl_...``), shown only in this "
        "answer: pass it on to the invitee, who accepts it with "
        "POST /marketplace/invitations/accept. Null for an organisation's (in at once)."
    )


class ListingInvitationPage(BaseModel):
    items: list[ListingInvitationPublic]
    invitations: list[ListingInvitationPublic]
    pagination: Pagination


class ListingInvitationRevoked(BaseModel):
    invitation: ListingInvitationPublic
    subscriptions_cancelled: int = Field(
        description="Live subscriptions of the organisation it let in, cancelled by the "
        "revocation (a paid period runs to its end, unrenewed)."
    )


class ListingInvitationAccept(Request):
    """``POST /marketplace/invitations/accept``: the token the seller passed on, for
    an organisation of yours (default: your default project's)."""

    token: Annotated[str, Field(min_length=1, max_length=200)]
    organisation_id: Id | None = None


class ListingInvitationAccepted(BaseModel):
    invitation: ListingInvitationPublic
    listing: ListingPublic | None = Field(
        description="The listing, now yours to see (null while it is unpublished)."
    )
