"""A marketplace subscription's use of its plan's quota, and the ``usage_alert`` told
when it crosses 50, 80 and 100 % of it (seed 002).

**What counts.** The units of the subscription's calls recorded by the gateway since
its period started and answered below 500 (``period_units``: the organisation's
calls to the API, each its ``units``, 1 unless its API declares more or its answer
says so; ``domain.metering``): what the gateway counts against the quota (a plan's
``included_calls`` are units), what ``GET /marketplace/subscriptions/{id}/usage``
shows.

**Once per threshold and period.** A ``usage_alerts`` row per (subscription, period
start, threshold) under a unique constraint; the transaction that inserts it also
records the ``usage_alert`` event (published on commit, to the consumer
organisation's WebSocket subscribers) and queues a delivery to each enabled webhook
of the organisation's projects that takes ``usage_alert``. Whoever loses a race to
insert the row rolls back and tells nothing, so the event is told exactly once
however many processes and calls cross the threshold at once.

**Where it is checked.** ``check`` counts in the database, so it is right whoever
calls it:

* the gateway, after a counted call was recorded (after the answer was sent, never
  before forwarding), when its own count of the period reaches a threshold it has
  not seen told yet: prompt, at the crossing call;
* the billing pass (``sweep``), for the subscriptions with calls in the last
  :data:`SWEEP_WINDOW` that have not reached 100 % yet: each process's gateway
  counts only its own calls after one read, so with several API processes a
  crossing may be seen by none of them; the pass tells it within its interval.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, exists, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from nefos.db.models import (
    Api,
    ApiCall,
    Listing,
    ListingPlan,
    Project,
    Subscription,
    UsageAlert,
    Webhook,
)
from nefos.db.session import Database, begin_write
from nefos.events import EventType, make, record
from nefos.monitoring.alerts import new_delivery

log = logging.getLogger("nefos.billing.quota")

#: Percentages of a quota whose crossing is told.
THRESHOLDS = (50, 80, 100)
#: The sweep looks at subscriptions with calls this recent.
SWEEP_WINDOW = timedelta(hours=2)
#: Subscriptions one sweep checks at most (the next pass goes on).
SWEEP_LIMIT = 1000
#: Webhooks of one organisation told of one alert at most.
MAX_HOOKS = 100
WEBHOOK_EVENT = "usage_alert"


def crossed(units: int, quota: int | None) -> list[int]:
    """The thresholds ``units`` of ``quota`` have reached (none without a quota)."""
    if not quota or quota <= 0:
        return []
    return [t for t in THRESHOLDS if units * 100 >= t * quota]


async def period_units(
    session: AsyncSession, organisation_id: str, api_id: str, period_start: datetime
) -> int:
    """The units counted against a subscription's quota: those of the organisation's
    calls to the API since ``period_start`` answered below 500, by any of its
    subscriptions to it (one at a time; one that ended this period hands its period
    on, so that ending and subscribing again gives no quota anew)."""
    count = await session.scalar(
        select(func.coalesce(func.sum(ApiCall.units), 0))
        .select_from(ApiCall)
        .where(
            ApiCall.organisation_id == organisation_id,
            ApiCall.api_id == api_id,
            ApiCall.created_at >= period_start,
            ApiCall.status < 500,
        )
    )
    return int(count or 0)


async def told(session: AsyncSession, subscription_id: str, period_start: datetime) -> list[int]:
    """The thresholds told in the period, lowest first."""
    rows = await session.scalars(
        select(UsageAlert.threshold)
        .where(
            UsageAlert.subscription_id == subscription_id,
            UsageAlert.period_start == period_start,
        )
        .order_by(UsageAlert.threshold)
    )
    return list(rows)


async def check(db: Database, subscription_id: str) -> tuple[list[int], list[int]]:
    """Tell each threshold the subscription's calls of this period have crossed and
    no one has told yet: (the thresholds told in the period so far, by this call or
    before; those this call told), lowest first."""
    for _ in range(3):
        try:
            return await _check(db, subscription_id)
        except IntegrityError:
            # Another call or process told one of them first: look again.
            continue
    return [], []


async def _check(db: Database, subscription_id: str) -> tuple[list[int], list[int]]:
    async with db.sessionmaker() as session:
        await begin_write(session)
        found = (
            await session.execute(
                select(Subscription, ListingPlan, Listing, Api.slug)
                .join(ListingPlan, ListingPlan.id == Subscription.plan_id)
                .join(Listing, Listing.id == Subscription.listing_id)
                .join(Api, Api.id == Listing.api_id)
                .where(Subscription.id == subscription_id)
            )
        ).first()
        if found is None:
            await session.rollback()
            return [], []
        sub, plan, listing, slug = found
        quota = plan.included_calls
        period = sub.period_start
        units = await period_units(session, sub.organisation_id, listing.api_id, period)
        done = await told(session, sub.id, period)
        new = [t for t in crossed(units, quota) if t not in done]
        if not new:
            await session.rollback()
            return done, []
        assert quota is not None
        hooks = await hooks_of(session, sub.organisation_id, WEBHOOK_EVENT)
        for threshold in new:
            session.add(
                UsageAlert(
                    subscription_id=sub.id,
                    organisation_id=sub.organisation_id,
                    period_start=period,
                    threshold=threshold,
                    calls=units,  # (the units used: what the quota counts)
                    quota=quota,
                )
            )
            data: dict[str, Any] = {
                "subscription_id": sub.id,
                "organisation_id": sub.organisation_id,
                "listing_id": listing.id,
                "title": listing.title,
                "api_slug": slug,
                "plan_id": plan.id,
                "plan": plan.name,
                "threshold": threshold,
                # The units used (what the quota counts); "calls" too, as before
                # units (a call is 1 unit unless its API declares more).
                "units": units,
                "calls": units,
                "quota": quota,
                "remaining": max(0, quota - units),
                "period_start": period.isoformat().replace("+00:00", "Z"),
                "period_end": sub.period_end.isoformat().replace("+00:00", "Z"),
                "message": f"{listing.title}: {units} of {quota} units this period "
                f"({threshold} % of the plan's quota)",
            }
            record(
                session,
                make(EventType.USAGE_ALERT, data, organisation_id=sub.organisation_id),
            )
            for hook in hooks:
                session.add(new_delivery(hook, WEBHOOK_EVENT, {"usage_alert": data}))
        await session.flush()
        await session.commit()
        log.info("subscription %s: usage alerts %s told", subscription_id, new)
        return sorted([*done, *new]), new


async def hooks_of(session: AsyncSession, organisation_id: str, event: str) -> list[Webhook]:
    """The enabled webhooks of the organisation's projects that take ``event`` (at
    most :data:`MAX_HOOKS` looked at)."""
    hooks = await session.scalars(
        select(Webhook)
        .join(Project, Project.id == Webhook.project_id)
        .where(Project.organisation_id == organisation_id, Webhook.enabled)
        .order_by(Webhook.created_at, Webhook.id)
        .limit(MAX_HOOKS)
    )
    return [h for h in hooks if event in h.events]


async def sweep(db: Database, now: datetime) -> int:
    """Check the subscriptions with a quota, calls since ``now - SWEEP_WINDOW`` and
    no 100 % alert this period yet; the thresholds newly told."""
    full = exists().where(
        UsageAlert.subscription_id == Subscription.id,
        UsageAlert.period_start == Subscription.period_start,
        UsageAlert.threshold == THRESHOLDS[-1],
    )
    recent = exists().where(
        ApiCall.subscription_id == Subscription.id,
        ApiCall.created_at >= now - SWEEP_WINDOW,
    )
    async with db.sessionmaker() as session:
        ids = (
            await session.scalars(
                select(Subscription.id)
                .join(ListingPlan, ListingPlan.id == Subscription.plan_id)
                .where(
                    and_(Subscription.status == "active", ListingPlan.included_calls.is_not(None)),
                    recent,
                    ~full,
                )
                .order_by(Subscription.id)
                .limit(SWEEP_LIMIT)
            )
        ).all()
    newly = 0
    for sid in ids:
        newly += len((await check(db, sid))[1])
    return newly
