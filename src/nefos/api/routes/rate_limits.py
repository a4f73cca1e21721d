"""Rate limits: the caller's own (``GET /rate-limits``, not itself limited) and an
organisation's overrides, which only a platform admin sets."""

from __future__ import annotations

import math
from typing import Annotated

from fastapi import APIRouter, Path, Request
from starlette.responses import Response

from nefos.api.deps import Access, ObjectId, Public, SessionDep, authorize
from nefos.domain.access import Permission
from nefos.domain.rate_limits import ALL_GROUPS
from nefos.gateway.client import client_ip
from nefos.gateway.envelope import ok
from nefos.gateway.limiter import RateLimiter
from nefos.schemas.common import Envelope
from nefos.schemas.rate_limits import CallerLimits, LimitState, OrgLimits, OrgLimitsSet
from nefos.services.rate_limits import RateLimitService

router = APIRouter(tags=["rate limits"])
ADMIN = Permission.PLATFORM_ADMIN
Group = Annotated[str, Path(pattern=r"^[a-z]{1,32}$", description=", ".join(ALL_GROUPS))]
CALLER_KIND = {"user": "user", "key": "api_key", "ip": "ip"}


def limiter_of(request: Request) -> RateLimiter:
    limiter: RateLimiter = request.app.state.rate_limiter
    return limiter


@router.get("/rate-limits", response_model=Envelope[CallerLimits], dependencies=[Public])
async def my_rate_limits(request: Request) -> Response:
    """The caller's limits, each group's and the overall one (`user`), with what
    remains now. Anonymous callers see their IP's. This route is not itself limited."""
    limiter = limiter_of(request)
    headers = dict(request.scope["headers"])
    caller = await limiter.caller(
        headers, client_ip(request.scope, limiter.settings.forwarded_allow_ips)
    )
    policies, decision = await limiter.snapshot(caller)
    counted = {s.policy.name: s for s in decision.states} if decision is not None else {}
    states = []
    for policy in policies:
        state = counted.get(policy.name)
        states.append(
            LimitState(
                group=policy.name,
                rate=policy.rate,
                limit=policy.limit,
                window=policy.window,
                remaining=state.remaining if state is not None else None,
                reset=(
                    math.ceil(decision.now + state.reset)
                    if state is not None and decision is not None
                    else None
                ),
            )
        )
    return ok(
        CallerLimits(
            caller=CALLER_KIND[caller.kind],
            backend=limiter.backend,
            enabled=limiter.enabled,
            limits=states,
        )
    )


@router.get(
    "/admin/organisations/{org_id}/rate-limits",
    response_model=Envelope[OrgLimits],
    tags=["admin"],
)
async def get_org_rate_limits(
    org_id: ObjectId, request: Request, session: SessionDep, _: Access = authorize(ADMIN)
) -> Response:
    """The organisation's limits per group: its own (`source: organisation`) or the
    default."""
    service = RateLimitService(session, limiter_of(request).defaults)
    return ok(OrgLimits.model_validate(await service.get(org_id)))


@router.put(
    "/admin/organisations/{org_id}/rate-limits",
    response_model=Envelope[OrgLimits],
    tags=["admin"],
)
async def set_org_rate_limits(
    org_id: ObjectId,
    body: OrgLimitsSet,
    request: Request,
    session: SessionDep,
    access: Access = authorize(ADMIN),
) -> Response:
    """Replace the organisation's own limits. They apply to its members and its API
    keys (a member of several organisations gets the most generous), at once in this
    process and within 30 s in the others."""
    limiter = limiter_of(request)
    service = RateLimitService(session, limiter.defaults)
    view = await service.replace(
        org_id, {str(k): v for k, v in body.limits.items()}, access.principal.user_id
    )
    limiter.invalidate()
    return ok(OrgLimits.model_validate(view))


@router.delete(
    "/admin/organisations/{org_id}/rate-limits/{group}",
    response_model=Envelope[OrgLimits],
    tags=["admin"],
)
async def unset_org_rate_limit(
    org_id: ObjectId,
    group: Group,
    request: Request,
    session: SessionDep,
    _: Access = authorize(ADMIN),
) -> Response:
    """Drop the organisation's own limit of one group: the default applies again."""
    limiter = limiter_of(request)
    view = await RateLimitService(session, limiter.defaults).remove(org_id, group)
    limiter.invalidate()
    return ok(OrgLimits.model_validate(view))
