"""Marketplace subscriptions (seed 002) and the consumer keys they are called with.

An organisation subscribes to one plan version of one listing: one live (active or
past-due) subscription per organisation and listing (a partial unique index holds it
under concurrent requests). A subscription runs in monthly periods
(``domain.plans``), rolled by the billing pass (``billing.planfees.renew_due``).

Money (Stripe's semantics): a ``monthly`` plan's fee is paid in advance, in the
subscribing transaction (a wallet that cannot pay it: 402 ``RESOURCE_EXHAUSTED`` and no
subscription) and at each renewal (unpaid: ``past_due``, calls answer 402). Changing
plan between plans without a fee keeps the period, so the calls counted in it stay
counted. Changing *to* a monthly plan starts a new period now and charges its fee
(Stripe resets the billing cycle from a free price to a paid one); changing *away
from* a paid monthly period credits its unused part, pro rata. Deleting the API
ends its subscriptions at once with the same credit (``market_endings``).

Cancelling a free plan ends it at once (``cancelled``), and so does cancelling a
past-due one (nothing was paid for its period). A paid plan (pay_per_use, freemium,
monthly) was paid for up to its period's end, so cancelling it only sets
``cancel_at_period_end``: from ``period_end`` on it is over, and it is not renewed.
Nothing has to run at that instant for it to be so -- ``effective_status`` reads it
from the row and the clock, and the row is settled (``ended``) by the next billing
pass or the next time someone subscribes to the same listing for the same
organisation.

Keys are ``nfc_`` keys (``domain.consumer_keys``): shown once, kept as SHA-256 with a
display prefix. A rotation gives the keys it replaces an ``expires_at`` (an overlap
window during which both work); a revocation ends one at once. ``live_key`` is the
one lookup the gateway makes of a key.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

from sqlalchemy import and_, case, func, not_, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import ColumnElement

from nefos.billing import planfees, quota, subevents
from nefos.billing.apicalls import charged_until
from nefos.billing.money import money_str
from nefos.db.models import (
    Api,
    ApiCall,
    Listing,
    ListingPlan,
    Organisation,
    Subscription,
    SubscriptionKey,
)
from nefos.db.session import begin_write
from nefos.db.types import utcnow
from nefos.domain import consumer_keys
from nefos.domain.access import Permission
from nefos.domain.errors import Conflict, NotFound, PaymentDue, ValidationFailed
from nefos.domain.paging import PageParams
from nefos.domain.plans import (
    ACTIVE,
    CANCELLED,
    ENDED,
    LIVE,
    PAST_DUE,
    effective_status,
    month_after,
)
from nefos.schemas.marketplace import price_text
from nefos.services.core import Core
from nefos.services.marketplace import MarketplaceService, plan_public
from nefos.services.paging import fetch_page
from nefos.services.principal import Principal, authorize_org, visible_org_ids

#: Live (neither revoked nor expired) keys a subscription holds at most.
MAX_LIVE_KEYS = 10
Status = Literal["active", "past_due", "cancelled", "ended"]


def _effectively(status: str, now: datetime) -> ColumnElement[bool]:
    """``effective_status(row, now) == status`` in SQL."""
    lapsed = and_(Subscription.cancel_at_period_end, Subscription.period_end <= now)
    if status == ACTIVE:
        return and_(Subscription.status == ACTIVE, not_(lapsed))
    if status == ENDED:
        return or_(Subscription.status == ENDED, and_(Subscription.status == ACTIVE, lapsed))
    return Subscription.status == status


def _running(now: datetime) -> ColumnElement[bool]:
    """Subscriptions that have not ended as of ``now`` (active or past due)."""
    return or_(_effectively(ACTIVE, now), Subscription.status == PAST_DUE)


def is_free(plan: ListingPlan) -> bool:
    return plan.model == "free"


def _live(now: datetime) -> ColumnElement[bool]:
    return and_(
        SubscriptionKey.revoked_at.is_(None),
        or_(SubscriptionKey.expires_at.is_(None), SubscriptionKey.expires_at > now),
    )


async def live_key(
    session: AsyncSession, key_text: str, now: datetime
) -> tuple[SubscriptionKey, Subscription, Listing, ListingPlan] | None:
    """What a consumer key calls, if it may call now: the key (neither revoked nor
    expired), its subscription (effectively active, or past due: the gateway answers
    that 402), the listing (its API not deleted) and the plan version the
    subscription holds; else None.

    One indexed lookup by hash. It writes nothing: the gateway batches
    ``last_used_at``."""
    if not consumer_keys.looks_like(key_text):
        return None
    found = (
        await session.execute(
            select(SubscriptionKey, Subscription, Listing, ListingPlan)
            .join(Subscription, Subscription.id == SubscriptionKey.subscription_id)
            .join(Listing, Listing.id == Subscription.listing_id)
            .join(ListingPlan, ListingPlan.id == Subscription.plan_id)
            .join(Api, Api.id == Listing.api_id)
            .where(
                SubscriptionKey.key_hash == consumer_keys.key_hash(key_text),
                _live(now),
                Subscription.status.in_(LIVE),
                Api.deleted_at.is_(None),
            )
        )
    ).first()
    if found is None:
        return None
    key, sub, listing, plan = found
    if effective_status(sub, now) not in LIVE:
        return None
    return key, sub, listing, plan


def key_public(key: SubscriptionKey) -> dict[str, Any]:
    return {
        "id": key.id,
        "name": key.name,
        "prefix": key.prefix,
        "created_at": key.created_at,
        "expires_at": key.expires_at,
        "revoked_at": key.revoked_at,
        "last_used_at": key.last_used_at,
    }


@dataclass
class NewKey:
    row: SubscriptionKey
    key: str  # shown once

    def public(self) -> dict[str, Any]:
        return {**key_public(self.row), "key": self.key}


class SubscriptionService:
    def __init__(self, core: Core, session: AsyncSession) -> None:
        self.core = core
        self.session = session

    # --- reading ----------------------------------------------------------------------
    async def visible(
        self, principal: Principal, subscription_id: str, permission: Permission
    ) -> Subscription:
        """The subscription, if the caller's role in its organisation grants
        ``permission`` (403 if it does not); another organisation's is a 404."""
        sub = await self.session.get(Subscription, subscription_id)
        if sub is None:
            raise NotFound("Subscription not found", subscription_id=subscription_id)
        try:
            await authorize_org(self.session, principal, sub.organisation_id, permission)
        except NotFound:
            raise NotFound("Subscription not found", subscription_id=subscription_id) from None
        return sub

    async def list_page(
        self,
        principal: Principal,
        page: PageParams,
        *,
        org: Organisation | None = None,
        status: Status | None = None,
    ) -> tuple[list[dict[str, Any]], int]:
        """The subscriptions of ``org``, or of every organisation the caller holds a
        role in, newest first."""
        orgs = [org.id] if org is not None else await visible_org_ids(self.session, principal)
        where: list[ColumnElement[bool]] = [Subscription.organisation_id.in_(orgs or [""])]
        if status is not None:
            where.append(_effectively(status, utcnow()))
        rows, total = await fetch_page(
            self.session,
            Subscription,
            *where,
            order_by=(Subscription.created_at.desc(), Subscription.id),
            page=page,
        )
        return await self.views(rows), total

    async def views(self, subs: Sequence[Subscription]) -> list[dict[str, Any]]:
        """Subscriptions as the wire shows them: with their listing's title and API
        slug, and the terms of the plan version each holds."""
        if not subs:
            return []
        listings = {
            listing.id: (listing, slug)
            for listing, slug in (
                await self.session.execute(
                    select(Listing, Api.slug)
                    .join(Api, Api.id == Listing.api_id)
                    .where(Listing.id.in_({s.listing_id for s in subs}))
                )
            ).all()
        }
        plans = {
            p.id: p
            for p in await self.session.scalars(
                select(ListingPlan).where(ListingPlan.id.in_({s.plan_id for s in subs}))
            )
        }
        now = utcnow()
        out = []
        for sub in subs:
            listing, slug = listings[sub.listing_id]
            plan = plans[sub.plan_id]
            status = effective_status(sub, now)
            renews = status == ACTIVE and not sub.cancel_at_period_end
            fee = planfees.fee_of(plan, listing.currency)
            out.append(
                {
                    "id": sub.id,
                    "listing_id": sub.listing_id,
                    "title": listing.title,
                    "api_slug": slug,
                    "plan": plan_public(plan, listing.currency),
                    "organisation_id": sub.organisation_id,
                    "status": status,
                    "period_start": sub.period_start,
                    "period_end": sub.period_end,
                    "cancel_at_period_end": sub.cancel_at_period_end,
                    "ended_at": sub.ended_at or (sub.period_end if status == ENDED else None),
                    "ended_reason": sub.ended_reason or ("cancelled" if status == ENDED else None),
                    "next_charge": (
                        {
                            "amount": money_str(fee, listing.currency),
                            "currency": listing.currency,
                            "at": sub.period_end,
                        }
                        if renews and planfees.billed(plan, listing.currency)
                        else None
                    ),
                    "renews_at": sub.period_end if renews else None,
                    "created_at": sub.created_at,
                    "updated_at": sub.updated_at,
                }
            )
        return out

    async def detail(self, sub: Subscription) -> dict[str, Any]:
        """The subscription with its keys (newest first; never a key or its hash)."""
        (view,) = await self.views([sub])
        keys = await self.session.scalars(
            select(SubscriptionKey)
            .where(SubscriptionKey.subscription_id == sub.id)
            .order_by(SubscriptionKey.created_at.desc(), SubscriptionKey.id)
        )
        return {**view, "keys": [key_public(k) for k in keys]}

    async def usage(self, sub: Subscription) -> dict[str, Any]:
        """The subscription's use of its current period: the calls answered below
        500 and their units (what the quota counts), those answered 500 or more (not
        counted, not billed), the quota (in units) and what is left of it, what the
        calls cost (``amount``), how much of that is charged to the wallet already,
        and the usage alerts told (50, 80, 100 %)."""
        (view,) = await self.views([sub])
        ok_calls = case((ApiCall.status < 500, 1), else_=0)
        ok_units = case((ApiCall.status < 500, ApiCall.units), else_=0)
        failed = case((ApiCall.status >= 500, 1), else_=0)
        # Charged: at or before the account's watermark (``billing/apicalls.py``).
        currency = view["plan"]["currency"]
        charged = case(
            (
                ApiCall.created_at <= charged_until(sub.organisation_id, currency),
                ApiCall.price,
            ),
            else_=0,
        )
        counted, units, errors, amount, paid = (
            await self.session.execute(
                select(
                    func.coalesce(func.sum(ok_calls), 0),
                    func.coalesce(func.sum(ok_units), 0),
                    func.coalesce(func.sum(failed), 0),
                    func.coalesce(func.sum(ApiCall.price), 0),
                    func.coalesce(func.sum(charged), 0),
                ).where(
                    # (What the quota counts: the organisation's calls to the API.)
                    ApiCall.organisation_id == sub.organisation_id,
                    ApiCall.api_id
                    == select(Listing.api_id).where(Listing.id == sub.listing_id).scalar_subquery(),
                    ApiCall.created_at >= sub.period_start,
                )
            )
        ).one()
        counted, units, quota_calls = int(counted), int(units), view["plan"]["included_calls"]
        amount, paid = Decimal(amount), Decimal(paid)
        return {
            "subscription_id": sub.id,
            "listing_id": view["listing_id"],
            "title": view["title"],
            "api_slug": view["api_slug"],
            "plan": view["plan"],
            "status": view["status"],
            "period_start": sub.period_start,
            "period_end": sub.period_end,
            "calls": counted,
            "units": units,
            "errors": int(errors),
            "quota": quota_calls,
            "remaining": None if quota_calls is None else max(0, quota_calls - units),
            "percent_used": (None if not quota_calls else round(units / quota_calls * 100.0, 2)),
            "currency": view["plan"]["currency"],
            "amount": price_text(amount),
            "charged": price_text(paid),
            "pending": price_text(amount - paid),
            "alerts": await quota.told(self.session, sub.id, sub.period_start),
        }

    async def account(self, org: Organisation) -> dict[str, Any]:
        """``GET /billing/subscription``'s marketplace part: the organisation's live
        (active or past-due) subscriptions, and the plans of its own listings with
        their subscribers."""
        now = utcnow()
        subs = (
            await self.session.scalars(
                select(Subscription)
                .where(Subscription.organisation_id == org.id, _running(now))
                .order_by(Subscription.created_at.desc(), Subscription.id)
            )
        ).all()
        listings = (
            await self.session.scalars(
                select(Listing)
                .where(Listing.organisation_id == org.id)
                .order_by(Listing.created_at, Listing.id)
            )
        ).all()
        plans = await MarketplaceService(self.core, self.session).plans([x.id for x in listings])
        counts: dict[str, int] = dict(
            (
                await self.session.execute(
                    select(Subscription.listing_id, func.count())
                    .where(
                        Subscription.listing_id.in_([x.id for x in listings] or [""]),
                        _running(now),
                    )
                    .group_by(Subscription.listing_id)
                )
            ).all()
        )
        return {
            "subscriptions": await self.views(subs),
            "plans_sold": [
                {
                    "listing_id": x.id,
                    "title": x.title,
                    "status": x.status,
                    "plans": [plan_public(p, x.currency) for p in plans[x.id]],
                    "subscribers": counts.get(x.id, 0),
                }
                for x in listings
            ],
        }

    # --- subscribing ------------------------------------------------------------------
    async def _current_plan(self, listing_id: str, plan_id: str) -> ListingPlan:
        plan = await self.session.get(ListingPlan, plan_id)
        if plan is None or plan.listing_id != listing_id or plan.retired_at is not None:
            raise ValidationFailed(
                "Not a current plan of this listing", plan_id="not a current plan of the listing"
            )
        return plan

    async def subscribe(
        self, principal: Principal, org: Organisation, listing_id: str, plan_id: str
    ) -> tuple[Subscription, NewKey]:
        """Subscribe ``org`` to a current plan of a listing the caller may see, and
        make its first key. A listing whose API is deleted is a 404, and so is a
        private one for an organisation it did not invite; a second active
        subscription of the organisation to the listing is a 409 naming the first. A
        monthly plan's first period is charged in the same transaction: a wallet that
        cannot pay it is a 402 (PaymentDue) and no subscription."""
        market = MarketplaceService(self.core, self.session)
        found, api = await market.get(principal, listing_id)
        listing = found.listing
        if api.deleted_at is not None or not await market.may_subscribe(principal, listing, org.id):
            # (A private listing the caller sees, for an organisation it did not invite.)
            raise NotFound("Listing not found", listing_id=listing_id)
        plan = await self._current_plan(listing_id, plan_id)
        await begin_write(self.session)
        now = utcnow()
        existing = await self.session.scalar(
            select(Subscription)
            .where(
                Subscription.listing_id == listing_id,
                Subscription.organisation_id == org.id,
                Subscription.status.in_(LIVE),
            )
            .with_for_update()
        )
        if existing is not None:
            if effective_status(existing, now) in LIVE:
                raise Conflict(
                    "This organisation subscribes to this listing already: change its plan "
                    f"with PUT /marketplace/subscriptions/{existing.id}",
                    subscription_id=existing.id,
                )
            # Cancelled at its period's end, which has passed: settle it, so that the
            # new subscription is the one active row.
            existing.status = ENDED
            existing.ended_at = existing.period_end
            existing.ended_reason = "cancelled"
            existing.updated_at = now
            await self.session.flush()
            await subevents.tell(self.session, subevents.ENDED, existing, listing=listing, now=now)
        start, end = now, month_after(now)
        if not planfees.billed(plan, listing.currency):
            # A subscription of the organisation to the listing that ended within its
            # period hands the period on, with the calls made in it: ending and
            # subscribing again gives no free quota anew. (A paid plan starts a
            # period of its own: its fee pays for it.)
            ended = await self.session.scalar(
                select(Subscription)
                .where(
                    Subscription.listing_id == listing_id,
                    Subscription.organisation_id == org.id,
                    Subscription.status.not_in(LIVE),
                    Subscription.period_end > now,
                )
                .order_by(Subscription.period_end.desc())
                .limit(1)
            )
            if ended is not None:
                start, end = ended.period_start, ended.period_end
        sub = Subscription(
            listing_id=listing_id,
            plan_id=plan.id,
            organisation_id=org.id,
            user_id=principal.user_id,
            status=ACTIVE,
            period_start=start,
            period_end=end,
            cancel_at_period_end=False,
        )
        self.session.add(sub)
        try:
            await self.session.flush()
        except IntegrityError:
            # Another request subscribed the organisation in the meantime.
            await self.session.rollback()
            raise Conflict(
                "This organisation subscribes to this listing already",
                listing_id=listing_id,
            ) from None
        if planfees.billed(plan, listing.currency):
            try:
                await planfees.charge_fee(
                    self.session, self.core.settings, sub, plan, listing, now, sub.period_end
                )
            except PaymentDue:
                await self.session.rollback()
                raise
        key = self._new_key(sub.id, "default")
        await subevents.tell(
            self.session, subevents.CREATED, sub, listing=listing, plan=plan, now=now
        )
        await self.session.commit()
        return sub, key

    def _new_key(self, subscription_id: str, name: str) -> NewKey:
        text, prefix, digest = consumer_keys.new_key()
        row = SubscriptionKey(
            subscription_id=subscription_id, name=name, prefix=prefix, key_hash=digest
        )
        self.session.add(row)
        return NewKey(row, text)

    async def _locked(self, sub: Subscription, *, past_due: bool = True) -> Subscription:
        """The subscription re-read in a write transaction (its row locked on
        PostgreSQL), refused unless it is active (or, with ``past_due``, past due)
        now."""
        await begin_write(self.session)
        locked = await self.session.scalar(
            select(Subscription)
            .where(Subscription.id == sub.id)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
        if locked is None:
            raise NotFound("Subscription not found", subscription_id=sub.id)
        status = effective_status(locked, utcnow())
        if status != ACTIVE and not (past_due and status == PAST_DUE):
            hint = ": top up the wallet (the next billing pass renews it) or cancel it"
            raise Conflict(
                f"This subscription is {status}{hint if status == PAST_DUE else ''}",
                subscription_id=sub.id,
                status=status,
            )
        return locked

    # --- keys -------------------------------------------------------------------------
    async def create_key(
        self, sub: Subscription, *, name: str, rotate: bool, overlap_seconds: int
    ) -> NewKey:
        """A new key. With ``rotate``, every other live key expires ``overlap_seconds``
        from now (an earlier expiry stays). At most MAX_LIVE_KEYS live keys (409):
        keys that a rotation leaves live for an overlap still count."""
        sub = await self._locked(sub)
        now = utcnow()
        live = (
            await self.session.scalars(
                select(SubscriptionKey).where(SubscriptionKey.subscription_id == sub.id, _live(now))
            )
        ).all()
        until = now + timedelta(seconds=overlap_seconds)
        # A rotation with an overlap leaves the old keys live until it ends.
        still_live = 0 if rotate and overlap_seconds == 0 else len(live)
        if still_live >= MAX_LIVE_KEYS:
            raise Conflict(
                f"This subscription already holds {MAX_LIVE_KEYS} live keys, the most "
                "allowed: revoke one first (or rotate with overlap_seconds 0)",
                limit=MAX_LIVE_KEYS,
            )
        if rotate:
            await self.session.execute(
                update(SubscriptionKey)
                .where(
                    SubscriptionKey.subscription_id == sub.id,
                    _live(now),
                    or_(SubscriptionKey.expires_at.is_(None), SubscriptionKey.expires_at > until),
                )
                .values(expires_at=until)
            )
        key = self._new_key(sub.id, name)
        sub.updated_at = now
        await self.session.commit()
        return key

    async def revoke_key(self, sub: Subscription, key_id: str) -> SubscriptionKey:
        """Revoke a key of the subscription at once (again: a no-op)."""
        await begin_write(self.session)
        key = await self.session.scalar(
            select(SubscriptionKey)
            .where(SubscriptionKey.id == key_id, SubscriptionKey.subscription_id == sub.id)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
        if key is None:
            raise NotFound("Key not found", key_id=key_id)
        if key.revoked_at is None:
            key.revoked_at = utcnow()
            await self.session.commit()
        return key

    # --- plan changes and cancellation ------------------------------------------------
    async def change_plan(self, sub: Subscription, plan_id: str) -> Subscription:
        """Move to another current plan of the same listing. Between plans without a
        fee the period (and the calls counted in it) carries over. Leaving a monthly
        period that was paid credits its unused part; moving to a monthly plan starts
        a new period now and charges its fee, in the same transaction (402
        PaymentDue: nothing changed). The same plan again changes nothing; a past-due
        subscription is paid or cancelled first (409)."""
        plan = await self._current_plan(sub.listing_id, plan_id)
        sub = await self._locked(sub, past_due=False)
        if sub.plan_id == plan.id:
            return sub
        listing = await self.session.get(Listing, sub.listing_id)
        assert listing is not None
        now = utcnow()
        settings = self.core.settings
        try:
            await planfees.credit_unused(self.session, settings, sub, listing, now)
            if planfees.billed(plan, listing.currency):
                sub.period_start, sub.period_end = now, month_after(now)
                await planfees.charge_fee(
                    self.session, settings, sub, plan, listing, now, sub.period_end
                )
        except PaymentDue:
            await self.session.rollback()
            raise
        previous = await self.session.get(ListingPlan, sub.plan_id)
        assert previous is not None
        sub.plan_id = plan.id
        sub.updated_at = now
        await subevents.tell(
            self.session,
            subevents.PLAN_CHANGED,
            sub,
            listing=listing,
            plan=plan,
            now=now,
            previous_plan_id=previous.id,
            previous_plan=previous.name,
        )
        await self.session.commit()
        return sub

    async def cancel(self, sub: Subscription) -> Subscription:
        """A free plan, or a past-due one, ends at once; a paid one at its period's
        end, and is not renewed (again: a no-op)."""
        sub = await self._locked(sub)
        if await cancel_row(self.session, sub, utcnow(), by="consumer"):
            await self.session.commit()
        return sub


async def cancel_row(session: AsyncSession, sub: Subscription, now: datetime, *, by: str) -> bool:
    """Cancel a live subscription whose row the caller has locked, in its transaction
    (the caller commits), and tell ``subscription.cancelled`` (``by`` whom: consumer,
    or seller when the seller revoked the organisation's invitation): a free plan, or
    a past-due one, ends at once; a paid one at its period's end, and is not
    renewed. False if it was cancelled at its period's end already (nothing to do)."""
    plan = await session.get(ListingPlan, sub.plan_id)
    assert plan is not None
    if is_free(plan) or sub.status == PAST_DUE:
        sub.status = CANCELLED
        sub.ended_at = now
        sub.ended_reason = "cancelled"
    elif sub.cancel_at_period_end:
        return False
    else:
        sub.cancel_at_period_end = True
    sub.updated_at = now
    await subevents.tell(session, subevents.CANCELLED, sub, plan=plan, now=now, by=by)
    return True


__all__ = [
    "MAX_LIVE_KEYS",
    "NewKey",
    "SubscriptionService",
    "cancel_row",
    "effective_status",
    "key_public",
    "live_key",
    "month_after",
]
