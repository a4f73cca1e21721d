"""Payments and wallet top-ups: the use cases (the providers are ``billing.payments``).

Who may do what: an organisation's admins and owners (``billing.write``) make
payments and cancel pending ones; its viewers and up (``billing.read``) read them;
platform admins confirm or fail bank transfers and credit wallets directly.

Idempotency. Every create takes an ``Idempotency-Key``, unique per organisation
in the database (``uq_payments_organisation_id_idempotency_key``). The gateway
(``nefos.gateway.idempotency``) answers a caller's own retry with the first answer
before the request reaches this module, and a retry racing the first with a 409;
what gets here is a retry by someone else of the same organisation (another
member, an API key), one after the gateway forgot the key, or one that raced the
first past the gateway: each finds the payment the first made (200 instead of
201). The same key with another amount, currency or provider is a 409. Two racing
first requests both insert: the unique constraint lets one through, the other
rolls back and returns the winner's payment. A wallet is credited once per payment
whatever happens (``billing.payments.credit``).

A Stripe payment is written (pending) before Stripe is asked for its PaymentIntent,
outside any transaction; Stripe's own idempotency key is the payment's id. So a
request that dies after asking Stripe is retried into the same PaymentIntent, and
a Stripe outage (503) leaves a pending payment that the retry completes.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from nefos.billing.money import check_currency, money_str, parse_amount
from nefos.billing.payments import (
    CREDIT,
    STRIPE,
    PaymentProvider,
    PaymentRequest,
    PaymentStatus,
    ProviderState,
    close,
    credit,
    default_provider,
    provider_for,
    verify_event,
)
from nefos.db.models import BillingAccount, LedgerEntry, Organisation, Payment, Wallet
from nefos.db.session import begin_write
from nefos.db.types import utcnow
from nefos.domain.access import Permission, Role, role_allows, scopes_allow
from nefos.domain.errors import Conflict, Forbidden, NotFound, ValidationFailed
from nefos.domain.paging import PageParams
from nefos.events import EventType, make, record
from nefos.schemas.billing import PaymentCreate
from nefos.services.billing import BillingService
from nefos.services.core import Core
from nefos.services.paging import fetch_page
from nefos.services.principal import Principal, authorize_org

log = logging.getLogger(__name__)

PENDING = PaymentStatus.PENDING
SUCCEEDED = PaymentStatus.SUCCEEDED
MAX_KEY = 255
# Inserts that meet a racing one's unique key (PostgreSQL) are tried again this often.
ATTEMPTS = 3


def payment_public(p: Payment, *, secret: bool = False) -> dict[str, Any]:
    """The wire form. ``secret``: include a pending Stripe payment's client secret."""
    return {
        "id": p.id,
        "organisation_id": p.organisation_id,
        "wallet_id": p.wallet_id,
        "provider": p.provider,
        "amount": money_str(p.amount, p.currency),
        "currency": p.currency,
        "status": p.status,
        "description": p.description,
        "provider_ref": p.provider_ref,
        "client_secret": p.client_secret if secret and p.status == PENDING else None,
        "failure_reason": p.failure_reason,
        "idempotency_key": p.idempotency_key,
        "ledger_entry_id": p.ledger_entry_id,
        "created_by": p.created_by,
        "confirmed_by": p.confirmed_by,
        "created_at": p.created_at,
        "updated_at": p.updated_at,
        "completed_at": p.completed_at,
    }


def check_key(key: str | None) -> str | None:
    """An ``Idempotency-Key`` as stored: 1-255 printable ASCII characters."""
    if key is None:
        return None
    key = key.strip()
    if not key or len(key) > MAX_KEY or not key.isascii() or not key.isprintable():
        raise ValidationFailed(
            "Idempotency-Key must be 1-255 printable ASCII characters",
            **{"Idempotency-Key": "invalid"},
        )
    return key


def may_pay(principal: Principal, role: Role) -> bool:
    """Whether the caller may act on the organisation's payments (see its secret)."""
    write = Permission.BILLING_WRITE
    return role_allows(role, write) and scopes_allow(principal.scopes, write)


class PaymentService:
    def __init__(self, core: Core, session: AsyncSession) -> None:
        self.core = core
        self.session = session
        self.settings = core.settings

    # --- reading ----------------------------------------------------------------------
    async def visible(
        self, principal: Principal, payment_id: str, permission: Permission
    ) -> tuple[Payment, Role]:
        """The payment and the caller's role in its organisation; another tenant's
        payment is NotFound, like a missing one."""
        payment = await self.session.get(Payment, payment_id)
        if payment is None:
            raise NotFound("Payment not found", payment_id=payment_id)
        try:
            _, role = await authorize_org(
                self.session, principal, payment.organisation_id, permission
            )
        except NotFound:
            raise NotFound("Payment not found", payment_id=payment_id) from None
        return payment, role

    async def list(
        self,
        org: Organisation,
        page: PageParams,
        *,
        status: str | None = None,
        provider: str | None = None,
    ) -> tuple[Sequence[Payment], int]:
        where: list[Any] = [Payment.organisation_id == org.id]
        if status is not None:
            where.append(Payment.status == status)
        if provider is not None:
            where.append(Payment.provider == provider)
        return await fetch_page(
            self.session,
            Payment,
            *where,
            order_by=(Payment.created_at.desc(), Payment.id.desc()),
            page=page,
        )

    # --- making -----------------------------------------------------------------------
    async def create(
        self,
        principal: Principal,
        org: Organisation,
        body: PaymentCreate,
        *,
        idempotency_key: str | None,
        admin_credits: bool = False,
    ) -> tuple[Payment, bool]:
        """Make a payment (or find the one this key made); (payment, made now).

        ``admin_credits``: a platform admin naming no provider credits the wallet
        directly (``POST /wallet/top-up``)."""
        key = check_key(idempotency_key)
        name: str
        if body.provider is not None:
            name = body.provider
        elif admin_credits and principal.is_admin:
            name = CREDIT
        else:
            name = default_provider(self.settings)
        if name == CREDIT:
            if not principal.is_admin:
                raise Forbidden("Only platform administrators credit a wallet directly")
            principal.require_scope(Permission.PLATFORM_ADMIN)
            if not body.description:
                raise ValidationFailed(
                    "A direct credit needs a reason", description="required for a credit"
                )
        provider = provider_for(name, self.settings)
        payment, made = await self._record(principal, org, provider, body, key)
        if provider.capabilities.remote and payment.status == PENDING:
            if payment.provider_ref is None:
                payment = await self._start(provider, payment)
        return payment, made

    async def _record(
        self,
        principal: Principal,
        org: Organisation,
        provider: PaymentProvider,
        body: PaymentCreate,
        key: str | None,
    ) -> tuple[Payment, bool]:
        """Insert the payment (and, for a credit, credit it) in one transaction, or
        return the one ``key`` already made."""
        # Read once: a rollback expires every object of the session, these included.
        org_id, user_id = org.id, principal.user_id
        for attempt in range(ATTEMPTS):
            await begin_write(self.session)
            try:
                account = await BillingService(self.core, self.session).account(org_id)
                currency = check_currency(body.currency or account.currency)
                amount = parse_amount(body.amount, currency)
                if key is not None:
                    existing = await self._by_key(org_id, key)
                    if existing is not None:
                        _same_request(existing, amount, currency, provider.name, key)
                        await self.session.commit()
                        return existing, False
                provider.accepts(amount, currency)
                wallet = await self._wallet(org_id, account, currency)
                payment = Payment(
                    organisation_id=org_id,
                    wallet_id=wallet.id,
                    provider=provider.name,
                    amount=amount,
                    currency=currency,
                    status=PENDING,
                    idempotency_key=key,
                    description=body.description or "",
                    created_by=user_id,
                )
                self.session.add(payment)
                await self.session.flush()
                if not provider.capabilities.remote:
                    checkout = await provider.start(_request(payment))
                    if checkout.status is SUCCEEDED:
                        entry = await credit(self.session, payment, by=user_id)
                        self._credited(payment, entry)
                await self.session.commit()
            except IntegrityError:
                # A racing request with this key committed first (PostgreSQL): look
                # again, and find its payment.
                await self.session.rollback()
                if attempt == ATTEMPTS - 1:
                    raise
                continue
            except BaseException:
                await self.session.rollback()
                raise
            if payment.status == SUCCEEDED:
                await self._after_credit(org_id)
            return payment, True
        raise AssertionError("unreachable")  # pragma: no cover

    async def _by_key(self, org_id: str, key: str) -> Payment | None:
        return await self.session.scalar(
            select(Payment)
            .where(Payment.organisation_id == org_id, Payment.idempotency_key == key)
            .execution_options(populate_existing=True)
        )

    async def _wallet(self, org_id: str, account: BillingAccount, currency: str) -> Wallet:
        found = await self.session.scalar(
            select(Wallet).where(Wallet.organisation_id == org_id, Wallet.currency == currency)
        )
        if found is not None:
            return found
        if currency != account.currency:
            raise ValidationFailed(
                f"The organisation's wallet is in {account.currency}",
                currency=f"{currency}: the organisation has no wallet in it",
            )
        return await BillingService(self.core, self.session).wallet(org_id, currency)

    async def _start(self, provider: PaymentProvider, payment: Payment) -> Payment:
        """Ask a remote provider for the payment's intent, outside any transaction,
        and keep its reference and client secret."""
        try:
            checkout = await provider.start(_request(payment))
        except (ValidationFailed, NotFound) as exc:  # refused for good
            await begin_write(self.session)
            current = await self._locked(payment.id)
            if current.status == PENDING and current.provider_ref is None:
                close(current, PaymentStatus.FAILED, exc.message)
            await self.session.commit()
            raise
        await begin_write(self.session)
        current = await self._locked(payment.id)
        # A webhook may have named the PaymentIntent first (it carries no secret).
        if current.provider_ref in (None, checkout.provider_ref):
            current.provider_ref = checkout.provider_ref
            current.client_secret = current.client_secret or checkout.client_secret
            current.updated_at = utcnow()
        await self.session.commit()
        return current

    async def _locked(self, payment_id: str) -> Payment:
        """The payment, read again with its row locked (PostgreSQL; on SQLite the
        write transaction already excludes every other writer)."""
        payment = await self.session.scalar(
            select(Payment)
            .where(Payment.id == payment_id)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
        if payment is None:
            raise NotFound("Payment not found", payment_id=payment_id)
        return payment

    # --- settling ---------------------------------------------------------------------
    async def get_any(self, payment_id: str) -> Payment:
        payment = await self.session.get(Payment, payment_id)
        if payment is None:
            raise NotFound("Payment not found", payment_id=payment_id)
        return payment

    async def confirm(self, principal: Principal, payment_id: str) -> Payment:
        """A platform admin says the payment is paid: a bank transfer arrived (the
        wallet is credited), or, for a Stripe payment, Stripe is asked (for when its
        webhook was lost). Confirming a succeeded payment changes nothing."""
        payment = await self.get_any(payment_id)
        if payment.status == SUCCEEDED:
            return payment
        provider = provider_for(payment.provider, self.settings)
        if provider.capabilities.remote:
            return await self._confirm_remote(provider, payment)
        await begin_write(self.session)
        current = await self._locked(payment.id)
        if current.status == SUCCEEDED:
            await self.session.commit()
            return current
        if current.status != PENDING:
            await self.session.commit()  # nothing changed; the lock goes
            raise Conflict(f"A {current.status} payment cannot be confirmed", status=current.status)
        self._credited(current, await credit(self.session, current, by=principal.user_id))
        await self.session.commit()
        await self._after_credit(current.organisation_id)
        return current

    async def refresh(self, payment: Payment) -> Payment:
        """Ask the payment's provider how it stands and apply it (a Stripe payment);
        Conflict for a provider with nobody to ask (a bank transfer)."""
        provider = provider_for(payment.provider, self.settings)
        if not provider.capabilities.remote:
            raise Conflict(
                "Only a Stripe payment can be refreshed: Nefos has nobody else to ask",
                provider=payment.provider,
            )
        if payment.status != PENDING or payment.provider_ref is None:
            return payment
        current, _ = await self._fetched(provider, payment, payment.provider_ref)
        return current or payment

    async def _fetched(
        self, provider: PaymentProvider, payment: Payment, ref: str
    ) -> tuple[Payment | None, ProviderState]:
        """Ask the provider how ``ref`` stands and apply it to ``payment``."""
        state = await provider.fetch(ref)
        return await self.apply(state, payment_id=payment.id), state

    async def _confirm_remote(self, provider: PaymentProvider, payment: Payment) -> Payment:
        if payment.provider_ref is None:
            raise Conflict("This payment has no PaymentIntent at Stripe yet", status=payment.status)
        current, state = await self._fetched(provider, payment, payment.provider_ref)
        if current is None or current.status != SUCCEEDED:
            raise Conflict(
                f"Stripe has not received this payment: its PaymentIntent is "
                f"{state.provider_status}",
                status=current.status if current else payment.status,
                stripe_status=state.provider_status,
            )
        return current

    async def fail(self, payment_id: str, reason: str) -> Payment:
        """A platform admin gives up on a pending bank transfer."""
        payment = await self.get_any(payment_id)
        if not provider_for(payment.provider, self.settings).capabilities.admin_confirms:
            raise Conflict(
                f"A {payment.provider} payment is not failed by hand; cancel a pending one",
                provider=payment.provider,
            )
        await begin_write(self.session)
        current = await self._locked(payment.id)
        if current.status != PENDING:
            await self.session.commit()  # nothing changed; the lock goes
            raise Conflict(f"A {current.status} payment cannot be failed", status=current.status)
        close(current, PaymentStatus.FAILED, reason)
        await self.session.commit()
        return current

    async def cancel(self, principal: Principal, payment: Payment) -> Payment:
        """Cancel a pending payment (a Stripe one at Stripe first)."""
        if payment.status != PENDING:
            raise Conflict(
                f"Only a pending payment can be cancelled; this one is {payment.status}",
                status=payment.status,
            )
        provider = provider_for(payment.provider, self.settings)
        if provider.capabilities.remote and payment.provider_ref is not None:
            try:
                state = await provider.cancel(payment.provider_ref)
            except ValidationFailed:
                # Stripe refuses to cancel what succeeded or is processing: take
                # what it has instead.
                state = await provider.fetch(payment.provider_ref)
            current = await self.apply(state, payment_id=payment.id)
            if current is None or current.status != PaymentStatus.CANCELLED:
                status = current.status if current else payment.status
                raise Conflict(
                    f"Stripe could not cancel it: its PaymentIntent is {state.provider_status}",
                    status=status,
                    stripe_status=state.provider_status,
                )
            return current
        await begin_write(self.session)
        current = await self._locked(payment.id)
        if current.status != PENDING:
            await self.session.commit()  # nothing changed; the lock goes
            raise Conflict(
                f"Only a pending payment can be cancelled; this one is {current.status}",
                status=current.status,
            )
        close(current, PaymentStatus.CANCELLED, f"Cancelled by {principal.user.email}")
        await self.session.commit()
        return current

    async def apply(self, state: ProviderState, *, payment_id: str | None = None) -> Payment | None:
        """Bring the payment ``state`` is about up to date with it, crediting its
        wallet (once) if the provider received the money. None: no payment of this
        platform (another system's PaymentIntent on the same Stripe account)."""
        for attempt in range(ATTEMPTS):
            await begin_write(self.session)
            try:
                payment = await self._of_state(state, payment_id)
                credited = False
                if payment is not None:
                    credited = await self._move(payment, state)
                await self.session.commit()
            except IntegrityError:
                await self.session.rollback()
                if attempt == ATTEMPTS - 1:
                    raise
                continue
            except BaseException:
                await self.session.rollback()
                raise
            if payment is not None and credited:
                await self._after_credit(payment.organisation_id)
            return payment
        raise AssertionError("unreachable")  # pragma: no cover

    async def _of_state(self, state: ProviderState, payment_id: str | None) -> Payment | None:
        payment = await self.session.scalar(
            select(Payment)
            .where(Payment.provider_ref == state.ref)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
        if payment is not None:
            return payment
        # Stripe may tell before Nefos kept the PaymentIntent's id: the metadata
        # names the payment (and its organisation, which must agree).
        wanted = payment_id or state.payment_id
        if wanted is None:
            return None
        payment = await self.session.scalar(
            select(Payment)
            .where(Payment.id == wanted, Payment.provider == STRIPE)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
        if payment is None:
            return None
        if state.organisation_id not in (None, payment.organisation_id):
            log.warning("PaymentIntent %s names payment %s of another org", state.ref, wanted)
            return None
        if payment.provider_ref not in (None, state.ref):
            log.warning("PaymentIntent %s names payment %s, made for another", state.ref, wanted)
            return None
        return payment

    async def _move(self, payment: Payment, state: ProviderState) -> bool:
        """Apply ``state`` to the locked ``payment``; whether it credited the wallet."""
        if payment.status == SUCCEEDED:
            return False  # a replay, or news older than what is known
        now = utcnow()
        if payment.provider_ref is None:
            payment.provider_ref = state.ref
            payment.updated_at = now
        if state.status is SUCCEEDED:
            if (state.amount, state.currency) != (payment.amount, payment.currency):
                payment.failure_reason = (
                    f"Stripe received {money_str(state.amount, state.currency)} "
                    f"{state.currency}, not {money_str(payment.amount, payment.currency)} "
                    f"{payment.currency}: not credited; review it"
                )
                payment.updated_at = now
                log.error("payment %s: %s", payment.id, payment.failure_reason)
                return False
            if payment.status != PENDING:
                log.warning("payment %s was %s, yet Stripe received it", payment.id, payment.status)
            self._credited(payment, await credit(self.session, payment, by=None))
            return True
        if state.status is PaymentStatus.CANCELLED:
            if payment.status == PENDING:
                close(payment, PaymentStatus.CANCELLED, state.failure or "Cancelled at Stripe")
            return False
        if payment.status == PENDING and state.failure and payment.failure_reason != state.failure:
            payment.failure_reason = state.failure  # declined: the customer may try again
            payment.updated_at = now
        return False

    async def stripe_webhook(self, payload: bytes, signature: str | None) -> dict[str, Any]:
        """Handle one Stripe webhook request (signature verified first)."""
        notice = verify_event(payload, signature, self.settings.stripe_webhook_secret)
        out: dict[str, Any] = {
            "received": True,
            "event_id": notice.event_id,
            "type": notice.type,
            "handled": False,
        }
        if notice.state is None:
            return out
        payment = await self.apply(notice.state)
        if payment is None:
            log.info("Stripe event %s is about no payment of this platform", notice.event_id)
            return out
        return {**out, "handled": True, "payment_id": payment.id, "status": payment.status}

    # --- telling ----------------------------------------------------------------------
    def _credited(self, payment: Payment, entry: LedgerEntry) -> None:
        """Tell the organisation's members (``billing_update``) when it commits."""
        cur = payment.currency
        record(
            self.session,
            make(
                EventType.BILLING,
                {
                    "organisation_id": payment.organisation_id,
                    "wallet_id": payment.wallet_id,
                    "kind": "top_up",
                    "amount": money_str(payment.amount, cur),
                    "balance": money_str(entry.balance_after, cur),
                    "currency": cur,
                    "payment_id": payment.id,
                    "provider": payment.provider,
                },
                organisation_id=payment.organisation_id,
            ),
        )

    async def _after_credit(self, org_id: str) -> None:
        """Let the billing engine look at the balance now rather than at its next
        pass: a top-up lifts a depleted organisation's refusal (402) at once."""
        if not self.settings.billing_enabled or self.core.balances is None:
            return
        try:
            await self.core.balances.check_org(org_id, utcnow())
        except Exception:  # the credit stands; the engine's next pass looks again
            log.exception("balance check after a top-up of %s failed", org_id)


def _request(payment: Payment) -> PaymentRequest:
    return PaymentRequest(
        payment_id=payment.id,
        organisation_id=payment.organisation_id,
        amount=payment.amount,
        currency=payment.currency,
        description=payment.description,
    )


def _same_request(
    existing: Payment, amount: Decimal, currency: str, provider: str, key: str
) -> None:
    if (existing.amount, existing.currency, existing.provider) != (amount, currency, provider):
        raise Conflict(
            "This Idempotency-Key was used for another payment (amount, currency or provider)",
            idempotency_key=key,
            payment_id=existing.id,
        )


__all__ = ["PaymentService", "check_key", "may_pay", "payment_public"]
