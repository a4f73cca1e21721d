"""Payments: how money from outside reaches a wallet, through a provider.

A ``Payment`` row is written first (``pending``); its provider then says how it is
paid:

* ``credit``: a platform admin credits the wallet directly; it succeeds at once.
* ``manual``: a bank transfer (an invoice paid by wire); a platform admin confirms
  it once the money is in, or cancels or fails it.
* ``stripe``: a Stripe PaymentIntent. The customer pays with its ``client_secret``
  (Stripe.js, a mobile SDK); Stripe tells Nefos through a signed webhook, and a
  platform admin's confirm asks Stripe when a webhook was lost.

Whatever the provider, a wallet is credited only by :func:`credit`: one ``top_up``
ledger entry whose key is ``payment:<id>``. A replayed webhook, a retried request
or two racing confirmations find that entry instead of posting another.

Stripe is the authority on money it received: a PaymentIntent that succeeded
credits its payment whatever Nefos thought of it before (a payment cancelled here
while the customer was paying), unless the amount or currency differ from the
payment's, which is left for a person to look at (``failure_reason`` says why).
A failed attempt (``payment_intent.payment_failed``) leaves the payment pending
with the decline in ``failure_reason``: the PaymentIntent can still be paid, with
another card.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from typing import Any, Protocol

import httpx
import stripe
from sqlalchemy.ext.asyncio import AsyncSession
from stripe.params import PaymentIntentCreateParams

from nefos.billing import ledger
from nefos.config import Settings
from nefos.db.models import LedgerEntry, Payment, Wallet
from nefos.db.types import utcnow
from nefos.domain.errors import (
    MalformedRequest,
    NefosError,
    NotFound,
    ServiceUnavailable,
    ValidationFailed,
)

log = logging.getLogger(__name__)


class PaymentStatus(StrEnum):
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


CREDIT = "credit"
MANUAL = "manual"
STRIPE = "stripe"
PROVIDERS: tuple[str, ...] = (CREDIT, MANUAL, STRIPE)
STATUSES: tuple[str, ...] = tuple(s.value for s in PaymentStatus)


def ledger_key(payment_id: str) -> str:
    """The key of the one ledger entry a payment may post."""
    return f"payment:{payment_id}"


# --- the provider interface ---------------------------------------------------------------
@dataclass(frozen=True)
class Capabilities:
    """What a provider does, for the service to check (never call-and-catch)."""

    #: A platform admin's confirm marks it paid (a bank transfer seen on the account).
    admin_confirms: bool = False
    #: The payment has a state at the provider: ``fetch``, ``cancel`` and webhooks.
    remote: bool = False


@dataclass(frozen=True)
class PaymentRequest:
    """What a provider is asked to collect."""

    payment_id: str
    organisation_id: str
    amount: Decimal
    currency: str
    description: str


@dataclass(frozen=True)
class Checkout:
    """What a provider made of a new payment."""

    status: PaymentStatus
    provider_ref: str | None = None
    client_secret: str | None = None


@dataclass(frozen=True)
class ProviderState:
    """A provider's view of one payment (a Stripe PaymentIntent).

    ``status`` is ``pending`` while it can still be paid, ``succeeded`` once the
    money is received (``amount`` is then what was received), ``cancelled`` once it
    never can be. ``failure`` is the last attempt's error, as shown to the customer.
    """

    ref: str
    status: PaymentStatus
    provider_status: str
    amount: Decimal
    currency: str
    payment_id: str | None
    organisation_id: str | None
    failure: str | None


@dataclass(frozen=True)
class Notice:
    """A verified webhook event; ``state`` is None for an event about no payment."""

    event_id: str
    type: str
    state: ProviderState | None


class PaymentProvider(Protocol):
    name: str
    capabilities: Capabilities

    def accepts(self, amount: Decimal, currency: str) -> None:
        """Raise ValidationFailed for an amount the provider cannot take."""
        ...

    async def start(self, request: PaymentRequest) -> Checkout:
        """Begin collecting ``request``. Idempotent per ``payment_id``: asked twice
        (a retry after a lost answer), a remote provider returns the same intent.
        Raises ValidationFailed when the provider refuses the payment for good,
        ServiceUnavailable when it could not be asked (nothing is known)."""
        ...

    async def fetch(self, ref: str) -> ProviderState:
        """The payment's state at the provider (``capabilities.remote`` only)."""
        ...

    async def cancel(self, ref: str) -> ProviderState:
        """Cancel the payment at the provider (``capabilities.remote`` only). Raises
        ValidationFailed when the provider refuses (it succeeded meanwhile)."""
        ...


class _Local:
    """A provider with nothing outside Nefos: no state to fetch or cancel."""

    name = ""
    capabilities = Capabilities()
    status = PaymentStatus.PENDING

    def accepts(self, amount: Decimal, currency: str) -> None:
        return None

    async def start(self, request: PaymentRequest) -> Checkout:
        return Checkout(status=self.status)

    async def fetch(self, ref: str) -> ProviderState:
        raise NotFound(f"A {self.name} payment has no state outside Nefos")

    async def cancel(self, ref: str) -> ProviderState:
        raise NotFound(f"A {self.name} payment has no state outside Nefos")


class CreditProvider(_Local):
    """A platform admin's direct credit: succeeded as it is made."""

    name = CREDIT
    status = PaymentStatus.SUCCEEDED


class ManualProvider(_Local):
    """A bank transfer: pending until a platform admin confirms (or fails) it."""

    name = MANUAL
    capabilities = Capabilities(admin_confirms=True)


# --- Stripe -------------------------------------------------------------------------------
# Stripe's minor units, where they differ from ISO 4217's (docs.stripe.com/currencies).
# ISK is zero-decimal in ISO 4217 yet Stripe takes it in hundredths (exponent 2).
_STRIPE_ZERO_DECIMAL = frozenset(
    {
        "BIF",
        "CLP",
        "DJF",
        "GNF",
        "JPY",
        "KMF",
        "KRW",
        "MGA",
        "PYG",
        "RWF",
        "UGX",
        "VND",
        "VUV",
        "XAF",
        "XOF",
        "XPF",
    }
)
# Three-decimal currencies: Stripe wants the last digit zero.
_STRIPE_THREE_DECIMAL = frozenset({"BHD", "JOD", "KWD", "OMR", "TND"})


def stripe_exponent(currency: str) -> int:
    code = currency.upper()
    if code in _STRIPE_ZERO_DECIMAL:
        return 0
    if code in _STRIPE_THREE_DECIMAL:
        return 3
    return 2


def to_stripe_amount(amount: Decimal, currency: str) -> int:
    """``amount`` in the integer unit Stripe takes for ``currency`` (cents for USD,
    yen for JPY). Raises ValidationFailed for an amount Stripe cannot represent."""
    exponent = stripe_exponent(currency)
    minor = amount.scaleb(exponent)
    if minor != minor.to_integral_value():
        raise ValidationFailed(
            f"Stripe takes {currency.upper()} in whole units of {Decimal(1).scaleb(-exponent)}",
            amount=f"{amount:f}",
        )
    units = int(minor)
    if exponent == 3 and units % 10:
        raise ValidationFailed(
            f"Stripe takes {currency.upper()} amounts in multiples of 0.010", amount=f"{amount:f}"
        )
    return units


def from_stripe_amount(units: int, currency: str) -> Decimal:
    return Decimal(units).scaleb(-stripe_exponent(currency))


def _stripe_status(status: str) -> PaymentStatus:
    if status == "succeeded":
        return PaymentStatus.SUCCEEDED
    if status == "canceled":
        return PaymentStatus.CANCELLED
    # requires_payment_method, requires_confirmation, requires_action, processing,
    # requires_capture: the customer (or Stripe) has more to do.
    return PaymentStatus.PENDING


def intent_state(obj: Mapping[str, Any]) -> ProviderState:
    """A PaymentIntent (as JSON) as a ProviderState. Raises ValueError if it is not one."""
    if obj.get("object") != "payment_intent":
        raise ValueError("not a payment_intent")
    ref, status, currency = obj.get("id"), obj.get("status"), obj.get("currency")
    amount, received = obj.get("amount"), obj.get("amount_received")
    if not (isinstance(ref, str) and isinstance(status, str) and isinstance(currency, str)):
        raise ValueError("a payment_intent without id, status or currency")
    if not isinstance(amount, int) or not isinstance(received, int | None):
        raise ValueError("a payment_intent without an integer amount")
    code = currency.upper()
    mapped = _stripe_status(status)
    units = received if mapped is PaymentStatus.SUCCEEDED and received is not None else amount
    metadata = obj.get("metadata")
    meta: Mapping[str, Any] = metadata if isinstance(metadata, Mapping) else {}
    error = obj.get("last_payment_error")
    failure = None
    if isinstance(error, Mapping):
        failure = str(error.get("message") or error.get("code") or "The payment failed")
    if mapped is PaymentStatus.CANCELLED:
        reason = obj.get("cancellation_reason")
        failure = failure or (f"Cancelled at Stripe ({reason})" if reason else None)
    payment_id, org_id = meta.get("nefos_payment_id"), meta.get("organisation_id")
    return ProviderState(
        ref=ref,
        status=mapped,
        provider_status=status,
        amount=from_stripe_amount(units, code),
        currency=code,
        payment_id=payment_id if isinstance(payment_id, str) else None,
        organisation_id=org_id if isinstance(org_id, str) else None,
        failure=failure,
    )


def _wrap(exc: stripe.StripeError, doing: str) -> NefosError:
    """A Stripe error as a Nefos one: refused for good (ValidationFailed, NotFound)
    or not answered (ServiceUnavailable: nothing is known, retry)."""
    message = exc.user_message or str(exc) or "Stripe refused the request"
    if isinstance(exc, stripe.InvalidRequestError | stripe.CardError | stripe.IdempotencyError):
        code = getattr(exc, "code", None)
        details = {"provider": STRIPE, "stripe_code": code}
        if code == "resource_missing":
            return NotFound(f"Stripe has no such PaymentIntent ({doing})", **details)
        return ValidationFailed(f"Stripe refused to {doing}: {message}", **details)
    if isinstance(exc, stripe.AuthenticationError | stripe.PermissionError):
        log.error("Stripe refused Nefos's API key while trying to %s: %s", doing, exc)
        return ServiceUnavailable(
            "Stripe refused this platform's API key (NEFOS_STRIPE_SECRET_KEY)", provider=STRIPE
        )
    log.warning("Stripe did not answer while trying to %s: %s", doing, exc)
    return ServiceUnavailable(f"Stripe is unavailable; try again ({doing})", provider=STRIPE)


def verify_event(payload: bytes, signature: str | None, secret: str | None) -> Notice:
    """The event of a Stripe webhook request whose ``Stripe-Signature`` verifies with
    the webhook signing ``secret`` (and is at most 5 minutes old). Raises
    MalformedRequest (400) otherwise, ValidationFailed when there is no secret."""
    if not secret:
        raise ValidationFailed(
            "Stripe webhooks are not enabled: set NEFOS_STRIPE_WEBHOOK_SECRET",
            setting="NEFOS_STRIPE_WEBHOOK_SECRET",
        )
    if not signature:
        raise MalformedRequest("The Stripe-Signature header is missing")
    try:
        event = stripe.Webhook.construct_event(payload, signature, secret)
    except stripe.SignatureVerificationError as exc:
        raise MalformedRequest("The Stripe signature does not verify") from exc
    except ValueError as exc:  # not JSON, or not UTF-8
        raise MalformedRequest("The Stripe event is not JSON") from exc
    raw = event.to_dict()
    kind = str(raw.get("type") or "")
    data = raw.get("data")
    obj = data.get("object") if isinstance(data, Mapping) else None
    state: ProviderState | None = None
    if kind.startswith("payment_intent.") and isinstance(obj, Mapping):
        try:
            state = intent_state(obj)
        except ValueError:
            log.warning("Stripe event %s (%s): no usable PaymentIntent", raw.get("id"), kind)
    return Notice(event_id=str(raw.get("id") or ""), type=kind, state=state)


class _StripeHTTP(stripe.HTTPClient):
    """The ``stripe`` package's transport, on httpx and async only. (The package's
    own ``HTTPXClient`` hands its form bodies to httpx as ``data=<str>``, which httpx
    deprecates; this one sends them as ``content``.) The package retries what this
    raises as a retryable APIConnectionError, with its own backoff."""

    name = "nefos-httpx"

    def __init__(self, timeout: float) -> None:
        super().__init__()
        self._http = httpx.AsyncClient(timeout=timeout)

    async def request_async(
        self, method: str, url: str, headers: Mapping[str, str], post_data: Any = None
    ) -> tuple[bytes, int, Mapping[str, str]]:
        try:
            response = await self._http.request(method, url, headers=headers, content=post_data)
        except httpx.HTTPError as exc:
            raise stripe.APIConnectionError(  # type: ignore[no-untyped-call]
                f"Could not reach Stripe ({type(exc).__name__}: {exc})", should_retry=True
            ) from exc
        return response.content, response.status_code, response.headers

    async def close_async(self) -> None:
        await self._http.aclose()

    def sleep_async(self, secs: float) -> Awaitable[None]:
        return asyncio.sleep(secs)


class StripeProvider:
    """PaymentIntents through the ``stripe`` package. Each call has a client (and an
    HTTP connection pool) of its own, closed after it: payments are rare, and a pool
    kept across event loops would break."""

    name = STRIPE
    capabilities = Capabilities(remote=True)

    def __init__(
        self,
        secret_key: str,
        *,
        api_base: str | None = None,
        webhook_secret: str | None = None,
        timeout: float = 30.0,
        max_network_retries: int = 2,
    ) -> None:
        self.secret_key = secret_key
        self.api_base = api_base.rstrip("/") if api_base else None
        self.webhook_secret = webhook_secret
        self.timeout = timeout
        self.max_network_retries = max_network_retries

    @asynccontextmanager
    async def _client(self) -> AsyncIterator[stripe.StripeClient]:
        http = _StripeHTTP(self.timeout)
        try:
            yield stripe.StripeClient(
                self.secret_key,
                base_addresses={"api": self.api_base} if self.api_base else None,
                http_client=http,
                max_network_retries=self.max_network_retries,
            )
        finally:
            await http.close_async()

    def accepts(self, amount: Decimal, currency: str) -> None:
        to_stripe_amount(amount, currency)

    async def start(self, request: PaymentRequest) -> Checkout:
        params: PaymentIntentCreateParams = {
            "amount": to_stripe_amount(request.amount, request.currency),
            "currency": request.currency.lower(),
            "automatic_payment_methods": {"enabled": True},
            "metadata": {
                "nefos_payment_id": request.payment_id,
                "organisation_id": request.organisation_id,
            },
        }
        if request.description:
            params["description"] = request.description[:1000]
        # The payment's own id as Stripe's idempotency key: a retry of this payment
        # (after a timeout, or a 503 here) gets the PaymentIntent the first one made.
        options: stripe.RequestOptions = {"idempotency_key": f"nefos-payment-{request.payment_id}"}
        async with self._client() as client:
            try:
                intent = await client.v1.payment_intents.create_async(params, options)
            except stripe.StripeError as exc:
                raise _wrap(exc, "create the PaymentIntent") from exc
        state = intent_state(intent.to_dict())
        return Checkout(
            status=state.status, provider_ref=state.ref, client_secret=intent.client_secret
        )

    async def fetch(self, ref: str) -> ProviderState:
        async with self._client() as client:
            try:
                intent = await client.v1.payment_intents.retrieve_async(ref)
            except stripe.StripeError as exc:
                raise _wrap(exc, "read the PaymentIntent") from exc
        return intent_state(intent.to_dict())

    async def cancel(self, ref: str) -> ProviderState:
        async with self._client() as client:
            try:
                intent = await client.v1.payment_intents.cancel_async(
                    ref, {"cancellation_reason": "requested_by_customer"}
                )
            except stripe.StripeError as exc:
                raise _wrap(exc, "cancel the PaymentIntent") from exc
        return intent_state(intent.to_dict())

    def verify(self, payload: bytes, signature: str | None) -> Notice:
        return verify_event(payload, signature, self.webhook_secret)


# --- choosing a provider ------------------------------------------------------------------
def default_provider(settings: Settings) -> str:
    """What a customer pays with when they name no provider: Stripe where it is set up."""
    return STRIPE if settings.stripe_secret_key else MANUAL


def payment_methods(settings: Settings, *, admin: bool) -> dict[str, Any]:
    """The providers a payment may name, the default, and Stripe.js's keys for cards
    (``GET /payments/methods``)."""
    stripe_on = bool(settings.stripe_secret_key)
    providers = ([STRIPE] if stripe_on else []) + [MANUAL] + ([CREDIT] if admin else [])
    card = None
    if stripe_on and settings.stripe_publishable_key:
        card = {
            "publishable_key": settings.stripe_publishable_key,
            "js_url": settings.stripe_js_url,
        }
    return {"providers": providers, "default": default_provider(settings), "card": card}


def stripe_provider(settings: Settings) -> StripeProvider:
    if not settings.stripe_secret_key:
        raise ValidationFailed(
            "The stripe payment provider is not enabled on this platform: "
            "set NEFOS_STRIPE_SECRET_KEY",
            provider="stripe is not enabled (NEFOS_STRIPE_SECRET_KEY is not set)",
        )
    return StripeProvider(
        settings.stripe_secret_key,
        api_base=settings.stripe_api_base,
        webhook_secret=settings.stripe_webhook_secret,
    )


def provider_for(name: str, settings: Settings) -> PaymentProvider:
    if name == CREDIT:
        return CreditProvider()
    if name == MANUAL:
        return ManualProvider()
    if name == STRIPE:
        return stripe_provider(settings)
    raise ValidationFailed("Unknown payment provider", provider=name, known=list(PROVIDERS))


# --- crediting ------------------------------------------------------------------------------
async def credit(session: AsyncSession, payment: Payment, *, by: str | None) -> LedgerEntry:
    """Credit the payment's wallet with it (once: its ledger key) and mark it
    succeeded. Call in a write transaction holding the payment's row; the caller
    commits."""
    wallet = await session.get(Wallet, payment.wallet_id)
    if wallet is None:  # the wallet is the organisation's: it goes only with it
        raise NotFound("The payment's wallet is gone", payment_id=payment.id)
    what = {CREDIT: "Credit", MANUAL: "Bank transfer", STRIPE: "Card payment (Stripe)"}
    description = what.get(payment.provider, "Payment")
    if payment.description:
        description += f": {payment.description}"
    entry = await ledger.post(
        session,
        wallet,
        "top_up",
        payment.amount,
        key=ledger_key(payment.id),
        description=description,
        reference=("payment", payment.id),
        created_by=by,
    )
    now = utcnow()
    payment.status = PaymentStatus.SUCCEEDED
    payment.ledger_entry_id = entry.id
    payment.confirmed_by = by
    payment.completed_at = now
    payment.updated_at = now
    payment.failure_reason = None
    return entry


def close(payment: Payment, status: PaymentStatus, reason: str | None) -> None:
    """Mark a payment that will never be paid ``failed`` or ``cancelled``."""
    now = utcnow()
    payment.status = status
    payment.failure_reason = reason
    payment.completed_at = now
    payment.updated_at = now


__all__ = [
    "CREDIT",
    "MANUAL",
    "PROVIDERS",
    "STATUSES",
    "STRIPE",
    "Capabilities",
    "Checkout",
    "CreditProvider",
    "ManualProvider",
    "Notice",
    "PaymentProvider",
    "PaymentRequest",
    "PaymentStatus",
    "ProviderState",
    "StripeProvider",
    "close",
    "credit",
    "default_provider",
    "from_stripe_amount",
    "intent_state",
    "ledger_key",
    "provider_for",
    "stripe_exponent",
    "stripe_provider",
    "to_stripe_amount",
    "verify_event",
]
