"""`client.rate_limits` against a live server: the caller's limits, an organisation's
own set by the platform admin, and a 429 surfaced as RateLimitedError."""

from __future__ import annotations

from typing import Any

import pytest

from nefos.sdk import Client, PermissionDeniedError, RateLimitedError, ValidationError


def test_rate_limits_through_the_sdk(new_user: Any, admin_client: Client) -> None:
    user: Client = new_user()
    mine = user.rate_limits.status()
    assert mine.caller == "user" and mine.enabled
    assert {x.group for x in mine.limits} == {"auth", "containers", "monitoring", "billing", "user"}

    org = user.organisations.list().items[0].id
    with pytest.raises(PermissionDeniedError):
        user.rate_limits.set(org, {"containers": "2/minute"})
    with pytest.raises(ValidationError):
        admin_client.rate_limits.set(org, {"containers": "2/fortnight"})

    limits = admin_client.rate_limits.set(org, {"containers": "2/minute", "user": "none"})
    assert limits.limits["containers"].rate == "2/minute"
    assert limits.limits["containers"].source == "organisation"
    assert admin_client.rate_limits.get(org).limits["user"].rate == "none"

    user.containers.list()
    user.containers.list()
    with pytest.raises(RateLimitedError) as refused:
        user.containers.list()
    assert refused.value.status_code == 429 and refused.value.code == "RATE_LIMITED"
    assert refused.value.retry_after is not None and 1 <= refused.value.retry_after <= 30
    assert refused.value.details["group"] == "containers"
    state = {x.group: x for x in user.rate_limits.status().limits}
    assert state["containers"].remaining == 0 and state["containers"].limit == 2

    back = admin_client.rate_limits.unset(org, "containers")
    assert back.limits["containers"].source == "default"
