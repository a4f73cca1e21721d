"""The pure parts of marketplace subscriptions: when one has ended, a month on."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

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
