"""The marketplace (seed 002): browse and search listings (no account needed),
publish your APIs with their plans, invite organisations to private ones, review
what you have used and reply to the reviews of your own listings."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from nefos.schemas.common import Message
from nefos.schemas.marketplace import (
    ListingInvitationAccepted,
    ListingInvitationCreated,
    ListingInvitationPage,
    ListingInvitationRevoked,
    ListingPage,
    ListingPublic,
    ReviewPage,
    ReviewPublic,
)
from nefos.sdk._resources import _body, _paging, _Resource, _seg

MARKETPLACE = "/marketplace"


class Marketplace(_Resource):
    """Listings of APIs and their reviews. ``search``, ``get`` and ``reviews`` work
    without logging in (a client made without credentials); ``publish``, ``update``
    and ``reply`` are the creator's; ``review`` is a consumer's that has called the
    API successfully."""

    def search(
        self,
        q: str | None = None,
        *,
        category: str | None = None,
        tag: str | None = None,
        price_model: str | None = None,
        sort: str | None = None,
        page: int | None = None,
        limit: int | None = None,
    ) -> ListingPage:
        """Published listings, ``q`` matched (every word, as a prefix, ranked)."""
        params = _paging(
            page, limit, q=q, category=category, tag=tag, price_model=price_model, sort=sort
        )
        data = self._client.request("GET", f"{MARKETPLACE}/listings", params=params)
        return ListingPage.model_validate(data)

    def get(self, listing_id: str) -> ListingPublic:
        data = self._client.request("GET", f"{MARKETPLACE}/listings/{_seg(listing_id)}")
        return ListingPublic.model_validate(data["listing"])

    def publish(
        self,
        api_id: str,
        *,
        title: str,
        category: str,
        plans: Sequence[Mapping[str, Any]],
        summary: str | None = None,
        description: str | None = None,
        tags: Sequence[str] = (),
        visibility: str | None = None,
    ) -> ListingPublic:
        """List one of your APIs. ``plans``: ``[{"name": "Basic", "model": "freemium",
        "included_calls": 1000, "price_per_call": "0.001", "rate_limit_per_minute":
        60}]`` (models: free, pay_per_use, freemium, monthly)."""
        body = _body(
            api_id=api_id,
            title=title,
            category=category,
            plans=[dict(p) for p in plans],
            summary=summary,
            description=description,
            tags=list(tags) or None,
            visibility=visibility,
        )
        data = self._client.request("POST", f"{MARKETPLACE}/publish", json=body)
        return ListingPublic.model_validate(data["listing"])

    def update(
        self,
        listing_id: str,
        *,
        title: str | None = None,
        summary: str | None = None,
        description: str | None = None,
        category: str | None = None,
        tags: Sequence[str] | None = None,
        visibility: str | None = None,
        status: str | None = None,
        plans: Sequence[Mapping[str, Any]] | None = None,
    ) -> ListingPublic:
        """Change your listing (``status="unpublished"`` takes it off); ``plans`` is
        the whole new set (a changed plan gets a new version)."""
        body = _body(
            title=title,
            summary=summary,
            description=description,
            category=category,
            tags=None if tags is None else list(tags),
            visibility=visibility,
            status=status,
            plans=None if plans is None else [dict(p) for p in plans],
        )
        data = self._client.request("PUT", f"{MARKETPLACE}/listings/{_seg(listing_id)}", json=body)
        return ListingPublic.model_validate(data["listing"])

    # --- invitations to private listings ------------------------------------------
    def invite(
        self,
        listing_id: str,
        *,
        email: str | None = None,
        organisation_id: str | None = None,
        expires_in_days: int | None = None,
    ) -> ListingInvitationCreated:
        """Invite to your private listing an organisation (in at once) or an e-mail
        address (pending: the answer's ``token``, shown this once, is yours to pass on;
        its holder calls :meth:`accept_invitation`)."""
        body = _body(email=email, organisation_id=organisation_id, expires_in_days=expires_in_days)
        data = self._client.request(
            "POST", f"{MARKETPLACE}/listings/{_seg(listing_id)}/invitations", json=body
        )
        return ListingInvitationCreated.model_validate(data["invitation"])

    def invitations(
        self,
        listing_id: str,
        *,
        status: str | None = None,
        page: int | None = None,
        limit: int | None = None,
    ) -> ListingInvitationPage:
        """Your listing's invitations, newest first (``status``: pending, accepted,
        revoked or expired)."""
        params = _paging(page, limit, status=status)
        path = f"{MARKETPLACE}/listings/{_seg(listing_id)}/invitations"
        return ListingInvitationPage.model_validate(
            self._client.request("GET", path, params=params)
        )

    def revoke_invitation(self, listing_id: str, invitation_id: str) -> ListingInvitationRevoked:
        """Revoke an invitation: its organisation no longer sees the listing, and its
        subscription to it is cancelled (a paid period runs to its end)."""
        path = f"{MARKETPLACE}/listings/{_seg(listing_id)}/invitations/{_seg(invitation_id)}"
        return self._one(ListingInvitationRevoked, "DELETE", path)

    def accept_invitation(
        self, token: str, *, organisation_id: str | None = None
    ) -> ListingInvitationAccepted:
        """Accept an invitation sent to your e-mail address, for an organisation of
        yours (default: your default project's)."""
        body = _body(token=token, organisation_id=organisation_id)
        return self._one(
            ListingInvitationAccepted, "POST", f"{MARKETPLACE}/invitations/accept", json=body
        )

    # --- reviews ------------------------------------------------------------------
    def reviews(
        self,
        listing_id: str,
        *,
        stars: int | None = None,
        page: int | None = None,
        limit: int | None = None,
    ) -> ReviewPage:
        """A listing's reviews, newest first, and its ``rating``."""
        params = _paging(page, limit, listing_id=listing_id, stars=stars)
        data = self._client.request("GET", f"{MARKETPLACE}/reviews", params=params)
        return ReviewPage.model_validate(data)

    def review(
        self, listing_id: str, stars: int, text: str, *, organisation_id: str | None = None
    ) -> ReviewPublic:
        """Review a listing (1 to 5 stars) for your organisation (default: your
        default project's); again changes the organisation's review. Refused
        (:class:`~nefos.sdk.PermissionDeniedError`) unless the organisation has called the
        API successfully, and always for the listing's own organisation."""
        body = _body(listing_id=listing_id, stars=stars, text=text, organisation_id=organisation_id)
        data = self._client.request("POST", f"{MARKETPLACE}/reviews", json=body)
        return ReviewPublic.model_validate(data["review"])

    def update_review(
        self, review_id: str, *, stars: int | None = None, text: str | None = None
    ) -> ReviewPublic:
        body = _body(stars=stars, text=text)
        data = self._client.request("PUT", f"{MARKETPLACE}/reviews/{_seg(review_id)}", json=body)
        return ReviewPublic.model_validate(data["review"])

    def delete_review(self, review_id: str) -> Message:
        return self._one(Message, "DELETE", f"{MARKETPLACE}/reviews/{_seg(review_id)}")

    def reply(self, review_id: str, text: str) -> ReviewPublic:
        """Reply to a review of your listing, once (again: a ConflictError)."""
        data = self._client.request(
            "POST", f"{MARKETPLACE}/reviews/{_seg(review_id)}/reply", json={"text": text}
        )
        return ReviewPublic.model_validate(data["review"])
