from __future__ import annotations

import time

from fastapi import APIRouter
from pydantic import BaseModel
from starlette.responses import Response

from nefos import __version__
from nefos.api.deps import CoreDep, Public
from nefos.api.envelope import ok
from nefos.schemas.common import Envelope

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: str
    version: str
    services: dict[str, str]
    timestamp: str


@router.get("/health", response_model=Envelope[Health], dependencies=[Public])
async def health(core: CoreDep) -> Response:
    """Liveness of Nefos and each dependency (seed 004 shape). 503 when one is down."""
    services: dict[str, str] = {}
    try:
        await core.db.ping()
        services["database"] = "healthy"
    except Exception:  # any failure to reach the database means unhealthy
        services["database"] = "unhealthy"
    healthy = all(v == "healthy" for v in services.values())
    body = Health(
        status="healthy" if healthy else "unhealthy",
        version=__version__,
        services=services,
        timestamp=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )
    return ok(body, 200 if healthy else 503)
