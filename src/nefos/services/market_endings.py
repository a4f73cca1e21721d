"""The end of an API's marketplace life: ``DELETE /apis/{id}`` unpublishes its listing
and ends its subscriptions at once, with a pro-rata credit of each paid monthly
period (seed 002's "ends subscriptions at once with a pro-rata credit"). Apart from
``market_subscriptions`` (which needs the marketplace, which needs the APIs) so that
the APIs' service may call it."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from nefos.billing import planfees, subevents
from nefos.config import Settings
from nefos.db.models import Listing, Subscription, SubscriptionKey
from nefos.domain.plans import ACTIVE, CANCELLED, ENDED, LIVE, effective_status


async def end_for_api(session: AsyncSession, settings: Settings, api_id: str, now: datetime) -> int:
    """The API is being deleted: unpublish its listing and end every live subscription
    to it at once (``cancelled``, reason ``api_deleted``) with its keys revoked, and
    credit each consumer of a paid monthly period its unused part (the creator gives
    back its share); each told as ``subscription.ended``. In the caller's write
    transaction, which holds the API's row; the caller commits. How many
    subscriptions ended."""
    listing = await session.scalar(select(Listing).where(Listing.api_id == api_id))
    if listing is None:
        return 0
    if listing.status != "unpublished":
        listing.status = "unpublished"
        listing.updated_at = now
    subs = (
        await session.scalars(
            select(Subscription)
            .where(Subscription.listing_id == listing.id, Subscription.status.in_(LIVE))
            .order_by(Subscription.created_at, Subscription.id)
            .with_for_update()
        )
    ).all()
    for sub in subs:
        if effective_status(sub, now) == ENDED:  # over at its period's end: settle it
            sub.status, sub.ended_at, sub.ended_reason = ENDED, sub.period_end, "cancelled"
        else:
            if sub.status == ACTIVE:
                await planfees.credit_unused(session, settings, sub, listing, now)
            sub.status, sub.ended_at, sub.ended_reason = CANCELLED, now, "api_deleted"
        sub.updated_at = now
        await subevents.tell(session, subevents.ENDED, sub, listing=listing, now=now)
    if subs:
        ids = [s.id for s in subs]
        for i in range(0, len(ids), 500):  # SQLite's bound on parameters
            await session.execute(
                update(SubscriptionKey)
                .where(
                    SubscriptionKey.subscription_id.in_(ids[i : i + 500]),
                    SubscriptionKey.revoked_at.is_(None),
                )
                .values(revoked_at=now)
                .execution_options(synchronize_session=False)
            )
    await session.flush()
    return len(subs)


__all__ = ["end_for_api"]
