"""The price book: which catalogue price is in force at an instant."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from nefos.billing.catalogue import PriceBook
from nefos.db.models import Product

T0 = datetime(2026, 12, 1, tzinfo=UTC)
S = timedelta(seconds=1)


def product(price: str, start: datetime, end: datetime | None) -> Product:
    return Product(
        sku="vcpu_hour",
        meter="cpu",
        currency="USD",
        unit_price=Decimal(price),
        name="vCPU-hour",
        effective_from=start,
        effective_to=end,
    )


def test_the_price_in_force_at_each_instant() -> None:
    book = PriceBook.of("USD", [product("2", T0 + 10 * S, None), product("1", T0, T0 + 10 * S)])
    assert book.price("vcpu_hour", T0 - S) is None
    assert book.price("vcpu_hour", T0) == Decimal("1")
    assert book.price("vcpu_hour", T0 + 9 * S) == Decimal("1")
    assert book.price("vcpu_hour", T0 + 10 * S) == Decimal("2")
    assert book.price("other", T0) is None
    assert book.changes(T0, T0 + 20 * S) == [T0 + 10 * S]


def test_a_price_replaced_the_instant_it_took_effect_never_applies() -> None:
    # Set twice in one instant: the first, [t, t), was never in force, whatever
    # order the database returns the two in.
    t = T0 + 5 * S
    rows = [product("1", T0, t), product("36", t, t), product("1000", t, None)]
    for order in (rows, rows[::-1], [rows[1], rows[0], rows[2]]):
        book = PriceBook.of("USD", order)
        assert book.price("vcpu_hour", t) == Decimal("1000")
        assert book.price("vcpu_hour", t - S) == Decimal("1")
