"""The catalogue, billing settings, quotes, payouts and the revenue views (seed 002).

Amounts go out as decimal strings: pass a ``Decimal`` or a string (``"25.00"``),
never a float, and they reach the server exactly as written.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from nefos.schemas.billing import (
    BillingAccountPublic,
    BillingOverview,
    PayoutPublic,
    ProductPage,
    ProductPublic,
    QuoteAccepted,
    QuotePublic,
    SubscriptionPublic,
    TransactionPublic,
)
from nefos.schemas.common import Page
from nefos.sdk._resources import _body, _idempotent, _paging, _Resource, _seg, _when

Amount = Decimal | str | int


def _amount(value: Amount | None) -> str | None:
    if value is None:
        return None
    if isinstance(value, float):  # pragma: no cover - refused by the type, checked anyway
        raise TypeError("pass amounts as Decimal or str, not float")
    return str(value)


def _org(organisation_id: str | None) -> dict[str, str] | None:
    return {"organisation_id": organisation_id} if organisation_id else None


class Products(_Resource):
    """The price catalogue."""

    def list(
        self,
        *,
        currency: str | None = None,
        organisation_id: str | None = None,
        page: int | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> ProductPage:
        """The prices in force as the organisation pays them (its reseller's margin
        included), in its currency unless ``currency`` names another."""
        params = _paging(
            page, limit, cursor=cursor, currency=currency, organisation_id=organisation_id
        )
        return ProductPage.model_validate(self._client.request("GET", "/products", params=params))

    def history(
        self,
        sku: str,
        *,
        currency: str | None = None,
        page: int | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> Page[ProductPublic]:
        """Every price ``sku`` has had, newest first (platform admins)."""
        params = _paging(page, limit, cursor=cursor, currency=currency)
        return self._page(ProductPublic, f"/products/{_seg(sku)}/history", params)

    def set_price(
        self,
        sku: str,
        unit_price: Amount,
        *,
        currency: str | None = None,
        name: str | None = None,
        description: str | None = None,
    ) -> ProductPublic:
        """A new price for ``sku`` from now on (platform admins); the old one closes.
        ``sku``: ``vcpu_hour``, ``ram_gb_hour``, ``storage_gb_day``, ``network_gb``,
        ``container_hour``, ``vm_hour``, ``api_call`` or ``flavor:<name>``."""
        body = _body(
            unit_price=_amount(unit_price), currency=currency, name=name, description=description
        )
        return self._one(ProductPublic, "PUT", f"/products/{_seg(sku)}", json=body)

    def retire(self, sku: str, *, currency: str | None = None) -> ProductPublic:
        """Retire a flavor (``flavor:<name>``, platform admins): its price closes now
        with none after it; VMs of that flavor are then rated by their resources."""
        params = {"currency": currency} if currency else None
        return self._one(ProductPublic, "DELETE", f"/products/{_seg(sku)}", params=params)


class BillingAccounts(_Resource):
    """An organisation's billing settings and the seed 002 views of its wallet.
    ``organisation_id`` defaults to your default project's organisation."""

    def get(self, *, organisation_id: str | None = None) -> BillingAccountPublic:
        return self._one(
            BillingAccountPublic, "GET", "/billing/account", params=_org(organisation_id)
        )

    def update(
        self,
        *,
        currency: str | None = None,
        low_balance_threshold: Amount | None = None,
        margin_percent: Amount | None = None,
        organisation_id: str | None = None,
    ) -> BillingAccountPublic:
        """Change what is given. ``margin_percent`` (0 to 1000) is for resellers: it
        applies to their child organisations' prices."""
        body = _body(
            currency=currency,
            low_balance_threshold=_amount(low_balance_threshold),
            margin_percent=_amount(margin_percent),
            organisation_id=organisation_id,
        )
        return self._one(BillingAccountPublic, "PUT", "/billing/account", json=body)

    def overview(
        self,
        *,
        start_date: date | datetime | str | None = None,
        end_date: date | datetime | str | None = None,
        currency: str | None = None,
        organisation_id: str | None = None,
    ) -> BillingOverview:
        """The revenue summary: balance, earnings available for payout, and the
        period's revenue, charges, top-ups and payouts."""
        params = _body(
            start_date=_when(start_date),
            end_date=_when(end_date),
            currency=currency,
            organisation_id=organisation_id,
        )
        return self._one(BillingOverview, "GET", "/billing/overview", params=params)

    def transactions(
        self,
        *,
        type: str | None = None,
        start_date: date | datetime | str | None = None,
        end_date: date | datetime | str | None = None,
        currency: str | None = None,
        organisation_id: str | None = None,
        page: int | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> Page[TransactionPublic]:
        """The wallet's ledger, newest first; ``type``: ``top_up``, ``charge``,
        ``refund``, ``adjustment``, ``payout`` or ``revenue``."""
        params = _paging(
            page,
            limit,
            cursor=cursor,
            type=type,
            start_date=_when(start_date),
            end_date=_when(end_date),
            currency=currency,
            organisation_id=organisation_id,
        )
        return self._page(TransactionPublic, "/billing/transactions", params)

    def subscription(self, *, organisation_id: str | None = None) -> SubscriptionPublic:
        """The current plan (prepaid pay-as-you-go) and its status."""
        return self._one(
            SubscriptionPublic, "GET", "/billing/subscription", params=_org(organisation_id)
        )


def vm_item(
    *,
    count: int = 1,
    cpu_cores: int | None = None,
    memory_gb: float | None = None,
    memory_mb: int | None = None,
    storage_gb: int | None = None,
    flavor: str | None = None,
    image_id: str | None = None,
    os_type: str | None = None,
    os_version: str | None = None,
    name: str | None = None,
) -> dict[str, Any]:
    """A VM item of a quote."""
    return {
        "type": "vm",
        **_body(
            count=count,
            cpu_cores=cpu_cores,
            memory_gb=memory_gb,
            memory_mb=memory_mb,
            storage_gb=storage_gb,
            flavor=flavor,
            image_id=image_id,
            os_type=os_type,
            os_version=os_version,
            name=name,
        ),
    }


def container_item(
    *,
    count: int = 1,
    cpu: str | None = None,
    memory: str | None = None,
    storage_gb: int | None = None,
    replicas: int | None = None,
    image: str | None = None,
    ports: Sequence[str | int] | None = None,
    environment: Mapping[str, str] | None = None,
    name: str | None = None,
) -> dict[str, Any]:
    """A container item of a quote (``cpu`` ``"0.5"``, ``memory`` ``"512m"``)."""
    return {
        "type": "container",
        **_body(
            count=count,
            cpu=cpu,
            memory=memory,
            storage_gb=storage_gb,
            replicas=replicas,
            image=image,
            ports=[str(p) for p in ports] if ports is not None else None,
            environment=dict(environment) if environment is not None else None,
            name=name,
        ),
    }


def volume_item(*, size_gb: int, count: int = 1, name: str | None = None) -> dict[str, Any]:
    """A volume item of a quote."""
    return {"type": "volume", **_body(count=count, size_gb=size_gb, name=name)}


class Quotes(_Resource):
    """Price a configuration, then accept the quote to provision it.

    Items are dicts as the API takes them; :func:`vm_item`, :func:`container_item`
    and :func:`volume_item` (also ``Quotes.vm``, ``.container``, ``.volume``) build
    them."""

    vm = staticmethod(vm_item)
    container = staticmethod(container_item)
    volume = staticmethod(volume_item)

    def create(
        self,
        items: Sequence[Mapping[str, Any]],
        *,
        name: str | None = None,
        hours_per_month: int | None = None,
        project_id: str | None = None,
        organisation_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> QuotePublic:
        """Price ``items`` for a month: lines per item and meter, ``monthly_total``."""
        body = _body(
            name=name,
            items=[dict(i) for i in items],
            hours_per_month=hours_per_month,
            project_id=project_id,
            organisation_id=organisation_id,
        )
        headers = _idempotent(idempotency_key)
        return self._one(QuotePublic, "POST", "/quotes", json=body, headers=headers)

    def list(
        self,
        *,
        status: str | None = None,
        organisation_id: str | None = None,
        page: int | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> Page[QuotePublic]:
        params = _paging(page, limit, cursor=cursor, status=status, organisation_id=organisation_id)
        return self._page(QuotePublic, "/quotes", params)

    def get(self, quote_id: str) -> QuotePublic:
        """The quote; ``status`` ``failed`` (with ``failure_reason``) when what it
        provisions could not be made (what was charged for it is refunded)."""
        return self._one(QuotePublic, "GET", f"/quotes/{_seg(quote_id)}")

    def accept(
        self,
        quote_id: str,
        *,
        project_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> QuoteAccepted:
        """Provision the quote. Each resource's ``operation`` can be followed with
        ``client.operations.wait(resource.operation)``. Accepting again after a
        failure half-way resumes without making anything twice."""
        body = _body(project_id=project_id)
        return self._one(
            QuoteAccepted,
            "POST",
            f"/quotes/{_seg(quote_id)}/accept",
            json=body,
            headers=_idempotent(idempotency_key),
        )


class Payouts(_Resource):
    """Payouts of earnings (a reseller's margins, a creator's revenue)."""

    def list(
        self,
        *,
        status: str | None = None,
        all: bool | None = None,
        organisation_id: str | None = None,
        page: int | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> Page[PayoutPublic]:
        """Newest first; ``all=True`` (platform admins): every organisation's."""
        params = _paging(
            page,
            limit,
            cursor=cursor,
            status=status,
            all=all or None,
            organisation_id=organisation_id,
        )
        return self._page(PayoutPublic, "/billing/payouts", params)

    def get(self, payout_id: str) -> PayoutPublic:
        return self._one(PayoutPublic, "GET", f"/billing/payouts/{_seg(payout_id)}")

    def request(
        self,
        amount: Amount,
        *,
        currency: str | None = None,
        method: str | None = None,
        destination: str | None = None,
        note: str | None = None,
        organisation_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> PayoutPublic:
        """Ask for ``amount`` of the earnings to be paid out. Pass an
        ``idempotency_key``: a retry then gives the first payout back."""
        body = _body(
            amount=_amount(amount),
            currency=currency,
            method=method,
            destination=destination,
            note=note,
            organisation_id=organisation_id,
        )
        return self._one(
            PayoutPublic,
            "POST",
            "/billing/payout-request",
            json=body,
            headers=_idempotent(idempotency_key),
        )

    def settle(self, payout_id: str, *, note: str | None = None) -> PayoutPublic:
        """Mark it paid (platform admins)."""
        return self._decide(payout_id, "settle", note)

    def reject(self, payout_id: str, *, note: str | None = None) -> PayoutPublic:
        """Reject it (platform admins): the amount goes back to the wallet."""
        return self._decide(payout_id, "reject", note)

    def _decide(self, payout_id: str, action: str, note: str | None) -> PayoutPublic:
        return self._one(
            PayoutPublic,
            "POST",
            f"/billing/payouts/{_seg(payout_id)}/{action}",
            json=_body(note=note),
        )
