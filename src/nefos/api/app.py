"""The FastAPI application factory."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.routing import APIRoute
from starlette.responses import JSONResponse

from nefos import __version__
from nefos.api import docs, errors, routing
from nefos.api.console import BUILD_DIR as CONSOLE_BUILD
from nefos.api.console import ConsoleMiddleware, first_segment
from nefos.api.deps import SECURITY_SCHEMES, SessionMiddleware, needs_credentials
from nefos.api.routes import (
    admin,
    alerts,
    analytics,
    api_keys,
    apis,
    auth,
    billing,
    containers,
    events,
    health,
    images,
    invoices,
    marketplace,
    monitoring,
    operations,
    organisations,
    payments,
    payouts,
    products,
    projects,
    quotes,
    rate_limits,
    resources,
    services,
    storage,
    testing,
    users,
    vms,
)
from nefos.billing.payments import payment_methods
from nefos.bootstrap import Process
from nefos.config import Settings
from nefos.gateway.apigw import PATH_PREFIX as GATEWAY_PREFIX
from nefos.gateway.apigw import ApiGateway
from nefos.gateway.bodylimit import BodyLimitMiddleware
from nefos.gateway.context import RequestContextMiddleware
from nefos.gateway.counters import RequestCounters
from nefos.gateway.envelope import error_body
from nefos.gateway.idempotency import IdempotencyMiddleware
from nefos.gateway.ingress import Ingress, IngressMiddleware
from nefos.gateway.limiter import RateLimiter, RateLimitMiddleware
from nefos.gateway.paths import PathMiddleware
from nefos.gateway.requestlog import RequestLog, RequestLogMiddleware
from nefos.schemas.common import ErrorEnvelope
from nefos.services.authn import Authenticator
from nefos.services.core import Core

log = logging.getLogger("nefos")

API_PREFIX = "/api/v1"
ALIAS_PREFIX = "/api"
#: Root paths served as ``API_PREFIX`` + path: ``/health`` for load balancers, and
#: seed 004's ``ws://host/ws``.
ROOTS = ("/health", "/ws")

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorEnvelope, "description": text}
    for code, text in {
        400: "Malformed request",
        401: "Missing, invalid, expired or revoked credentials",
        402: "The organisation's wallet is empty (RESOURCE_EXHAUSTED)",
        403: "The role or the API key's scope does not allow this",
        404: "Not found (also: another tenant's object)",
        406: "Unsupported API version in Accept",
        409: "Conflict with the current state",
        413: "The request body is larger than allowed (PAYLOAD_TOO_LARGE)",
        422: "Invalid input parameters",
        429: "Too many requests (see Retry-After)",
        500: "Internal error (the body names the request id)",
        503: "A dependency is unavailable",
    }.items()
}


def api_routers() -> list[APIRouter]:
    """The API's routers, in the order their routes are tried."""
    return [
        auth.router,
        users.router,
        admin.router,
        organisations.router,
        projects.router,
        api_keys.router,
        resources.router,
        containers.router,
        services.router,
        apis.router,
        marketplace.router,
        vms.router,
        images.router,
        operations.router,
        vms.compute,
        resources.hosts,
        *storage.routers,
        organisations.invitations,
        projects.legacy,
        health.router,
        alerts.router,
        billing.wallet,
        billing.router,
        invoices.router,
        products.router,
        products.accounts,
        quotes.router,
        payouts.router,
        payments.router,
        monitoring.router,
        events.router,
        analytics.router,
        rate_limits.router,
        testing.router,
    ]


def _unique_ids(route: APIRoute) -> str:
    return f"{route.name}"


AfterStart = Callable[[Core, tuple[Any, str | None] | None], None]


def create_app(
    settings: Settings | None = None, *, on_started: AfterStart | None = None
) -> FastAPI:
    """Build the app. The engine is made in the lifespan, on the serving loop."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # The composition root builds this process's parts for its role (see
        # nefos.bootstrap); the app only hands them to the routes.
        process = Process.build(settings, request_log=request_log, limiter=limiter, ingress=ingress)
        app.state.process = process
        app.state.core = process.core
        app.state.authenticator = Authenticator(process.core)
        app.state.webhooks = process.webhooks
        app.state.alert_engine = process.alerts
        app.state.reconciler = process.reconciler
        app.state.collector = process.collector
        app.state.billing = process.billing
        app.state.mesh = process.mesh
        if ingress is not None:
            app.state.api_gateway.calls = process.core.calls
        try:
            await process.start()
            if on_started is not None:
                on_started(process.core, process.created)
            yield
        finally:
            await process.stop()

    app = FastAPI(
        title="Nefos API",
        version=__version__,
        description=(
            "Multi-tenant cloud control plane. Every route is served under `/api/v1` and, "
            "as an alias for the newest version, `/api`. Responses use the envelope "
            "`{success, data, error, timestamp}`."
        ),
        lifespan=lifespan,
        generate_unique_id_function=_unique_ids,
        docs_url=None,  # served from the installation's files, not a CDN: api.docs
        redoc_url=None,
        openapi_url="/openapi.json",
        # Paths lose their trailing slash before routing (gateway.paths): no redirects.
        redirect_slashes=False,
    )
    docs.install(app, "/openapi.json", "Nefos API")
    # Every route once, under /api/v1; `/api/...`, the root `/health` (load balancers)
    # and seed 004's `ws://host/ws` reach them by a path rewrite (gateway.paths).
    routing.install(
        app,
        routing.flat_routes(api_routers(), API_PREFIX, ERROR_RESPONSES),
        API_PREFIX,
        schemes=SECURITY_SCHEMES,
        secured=needs_credentials,
    )
    errors.install(app)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["*"],
            allow_headers=["*"],
            expose_headers=[
                "X-Request-ID",
                "Retry-After",
                "X-RateLimit-Limit",
                "X-RateLimit-Remaining",
                "X-RateLimit-Reset",
                "RateLimit-Policy",
                "RateLimit",
            ],
        )
    # Innermost: the request's database session is closed once the app is done with it.
    app.add_middleware(SessionMiddleware)
    app.add_middleware(IdempotencyMiddleware)
    # Rate limits: before idempotency and the app, after the request id is set.
    app.state.rate_limiter = limiter = RateLimiter(settings)
    app.add_middleware(RateLimitMiddleware, limiter=limiter)
    # Bodies: refused above their limit before a byte is read, and before the rate
    # limiter and idempotency (which reads the body) run; inside the request log and
    # the request id, so a 413 is logged and counted like any answer.
    upload_limit = 2 * settings.image_upload_max_bytes + settings.max_body_bytes
    app.add_middleware(
        BodyLimitMiddleware,
        limit=settings.max_body_bytes,
        larger={f"{API_PREFIX}/images/upload": upload_limit},
    )
    # Counted by the middleware, read by GET /metrics and /prometheus.
    app.state.request_counters = counters = RequestCounters()
    app.add_middleware(RequestContextMiddleware, counters=counters)
    # Outermost: every request, as the client saw it (status, duration, bytes).
    app.state.request_log = request_log = RequestLog(settings)
    app.add_middleware(RequestLogMiddleware, request_log=request_log)
    # Before anything reads the path: `/auth/login/` is `/auth/login`, and
    # `/api/auth/login` is `/api/v1/auth/login`.
    app.add_middleware(PathMiddleware, prefix=API_PREFIX, alias=ALIAS_PREFIX, roots=ROOTS)
    # The web console: GET/HEAD of a path the API does not own (any route's or mount's
    # first segment, the rewritten roots, the gateway's and the ingress's prefixes).
    # Outside the API's middleware: its files are neither rate-limited nor logged as
    # API requests; inside the ingress, which takes tenants' hosts first.
    owned = {first_segment(getattr(r, "path", "")) for r in app.routes}
    owned |= {first_segment(p) for p in (ALIAS_PREFIX, GATEWAY_PREFIX, *ROOTS)}
    card = payment_methods(settings, admin=False)["card"]  # Stripe.js, where cards are on
    app.add_middleware(
        ConsoleMiddleware,
        directory=settings.console_dir or CONSOLE_BUILD,
        reserved=owned,
        card_js_url=card["js_url"] if card else None,
    )
    # Outside everything: services' endpoints (Host `*.{apps_domain}`, `/svc/{id}/...`)
    # are tenants' apps, not the API: no path rewrite, API limits or request log.
    app.state.ingress = ingress = Ingress(settings) if settings.ingress_enabled else None
    if ingress is not None:
        app.state.api_gateway = gateway = ApiGateway(ingress)
        if limiter.redis is not None:
            # Plans' windows and quotas counted with every other API process.
            gateway.share(limiter.redis.redis, f"{settings.redis_prefix}:gw:")
        app.add_middleware(
            IngressMiddleware,
            ingress=ingress,
            gateway=gateway,
            gateway_prefix=GATEWAY_PREFIX,
            gateway_slug=gateway.is_slug,
        )
    return app


HEALTH_PATHS = frozenset({"/health", f"{API_PREFIX}/health", f"{ALIAS_PREFIX}/health"})


def health_only(app: FastAPI) -> Callable[..., Any]:
    """A ``worker`` process's HTTP: its lifespan, and ``/health`` (for a supervisor
    or load balancer to watch); every other path is 404 in the envelope."""

    async def asgi(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket") and scope["path"] not in HEALTH_PATHS:
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
                return
            body = error_body("NOT_FOUND", "a worker process serves only /health")
            await JSONResponse(body, status_code=404)(scope, receive, send)
            return
        await app(scope, receive, send)

    asgi.app = app  # type: ignore[attr-defined]  # tests and the CLI reach the FastAPI app
    return asgi
