"""Currencies' minor units and the one rounding rule (pure: the wire schemas and
the billing engine share it)."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

# ISO 4217 minor units of the currencies Nefos knows; others have two.
MINOR_UNITS: dict[str, int] = {
    "BHD": 3,
    "CLP": 0,
    "ISK": 0,
    "JOD": 3,
    "JPY": 0,
    "KRW": 0,
    "KWD": 3,
    "OMR": 3,
    "TND": 3,
    "UGX": 0,
    "VND": 0,
}


def minor_exponent(currency: str) -> int:
    return MINOR_UNITS.get(currency.upper(), 2)


def minor_unit(currency: str) -> Decimal:
    """The smallest amount of ``currency`` (0.01 for USD, 1 for JPY)."""
    return Decimal(1).scaleb(-minor_exponent(currency))


def round_money(amount: Decimal, currency: str) -> Decimal:
    """``amount`` rounded half-up to the currency's minor unit: done once, at a line
    (and on the wire, for figures kept exact inside)."""
    rounded = amount.quantize(minor_unit(currency), rounding=ROUND_HALF_UP)
    return rounded + 0  # -0.00 is 0.00
