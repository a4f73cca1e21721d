"""Reviews of marketplace listings (seed 002): 1 to 5 stars and a text, written for
a consumer organisation, answered once by the creator.

Who may review: an organisation (the caller acting for it with ``compute.write``)
whose subscription to the listing had at least one call answered below 400 through
the gateway -- someone who has used the API -- and never the listing's own
organisation, nor anyone who holds a role in it (a creator does not review its own
API from another organisation of theirs). Both refusals are 403 ``FORBIDDEN``: the
caller is known, the listing is visible, the act is not theirs to do.

One review per organisation and listing (a unique constraint): posting again
changes it, under a row lock, so two posts at once leave one review. The creator
(whoever may change the listing) may reply once; a second reply is a 409.

Reviews are read by whoever may see the listing (everyone, for a public published
one; a private or unpublished listing's are a 404 to strangers, like the listing).
The listing's rating is counted from them when it is shown
(``MarketplaceService.ratings``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from nefos.db.models import ApiCall, Listing, ListingReview, Organisation, Subscription
from nefos.db.session import begin_write
from nefos.db.types import utcnow
from nefos.domain.access import Permission
from nefos.domain.errors import Conflict, Forbidden, NotFound
from nefos.domain.paging import PageParams
from nefos.services.core import Core
from nefos.services.marketplace import MarketplaceService
from nefos.services.paging import fetch_page
from nefos.services.principal import Principal, authorize_org, visible_org_ids

#: The permission a review (and a reply) is written with, in the organisation it
#: speaks for: members use the organisation's APIs, viewers only look.
WRITE = Permission.COMPUTE_WRITE


def _not_found(review_id: str) -> NotFound:
    return NotFound("Review not found", review_id=review_id)


class ReviewService:
    def __init__(self, core: Core, session: AsyncSession) -> None:
        self.core = core
        self.session = session

    # --- reading ----------------------------------------------------------------------
    async def list_page(
        self,
        principal: Principal | None,
        listing_id: str,
        page: PageParams,
        *,
        stars: int | None = None,
    ) -> tuple[list[dict[str, Any]], int, dict[str, Any]]:
        """A listing's reviews the caller may read, newest first, and the listing's
        rating (of all its reviews, whatever ``stars`` filters)."""
        found, _ = await MarketplaceService(self.core, self.session).get(principal, listing_id)
        where = [ListingReview.listing_id == listing_id]
        if stars is not None:
            where.append(ListingReview.stars == stars)
        rows, total = await fetch_page(
            self.session,
            ListingReview,
            *where,
            order_by=(ListingReview.created_at.desc(), ListingReview.id),
            page=page,
        )
        return await self.views(principal, rows), total, found.rating

    async def views(
        self, principal: Principal | None, reviews: Sequence[ListingReview]
    ) -> list[dict[str, Any]]:
        mine = set(await visible_org_ids(self.session, principal)) if principal else set()
        return [
            {
                "id": r.id,
                "listing_id": r.listing_id,
                "stars": r.stars,
                "text": r.text,
                "mine": r.organisation_id in mine,
                "reply": (
                    {"text": r.reply_text, "replied_at": r.replied_at}
                    if r.reply_text is not None
                    else None
                ),
                "created_at": r.created_at,
                "updated_at": r.updated_at,
            }
            for r in reviews
        ]

    async def _review(self, review_id: str) -> ListingReview:
        review = await self.session.get(ListingReview, review_id)
        if review is None:
            raise _not_found(review_id)
        return review

    async def own(self, principal: Principal, review_id: str) -> ListingReview:
        """A review written for one of the caller's organisations, where the caller's
        role grants ``compute.write`` (403 if it does not); anyone else's is a 404."""
        review = await self._review(review_id)
        try:
            await authorize_org(self.session, principal, review.organisation_id, WRITE)
        except NotFound:
            raise _not_found(review_id) from None
        return review

    # --- writing ----------------------------------------------------------------------
    async def _may_review(self, principal: Principal, org: Organisation, listing: Listing) -> None:
        seller = listing.organisation_id
        if org.id == seller or seller in await visible_org_ids(self.session, principal):
            raise Forbidden("A listing's creator does not review it", listing_id=listing.id)
        # Through the organisation's subscriptions to the listing: an indexed look at
        # its own calls only (ix_api_calls_subscription_created).
        called = await self.session.scalar(
            select(ApiCall.id)
            .join(Subscription, Subscription.id == ApiCall.subscription_id)
            .where(
                Subscription.listing_id == listing.id,
                Subscription.organisation_id == org.id,
                ApiCall.api_id == listing.api_id,
                ApiCall.status < 400,
            )
            .limit(1)
        )
        if called is None:
            raise Forbidden(
                "Only an organisation that has used this API may review it: subscribe, "
                "and make at least one call that succeeds (answered below 400)",
                listing_id=listing.id,
                organisation_id=org.id,
            )

    async def post(
        self, principal: Principal, org: Organisation, listing_id: str, *, stars: int, text: str
    ) -> tuple[ListingReview, bool]:
        """Write ``org``'s review of a listing the caller may see, or change the one it
        has; whether it is new."""
        org_id = org.id  # a rollback below expires the row
        found, _ = await MarketplaceService(self.core, self.session).get(principal, listing_id)
        await self._may_review(principal, org, found.listing)
        for attempt in range(2):
            await begin_write(self.session)
            review = await self.session.scalar(
                select(ListingReview)
                .where(
                    ListingReview.listing_id == listing_id,
                    ListingReview.organisation_id == org_id,
                )
                .with_for_update()
                .execution_options(populate_existing=True)
            )
            if review is not None:
                review.stars, review.text = stars, text
                review.user_id = principal.user_id
                review.updated_at = utcnow()
                await self.session.commit()
                return review, False
            review = ListingReview(
                listing_id=listing_id,
                organisation_id=org_id,
                user_id=principal.user_id,
                stars=stars,
                text=text,
            )
            self.session.add(review)
            try:
                await self.session.commit()
            except IntegrityError:
                # The organisation's other post came first: change that one instead.
                await self.session.rollback()
                if attempt:
                    raise
                continue
            return review, True
        raise AssertionError("unreachable")

    async def update(
        self, review: ListingReview, *, stars: int | None, text: str | None
    ) -> ListingReview:
        review_id = review.id
        await begin_write(self.session)
        locked = await self.session.scalar(
            select(ListingReview)
            .where(ListingReview.id == review_id)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
        if locked is None:
            raise _not_found(review_id)
        if stars is not None:
            locked.stars = stars
        if text is not None:
            locked.text = text
        locked.updated_at = utcnow()
        await self.session.commit()
        return locked

    async def delete(self, review: ListingReview) -> None:
        await begin_write(self.session)
        await self.session.delete(review)
        await self.session.commit()

    async def reply(self, principal: Principal, review_id: str, text: str) -> ListingReview:
        """The creator's one reply (409 for a second). Only whoever may change the
        listing replies; to anyone else the review is a 404, like another tenant's."""
        review = await self._review(review_id)
        listing = await self.session.get(Listing, review.listing_id)
        assert listing is not None
        try:
            await MarketplaceService(self.core, self.session).seller(principal, listing)
        except NotFound:
            raise _not_found(review_id) from None
        await begin_write(self.session)
        locked = await self.session.scalar(
            select(ListingReview)
            .where(ListingReview.id == review_id)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
        if locked is None:
            raise _not_found(review_id)
        if locked.reply_text is not None:
            raise Conflict("This review has its reply already", review_id=review_id)
        locked.reply_text = text
        locked.reply_user_id = principal.user_id
        locked.replied_at = utcnow()
        await self.session.commit()
        return locked
