"""The price catalogue: one ``Product`` row per SKU, currency and time span.

A SKU names what is priced and in which unit. ``flavor:<name>`` prices an hour of
a VM of that flavor (on top of its vCPUs and memory, like ``vm_hour``). Prices are
never edited in place: ``set_price`` closes the row in force and opens a new one,
so usage is always rated with the price in force when it happened.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal

from sqlalchemy import or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from nefos.billing.money import ZERO
from nefos.db.models import Product
from nefos.db.types import utcnow
from nefos.domain.errors import Conflict, NotFound, ValidationFailed


@dataclass(frozen=True)
class Sku:
    sku: str
    meter: str
    unit: str
    name: str
    default: Decimal


# Defaults are seed 004's example prices (720 CPU-hours cost 36.00, and so on).
SKUS: tuple[Sku, ...] = (
    Sku("vcpu_hour", "cpu", "vCPU-hour", "vCPU, per hour", Decimal("0.05")),
    Sku("ram_gb_hour", "memory", "GB-hour", "Memory, per GB-hour", Decimal("0.005")),
    Sku("storage_gb_day", "storage", "GB-day", "Storage, per GB-day", Decimal("0.10")),
    Sku("network_gb", "network", "GB", "Network traffic, per GB", Decimal("0.01")),
    Sku("container_hour", "instance", "hour", "Container, per replica-hour", ZERO),
    Sku("vm_hour", "instance", "hour", "Virtual machine, per hour", ZERO),
    Sku("api_call", "api_calls", "call", "API call (marketplace)", ZERO),
)
BY_SKU: dict[str, Sku] = {s.sku: s for s in SKUS}
FLAVOR_PREFIX = "flavor:"
# The beginning of time for the default catalogue's first rows.
EPOCH = datetime(2000, 1, 1, tzinfo=UTC)


def describe(sku: str) -> Sku:
    """The SKU's meter and unit; ``flavor:<name>`` is an instance-hour."""
    if sku in BY_SKU:
        return BY_SKU[sku]
    if sku.startswith(FLAVOR_PREFIX) and len(sku) > len(FLAVOR_PREFIX):
        flavor = sku[len(FLAVOR_PREFIX) :]
        return Sku(sku, "instance", "hour", f"VM of flavor {flavor}, per hour", ZERO)
    raise ValidationFailed("Unknown SKU", sku=sku, known=[*BY_SKU, f"{FLAVOR_PREFIX}<flavor>"])


async def ensure_defaults(session: AsyncSession, currency: str) -> None:
    """Give ``currency`` the default catalogue if it has no product at all."""
    if await session.scalar(select(Product.id).where(Product.currency == currency).limit(1)):
        return
    for s in SKUS:
        session.add(
            Product(
                sku=s.sku,
                meter=s.meter,
                currency=currency,
                unit_price=s.default,
                name=s.name,
                effective_from=EPOCH,
            )
        )
    await session.flush()


async def set_price(
    session: AsyncSession,
    *,
    sku: str,
    currency: str,
    unit_price: Decimal,
    name: str | None = None,
    description: str | None = None,
    created_by: str | None = None,
    at: datetime | None = None,
) -> Product:
    """Close the price in force for ``sku`` (if any) at ``at`` and open ``unit_price``
    from then on, with the name and description given, else those of the price in
    force, else the SKU's defaults. The caller holds a write transaction and commits."""
    if unit_price < 0:
        raise ValidationFailed("unit_price must not be negative", unit_price=str(unit_price))
    info = describe(sku)
    when = at or utcnow()
    current = await session.scalar(
        select(Product).where(
            Product.currency == currency, Product.sku == sku, Product.effective_to.is_(None)
        )
    )
    if name is None:
        name = current.name if current is not None else info.name
    if description is None:
        description = current.description if current is not None else ""
    await session.execute(
        update(Product)
        .where(Product.currency == currency, Product.sku == sku, Product.effective_to.is_(None))
        .values(effective_to=when)
        .execution_options(synchronize_session=False)
    )
    product = Product(
        sku=sku,
        meter=info.meter,
        flavor=sku[len(FLAVOR_PREFIX) :] if sku.startswith(FLAVOR_PREFIX) else None,
        currency=currency,
        unit_price=unit_price,
        name=name or info.name,
        description=description or "",
        effective_from=when,
        created_by=created_by,
    )
    session.add(product)
    await session.flush()
    return product


async def retire(
    session: AsyncSession, *, sku: str, currency: str, at: datetime | None = None
) -> Product:
    """Close the price in force of the flavor ``sku`` at ``at``, with none after it:
    VMs of that flavor are rated by their resources from then on. The base SKUs rate
    every resource and are never retired. The caller holds a write transaction."""
    describe(sku)
    if not sku.startswith(FLAVOR_PREFIX):
        raise Conflict(
            "Only a flavor's price can be retired: the base SKUs rate every resource", sku=sku
        )
    product = await session.scalar(
        select(Product)
        .where(Product.currency == currency, Product.sku == sku, Product.effective_to.is_(None))
        .with_for_update()
    )
    if product is None:
        raise NotFound("This SKU has no price in force", sku=sku, currency=currency)
    product.effective_to = at or utcnow()
    await session.flush()
    return product


async def in_force(session: AsyncSession, currency: str) -> Sequence[Product]:
    return (
        await session.scalars(
            select(Product)
            .where(Product.currency == currency, Product.effective_to.is_(None))
            .order_by(Product.sku)
        )
    ).all()


@dataclass
class PriceBook:
    """Every price of one currency over a span of time, looked up by SKU and instant."""

    currency: str
    # sku -> sorted starts and the matching (end, price)
    _starts: dict[str, list[datetime]] = field(default_factory=dict)
    _rows: dict[str, list[tuple[datetime | None, Decimal]]] = field(default_factory=dict)

    @classmethod
    def of(cls, currency: str, products: Iterable[Product]) -> PriceBook:
        book = cls(currency)
        # A price replaced at the instant it took effect was never in force.
        in_force = (
            p for p in products if p.effective_to is None or p.effective_to > p.effective_from
        )
        for p in sorted(in_force, key=lambda p: p.effective_from):
            book._starts.setdefault(p.sku, []).append(p.effective_from)
            book._rows.setdefault(p.sku, []).append((p.effective_to, p.unit_price))
        return book

    def price(self, sku: str, at: datetime) -> Decimal | None:
        """The price of ``sku`` in force at ``at``; None if it had none."""
        starts = self._starts.get(sku)
        if not starts:
            return None
        i = bisect_right(starts, at) - 1
        if i < 0:
            return None
        end, price = self._rows[sku][i]
        if end is not None and at >= end:
            return None
        return price

    def changes(self, start: datetime, end: datetime) -> list[datetime]:
        """The instants in (start, end) where some price changes, sorted."""
        points = {s for starts in self._starts.values() for s in starts if start < s < end}
        points |= {
            e for rows in self._rows.values() for e, _ in rows if e is not None and start < e < end
        }
        return sorted(points)


async def price_book(
    session: AsyncSession, currency: str, start: datetime, end: datetime
) -> PriceBook:
    """The prices of ``currency`` in force at some time in [start, end)."""
    rows = (
        await session.scalars(
            select(Product).where(
                Product.currency == currency,
                Product.effective_from < end,
                or_(Product.effective_to.is_(None), Product.effective_to > start),
            )
        )
    ).all()
    return PriceBook.of(currency, rows)
