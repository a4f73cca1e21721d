"""What a marketplace plan costs (pure): one call, and the fee of a period.

A subscription runs in periods of a calendar month from the instant it started
(``month_after``). A ``monthly`` plan's fee pays for one period, in advance: at
subscribing, at a change to it, and at each renewal. Its statuses, Stripe's:
``active``; ``past_due`` (its renewal's fee could not be paid: calls answer 402
until the wallet pays it at a billing pass, or the period ends unpaid and so does
the subscription); ``cancelled`` (ended at once: a free plan cancelled, a past-due
one cancelled, or its API deleted); ``ended`` (at a period's end: cancelled then,
or never paid).
"""

from __future__ import annotations

import calendar
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Protocol

ZERO = Decimal(0)
#: ``api_calls.status`` of a call recorded before the gateway forwards it (a client's
#: own request id claimed), until its answer is written.
CALL_IN_FLIGHT = 0
#: An in-flight call older than this was forwarded by a process that died before
#: writing its answer: it is charged as it stands.
IN_FLIGHT_CHARGE_AFTER = timedelta(minutes=10)
ACTIVE, PAST_DUE, CANCELLED, ENDED = "active", "past_due", "cancelled", "ended"
#: The statuses of a subscription that has not ended: one per organisation and listing.
LIVE = (ACTIVE, PAST_DUE)
#: Why a subscription ended (``ended_reason``).
REASONS = ("cancelled", "unpaid", "api_deleted")


class PlanTerms(Protocol):
    @property
    def model(self) -> str: ...
    @property
    def monthly_price(self) -> Decimal | None: ...
    @property
    def price_per_call(self) -> Decimal | None: ...
    @property
    def included_calls(self) -> int | None: ...
    @property
    def overage_price(self) -> Decimal | None: ...


def units_price(plan: PlanTerms, used: int, units: int) -> Decimal | None:
    """The price of a call of ``units`` units when ``used`` units were counted this
    period, or None when the plan refuses it. Each unit is counted against the quota
    in turn, so a call that straddles the end of a free quota pays only for its units
    beyond it (3 free units left and a call of 5: 2 priced); a plan with no price
    beyond its quota (``free``, ``monthly`` without an overage price) refuses a call
    with any unit beyond it."""
    included = plan.included_calls
    free = units if included is None else max(0, min(units, included - used))
    beyond = units - free
    if plan.model == "pay_per_use":
        return Decimal(plan.price_per_call or ZERO) * units
    if beyond == 0:
        return ZERO if plan.model in ("free", "freemium", "monthly") else None
    price = unit_price(plan)
    return None if price is None else price * beyond


def unit_price(plan: PlanTerms) -> Decimal | None:
    """What one unit costs beyond any free quota (None: the plan sells none)."""
    if plan.model in ("pay_per_use", "freemium"):
        return Decimal(plan.price_per_call or ZERO)
    if plan.model == "monthly" and plan.overage_price is not None:
        return Decimal(plan.overage_price)
    return None


def call_price(plan: PlanTerms, used: int) -> Decimal | None:
    """The price of the next call of one unit when ``used`` units were counted this
    period, or None when the plan refuses it: ``free`` costs nothing up to its
    quota; ``pay_per_use`` costs its price; ``freemium`` nothing up to its quota,
    then its price; ``monthly`` nothing more up to its quota (the month is paid for),
    then its overage price."""
    return units_price(plan, used, 1)


class Dated(Protocol):
    status: str
    cancel_at_period_end: bool
    period_end: datetime


def effective_status(sub: Dated, now: datetime) -> str:
    """A subscription's status as of ``now``: an active one cancelled at its period's
    end counts as ended once that end has passed (whether or not the row has been
    settled yet)."""
    if sub.status == ACTIVE and sub.cancel_at_period_end and now >= sub.period_end:
        return ENDED
    return sub.status


def has_fee(plan: PlanTerms) -> bool:
    """Whether the plan charges a fee each period (``monthly``)."""
    return plan.model == "monthly" and bool(plan.monthly_price)


def month_after(when: datetime) -> datetime:
    """The same instant a calendar month later (the 31st of January: the last of
    February)."""
    year, month = (when.year + 1, 1) if when.month == 12 else (when.year, when.month + 1)
    day = min(when.day, calendar.monthrange(year, month)[1])
    return when.replace(year=year, month=month, day=day)


def unused_fraction(start: datetime, end: datetime, at: datetime) -> tuple[int, int]:
    """The part of the period [start, end) left at ``at``, as (seconds left, seconds
    in the period), in whole seconds (microseconds dropped): 0 before it ends."""
    total = int((end - start).total_seconds())
    left = int((end - max(at, start)).total_seconds())
    return max(0, min(left, total)), max(total, 1)
