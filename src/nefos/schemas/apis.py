"""Wire shapes of APIs and their deployments (seed 002's API management)."""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, Field, field_validator

from nefos.domain.metering import HEADER_NAME, MAX_RULES, MAX_UNITS, RESERVED_HEADERS
from nefos.schemas.common import Id, Pagination, Request
from nefos.schemas.compute import ContainerResources, OperationPublic, _image, _name

#: Largest OpenAPI document kept with an API (serialised JSON).
MAX_OPENAPI_BYTES = 256 * 1024
_PATH = re.compile(r"^/[A-Za-z0-9._~!$&'()*+,;=:@%/-]*$")
_SLUG = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,254}$")

Environment = Annotated[dict[str, Annotated[str, Field(max_length=32_768)]], Field(max_length=256)]


def _path(value: str) -> str:
    if not _PATH.match(value) or "//" in value:
        raise ValueError("a path starting with '/', without spaces, '?', '#' or a host")
    return value


def _slug(value: str) -> str:
    if not _SLUG.match(value):
        raise ValueError("1-63 lowercase letters, digits and '-', not at either end")
    if _SERVICE_FORM.search(value):
        # Services' host names ({name}-{8 hex of the id}) are Nefos's to give: a
        # chosen slug of that form could shadow another tenant's endpoint.
        raise ValueError("a chosen slug may not end in '-' and 8 hex digits")
    return value


_SERVICE_FORM = re.compile(r"-[0-9a-f]{8}$")


def _env(value: dict[str, str]) -> dict[str, str]:
    for key in value:
        if not _ENV_KEY.match(key):
            raise ValueError(f"invalid variable name {key[:40]!r}")
    return value


def _openapi(value: dict[str, Any] | None) -> dict[str, Any] | None:
    if value is None:
        return None
    if len(json.dumps(value)) > MAX_OPENAPI_BYTES:
        raise ValueError(f"at most {MAX_OPENAPI_BYTES // 1024} KiB of JSON")
    if not isinstance(value.get("openapi") or value.get("swagger"), str):
        raise ValueError("an OpenAPI document: an object with an 'openapi' version string")
    return value


Path = Annotated[str, Field(max_length=256), AfterValidator(_path)]

UnitMethod = Literal["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "*"]


def _rule_path(value: str) -> str:
    _path(value)
    if "*" in value.removesuffix("/*"):
        raise ValueError("'*' only as the last segment of a prefix: /v1/*")
    return value


class UnitRulePublic(Request):
    """What a call to matching endpoints weighs: the first rule that matches wins."""

    method: UnitMethod = Field(description="An HTTP method, or * for any.")
    path: Annotated[str, Field(max_length=256), AfterValidator(_rule_path)] = Field(
        description="A path within the API: exact (/v1/translate) or a prefix (/v1/*)."
    )
    units: Annotated[int, Field(ge=1, le=MAX_UNITS)] = Field(
        description="The units one call weighs (quota places and unit prices)."
    )


UnitRules = Annotated[list[UnitRulePublic], Field(max_length=MAX_RULES)]


def _rules(value: list[UnitRulePublic] | None) -> list[UnitRulePublic] | None:
    if value is None:
        return None
    seen: set[tuple[str, str]] = set()
    for rule in value:
        if (rule.method, rule.path) in seen:
            raise ValueError(f"{rule.method} {rule.path} is declared twice")
        seen.add((rule.method, rule.path))
    return value


def _units_header(value: str | None) -> str | None:
    if value is None:
        return None
    if not HEADER_NAME.match(value):
        raise ValueError("a header name: 1-64 letters, digits and -, e.g. X-Units")
    if value.lower() in RESERVED_HEADERS:
        raise ValueError(f"{value} is the answer's own or the gateway's: name another")
    return value


UNITS_HELP = (
    "Per-endpoint units (at most 100 rules, first match wins; a call no rule "
    "matches is 1 unit): the quota and the prices count units."
)
UNITS_HEADER_HELP = (
    "A header of the API's answer whose integer value (0-1000) is the call's units "
    "instead of the declared ones (any other value is ignored); the gateway strips it."
)


class ApiCreate(Request):
    """Seed 002's ``POST /apis``: deploy an API from a container image."""

    name: Annotated[str, AfterValidator(_name)]
    image: Annotated[str, AfterValidator(_image)]
    port: Annotated[int, Field(ge=1, le=65535, description="The port the API serves on.")]
    health_check_path: Path = Field(
        "/health", description="Checked on every replica: a replica takes calls once it passes."
    )
    replicas: Annotated[int, Field(ge=1, le=64)] = 1
    environment: Annotated[Environment, AfterValidator(_env)] = {}
    resources: ContainerResources = ContainerResources()
    base_path: Path = Field("/", description="Where the API's routes start inside the service.")
    description: Annotated[str, Field(max_length=2000)] = ""
    slug: Annotated[str, AfterValidator(_slug)] | None = Field(
        None, description="Its name on the gateway (`/gw/{slug}/`); default: name-id."
    )
    openapi: Annotated[dict[str, Any] | None, AfterValidator(_openapi)] = Field(
        None, description="The API's OpenAPI document."
    )
    openapi_path: Path | None = Field(
        None, description="Or: the path inside the service that serves its OpenAPI document."
    )
    units: Annotated[UnitRules | None, AfterValidator(_rules)] = Field(None, description=UNITS_HELP)
    units_header: Annotated[str | None, AfterValidator(_units_header)] = Field(
        None, description=UNITS_HEADER_HELP
    )
    project_id: Id | None = None


class ApiUpdate(Request):
    """``PUT /apis/{id}``: a new image, environment or resources is a new deployment
    (rolled out replica by replica, rolled back if a new replica never passes its
    health check), as is a new replica count (not both in one request); the rest
    changes at once. Omitted fields stay."""

    image: Annotated[str, AfterValidator(_image)] | None = None
    environment: Annotated[Environment, AfterValidator(_env)] | None = None
    resources: ContainerResources | None = None
    replicas: Annotated[int, Field(ge=1, le=64)] | None = None
    health_check_path: Path | None = None
    base_path: Path | None = None
    description: Annotated[str, Field(max_length=2000)] | None = None
    openapi: Annotated[dict[str, Any] | None, AfterValidator(_openapi)] = None
    openapi_path: Path | None = None
    units: Annotated[UnitRules | None, AfterValidator(_rules)] = Field(
        None, description=UNITS_HELP + " The whole new list; null or [] for none."
    )
    units_header: Annotated[str | None, AfterValidator(_units_header)] = Field(
        None, description=UNITS_HEADER_HELP + " null for none."
    )

    @field_validator("environment")
    @classmethod
    def _keys(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        return _env(v) if v is not None else None


class DeploymentPublic(BaseModel):
    id: str
    api_id: str
    number: int
    image: str
    environment_keys: list[str] = Field(
        description="The variables it sets (their values are never shown again)."
    )
    resources: dict[str, str]
    replicas: int
    status: str = Field(
        description="in_progress, active (serving now), succeeded (superseded), failed, rolled_back"
    )
    rollback_of: str | None
    operation_id: str | None
    error: dict[str, Any] | None = None
    created_at: datetime
    finished_at: datetime | None = None


class ApiPublic(BaseModel):
    id: str
    name: str
    slug: str
    project_id: str
    description: str
    status: str = Field(description="The container's: creating, running, scaling, ..., error")
    health: str | None = Field(None, description="passing, warning, critical, maintenance")
    image: str | None
    port: int
    replicas: int | None
    health_check_path: str
    base_path: str
    endpoint: str | None = Field(None, description="The service's endpoint on the ingress.")
    container_id: str | None
    deployment: DeploymentPublic | None = Field(None, description="The latest deployment.")
    has_openapi: bool
    openapi_path: str | None
    units: list[UnitRulePublic] = Field(
        default_factory=list, description="Per-endpoint units, first match wins (else 1)."
    )
    units_header: str | None = Field(None, description="The answer's header of units.")
    created_at: datetime
    updated_at: datetime


class ApiAccepted(BaseModel):
    message: str
    api_id: str
    api: ApiPublic
    deployment: DeploymentPublic | None = None
    operation: OperationPublic | None = None


LogSource = Literal["container", "gateway", "all"]
LogLevel = Literal["debug", "info", "warning", "error"]


class ApiCallLog(BaseModel):
    """One call through the gateway, as the API's creator sees it."""

    id: str
    request_id: str = Field(description="The call's X-Request-ID, as the API received it.")
    method: str
    path: str = Field(description="The path within the API (after /gw/{slug}), no query.")
    status: int
    latency_ms: float = Field(description="From forwarding to the answer's last byte.")
    bytes_in: int
    bytes_out: int
    consumer: str = Field(description="The consumer's organisation.")
    subscription_id: str | None
    plan_id: str | None
    units: int = Field(1, description="What the call weighed (declared, or the answer's header).")
    price: str = Field(description="What the call costs the consumer (0: free or 5xx).")
    created_at: datetime


class ApiOutputLine(BaseModel):
    """One line of a replica's output, as ``follow=true&source=container`` streams it."""

    replica: int = Field(description="The replica's slot.")
    time: str = Field(description="When the replica wrote it (RFC 3339, as the engine says).")
    line: str


class ApiLogs(BaseModel):
    """The API's logs: its replicas' output (``logs``, ``replicas``) and a page of its
    gateway call log (``items``/``calls``, newest first), as ``source`` asks."""

    api_id: str
    source: LogSource = "all"
    logs: str = ""
    replicas: list[dict[str, Any]] = Field(default_factory=list)
    items: list[ApiCallLog] = Field(default_factory=list)
    calls: list[ApiCallLog] = Field(default_factory=list)
    pagination: Pagination | None = None
