"""Marketplace subscriptions (seed 002): subscribe an organisation to a listing's
plan, and manage the subscription's keys (``nfc_...``, each shown once)."""

from __future__ import annotations

from nefos.schemas.marketplace import (
    ApiSubscriptionDetail,
    Subscribed,
    SubscriptionKeyCreated,
    SubscriptionKeyPublic,
    SubscriptionPage,
    SubscriptionUsage,
)
from nefos.sdk._resources import _body, _paging, _Resource, _seg

SUBSCRIPTIONS = "/marketplace/subscriptions"


class Subscriptions(_Resource):
    """Your organisations' subscriptions to APIs of the marketplace."""

    def subscribe(
        self, listing_id: str, plan_id: str, organisation_id: str | None = None
    ) -> Subscribed:
        """Subscribe (default: the organisation of your default project). The answer's
        ``key.key`` is the subscription's first key: shown this once. A monthly plan's
        first period is charged now (``ResourceExhaustedError``, code
        ``RESOURCE_EXHAUSTED``, if the wallet cannot pay it)."""
        body = _body(plan_id=plan_id, organisation_id=organisation_id)
        data = self._client.request(
            "POST", f"/marketplace/listings/{_seg(listing_id)}/subscribe", json=body
        )
        return Subscribed.model_validate(data)

    def list(
        self,
        *,
        status: str | None = None,
        organisation_id: str | None = None,
        page: int | None = None,
        limit: int | None = None,
    ) -> SubscriptionPage:
        params = _paging(page, limit, status=status, organisation_id=organisation_id)
        return SubscriptionPage.model_validate(
            self._client.request("GET", SUBSCRIPTIONS, params=params)
        )

    def get(self, subscription_id: str) -> ApiSubscriptionDetail:
        """The subscription with its keys (prefixes only)."""
        data = self._client.request("GET", f"{SUBSCRIPTIONS}/{_seg(subscription_id)}")
        return ApiSubscriptionDetail.model_validate(data["subscription"])

    def usage(self, subscription_id: str) -> SubscriptionUsage:
        """The subscription's use of its current period: calls counted against the
        quota, what is left, what the calls cost and how much is charged, and the
        usage alerts told (50, 80, 100 %)."""
        data = self._client.request("GET", f"{SUBSCRIPTIONS}/{_seg(subscription_id)}/usage")
        return SubscriptionUsage.model_validate(data["usage"])

    def create_key(
        self,
        subscription_id: str,
        *,
        name: str | None = None,
        rotate: bool | None = None,
        overlap_seconds: int | None = None,
    ) -> SubscriptionKeyCreated:
        """A new key (``.key``: shown this once). ``rotate``: the other live keys
        expire ``overlap_seconds`` from now (default 3600; 0: at once)."""
        body = _body(name=name, rotate=rotate, overlap_seconds=overlap_seconds)
        data = self._client.request(
            "POST", f"{SUBSCRIPTIONS}/{_seg(subscription_id)}/keys", json=body
        )
        return SubscriptionKeyCreated.model_validate(data["key"])

    def revoke_key(self, subscription_id: str, key_id: str) -> SubscriptionKeyPublic:
        data = self._client.request(
            "DELETE", f"{SUBSCRIPTIONS}/{_seg(subscription_id)}/keys/{_seg(key_id)}"
        )
        return SubscriptionKeyPublic.model_validate(data["key"])

    def change_plan(self, subscription_id: str, plan_id: str) -> ApiSubscriptionDetail:
        """Another current plan of the same listing. Between plans without a fee the
        period carries over; a monthly plan starts a new period with its fee charged
        (402 if the wallet cannot pay), and leaving one credits its unused part."""
        data = self._client.request(
            "PUT", f"{SUBSCRIPTIONS}/{_seg(subscription_id)}", json={"plan_id": plan_id}
        )
        return ApiSubscriptionDetail.model_validate(data["subscription"])

    def cancel(self, subscription_id: str) -> ApiSubscriptionDetail:
        """A free plan (or a past-due one) ends at once; a paid one at its period's
        end, not renewed."""
        data = self._client.request("DELETE", f"{SUBSCRIPTIONS}/{_seg(subscription_id)}")
        return ApiSubscriptionDetail.model_validate(data["subscription"])
