"""The life of a marketplace subscription, told (seed 002): ``subscription.created``,
``subscription.plan_changed``, ``subscription.renewed``, ``subscription.past_due``,
``subscription.cancelled`` and ``subscription.ended``.

Told as ``usage_alert`` is (``billing/quota.py``): in the transaction that makes the
change, :func:`tell` records the event on the session (published when it commits, to
the WebSocket subscribers of the organisation it names; a rollback drops it) and
queues a delivery to each enabled webhook of that organisation's projects that takes
the type. So a change is told once, and only if it happened.

Who is told: the consumer organisation, of everything; the listing's organisation
(the creator), of who comes and who goes -- ``created``, ``cancelled`` and ``ended``
(each copy says which it is for in ``audience``). A subscription of a listing's own
organisation to it is told once, as the consumer's.

``cancelled`` is told when a cancellation is asked for (or the seller revokes the
invitation that let the organisation subscribe): with ``status: cancelled`` when it
ends at once (a free or past-due plan), else with ``cancel_at_period_end`` and the
``period_end`` it ends at. ``ended`` is told when a subscription stops by any other
way: its cancelled period over (settled by the billing pass), a period ended unpaid,
its API deleted.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from nefos.billing.quota import hooks_of
from nefos.db.models import Api, Listing, ListingPlan, Subscription
from nefos.db.types import utcnow
from nefos.domain.plans import effective_status
from nefos.events import EventType, make, record
from nefos.monitoring.alerts import new_delivery

CREATED = EventType.SUBSCRIPTION_CREATED
PLAN_CHANGED = EventType.SUBSCRIPTION_PLAN_CHANGED
RENEWED = EventType.SUBSCRIPTION_RENEWED
PAST_DUE = EventType.SUBSCRIPTION_PAST_DUE
CANCELLED = EventType.SUBSCRIPTION_CANCELLED
ENDED = EventType.SUBSCRIPTION_ENDED
#: What the listing's organisation is told of its subscribers.
CREATOR_TOO = frozenset({CREATED, CANCELLED, ENDED})


def _iso(at: datetime | None) -> str | None:
    return None if at is None else at.isoformat().replace("+00:00", "Z")


async def tell(
    session: AsyncSession,
    event: EventType,
    sub: Subscription,
    *,
    listing: Listing | None = None,
    plan: ListingPlan | None = None,
    now: datetime | None = None,
    **extra: Any,
) -> None:
    """Record ``event`` of ``sub`` as it stands (flushed or not) in the session's
    transaction, with ``extra`` in its data; the caller commits."""
    now = now or utcnow()
    if listing is None:
        listing = await session.get(Listing, sub.listing_id)
    if plan is None or plan.id != sub.plan_id:
        plan = await session.get(ListingPlan, sub.plan_id)
    assert listing is not None and plan is not None
    slug = await session.scalar(select(Api.slug).where(Api.id == listing.api_id))
    status = effective_status(sub, now)
    data: dict[str, Any] = {
        "subscription_id": sub.id,
        "organisation_id": sub.organisation_id,
        "listing_id": listing.id,
        "title": listing.title,
        "api_slug": slug,
        "seller_organisation_id": listing.organisation_id,
        "plan_id": plan.id,
        "plan": plan.name,
        "plan_model": plan.model,
        "status": status,
        "period_start": _iso(sub.period_start),
        "period_end": _iso(sub.period_end),
        "cancel_at_period_end": bool(sub.cancel_at_period_end),
        "ended_at": _iso(sub.ended_at),
        "ended_reason": sub.ended_reason,
        **extra,
    }
    audiences = [("consumer", sub.organisation_id)]
    if event in CREATOR_TOO and listing.organisation_id != sub.organisation_id:
        audiences.append(("creator", listing.organisation_id))
    for audience, organisation_id in audiences:
        payload = {**data, "audience": audience}
        record(session, make(event, payload, organisation_id=organisation_id))
        for hook in await hooks_of(session, organisation_id, event.value):
            session.add(new_delivery(hook, event.value, {"subscription": payload}))


__all__ = [
    "CANCELLED",
    "CREATED",
    "CREATOR_TOO",
    "ENDED",
    "PAST_DUE",
    "PLAN_CHANGED",
    "RENEWED",
    "tell",
]
