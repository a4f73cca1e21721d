"""The access matrix, walked route by route.

Every route of the app (under ``/api/v1``, the ``/api`` alias and the root) names
its access rule with exactly one ``Authorize(permission, on=...)`` or ``Public``
dependency (see ``nefos.api.deps``). This module finds that declaration on each
route and holds it against ``MATRIX``, the explicit table below: a route missing
from the table, a table entry with no route, or a route whose declaration differs
fails. Then, on a platform with two tenants, it checks for every route that

* another tenant gets, for each id the route accepts (path, query or body), exactly
  the answer a random id gets (404: the object "does not exist"), also when it names
  A's inner ids (a member, an image, a VM) in its own organisation or project;
* each organisation role gets 403 where ``ROLE_PERMISSIONS`` lacks the route's
  permission and gets through where it holds it; platform-admin routes refuse
  everyone but platform admins, for real and random ids alike;
* an API key lacking the permission's scope gets 403, and one holding just that
  scope gets through (for reads).

Adding a route means adding it to ``MATRIX`` (and, if it takes a body, a valid
sample to ``SAMPLES``: JSON, or form fields and files); the walk then covers it
without further code. A's objects are real, made through the API, and cheap: the
containers and VMs the walk makes fail at once, and its only running VM halts.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from types import UnionType
from typing import Any, Union, get_args, get_origin

import pytest
from fastapi import FastAPI, routing
from fastapi.dependencies.models import Dependant
from fastapi.params import Form as FormParam
from fastapi.routing import APIRoute
from pydantic import BaseModel, TypeAdapter
from sqlalchemy import select, update

from nefos.api.app import create_app
from nefos.api.deps import Authorize, PublicMarker, authorize
from nefos.api.deps import Public as PublicDep
from nefos.api.routing import PrefixGroup
from nefos.api.routing import walk as walk_routes
from nefos.db.models import ContainerReplica, Image
from nefos.domain.access import ALL_SCOPES, ROLE_PERMISSIONS, Permission, Role, Scope, role_allows
from tests.api.conftest import GREEDY_KERNEL, HALT_DISK, World
from tests.conftest import (
    PASSWORD,
    TEST_IMAGE,
    Account,
    libvirt_test_uri,
    make_settings,
    remove_managed_domains,
    wait_operation,
    wait_serving,
)
from tests.stripe_server import SECRET_KEY as STRIPE_SECRET_KEY
from tests.stripe_server import StripeServer

P = Permission
PREFIXES = ("/api/v1", "/api")  # longest first: "/api" is the alias of the newest version


# --- the matrix ---------------------------------------------------------------------
@dataclass(frozen=True)
class Rule:
    permission: Permission | None  # None: Public
    on: str | None = None

    def __str__(self) -> str:
        if self.permission is None:
            return "Public"
        return f"Authorize({self.permission.value!r}, on={self.on!r})"


PUBLIC = Rule(None)
ADMIN = Rule(P.PLATFORM_ADMIN)

MATRIX: dict[tuple[str, str], Rule] = {
    ("POST", "/auth/register"): PUBLIC,
    ("POST", "/auth/login"): PUBLIC,
    ("POST", "/auth/token"): PUBLIC,
    ("POST", "/auth/refresh"): PUBLIC,
    ("POST", "/auth/logout"): Rule(P.ACCOUNT_READ),
    ("GET", "/auth/me"): Rule(P.ACCOUNT_READ),
    ("GET", "/auth/sessions"): Rule(P.ACCOUNT_READ),
    ("DELETE", "/auth/sessions/{session_id}"): Rule(P.ACCOUNT_WRITE),
    ("GET", "/users/profile"): Rule(P.ACCOUNT_READ),
    ("PUT", "/users/profile"): Rule(P.ACCOUNT_WRITE),
    ("GET", "/users/settings"): Rule(P.ACCOUNT_READ),
    ("PUT", "/users/settings"): Rule(P.ACCOUNT_WRITE),
    ("PUT", "/users/password"): Rule(P.ACCOUNT_WRITE),
    ("GET", "/admin/users"): ADMIN,
    ("POST", "/admin/users"): ADMIN,
    ("GET", "/admin/users/{user_id}"): ADMIN,
    ("PATCH", "/admin/users/{user_id}"): ADMIN,
    ("GET", "/organisations"): Rule(P.ORG_READ),
    ("POST", "/organisations"): Rule(P.ORG_CREATE),
    ("GET", "/organisations/{org_id}"): Rule(P.ORG_READ, "org"),
    ("PUT", "/organisations/{org_id}"): Rule(P.ORG_UPDATE, "org"),
    ("DELETE", "/organisations/{org_id}"): Rule(P.ORG_DELETE, "org"),
    ("GET", "/organisations/{org_id}/children"): Rule(P.ORG_READ, "org"),
    ("POST", "/organisations/{org_id}/children"): Rule(P.ORG_CHILD_CREATE, "org"),
    ("GET", "/organisations/{org_id}/members"): Rule(P.MEMBER_READ, "org"),
    ("POST", "/organisations/{org_id}/members"): Rule(P.MEMBER_MANAGE, "org"),
    ("PUT", "/organisations/{org_id}/members/{user_id}"): Rule(P.MEMBER_MANAGE, "org"),
    ("DELETE", "/organisations/{org_id}/members/{user_id}"): Rule(P.MEMBER_MANAGE, "org"),
    ("GET", "/organisations/{org_id}/invitations"): Rule(P.MEMBER_MANAGE, "org"),
    ("POST", "/organisations/{org_id}/invitations"): Rule(P.MEMBER_MANAGE, "org"),
    ("DELETE", "/organisations/{org_id}/invitations/{invitation_id}"): Rule(P.MEMBER_MANAGE, "org"),
    ("GET", "/invitations"): Rule(P.ACCOUNT_READ),
    ("POST", "/invitations/accept"): Rule(P.ACCOUNT_WRITE),
    ("GET", "/projects"): Rule(P.PROJECT_READ),
    ("POST", "/projects"): Rule(P.PROJECT_CREATE),
    ("GET", "/projects/{project_id}"): Rule(P.PROJECT_READ, "project"),
    ("PUT", "/projects/{project_id}"): Rule(P.PROJECT_UPDATE, "project"),
    ("DELETE", "/projects/{project_id}"): Rule(P.PROJECT_DELETE, "project"),
    ("GET", "/projects/{project_id}/quotas"): Rule(P.QUOTA_READ, "project"),
    ("PUT", "/projects/{project_id}/quotas"): Rule(P.QUOTA_UPDATE, "project"),
    ("GET", "/project"): Rule(P.PROJECT_READ),
    ("POST", "/project"): Rule(P.PROJECT_CREATE),
    ("GET", "/api-keys"): Rule(P.API_KEY_MANAGE),
    ("POST", "/api-keys"): Rule(P.API_KEY_MANAGE),
    ("GET", "/api-keys/{key_id}"): Rule(P.API_KEY_MANAGE),
    ("DELETE", "/api-keys/{key_id}"): Rule(P.API_KEY_MANAGE),
    ("GET", "/resources/hosts"): ADMIN,
    ("POST", "/resources/hosts"): ADMIN,
    ("GET", "/resources/hosts/{host_id}"): ADMIN,
    ("DELETE", "/resources/hosts/{host_id}"): ADMIN,
    ("GET", "/hosts"): ADMIN,
    ("POST", "/hosts"): ADMIN,
    ("GET", "/hosts/{host_id}"): ADMIN,
    ("DELETE", "/hosts/{host_id}"): ADMIN,
    ("GET", "/resources/stats"): ADMIN,
    # Containers name their project in the body, query or X-Project-ID (or use the
    # caller's default one), so the check is in the handler: no `on`.
    ("GET", "/containers"): Rule(P.COMPUTE_READ),
    ("POST", "/containers"): Rule(P.COMPUTE_WRITE),
    ("GET", "/containers/{container_id}"): Rule(P.COMPUTE_READ),
    ("PUT", "/containers/{container_id}"): Rule(P.COMPUTE_WRITE),
    ("PUT", "/containers/{container_id}/start"): Rule(P.COMPUTE_WRITE),
    ("PUT", "/containers/{container_id}/stop"): Rule(P.COMPUTE_WRITE),
    ("POST", "/containers/{container_id}/scale"): Rule(P.COMPUTE_WRITE),
    ("DELETE", "/containers/{container_id}"): Rule(P.COMPUTE_WRITE),
    ("GET", "/containers/{container_id}/logs"): Rule(P.COMPUTE_READ),
    ("GET", "/services"): Rule(P.COMPUTE_READ),
    ("GET", "/services/{service_id}"): Rule(P.COMPUTE_READ),
    ("PUT", "/services/{service_id}"): Rule(P.COMPUTE_WRITE),
    ("POST", "/services/{service_id}/instances/{instance_id}/maintenance"): Rule(P.COMPUTE_WRITE),
    ("GET", "/apis"): Rule(P.COMPUTE_READ),
    ("POST", "/apis"): Rule(P.COMPUTE_WRITE),
    ("GET", "/apis/{api_id}"): Rule(P.COMPUTE_READ),
    ("PUT", "/apis/{api_id}"): Rule(P.COMPUTE_WRITE),
    ("DELETE", "/apis/{api_id}"): Rule(P.COMPUTE_WRITE),
    ("GET", "/apis/{api_id}/deployments"): Rule(P.COMPUTE_READ),
    ("POST", "/apis/{api_id}/rollback"): Rule(P.COMPUTE_WRITE),
    ("GET", "/apis/{api_id}/openapi"): Rule(P.COMPUTE_READ),
    ("GET", "/apis/{api_id}/logs"): Rule(P.COMPUTE_READ),
    ("GET", "/apis/{api_id}/metrics"): Rule(P.MONITORING_READ),
    # The marketplace is browsable without an account; a private or unpublished
    # listing is a 404 to strangers (tests/api/test_marketplace.py).
    ("GET", "/marketplace/listings"): PUBLIC,
    ("GET", "/marketplace/listings/{listing_id}"): PUBLIC,
    ("POST", "/marketplace/publish"): Rule(P.COMPUTE_WRITE),
    ("PUT", "/marketplace/listings/{listing_id}"): Rule(P.COMPUTE_WRITE),
    # Invitations are the seller's (whoever may change the listing); accepting one
    # lets an organisation subscribe: its billing managers' call, for the organisation
    # named in the body or query (tests/api/test_market_invitations.py).
    ("POST", "/marketplace/listings/{listing_id}/invitations"): Rule(P.COMPUTE_WRITE),
    ("GET", "/marketplace/listings/{listing_id}/invitations"): Rule(P.COMPUTE_WRITE),
    ("DELETE", "/marketplace/listings/{listing_id}/invitations/{invitation_id}"): Rule(
        P.COMPUTE_WRITE
    ),
    ("POST", "/marketplace/invitations/accept"): Rule(P.BILLING_WRITE),
    # Subscribing spends an organisation's money: its billing managers' call. The
    # subscription's organisation is named in the body or query, or is the one the
    # subscription belongs to (a role check on it, not on a path's org).
    ("POST", "/marketplace/listings/{listing_id}/subscribe"): Rule(P.BILLING_WRITE),
    ("GET", "/marketplace/subscriptions"): Rule(P.BILLING_READ),
    ("GET", "/marketplace/subscriptions/{subscription_id}"): Rule(P.BILLING_READ),
    ("GET", "/marketplace/subscriptions/{subscription_id}/usage"): Rule(P.BILLING_READ),
    ("PUT", "/marketplace/subscriptions/{subscription_id}"): Rule(P.BILLING_WRITE),
    ("DELETE", "/marketplace/subscriptions/{subscription_id}"): Rule(P.BILLING_WRITE),
    ("POST", "/marketplace/subscriptions/{subscription_id}/keys"): Rule(P.BILLING_WRITE),
    ("DELETE", "/marketplace/subscriptions/{subscription_id}/keys/{key_id}"): Rule(P.BILLING_WRITE),
    # Reviews are read like their listing (public, or a 404 to strangers); written for
    # an organisation named in the body or query (or the caller's default), or the
    # review's own; replied to by whoever may change the listing (tests/api/test_reviews.py).
    ("GET", "/marketplace/reviews"): PUBLIC,
    ("POST", "/marketplace/reviews"): Rule(P.COMPUTE_WRITE),
    ("PUT", "/marketplace/reviews/{review_id}"): Rule(P.COMPUTE_WRITE),
    ("DELETE", "/marketplace/reviews/{review_id}"): Rule(P.COMPUTE_WRITE),
    ("POST", "/marketplace/reviews/{review_id}/reply"): Rule(P.COMPUTE_WRITE),
    ("GET", "/operations"): Rule(P.COMPUTE_READ),
    ("GET", "/operations/{operation_id}"): Rule(P.COMPUTE_READ),
    ("DELETE", "/operations/{operation_id}"): Rule(P.COMPUTE_WRITE),
    # VMs, images, snapshots, backups, volumes and networks: like containers, the
    # project is named in the body or query (or is the caller's default), or is the
    # object's own; the handler checks it (no `on`).
    ("GET", "/vms"): Rule(P.COMPUTE_READ),
    ("POST", "/vms"): Rule(P.COMPUTE_WRITE),
    ("GET", "/vms/{vm_id}"): Rule(P.COMPUTE_READ),
    ("PUT", "/vms/{vm_id}"): Rule(P.COMPUTE_WRITE),
    ("DELETE", "/vms/{vm_id}"): Rule(P.COMPUTE_WRITE),
    ("POST", "/vms/{vm_id}/start"): Rule(P.COMPUTE_WRITE),
    ("POST", "/vms/{vm_id}/stop"): Rule(P.COMPUTE_WRITE),
    ("POST", "/vms/{vm_id}/reboot"): Rule(P.COMPUTE_WRITE),
    ("GET", "/vms/{vm_id}/console"): Rule(P.COMPUTE_READ),
    ("GET", "/compute/instances"): Rule(P.COMPUTE_READ),
    ("POST", "/compute/instances"): Rule(P.COMPUTE_WRITE),
    ("GET", "/images"): Rule(P.COMPUTE_READ),
    ("POST", "/images"): Rule(P.COMPUTE_WRITE),
    ("POST", "/images/upload"): Rule(P.COMPUTE_WRITE),
    ("GET", "/images/{image_id}"): Rule(P.COMPUTE_READ),
    ("DELETE", "/images/{image_id}"): Rule(P.COMPUTE_WRITE),
    ("GET", "/snapshots"): Rule(P.COMPUTE_READ),
    ("POST", "/snapshots"): Rule(P.COMPUTE_WRITE),
    ("GET", "/snapshots/{snapshot_id}"): Rule(P.COMPUTE_READ),
    ("POST", "/snapshots/{snapshot_id}/restore"): Rule(P.COMPUTE_WRITE),
    ("POST", "/snapshots/{snapshot_id}/revert"): Rule(P.COMPUTE_WRITE),
    ("DELETE", "/snapshots/{snapshot_id}"): Rule(P.COMPUTE_WRITE),
    ("GET", "/vms/{vm_id}/snapshots"): Rule(P.COMPUTE_READ),
    ("POST", "/vms/{vm_id}/snapshots"): Rule(P.COMPUTE_WRITE),
    ("GET", "/backups"): Rule(P.COMPUTE_READ),
    ("POST", "/backups"): Rule(P.COMPUTE_WRITE),
    ("GET", "/backups/{backup_id}"): Rule(P.COMPUTE_READ),
    ("POST", "/backups/{backup_id}/restore"): Rule(P.COMPUTE_WRITE),
    ("DELETE", "/backups/{backup_id}"): Rule(P.COMPUTE_WRITE),
    ("GET", "/compute/backups"): Rule(P.COMPUTE_READ),
    ("GET", "/volumes"): Rule(P.COMPUTE_READ),
    ("POST", "/volumes"): Rule(P.COMPUTE_WRITE),
    ("GET", "/volumes/{volume_id}"): Rule(P.COMPUTE_READ),
    ("POST", "/volumes/{volume_id}/attach"): Rule(P.COMPUTE_WRITE),
    ("POST", "/volumes/{volume_id}/detach"): Rule(P.COMPUTE_WRITE),
    ("POST", "/volumes/{volume_id}/resize"): Rule(P.COMPUTE_WRITE),
    ("DELETE", "/volumes/{volume_id}"): Rule(P.COMPUTE_WRITE),
    ("GET", "/networks"): Rule(P.COMPUTE_READ),
    ("POST", "/networks"): Rule(P.COMPUTE_WRITE),
    ("GET", "/networks/{network_id}"): Rule(P.COMPUTE_READ),
    ("DELETE", "/networks/{network_id}"): Rule(P.COMPUTE_WRITE),
    ("GET", "/health"): PUBLIC,
    ("POST", "/ws/ticket"): Rule(P.ACCOUNT_READ),
    # The catalogue, billing accounts, quotes, payouts and seed 002's views: the
    # organisation is named in the body or query (or is the caller's default), or is
    # the object's own; the handler checks it (no `on`). Accepting a quote creates its
    # resources: compute.write in its organisation, as creating them would.
    ("GET", "/products"): Rule(P.BILLING_READ),
    ("GET", "/products/{sku}/history"): ADMIN,
    ("PUT", "/products/{sku}"): ADMIN,
    ("DELETE", "/products/{sku}"): ADMIN,
    ("GET", "/billing/account"): Rule(P.BILLING_READ),
    ("PUT", "/billing/account"): Rule(P.BILLING_WRITE),
    ("GET", "/quotes"): Rule(P.BILLING_READ),
    ("POST", "/quotes"): Rule(P.BILLING_READ),
    ("GET", "/quotes/{quote_id}"): Rule(P.BILLING_READ),
    ("POST", "/quotes/{quote_id}/accept"): Rule(P.COMPUTE_WRITE),
    ("GET", "/billing/payouts"): Rule(P.BILLING_READ),
    ("GET", "/billing/payouts/{payout_id}"): Rule(P.BILLING_READ),
    ("POST", "/billing/payout-request"): Rule(P.BILLING_WRITE),
    ("POST", "/billing/payouts/{payout_id}/settle"): ADMIN,
    ("POST", "/billing/payouts/{payout_id}/reject"): ADMIN,
    ("GET", "/billing/overview"): Rule(P.BILLING_READ),
    ("GET", "/billing/transactions"): Rule(P.BILLING_READ),
    ("GET", "/billing/subscription"): Rule(P.BILLING_READ),
    # Payments and top-ups: the organisation is named in the body or query (or is the
    # caller's default), or is the payment's own; the handler checks it (no `on`).
    # Stripe's webhook is verified by its signature instead.
    ("GET", "/payments"): Rule(P.BILLING_READ),
    ("POST", "/payments"): Rule(P.BILLING_WRITE),
    ("GET", "/payments/{payment_id}"): Rule(P.BILLING_READ),
    ("POST", "/payments/{payment_id}/cancel"): Rule(P.BILLING_WRITE),
    ("POST", "/payments/{payment_id}/refresh"): Rule(P.BILLING_WRITE),
    ("GET", "/payments/methods"): Rule(P.BILLING_READ),
    ("POST", "/payments/{payment_id}/confirm"): ADMIN,
    ("POST", "/payments/{payment_id}/fail"): ADMIN,
    ("POST", "/payments/stripe/webhook"): PUBLIC,
    ("POST", "/wallet/top-up"): Rule(P.BILLING_WRITE),
    # Alerts and webhooks: the project is named in the body or query (or is the
    # caller's default), or is the object's own; the handler checks it (no `on`).
    ("GET", "/monitoring/alert-rules"): Rule(P.MONITORING_READ),
    ("POST", "/monitoring/alert-rules"): Rule(P.MONITORING_WRITE),
    ("GET", "/monitoring/alert-rules/{rule_id}"): Rule(P.MONITORING_READ),
    ("PUT", "/monitoring/alert-rules/{rule_id}"): Rule(P.MONITORING_WRITE),
    ("DELETE", "/monitoring/alert-rules/{rule_id}"): Rule(P.MONITORING_WRITE),
    ("GET", "/monitoring/alerts"): Rule(P.MONITORING_READ),
    ("GET", "/monitoring/alerts/{alert_id}"): Rule(P.MONITORING_READ),
    ("GET", "/monitoring/webhooks"): Rule(P.MONITORING_READ),
    ("POST", "/monitoring/webhooks"): Rule(P.MONITORING_WRITE),
    ("GET", "/monitoring/webhooks/{webhook_id}"): Rule(P.MONITORING_READ),
    ("DELETE", "/monitoring/webhooks/{webhook_id}"): Rule(P.MONITORING_WRITE),
    ("GET", "/monitoring/webhooks/{webhook_id}/deliveries"): Rule(P.MONITORING_READ),
    ("POST", "/monitoring/webhooks/{webhook_id}/test"): Rule(P.MONITORING_WRITE),
    # Load tests and their scenarios: in the target's (or the named) project, so the
    # check is in the handler.
    ("POST", "/testing/load"): Rule(P.COMPUTE_WRITE),
    ("GET", "/testing/results"): Rule(P.COMPUTE_READ),
    ("GET", "/testing/results/{test_id}"): Rule(P.COMPUTE_READ),
    ("DELETE", "/testing/results/{test_id}"): Rule(P.COMPUTE_WRITE),
    ("GET", "/testing/scenarios"): Rule(P.COMPUTE_READ),
    ("POST", "/testing/scenarios"): Rule(P.COMPUTE_WRITE),
    ("GET", "/testing/scenarios/{scenario_id}"): Rule(P.COMPUTE_READ),
    ("PUT", "/testing/scenarios/{scenario_id}"): Rule(P.COMPUTE_WRITE),
    ("DELETE", "/testing/scenarios/{scenario_id}"): Rule(P.COMPUTE_WRITE),
    # Metrics: an instance's series need monitoring.read on its project (checked in
    # the handler, like compute); hosts' and the platform's are for platform admins.
    ("GET", "/monitoring/vm-metrics/{vm_id}"): Rule(P.MONITORING_READ),
    ("GET", "/containers/{container_id}/metrics"): Rule(P.MONITORING_READ),
    ("GET", "/monitoring/host-metrics/{host_id}"): ADMIN,
    ("GET", "/monitoring/system-metrics"): ADMIN,
    ("GET", "/metrics"): Rule(P.MONITORING_READ),
    ("GET", "/prometheus"): ADMIN,
    # Invoices: read for the organisation named in the query (or the caller's default,
    # or the invoice's own; the handler checks it, no `on`); made, finalized, voided
    # and credited by platform admins.
    ("GET", "/invoices"): Rule(P.BILLING_READ),
    ("POST", "/invoices"): ADMIN,
    ("GET", "/invoices/{invoice_id}"): Rule(P.BILLING_READ),
    ("GET", "/invoices/{invoice_id}/html"): Rule(P.BILLING_READ),
    ("POST", "/invoices/{invoice_id}/finalize"): ADMIN,
    ("POST", "/invoices/{invoice_id}/void"): ADMIN,
    ("POST", "/invoices/{invoice_id}/credit-notes"): ADMIN,
    ("GET", "/billing/history"): Rule(P.BILLING_READ),
    # The wallet and usage costs: the organisation is named in the query (or is the
    # caller's default, or the resource's own); the handler checks it (no `on`).
    ("GET", "/wallet"): Rule(P.BILLING_READ),
    ("GET", "/wallet/ledger"): Rule(P.BILLING_READ),
    ("GET", "/billing/summary"): Rule(P.BILLING_READ),
    ("GET", "/billing/containers/{container_id}/usage"): Rule(P.BILLING_READ),
    ("GET", "/billing/vms/{vm_id}/usage"): Rule(P.BILLING_READ),
    # Analytics of the request log: the organisation is named in the query (or is the
    # caller's default); the handler checks it (no `on`); scope=platform is admins'.
    ("GET", "/rate-limits"): PUBLIC,
    ("GET", "/admin/organisations/{org_id}/rate-limits"): ADMIN,
    ("PUT", "/admin/organisations/{org_id}/rate-limits"): ADMIN,
    ("DELETE", "/admin/organisations/{org_id}/rate-limits/{group}"): ADMIN,
    ("GET", "/analytics/overview"): Rule(P.MONITORING_READ),
    ("GET", "/analytics/traffic"): Rule(P.MONITORING_READ),
    ("GET", "/analytics/performance"): Rule(P.MONITORING_READ),
    ("GET", "/analytics/geography"): Rule(P.MONITORING_READ),
}

# Routes the canonical prefix serves but leaves out of the OpenAPI document, and why.
UNDOCUMENTED = {
    ("POST", "/snapshots/{snapshot_id}/revert"): "an alias of POST /snapshots/{id}/restore",
    ("GET", "/hosts"): "an alias of GET /resources/hosts",
    ("POST", "/hosts"): "an alias of POST /resources/hosts",
    ("GET", "/hosts/{host_id}"): "an alias of GET /resources/hosts/{id}",
    ("DELETE", "/hosts/{host_id}"): "an alias of DELETE /resources/hosts/{id}",
}


# --- finding the routes and their declarations --------------------------------------
@dataclass(frozen=True)
class Served:
    """One method of one route as the app serves it."""

    method: str
    path: str
    prefix: str
    in_schema: bool
    dependant: Dependant

    @property
    def template(self) -> str:
        return self.path[len(self.prefix) :]

    @property
    def key(self) -> tuple[str, str]:
        return self.method, self.template

    @property
    def path_params(self) -> list[str]:
        return re.findall(r"{(\w+)}", self.path)

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


def _api_routes(app: FastAPI) -> Iterator[Any]:
    if any(isinstance(r, PrefixGroup) for r in app.routes):  # Nefos: each route once, grouped
        yield from (r for r in walk_routes(app.routes) if isinstance(r, APIRoute))
        return
    iter_contexts = getattr(routing, "iter_route_contexts", None)
    if iter_contexts is None:  # a FastAPI that lists included routes flat in app.routes
        yield from (r for r in app.routes if isinstance(r, APIRoute))
        return
    # FastAPI >= 0.16x keeps included routers lazily: each context is one route as
    # served (path with its prefix, dependant with the router's dependencies).
    for context in iter_contexts(app.routes):
        if isinstance(context.original_route, APIRoute):
            yield context


def served_routes(app: FastAPI) -> list[Served]:
    out = []
    for route in _api_routes(app):
        prefix = next((p for p in PREFIXES if route.path.startswith(p + "/")), "")
        for method in sorted(route.methods):
            out.append(Served(method, route.path, prefix, route.include_in_schema, route.dependant))
    if any(isinstance(r, PrefixGroup) for r in app.routes):
        # Nefos registers each route once, under /api/v1; /api reaches the same route
        # by a path rewrite (gateway.paths), undocumented. The walks send both.
        out += [
            Served(s.method, "/api" + s.template, "/api", False, s.dependant)
            for s in out
            if s.prefix == "/api/v1"
        ]
    return out


def walk(dependant: Dependant) -> Iterator[Dependant]:
    yield dependant
    for sub in dependant.dependencies:
        yield from walk(sub)


def declarations(served: Served) -> list[Authorize | PublicMarker]:
    return [d.call for d in walk(served.dependant) if isinstance(d.call, Authorize | PublicMarker)]


def declared_rule(served: Served) -> Rule:
    (decl,) = declarations(served)
    if isinstance(decl, PublicMarker):
        return PUBLIC
    return Rule(decl.permission, decl.on)


def access_problems(app: FastAPI) -> list[str]:
    """Routes that declare no access rule, or more than one."""
    problems = []
    for served in served_routes(app):
        found = declarations(served)
        if not found:
            problems.append(f"{served}: declares no access rule (Authorize or Public)")
        elif len(found) > 1:
            problems.append(f"{served}: declares {len(found)} access rules: {found}")
    return problems


@pytest.fixture(scope="module")
def static_app(tmp_path_factory: pytest.TempPathFactory) -> FastAPI:
    tmp = tmp_path_factory.mktemp("matrix")
    # Only the routes are read: the lifespan (and so the database) never starts.
    return create_app(make_settings(f"sqlite:///{tmp / 'unused.db'}", tmp))


@pytest.fixture(scope="module")
def routes(static_app: FastAPI) -> list[Served]:
    return served_routes(static_app)


def test_every_route_declares_exactly_one_access_rule(
    static_app: FastAPI, routes: list[Served]
) -> None:
    # Each route is registered once, under /api/v1; the walk sees it under /api too
    # (a path rewrite), so twice.
    assert len(routes) >= 2 * len(MATRIX)
    assert {s.prefix for s in routes} == {"/api/v1", "/api"}
    assert all(isinstance(r, PrefixGroup) for r in static_app.routes if not hasattr(r, "path"))
    assert access_problems(static_app) == []


def test_the_walk_catches_a_route_with_no_rule_or_two() -> None:
    app = FastAPI()
    router = routing.APIRouter()

    @router.get("/open")
    async def open_route() -> None: ...

    @router.get("/both", dependencies=[PublicDep])
    async def both(_: Any = authorize(P.ORG_READ)) -> None: ...

    @router.get("/fine", dependencies=[PublicDep])
    async def fine() -> None: ...

    app.include_router(router, prefix="/api/v1")
    problems = access_problems(app)
    assert len(problems) == 2
    assert problems[0].startswith("GET /api/v1/open: declares no access rule")
    assert problems[1].startswith("GET /api/v1/both: declares 2 access rules")


def test_matrix_and_routes_agree_both_ways(routes: list[Served]) -> None:
    problems = []
    served_keys: dict[tuple[str, str], set[str]] = {}
    for served in routes:
        served_keys.setdefault(served.key, set()).add(served.prefix)
        if len(declarations(served)) != 1:
            problems.append(f"{served}: needs exactly one access rule")
        elif served.key not in MATRIX:
            problems.append(f"{served}: missing from MATRIX (declares {declared_rule(served)})")
        elif declared_rule(served) != MATRIX[served.key]:
            problems.append(
                f"{served}: declares {declared_rule(served)}, MATRIX says {MATRIX[served.key]}"
            )
        # The canonical prefix is the documented contract; the alias and root are not.
        documented = served.prefix == "/api/v1" and served.key not in UNDOCUMENTED
        if served.in_schema != documented:
            problems.append(f"{served}: in OpenAPI is {served.in_schema}")
    for key in MATRIX:
        missing = set(PREFIXES) - served_keys.get(key, set())
        if missing:
            problems.append(f"{key[0]} {key[1]}: in MATRIX but not served under {sorted(missing)}")
    assert problems == []


# --- requests for each route ---------------------------------------------------------
@dataclass(frozen=True)
class Ref:
    """A value taken from the id map: A's real object, or a random stand-in."""

    name: str


@dataclass(frozen=True)
class Unique:
    """A fresh value for each request (names and e-mails must not collide)."""

    pattern: str


Fresh = Callable[[World, Account, Role], Awaitable[dict[str, str]]]


async def fresh_org(w: World, who: Account, role: Role) -> dict[str, str]:
    return {"org_id": await w.new_org(member=who, role=role)}


async def fresh_outsider(w: World, who: Account, role: Role) -> dict[str, str]:
    return {"outsider_email": (await w.register()).email}


async def fresh_member(w: World, who: Account, role: Role) -> dict[str, str]:
    return {"user_id": (await w.new_member()).id}


async def fresh_invitation(w: World, who: Account, role: Role) -> dict[str, str]:
    return {"invitation_id": (await w.new_invitation())[0]}


async def fresh_project(w: World, who: Account, role: Role) -> dict[str, str]:
    return {"project_id": await w.new_project()}


# The walk checks access, not the engine: the containers it makes (and those its
# allowed POSTs make) name an image the host lacks, so their create fails at once
# and leaves nothing in the engine. Small, so dozens fit on the test host.
NO_IMAGE = "localhost/nefos-access-matrix:absent"
TINY = {"cpu": "0.05", "memory": "8m"}
DEAD_ENGINE = "unix:///nonexistent/nefos-matrix.sock"  # hosts that are only rows


# VMs likewise: those the walk makes boot the GREEDY_KERNEL image, whose create fails
# at once; the world's two real VMs boot HALT_DISK, so QEMU idles.
SMALL_VM = {"memory_mb": 64, "storage_gb": 0}


@dataclass
class ComputeWorld(World):
    """The world with compute in A's project: the test Podman as a host (``host_id``),
    a running container there (``container_id``) and its create operation
    (``operation_id``); the test libvirtd as a host, A's private images (``image_id``,
    a kernel no VM boots from; ``halt_image_id``, a disk that halts at once), a stopped
    VM (``vm_id``) with a snapshot and a backup, a running VM (``running_vm_id``), a
    volume and a network. ``admin`` is the platform admin, who registers hosts.
    ``stranger`` is a third tenant: the seller of the listing A's reseller reviews
    (``reviewed_listing_id``, ``review_id``), and a reviewer of A's listing."""

    admin: Any = None
    app: Any = None
    stranger: Any = None
    running_vm_id: str = ""
    halt_image_id: str = ""

    @property
    def project(self) -> str:
        return self.ids["project_id"]

    async def settle(self) -> None:
        """Wait until no operation is pending or running (the walked objects are idle:
        a write on a busy one is refused as busy)."""
        deadline = time.monotonic() + 120
        while True:
            active = [
                o
                for status in ("pending", "running")
                for o in (
                    await self.ok("GET", "/operations", self.admin, params={"status": status})
                )["items"]
            ]
            if not active:
                return
            assert time.monotonic() < deadline, f"operations still active: {active}"
            await asyncio.sleep(0.05)

    async def accepted(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        """A 202 write of A's owner, followed to its end (which may be a failure)."""
        data: dict[str, Any] = await self.ok(method, path, self.owner, **kwargs)
        data["op"] = await wait_operation(self.client, self.owner.headers, data["operation"])
        return data

    async def upload(self, name: str, part: str, content: bytes) -> dict[str, Any]:
        return await self.accepted(
            "POST",
            "/images/upload",
            params={"project_id": self.project},
            data={"name": name},
            files={part: (name, content)},
        )

    async def new_vm(self, name: str, image_id: str, **extra: Any) -> dict[str, Any]:
        body = {"name": name, "image_id": image_id, **SMALL_VM, "project_id": self.project}
        return await self.accepted("POST", "/vms", json={**body, **extra})

    async def make_room(self) -> None:
        """Delete the VMs earlier calls made: the test libvirt host fits 8 vCPUs."""
        await self.settle()
        keep = {self.ids["vm_id"], self.running_vm_id}
        vms = await self.ok(
            "GET", "/vms", self.owner, params={"project_id": self.project, "limit": 500}
        )
        for vm in vms["items"]:
            if vm["id"] not in keep and vm["status"] != "deleting":
                await self.ok("DELETE", f"/vms/{vm['id']}", self.owner)
        await self.settle()


async def _remove_libvirt_leftovers(app: Any) -> None:
    """What the walk made in libvirt and the libvirt_host fixture does not remove:
    volumes, backups and networks (after the domains, which hold them)."""
    from sqlalchemy import select

    from nefos.db.models import Backup, Network, Volume
    from nefos.drivers.libvirt import LibvirtDriver

    await remove_managed_domains()
    async with app.state.core.db.sessionmaker() as session:
        volumes = (await session.scalars(select(Volume.id))).all()
        backups = (await session.scalars(select(Backup.id))).all()
        networks = (await session.scalars(select(Network.id))).all()
    driver = LibvirtDriver(libvirt_test_uri(), domain_type="qemu")
    try:
        for volume_id in volumes:
            await driver.delete_volume(volume_id)
        for backup_id in backups:
            await driver.delete_backup(backup_id)
        for network_id in networks:
            await driver.delete_network(network_id)
    finally:
        await driver.close()


@pytest.fixture
async def walk_world(
    world: World,
    admin: Account,
    app: Any,
    podman_host: dict[str, Any],
    libvirt_host: dict[str, Any],
) -> AsyncIterator[ComputeWorld]:
    w = ComputeWorld(
        **{f.name: getattr(world, f.name) for f in fields(World)}, admin=admin, app=app
    )
    project = w.ids["project_id"]
    # NO_IMAGE is nowhere to pull from: with pulling off the request passes the registry
    # check (tests/security/test_image_pulls.py) and the engine fails the create at once.
    app.state.core.settings.container_image_pull = False
    # The walk makes dozens of containers, VMs and volumes in A's project: no quota
    # may stop it.
    unlimited = dict.fromkeys(("containers", "instances", "vcpus", "memory_gb", "storage_gb"))
    await w.ok("PUT", f"/projects/{project}/quotas", w.owner, json=unlimited)
    data = await w.ok(
        "POST",
        "/containers",
        w.owner,
        json={
            "name": "walked",
            "image": TEST_IMAGE,
            "ports": ["8080"],
            "resources": {"cpu": "0.1", "memory": "32m"},
            "project_id": project,
        },
    )
    op = await wait_operation(w.client, w.owner.headers, data["operation"])
    assert op["status"] == "succeeded", op
    async with app.state.core.db.session() as session:
        replica = await session.scalar(
            select(ContainerReplica.id).where(ContainerReplica.container_id == data["container_id"])
        )
    w.ids.update(
        host_id=podman_host["id"],
        container_id=data["container_id"],
        operation_id=op["id"],
        service_id=data["container_id"],  # a service is its container
        instance_id=str(replica),
    )
    api = await w.ok(
        "POST",
        "/apis",
        w.owner,
        json={
            "name": "walked-api",
            "image": TEST_IMAGE,
            "port": 8080,
            "resources": {"cpu": "0.1", "memory": "32m"},
            "openapi": {"openapi": "3.1.0", "info": {"title": "t", "version": "1"}},
            "project_id": project,
        },
    )
    assert (await wait_operation(w.client, w.owner.headers, api["operation"]))["status"] == (
        "succeeded"
    )
    w.ids["api_id"] = api["api_id"]
    listed = await w.ok(
        "POST",
        "/marketplace/publish",
        w.owner,
        json={
            "api_id": api["api_id"],
            "title": "Walked",
            "category": "tools",
            "plans": [{"name": "Free", "model": "free"}],
        },
    )
    w.ids["listing_id"] = listed["listing"]["id"]
    w.ids["plan_id"] = listed["listing"]["plans"][0]["id"]
    # A's reseller subscribes to its own listing (creators test their APIs).
    subscribed = await w.ok(
        "POST",
        f"/marketplace/listings/{w.ids['listing_id']}/subscribe",
        w.owner,
        json={"plan_id": w.ids["plan_id"], "organisation_id": w.ids["org_id"]},
    )
    w.ids["subscription_id"] = subscribed["subscription"]["id"]
    invited = await w.ok(
        "POST",
        f"/marketplace/listings/{w.ids['listing_id']}/invitations",
        w.owner,
        json={"email": w.ids["invitee_email"]},
    )
    w.ids["listing_token"] = invited["invitation"]["token"]
    settings = app.state.core.settings
    allowed = settings.webhook_allowed_networks
    settings.webhook_allowed_networks = ["127.0.0.0/8"]  # WALK_WEBHOOK
    load_tests_at_once = settings.loadtest_max_concurrent
    # Card payments on Stripe's stand-in (a refresh asks it).
    stripe = StripeServer()
    stripe_was = (settings.stripe_secret_key, settings.stripe_api_base)
    settings.stripe_secret_key, settings.stripe_api_base = STRIPE_SECRET_KEY, stripe.url
    try:
        await _vm_world(w)
        # The walk's VMs must be accepted (202) and then fail in libvirt: the greedy
        # kernel's recorded floor (1 TiB, which the API would refuse with a 422 before
        # any operation) is forgotten, so only the hypervisor refuses it.
        async with app.state.core.db.session() as session:
            await session.execute(
                update(Image).where(Image.id == w.ids["image_id"]).values(min_memory_mb=0)
            )
            await session.commit()
        await _monitoring_world(w, app)
        settings.loadtest_max_concurrent = 1000
        await _loadtest_world(w)
        await _invoice_world(w, app)
        await _billing_world(w, app)
        await _review_world(w)
        w.ids.update(await fresh_payment(w, w.owner, Role.OWNER))
        yield w
    finally:
        settings.webhook_allowed_networks = allowed
        settings.loadtest_max_concurrent = load_tests_at_once
        settings.stripe_secret_key, settings.stripe_api_base = stripe_was
        stripe.close()
        # The operations the walk started end before the hosts' fixtures clean up.
        await w.settle()
        await _remove_libvirt_leftovers(app)


async def _vm_world(w: ComputeWorld) -> None:
    # Private images (another tenant must not see them), uploaded as a project would.
    for name, part, content in (("walked", "kernel", GREEDY_KERNEL), ("halt", "disk", HALT_DISK)):
        made = await w.upload(name, part, content)
        assert made["op"]["status"] == "succeeded", made["op"]
        assert made["image"]["public"] is False
        if name == "walked":
            w.ids["image_id"] = made["image_id"]
        else:
            w.halt_image_id = made["image_id"]
    network = await w.ok(
        "POST", "/networks", w.owner, json={"name": "walked", "project_id": w.project}
    )
    w.ids["network_id"] = network["id"]
    made = await w.accepted(
        "POST", "/volumes", json={"name": "walked", "size_gb": 1, "project_id": w.project}
    )
    assert made["op"]["status"] == "succeeded", made["op"]
    w.ids["volume_id"] = made["volume_id"]
    vm, running = [
        await w.new_vm(name, w.halt_image_id, storage_gb=1) for name in ("walked", "running")
    ]
    for made in (vm, running):
        assert made["op"]["status"] == "succeeded", made["op"].get("error")
    w.ids["vm_id"], w.running_vm_id = vm["vm_id"], running["vm_id"]
    stopped = await w.accepted("POST", f"/vms/{vm['vm_id']}/stop", json={"force": True})
    assert stopped["op"]["status"] == "succeeded", stopped["op"]
    made = await w.accepted("POST", f"/vms/{vm['vm_id']}/snapshots", json={"name": "walked"})
    assert made["op"]["status"] == "succeeded", made["op"]
    w.ids["snapshot_id"] = made["snapshot_id"]
    made = await w.accepted("POST", "/backups", json={"vm_id": vm["vm_id"], "name": "walked"})
    assert made["op"]["status"] == "succeeded", made["op"]
    w.ids["backup_id"] = made["backup_id"]


# Webhooks the walk makes point at the discard port on loopback. Creating one needs
# loopback allowed (the walk allows it in the API's settings); the app's dispatcher
# was built without the allowance, so it refuses their deliveries before connecting.
WALK_WEBHOOK = "http://127.0.0.1:9/nefos-walk"


async def _monitoring_world(w: ComputeWorld, app: Any) -> None:
    """An alert rule of A's project, a firing alert of it on the walked container,
    and a webhook."""
    from datetime import UTC, datetime

    from nefos.monitoring.types import Metric, ResourceKind, Sample

    rule = await w.ok(
        "POST",
        "/monitoring/alert-rules",
        w.owner,
        json={"name": "walked", "metric": "cpu_percent", "threshold": -1, "project_id": w.project},
    )
    w.ids["rule_id"] = rule["id"]
    sample = Sample(
        ResourceKind.CONTAINER,
        w.ids["container_id"],
        Metric.CPU_PERCENT,
        50.0,
        datetime.now(UTC),
        w.project,
    )
    await app.state.alert_engine.on_samples([sample])
    alerts = await w.ok(
        "GET",
        "/monitoring/alerts",
        w.owner,
        params={"project_id": w.project, "rule_id": rule["id"]},
    )
    w.ids["alert_id"] = alerts["items"][0]["id"]
    hook = await w.ok(
        "POST", "/monitoring/webhooks", w.owner, json={"url": WALK_WEBHOOK, "project_id": w.project}
    )
    w.ids["webhook_id"] = hook["id"]


async def _loadtest_world(w: ComputeWorld) -> None:
    """A finished load test of the walked container, and a stored scenario. The walk
    starts many tests at once: the per-organisation cap is lifted for it."""
    # A test goes to instances that take traffic: the container's must pass first.
    await wait_serving(w.client, w.owner.headers, w.ids["container_id"])
    made = await w.ok(
        "POST",
        "/testing/load",
        w.owner,
        json={"duration": 1, "users": 1, "target": w.ids["container_id"]},
    )
    w.ids["test_id"] = made["test_id"]
    w.ids.update(await fresh_scenario(w, w.owner, Role.OWNER))


async def fresh_load_test(w: World, who: Account, role: Role) -> dict[str, str]:
    """A running test to cancel (short: a refused cancel leaves it running)."""
    made = await w.ok(
        "POST",
        "/testing/load",
        w.owner,
        json={"duration": 5, "users": 1, "target": w.ids["container_id"]},
    )
    return {"test_id": made["test_id"]}


async def fresh_scenario(w: World, who: Account, role: Role) -> dict[str, str]:
    made = await w.ok(
        "POST",
        "/testing/scenarios",
        w.owner,
        json={
            "name": f"s-{uuid.uuid4().hex[:10]}",
            "requests": [{"path": "/"}],
            "project_id": w.ids["project_id"],
        },
    )
    return {"scenario_id": made["id"]}


async def fresh_rule(w: World, who: Account, role: Role) -> dict[str, str]:
    rule = await w.ok(
        "POST",
        "/monitoring/alert-rules",
        w.owner,
        json={
            "name": f"r-{uuid.uuid4().hex[:10]}",
            "metric": "cpu_percent",
            "threshold": 90,
            "project_id": w.ids["project_id"],
        },
    )
    return {"rule_id": rule["id"]}


async def fresh_webhook(w: World, who: Account, role: Role) -> dict[str, str]:
    hook = await w.ok(
        "POST",
        "/monitoring/webhooks",
        w.owner,
        json={"url": WALK_WEBHOOK, "project_id": w.ids["project_id"]},
    )
    return {"webhook_id": hook["id"]}


async def fresh_card_payment(w: World, who: Account, role: Role) -> dict[str, str]:
    """A pending Stripe payment of A's organisation (on the walk's Stripe stand-in)."""
    payment = await w.ok(
        "POST",
        "/payments",
        w.owner,
        json={"amount": "5.00", "provider": "stripe", "organisation_id": w.ids["org_id"]},
    )
    return {"payment_id": payment["id"]}


async def fresh_flavor(w: World, who: Account, role: Role) -> dict[str, str]:
    """A flavor of the catalogue, to retire."""
    sku = f"flavor:walked-{uuid.uuid4().hex[:8]}"
    await w.ok("PUT", f"/products/{sku}", compute(w).admin, json={"unit_price": "0.01"})
    return {"sku": sku}


async def fresh_payment(w: World, who: Account, role: Role) -> dict[str, str]:
    """A pending bank transfer of A's organisation (to confirm, fail or cancel)."""
    payment = await w.ok(
        "POST",
        "/payments",
        w.owner,
        json={"amount": "5.00", "provider": "manual", "organisation_id": w.ids["org_id"]},
    )
    return {"payment_id": payment["id"]}


QUOTED = {"type": "container", "image": NO_IMAGE, **TINY}


async def record_call(w: ComputeWorld, subscription_id: str) -> None:
    """A call of the subscription the API answered with a 200, as the gateway
    records one (the walk checks access, not the gateway: tests/api/test_reviews.py
    makes real calls)."""
    from nefos.db.models import ApiCall, Listing, Subscription
    from nefos.db.session import begin_write

    async with w.app.state.core.db.sessionmaker() as session:
        # A read, then a write: SQLite's write lock first, or another writer (the
        # gateway's call log) makes the upgrade fail at once ("database is locked").
        await begin_write(session)
        sub = await session.get(Subscription, subscription_id)
        listing = await session.get(Listing, sub.listing_id)
        session.add(
            ApiCall(
                request_id=f"walked:{uuid.uuid4().hex}",
                api_id=listing.api_id,
                subscription_id=sub.id,
                plan_id=sub.plan_id,
                organisation_id=sub.organisation_id,
                method="GET",
                path="/",
                status=200,
                latency_ms=1.0,
            )
        )
        await session.commit()


async def _review_world(w: ComputeWorld) -> None:
    """A third tenant's listing (of an API that failed at once) that A's reseller
    subscribes to, calls and reviews."""
    w.stranger = await w.register()
    api = await w.ok(
        "POST",
        "/apis",
        w.stranger,
        json={"name": "sold", "image": NO_IMAGE, "port": 8080, "resources": TINY},
    )
    await wait_operation(w.client, w.stranger.headers, api["operation"])
    listed = await w.ok(
        "POST",
        "/marketplace/publish",
        w.stranger,
        json={
            "api_id": api["api_id"],
            "title": "Sold",
            "category": "tools",
            "plans": [{"name": "Free", "model": "free"}],
        },
    )
    w.ids["reviewed_listing_id"] = listed["listing"]["id"]
    subscribed = await w.ok(
        "POST",
        f"/marketplace/listings/{w.ids['reviewed_listing_id']}/subscribe",
        w.owner,
        json={"plan_id": listed["listing"]["plans"][0]["id"], "organisation_id": w.ids["org_id"]},
    )
    await record_call(w, subscribed["subscription"]["id"])
    w.ids.update(await fresh_review(w, w.owner, Role.OWNER))


async def fresh_review(w: World, who: Account, role: Role) -> dict[str, str]:
    """A's reseller's review of the third tenant's listing (made again if a DELETE
    took it)."""
    made = await w.ok(
        "POST",
        "/marketplace/reviews",
        w.owner,
        json={
            "listing_id": w.ids["reviewed_listing_id"],
            "stars": 4,
            "text": "Walked",
            "organisation_id": w.ids["org_id"],
        },
    )
    return {"review_id": made["review"]["id"]}


async def fresh_review_of_mine(w: World, who: Account, role: Role) -> dict[str, str]:
    """A review, with no reply yet, of A's listing: by a new organisation of the third
    tenant's that subscribed and called it."""
    c = compute(w)
    org = await c.ok(
        "POST", "/organisations", c.stranger, json={"name": f"Org {uuid.uuid4().hex[:8]}"}
    )
    subscribed = await c.ok(
        "POST",
        f"/marketplace/listings/{c.ids['listing_id']}/subscribe",
        c.stranger,
        json={"plan_id": c.ids["plan_id"], "organisation_id": org["id"]},
    )
    await record_call(c, subscribed["subscription"]["id"])
    made = await c.ok(
        "POST",
        "/marketplace/reviews",
        c.stranger,
        json={
            "listing_id": c.ids["listing_id"],
            "stars": 3,
            "text": "Walked",
            "organisation_id": org["id"],
        },
    )
    return {"review_id": made["review"]["id"]}


async def _billing_world(w: ComputeWorld, app: Any) -> None:
    """Earnings of A's reseller (revenue, as its margins would give it), a quote and
    a pending payout; and the SKU the price routes take."""
    from nefos.billing import ledger
    from nefos.db.session import begin_write
    from nefos.services.billing import BillingService

    core = app.state.core
    async with core.db.sessionmaker() as session:
        await begin_write(session)
        wallet = await BillingService(core, session).wallet(w.ids["org_id"])
        await ledger.post(session, wallet, "revenue", Decimal(1000), key="walked")
        await session.commit()
    w.ids.update(await fresh_quote(w, w.owner, Role.OWNER))
    w.ids.update(await fresh_payout(w, w.owner, Role.OWNER))
    w.ids["sku"] = "vcpu_hour"
    w.ids["group"] = "containers"


async def fresh_quote(w: World, who: Account, role: Role) -> dict[str, str]:
    """An open quote of a container (that fails at once, see NO_IMAGE) in A's project."""
    quote = await w.ok(
        "POST",
        "/quotes",
        w.owner,
        json={
            "name": f"q-{uuid.uuid4().hex[:10]}",
            "items": [QUOTED],
            "project_id": w.ids["project_id"],
        },
    )
    return {"quote_id": quote["id"]}


async def fresh_payout(w: World, who: Account, role: Role) -> dict[str, str]:
    """A pending payout of A's reseller's earnings (to settle or reject)."""
    payout = await w.ok(
        "POST",
        "/billing/payout-request",
        w.owner,
        json={"amount": "10.00", "organisation_id": w.ids["org_id"]},
    )
    return {"payout_id": payout["id"]}


async def _invoice_world(w: ComputeWorld, app: Any) -> None:
    """A finalized invoice of A's organisation: ten vCPU-hours in January 2025."""
    from datetime import UTC, datetime

    from sqlalchemy import insert

    from nefos.billing import catalogue
    from nefos.db.models import UsageRecord
    from nefos.db.session import begin_write

    core = app.state.core
    start = datetime(2025, 1, 10, tzinfo=UTC)
    async with core.db.sessionmaker() as session:
        await begin_write(session)
        await catalogue.ensure_defaults(session, core.settings.billing_currency)
        await session.execute(
            insert(UsageRecord).values(
                id=str(uuid.uuid4()),
                key=f"container:walked:{start.isoformat()}",
                organisation_id=w.ids["org_id"],
                project_id=w.project,
                resource_kind="container",
                resource_id=w.ids["container_id"],
                resource_name="walked",
                state="running",
                started_at=start,
                ended_at=datetime(2025, 1, 10, 10, tzinfo=UTC),
                seconds=36000,
                cpu_milli=1000,
                memory_mb=0,
                storage_gb=0,
                instances=1,
                network_bytes=0,
                created_at=start,
            )
        )
        await session.commit()
    body = {
        "organisation_id": w.ids["org_id"],
        "period_start": "2025-01-01T00:00:00Z",
        "period_end": "2025-02-01T00:00:00Z",
    }
    made = await w.ok("POST", "/invoices", w.admin, json=body)
    await w.ok("POST", f"/invoices/{made['id']}/finalize", w.admin)
    w.ids["invoice_id"] = made["id"]


_invoice_days = itertools.count()


async def fresh_draft_invoice(w: World, who: Account, role: Role) -> dict[str, str]:
    """A draft invoice of A's organisation for a past day of its own."""
    day = datetime(2020, 1, 1, tzinfo=UTC) + timedelta(days=next(_invoice_days))
    body = {
        "organisation_id": w.ids["org_id"],
        "period_start": day.isoformat(),
        "period_end": (day + timedelta(days=1)).isoformat(),
    }
    made = await w.ok("POST", "/invoices", compute(w).admin, json=body)
    return {"invoice_id": made["id"]}


async def fresh_host(w: World, who: Account, role: Role) -> dict[str, str]:
    assert isinstance(w, ComputeWorld)
    host = await w.ok(
        "POST",
        "/resources/hosts",
        w.admin,
        json={"hostname": f"doomed-{uuid.uuid4().hex[:8]}", "uri": DEAD_ENGINE},
    )
    return {"host_id": host["id"]}


async def fresh_api(w: World, who: Account, role: Role) -> dict[str, str]:
    """An API of A's project whose deployment has ended (its image is nowhere, so it
    failed at once)."""
    data = await w.ok(
        "POST",
        "/apis",
        w.owner,
        json={
            "name": f"a-{uuid.uuid4().hex[:10]}",
            "image": NO_IMAGE,
            "port": 8080,
            "resources": TINY,
            "project_id": w.ids["project_id"],
        },
    )
    op = await wait_operation(w.client, w.owner.headers, data["operation"])
    assert op["status"] == "failed", op
    return {"api_id": data["api_id"]}


async def fresh_rollbackable(w: World, who: Account, role: Role) -> dict[str, str]:
    """An API of A's project with two deployments that succeeded (so a rollback has
    one to go back to): made on the test image, then given a new environment."""
    data = await w.ok(
        "POST",
        "/apis",
        w.owner,
        json={
            "name": f"r-{uuid.uuid4().hex[:10]}",
            "image": TEST_IMAGE,
            "port": 8080,
            "health_check_path": "/",
            "resources": TINY,
            "project_id": w.ids["project_id"],
        },
    )
    op = await wait_operation(w.client, w.owner.headers, data["operation"])
    assert op["status"] == "succeeded", op
    put = await w.ok(
        "PUT", f"/apis/{data['api_id']}", w.owner, json={"environment": {"ROUND": "2"}}
    )
    op = await wait_operation(w.client, w.owner.headers, put["operation"])
    assert op["status"] == "succeeded", op
    return {"api_id": data["api_id"]}


async def fresh_listing(w: World, who: Account, role: Role) -> dict[str, str]:
    """A listing (with one free plan) of a fresh API of A's, that no one subscribes to."""
    api = await fresh_api(w, who, role)
    listed = await w.ok(
        "POST",
        "/marketplace/publish",
        w.owner,
        json={
            "api_id": api["api_id"],
            "title": "Fresh",
            "category": "tools",
            "plans": [{"name": "Free", "model": "free"}],
        },
    )
    return {"listing_id": listed["listing"]["id"], "plan_id": listed["listing"]["plans"][0]["id"]}


async def fresh_listing_invitation(w: World, who: Account, role: Role) -> dict[str, str]:
    """An invitation of a new address to A's listing (to revoke)."""
    made = await w.ok(
        "POST",
        f"/marketplace/listings/{w.ids['listing_id']}/invitations",
        w.owner,
        json={"email": f"guest-{uuid.uuid4().hex[:10]}@example.com"},
    )
    return {"invitation_id": made["invitation"]["id"]}


async def fresh_listing_token(w: World, who: Account, role: Role) -> dict[str, str]:
    """A pending invitation of ``who``'s address to A's listing: its token, for
    ``who`` to accept (one refused to an earlier call is revoked first)."""
    invitations = f"/marketplace/listings/{w.ids['listing_id']}/invitations"
    for _ in range(2):
        r = await w.client.post(
            f"/api/v1{invitations}", json={"email": who.email}, headers=w.owner.headers
        )
        if r.status_code == 409:
            pending = r.json()["error"]["details"]["invitation_id"]
            await w.ok("DELETE", f"{invitations}/{pending}", w.owner)
            continue
        assert r.status_code == 201, r.text
        return {"listing_token": r.json()["data"]["invitation"]["token"]}
    raise AssertionError("no invitation for the call")


async def fresh_subscription(w: World, who: Account, role: Role) -> dict[str, str]:
    """A's reseller's subscription to a fresh listing (to cancel)."""
    listing = await fresh_listing(w, who, role)
    subscribed = await w.ok(
        "POST",
        f"/marketplace/listings/{listing['listing_id']}/subscribe",
        w.owner,
        json={"plan_id": listing["plan_id"], "organisation_id": w.ids["org_id"]},
    )
    return {"subscription_id": subscribed["subscription"]["id"]}


async def fresh_subscription_key(w: World, who: Account, role: Role) -> dict[str, str]:
    """A new key of A's reseller's subscription (to revoke)."""
    made = await w.ok(
        "POST", f"/marketplace/subscriptions/{w.ids['subscription_id']}/keys", w.owner
    )
    return {"key_id": made["key"]["id"]}


async def fresh_container(w: World, who: Account, role: Role) -> dict[str, str]:
    """A container of A's project with no operation in progress (so a write on it is
    not refused as busy)."""
    data = await w.ok(
        "POST",
        "/containers",
        w.owner,
        json={
            "name": f"c-{uuid.uuid4().hex[:10]}",
            "image": NO_IMAGE,
            "resources": TINY,
            "project_id": w.ids["project_id"],
        },
    )
    op = await wait_operation(w.client, w.owner.headers, data["operation"])
    assert op["status"] == "failed", op
    return {"container_id": data["container_id"]}


def compute(w: World) -> ComputeWorld:
    assert isinstance(w, ComputeWorld)
    return w


async def fresh_settled(w: World, who: Account, role: Role) -> dict[str, str]:
    """The walked objects, idle (a write on an object busy with the operation an
    earlier call started is refused as busy)."""
    await compute(w).settle()
    return {}


async def fresh_running_vm(w: World, who: Account, role: Role) -> dict[str, str]:
    await compute(w).settle()
    return {"vm_id": compute(w).running_vm_id}


async def fresh_room(w: World, who: Account, role: Role) -> dict[str, str]:
    """Room on the libvirt host for the VM the call makes."""
    await compute(w).make_room()
    return {}


async def fresh_vm(w: World, who: Account, role: Role) -> dict[str, str]:
    """A VM of A's project whose create failed (no domain): idle and deletable."""
    c = compute(w)
    await c.make_room()
    made = await c.new_vm(f"vm-{uuid.uuid4().hex[:10]}", c.ids["image_id"])
    assert made["op"]["status"] == "failed", made["op"]
    return {"vm_id": made["vm_id"]}


async def fresh_image(w: World, who: Account, role: Role) -> dict[str, str]:
    made = await compute(w).upload(f"img-{uuid.uuid4().hex[:10]}", "kernel", GREEDY_KERNEL)
    return {"image_id": made["image_id"]}


async def fresh_snapshot(w: World, who: Account, role: Role) -> dict[str, str]:
    c = compute(w)
    await c.settle()
    made = await c.accepted("POST", f"/vms/{c.ids['vm_id']}/snapshots", json={})
    await c.settle()
    return {"snapshot_id": made["snapshot_id"]}


async def fresh_backup(w: World, who: Account, role: Role) -> dict[str, str]:
    c = compute(w)
    await c.settle()
    made = await c.accepted(
        "POST", "/backups", json={"vm_id": c.ids["vm_id"], "name": f"b-{uuid.uuid4().hex[:10]}"}
    )
    await c.settle()
    return {"backup_id": made["backup_id"]}


async def _new_volume(w: World, **extra: Any) -> dict[str, str]:
    c = compute(w)
    await c.settle()
    body = {"name": f"v-{uuid.uuid4().hex[:10]}", "size_gb": 1, "project_id": c.project}
    made = await c.accepted("POST", "/volumes", json={**body, **extra})
    await c.settle()
    return {"volume_id": made["volume_id"]}


async def fresh_volume(w: World, who: Account, role: Role) -> dict[str, str]:
    """An available volume on the libvirt host (where the walked VM is)."""
    return await _new_volume(w)


async def fresh_attached_volume(w: World, who: Account, role: Role) -> dict[str, str]:
    """A volume attached to the walked (stopped) VM."""
    return await _new_volume(w, vm_id=w.ids["vm_id"])


async def fresh_network(w: World, who: Account, role: Role) -> dict[str, str]:
    c = compute(w)
    network = await c.ok(
        "POST",
        "/networks",
        c.owner,
        json={"name": f"n-{uuid.uuid4().hex[:10]}", "project_id": c.project},
    )
    return {"network_id": network["id"]}


@dataclass(frozen=True)
class Sample:
    json: Any = None
    query: dict[str, Any] | None = None
    # A multipart/form-data body: its fields, and its files {part: (filename, bytes)}.
    form: dict[str, Any] | None = None
    files: dict[str, tuple[str, bytes]] | None = None
    # Makes the objects a destructive call consumes, so that each role's call
    # meets a live target: {id name: id}.
    fresh: Fresh | None = None
    # The role check applies to the organisation named in the body (no path target).
    role_checked: bool = False
    # What another tenant gets for A's ids (and for random ones).
    other_status: int = 404


NEW_PROJECT = Sample(
    json={"name": Unique("p-{}"), "organisation_id": Ref("org_id")}, role_checked=True
)
PROJECTS_OF_ORG = Sample(query={"organisation_id": Ref("org_id")}, other_status=200)

OF_PROJECT = Sample(query={"project_id": Ref("project_id")}, role_checked=True)
OF_ORG = Sample(query={"organisation_id": Ref("org_id")}, role_checked=True)
# Lists of a project filtered by VM: another tenant naming A's VM in its own project
# filters to nothing, like a random id; naming A's project is a 404.
OF_VM = Sample(query={"project_id": Ref("project_id"), "vm_id": Ref("vm_id")}, role_checked=True)
NEW_VM = Sample(
    json={
        "name": Unique("vm-{}"),
        "image_id": Ref("image_id"),
        **SMALL_VM,
        "network_id": Ref("network_id"),
        "project_id": Ref("project_id"),
    },
    fresh=fresh_room,
    role_checked=True,
)

SAMPLES: dict[tuple[str, str], Sample] = {
    ("PUT", "/users/profile"): Sample(json={"name": "Renamed"}),
    ("PUT", "/users/settings"): Sample(json={"default_project_id": Ref("project_id")}),
    ("PUT", "/users/password"): Sample(
        json={"current_password": "not-the-password", "new_password": "another-horse-battery"}
    ),
    ("POST", "/admin/users"): Sample(
        json={"email": Unique("made-{}@example.com"), "password": PASSWORD}
    ),
    ("GET", "/admin/users/{user_id}"): Sample(other_status=403),
    ("PATCH", "/admin/users/{user_id}"): Sample(json={"name": "Renamed"}, other_status=403),
    ("POST", "/organisations"): Sample(json={"name": Unique("Org {}")}),
    ("PUT", "/organisations/{org_id}"): Sample(json={"description": "Updated"}),
    ("DELETE", "/organisations/{org_id}"): Sample(fresh=fresh_org),
    ("POST", "/organisations/{org_id}/children"): Sample(json={"name": Unique("Customer {}")}),
    ("POST", "/organisations/{org_id}/members"): Sample(
        json={"email": Ref("outsider_email"), "role": "viewer"}, fresh=fresh_outsider
    ),
    ("PUT", "/organisations/{org_id}/members/{user_id}"): Sample(json={"role": "member"}),
    ("DELETE", "/organisations/{org_id}/members/{user_id}"): Sample(fresh=fresh_member),
    ("POST", "/organisations/{org_id}/invitations"): Sample(
        json={"email": Unique("invitee-{}@example.com"), "role": "member"}
    ),
    ("DELETE", "/organisations/{org_id}/invitations/{invitation_id}"): Sample(
        fresh=fresh_invitation
    ),
    ("POST", "/invitations/accept"): Sample(json={"token": Ref("token")}),
    ("GET", "/projects"): PROJECTS_OF_ORG,
    ("GET", "/project"): PROJECTS_OF_ORG,
    ("POST", "/projects"): NEW_PROJECT,
    ("POST", "/project"): NEW_PROJECT,
    ("PUT", "/projects/{project_id}"): Sample(json={"description": "Updated"}),
    ("DELETE", "/projects/{project_id}"): Sample(fresh=fresh_project),
    ("PUT", "/projects/{project_id}/quotas"): Sample(json={"instances": 7}),
    ("POST", "/api-keys"): Sample(
        json={"name": "k", "scopes": ["org:read"], "organisation_id": Ref("org_id")}
    ),
    ("POST", "/resources/hosts"): Sample(
        json={"hostname": Unique("host-{}"), "driver": "docker", "uri": DEAD_ENGINE}
    ),
    ("GET", "/resources/hosts/{host_id}"): Sample(other_status=403),
    ("DELETE", "/resources/hosts/{host_id}"): Sample(fresh=fresh_host, other_status=403),
    ("POST", "/hosts"): Sample(
        json={"hostname": Unique("host-{}"), "driver": "docker", "uri": DEAD_ENGINE}
    ),
    ("GET", "/hosts/{host_id}"): Sample(other_status=403),
    ("DELETE", "/hosts/{host_id}"): Sample(fresh=fresh_host, other_status=403),
    ("GET", "/containers"): Sample(query={"project_id": Ref("project_id")}, role_checked=True),
    ("POST", "/containers"): Sample(
        json={
            "name": Unique("c-{}"),
            "image": NO_IMAGE,
            "resources": TINY,
            "project_id": Ref("project_id"),
        },
        role_checked=True,
    ),
    ("GET", "/containers/{container_id}"): Sample(role_checked=True),
    ("GET", "/containers/{container_id}/logs"): Sample(role_checked=True),
    ("PUT", "/containers/{container_id}"): Sample(
        json={"environment": {"NEW": "1"}}, fresh=fresh_container, role_checked=True
    ),
    ("PUT", "/containers/{container_id}/start"): Sample(fresh=fresh_container, role_checked=True),
    ("PUT", "/containers/{container_id}/stop"): Sample(fresh=fresh_container, role_checked=True),
    ("POST", "/containers/{container_id}/scale"): Sample(
        json={"replicas": 2}, fresh=fresh_container, role_checked=True
    ),
    ("DELETE", "/containers/{container_id}"): Sample(fresh=fresh_container, role_checked=True),
    ("GET", "/services"): Sample(query={"project_id": Ref("project_id")}, role_checked=True),
    ("GET", "/services/{service_id}"): Sample(role_checked=True),
    ("PUT", "/services/{service_id}"): Sample(json={"version": "2.0.0"}, role_checked=True),
    ("GET", "/apis"): Sample(query={"project_id": Ref("project_id")}, role_checked=True),
    ("POST", "/apis"): Sample(
        json={
            "name": Unique("a-{}"),
            "image": NO_IMAGE,
            "port": 8080,
            "resources": TINY,
            "project_id": Ref("project_id"),
        },
        role_checked=True,
    ),
    ("GET", "/apis/{api_id}"): Sample(role_checked=True),
    ("PUT", "/apis/{api_id}"): Sample(json={"description": "walked"}, role_checked=True),
    ("DELETE", "/apis/{api_id}"): Sample(fresh=fresh_api, role_checked=True),
    ("GET", "/apis/{api_id}/deployments"): Sample(role_checked=True),
    ("POST", "/apis/{api_id}/rollback"): Sample(fresh=fresh_rollbackable, role_checked=True),
    ("GET", "/apis/{api_id}/openapi"): Sample(role_checked=True),
    ("GET", "/apis/{api_id}/logs"): Sample(role_checked=True),
    ("GET", "/apis/{api_id}/metrics"): Sample(role_checked=True),
    ("POST", "/marketplace/publish"): Sample(
        json={
            "api_id": Ref("api_id"),
            "title": "Walked",
            "category": "tools",
            "plans": [{"name": "Free", "model": "free"}],
        },
        fresh=fresh_api,
        role_checked=True,
    ),
    ("PUT", "/marketplace/listings/{listing_id}"): Sample(
        json={"title": "Walked again"}, role_checked=True
    ),
    ("POST", "/marketplace/listings/{listing_id}/invitations"): Sample(
        json={"email": Unique("guest-{}@example.com")}, role_checked=True
    ),
    ("GET", "/marketplace/listings/{listing_id}/invitations"): Sample(role_checked=True),
    ("DELETE", "/marketplace/listings/{listing_id}/invitations/{invitation_id}"): Sample(
        fresh=fresh_listing_invitation, role_checked=True
    ),
    # Each role accepts an invitation of its own address, for A's organisation (the
    # seller's own: harmless). Another tenant naming A's organisation gets its 404.
    ("POST", "/marketplace/invitations/accept"): Sample(
        json={"token": Ref("listing_token"), "organisation_id": Ref("org_id")},
        fresh=fresh_listing_token,
        role_checked=True,
    ),
    # Another tenant naming A's organisation gets its 404 before any listing is read.
    ("POST", "/marketplace/listings/{listing_id}/subscribe"): Sample(
        json={"plan_id": Ref("plan_id"), "organisation_id": Ref("org_id")},
        fresh=fresh_listing,
        role_checked=True,
    ),
    ("GET", "/marketplace/subscriptions"): OF_ORG,
    ("GET", "/marketplace/subscriptions/{subscription_id}"): Sample(role_checked=True),
    ("GET", "/marketplace/subscriptions/{subscription_id}/usage"): Sample(role_checked=True),
    # The plan it holds already: a change that changes nothing, for every role.
    ("PUT", "/marketplace/subscriptions/{subscription_id}"): Sample(
        json={"plan_id": Ref("plan_id")}, role_checked=True
    ),
    ("DELETE", "/marketplace/subscriptions/{subscription_id}"): Sample(
        fresh=fresh_subscription, role_checked=True
    ),
    # A rotation at once: the walk's new keys never pile up to the cap.
    ("POST", "/marketplace/subscriptions/{subscription_id}/keys"): Sample(
        json={"rotate": True, "overlap_seconds": 0}, role_checked=True
    ),
    ("DELETE", "/marketplace/subscriptions/{subscription_id}/keys/{key_id}"): Sample(
        fresh=fresh_subscription_key, role_checked=True
    ),
    # Another tenant naming A's organisation gets its 404 before any listing is read.
    ("POST", "/marketplace/reviews"): Sample(
        json={
            "listing_id": Ref("reviewed_listing_id"),
            "stars": 5,
            "text": "Walked again",
            "organisation_id": Ref("org_id"),
        },
        role_checked=True,
    ),
    ("PUT", "/marketplace/reviews/{review_id}"): Sample(
        json={"stars": 3}, fresh=fresh_review, role_checked=True
    ),
    ("DELETE", "/marketplace/reviews/{review_id}"): Sample(fresh=fresh_review, role_checked=True),
    # A review of A's listing, for each call its own (a reply is once).
    ("POST", "/marketplace/reviews/{review_id}/reply"): Sample(
        json={"text": "Thanks"}, fresh=fresh_review_of_mine, role_checked=True
    ),
    ("POST", "/services/{service_id}/instances/{instance_id}/maintenance"): Sample(
        json={"enabled": False}, role_checked=True
    ),
    # Another tenant's resource id filters to nothing, like a random one.
    ("GET", "/operations"): Sample(query={"resource_id": Ref("container_id")}, other_status=200),
    ("GET", "/operations/{operation_id}"): Sample(role_checked=True),
    # Only a pending operation can be cancelled and workers claim them at once, so
    # the roles' walk cannot meet one here; test_containers checks viewers get 403.
    ("DELETE", "/operations/{operation_id}"): Sample(),
    # VMs. Those the calls make boot the walked image, which fails at once (see
    # GREEDY_KERNEL); each VM-making call first deletes the VMs earlier ones made.
    ("GET", "/vms"): OF_PROJECT,
    ("POST", "/vms"): NEW_VM,
    ("GET", "/vms/{vm_id}"): Sample(role_checked=True),
    ("PUT", "/vms/{vm_id}"): Sample(json={"name": Unique("vm-{}")}, role_checked=True),
    ("DELETE", "/vms/{vm_id}"): Sample(fresh=fresh_vm, role_checked=True),
    ("POST", "/vms/{vm_id}/start"): Sample(fresh=fresh_running_vm, role_checked=True),
    ("POST", "/vms/{vm_id}/stop"): Sample(
        json={"force": True}, fresh=fresh_settled, role_checked=True
    ),
    ("POST", "/vms/{vm_id}/reboot"): Sample(
        json={"hard": True}, fresh=fresh_running_vm, role_checked=True
    ),
    ("GET", "/vms/{vm_id}/console"): Sample(query={"tail": 10}, role_checked=True),
    ("GET", "/compute/instances"): OF_PROJECT,
    ("POST", "/compute/instances"): NEW_VM,
    # Images. The walked one is A's own (uploaded, project-private); a public image
    # (project_id null) is everyone's to read, see test_public_images_*.
    ("GET", "/images"): OF_PROJECT,
    ("POST", "/images"): Sample(
        # A VM image from a server path takes a platform admin; a reference does not.
        json={
            "name": Unique("img-{}"),
            "kind": "container",
            "reference": NO_IMAGE,
            "project_id": Ref("project_id"),
        },
        role_checked=True,
    ),
    ("POST", "/images/upload"): Sample(
        query={"project_id": Ref("project_id")},
        form={"name": Unique("img-{}")},
        files={"kernel": ("vmlinuz", GREEDY_KERNEL)},
        role_checked=True,
    ),
    ("GET", "/images/{image_id}"): Sample(role_checked=True),
    ("DELETE", "/images/{image_id}"): Sample(fresh=fresh_image, role_checked=True),
    # Snapshots and backups of the walked stopped VM.
    ("GET", "/snapshots"): OF_VM,
    ("POST", "/snapshots"): Sample(
        json={"vm_id": Ref("vm_id"), "name": Unique("s-{}")},
        fresh=fresh_settled,
        role_checked=True,
    ),
    ("GET", "/snapshots/{snapshot_id}"): Sample(role_checked=True),
    ("POST", "/snapshots/{snapshot_id}/restore"): Sample(fresh=fresh_settled, role_checked=True),
    ("POST", "/snapshots/{snapshot_id}/revert"): Sample(fresh=fresh_settled, role_checked=True),
    ("DELETE", "/snapshots/{snapshot_id}"): Sample(fresh=fresh_snapshot, role_checked=True),
    ("GET", "/vms/{vm_id}/snapshots"): Sample(role_checked=True),
    ("POST", "/vms/{vm_id}/snapshots"): Sample(
        json={"name": Unique("s-{}")}, fresh=fresh_settled, role_checked=True
    ),
    ("GET", "/backups"): OF_VM,
    ("GET", "/compute/backups"): OF_VM,
    ("POST", "/backups"): Sample(
        json={"vm_id": Ref("vm_id"), "name": Unique("b-{}")},
        fresh=fresh_settled,
        role_checked=True,
    ),
    ("GET", "/backups/{backup_id}"): Sample(role_checked=True),
    # A real VM (the backup's disk halts at once), on the walked network.
    ("POST", "/backups/{backup_id}/restore"): Sample(
        json={"name": Unique("vm-{}"), "memory_mb": 64, "network_id": Ref("network_id")},
        fresh=fresh_room,
        role_checked=True,
    ),
    ("DELETE", "/backups/{backup_id}"): Sample(fresh=fresh_backup, role_checked=True),
    # Volumes: the walked one is available; those the calls attach go to the walked
    # stopped VM.
    ("GET", "/volumes"): OF_VM,
    ("POST", "/volumes"): Sample(
        json={
            "name": Unique("v-{}"),
            "size_gb": 1,
            "vm_id": Ref("vm_id"),
            "project_id": Ref("project_id"),
        },
        fresh=fresh_settled,
        role_checked=True,
    ),
    ("GET", "/volumes/{volume_id}"): Sample(role_checked=True),
    ("POST", "/volumes/{volume_id}/attach"): Sample(
        json={"vm_id": Ref("vm_id")}, fresh=fresh_volume, role_checked=True
    ),
    ("POST", "/volumes/{volume_id}/detach"): Sample(fresh=fresh_attached_volume, role_checked=True),
    ("POST", "/volumes/{volume_id}/resize"): Sample(
        json={"size_gb": 2}, fresh=fresh_volume, role_checked=True
    ),
    ("DELETE", "/volumes/{volume_id}"): Sample(fresh=fresh_volume, role_checked=True),
    # Networks are records until a VM joins one on a host.
    ("GET", "/networks"): OF_PROJECT,
    ("POST", "/networks"): Sample(
        json={"name": Unique("n-{}"), "project_id": Ref("project_id")}, role_checked=True
    ),
    ("GET", "/networks/{network_id}"): Sample(role_checked=True),
    ("DELETE", "/networks/{network_id}"): Sample(fresh=fresh_network, role_checked=True),
    # Alert rules, alerts and webhooks of A's project (see _monitoring_world).
    ("GET", "/monitoring/alert-rules"): OF_PROJECT,
    ("POST", "/monitoring/alert-rules"): Sample(
        json={
            "name": Unique("r-{}"),
            "metric": "cpu_percent",
            "threshold": 90,
            "project_id": Ref("project_id"),
        },
        role_checked=True,
    ),
    ("GET", "/monitoring/alert-rules/{rule_id}"): Sample(role_checked=True),
    ("PUT", "/monitoring/alert-rules/{rule_id}"): Sample(
        json={"description": "Updated"}, role_checked=True
    ),
    ("DELETE", "/monitoring/alert-rules/{rule_id}"): Sample(fresh=fresh_rule, role_checked=True),
    ("GET", "/monitoring/alerts"): Sample(
        query={"project_id": Ref("project_id"), "rule_id": Ref("rule_id")}, role_checked=True
    ),
    ("GET", "/monitoring/alerts/{alert_id}"): Sample(role_checked=True),
    ("GET", "/monitoring/webhooks"): OF_PROJECT,
    ("POST", "/monitoring/webhooks"): Sample(
        json={"url": WALK_WEBHOOK, "project_id": Ref("project_id")}, role_checked=True
    ),
    ("GET", "/monitoring/webhooks/{webhook_id}"): Sample(role_checked=True),
    ("DELETE", "/monitoring/webhooks/{webhook_id}"): Sample(fresh=fresh_webhook, role_checked=True),
    ("GET", "/monitoring/webhooks/{webhook_id}/deliveries"): Sample(role_checked=True),
    ("POST", "/monitoring/webhooks/{webhook_id}/test"): Sample(role_checked=True),
    # Load tests of the walked (running) container, one second long; a cancel meets a
    # test of its own (see _loadtest_world).
    ("POST", "/testing/load"): Sample(
        json={"duration": 1, "users": 1, "target": Ref("container_id")}, role_checked=True
    ),
    ("GET", "/testing/results"): OF_PROJECT,
    ("GET", "/testing/results/{test_id}"): Sample(role_checked=True),
    ("DELETE", "/testing/results/{test_id}"): Sample(fresh=fresh_load_test, role_checked=True),
    ("GET", "/testing/scenarios"): OF_PROJECT,
    ("POST", "/testing/scenarios"): Sample(
        json={"name": Unique("s-{}"), "requests": [{"path": "/"}], "project_id": Ref("project_id")},
        role_checked=True,
    ),
    ("GET", "/testing/scenarios/{scenario_id}"): Sample(role_checked=True),
    ("PUT", "/testing/scenarios/{scenario_id}"): Sample(
        json={"description": "walked"}, role_checked=True
    ),
    ("DELETE", "/testing/scenarios/{scenario_id}"): Sample(fresh=fresh_scenario, role_checked=True),
    # Payments of A's organisation: bank transfers, and card payments on the walk's
    # Stripe stand-in to refresh.
    ("GET", "/payments"): Sample(query={"organisation_id": Ref("org_id")}, role_checked=True),
    ("POST", "/payments"): Sample(
        json={"amount": "5.00", "provider": "manual", "organisation_id": Ref("org_id")},
        role_checked=True,
    ),
    ("GET", "/payments/{payment_id}"): Sample(role_checked=True),
    ("POST", "/payments/{payment_id}/cancel"): Sample(fresh=fresh_payment, role_checked=True),
    ("POST", "/payments/{payment_id}/refresh"): Sample(fresh=fresh_card_payment, role_checked=True),
    # How the platform takes money: the same for everyone.
    ("GET", "/payments/methods"): Sample(other_status=200),
    ("POST", "/payments/{payment_id}/confirm"): Sample(fresh=fresh_payment, other_status=403),
    ("POST", "/payments/{payment_id}/fail"): Sample(fresh=fresh_payment, other_status=403),
    # An organisation admin's top-up is a payment to complete (a bank transfer here).
    ("POST", "/wallet/top-up"): Sample(
        json={"amount": "5.00", "organisation_id": Ref("org_id")}, role_checked=True
    ),
    # Invoices of A's organisation (see _invoice_world); drafts for a day of their own.
    ("GET", "/invoices"): Sample(query={"organisation_id": Ref("org_id")}, role_checked=True),
    ("POST", "/invoices"): Sample(
        json={
            "organisation_id": Ref("org_id"),
            "period_start": "2025-02-01T00:00:00Z",
            "period_end": "2025-03-01T00:00:00Z",
        },
        other_status=403,
    ),
    ("GET", "/invoices/{invoice_id}"): Sample(role_checked=True),
    ("GET", "/invoices/{invoice_id}/html"): Sample(role_checked=True),
    ("POST", "/invoices/{invoice_id}/finalize"): Sample(
        fresh=fresh_draft_invoice, other_status=403
    ),
    ("POST", "/invoices/{invoice_id}/void"): Sample(fresh=fresh_draft_invoice, other_status=403),
    ("POST", "/invoices/{invoice_id}/credit-notes"): Sample(
        json={"amount": "0.01", "reason": "The walk's credit"}, other_status=403
    ),
    ("GET", "/billing/history"): Sample(
        query={"organisation_id": Ref("org_id")}, role_checked=True
    ),
    ("GET", "/monitoring/vm-metrics/{vm_id}"): Sample(query={"hours": 1}, role_checked=True),
    ("GET", "/containers/{container_id}/metrics"): Sample(
        query={"period": "1h"}, role_checked=True
    ),
    ("GET", "/monitoring/host-metrics/{host_id}"): Sample(other_status=403),
    # Billing of A's reseller organisation: its catalogue and settings, its quotes (in
    # A's project), its payouts of the earnings _billing_world gave it.
    ("GET", "/products"): OF_ORG,
    ("GET", "/products/{sku}/history"): Sample(other_status=403),
    ("PUT", "/products/{sku}"): Sample(json={"unit_price": "0.05"}, other_status=403),
    ("DELETE", "/products/{sku}"): Sample(fresh=fresh_flavor, other_status=403),
    ("GET", "/billing/account"): OF_ORG,
    ("PUT", "/billing/account"): Sample(
        json={"low_balance_threshold": "5.00", "organisation_id": Ref("org_id")},
        role_checked=True,
    ),
    ("GET", "/quotes"): OF_ORG,
    ("POST", "/quotes"): Sample(
        json={
            "items": [QUOTED],
            "project_id": Ref("project_id"),
            "organisation_id": Ref("org_id"),
        },
        role_checked=True,
    ),
    ("GET", "/quotes/{quote_id}"): Sample(role_checked=True),
    ("POST", "/quotes/{quote_id}/accept"): Sample(
        json={"project_id": Ref("project_id")}, fresh=fresh_quote, role_checked=True
    ),
    ("GET", "/billing/payouts"): OF_ORG,
    ("GET", "/billing/payouts/{payout_id}"): Sample(role_checked=True),
    ("POST", "/billing/payout-request"): Sample(
        json={"amount": "10.00", "organisation_id": Ref("org_id")}, role_checked=True
    ),
    ("POST", "/billing/payouts/{payout_id}/settle"): Sample(
        json={"note": "walked"}, fresh=fresh_payout, other_status=403
    ),
    ("POST", "/billing/payouts/{payout_id}/reject"): Sample(
        json={"note": "walked"}, fresh=fresh_payout, other_status=403
    ),
    ("GET", "/billing/overview"): OF_ORG,
    ("GET", "/billing/transactions"): OF_ORG,
    ("GET", "/billing/subscription"): OF_ORG,
    ("GET", "/wallet"): OF_ORG,
    ("GET", "/admin/organisations/{org_id}/rate-limits"): Sample(other_status=403),
    ("PUT", "/admin/organisations/{org_id}/rate-limits"): Sample(
        json={"limits": {"containers": "500/minute"}}, other_status=403
    ),
    ("DELETE", "/admin/organisations/{org_id}/rate-limits/{group}"): Sample(other_status=403),
    ("GET", "/analytics/overview"): OF_ORG,
    ("GET", "/analytics/traffic"): OF_ORG,
    ("GET", "/analytics/performance"): OF_ORG,
    ("GET", "/analytics/geography"): OF_ORG,
    ("GET", "/wallet/ledger"): OF_ORG,
    ("GET", "/billing/summary"): OF_ORG,
    ("GET", "/billing/containers/{container_id}/usage"): Sample(role_checked=True),
    ("GET", "/billing/vms/{vm_id}/usage"): Sample(role_checked=True),
}

# Fields named like ids that are not lookups of a tenant's object, and why.
NOT_TENANT_LOOKUPS = {
    ("POST", "/organisations/{org_id}/members", "user_id"): (
        "refused with a 422 whatever it names (members are invited by e-mail and join "
        "by accepting); the access check is on the organisation in the path"
    ),
    ("GET", "/containers", "user_id"): (
        "filters the containers of a project the caller may read by their creator; it "
        "looks nothing up"
    ),
    ("POST", "/vms/{vm_id}/snapshots", "vm_id"): (
        "ignored: the path names the VM (the field is for POST /snapshots)"
    ),
    ("POST", "/monitoring/alert-rules", "resource_id"): (
        "narrows the rule to samples of that resource in the rule's own project; it "
        "looks nothing up (another tenant's resource never matches)"
    ),
    ("PUT", "/monitoring/alert-rules/{rule_id}", "resource_id"): (
        "narrows the rule to samples of that resource in the rule's own project; it "
        "looks nothing up (another tenant's resource never matches)"
    ),
    ("GET", "/monitoring/alerts", "resource_id"): (
        "filters the alerts of a project the caller may read by resource; it looks nothing up"
    ),
    ("POST", "/marketplace/listings/{listing_id}/invitations", "organisation_id"): (
        "names the organisation invited to the seller's listing, any organisation's id "
        "(the seller got it from its members); the access check is on the listing"
    ),
}


def sample_of(served: Served) -> Sample:
    return SAMPLES.get(served.key, Sample())


def random_ids() -> dict[str, str]:
    ids = {
        name: str(uuid.uuid4())
        for name in (
            "org_id",
            "project_id",
            "user_id",
            "invitation_id",
            "key_id",
            "session_id",
            "host_id",
            "container_id",
            "service_id",
            "instance_id",
            "api_id",
            "listing_id",
            "plan_id",
            "subscription_id",
            "review_id",
            "reviewed_listing_id",
            "operation_id",
            "vm_id",
            "image_id",
            "snapshot_id",
            "backup_id",
            "volume_id",
            "network_id",
            "rule_id",
            "alert_id",
            "webhook_id",
            "invoice_id",
            "quote_id",
            "payout_id",
            "payment_id",
            "test_id",
            "scenario_id",
        )
    }
    ids["token"] = "nfi_" + secrets.token_urlsafe(32)
    ids["listing_token"] = "nfl_" + secrets.token_urlsafe(32)
    ids["sku"] = f"flavor:random-{uuid.uuid4().hex[:10]}"
    ids["group"] = "user"
    ids["outsider_email"] = f"nobody-{uuid.uuid4().hex[:10]}@example.com"
    return ids


def resolve(value: Any, ids: dict[str, str]) -> Any:
    if isinstance(value, Ref):
        return ids[value.name]
    if isinstance(value, Unique):
        return value.pattern.format(uuid.uuid4().hex[:10])
    if isinstance(value, dict):
        return {k: resolve(v, ids) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve(v, ids) for v in value]
    return value


def refs(value: Any) -> set[str]:
    if isinstance(value, Ref):
        return {value.name}
    if isinstance(value, dict):
        return set().union(*(refs(v) for v in value.values()))
    if isinstance(value, list):
        return set().union(*(refs(v) for v in value))
    return set()


def id_names(served: Served) -> set[str]:
    """Every id the route accepts: path parameters and the sample's references."""
    sample = sample_of(served)
    return set(served.path_params) | refs(sample.json) | refs(sample.query) | refs(sample.form)


async def send(w: World, served: Served, headers: dict[str, str], ids: dict[str, str]) -> Any:
    sample = sample_of(served)
    path = re.sub(r"{(\w+)}", lambda m: ids[m.group(1)], served.path)
    kwargs: dict[str, Any] = {"headers": headers}
    if sample.json is not None:
        kwargs["json"] = resolve(sample.json, ids)
    if sample.query is not None:
        kwargs["params"] = resolve(sample.query, ids)
    if sample.form is not None:
        kwargs["data"] = resolve(sample.form, ids)
    if sample.files is not None:
        kwargs["files"] = sample.files
    return await w.client.request(served.method, path, **kwargs)


def body_types(served: Served) -> list[type[BaseModel]]:
    out = []
    for param in served.dependant.body_params:
        annotation = param.field_info.annotation
        union = get_origin(annotation) in (Union, UnionType)
        candidates = get_args(annotation) if union else (annotation,)
        out += [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
    return out


def test_samples_are_valid_and_cover_every_id(routes: list[Served]) -> None:
    """The samples keep up with the models: each is a valid body, every route with a
    required body has one, and every id-like field or query parameter is covered."""
    problems = []
    known = set(random_ids())
    for key in SAMPLES:
        if key not in MATRIX:
            problems.append(f"SAMPLES has {key}, which is not a route")
    for served in routes:
        if MATRIX.get(served.key, PUBLIC) == PUBLIC:
            continue
        sample = sample_of(served)
        form_params = [
            p for p in served.dependant.body_params if isinstance(p.field_info, FormParam)
        ]
        if form_params:  # multipart/form-data (File is a Form too)
            given = set(sample.form or {}) | set(sample.files or {})
            for p in form_params:
                if p.field_info.is_required() and p.alias not in given:
                    problems.append(f"{served}: form field {p.alias!r} is not in its sample")
        elif any(p.field_info.is_required() for p in served.dependant.body_params):
            if sample.json is None:
                problems.append(f"{served}: takes a body but SAMPLES has none")
            else:
                (param,) = served.dependant.body_params
                try:
                    TypeAdapter(param.field_info.annotation).validate_python(
                        resolve(sample.json, random_ids())
                    )
                except ValueError as exc:
                    problems.append(f"{served}: sample body is invalid: {exc}")
        for name in id_names(served) - known:
            problems.append(f"{served}: no real or random value for id {name!r}")
        id_fields = {
            name
            for model in body_types(served)
            for name in model.model_fields
            if name.endswith("_id")
        } | {
            q.name for d in walk(served.dependant) for q in d.query_params if q.name.endswith("_id")
        }
        for name in id_fields:
            covered = any(r.name == name for r in _ref_objects(sample))
            if not covered and (*served.key, name) not in NOT_TENANT_LOOKUPS:
                problems.append(f"{served}: id field {name!r} is not in its sample")
    assert problems == []


def _ref_objects(sample: Sample) -> Iterator[Ref]:
    def each(value: Any, field: str | None) -> Iterator[Ref]:
        if isinstance(value, Ref):
            yield Ref(field or value.name)
        elif isinstance(value, dict):
            for k, v in value.items():
                yield from each(v, k)
        elif isinstance(value, list):
            for v in value:
                yield from each(v, field)

    yield from each(sample.json, None)
    yield from each(sample.query, None)
    yield from each(sample.form, None)


# --- tenant isolation -----------------------------------------------------------------
def normalised(response: Any, ids: list[str]) -> Any:
    """The JSON body without its timestamp, each id of the request replaced by <id>."""

    def clean(value: Any) -> Any:
        if isinstance(value, str):
            for i in ids:
                value = value.replace(i, "<id>")
            return value
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items() if k != "timestamp"}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value

    return clean(response.json())


async def test_another_tenant_gets_what_a_random_id_gets(
    walk_world: ComputeWorld, routes: list[Served]
):
    w = walk_world
    failures = []
    checked = 0
    for served in routes:
        if MATRIX[served.key] == PUBLIC or not id_names(served):
            continue
        sample = sample_of(served)
        random = random_ids()
        # (label, A's ids, random ids, what B gets: None for "what a random id gets")
        cases: list[tuple[str, dict[str, str], dict[str, str], int | None]] = [
            ("A's ids", dict(w.ids), random, sample.other_status)
        ]
        # Inner ids (a member, an invitation) looked up in B's own organisation.
        if len(served.path_params) > 1 and served.path_params[0] == "org_id":
            cases.append(
                (
                    "B's org, A's inner id",
                    {**w.ids, "org_id": w.b_org_id},
                    {**random, "org_id": w.b_org_id},
                    sample.other_status,
                )
            )
        # Inner ids (an image, a network, a VM) named with B's own project.
        body_ids = refs(sample.json) | refs(sample.query) | refs(sample.form)
        if "project_id" in body_ids and len(id_names(served)) > 1:
            cases.append(
                (
                    "B's project, A's inner ids",
                    {**w.ids, "project_id": w.other.project_id},
                    {**random, "project_id": w.other.project_id},
                    None,
                )
            )
        for label, real, fake, expected in cases:
            checked += 1
            r_real = await send(w, served, w.other.headers, real)
            r_fake = await send(w, served, w.other.headers, fake)
            used = [*real.values(), *fake.values()]
            if r_real.status_code != (expected or r_fake.status_code) or r_real.is_server_error:
                failures.append(f"{served} [{label}]: B got {r_real.status_code} {r_real.text}")
            elif (r_real.status_code, normalised(r_real, used)) != (
                r_fake.status_code,
                normalised(r_fake, used),
            ):
                failures.append(
                    f"{served} [{label}]: A's ids give {r_real.status_code} {r_real.text}, "
                    f"random ids give {r_fake.status_code} {r_fake.text}"
                )
    assert checked >= 2 * 92
    assert failures == [], "\n".join(failures)


async def test_lists_never_show_another_tenants_objects(world: World) -> None:
    w = world
    for prefix in PREFIXES:
        for params in ({"limit": 500}, {"limit": 500, "all": "true"}):
            r = await w.client.get(
                f"{prefix}/organisations", headers=w.other.headers, params=params
            )
            seen = {o["id"] for o in r.json()["data"]["items"]}
            assert seen == {w.b_org_id}, (prefix, params)
        for path in ("/projects", "/project/"):
            r = await w.client.get(prefix + path, headers=w.other.headers, params={"limit": 500})
            seen = {p["id"] for p in r.json()["data"]["items"]}
            assert seen == {w.other.project_id}, (prefix, path)
        r = await w.client.get(f"{prefix}/api-keys", headers=w.other.headers)
        assert r.json()["data"]["items"] == []
        r = await w.client.get(f"{prefix}/invitations", headers=w.other.headers)
        assert r.json()["data"]["items"] == []

    # A viewer of the reseller sees it and its customer, never the owner's own space.
    viewer = w.roles[Role.VIEWER]
    r = await w.client.get("/api/v1/organisations", headers=viewer.headers)
    seen = {o["id"] for o in r.json()["data"]["items"]}
    assert w.personal_org_id not in seen and set(w.a_org_ids[1:]) <= seen
    r = await w.client.get("/api/v1/projects", headers=viewer.headers, params={"limit": 500})
    seen = {p["id"] for p in r.json()["data"]["items"]}
    assert w.owner.project_id not in seen and w.ids["project_id"] in seen


async def test_public_images_are_everyones_to_read_and_admins_to_write(
    world: World, admin: Account
) -> None:
    """A public image (project_id null) is the one object every caller sees: the walk
    uses a project's own image, so here is the other kind."""
    w = world
    made = await w.ok(
        "POST",
        "/images",
        admin,
        json={"name": "shared", "kind": "container", "reference": NO_IMAGE, "public": True},
    )
    image_id = made["image_id"]
    assert made["image"]["public"] is True and made["image"]["project_id"] is None
    for who in (w.owner, w.other, w.roles[Role.VIEWER]):
        got = await w.ok("GET", f"/images/{image_id}", who)
        assert got["id"] == image_id
        listed = await w.ok("GET", "/images", who, params={"limit": 500})
        assert image_id in {i["id"] for i in listed["items"]}
        for prefix in PREFIXES:
            r = await w.client.delete(f"{prefix}/images/{image_id}", headers=who.headers)
            assert is_forbidden(r), (who.email, r.text)
        # Nor can anyone but a platform admin make one.
        r = await w.client.post(
            "/api/v1/images",
            headers=who.headers,
            json={"name": "mine", "kind": "container", "reference": NO_IMAGE, "public": True},
        )
        assert is_forbidden(r), r.text
    # API-key scopes hold for public images too.
    reader = await w.api_key(w.other, ["compute:read"])
    assert (await w.client.get(f"/api/v1/images/{image_id}", headers=reader)).status_code == 200
    no_scope = await w.api_key(w.other, ["org:read"])
    r = await w.client.get(f"/api/v1/images/{image_id}", headers=no_scope)
    assert is_forbidden(r) and r.json()["error"]["details"]["required_scope"] == "compute:read"
    await w.ok("DELETE", f"/images/{image_id}", admin)
    r = await w.client.get(f"/api/v1/images/{image_id}", headers=w.other.headers)
    assert r.status_code == 404


async def test_logout_with_another_users_refresh_token_ends_only_my_session(
    world: World,
) -> None:
    w = world
    r = await w.client.post(
        "/api/v1/auth/logout",
        headers=w.other.headers,
        json={"refresh_token": w.owner.refresh_token},
    )
    assert r.status_code == 200
    assert (await w.client.get("/api/v1/auth/me", headers=w.other.headers)).status_code == 401
    assert (await w.client.get("/api/v1/auth/me", headers=w.owner.headers)).status_code == 200
    r = await w.client.post("/api/v1/auth/refresh", json={"refresh_token": w.owner.refresh_token})
    assert r.status_code == 200


# --- roles ------------------------------------------------------------------------------
def is_forbidden(response: Any) -> bool:
    return response.status_code == 403 and response.json()["error"]["code"] == "FORBIDDEN"


def canonical(routes: list[Served]) -> list[Served]:
    """The `/api/v1` routes. The walks that send real requests as every role and key
    run there only: an alias (`/api`, the root) serves the same endpoint with the
    same dependencies, which `test_matrix_and_routes_agree_both_ways` checks for
    every served route, so it grants exactly what its `/api/v1` twin grants."""
    return [s for s in routes if s.prefix == "/api/v1"]


async def test_each_role_gets_exactly_its_permissions(
    walk_world: ComputeWorld, routes: list[Served]
):
    w = walk_world
    failures = []
    checked = 0
    for served in canonical(routes):
        rule = MATRIX[served.key]
        sample = sample_of(served)
        if rule.permission is None or (rule.on is None and not sample.role_checked):
            continue
        for role in boundary_roles(rule.permission):
            who = w.roles[role]
            ids = dict(w.ids)
            if sample.fresh is not None:
                ids.update(await sample.fresh(w, who, role))
            r = await send(w, served, who.headers, ids)
            checked += 1
            if role_allows(role, rule.permission):
                if not r.is_success:
                    failures.append(f"{served} as {role}: allowed, got {r.status_code} {r.text}")
            elif not is_forbidden(r):
                failures.append(f"{served} as {role}: not allowed, got {r.status_code} {r.text}")
    assert checked >= 2 * 69
    assert failures == [], "\n".join(failures)


ROLE_ORDER = (Role.VIEWER, Role.MEMBER, Role.ADMIN, Role.OWNER)


def boundary_roles(permission: Permission) -> list[Role]:
    """The roles on each side of every change of the answer along the role order
    (the weaker is refused and the stronger allowed, or the reverse); the weakest and
    the strongest where the answer never changes. Roles are ordered
    (`test_each_role_holds_the_permissions_of_the_roles_under_it`), so the roles
    between two probes get the answer of both: the walk sends half the requests."""
    picked: set[Role] = set()
    for weaker, stronger in itertools.pairwise(ROLE_ORDER):
        if role_allows(weaker, permission) != role_allows(stronger, permission):
            picked |= {weaker, stronger}
    return [r for r in ROLE_ORDER if r in picked] or [ROLE_ORDER[0], ROLE_ORDER[-1]]


def test_each_role_holds_the_permissions_of_the_roles_under_it() -> None:
    for weaker, stronger in itertools.pairwise(ROLE_ORDER):
        assert ROLE_PERMISSIONS[weaker] <= ROLE_PERMISSIONS[stronger], (weaker, stronger)


async def test_admin_routes_refuse_all_but_platform_admins(
    walk_world: ComputeWorld, admin: Account, routes: list[Served]
) -> None:
    w = walk_world
    failures = []
    admin_routes = [s for s in routes if MATRIX[s.key] == ADMIN]
    # The hosts', users' and platform's views, confirming and failing payments, the
    # catalogue's prices, settling and rejecting payouts, and acting on invoices: each
    # served under /api/v1 and /api.
    assert len(admin_routes) == 2 * sum(rule == ADMIN for rule in MATRIX.values()) >= 2 * 18
    for served in admin_routes:
        for who in (w.owner, w.other, *w.roles.values()):
            r_real = await send(w, served, who.headers, w.ids)
            r_fake = await send(w, served, who.headers, random_ids())
            if not (is_forbidden(r_real) and is_forbidden(r_fake)):
                failures.append(
                    f"{served} as {who.email}: {r_real.status_code}, "
                    f"{r_fake.status_code} for a random id"
                )
            elif r_real.json()["error"] != r_fake.json()["error"]:
                failures.append(f"{served}: {r_real.text} differs from {r_fake.text}")
        ids = dict(w.ids)
        sample = sample_of(served)
        if sample.fresh is not None:
            ids.update(await sample.fresh(w, admin, Role.OWNER))
        r = await send(w, served, admin.headers, ids)
        if not r.is_success:
            failures.append(f"{served} as the platform admin: {r.status_code} {r.text}")
    assert failures == [], "\n".join(failures)


# --- API-key scopes ----------------------------------------------------------------------
async def test_api_key_scopes_bound_every_route(
    walk_world: ComputeWorld, admin: Account, routes: list[Served]
) -> None:
    """A key lacking the route's scope gets 403 naming the scope; for reads, a key
    holding only that scope gets through."""
    w = walk_world
    keys: dict[tuple[str, frozenset[str]], dict[str, str]] = {}

    async def key(who: Account, scopes: set[str]) -> dict[str, str]:
        k = (who.id, frozenset(scopes))
        if k not in keys:
            keys[k] = await w.api_key(who, sorted(scopes))
        return keys[k]

    failures = []
    checked = 0
    for served in canonical(routes):
        rule = MATRIX[served.key]
        if rule.permission is None:
            continue
        scope = rule.permission.scope.value
        # The admin scope is the platform admin's to hand out: test it with their keys.
        who = admin if rule == ADMIN else w.owner
        every = {s.value for s in ALL_SCOPES} - ({Scope.ADMIN.value} if who is w.owner else set())
        ids = dict(w.ids)
        sample = sample_of(served)
        if sample.fresh is not None:
            ids.update(await sample.fresh(w, w.roles[Role.OWNER], Role.OWNER))
        r = await send(w, served, await key(who, every - {scope}), ids)
        checked += 1
        if not is_forbidden(r) or r.json()["error"]["details"].get("required_scope") != scope:
            failures.append(f"{served} without {scope!r}: {r.status_code} {r.text}")
        if served.method == "GET":
            r = await send(w, served, await key(who, {scope}), ids)
            if not r.is_success:
                failures.append(f"{served} with only {scope!r}: {r.status_code} {r.text}")
    assert checked >= 97
    assert failures == [], "\n".join(failures)
