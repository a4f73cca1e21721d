"""Currencies and rounding. Money is ``Decimal``; a float never holds an amount."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

from nefos.domain.errors import ValidationFailed
from nefos.domain.money import MINOR_UNITS, minor_exponent, minor_unit, round_money

__all__ = [
    "EXACT",
    "MAX_AMOUNT",
    "MINOR_UNITS",
    "ZERO",
    "check_currency",
    "exact",
    "minor_exponent",
    "minor_str",
    "minor_unit",
    "money_str",
    "parse_amount",
    "round_money",
]
ZERO = Decimal(0)
# Rated amounts before the invoice line keep nine places (the ``Amount`` column).
EXACT = Decimal("1e-9")
# The largest amount one payment, top-up or payout may move: SQLite keeps amounts
# as 64-bit counts of 10⁻⁹ units (up to about 9.2e9), so a balance has room for
# several of them.
MAX_AMOUNT = Decimal("1000000000")


def exact(amount: Decimal) -> Decimal:
    """``amount`` at the nine places the database keeps (half-up)."""
    return amount.quantize(EXACT, rounding=ROUND_HALF_UP)


def money_str(amount: Decimal | None, currency: str) -> str | None:
    """An amount for the wire: a decimal string in the currency's minor unit when it
    is a whole number of them, else with the places it has (a per-hour price)."""
    if amount is None:
        return None
    rounded = round_money(amount, currency)
    if rounded == amount:
        return f"{rounded:f}"
    return f"{amount.normalize():f}"


def minor_str(amount: Decimal, currency: str) -> str:
    """An amount shown to people outside the schemas (events, alert texts, error
    details): in the currency's minor units, as ``schemas.billing.Money`` is."""
    return f"{round_money(amount, currency):f}"


def parse_amount(value: object, currency: str, *, field: str = "amount") -> Decimal:
    """A positive amount from the wire (a string, or a JSON number as the client wrote
    it), with at most the currency's minor places. Raises ValidationFailed."""
    try:
        amount = Decimal(str(value))
    except (InvalidOperation, ValueError):
        raise ValidationFailed(f"{field} is not a number", **{field: str(value)}) from None
    if not amount.is_finite() or amount <= 0:
        raise ValidationFailed(f"{field} must be positive", **{field: str(value)})
    if amount != round_money(amount, currency):
        raise ValidationFailed(
            f"{field} has more places than {currency} allows",
            **{field: str(value), "minor_unit": str(minor_unit(currency))},
        )
    if amount > MAX_AMOUNT:
        raise ValidationFailed(
            f"{field} is too large", **{field: str(value), "maximum": f"{MAX_AMOUNT:f}"}
        )
    return amount


def check_currency(currency: str) -> str:
    code = currency.upper()
    if len(code) != 3 or not code.isalpha() or not code.isascii():
        raise ValidationFailed("currency must be an ISO 4217 code", currency=currency)
    return code
