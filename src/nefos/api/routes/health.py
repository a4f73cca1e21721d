from __future__ import annotations

import time
from datetime import UTC, datetime

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field
from starlette.responses import Response

from nefos import __version__
from nefos.api.deps import CoreDep, Public
from nefos.gateway.envelope import ok
from nefos.schemas.common import Envelope
from nefos.services.health import HealthChecker

router = APIRouter(tags=["health"])


def _iso(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class LeaseHeld(BaseModel):
    name: str
    holder: str | None = Field(description="`host:pid:random` of the holder; null: free.")
    token: int = Field(description="The fencing token: one more on every takeover.")
    expires_at: str
    renewed_at: str
    here: bool = Field(description="This process (the one answering) holds it.")


class Health(BaseModel):
    status: str = Field(
        description="`healthy`, `degraded` (an optional part is down) or `unhealthy`."
    )
    version: str
    services: dict[str, str] = Field(
        description="database, event_bus, redis (`disabled` without NEFOS_REDIS_URL), "
        "hosts (`none`, `healthy` or `degraded`), orchestrator, billing, rate_limiter "
        "(`degraded`: its Redis is down and each process counts alone)."
    )
    leases: list[LeaseHeld] = Field(
        default_factory=list,
        description="Who runs each singleton loop (collector, billing, reconciler, "
        "host-checks, webhooks, retention; `process` on SQLite) and until when.",
    )
    timestamp: str


def _checker(request: Request, core: CoreDep) -> HealthChecker:
    checker: HealthChecker | None = getattr(request.app.state, "health", None)
    if checker is None:
        limiter = getattr(request.app.state, "rate_limiter", None)
        process = getattr(request.app.state, "process", None)
        singletons = process.singletons if process is not None else ()
        checker = request.app.state.health = HealthChecker(core, limiter, singletons)
    return checker


@router.get("/health", response_model=Envelope[Health], dependencies=[Public])
async def health(request: Request, core: CoreDep) -> Response:
    """Liveness of Nefos and each dependency (seed 004 shape), each checked for real.

    503 when a required one (database, event bus) is down; `degraded` (still 200)
    when Redis or some host does not answer.
    """
    report = await _checker(request, core).report()
    body = Health(
        status=report.status,
        version=__version__,
        services=report.services,
        leases=[
            LeaseHeld(
                name=v.name,
                holder=v.holder if v.live() else None,
                token=v.token,
                expires_at=_iso(v.expires_at),
                renewed_at=_iso(v.renewed_at),
                here=v.name in report.held_here,
            )
            for v in report.leases
        ],
        timestamp=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )
    return ok(body, report.http_status)
