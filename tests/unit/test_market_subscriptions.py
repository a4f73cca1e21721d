"""The pure parts of marketplace subscriptions: when one has ended, a month on, what
part of a period is left, and which plans charge a fee."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from nefos.billing.planfees import _period_holding
from nefos.domain.plans import has_fee, unused_fraction
from nefos.services.market_subscriptions import effective_status, month_after

T0 = datetime(2026, 1, 31, 12, 0, tzinfo=UTC)


@dataclass
class Sub:
    status: str
    cancel_at_period_end: bool
    period_end: datetime


@pytest.mark.parametrize(
    ("status", "cancel", "now", "expected"),
    [
        ("active", False, T0 - timedelta(days=1), "active"),
        # Not cancelled: past its period's end it renews (it is still active).
        ("active", False, T0 + timedelta(days=1), "active"),
        ("active", True, T0 - timedelta(seconds=1), "active"),
        ("active", True, T0, "ended"),
        ("active", True, T0 + timedelta(days=3), "ended"),
        # Past due is not ended by the clock: the billing pass ends it, unpaid.
        ("past_due", False, T0 + timedelta(days=3), "past_due"),
        ("cancelled", False, T0 - timedelta(days=1), "cancelled"),
        ("ended", True, T0 - timedelta(days=1), "ended"),
    ],
)
def test_effective_status(status: str, cancel: bool, now: datetime, expected: str) -> None:
    assert effective_status(Sub(status, cancel, T0), now) == expected


def test_a_period_is_a_calendar_month() -> None:
    assert month_after(T0) == datetime(2026, 2, 28, 12, 0, tzinfo=UTC)
    assert month_after(datetime(2024, 1, 31, tzinfo=UTC)) == datetime(2024, 2, 29, tzinfo=UTC)
    assert month_after(datetime(2026, 12, 15, 8, tzinfo=UTC)) == datetime(
        2027, 1, 15, 8, tzinfo=UTC
    )
    assert month_after(datetime(2026, 3, 10, tzinfo=UTC)) == datetime(2026, 4, 10, tzinfo=UTC)


def test_the_unused_part_of_a_period_in_whole_seconds() -> None:
    end = month_after(T0)
    total = int((end - T0).total_seconds())
    assert unused_fraction(T0, end, T0 - timedelta(days=1)) == (total, total)
    assert unused_fraction(T0, end, T0 + timedelta(seconds=10, microseconds=900)) == (
        total - 11,
        total,
    )
    assert unused_fraction(T0, end, end) == (0, total)
    assert unused_fraction(T0, end, end + timedelta(days=1)) == (0, total)


def test_a_renewal_rolls_to_the_period_holding_now() -> None:
    end = T0
    # Just past the end: the next period, from the old end.
    assert _period_holding(end, end + timedelta(seconds=1)) == (end, month_after(end))
    # Three periods missed: the one holding now, not the ones that passed whole.
    third = month_after(month_after(month_after(end)))
    assert _period_holding(end, third + timedelta(days=1)) == (third, month_after(third))


@dataclass
class Plan:
    model: str
    monthly_price: Decimal | None = None
    price_per_call: Decimal | None = None
    included_calls: int | None = None
    overage_price: Decimal | None = None


def test_only_a_monthly_plan_with_a_price_has_a_fee() -> None:
    assert has_fee(Plan("monthly", Decimal("4")))
    assert not has_fee(Plan("monthly", Decimal(0)))
    assert not has_fee(Plan("freemium", price_per_call=Decimal("1")))
    assert not has_fee(Plan("free"))
