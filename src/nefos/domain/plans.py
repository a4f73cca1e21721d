"""What one call costs on a marketplace plan (pure)."""

from __future__ import annotations

from decimal import Decimal
from typing import Protocol

ZERO = Decimal(0)


class PlanTerms(Protocol):
    @property
    def model(self) -> str: ...
    @property
    def price_per_call(self) -> Decimal | None: ...
    @property
    def included_calls(self) -> int | None: ...
    @property
    def overage_price(self) -> Decimal | None: ...


def call_price(plan: PlanTerms, used: int) -> Decimal | None:
    """The price of the next call when ``used`` calls were counted this period, or
    None when the plan refuses it (its quota is used up and it has no price
    beyond): ``free`` costs nothing up to its quota; ``pay_per_use`` costs its price;
    ``freemium`` nothing up to its quota, then its price; ``monthly`` nothing more up
    to its quota (the month is paid for), then its overage price."""
    included = plan.included_calls
    within = included is None or used < included
    if plan.model == "free":
        return ZERO if within else None
    if plan.model == "pay_per_use":
        return Decimal(plan.price_per_call or ZERO)
    if plan.model == "freemium":
        return ZERO if within else Decimal(plan.price_per_call or ZERO)
    if plan.model == "monthly":
        if within:
            return ZERO
        return None if plan.overage_price is None else Decimal(plan.overage_price)
    return None
