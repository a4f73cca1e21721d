"""Wire types of the rate limits (``/rate-limits`` and the admin's overrides)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

GroupName = Literal["auth", "containers", "monitoring", "billing", "user"]


class LimitState(BaseModel):
    group: str = Field(description="auth, containers, monitoring, billing or user (overall).")
    rate: str = Field(examples=["100/minute"], description="`N/unit`, or `none`.")
    limit: int = Field(description="Requests per window (0: no limit).")
    window: int = Field(description="Seconds.")
    remaining: int | None = Field(description="Requests the caller may send now.")
    reset: int | None = Field(description="Epoch seconds when the whole limit is available again.")


class CallerLimits(BaseModel):
    caller: Literal["user", "api_key", "ip"]
    backend: Literal["memory", "redis"]
    enabled: bool
    limits: list[LimitState]


class LimitSetting(BaseModel):
    rate: str = Field(examples=["100/minute"])
    limit: int
    window: int
    source: Literal["organisation", "default"]


class OrgLimits(BaseModel):
    organisation_id: str
    limits: dict[str, LimitSetting]
    updated_at: datetime | None = None


class OrgLimitsSet(BaseModel):
    model_config = ConfigDict(extra="forbid")

    limits: dict[GroupName, str] = Field(
        description="Group → rate (`N/second|minute|hour|day`, or `none` for no limit). "
        "Replaces the organisation's overrides: a group left out takes the default.",
        examples=[{"containers": "500/minute", "user": "10000/hour"}],
    )
