"""Payments and wallet top-ups (seed 000): ``/payments``, ``/wallet/top-up`` and
Stripe's webhook, ``/payments/stripe/webhook``.

Each payment is of one organisation: ``organisation_id`` (body or query) or
``X-Organisation-ID``, else the organisation of the caller's default project.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Request
from starlette.responses import Response

from nefos.api.deps import (
    Access,
    CoreDep,
    ObjectId,
    OrgHint,
    PageDep,
    Public,
    SessionDep,
    authorize,
)
from nefos.billing.payments import payment_methods as methods_of
from nefos.domain.access import Permission
from nefos.domain.errors import MalformedRequest
from nefos.gateway.envelope import listing, ok
from nefos.schemas.billing import (
    PaymentCreate,
    PaymentFail,
    PaymentMethods,
    PaymentProvider,
    PaymentPublic,
    PaymentStatus,
    StripeWebhookResult,
)
from nefos.schemas.common import Envelope
from nefos.services.payments import PaymentService, may_pay, payment_public

router = APIRouter(tags=["billing"])

READ = Permission.BILLING_READ
WRITE = Permission.BILLING_WRITE
ADMIN = Permission.PLATFORM_ADMIN

PaymentId = ObjectId
# A create answers 201, or 200 with the payment its Idempotency-Key already made.
CREATED: dict[int | str, dict[str, Any]] = {
    200: {
        "model": Envelope[PaymentPublic],
        "description": "The payment this Idempotency-Key already made (Idempotent-Replayed)",
    }
}
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        description="Makes a retry safe: the same key (per organisation) returns the same "
        "payment, and the wallet is credited once.",
    ),
]
# The largest event Stripe sends is far below this; a bigger body is not Stripe's.
MAX_WEBHOOK_BODY = 1024 * 1024


def _public(payment: Any, *, secret: bool = False) -> PaymentPublic:
    return PaymentPublic.model_validate(payment_public(payment, secret=secret))


async def _create(
    body: PaymentCreate,
    core: CoreDep,
    session: SessionDep,
    organisation_id: str | None,
    idempotency_key: str | None,
    access: Access,
    *,
    admin_credits: bool,
) -> Response:
    org = await access.org(body.organisation_id or organisation_id, WRITE)
    payment, made = await PaymentService(core, session).create(
        access.principal, org, body, idempotency_key=idempotency_key, admin_credits=admin_credits
    )
    headers = None if made else {"Idempotent-Replayed": "true"}
    return ok(_public(payment, secret=True), 201 if made else 200, headers=headers)


@router.post(
    "/payments", status_code=201, response_model=Envelope[PaymentPublic], responses=CREATED
)
async def create_payment(
    body: PaymentCreate,
    core: CoreDep,
    session: SessionDep,
    organisation_id: OrgHint,
    idempotency_key: IdempotencyKey = None,
    access: Access = authorize(WRITE),
) -> Response:
    """Top up the organisation's wallet through a payment provider.

    * `manual`: a bank transfer. The payment stays `pending` until a platform admin
      confirms it (`POST /payments/{id}/confirm`), which credits the wallet.
    * `stripe`: a PaymentIntent. Pay it with the answer's `client_secret` (Stripe.js);
      Stripe's webhook credits the wallet when the money is received.
    * `credit` (platform admins): the wallet is credited at once; `description` says why.

    The same `Idempotency-Key` again returns the same payment (200); with another
    amount, currency or provider it is a 409."""
    return await _create(
        body, core, session, organisation_id, idempotency_key, access, admin_credits=False
    )


@router.post(
    "/wallet/top-up", status_code=201, response_model=Envelope[PaymentPublic], responses=CREATED
)
async def top_up_wallet(
    body: PaymentCreate,
    core: CoreDep,
    session: SessionDep,
    organisation_id: OrgHint,
    idempotency_key: IdempotencyKey = None,
    access: Access = authorize(WRITE),
) -> Response:
    """Top up the wallet (seed 000): `POST /payments`, except that a platform admin
    naming no provider credits the wallet at once (`credit`, with a `description`:
    the reason). Others get a payment to complete: `stripe` where the platform has
    it set up (pay with its `client_secret`), else `manual` (a bank transfer)."""
    return await _create(
        body, core, session, organisation_id, idempotency_key, access, admin_credits=True
    )


@router.get("/payments/methods", response_model=Envelope[PaymentMethods])
async def payment_methods(core: CoreDep, access: Access = authorize(READ)) -> Response:
    """How this platform takes money: the providers a payment may name, the default
    one, and, where cards are set up (`NEFOS_STRIPE_PUBLISHABLE_KEY`), Stripe.js's
    publishable key and address (`card`)."""
    admin = access.principal.is_admin
    return ok(PaymentMethods.model_validate(methods_of(core.settings, admin=admin)))


@router.get("/payments", response_model=Envelope[dict[str, Any]])
async def list_payments(
    core: CoreDep,
    session: SessionDep,
    params: PageDep,
    organisation_id: OrgHint,
    status: PaymentStatus | None = None,
    provider: PaymentProvider | None = None,
    access: Access = authorize(READ),
) -> Response:
    """The organisation's payments, newest first."""
    org = await access.org(organisation_id, READ)
    rows, total = await PaymentService(core, session).list(
        org, params, status=status, provider=provider
    )
    return listing([_public(p) for p in rows], "payments", total, params)


@router.get("/payments/{payment_id}", response_model=Envelope[PaymentPublic])
async def get_payment(
    payment_id: PaymentId, core: CoreDep, session: SessionDep, access: Access = authorize(READ)
) -> Response:
    """A payment. A pending Stripe payment's `client_secret` is shown to those who may
    pay it (the organisation's admins and owners)."""
    payment, role = await PaymentService(core, session).visible(access.principal, payment_id, READ)
    return ok(_public(payment, secret=may_pay(access.principal, role)))


@router.post("/payments/{payment_id}/cancel", response_model=Envelope[PaymentPublic])
async def cancel_payment(
    payment_id: PaymentId, core: CoreDep, session: SessionDep, access: Access = authorize(WRITE)
) -> Response:
    """Cancel a pending payment (a Stripe one's PaymentIntent too). 409 once it is no
    longer pending, or when Stripe has the money already."""
    service = PaymentService(core, session)
    payment, _ = await service.visible(access.principal, payment_id, WRITE)
    return ok(_public(await service.cancel(access.principal, payment)))


@router.post("/payments/{payment_id}/refresh", response_model=Envelope[PaymentPublic])
async def refresh_payment(
    payment_id: PaymentId, core: CoreDep, session: SessionDep, access: Access = authorize(WRITE)
) -> Response:
    """Those who may pay a Stripe payment: ask Stripe how it stands now and apply it
    (the wallet is credited once it has the money), rather than wait for its
    webhook; the console calls it when Stripe.js says the card was taken. A bank
    transfer has nobody to ask: 409."""
    service = PaymentService(core, session)
    payment, _ = await service.visible(access.principal, payment_id, WRITE)
    return ok(_public(await service.refresh(payment), secret=True))


@router.post("/payments/{payment_id}/confirm", response_model=Envelope[PaymentPublic])
async def confirm_payment(
    payment_id: PaymentId, core: CoreDep, session: SessionDep, access: Access = authorize(ADMIN)
) -> Response:
    """Platform admins: the money of a pending bank transfer arrived; the wallet is
    credited, once (confirming a succeeded payment again changes nothing). For a
    Stripe payment, Stripe is asked (a lost webhook): 409 unless it has the money."""
    payment = await PaymentService(core, session).confirm(access.principal, payment_id)
    return ok(_public(payment))


@router.post("/payments/{payment_id}/fail", response_model=Envelope[PaymentPublic])
async def fail_payment(
    payment_id: PaymentId,
    core: CoreDep,
    session: SessionDep,
    body: PaymentFail | None = None,
    access: Access = authorize(ADMIN),
) -> Response:
    """Platform admins: a pending bank transfer will not arrive."""
    reason = body.reason if body is not None else PaymentFail().reason
    return ok(_public(await PaymentService(core, session).fail(payment_id, reason)))


@router.post(
    "/payments/stripe/webhook",
    response_model=Envelope[StripeWebhookResult],
    dependencies=[Public],
)
async def stripe_webhook(
    request: Request,
    core: CoreDep,
    session: SessionDep,
    stripe_signature: Annotated[
        str | None, Header(alias="Stripe-Signature", max_length=4096)
    ] = None,
) -> Response:
    """Stripe's events (`payment_intent.succeeded`, `.payment_failed`, `.canceled`, ...),
    signed with the endpoint's secret (`NEFOS_STRIPE_WEBHOOK_SECRET`): a signature that
    does not verify is a 400. Each event is applied once; a replay changes nothing.
    An event about no payment of this platform is acknowledged (`handled: false`)."""
    payload = await _body(request)
    result = await PaymentService(core, session).stripe_webhook(payload, stripe_signature)
    return ok(StripeWebhookResult.model_validate(result))


async def _body(request: Request) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_WEBHOOK_BODY:
            raise MalformedRequest("The webhook body is too large")
        chunks.append(chunk)
    return b"".join(chunks)
