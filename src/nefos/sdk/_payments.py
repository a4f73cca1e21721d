"""Payments: wallet top-ups through a payment provider (seed 000).

Amounts are ``Decimal``, ``str`` or ``int``, never ``float``. Pass an
``idempotency_key`` to make a retry safe: the same key (per organisation) returns
the same payment, and the wallet is credited once.
"""

from __future__ import annotations

from decimal import Decimal

from nefos.schemas.billing import PaymentMethods, PaymentPublic
from nefos.schemas.common import Page
from nefos.sdk._resources import _body, _idempotent, _paging, _Resource, _seg
from nefos.sdk._transport import Transport

PAYMENTS = "/payments"
Amount = Decimal | str | int


def money(amount: Amount) -> str:
    """An amount for the wire: a decimal string (a float would not be exact)."""
    if isinstance(amount, bool) or not isinstance(amount, Decimal | str | int):
        raise TypeError(f"give an amount as a Decimal, str or int, not {type(amount).__name__}")
    return f"{amount:f}" if isinstance(amount, Decimal) else str(amount)


def pay(
    client: Transport,
    path: str,
    amount: Amount,
    *,
    currency: str | None,
    provider: str | None,
    description: str | None,
    organisation_id: str | None,
    idempotency_key: str | None,
) -> PaymentPublic:
    body = _body(
        amount=money(amount),
        currency=currency,
        provider=provider,
        description=description,
        organisation_id=organisation_id,
    )
    data = client.request("POST", path, json=body, headers=_idempotent(idempotency_key))
    return PaymentPublic.model_validate(data)


class Payments(_Resource):
    """Top-ups through a provider: ``manual`` (a bank transfer that a platform admin
    confirms), ``stripe`` (pay the answer's ``client_secret`` with Stripe.js; Stripe's
    webhook credits the wallet) or ``credit`` (platform admins: credited at once)."""

    def create(
        self,
        amount: Amount,
        *,
        currency: str | None = None,
        provider: str | None = None,
        description: str | None = None,
        organisation_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> PaymentPublic:
        """A payment of ``amount`` (default currency: the wallet's; default provider:
        ``stripe`` where the platform has it, else ``manual``)."""
        return pay(
            self._client,
            PAYMENTS,
            amount,
            currency=currency,
            provider=provider,
            description=description,
            organisation_id=organisation_id,
            idempotency_key=idempotency_key,
        )

    def list(
        self,
        *,
        status: str | None = None,
        provider: str | None = None,
        organisation_id: str | None = None,
        page: int | None = None,
        limit: int | None = None,
        cursor: str | None = None,
        skip: int | None = None,
    ) -> Page[PaymentPublic]:
        """The organisation's payments, newest first; ``status``: pending, succeeded,
        failed or cancelled."""
        params = _paging(
            page,
            limit,
            cursor=cursor,
            skip=skip,
            status=status,
            provider=provider,
            organisation_id=organisation_id,
        )
        return self._page(PaymentPublic, PAYMENTS, params)

    def get(self, payment_id: str) -> PaymentPublic:
        return self._one(PaymentPublic, "GET", f"{PAYMENTS}/{_seg(payment_id)}")

    def cancel(self, payment_id: str) -> PaymentPublic:
        """Cancel a pending payment (a Stripe one's PaymentIntent too)."""
        return self._one(PaymentPublic, "POST", f"{PAYMENTS}/{_seg(payment_id)}/cancel")

    def methods(self) -> PaymentMethods:
        """How the platform takes money: ``providers``, the ``default`` one, and
        ``card`` (Stripe.js's publishable key and address) where cards are set up."""
        return self._one(PaymentMethods, "GET", f"{PAYMENTS}/methods")

    def refresh(self, payment_id: str) -> PaymentPublic:
        """Ask Stripe how a Stripe payment stands and apply it: the wallet is credited
        once Stripe has the money (rather than when its webhook arrives)."""
        return self._one(PaymentPublic, "POST", f"{PAYMENTS}/{_seg(payment_id)}/refresh")

    def confirm(self, payment_id: str) -> PaymentPublic:
        """Platform admins: a bank transfer arrived (credit the wallet), or ask Stripe
        about a Stripe payment. Confirming a succeeded payment changes nothing."""
        return self._one(PaymentPublic, "POST", f"{PAYMENTS}/{_seg(payment_id)}/confirm")

    def fail(self, payment_id: str, *, reason: str | None = None) -> PaymentPublic:
        """Platform admins: a pending bank transfer will not arrive."""
        body = _body(reason=reason)
        return self._one(
            PaymentPublic, "POST", f"{PAYMENTS}/{_seg(payment_id)}/fail", json=body or None
        )
