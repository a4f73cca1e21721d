"""The marketplace (seed 002): listings of creators' APIs, their versioned plans,
and a ranked full-text search over them.

A listing belongs to one API and to the API's organisation (the seller). A public,
published listing is browsable without an account; a private or unpublished one
is seen by its organisation's members (and platform admins) only, and is a 404 to
anyone else, like a missing one -- except that a published private listing is
also seen by the members of each organisation it invited (an accepted invitation
that is not revoked: ``services/market_invitations.py``), which may subscribe.

Plans are versioned rows: a change of a plan's terms retires its row and adds the
next version, so what a subscriber agreed to stays as it was.

Search: one index table per database, written in the listing's own transaction --
SQLite's FTS5 (``porter`` stemming, ranked by ``bm25`` with the title weighing most)
and PostgreSQL's ``tsvector`` with a GIN index (ranked by ``ts_rank`` over weighted
fields). A query is reduced to its words (letters and digits) before it reaches
either engine, each word a prefix, all of them required: nothing a browser types
is read as the engine's own syntax.

Ratings are counted from the reviews (``services/reviews.py``) when a listing is
shown, by one grouped count: nothing is kept beside them that could drift.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from sqlalchemy import exists, func, select, text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import ColumnElement

from nefos.billing.accounts import account
from nefos.db.models import (
    Api,
    ApiCall,
    Listing,
    ListingInvitation,
    ListingPlan,
    ListingReview,
    Project,
)
from nefos.db.session import begin_write
from nefos.db.types import utcnow
from nefos.domain.access import Permission
from nefos.domain.errors import Conflict, NotFound
from nefos.domain.paging import PageParams
from nefos.schemas.marketplace import (
    STAR_KEYS,
    ListingUpdate,
    PlanIn,
    PublishRequest,
    plan_key,
    price_text,
)
from nefos.services.apis import ApiService
from nefos.services.core import Core
from nefos.services.principal import Principal, visible_org_ids

#: Listings one browse reads at most before filtering and sorting them.
BROWSE_LIMIT = 5000
#: Words of a query that count (more are ignored).
MAX_WORDS = 10
_WORD = re.compile(r"\w+", re.UNICODE)
_SORTS = ("relevance", "popularity", "rating", "newest")


def query_words(q: str) -> list[str]:
    """The words of a search, lowercased, at most MAX_WORDS: the only part of it
    that reaches a search engine."""
    return [w.lower() for w in _WORD.findall(q)][:MAX_WORDS]


def _terms(plan: PlanIn | ListingPlan) -> tuple[Any, ...]:
    def dec(v: Decimal | None) -> Decimal | None:
        return None if v is None else Decimal(v).normalize()

    return (
        plan.name,
        plan.model,
        dec(plan.price_per_call),
        dec(plan.monthly_price),
        plan.included_calls,
        dec(plan.overage_price),
        plan.rate_limit_per_minute,
    )


def plan_public(p: ListingPlan, currency: str) -> dict[str, Any]:
    """A plan version's terms, as listings and subscriptions show them."""
    return {
        "id": p.id,
        "key": p.key,
        "version": p.version,
        "name": p.name,
        "model": p.model,
        "currency": currency,
        "price_per_call": price_text(p.price_per_call),
        "monthly_price": price_text(p.monthly_price),
        "included_calls": p.included_calls,
        "overage_price": price_text(p.overage_price),
        "rate_limit_per_minute": p.rate_limit_per_minute,
    }


def invited(org_ids: Sequence[str] | set[str]) -> ColumnElement[bool]:
    """The listing holds an accepted, unrevoked invitation of one of ``org_ids``
    (read through ``ix_marketplace_invitations_org_listing``)."""
    return exists().where(
        ListingInvitation.listing_id == Listing.id,
        ListingInvitation.organisation_id.in_(list(org_ids) or [""]),
        ListingInvitation.accepted_at.is_not(None),
        ListingInvitation.revoked_at.is_(None),
    )


def no_rating() -> dict[str, Any]:
    return {"average": None, "count": 0, "histogram": dict.fromkeys(STAR_KEYS, 0)}


@dataclass
class Found:
    listing: Listing
    plans: list[ListingPlan]
    relevance: float | None = None
    #: Calls answered (below 500) through the gateway in the last 30 days.
    calls_30d: int = 0
    #: Its reviews in figures: ``average`` (null with none), ``count``, ``histogram``.
    rating: dict[str, Any] = field(default_factory=no_rating)


class MarketplaceService:
    def __init__(self, core: Core, session: AsyncSession) -> None:
        self.core = core
        self.session = session

    # --- who sees what ----------------------------------------------------------------
    async def _seller_orgs(self, principal: Principal | None) -> set[str] | None:
        """The organisations whose private listings the caller sees (None: all, for
        a platform admin; an empty set for a stranger)."""
        if principal is None:
            return set()
        if principal.is_admin and principal.key_organisation_id is None:
            return None
        return set(await visible_org_ids(self.session, principal))

    async def _visible(self, principal: Principal | None, listing: Listing) -> bool:
        if listing.status == "published" and listing.visibility == "public":
            return True
        orgs = await self._seller_orgs(principal)
        if orgs is None or listing.organisation_id in orgs:
            return True
        return listing.status == "published" and await self.is_invited(listing.id, orgs)

    async def is_invited(self, listing_id: str, org_ids: set[str]) -> bool:
        """One of ``org_ids`` holds an accepted, unrevoked invitation to the listing."""
        if not org_ids:
            return False
        found = await self.session.scalar(
            select(Listing.id).where(Listing.id == listing_id, invited(org_ids))
        )
        return found is not None

    async def may_subscribe(
        self, principal: Principal, listing: Listing, organisation_id: str
    ) -> bool:
        """Whether the caller may subscribe ``organisation_id`` to a listing it sees: a
        public one, any organisation; a private one, the seller's own, or one it
        invited (or any, for a member of the seller's organisation)."""
        if listing.visibility == "public" or listing.organisation_id == organisation_id:
            return True
        orgs = await self._seller_orgs(principal)
        if orgs is None or listing.organisation_id in orgs:
            return True
        return await self.is_invited(listing.id, {organisation_id})

    async def plans(self, listing_ids: Sequence[str]) -> dict[str, list[ListingPlan]]:
        """Each listing's current plans (retired versions left out)."""
        out: dict[str, list[ListingPlan]] = {i: [] for i in listing_ids}
        if not listing_ids:
            return out
        rows = await self.session.scalars(
            select(ListingPlan)
            .where(ListingPlan.listing_id.in_(listing_ids), ListingPlan.retired_at.is_(None))
            .order_by(ListingPlan.listing_id, ListingPlan.created_at, ListingPlan.key)
        )
        for p in rows:
            out[p.listing_id].append(p)
        return out

    # --- reading ----------------------------------------------------------------------
    async def get(self, principal: Principal | None, listing_id: str) -> tuple[Found, Api]:
        listing = await self.session.get(Listing, listing_id)
        if listing is None or not await self._visible(principal, listing):
            raise NotFound("Listing not found", listing_id=listing_id)
        api = await self.session.get(Api, listing.api_id)
        assert api is not None
        calls = (await self.calls_30d([api.id])).get(api.id, 0)
        plans = (await self.plans([listing.id]))[listing.id]
        rating = (await self.ratings([listing.id]))[listing.id]
        return Found(listing, plans, calls_30d=calls, rating=rating), api

    async def browse(
        self,
        principal: Principal | None,
        page: PageParams,
        *,
        q: str | None = None,
        category: str | None = None,
        tag: str | None = None,
        price_model: str | None = None,
        sort: str | None = None,
    ) -> tuple[list[Found], int, dict[str, str]]:
        """Published listings the caller may see, filtered, sorted and paged; and
        each listing's API slug."""
        scores: dict[str, float] | None = None
        if q is not None and q.strip():  # (a blank query is no search: every listing)
            words = query_words(q)
            scores = await self._search(words) if words else {}
        query = (
            select(Listing, Api.slug)
            .join(Api, Api.id == Listing.api_id)
            .where(Listing.status == "published")
        )
        orgs = await self._seller_orgs(principal)
        if orgs is not None:
            query = query.where(
                (Listing.visibility == "public")
                | Listing.organisation_id.in_(orgs or {""})
                | invited(orgs)
            )
        if category:
            query = query.where(Listing.category == category.strip().lower())
        if scores is not None:
            query = query.where(Listing.id.in_(list(scores) or [""]))
        rows = (
            await self.session.execute(
                query.order_by(Listing.published_at.desc(), Listing.id).limit(BROWSE_LIMIT)
            )
        ).all()
        plans = await self.plans([listing.id for listing, _ in rows])
        found = [
            Found(listing, plans[listing.id], scores.get(listing.id) if scores else None)
            for listing, _ in rows
        ]
        if tag:
            wanted = tag.strip().lower()
            found = [f for f in found if wanted in (f.listing.tags or [])]
        if price_model:
            found = [f for f in found if any(p.model == price_model for p in f.plans)]
        order = sort or ("relevance" if scores is not None else "newest")
        calls = await self.calls_30d([listing.api_id for listing, _ in rows])
        ratings = await self.ratings([f.listing.id for f in found])
        for f in found:
            f.calls_30d = calls.get(f.listing.api_id, 0)
            f.rating = ratings[f.listing.id]
        # Each sort is stable: newest first on ties.
        if order == "relevance" and scores is not None:
            found.sort(key=lambda f: -(f.relevance or 0.0))
        elif order == "popularity":
            found.sort(key=lambda f: -f.calls_30d)
        elif order == "rating":
            # The best average first, the more reviewed first among equals; unrated last.
            found.sort(
                key=lambda f: (
                    f.rating["count"] == 0,
                    -(f.rating["average"] or 0.0),
                    -f.rating["count"],
                )
            )
        slugs = {listing.id: slug for listing, slug in rows}
        return found[page.offset : page.offset + page.limit], len(found), slugs

    async def calls_30d(self, api_ids: Sequence[str]) -> dict[str, int]:
        """API id -> calls answered below 500 through the gateway in the last 30 days
        (one grouped count over ``ix_api_calls_api_created``)."""
        if not api_ids:
            return {}
        since = utcnow() - timedelta(days=30)
        rows = await self.session.execute(
            select(ApiCall.api_id, func.count())
            .where(
                ApiCall.api_id.in_(list(api_ids)),
                ApiCall.created_at >= since,
                ApiCall.status < 500,
            )
            .group_by(ApiCall.api_id)
        )
        return {str(api_id): int(count) for api_id, count in rows}

    async def ratings(self, listing_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Listing id -> its reviews' average (2 places; None with none), count and
        count by stars: one grouped count over ``uq_marketplace_reviews_listing_id``,
        so it is never out of step with the reviews."""
        out = {i: no_rating() for i in listing_ids}
        if not listing_ids:
            return out
        rows = await self.session.execute(
            select(ListingReview.listing_id, ListingReview.stars, func.count())
            .where(ListingReview.listing_id.in_(list(listing_ids)))
            .group_by(ListingReview.listing_id, ListingReview.stars)
        )
        for listing_id, stars, count in rows:
            histogram = out[str(listing_id)]["histogram"]
            histogram[str(stars)] = int(count)
        for rating in out.values():
            counts = rating["histogram"]
            total = sum(counts.values())
            if total:
                stars_sum = sum(int(k) * n for k, n in counts.items())
                rating["count"] = total
                average = (Decimal(stars_sum) / total).quantize(Decimal("0.01"), ROUND_HALF_UP)
                rating["average"] = float(average)
        return out

    async def _search(self, words: list[str]) -> dict[str, float]:
        """Listing id -> relevance (higher is better) of the best ``BROWSE_LIMIT``
        listings matching every word (as a prefix)."""
        if self.core.db.is_sqlite:
            match = " ".join(f'"{w}"*' for w in words)
            rows = await self.session.execute(
                text(
                    "SELECT listing_id, -bm25(marketplace_search, 0.0, 10.0, 4.0, 1.0, 6.0)"
                    " AS score FROM marketplace_search WHERE marketplace_search MATCH :match"
                    " ORDER BY score DESC LIMIT :limit"
                ),
                {"match": match, "limit": BROWSE_LIMIT},
            )
        else:
            tsquery = " & ".join(f"{w}:*" for w in words)
            rows = await self.session.execute(
                text(
                    "SELECT listing_id, ts_rank(document, q) AS score"
                    " FROM marketplace_search, to_tsquery('english', :q) AS q"
                    " WHERE document @@ q ORDER BY score DESC LIMIT :limit"
                ),
                {"q": tsquery, "limit": BROWSE_LIMIT},
            )
        return {str(i): float(score) for i, score in rows}

    async def _index(self, listing: Listing) -> None:
        """(Re)write the listing's entry in the search index (the caller commits)."""
        fields = {
            "id": listing.id,
            "title": listing.title,
            "summary": listing.summary,
            "description": listing.description,
            "tags": " ".join(listing.tags or []),
        }
        if self.core.db.is_sqlite:
            await self.session.execute(
                text("DELETE FROM marketplace_search WHERE listing_id = :id"), {"id": listing.id}
            )
            await self.session.execute(
                text(
                    "INSERT INTO marketplace_search (listing_id, title, summary, description,"
                    " tags) VALUES (:id, :title, :summary, :description, :tags)"
                ),
                fields,
            )
        else:
            await self.session.execute(
                text(
                    "INSERT INTO marketplace_search (listing_id, document) VALUES (:id,"
                    " setweight(to_tsvector('english', :title), 'A')"
                    " || setweight(to_tsvector('english', :tags), 'B')"
                    " || setweight(to_tsvector('english', :summary), 'B')"
                    " || setweight(to_tsvector('english', :description), 'C'))"
                    " ON CONFLICT (listing_id) DO UPDATE SET document = EXCLUDED.document"
                ),
                fields,
            )

    # --- writing ----------------------------------------------------------------------
    async def seller(self, principal: Principal, listing: Listing) -> None:
        """The caller may change this listing: it may change the listing's API."""
        try:
            await ApiService(self.core, self.session).visible(
                principal, listing.api_id, Permission.COMPUTE_WRITE
            )
        except NotFound:
            raise NotFound("Listing not found", listing_id=listing.id) from None

    async def publish(self, principal: Principal, body: PublishRequest) -> Found:
        api = await ApiService(self.core, self.session).visible(
            principal, body.api_id, Permission.COMPUTE_WRITE
        )
        project = await self.session.get(Project, api.project_id)
        assert project is not None
        await begin_write(self.session)
        existing = await self.session.scalar(select(Listing.id).where(Listing.api_id == api.id))
        if existing:
            raise Conflict(
                "This API is listed already: change its listing with "
                f"PUT /marketplace/listings/{existing}",
                listing_id=existing,
            )
        currency = (
            await account(self.session, self.core.settings, project.organisation_id)
        ).currency
        now = utcnow()
        listing = Listing(
            api_id=api.id,
            organisation_id=project.organisation_id,
            user_id=principal.user_id,
            title=body.title,
            summary=body.summary,
            # (A listing says what its API says of itself unless it says more.)
            description=body.description or api.description,
            category=body.category,
            tags=list(body.tags),
            visibility=body.visibility,
            status="published",
            currency=currency,
            published_at=now,
        )
        self.session.add(listing)
        await self.session.flush()
        plans = [self._plan(listing.id, p, 1) for p in body.plans]
        self.session.add_all(plans)
        await self._index(listing)
        await self.session.commit()
        return Found(listing, plans)

    @staticmethod
    def _plan(listing_id: str, p: PlanIn, version: int) -> ListingPlan:
        return ListingPlan(
            listing_id=listing_id,
            key=plan_key(p.name),
            version=version,
            name=p.name.strip(),
            model=p.model,
            price_per_call=p.price_per_call,
            monthly_price=p.monthly_price,
            included_calls=p.included_calls,
            overage_price=p.overage_price,
            rate_limit_per_minute=p.rate_limit_per_minute,
        )

    async def update(self, principal: Principal, listing_id: str, body: ListingUpdate) -> Found:
        listing = await self.session.get(Listing, listing_id)
        if listing is None:
            raise NotFound("Listing not found", listing_id=listing_id)
        await self.seller(principal, listing)
        await begin_write(self.session)
        listing = await self.session.get(Listing, listing_id, populate_existing=True)
        if listing is None:
            raise NotFound("Listing not found", listing_id=listing_id)
        for name in ("title", "summary", "description", "category", "visibility"):
            value = getattr(body, name)
            if value is not None:
                setattr(listing, name, value)
        if body.tags is not None:
            listing.tags = list(body.tags)
        if body.status is not None and body.status != listing.status:
            listing.status = body.status
            if body.status == "published":
                listing.published_at = utcnow()
        if body.plans is not None:
            await self._replace_plans(listing, body.plans)
        listing.updated_at = utcnow()
        await self._index(listing)
        await self.session.commit()
        return Found(listing, (await self.plans([listing.id]))[listing.id])

    async def _replace_plans(self, listing: Listing, wanted: Sequence[PlanIn]) -> None:
        """Plans whose terms changed get their next version; those left out retire;
        new ones start at version 1. Unchanged plans keep their row."""
        now = utcnow()
        current = {p.key: p for p in (await self.plans([listing.id]))[listing.id]}
        latest: dict[str, int] = dict(
            (
                await self.session.execute(
                    select(ListingPlan.key, ListingPlan.version)
                    .where(ListingPlan.listing_id == listing.id)
                    .order_by(ListingPlan.version)
                )
            ).all()
        )
        keep = set()
        for p in wanted:
            key = plan_key(p.name)
            keep.add(key)
            old = current.get(key)
            if old is not None and _terms(old) == _terms(p):
                continue
            if old is not None:
                old.retired_at = now
            self.session.add(self._plan(listing.id, p, latest.get(key, 0) + 1))
        for key, old in current.items():
            if key not in keep:
                old.retired_at = now
        await self.session.flush()
