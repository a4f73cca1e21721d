"""Billing periods (``billing_invoice_period``): calendar months, ISO weeks or days, UTC."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta


def period_bounds(at: datetime, period: str) -> tuple[datetime, datetime]:
    """The period containing ``at``: [start, end)."""
    at = at.astimezone(UTC)
    day = at.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "day":
        return day, day + timedelta(days=1)
    if period == "week":
        start = day - timedelta(days=day.weekday())
        return start, start + timedelta(days=7)
    if period != "month":
        raise ValueError(f"unknown billing period {period!r}")
    start = day.replace(day=1)
    end = (
        start.replace(year=start.year + 1, month=1)
        if start.month == 12
        else start.replace(month=start.month + 1)
    )
    return start, end
