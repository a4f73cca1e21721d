"""Invitations to private marketplace listings (seed 002: "visibility: public, or
private by invitation").

A seller invites, to one of its listings:

* **an organisation**, by id: effective at once (``accepted``, no token). Seeing a
  listing and being allowed to subscribe to it costs the organisation nothing and
  commits it to nothing, so there is nothing for it to consent to; the seller needs
  its id, which only its members can give.
* **an e-mail address**: a ``pending`` invitation with a one-time token (``nfl_...``,
  shown once, kept as its SHA-256) that Nefos does not send -- it sends no mail: the
  seller passes it on. The holder of that address (someone who already has an
  account, or who registers with it) accepts it for one of its organisations
  (``POST /marketplace/invitations/accept``), which it may subscribe with; someone
  else holding the token gets a 404, like an unknown or expired token. Unaccepted,
  it expires (``expires_in_days``, 7 by default, at most 90).

An accepted, unrevoked invitation lets its organisation's members see the published
private listing in the browse and by id, and subscribe the organisation to it
(``MarketplaceService.is_invited``); everyone else still gets a 404. It gives nothing
while the listing is unpublished, and nothing is needed while it is public.

Revoking (``DELETE``) ends a pending invitation's token, or an accepted one's access:
the organisation no longer sees the listing and cannot subscribe again; and, unless
another invitation still lets it in, its live subscription to the private listing is
cancelled as if the consumer had cancelled it (Stripe's ``cancel_at_period_end``): a
free or past-due plan ends at once, a paid period already paid for runs to its end
and is not renewed -- what was paid for is given, nothing more is charged (told as
``subscription.cancelled`` with ``by: seller``).

Bounds: at most :data:`MAX_PENDING` pending invitations, and :data:`MAX_ACCEPTED`
accepted ones, per listing; invitations of one listing are made one at a time (the
listing's row is locked), so the bounds hold under concurrent requests.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import ColumnElement

from nefos.db.models import Listing, ListingInvitation, Organisation, Subscription
from nefos.db.session import begin_write
from nefos.db.types import utcnow
from nefos.domain.errors import Conflict, NotFound, ResourceExhausted, ValidationFailed
from nefos.domain.paging import PageParams
from nefos.domain.plans import LIVE, effective_status
from nefos.security.apikeys import hash_secret
from nefos.services.core import Core
from nefos.services.market_subscriptions import cancel_row
from nefos.services.marketplace import MarketplaceService
from nefos.services.paging import fetch_page
from nefos.services.principal import Principal

#: Pending (unaccepted, unexpired, unrevoked) invitations a listing holds at most.
MAX_PENDING = 100
#: Organisations a listing lets in by invitation at most.
MAX_ACCEPTED = 1000
TOKEN_PREFIX = "nfl_"
InvitationStatus = Literal["pending", "accepted", "revoked", "expired"]


def status_of(inv: ListingInvitation, now: datetime) -> InvitationStatus:
    if inv.revoked_at is not None:
        return "revoked"
    if inv.accepted_at is not None:
        return "accepted"
    return "expired" if inv.expires_at <= now else "pending"


def _in_status(status: InvitationStatus, now: datetime) -> list[ColumnElement[bool]]:
    """``status_of(row, now) == status`` in SQL."""
    live = ListingInvitation.revoked_at.is_(None)
    unaccepted = ListingInvitation.accepted_at.is_(None)
    if status == "revoked":
        return [ListingInvitation.revoked_at.is_not(None)]
    if status == "accepted":
        return [live, ListingInvitation.accepted_at.is_not(None)]
    if status == "expired":
        return [live, unaccepted, ListingInvitation.expires_at <= now]
    return [live, unaccepted, ListingInvitation.expires_at > now]


def invitation_public(inv: ListingInvitation, now: datetime | None = None) -> dict[str, Any]:
    return {
        "id": inv.id,
        "listing_id": inv.listing_id,
        "organisation_id": inv.organisation_id,
        "email": inv.email,
        "status": status_of(inv, now or utcnow()),
        "invited_by": inv.invited_by,
        "accepted_by": inv.accepted_by,
        "created_at": inv.created_at,
        "expires_at": inv.expires_at,
        "accepted_at": inv.accepted_at,
        "revoked_at": inv.revoked_at,
    }


@dataclass
class NewInvitation:
    row: ListingInvitation
    token: str | None  # shown once (an e-mail invitation's)

    def public(self) -> dict[str, Any]:
        return {**invitation_public(self.row), "token": self.token}


class InvitationService:
    def __init__(self, core: Core, session: AsyncSession) -> None:
        self.core = core
        self.session = session

    async def _own(self, principal: Principal, listing_id: str) -> None:
        """The caller may change the listing (else 404, like a missing one)."""
        listing = await self.session.get(Listing, listing_id)
        if listing is None:
            raise NotFound("Listing not found", listing_id=listing_id)
        await MarketplaceService(self.core, self.session).seller(principal, listing)

    async def _locked_listing(self, listing_id: str) -> Listing:
        """The listing re-read in a write transaction, its row locked: a listing's
        invitations change one request at a time."""
        await begin_write(self.session)
        listing = await self.session.scalar(
            select(Listing)
            .where(Listing.id == listing_id)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
        if listing is None:
            raise NotFound("Listing not found", listing_id=listing_id)
        return listing

    async def _count(self, listing_id: str, status: InvitationStatus, now: datetime) -> int:
        count = await self.session.scalar(
            select(func.count())
            .select_from(ListingInvitation)
            .where(ListingInvitation.listing_id == listing_id, *_in_status(status, now))
        )
        return int(count or 0)

    async def invite(
        self,
        principal: Principal,
        listing_id: str,
        *,
        email: str | None,
        organisation_id: str | None,
        expires_in_days: int,
    ) -> NewInvitation:
        """Invite an organisation (accepted at once) or an e-mail address (pending,
        with its token). Inviting again whoever holds a live invitation is a 409
        naming it; beyond the bounds, 409 ``RESOURCE_EXHAUSTED``."""
        await self._own(principal, listing_id)
        if organisation_id is not None:
            org = await self.session.get(Organisation, organisation_id)
            if org is None:
                raise NotFound("Organisation not found", organisation_id=organisation_id)
        listing = await self._locked_listing(listing_id)
        now = utcnow()
        same: ColumnElement[bool]
        if organisation_id is not None:
            if organisation_id == listing.organisation_id:
                raise ValidationFailed(
                    "The listing's own organisation sees it already",
                    organisation_id="the listing's own organisation",
                )
            same = ListingInvitation.organisation_id == organisation_id
            status: InvitationStatus = "accepted"
            bound, limit = "accepted", MAX_ACCEPTED
        else:
            assert email is not None
            same = ListingInvitation.email == email
            status, bound, limit = "pending", "pending", MAX_PENDING
        existing = await self.session.scalar(
            select(ListingInvitation.id).where(
                ListingInvitation.listing_id == listing.id, same, *_in_status(status, now)
            )
        )
        if existing is not None:
            raise Conflict(
                f"An invitation of this {'organisation' if organisation_id else 'address'} "
                f"to the listing is {status} already",
                invitation_id=existing,
            )
        if await self._count(listing.id, status, now) >= limit:
            raise ResourceExhausted(
                f"This listing holds {limit} {bound} invitations, the most allowed: "
                "revoke one first",
                limit=limit,
                reason="invitations",
            )
        token = None if organisation_id else TOKEN_PREFIX + secrets.token_urlsafe(32)
        inv = ListingInvitation(
            listing_id=listing.id,
            organisation_id=organisation_id,
            email=email,
            token_hash=None if token is None else hash_secret(token),
            invited_by=principal.user_id,
            expires_at=now + timedelta(days=expires_in_days),
            accepted_at=now if organisation_id else None,
        )
        self.session.add(inv)
        await self.session.flush()
        new = NewInvitation(inv, token)
        await self.session.commit()
        return new

    async def list_page(
        self,
        principal: Principal,
        listing_id: str,
        page: PageParams,
        *,
        status: InvitationStatus | None = None,
    ) -> tuple[Sequence[ListingInvitation], int]:
        """The listing's invitations, newest first (the seller's only)."""
        await self._own(principal, listing_id)
        where = [ListingInvitation.listing_id == listing_id]
        if status is not None:
            where += _in_status(status, utcnow())
        return await fetch_page(
            self.session,
            ListingInvitation,
            *where,
            order_by=(ListingInvitation.created_at.desc(), ListingInvitation.id),
            page=page,
        )

    async def revoke(
        self, principal: Principal, listing_id: str, invitation_id: str
    ) -> tuple[ListingInvitation, int]:
        """Revoke an invitation (again: a no-op), and cancel the live subscription of
        the organisation it let in, unless something else still lets it in; the
        invitation, and how many subscriptions were cancelled."""
        await self._own(principal, listing_id)
        listing = await self._locked_listing(listing_id)
        inv = await self.session.scalar(
            select(ListingInvitation)
            .where(
                ListingInvitation.id == invitation_id, ListingInvitation.listing_id == listing.id
            )
            .with_for_update()
            .execution_options(populate_existing=True)
        )
        if inv is None:
            raise NotFound("Invitation not found", invitation_id=invitation_id)
        if inv.revoked_at is not None:
            await self.session.commit()  # (nothing changed; a rollback would expire ``inv``)
            return inv, 0
        now = utcnow()
        inv.revoked_at = now
        await self.session.flush()
        cancelled = 0
        org_id = inv.organisation_id
        if (
            inv.accepted_at is not None
            and org_id is not None
            and listing.visibility == "private"
            and not await MarketplaceService(self.core, self.session).is_invited(
                listing.id, {org_id}
            )
        ):
            subs = (
                await self.session.scalars(
                    select(Subscription)
                    .where(
                        Subscription.listing_id == listing.id,
                        Subscription.organisation_id == org_id,
                        Subscription.status.in_(LIVE),
                    )
                    .with_for_update()
                    .execution_options(populate_existing=True)
                )
            ).all()
            for sub in subs:  # (one live subscription per organisation and listing)
                if effective_status(sub, now) in LIVE and await cancel_row(
                    self.session, sub, now, by="seller"
                ):
                    cancelled += 1
        await self.session.commit()
        return inv, cancelled

    async def accept(
        self, principal: Principal, org: Organisation, token: str
    ) -> ListingInvitation:
        """Accept an e-mail invitation addressed to the caller, for ``org`` (which the
        caller may subscribe with). Someone else's, a used, revoked or expired one
        answers like an unknown token (404)."""
        digest = hash_secret(token)
        listing_id = await self.session.scalar(
            select(ListingInvitation.listing_id).where(ListingInvitation.token_hash == digest)
        )
        if listing_id is None:
            raise NotFound("Invitation not found or expired")
        # The listing's row first, as every change of its invitations locks it.
        listing = await self._locked_listing(listing_id)
        inv = await self.session.scalar(
            select(ListingInvitation)
            .where(ListingInvitation.token_hash == digest)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
        now = utcnow()
        if (
            inv is None
            or inv.email is None
            or inv.email != principal.user.email.lower()
            or status_of(inv, now) != "pending"
        ):
            raise NotFound("Invitation not found or expired")
        if await self._count(listing.id, "accepted", now) >= MAX_ACCEPTED:
            raise ResourceExhausted(
                f"This listing lets in {MAX_ACCEPTED} organisations by invitation, the most "
                "allowed",
                limit=MAX_ACCEPTED,
                reason="invitations",
            )
        inv.accepted_at = now
        inv.accepted_by = principal.user_id
        inv.organisation_id = org.id
        await self.session.flush()
        await self.session.commit()
        return inv


__all__ = [
    "MAX_ACCEPTED",
    "MAX_PENDING",
    "InvitationService",
    "InvitationStatus",
    "NewInvitation",
    "invitation_public",
    "status_of",
]
