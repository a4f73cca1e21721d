"""Services (seed 004's service discovery): the wire shapes."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from nefos.domain.health import parse_status_range
from nefos.schemas.common import Pagination, Request

_PATH = re.compile(r"^/(?!/)[A-Za-z0-9._~!$&'()*+,;=:@%/-]*(\?[A-Za-z0-9._~!$&'()*+,;=:@%/?-]*)?$")
_KEY = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")

Tag = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:/-]+$")]


class HealthCheck(Request):
    """How each instance is checked. ``type``: ``http`` (a request to the instance's
    published ``port``), ``tcp`` (a connection to it), ``exec`` (a command inside the
    container) or ``none`` (running is passing). An instance turns passing after
    ``rise`` passing results in a row and critical after ``fall`` failures in a row."""

    type: Literal["http", "tcp", "exec", "none"]
    port: Annotated[int, Field(ge=1, le=65535)] | None = Field(
        None, description="The container port checked (http, tcp); default: its first."
    )
    method: Literal["GET", "HEAD", "OPTIONS"] = "GET"
    path: Annotated[str, Field(max_length=256)] = "/"
    expected_status: Annotated[str, Field(max_length=16)] = Field(
        "200-399", description="A status or a range; 429 is a warning, else critical."
    )
    command: Annotated[list[Annotated[str, Field(max_length=1024)]], Field(max_length=64)] = []
    interval: Annotated[float, Field(ge=1, le=3600)] = 10.0
    timeout: Annotated[float, Field(gt=0, le=60)] = 2.0
    rise: Annotated[int, Field(ge=1, le=10)] = 1
    fall: Annotated[int, Field(ge=1, le=10)] = 2

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        if not _PATH.match(v):
            raise ValueError("a path starting with '/', without spaces, '#' or a host")
        return v

    @field_validator("expected_status")
    @classmethod
    def _status(cls, v: str) -> str:
        low, high = parse_status_range(v)
        return f"{low}-{high}"

    @model_validator(mode="after")
    def _coherent(self) -> HealthCheck:
        if self.type == "exec" and not self.command:
            raise ValueError("an exec check needs its command (argv, e.g. ['cat', '/ready'])")
        if self.type != "exec" and self.command:
            raise ValueError("only an exec check takes a command")
        if self.timeout > self.interval:
            raise ValueError("the timeout must not be longer than the interval")
        return self


class ServiceUpdate(Request):
    """``PUT /services/{id}``: what is given replaces what was; what is left out stays."""

    version: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    tags: Annotated[list[Tag], Field(max_length=32)] | None = None
    metadata: (
        Annotated[dict[str, Annotated[str, Field(max_length=512)]], Field(max_length=64)] | None
    ) = None
    check: HealthCheck | None = None

    @field_validator("metadata")
    @classmethod
    def _keys(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        for key in v or {}:
            if not _KEY.match(key):
                raise ValueError(f"metadata key {key!r}: 1-64 of letters, digits, '_', '.', '-'")
        return v


class Maintenance(Request):
    """Take an instance out of traffic (``enabled``), or put it back."""

    enabled: bool = True
    reason: Annotated[str, Field(max_length=500)] | None = None


class CheckResult(BaseModel):
    at: str
    status: str
    output: str
    latency_ms: float | None = None


class Transition(BaseModel):
    at: str
    from_: str = Field(alias="from")
    to: str
    output: str

    model_config = {"populate_by_name": True}


class InstanceMetrics(BaseModel):
    """Live usage from the engine; and, for an instance the ingress (this process's)
    sent traffic to in the last minute, its requests/s, error rate and p95."""

    cpu_usage: float | None = Field(None, description="Percent of its CPU limit in use.")
    memory_usage: float | None = Field(None, description="Percent of its memory limit in use.")
    requests_per_second: float | None = None
    error_rate: float | None = Field(None, description="Percent answered 5xx or not at all.")
    p95_response_time: float | None = Field(None, description="Milliseconds.")


class InstanceCheck(BaseModel):
    type: str
    status: str
    output: str
    checked_at: datetime | None
    history: list[CheckResult]


class InstancePublic(BaseModel):
    id: str
    slot: int
    endpoint: str | None = Field(description="Where the instance itself answers.")
    host: str | None
    state: str = Field(description="starting, running, stopped, terminating, ...")
    health: str = Field(description="passing, warning, critical or maintenance")
    maintenance_reason: str | None = None
    checks: list[InstanceCheck]
    transitions: list[Transition]
    metrics: InstanceMetrics | None = None


class ServiceSummary(BaseModel):
    id: str = Field(description="The service's id: the id of the container it is.")
    name: str
    kind: str
    project_id: str
    version: str
    endpoint: str | None
    health: str = Field(description="passing, warning, critical or maintenance")
    instances: int
    passing: int
    tags: list[str]
    metadata: dict[str, str]
    check: dict[str, Any]
    created_at: datetime


class ServicePublic(ServiceSummary):
    instances: list[InstancePublic]  # type: ignore[assignment]


class ServiceList(BaseModel):
    items: list[ServiceSummary]
    services: list[ServiceSummary] = Field(description="Seed 004's name for `items`.")
    pagination: Pagination
    index: int = Field(description="Pass it back as `?index=` to wait for a change.")
