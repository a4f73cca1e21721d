"""The wallet and usage costs (seeds 000 and 004).

Each call acts for one organisation: ``organisation_id``, else the organisation of
your default project (an API key bound to an organisation: that one).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from nefos.schemas.billing import (
    BillingSummary,
    LedgerEntryPublic,
    PaymentPublic,
    ResourceUsage,
    WalletPublic,
)
from nefos.schemas.common import Page
from nefos.sdk._payments import Amount, pay
from nefos.sdk._resources import _body, _paging, _Resource, _seg, _when


class Wallet(_Resource):
    """The organisation's prepaid wallet and its append-only ledger."""

    def get(self, *, organisation_id: str | None = None) -> WalletPublic:
        """Balance (the ledger's sum), pending charges, what is available, status."""
        return self._one(
            WalletPublic, "GET", "/wallet", params=_body(organisation_id=organisation_id)
        )

    def ledger(
        self,
        *,
        kind: str | None = None,
        start_date: datetime | str | None = None,
        end_date: datetime | str | None = None,
        organisation_id: str | None = None,
        page: int | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> Page[LedgerEntryPublic]:
        """The ledger, newest first; ``kind``: top_up, charge, refund, adjustment,
        payout or revenue."""
        params = _paging(
            page,
            limit,
            cursor=cursor,
            kind=kind,
            start_date=_when(start_date),
            end_date=_when(end_date),
            organisation_id=organisation_id,
        )
        return self._page(LedgerEntryPublic, "/wallet/ledger", params)

    def top_up(
        self,
        amount: Amount,
        *,
        currency: str | None = None,
        provider: str | None = None,
        reason: str | None = None,
        organisation_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> PaymentPublic:
        """Top up the wallet: a platform admin naming no ``provider`` credits it at
        once (``reason`` is required then); anyone else gets a payment to complete,
        ``stripe`` where the platform has it (pay its ``client_secret``), else
        ``manual`` (a bank transfer a platform admin confirms). See
        :class:`~nefos.sdk.Payments`."""
        return pay(
            self._client,
            "/wallet/top-up",
            amount,
            currency=currency,
            provider=provider,
            description=reason,
            organisation_id=organisation_id,
            idempotency_key=idempotency_key,
        )


class Billing(_Resource):
    """What the organisation's resources used and cost."""

    def summary(self, *, organisation_id: str | None = None) -> BillingSummary:
        """Seed 004: the current period's cost so far, per resource."""
        return self._one(
            BillingSummary,
            "GET",
            "/billing/summary",
            params=_body(organisation_id=organisation_id),
        )

    def _usage(
        self,
        kind: str,
        resource_id: str,
        start_date: datetime | str | None,
        end_date: datetime | str | None,
    ) -> ResourceUsage:
        params: dict[str, Any] = _body(start_date=_when(start_date), end_date=_when(end_date))
        return self._one(
            ResourceUsage, "GET", f"/billing/{kind}/{_seg(resource_id)}/usage", params=params
        )

    def container_usage(
        self,
        container_id: str,
        *,
        start_date: datetime | str | None = None,
        end_date: datetime | str | None = None,
    ) -> ResourceUsage:
        """Seed 004: a container's usage and cost per meter (default: this period)."""
        return self._usage("containers", container_id, start_date, end_date)

    def vm_usage(
        self,
        vm_id: str,
        *,
        start_date: datetime | str | None = None,
        end_date: datetime | str | None = None,
    ) -> ResourceUsage:
        """A VM's usage and cost per meter (default: this period)."""
        return self._usage("vms", vm_id, start_date, end_date)
