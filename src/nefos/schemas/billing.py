"""Wire schemas of billing: the catalogue, billing accounts, quotes, payouts and the
seed 002 revenue views (overview, transactions, subscription).

Money goes out as decimal strings (``"45.67"``) with a ``currency`` field, in that
currency's minor units (:class:`Priced`); only unit prices (``Price``) and the
ledger's ``*_exact`` figures keep more places. Amounts
come in as a string or a JSON number and are parsed as ``Decimal``, never as a
float; the service then checks them against the currency's minor unit.
"""

from __future__ import annotations

import re
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    Field,
    field_validator,
    model_validator,
)

from nefos.domain.money import round_money
from nefos.domain.units import parse_cpu_milli, parse_memory_mb, parse_port
from nefos.schemas.common import Id, Name, OptionalName, Pagination, Request
from nefos.schemas.compute import OperationRef


class _MinorUnits:
    """Marks a ``Money`` field: :class:`Priced` rounds it to the currency's minor unit."""

    def __repr__(self) -> str:
        return "MinorUnits"


MINOR_UNITS = _MinorUnits()
#: An amount: a decimal string in the currency's minor units (``"45.67"``, JPY
#: ``"4567"``, KWD ``"4.567"``), rounded half-up by :class:`Priced`.
Money = Annotated[
    str,
    MINOR_UNITS,
    Field(description="A decimal string in the currency's minor units.", examples=["45.67"]),
]
#: The exact figure kept inside (nine places at most): the ledger's ``*_exact``.
ExactMoney = Annotated[
    str, Field(description="The exact decimal string (up to nine places).", examples=["45.6712"])
]
#: A unit price is not an amount: it keeps its places (0.000013 a second).
Price = Annotated[
    str,
    Field(description="A decimal string, at the price's own precision.", examples=["0.000013"]),
]
Percent = Annotated[str, Field(description="A decimal string (percent).", examples=["12.5"])]
Currency = Annotated[
    str, Field(min_length=3, max_length=3, pattern=r"^[A-Za-z]{3}$", examples=["USD"])
]
#: An amount a client sends: a string or a JSON number, parsed exactly.
AmountIn = Annotated[
    Decimal,
    Field(gt=0, max_digits=24, decimal_places=9, allow_inf_nan=False, examples=["25.00"]),
]
#: A catalogue price: zero to a million a unit, at most nine places (what the
#: database keeps).
PriceIn = Annotated[
    Decimal,
    Field(ge=0, le=1_000_000, decimal_places=9, allow_inf_nan=False, examples=["0.05"]),
]
SKU_PATTERN = r"^(?:[a-z][a-z0-9_]{0,39}|flavor:[A-Za-z0-9][A-Za-z0-9_.-]{0,63})$"
Note = Annotated[str, Field(max_length=2000)]


def _in_minor_units(model: BaseModel, currency: str) -> None:
    for name, info in type(model).model_fields.items():
        value = getattr(model, name)
        if isinstance(value, str) and MINOR_UNITS in info.metadata:
            setattr(model, name, f"{round_money(Decimal(value), currency):f}")
        inners = value.values() if isinstance(value, dict) else value
        for inner in inners if isinstance(value, dict | list) else [value]:
            if isinstance(inner, Priced) and "currency" not in type(inner).model_fields:
                _in_minor_units(inner, currency)


class Priced(BaseModel):
    """A wire model with money: every ``Money`` field, its own and those of the
    ``Priced`` models it holds that have no ``currency`` of their own, goes out in
    its ``currency``'s minor units (ISO 4217: USD 2, JPY 0, KWD 3; half-up, as an
    invoice line is rounded). The one place the rule is applied."""

    @model_validator(mode="after")
    def _money_in_minor_units(self) -> Self:
        currency = getattr(self, "currency", None)
        if isinstance(currency, str):
            _in_minor_units(self, currency)
        return self


# --- catalogue -------------------------------------------------------------------------
class ProductPublic(BaseModel):
    """One price of the catalogue. In ``GET /products`` ``unit_price`` is what the
    caller pays (its reseller's margin included); in a product's history and in the
    answer to ``PUT /products/{sku}`` it is the catalogue's own price."""

    id: str
    sku: str = Field(examples=["vcpu_hour"])
    meter: str = Field(examples=["cpu"], description="cpu, memory, storage, network, ...")
    unit: str = Field(examples=["vCPU-hour"])
    name: str
    description: str
    flavor: str | None = None
    currency: str
    unit_price: Price
    effective_from: datetime
    effective_to: datetime | None = Field(None, description="null: in force")
    created_at: datetime


class ProductPage(BaseModel):
    """A page of the catalogue in force, as ``organisation_id`` pays it."""

    items: list[ProductPublic]
    pagination: Pagination
    currency: str
    organisation_id: str


class ProductPriceSet(Request):
    """A new price for a SKU from now on: the price in force closes, this one opens."""

    unit_price: PriceIn
    currency: Currency | None = Field(None, description="Default: the platform's currency.")
    name: Name | None = None
    description: Note | None = None


# --- billing accounts ------------------------------------------------------------------
AccountStatus = Literal["active", "low_balance", "suspended"]


class BillingAccountPublic(Priced):
    organisation_id: str
    organisation_kind: str = Field(description="standard or reseller")
    currency: str
    low_balance_threshold: Money
    margin_percent: Percent = Field(
        description="A reseller's margin on its child organisations' prices (percent)."
    )
    status: AccountStatus
    low_balance_since: datetime | None
    depleted_since: datetime | None
    suspended_at: datetime | None
    created_at: datetime
    updated_at: datetime


class BillingAccountUpdate(Request):
    """Fields to change; those left out keep their value."""

    currency: Currency | None = Field(
        None, description="Only while nothing has been paid, charged or earned."
    )
    low_balance_threshold: (
        Annotated[Decimal, Field(ge=0, le=10**9, decimal_places=9, allow_inf_nan=False)] | None
    ) = None
    margin_percent: (
        Annotated[Decimal, Field(ge=0, le=1000, decimal_places=4, allow_inf_nan=False)] | None
    ) = Field(None, description="Reseller organisations only: 0 to 1000 percent.")
    organisation_id: Id | None = None


# --- quotes ----------------------------------------------------------------------------
_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$")
_IMAGE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9._/:@+-]{0,499}$")
_OS = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$")


def _name(value: str) -> str:
    if not _NAME.match(value):
        raise ValueError("1-63 characters: letters, digits, '_', '.', '-'; first a letter or digit")
    return value


def _image(value: str) -> str:
    if not _IMAGE.match(value):
        raise ValueError("an image reference such as 'nginx:alpine' or 'localhost/app:1'")
    return value


def _opt_image(value: str | None) -> str | None:
    return None if value is None else _image(value)


def _os(value: str) -> str:
    if value and not _OS.match(value):
        raise ValueError("letters, digits, '.', '_', '+', '-' (up to 64)")
    return value


ResourceName = Annotated[str, AfterValidator(_name)]
Count = Annotated[int, Field(ge=1, le=100, description="How many of this item.")]
OsField = Annotated[str, Field(max_length=64), AfterValidator(_os)]
MAX_QUOTE_RESOURCES = 100


class QuoteVm(Request):
    """``count`` VMs. Accepting needs ``image_id`` (or ``os_type`` to match one)."""

    type: Literal["vm"]
    count: Count = 1
    name: ResourceName | None = None
    cpu_cores: Annotated[int, Field(ge=1, le=256)] = 1
    memory_gb: Annotated[float | None, Field(gt=0, le=4096)] = None
    memory_mb: Annotated[int | None, Field(ge=64, le=4 * 1024 * 1024)] = None
    storage_gb: Annotated[int, Field(ge=0, le=65_536)] = 10
    flavor: Annotated[str | None, Field(max_length=64)] = None
    image_id: Id | None = None
    os_type: OsField = ""
    os_version: OsField = ""

    @model_validator(mode="after")
    def _one_memory(self) -> QuoteVm:
        if self.memory_gb is not None and self.memory_mb is not None:
            raise ValueError("give memory_gb or memory_mb, not both")
        return self

    @property
    def resolved_memory_mb(self) -> int:
        """As ``VmCreate`` resolves it: what the VM gets, and is billed for."""
        if self.memory_mb is not None:
            return self.memory_mb
        return max(64, round((self.memory_gb if self.memory_gb is not None else 1) * 1024))


class QuoteContainer(Request):
    """``count`` containers of ``replicas`` replicas each. Accepting needs ``image``."""

    type: Literal["container"]
    count: Count = 1
    name: ResourceName | None = None
    image: Annotated[str | None, AfterValidator(_opt_image)] = None
    cpu: Annotated[str, Field(max_length=16, examples=["0.5"])] = "0.5"
    memory: Annotated[str, Field(max_length=16, examples=["512m"])] = "256m"
    storage_gb: Annotated[int, Field(ge=0, le=1024 * 1024)] = 0
    replicas: Annotated[int, Field(ge=1, le=64)] = 1
    ports: Annotated[list[Annotated[str, Field(max_length=64)]], Field(max_length=32)] = []
    environment: Annotated[
        dict[str, Annotated[str, Field(max_length=32_768)]], Field(max_length=256)
    ] = {}

    @field_validator("cpu", "memory", mode="before")
    @classmethod
    def _number(cls, v: Any) -> Any:
        if isinstance(v, int | float) and not isinstance(v, bool):
            return str(v)
        return v

    @field_validator("cpu")
    @classmethod
    def _cpu(cls, v: str) -> str:
        parse_cpu_milli(v)
        return v

    @field_validator("memory")
    @classmethod
    def _memory(cls, v: str) -> str:
        parse_memory_mb(v)
        return v

    @field_validator("ports")
    @classmethod
    def _ports(cls, v: list[str]) -> list[str]:
        for text in v:
            parse_port(text)
        return v

    @property
    def cpu_milli(self) -> int:
        return parse_cpu_milli(self.cpu)

    @property
    def memory_mb(self) -> int:
        return parse_memory_mb(self.memory)


class QuoteVolume(Request):
    type: Literal["volume"]
    count: Count = 1
    name: ResourceName | None = None
    size_gb: Annotated[int, Field(ge=1, le=65_536)]


QuoteItem = Annotated[QuoteVm | QuoteContainer | QuoteVolume, Field(discriminator="type")]


class QuoteCreate(Request):
    """A configuration to price: VMs, containers and volumes, for ``hours_per_month``
    hours a month (default: the setting ``billing_hours_per_month``)."""

    name: OptionalName = ""
    project_id: Id | None = Field(
        None, description="Where accepting provisions it (default: your default project)."
    )
    organisation_id: Id | None = None
    hours_per_month: Annotated[int | None, Field(ge=1, le=744)] = None
    items: Annotated[list[QuoteItem], Field(min_length=1, max_length=50)]

    @model_validator(mode="after")
    def _size(self) -> QuoteCreate:
        total = sum(i.count for i in self.items)
        if total > MAX_QUOTE_RESOURCES:
            raise ValueError(f"a quote makes at most {MAX_QUOTE_RESOURCES} resources ({total})")
        return self


class QuoteAccept(Request):
    project_id: Id | None = Field(
        None, description="Only for a quote made without a project: where to provision it."
    )


class QuoteLine(Priced):
    """One meter of one item, for a month: ``amount`` is ``quantity * unit_price``
    rounded half-up to the currency's minor unit, once."""

    item: int = Field(description="Index of the item in `items`.")
    type: str
    name: str
    count: int
    sku: str
    meter: str
    unit: str
    quantity: str = Field(description="Monthly quantity, in `unit`, for all `count`.")
    unit_price: Price
    amount: Money
    currency: str


class QuoteResource(BaseModel):
    """A resource accepting the quote makes (``id`` null: not made yet)."""

    item: int
    type: str
    name: str
    id: str | None = None
    operation: OperationRef | None = None


class QuotePublic(Priced):
    id: str
    organisation_id: str
    project_id: str | None
    name: str
    status: str = Field(description="open, accepting, accepted, failed, expired")
    failure_reason: str | None = Field(
        None, description="Why provisioning failed (status failed), else null"
    )
    currency: str
    hours_per_month: int
    items: list[dict[str, Any]]
    lines: list[QuoteLine]
    monthly_total: Money
    valid_until: datetime
    resources: list[QuoteResource]
    created_by: str | None
    accepted_by: str | None
    accepted_at: datetime | None
    created_at: datetime
    updated_at: datetime


class QuoteAccepted(BaseModel):
    """A 202: the quote, accepted, and the resources it is making (follow each
    ``operation``)."""

    message: str
    quote: QuotePublic
    resources: list[QuoteResource]


# --- payouts ---------------------------------------------------------------------------
PayoutStatus = Literal["pending", "paid", "rejected"]
PayoutMethod = Literal["bank_transfer", "paypal", "stripe", "manual"]


class PayoutRequest(Request):
    """Seed 002's ``POST /billing/payout-request``: pay out earnings (a reseller's
    margins, a creator's marketplace revenue). Send an ``Idempotency-Key``."""

    amount: AmountIn
    currency: Currency | None = None
    method: PayoutMethod = "bank_transfer"
    destination: Annotated[str, Field(max_length=200, description="IBAN, e-mail, ...")] = ""
    note: Note = ""
    organisation_id: Id | None = None


class PayoutDecision(Request):
    note: Note | None = Field(None, description="A transfer reference, or why it was rejected.")


class PayoutPublic(Priced):
    id: str
    organisation_id: str
    wallet_id: str
    amount: Money
    currency: str
    status: PayoutStatus
    method: str
    destination: str
    note: str
    ledger_entry_id: str | None
    requested_by: str | None
    processed_at: datetime | None
    created_at: datetime
    updated_at: datetime


class Period(BaseModel):
    start: datetime
    end: datetime


class BillingOverview(Priced):
    """Seed 002's revenue summary. Totals cover ``period``; ``balance``,
    ``available_earnings`` and ``pending_payouts`` are as of now."""

    organisation_id: str
    currency: str
    balance: Money
    available_earnings: Money = Field(
        description="Earnings not yet paid out, up to the balance: what a payout may take."
    )
    total_revenue: Money
    total_charges: Money = Field(description="Usage charged in the period, net of refunds.")
    total_top_ups: Money
    total_payouts: Money = Field(description="Payouts requested in the period (not rejected).")
    pending_payouts: Money
    period: Period


class TransactionPublic(Priced):
    """One ledger entry of the wallet (seed 002's transaction)."""

    id: str
    wallet_id: str
    type: str = Field(description="top_up, charge, refund, adjustment, payout, revenue")
    kind: str
    amount: Money = Field(description="Signed: money out is negative.")
    amount_exact: ExactMoney = Field(description="`amount` as the ledger keeps it.")
    balance_after: Money
    balance_after_exact: ExactMoney
    currency: str
    description: str
    reference_kind: str | None
    reference_id: str | None
    created_by: str | None
    created_at: datetime


class SubscriptionPublic(Priced):
    """Seed 002's current subscription. Nefos is prepaid pay-as-you-go: the plan is
    the wallet, its status the wallet's state."""

    organisation_id: str
    plan: Literal["pay-as-you-go"] = "pay-as-you-go"
    status: AccountStatus
    currency: str
    balance: Money
    low_balance_threshold: Money
    margin_percent: Percent
    current_period: Period
    next_invoice_date: datetime


# --- payments and top-ups --------------------------------------------------------------
PaymentProvider = Literal["credit", "manual", "stripe"]
PaymentStatus = Literal["pending", "succeeded", "failed", "cancelled"]


class PaymentCreate(Request):
    """Top up a wallet. ``provider``: ``manual`` (a bank transfer a platform admin
    confirms), ``stripe`` (a PaymentIntent: pay with the answer's ``client_secret``)
    or ``credit`` (platform admins: credit the wallet at once; needs a
    ``description``, the reason). Default: ``stripe`` where the platform has it set
    up, else ``manual``; on ``POST /wallet/top-up`` a platform admin's default is
    ``credit``. Send an ``Idempotency-Key``: a retry returns the same payment."""

    amount: AmountIn
    currency: Currency | None = Field(None, description="Default: the wallet's currency.")
    provider: PaymentProvider | None = None
    description: Annotated[str | None, Field(max_length=500)] = Field(
        None,
        validation_alias=AliasChoices("description", "reason"),
        description="What it is for; for a `credit`, the reason (also accepted as `reason`).",
    )
    organisation_id: Id | None = None


class CardPayments(BaseModel):
    """What Stripe.js needs to take a card for a ``stripe`` payment."""

    publishable_key: str = Field(examples=["pk_test_..."])
    js_url: str = Field(examples=["https://js.stripe.com/v3/"], description="Load Stripe.js here.")


class PaymentMethods(BaseModel):
    """How this platform takes money (``GET /payments/methods``)."""

    providers: list[str] = Field(
        examples=[["stripe", "manual"]],
        description="What ``POST /payments`` takes as ``provider`` (``credit``: platform admins).",
    )
    default: str = Field(description="The provider of a payment that names none.")
    card: CardPayments | None = Field(
        None, description="Cards with Stripe.js, where the platform set them up; else null."
    )


class PaymentFail(Request):
    reason: Annotated[str, Field(min_length=1, max_length=500)] = "Marked failed by an admin"


class PaymentPublic(Priced):
    """A payment. ``client_secret`` (a pending ``stripe`` payment's, for Stripe.js) is
    in the answers of its creation and, for those who may pay, of ``GET``."""

    id: str
    organisation_id: str
    wallet_id: str
    provider: str
    amount: Money
    currency: str
    status: PaymentStatus
    description: str
    provider_ref: str | None = Field(None, description="The Stripe PaymentIntent's id.")
    client_secret: str | None = None
    failure_reason: str | None = Field(
        None, description="Why it failed or was cancelled, or a declined attempt's error."
    )
    idempotency_key: str | None = None
    ledger_entry_id: str | None = Field(None, description="The wallet credit, once succeeded.")
    created_by: str | None = None
    confirmed_by: str | None = None
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None = None


class StripeWebhookResult(BaseModel):
    received: bool = True
    event_id: str
    type: str
    handled: bool = Field(description="False: not about a payment of this platform.")
    payment_id: str | None = None
    status: PaymentStatus | None = None


# --- invoices and credit notes -----------------------------------------------------------
InvoiceStatus = Literal["draft", "open", "paid", "void"]
InvoiceKind = Literal["invoice", "credit_note"]


class InvoiceLinePublic(Priced):
    """One resource's use of one meter in the period (on a credit note: a credit)."""

    id: str
    position: int
    resource_kind: str | None = Field(None, examples=["container"])
    resource_id: str | None = None
    resource_name: str
    meter: str = Field(examples=["cpu"], description="cpu, memory, storage, network, ...")
    sku: str | None = Field(None, examples=["vcpu_hour"])
    description: str
    quantity: str = Field(description="In `unit`, a decimal string.", examples=["720"])
    unit: str = Field(examples=["vCPU-hour"])
    unit_price: Price = Field(description="The catalogue's price with the reseller's margin.")
    amount: Money = Field(
        description="quantity times unit_price, rounded half-up to the minor unit (once)."
    )
    corrects_line_id: str | None = Field(
        None, description="On a credit note: the invoice line it credits."
    )


class InvoicePublic(Priced):
    id: str
    number: str | None = Field(
        None, examples=["NEF-2026-000123"], description="Given when finalized."
    )
    organisation_id: str
    kind: InvoiceKind
    corrects_id: str | None = Field(None, description="On a credit note: the invoice it corrects.")
    currency: str
    period_start: datetime
    period_end: datetime = Field(description="Exclusive.")
    period: str = Field(examples=["2025-01-01 to 2025-01-31"])
    status: InvoiceStatus = Field(
        description="draft (lines may change), open (finalized, usage not all charged yet), "
        "paid, void"
    )
    subtotal: Money
    total: Money = Field(description="The lines' sum; negative on a credit note.")
    credited: Money = Field(description="What credit notes have given back on this invoice.")
    notes: str
    finalized_at: datetime | None = None
    due_at: datetime | None = None
    paid_at: datetime | None = None
    voided_at: datetime | None = None
    created_at: datetime
    updated_at: datetime
    html_url: str = Field(description="The printable rendering (GET, text/html).")


class InvoiceDetail(InvoicePublic):
    lines: list[InvoiceLinePublic]
    credit_note_ids: list[str] = Field(description="Credit notes correcting this invoice.")


class InvoiceCreate(Request):
    """A draft invoice of ``organisation_id`` for [period_start, period_end) (UTC), or
    without them for the current period so far (a preview; the billing engine
    finalizes it when the period ends). Made again, a draft's lines are replaced."""

    organisation_id: Id
    period_start: datetime | None = None
    period_end: datetime | None = None
    notes: Note | None = None

    @model_validator(mode="after")
    def _both_or_neither(self) -> InvoiceCreate:
        if (self.period_start is None) != (self.period_end is None):
            raise ValueError("give both period_start and period_end, or neither")
        return self


class CreditNoteLineIn(Request):
    line_id: Id = Field(description="A line of the invoice.")
    amount: AmountIn | None = Field(None, description="Default: what is left of the line.")


class CreditNoteCreate(Request):
    """A credit note: ``amount`` off the invoice, or the given ``lines``. It refunds the
    organisation's wallet and never exceeds what is left to credit."""

    reason: Annotated[str, Field(min_length=1, max_length=500)]
    amount: AmountIn | None = None
    lines: Annotated[list[CreditNoteLineIn], Field(min_length=1, max_length=500)] | None = None

    @model_validator(mode="after")
    def _one_of(self) -> CreditNoteCreate:
        if (self.amount is None) == (self.lines is None):
            raise ValueError("give either amount or lines")
        return self


class Bill(Priced):
    """Seed 004's bill: one finalized invoice."""

    id: str
    number: str | None
    period: str = Field(examples=["2025-01-01 to 2025-01-31"])
    period_start: datetime
    period_end: datetime
    amount: Money
    credited: Money
    currency: str
    status: InvoiceStatus
    due_date: datetime | None
    paid_date: datetime | None
    html_url: str


class BillingHistory(BaseModel):
    bills: list[Bill]
    items: list[Bill]
    pagination: Pagination


# --- wallet and usage (seeds 000 and 004) ---------------------------------------------------
class WalletPublic(Priced):
    """An organisation's prepaid wallet. ``balance`` is the sum of its ledger;
    ``pending_charges`` what its usage not yet charged costs; ``available`` the
    difference, which creates need above zero. All three in minor units, and
    ``available`` is the difference of the two as shown; the exact balance is the
    ledger's ``balance_after_exact``."""

    id: str
    organisation_id: str
    currency: str
    balance: Money
    pending_charges: Money
    available: Money
    low_balance_threshold: Money
    status: Literal["active", "low_balance", "depleted", "suspended"]
    depleted_since: datetime | None = None
    suspended_at: datetime | None = None
    created_at: datetime
    updated_at: datetime

    @model_validator(mode="after")
    def _available_adds_up(self) -> Self:
        shown = [
            round_money(Decimal(v), self.currency) for v in (self.balance, self.pending_charges)
        ]
        self.available = f"{shown[0] - shown[1]:f}"
        return self


class LedgerEntryPublic(Priced):
    """One entry of the ledger: ``amount`` and ``balance_after`` in minor units like
    every amount, and as the ledger keeps them (``*_exact``, up to nine places): the
    exact balance is the sum of the exact amounts."""

    id: str
    wallet_id: str
    kind: Literal["top_up", "charge", "refund", "adjustment", "payout", "revenue"]
    type: str = Field(description="Alias of kind.")
    amount: Money = Field(description="Signed: a charge or payout is negative.")
    amount_exact: ExactMoney = Field(description="`amount` as the ledger keeps it.")
    balance_after: Money
    balance_after_exact: ExactMoney
    currency: str
    description: str
    reference_kind: str | None = None
    reference_id: str | None = None
    created_by: str | None = None
    created_at: datetime


class LedgerPage(BaseModel):
    items: list[LedgerEntryPublic]
    entries: list[LedgerEntryPublic] = Field(description="Alias of items.")
    pagination: Pagination


class SummaryPeriod(Priced):
    start_date: datetime
    end_date: datetime
    total_cost: Money
    currency: str


class SummaryUsage(BaseModel):
    cpu_hours: float = Field(description="vCPU-hours.")
    memory_gb_hours: float
    storage_gb_days: float
    network_gb: float


class SummaryItem(Priced):
    """One resource of seed 004's summary (``container_id``, ``vm_id`` or
    ``volume_id`` names it)."""

    model_config = {"extra": "allow"}

    name: str
    cost: Money
    usage: SummaryUsage


class BillingSummary(Priced):
    """Seed 004's billing summary: the current period's cost so far."""

    user_id: str
    organisation_id: str
    current_period: SummaryPeriod
    containers: list[SummaryItem]
    vms: list[SummaryItem]
    volumes: list[SummaryItem]
    currency: str


class MeterUsage(Priced):
    """One meter of a resource: its quantity (``total_hours``, ``total_gb_hours``,
    ``total_gb_days`` or ``total_gb``) and cost."""

    model_config = {"extra": "allow"}

    cost: Money


class UsagePeriod(BaseModel):
    start_date: datetime
    end_date: datetime


class ResourceUsage(Priced):
    """Seed 004's usage of one container (``container_id``) or VM (``vm_id``)."""

    model_config = {"extra": "allow"}

    name: str
    period: UsagePeriod
    usage: dict[str, MeterUsage] = Field(description="cpu, memory, storage, network and instance.")
    total_cost: Money
    currency: str
