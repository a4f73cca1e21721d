"""The marketplace (seed 002): browse and search listings (no account needed),
publish your APIs with their plans."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from nefos.schemas.marketplace import ListingPage, ListingPublic
from nefos.sdk._resources import _body, _paging, _Resource, _seg

MARKETPLACE = "/marketplace"


class Marketplace(_Resource):
    """Listings of APIs. ``search`` and ``get`` work without logging in (a client made
    without credentials); ``publish`` and ``update`` are the creator's."""

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
