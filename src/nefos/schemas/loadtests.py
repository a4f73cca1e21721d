"""Wire schemas of load tests (seed 004's ``/testing/load``, ``/testing/results``)
and their stored scenarios (``/testing/scenarios``)."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, field_validator

from nefos.schemas.common import Id, Request, ShortName

LoadTestStatus = Literal["running", "completed", "failed", "cancelled"]
Method = Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
#: The built-in scenarios: a name no stored scenario may take.
BUILTIN_SCENARIOS = ("web_app",)

MAX_REQUESTS = 20
MAX_HEADERS = 20
MAX_BODY = 64 * 1024
_PATH = re.compile(r"^/[A-Za-z0-9\-._~!$&'()*+,;=:@%/?]{0,2047}$")
_HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}$")
#: Headers the generator writes itself: a scenario may not set them.
RESERVED_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection"})


class ScenarioRequest(Request):
    """One request of a scenario: sent to the target's URLs, ``weight`` times as
    often as a request of weight 1."""

    method: Method = "GET"
    path: Annotated[str, Field(max_length=2048, description="From `/`, with its query.")] = "/"
    headers: dict[str, str] = Field(default_factory=dict)
    body: Annotated[str | None, Field(max_length=MAX_BODY)] = None
    weight: Annotated[int, Field(ge=1, le=100)] = 1

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        if not _PATH.match(v):
            raise ValueError("a path starting with '/', of URL characters only")
        return v

    @field_validator("headers")
    @classmethod
    def _headers(cls, v: dict[str, str]) -> dict[str, str]:
        if len(v) > MAX_HEADERS:
            raise ValueError(f"at most {MAX_HEADERS} headers")
        for name, value in v.items():
            if not _HEADER_NAME.match(name):
                raise ValueError(f"invalid header name {name[:64]!r}")
            if name.lower() in RESERVED_HEADERS:
                raise ValueError(f"{name} is set by the generator")
            # Printable ASCII (and tabs) only: sent as is on the wire.
            printable = all(c == "\t" or 32 <= ord(c) < 127 for c in value)
            if len(value) > 1000 or not printable:
                raise ValueError(f"invalid value of header {name}")
        return v


Requests = Annotated[list[ScenarioRequest], Field(min_length=1, max_length=MAX_REQUESTS)]
Description = Annotated[str, Field(max_length=2000)]


class ScenarioCreate(Request):
    name: ShortName
    description: Description = ""
    requests: Requests
    project_id: Id | None = None

    @field_validator("name")
    @classmethod
    def _not_builtin(cls, v: str) -> str:
        if v in BUILTIN_SCENARIOS:
            raise ValueError(f"{v} is a built-in scenario")
        return v


class ScenarioUpdate(Request):
    """Fields to change; those left out keep their value."""

    name: ShortName | None = None
    description: Description | None = None
    requests: Requests | None = None

    @field_validator("name")
    @classmethod
    def _not_builtin(cls, v: str | None) -> str | None:
        if v in BUILTIN_SCENARIOS:
            raise ValueError(f"{v} is a built-in scenario")
        return v


class ScenarioPublic(BaseModel):
    id: str
    project_id: str
    name: str
    description: str
    requests: list[dict[str, Any]]
    created_at: datetime
    updated_at: datetime


class LoadTestCreate(Request):
    """Seed 004's body, plus the ``target`` (the id of one of your services: for now a
    container's id), the open model's ``rate`` and pass/fail ``thresholds``."""

    scenario: Annotated[
        str,
        Field(
            min_length=1,
            max_length=100,
            description="`web_app` (GET /) or a stored scenario's id or name.",
        ),
    ] = "web_app"
    duration: Annotated[int, Field(ge=1, description="Seconds the test sends for.")]
    users: Annotated[
        int,
        Field(
            ge=1,
            description="Virtual users (closed model), or the most requests in "
            "flight at once (open model).",
        ),
    ]
    ramp_up_time: Annotated[
        int, Field(ge=0, description="Seconds over which users (or the rate) ramp up.")
    ] = 0
    target: Annotated[str, Field(min_length=1, max_length=36, pattern=r"^[A-Za-z0-9_-]+$")]
    rate: Annotated[
        float | None,
        Field(gt=0, allow_inf_nan=False, description="Requests per second: the open model."),
    ] = None
    thresholds: Annotated[list[Annotated[str, Field(max_length=64)]], Field(max_length=20)] = Field(
        default_factory=list
    )


class OperationRef(BaseModel):
    id: str
    status: str
    url: str


class LoadTestAccepted(BaseModel):
    """Seed 004's answer to ``POST /testing/load``."""

    test_id: str
    status: str
    scenario: str
    started_at: datetime
    target: str
    operation: OperationRef | None = None


class LoadTestPublic(BaseModel):
    """Seed 004's ``GET /testing/results/{id}``, and more: ``results`` holds the seed's
    totals plus percentiles, errors and saturation; ``timeline`` one entry a second;
    ``verdict`` the thresholds; ``histogram`` the encoded HDR histogram (base64)."""

    test_id: str
    id: str
    status: str
    scenario: str
    target: str
    target_type: str
    project_id: str
    params: dict[str, Any]
    results: dict[str, Any] | None
    timeline: list[dict[str, Any]] | None = None
    verdict: dict[str, Any] | None
    passed: bool | None
    histogram: str | None = None
    error: str | None
    started_at: datetime
    completed_at: datetime | None
