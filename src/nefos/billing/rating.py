"""Rating: usage quantities times the catalogue's prices, plus a reseller's margin.

Usage is summed in SQL (``usage_totals``: one ``GROUP BY`` over the records, in
integer base units, so the sums are exact on both databases), then priced in
Python with ``Decimal``: a sum of quantities times one price is exactly the sum of
each record's quantity times that price, so rating a month is one aggregate per
price span, not a multiplication per record. Rounding to the currency's minor
unit happens once, when a line is made (``RatedLine.amount``).

A line's exact amount is computed from its integer base units: ``units * unit_price
/ per``, multiplied first and divided once with 60 digits (``_amount``). A quantity
such as a third of a vCPU-hour has no exact decimal; priced at 0.165 it costs
exactly 0.055, which must round to 0.06, not to 0.05 from 0.0549999... Lines merged
across price spans add their units, never their rounded amounts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, localcontext
from itertools import pairwise
from typing import Any

from sqlalchemy import BigInteger, case, cast, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from nefos.billing.catalogue import FLAVOR_PREFIX, PriceBook, describe
from nefos.billing.money import ZERO, exact, round_money
from nefos.db.models import UsageRecord

HUNDRED = Decimal(100)
_CPU_MS_PER_HOUR = Decimal(3_600_000)  # milli-vCPU-seconds in a vCPU-hour
_MB_S_PER_GB_HOUR = Decimal(1024 * 3600)  # MiB-seconds in a GiB-hour
_GB_S_PER_GB_DAY = Decimal(86400)
_BYTES_PER_GB = Decimal(10**9)
_S_PER_HOUR = Decimal(3600)
_ONE = Decimal(1)
# Digits of the one division that makes an exact amount: enough that an amount on a
# rounding boundary comes out exact and one off it never lands on it.
_PRECISION = 60


@dataclass(frozen=True)
class Totals:
    """One resource's usage in base units over some span."""

    resource_kind: str
    resource_id: str
    resource_name: str
    flavor: str | None
    cpu_ms: int = 0  # milli-vCPU-seconds running
    memory_mbs: int = 0  # MiB-seconds running
    storage_gbs: int = 0  # GB-seconds allocated
    instance_s: int = 0  # instance-seconds running
    network_bytes: int = 0
    running_s: int = 0  # seconds running (not times instances)


@dataclass(frozen=True)
class RatedLine:
    resource_kind: str
    resource_id: str
    resource_name: str
    meter: str
    sku: str
    quantity: Decimal  # in ``unit``
    unit: str
    unit_price: Decimal  # the catalogue's price with the margin on top
    exact_amount: Decimal  # quantity times unit_price, unrounded
    currency: str
    # The quantity as integer base units (milli-vCPU-seconds, ...) per ``unit``: what
    # exact_amount is computed from, and what merging adds.
    units: int = 0
    per: Decimal = _ONE
    # The line's text when it is not the SKU's catalogue name (marketplace lines).
    description: str | None = None

    @property
    def amount(self) -> Decimal:
        """The line's amount: rounded half-up to the minor unit, the one rounding."""
        return round_money(self.exact_amount, self.currency)


def _running() -> Any:
    return UsageRecord.state == "running"


def totals_columns() -> list[Any]:
    """The aggregate columns of ``Totals`` over ``UsageRecord`` rows."""
    r = UsageRecord
    zero = 0
    # 64-bit products: an hour of a 256 GiB VM times three instances passes 2**31.
    seconds = cast(r.seconds, BigInteger)
    return [
        func.sum(case((_running(), seconds * r.cpu_milli * r.instances), else_=zero)),
        func.sum(case((_running(), seconds * r.memory_mb * r.instances), else_=zero)),
        func.sum(case((r.state != "network", seconds * r.storage_gb * r.instances), else_=zero)),
        func.sum(case((_running(), seconds * r.instances), else_=zero)),
        func.sum(r.network_bytes),
        func.sum(case((_running(), seconds), else_=zero)),
    ]


async def usage_totals(session: AsyncSession, *where: Any) -> list[Totals]:
    """Per resource, the sums of the usage records matching ``where``."""
    r = UsageRecord
    rows = await session.execute(
        select(r.resource_kind, r.resource_id, func.max(r.resource_name), func.max(r.flavor))
        .add_columns(*totals_columns())
        .where(*where)
        .group_by(r.resource_kind, r.resource_id)
    )
    return [
        Totals(k, i, n or "", f, *(int(v or 0) for v in rest)) for k, i, n, f, *rest in rows.all()
    ]


def instance_sku(kind: str, flavor: str | None, book: PriceBook, at: datetime) -> str:
    if kind == "vm" and flavor and book.price(FLAVOR_PREFIX + flavor, at) is not None:
        return FLAVOR_PREFIX + flavor
    return "vm_hour" if kind == "vm" else "container_hour"


def base_units(t: Totals, book: PriceBook, at: datetime) -> list[tuple[str, int, Decimal]]:
    """(sku, quantity in integer base units, base units per SKU unit) of each meter
    ``t`` used."""
    out: list[tuple[str, int, Decimal]] = []
    if t.cpu_ms:
        out.append(("vcpu_hour", t.cpu_ms, _CPU_MS_PER_HOUR))
    if t.memory_mbs:
        out.append(("ram_gb_hour", t.memory_mbs, _MB_S_PER_GB_HOUR))
    if t.storage_gbs:
        out.append(("storage_gb_day", t.storage_gbs, _GB_S_PER_GB_DAY))
    if t.network_bytes:
        out.append(("network_gb", t.network_bytes, _BYTES_PER_GB))
    if t.instance_s and t.resource_kind in ("vm", "container"):
        sku = instance_sku(t.resource_kind, t.flavor, book, at)
        out.append((sku, t.instance_s, _S_PER_HOUR))
    return out


def quantities(t: Totals, book: PriceBook, at: datetime) -> list[tuple[str, Decimal]]:
    """(sku, quantity in the SKU's unit) of each meter ``t`` used."""
    return [(sku, Decimal(units) / per) for sku, units, per in base_units(t, book, at)]


def _amount(units: int, unit_price: Decimal, per: Decimal) -> Decimal:
    """``units / per * unit_price``, exactly where it matters (see the module's doc)."""
    with localcontext() as ctx:
        ctx.prec = _PRECISION
        return Decimal(units) * unit_price / per


def with_margin(price: Decimal, margin_percent: Decimal) -> Decimal:
    return price * (1 + margin_percent / HUNDRED) if margin_percent else price


def rate(
    t: Totals, book: PriceBook, at: datetime, margin_percent: Decimal = ZERO
) -> list[RatedLine]:
    """``t`` priced with the catalogue in force at ``at`` (the start of its span).
    Meters with no price (or a zero price) make no line."""
    lines = []
    for sku, units, per in base_units(t, book, at):
        price = book.price(sku, at)
        if not price:
            continue
        unit_price = with_margin(price, margin_percent)
        info = describe(sku)
        lines.append(
            RatedLine(
                resource_kind=t.resource_kind,
                resource_id=t.resource_id,
                resource_name=t.resource_name,
                meter=info.meter,
                sku=sku,
                quantity=Decimal(units) / per,
                unit=info.unit,
                unit_price=unit_price,
                exact_amount=_amount(units, unit_price, per),
                currency=book.currency,
                units=units,
                per=per,
            )
        )
    return lines


def record_totals(rec: UsageRecord) -> Totals:
    running = rec.state == "running"
    n = rec.instances
    return Totals(
        rec.resource_kind,
        rec.resource_id,
        rec.resource_name,
        rec.flavor,
        cpu_ms=rec.seconds * rec.cpu_milli * n if running else 0,
        memory_mbs=rec.seconds * rec.memory_mb * n if running else 0,
        storage_gbs=rec.seconds * rec.storage_gb * n if rec.state != "network" else 0,
        instance_s=rec.seconds * n if running else 0,
        network_bytes=rec.network_bytes,
        running_s=rec.seconds if running else 0,
    )


def record_cost(
    rec: UsageRecord, book: PriceBook, margin_percent: Decimal = ZERO
) -> tuple[Decimal, Decimal]:
    """(base, margin) of one record at nine places: what the hourly charge posts."""
    t = record_totals(rec)
    base = sum((ln.exact_amount for ln in rate(t, book, rec.started_at)), ZERO)
    total = sum((ln.exact_amount for ln in rate(t, book, rec.started_at, margin_percent)), ZERO)
    return exact(base), exact(total) - exact(base)


async def rate_span(
    session: AsyncSession,
    book: PriceBook,
    start: datetime,
    end: datetime,
    *where: Any,
    margin_percent: Decimal = ZERO,
) -> list[RatedLine]:
    """Lines for the usage that started in [start, end), one aggregate per span of
    constant prices (a price change inside the period splits it)."""
    bounds = [start, *book.changes(start, end), end]
    lines: list[RatedLine] = []
    for lo, hi in pairwise(bounds):
        totals = await usage_totals(
            session, UsageRecord.started_at >= lo, UsageRecord.started_at < hi, *where
        )
        for t in totals:
            lines.extend(rate(t, book, lo, margin_percent))
    return merge(lines)


def merge(lines: Sequence[RatedLine]) -> list[RatedLine]:
    """Lines of one resource, SKU and price (from several spans) added together."""
    merged: dict[tuple[str, str, str, Decimal], RatedLine] = {}
    for ln in lines:
        k = (ln.resource_kind, ln.resource_id, ln.sku, ln.unit_price)
        prev = merged.get(k)
        if prev is None:
            merged[k] = ln
        else:
            units = prev.units + ln.units
            merged[k] = RatedLine(
                **{
                    **prev.__dict__,
                    "units": units,
                    "quantity": Decimal(units) / prev.per,
                    "exact_amount": _amount(units, prev.unit_price, prev.per),
                }
            )
    return sorted(
        merged.values(), key=lambda ln: (ln.resource_kind, ln.resource_name, ln.resource_id, ln.sku)
    )
