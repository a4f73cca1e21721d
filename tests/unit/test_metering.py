"""A call's units (``domain.metering``) and what units cost (``plans.units_price``)."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

import pytest

from nefos.domain.metering import declared_units, header_units, rules_of
from nefos.domain.plans import call_price, unit_price, units_price

RULES = rules_of(
    [
        {"method": "POST", "path": "/v1/translate", "units": 5},
        {"method": "get", "path": "/v1/*", "units": 2},
        {"method": "*", "path": "/v1/translate", "units": 9},
        {"method": "*", "path": "/*", "units": 3},
    ]
)


@pytest.mark.parametrize(
    ("method", "path", "units"),
    [
        ("POST", "/v1/translate", 5),  # exact, first match
        ("GET", "/v1/translate", 2),  # the prefix comes before the exact * rule
        ("PUT", "/v1/translate", 9),
        ("GET", "/v1/", 2),
        ("GET", "/v1", 3),  # /v1/* is what is under /v1/
        ("DELETE", "/v2/x", 3),
        ("POST", "/v1/translate/more", 3),  # exact means exact
    ],
)
def test_the_first_rule_that_matches_weighs_the_call(method: str, path: str, units: int) -> None:
    assert declared_units(RULES, method, path) == units


def test_a_call_no_rule_matches_is_one_unit() -> None:
    assert declared_units((), "GET", "/") == 1
    assert declared_units(rules_of(None), "GET", "/") == 1
    assert declared_units(rules_of([{"method": "GET", "path": "/a", "units": 4}]), "GET", "/b") == 1


@pytest.mark.parametrize(
    ("value", "units"),
    [
        (b"7", 7),
        (b" 12 ", 12),
        ("0", 0),
        (b"1000", 1000),
        (b"1001", None),
        (b"-1", None),
        (b"1.5", None),
        (b"", None),
        (b"abc", None),
        ("\u0661", None),  # an Arabic-Indic one: a digit to Python, not to HTTP
        (b"00000000000001", None),
        (None, None),
    ],
)
def test_a_header_says_units_only_as_an_integer_to_1000(
    value: bytes | str | None, units: int | None
) -> None:
    assert header_units(value) == units


@dataclass(frozen=True)
class Plan:
    model: str
    included_calls: int | None = None
    price_per_call: Decimal | None = None
    monthly_price: Decimal | None = None
    overage_price: Decimal | None = None


FREEMIUM = Plan("freemium", included_calls=5, price_per_call=Decimal("0.5"))
MONTHLY = Plan("monthly", 10, monthly_price=Decimal(9), overage_price=Decimal("0.1"))


@pytest.mark.parametrize(
    ("plan", "used", "units", "price"),
    [
        (FREEMIUM, 0, 5, Decimal(0)),
        (FREEMIUM, 3, 5, Decimal("1.5")),  # 2 free, 3 priced: straddling the quota
        (FREEMIUM, 9, 5, Decimal("2.5")),
        (FREEMIUM, 3, 0, Decimal(0)),
        (MONTHLY, 8, 4, Decimal("0.2")),
        (Plan("monthly", 10, monthly_price=Decimal(9)), 8, 2, Decimal(0)),
        (Plan("monthly", 10, monthly_price=Decimal(9)), 8, 3, None),
        (Plan("free", 10), 8, 2, Decimal(0)),
        (Plan("free", 10), 8, 3, None),
        (Plan("free"), 10**6, 1000, Decimal(0)),
        (Plan("pay_per_use", 2, price_per_call=Decimal("0.01")), 0, 7, Decimal("0.07")),
        (Plan("unknown"), 0, 1, None),
    ],
)
def test_each_unit_is_counted_against_the_quota_and_priced_beyond_it(
    plan: Plan, used: int, units: int, price: Decimal | None
) -> None:
    assert units_price(plan, used, units) == price


def test_a_call_of_one_unit_costs_what_it_always_did() -> None:
    half = Decimal("0.5")
    assert [call_price(FREEMIUM, used) for used in (4, 5, 6)] == [0, half, half]
    assert [call_price(MONTHLY, used) for used in (9, 10)] == [0, Decimal("0.1")]
    assert [call_price(Plan("free", 3), used) for used in (2, 3)] == [0, None]
    assert call_price(Plan("pay_per_use", 3, price_per_call=Decimal(2)), 0) == 2
    assert unit_price(FREEMIUM) == Decimal("0.5") and unit_price(MONTHLY) == Decimal("0.1")
    assert unit_price(Plan("free", 3)) is None
