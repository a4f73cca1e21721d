"""The billing pass: cut usage at the hour, charge wallets, watch balances.

Each pass (every ``billing_interval`` seconds, in every server process; two at
once are safe):

1. ``metering.cut`` closes every span open since before the top of the hour, so a
   running resource is charged at least hourly.
2. ``charge`` rates each organisation's uncharged usage records with the prices in
   force when they started (plus its reseller's margin) and posts one ``charge`` to
   its wallet, marking the records with the entry in the same transaction
   (``UPDATE ... WHERE charge_id IS NULL``: a record is charged once, whoever
   gets there first). The margin is credited to the reseller's wallet as
   ``revenue``. A charge the balance cannot cover is not posted: the records wait
   (the balance never goes below zero) and count against ``available``.
   Marketplace calls are charged the same way (``apicalls``), and subscriptions
   whose period has ended are renewed: a monthly plan's fee charged for the new
   period, once (``planfees.renew_due``).
3. ``check_balances``: under the low-balance threshold an organisation gets one
   ``billing_update`` event and a ``low_balance`` alert; with nothing available
   its creates are refused (402) and, after ``billing_grace_period``, its running
   VMs and containers are stopped (not deleted). A top-up clears all of it.
4. Invoices of finished periods are made and finalized (``invoices.run_due``).

Stopping an organisation's instances is not billing's to do: the engine is handed a
``suspend`` function by what builds it (above the services, which know how to stop
a VM or a container) and calls it. The stops it makes are the system's, not any
user's: their operations carry no user and ``"actor": "system"``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from nefos.billing import accounts, apicalls, catalogue, invoices, ledger, metering, planfees, quota
from nefos.billing.accounts import (
    BillingParts,
    margin_of,
    mark_charged,
    pending_cost,
    usage_cost,
)
from nefos.billing.money import ZERO, minor_str
from nefos.config import Settings
from nefos.db.models import Alert, BillingAccount, Organisation, Project, UsageRecord, Wallet
from nefos.db.session import begin_write
from nefos.db.types import utcnow
from nefos.domain.errors import PaymentRequired
from nefos.events import EventType, make, record
from nefos.monitoring.alerts import announce, builtin_key, resolve_open

#: Stops (never deletes) every running VM and container of an organisation, acting
#: as the system. Given the organisation's id; failures are its own to log.
Suspend = Callable[[str], Awaitable[None]]

log = logging.getLogger(__name__)

LOW_BALANCE = "low_balance"
CHARGE_BATCH = 5000
# Minute rollups of an hour are complete a little after it ends.
NETWORK_DELAY = timedelta(minutes=2)


def top_of_hour(at: datetime) -> datetime:
    return at.replace(minute=0, second=0, microsecond=0)


@dataclass
class PassResult:
    records: int = 0
    charges: int = 0
    charged: Decimal = ZERO
    suspended: int = 0


class BillingEngine:
    def __init__(self, core: BillingParts, *, suspend: Suspend | None = None) -> None:
        self.core = core
        #: What stops a suspended organisation's instances (see :data:`Suspend`).
        self.suspend = suspend
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        # Why the last pass failed (None: it succeeded, or none ran yet).
        self.last_error: str | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    # --- running ----------------------------------------------------------------------
    def start(self) -> None:
        if self.core.settings.billing_enabled and self._task is None:
            self._task = asyncio.create_task(self._loop(), name="billing")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        interval = self.core.settings.billing_interval
        while True:
            # The first pass waits one interval too: a process starting (or a test's
            # server) charges nothing under the feet of what it is starting up.
            await asyncio.sleep(interval)
            try:
                await self.run_once()
                self.last_error = None
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("billing pass failed")

    async def run_once(self, now: datetime | None = None) -> PassResult:
        async with self._lock:
            now = now or utcnow()
            result = PassResult()
            # This process's gateway calls answered by now are charged in this pass.
            await self.core.calls.flush()
            async with self.core.db.sessionmaker() as session:
                await begin_write(session)
                await catalogue.ensure_defaults(session, self.core.settings.billing_currency)
                await session.commit()
            hour = top_of_hour(now)
            result.records = await metering.cut(self.core.db, hour)
            # Network: the last hours whose per-minute rollups are complete.
            if now - hour >= NETWORK_DELAY:
                for back in (3, 2, 1):
                    result.records += await metering.network(
                        self.core.db, hour - timedelta(hours=back)
                    )
            result.charges, result.charged = await self.charge()
            calls, charged = await apicalls.charge_calls(self.core.db, self.core.settings, now)
            result.charges += calls
            result.charged += charged
            # Quota crossings no gateway process saw (each counts only its own calls).
            await quota.sweep(self.core.db, now)
            renewed = await planfees.renew_due(self.core.db, self.core.settings, now)
            result.charges += renewed.charged
            result.charged += renewed.amount
            result.suspended = await self.check_balances(now)
            await self._invoices()
            return result

    async def _invoices(self) -> None:
        await invoices.run_due(self.core)

    # --- charging ---------------------------------------------------------------------
    async def charge(self) -> tuple[int, Decimal]:
        """Charge every organisation's uncharged usage; (charges posted, their sum)."""
        async with self.core.db.sessionmaker() as session:
            org_ids = (
                await session.scalars(
                    select(UsageRecord.organisation_id)
                    .where(UsageRecord.charge_id.is_(None))
                    .distinct()
                )
            ).all()
        posted, total = 0, ZERO
        for org_id in org_ids:
            while True:
                amount, more = await self.charge_org(org_id)
                if amount is not None:
                    posted += 1
                    total += amount
                if not more:
                    break
        return posted, total

    async def charge_org(self, org_id: str) -> tuple[Decimal | None, bool]:
        """Charge one batch of the organisation's uncharged usage. (The amount charged,
        or None if nothing was; whether more batches wait.)"""
        settings = self.core.settings
        async with self.core.db.sessionmaker() as session:
            await begin_write(session)
            org = await session.get(Organisation, org_id)
            if org is None:
                await session.rollback()
                return None, False
            account = await accounts.account(session, settings, org_id)
            records = (
                await session.scalars(
                    select(UsageRecord)
                    .where(UsageRecord.organisation_id == org_id, UsageRecord.charge_id.is_(None))
                    .order_by(UsageRecord.started_at, UsageRecord.id)
                    .limit(CHARGE_BATCH)
                )
            ).all()
            if not records:
                await session.rollback()
                return None, False
            more = len(records) == CHARGE_BATCH
            margin, reseller = await margin_of(session, org)
            base, markup = await usage_cost(session, account.currency, records, margin)
            amount = base + markup
            wallet = await accounts.wallet(session, settings, org_id, account.currency)
            ids = [r.id for r in records]
            key = "usage:" + hashlib.sha256(",".join(ids).encode()).hexdigest()[:40]
            try:
                entry = None
                if amount > 0:
                    entry = await ledger.post(
                        session,
                        wallet,
                        "charge",
                        -amount,
                        key=key,
                        description=_describe(records),
                        reference=("usage", ids[0]),
                    )
                marked = await mark_charged(
                    session, ids, entry.id if entry else f"free:{key[6:37]}"
                )
                if marked != len(ids):  # another process charged some meanwhile
                    await session.rollback()
                    return None, True
                if entry is not None and reseller is not None and markup > 0:
                    await _revenue(session, settings, reseller, account.currency, markup, entry.id)
                if entry is not None:
                    record(
                        session,
                        make(
                            EventType.BILLING,
                            _charge_event(org_id, wallet, entry.balance_after, amount, records),
                            organisation_id=org_id,
                        ),
                    )
                await session.commit()
            except PaymentRequired:
                await session.rollback()
                log.info("organisation %s cannot cover %s of usage", org_id, amount)
                return None, False
            except IntegrityError:  # a concurrent pass posted this very batch
                await session.rollback()
                return None, True
            return (amount if entry is not None else None), more

    # --- balances ---------------------------------------------------------------------
    async def check_balances(self, now: datetime) -> int:
        """Warn, refuse and suspend as balances require; the organisations suspended."""
        async with self.core.db.sessionmaker() as session:
            accounts = (await session.scalars(select(BillingAccount))).all()
            ids = [a.organisation_id for a in accounts]
        suspended = 0
        for org_id in ids:
            if await self.check_org(org_id, now):
                suspended += 1
        return suspended

    async def check_org(self, org_id: str, now: datetime) -> bool:
        """Warn, refuse or suspend one organisation as its balance requires (a top-up
        calls it to lift a 402 at once). True if it was suspended now."""
        settings = self.core.settings
        async with self.core.db.sessionmaker() as session:
            await begin_write(session)
            account = await session.get(BillingAccount, org_id, populate_existing=True)
            if account is None:
                await session.rollback()
                return False
            wallet = await accounts.wallet(session, settings, org_id, account.currency)
            owed = await pending_cost(session, org_id, account.currency)
            available = wallet.balance - owed
            suspend = False
            if available < account.low_balance_threshold:
                if account.low_balance_since is None:
                    account.low_balance_since = now
                    await _raise_low(session, org_id, wallet, available, account)
            elif account.low_balance_since is not None:
                account.low_balance_since = None
                await _resolve_low(session, wallet)
            if available <= 0:
                if account.depleted_since is None:
                    account.depleted_since = now
                grace = timedelta(seconds=settings.billing_grace_period)
                if account.suspended_at is None and now - account.depleted_since >= grace:
                    account.suspended_at = now
                    suspend = True
                    record(
                        session,
                        make(
                            EventType.BILLING,
                            {
                                "organisation_id": org_id,
                                "kind": "suspended",
                                "balance": minor_str(wallet.balance, wallet.currency),
                                "available": minor_str(available, wallet.currency),
                                "currency": wallet.currency,
                            },
                            organisation_id=org_id,
                        ),
                    )
            else:
                account.depleted_since = None
                account.suspended_at = None
            await session.commit()
        if suspend:
            await self._suspend(org_id)
        return suspend

    async def _suspend(self, org_id: str) -> None:
        """Stop (not delete) every running VM and container of the organisation, as
        the system, through the function the engine was handed."""
        if self.suspend is None:
            log.error(
                "no suspend function was handed to the billing engine; the instances "
                "of organisation %s keep running",
                org_id,
            )
            return
        try:
            await self.suspend(org_id)
        except Exception:
            log.exception("could not suspend organisation %s", org_id)


async def _revenue(
    session: AsyncSession,
    settings: Settings,
    reseller: Organisation,
    currency: str,
    amount: Decimal,
    charge_id: str,
) -> None:
    """Credit a reseller with its margin on a child's charge."""
    wallet = await accounts.wallet(session, settings, reseller.id, currency)
    await ledger.post(
        session,
        wallet,
        "revenue",
        amount,
        key=f"revenue:{charge_id}",
        description="Margin on a child organisation's usage",
        reference=("ledger_entry", charge_id),
    )


def _describe(records: Sequence[UsageRecord]) -> str:
    start = min(r.started_at for r in records)
    end = max(r.ended_at for r in records)
    resources = len({(r.resource_kind, r.resource_id) for r in records})
    return (
        f"Usage of {resources} resource{'s' if resources != 1 else ''} "
        f"from {start:%Y-%m-%d %H:%M:%S} to {end:%Y-%m-%d %H:%M:%S} UTC"
    )


def _charge_event(
    org_id: str, wallet: Wallet, balance: Decimal, amount: Decimal, records: Sequence[UsageRecord]
) -> dict[str, Any]:
    per: dict[tuple[str, str], int] = {}
    for r in records:
        per[(r.resource_kind, r.resource_id)] = per.get((r.resource_kind, r.resource_id), 0) + 1
    data: dict[str, Any] = {
        "organisation_id": org_id,
        "wallet_id": wallet.id,
        "kind": "charge",
        "cost": minor_str(amount, wallet.currency),
        "balance": minor_str(balance, wallet.currency),
        "currency": wallet.currency,
        "resources": [{"resource_kind": k, "resource_id": i} for k, i in sorted(per)][:100],
    }
    containers = [i for k, i in per if k == "container"]
    if len(per) == 1 and containers:  # seed 004's shape names the container
        data["container_id"] = containers[0]
    return data


async def _default_project(session: AsyncSession, org_id: str) -> str | None:
    return await session.scalar(
        select(Project.id)
        .where(Project.organisation_id == org_id)
        .order_by(Project.is_default.desc(), Project.created_at)
        .limit(1)
    )


async def _raise_low(
    session: AsyncSession,
    org_id: str,
    wallet: Wallet,
    available: Decimal,
    account: BillingAccount,
) -> None:
    cur = wallet.currency
    message = (
        f"Wallet balance is low: {minor_str(available, cur)} {cur} available "
        f"(threshold {minor_str(account.low_balance_threshold, cur)} {cur})"
    )
    record(
        session,
        make(
            EventType.BILLING,
            {
                "organisation_id": org_id,
                "wallet_id": wallet.id,
                "kind": "low_balance",
                "balance": minor_str(wallet.balance, cur),
                "available": minor_str(available, cur),
                "threshold": minor_str(account.low_balance_threshold, cur),
                "currency": cur,
            },
            organisation_id=org_id,
        ),
    )
    key = builtin_key(LOW_BALANCE, wallet.id)
    if await session.scalar(select(Alert.id).where(Alert.open_key == key)):
        return
    now = utcnow()
    alert = Alert(
        project_id=await _default_project(session, org_id),
        rule_id=None,
        kind=LOW_BALANCE,
        name="Low wallet balance",
        resource_kind="wallet",
        resource_id=wallet.id,
        metric=None,
        status="firing",
        severity="warning",
        value=None,
        threshold=None,
        message=message,
        open_key=key,
        started_at=now,
        fired_at=now,
    )
    session.add(alert)
    await session.flush()
    await announce(session, alert, "firing")


async def _resolve_low(session: AsyncSession, wallet: Wallet) -> None:
    open_alerts = (
        await session.scalars(
            select(Alert).where(Alert.open_key == builtin_key(LOW_BALANCE, wallet.id))
        )
    ).all()
    await resolve_open(session, open_alerts, "topped up")


__all__ = [
    "BillingEngine",
    "PassResult",
    "Suspend",
    "top_of_hour",
]
