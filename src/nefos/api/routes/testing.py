"""Load tests (seed 004's ``/testing``): start one against one of your services,
follow it, cancel it; and the stored scenarios it may run.

A test lives in its target's project: reading it takes `compute.read` there,
starting or cancelling it `compute.write` (it sends traffic to the tenant's own
service). Another tenant's test, scenario or service is a 404.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from starlette.responses import Response

from nefos.api.deps import Access, CoreDep, ObjectId, PageDep, ProjectHint, SessionDep, authorize
from nefos.domain.access import Permission
from nefos.gateway.envelope import listing, ok
from nefos.schemas.common import Envelope, Message
from nefos.schemas.loadtests import (
    LoadTestAccepted,
    LoadTestCreate,
    LoadTestPublic,
    OperationRef,
    ScenarioCreate,
    ScenarioPublic,
    ScenarioUpdate,
)
from nefos.services.loadtests import (
    LoadTestService,
    operation_url,
    scenario_public,
    test_public,
)
from nefos.services.principal import resolve_project

router = APIRouter(prefix="/testing", tags=["testing"])

TestId = ObjectId
ScenarioId = ObjectId
StatusFilter = Annotated[
    str | None,
    Query(
        pattern="^(running|completed|failed|cancelled)$", description="Only tests in this status."
    ),
]
READ = Permission.COMPUTE_READ
WRITE = Permission.COMPUTE_WRITE


def _test(t: Any, **kw: Any) -> dict[str, Any]:
    data = LoadTestPublic.model_validate(test_public(t, **kw)).model_dump(mode="json")
    if "timeline" not in kw:
        data.pop("timeline")
        data.pop("histogram")
    return data


def _scenario(s: Any) -> ScenarioPublic:
    return ScenarioPublic.model_validate(scenario_public(s))


@router.post("/load", status_code=202, response_model=Envelope[LoadTestAccepted])
async def start_load_test(
    body: LoadTestCreate,
    core: CoreDep,
    session: SessionDep,
    access: Access = authorize(WRITE),
) -> Response:
    """Start a load test of `target` (one of your services: a container's id).
    Without `rate`, `users` virtual users ramp up linearly over `ramp_up_time` and
    each sends back-to-back (closed model); with `rate`, requests arrive at `rate`
    per second (open model; latency counted from each request's intended send time).
    Answers 202 with seed 004's `test_id`; follow `GET /testing/results/{test_id}`."""
    service = LoadTestService(core, session)
    test, op = await service.create(access.principal, body)
    accepted = LoadTestAccepted(
        test_id=test.id,
        status=test.status,
        scenario=test.scenario,
        started_at=test.started_at,
        target=test.target_id,
        operation=OperationRef(id=op.id, status=op.status, url=operation_url(op.id)),
    )
    headers = {"Location": f"/api/v1/testing/results/{test.id}"}
    return ok(accepted, 202, headers=headers)


@router.get("/results", response_model=Envelope[dict[str, Any]])
async def list_load_tests(
    core: CoreDep,
    session: SessionDep,
    params: PageDep,
    project_id: ProjectHint,
    status: StatusFilter = None,
    status_filter: StatusFilter = None,
    access: Access = authorize(READ),
) -> Response:
    """A project's load tests, newest first (without timelines and histograms)."""
    project, _ = await resolve_project(session, access.principal, project_id, READ)
    rows, total = await LoadTestService(core, session).list_page(
        project, params, status=status or status_filter
    )
    return listing([_test(t) for t in rows], "tests", total, params)


@router.get("/results/{test_id}", response_model=Envelope[LoadTestPublic])
async def get_load_test(
    test_id: TestId, core: CoreDep, session: SessionDep, access: Access = authorize(READ)
) -> Response:
    """Seed 004's results (partial while `running`), with p50/p90/p99.9/max, errors
    by status and kind, the per-second `timeline`, the thresholds' `verdict` and the
    encoded HDR `histogram`."""
    service = LoadTestService(core, session)
    test = await service.visible(access.principal, test_id, READ)
    timeline = await service.timeline(test.id)
    return ok(_test(test, timeline=timeline, full=True))


@router.delete("/results/{test_id}", response_model=Envelope[LoadTestPublic])
async def cancel_load_test(
    test_id: TestId, core: CoreDep, session: SessionDep, access: Access = authorize(WRITE)
) -> Response:
    """Cancel a running test: its generator is stopped within about a second and the
    test keeps what it measured (`status: cancelled`). An ended test is a 409."""
    service = LoadTestService(core, session)
    test = await service.visible(access.principal, test_id, WRITE)
    test = await service.cancel(test)
    return ok(_test(test, timeline=await service.timeline(test.id), full=True))


# --- scenarios -------------------------------------------------------------------------
@router.get("/scenarios", response_model=Envelope[dict[str, Any]])
async def list_scenarios(
    core: CoreDep,
    session: SessionDep,
    params: PageDep,
    project_id: ProjectHint,
    access: Access = authorize(READ),
) -> Response:
    """A project's stored scenarios (the built-in `web_app` is not listed)."""
    project, _ = await resolve_project(session, access.principal, project_id, READ)
    rows, total = await LoadTestService(core, session).list_scenarios(project, params)
    return listing([_scenario(s) for s in rows], "scenarios", total, params)


@router.post("/scenarios", status_code=201, response_model=Envelope[ScenarioPublic])
async def create_scenario(
    body: ScenarioCreate,
    core: CoreDep,
    session: SessionDep,
    project_id: ProjectHint,
    access: Access = authorize(WRITE),
) -> Response:
    """A scenario: up to 20 weighted requests (method, path, headers, body)."""
    project, _ = await resolve_project(
        session, access.principal, body.project_id or project_id, WRITE
    )
    found = await LoadTestService(core, session).create_scenario(access.principal, project, body)
    return ok(_scenario(found), 201)


@router.get("/scenarios/{scenario_id}", response_model=Envelope[ScenarioPublic])
async def get_scenario(
    scenario_id: ScenarioId, core: CoreDep, session: SessionDep, access: Access = authorize(READ)
) -> Response:
    found = await LoadTestService(core, session).scenario(access.principal, scenario_id, READ)
    return ok(_scenario(found))


@router.put("/scenarios/{scenario_id}", response_model=Envelope[ScenarioPublic])
async def update_scenario(
    scenario_id: ScenarioId,
    body: ScenarioUpdate,
    core: CoreDep,
    session: SessionDep,
    access: Access = authorize(WRITE),
) -> Response:
    service = LoadTestService(core, session)
    found = await service.scenario(access.principal, scenario_id, WRITE)
    return ok(_scenario(await service.update_scenario(found, body)))


@router.delete("/scenarios/{scenario_id}", response_model=Envelope[Message])
async def delete_scenario(
    scenario_id: ScenarioId, core: CoreDep, session: SessionDep, access: Access = authorize(WRITE)
) -> Response:
    """Delete a scenario; tests that ran it keep their copy of its requests."""
    service = LoadTestService(core, session)
    found = await service.scenario(access.principal, scenario_id, WRITE)
    await service.delete_scenario(found)
    return ok(Message(message="Scenario deleted"))
