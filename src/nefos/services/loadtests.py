"""Load tests of a tenant's own services (issue 16, seed 004's ``/testing``).

A request (``LoadTestService.create``) checks the body against the settings' caps,
parses the thresholds, finds the target among the caller's services and its URLs
(``resolve_target``), resolves the scenario, and writes the test (``running``) and
a ``load_test`` operation in one transaction: 202. A worker (``LoadTestOps``: the
worker role, or ``all``) claims the operation and runs the generator in a process
of its own (``nefos.loadtest``), never on an event loop that serves HTTP. Each
second it appends the timeline's new seconds, stores the partial summary and tells
a ``load_test_update`` event; at the end it stores the summary, the encoded HDR
histogram and the thresholds' verdict.

* **Cancel** (``DELETE /testing/results/{id}``) is a guarded ``UPDATE ... SET
  status = 'cancelled' WHERE status = 'running'``, from any process. Every write of
  the runner is guarded the same way, so the runner learns of the cancel at its
  next write (or its watcher's next look, within a second) and kills the generator.
* **Crash.** The generator dies with the process that started it. The operation's
  heartbeat stops, the reconciler (the lease holder) puts it back to pending, and
  the worker that claims it again finds a second attempt: the test is marked
  ``failed`` ("interrupted"), never left running, never run twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from nefos.config import Settings
from nefos.db.models import (
    Container,
    LoadTest,
    LoadTestScenario,
    LoadTestSecond,
    Operation,
    Organisation,
    Project,
)
from nefos.db.session import Database, begin_write
from nefos.db.types import utcnow
from nefos.domain.access import Permission
from nefos.domain.errors import Conflict, NotFound, ResourceExhausted, ValidationFailed
from nefos.domain.paging import PageParams
from nefos.events import Event, EventType, make, record
from nefos.loadtest import thresholds as threshold_rules
from nefos.loadtest.plan import Plan, RequestSpec
from nefos.loadtest.runner import GeneratorProcess
from nefos.operations import OpContext, enqueue
from nefos.operations.queue import cancel_pending
from nefos.schemas.loadtests import (
    BUILTIN_SCENARIOS,
    LoadTestCreate,
    ScenarioCreate,
    ScenarioUpdate,
)
from nefos.services import endpoints
from nefos.services.core import Core
from nefos.services.discovery import ServiceRegistry
from nefos.services.paging import fetch_page
from nefos.services.principal import Principal, authorize_project

log = logging.getLogger("nefos.loadtests")

KIND = "load_test"
RUNNING, COMPLETED, FAILED, CANCELLED = "running", "completed", "failed", "cancelled"
STATUSES = (RUNNING, COMPLETED, FAILED, CANCELLED)
BUILTIN: dict[str, list[dict[str, Any]]] = {
    "web_app": [{"method": "GET", "path": "/", "headers": {}, "body": None, "weight": 1}],
}
assert tuple(BUILTIN) == BUILTIN_SCENARIOS
#: How often the runner stores progress and looks for a cancel (seconds).
SAVE_INTERVAL = 1.0
#: The summary's keys a ``load_test_update`` event carries (not the histogram).
EVENT_KEYS = (
    "total_requests",
    "successful_requests",
    "failed_requests",
    "error_rate",
    "requests_per_second",
    "p50_response_time",
    "p95_response_time",
    "p99_response_time",
    "saturated",
)
_UNSPECIFIED = {"", "0.0.0.0", "::"}  # noqa: S104 - an address to replace, not to bind


#: Seconds a generator may run past its plan (duration and one request's timeout)
#: before it is killed as hung.
RUN_SLACK = 30.0


def operation_url(op_id: str) -> str:
    return f"/api/v1/operations/{op_id}"


# --- the target ------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Target:
    type: str
    id: str
    project_id: str


def _url(address: str, port: int) -> str:
    if ":" in address and not address.startswith("["):
        address = f"[{address}]"  # an IPv6 literal
    return f"http://{address}:{port}/"


async def resolve_target(session: AsyncSession, settings: Settings, target: Target) -> list[str]:
    """The base URLs a load test of ``target`` sends to, round-robin: the service's
    instances that take traffic (running, passing or warning, not in maintenance:
    ``services.endpoints``, what the ingress balances over), each at its published
    port. Empty when none does. Never a URL a caller gave.

    The generator reaches the instances themselves rather than the ingress: a test
    then measures the service, not the API process that also serves the ingress."""
    if target.type not in ("container", "vm"):
        return []
    found = await endpoints.upstreams(session, target.id)
    return [_url(u.address, u.port) for u in found or []]


# --- wire forms ------------------------------------------------------------------------
def test_public(
    t: LoadTest, *, timeline: list[dict[str, Any]] | None = None, full: bool = False
) -> dict[str, Any]:
    verdict = t.verdict
    return {
        "test_id": t.id,
        "id": t.id,
        "status": t.status,
        "scenario": t.scenario,
        "target": t.target_id,
        "target_type": t.target_type,
        "project_id": t.project_id,
        "params": {k: v for k, v in t.params.items() if k != "requests"},
        "results": t.results,
        "timeline": timeline,
        "verdict": verdict,
        "passed": None if verdict is None else bool(verdict.get("passed")),
        "histogram": t.histogram if full else None,
        "error": t.error,
        "started_at": t.started_at,
        "completed_at": t.completed_at,
    }


def scenario_public(s: LoadTestScenario) -> dict[str, Any]:
    return {
        "id": s.id,
        "project_id": s.project_id,
        "name": s.name,
        "description": s.description,
        "requests": list(s.requests),
        "created_at": s.created_at,
        "updated_at": s.updated_at,
    }


def _event(data: dict[str, Any], project_id: str) -> Event:
    return make(EventType.LOAD_TEST, data, project_id=project_id)


# --- requests --------------------------------------------------------------------------
class LoadTestService:
    def __init__(self, core: Core, session: AsyncSession) -> None:
        self.core = core
        self.session = session

    # --- tests --------------------------------------------------------------------
    def _check_caps(self, body: LoadTestCreate) -> list[threshold_rules.Threshold]:
        s = self.core.settings
        errors: dict[str, str] = {}
        if body.duration > s.loadtest_max_duration:
            errors["duration"] = f"at most {s.loadtest_max_duration} seconds"
        if body.users > s.loadtest_max_users:
            errors["users"] = f"at most {s.loadtest_max_users}"
        if body.rate is not None and body.rate > s.loadtest_max_rate:
            errors["rate"] = f"at most {s.loadtest_max_rate:g} requests per second"
        if body.ramp_up_time > body.duration:
            errors["ramp_up_time"] = "at most the duration"
        rules, bad = threshold_rules.parse_all(body.thresholds)
        errors.update(bad)
        if errors:
            raise ValidationFailed("Invalid load test", **errors)
        return rules

    async def _target(self, principal: Principal, target_id: str) -> Target:
        """The caller's service ``target_id`` (a container, or a VM with a service
        port, of a project the caller may write to); another tenant's is NotFound,
        like a missing one."""
        registry = ServiceRegistry(self.core, self.session)
        try:
            found = await registry.visible(principal, target_id, Permission.COMPUTE_WRITE)
        except NotFound:
            raise NotFound("Target service not found", target=target_id) from None
        kind = "container" if isinstance(found, Container) else "vm"
        return Target(kind, found.id, found.project_id)

    async def _scenario(
        self, principal: Principal, name: str, project_id: str
    ) -> tuple[str, list[dict[str, Any]]]:
        if name in BUILTIN:
            return name, BUILTIN[name]
        found = await self.session.scalar(
            select(LoadTestScenario).where(
                LoadTestScenario.project_id == project_id, LoadTestScenario.name == name
            )
        )
        if found is None:
            by_id = await self.session.get(LoadTestScenario, name)
            if by_id is not None:
                with contextlib.suppress(NotFound):
                    await authorize_project(
                        self.session, principal, by_id.project_id, Permission.COMPUTE_READ
                    )
                    found = by_id
        if found is None:
            raise ValidationFailed(
                "Unknown scenario: a built-in one or a stored scenario's id or name",
                scenario=f"{name[:100]!r} is not one of: {', '.join(BUILTIN)} or a stored one",
            )
        return found.name, list(found.requests)

    async def create(
        self, principal: Principal, body: LoadTestCreate
    ) -> tuple[LoadTest, Operation]:
        s = self.core.settings
        rules = self._check_caps(body)
        if s.loadtest_max_concurrent == 0:
            raise ResourceExhausted("Load tests are turned off on this platform")
        target = await self._target(principal, body.target)
        urls = await resolve_target(self.session, s, target)
        if not urls:
            raise Conflict(
                "The target has no instance taking traffic (running, with a published TCP "
                "port, its health check passing) to test",
                target=target.id,
            )
        scenario, requests = await self._scenario(principal, body.scenario, target.project_id)
        project = await self.session.get(Project, target.project_id)
        assert project is not None
        org_id = project.organisation_id
        await begin_write(self.session)
        try:
            # One organisation's creates one at a time (PostgreSQL; SQLite's write
            # lock already is): the count below cannot be passed by two at once.
            await self.session.execute(
                select(Organisation.id).where(Organisation.id == org_id).with_for_update()
            )
            running = await self.session.scalar(
                select(func.count(LoadTest.id)).where(
                    LoadTest.organisation_id == org_id, LoadTest.status == RUNNING
                )
            )
            if (running or 0) >= s.loadtest_max_concurrent:
                raise ResourceExhausted(
                    f"Your organisation already runs {running} load tests (at most "
                    f"{s.loadtest_max_concurrent} at once): wait for one to end or cancel it",
                    running=running,
                    limit=s.loadtest_max_concurrent,
                )
            test = LoadTest(
                project_id=target.project_id,
                organisation_id=org_id,
                user_id=principal.user_id,
                target_type=target.type,
                target_id=target.id,
                scenario=scenario,
                status=RUNNING,
                started_at=utcnow(),
                params={
                    "duration": body.duration,
                    "users": body.users,
                    "ramp_up_time": body.ramp_up_time,
                    "rate": body.rate,
                    "model": "closed" if body.rate is None else "open",
                    "thresholds": [r.text for r in rules],
                    "requests": requests,
                },
            )
            self.session.add(test)
            await self.session.flush()
            op = await enqueue(
                self.session,
                kind=KIND,
                resource_type="load_test",
                resource_id=test.id,
                project_id=target.project_id,
                user_id=principal.user_id,
            )
            test.operation_id = op.id
            record(self.session, _event(_event_data(test, RUNNING), target.project_id))
            await self.session.commit()
        except BaseException:
            await self.session.rollback()
            raise
        self.core.workers.notify()
        return test, op

    async def visible(self, principal: Principal, test_id: str, permission: Permission) -> LoadTest:
        test = await self.session.get(LoadTest, test_id)
        if test is None:
            raise NotFound("Load test not found", test_id=test_id)
        try:
            await authorize_project(self.session, principal, test.project_id, permission)
        except NotFound:
            raise NotFound("Load test not found", test_id=test_id) from None
        return test

    async def list_page(
        self, project: Project, page: PageParams, *, status: str | None = None
    ) -> tuple[Sequence[LoadTest], int]:
        where: list[Any] = [LoadTest.project_id == project.id]
        if status:
            where.append(LoadTest.status == status)
        return await fetch_page(
            self.session,
            LoadTest,
            *where,
            order_by=(LoadTest.created_at.desc(), LoadTest.id.desc()),
            page=page,
        )

    async def timeline(self, test_id: str) -> list[dict[str, Any]]:
        rows = await self.session.scalars(
            select(LoadTestSecond)
            .where(LoadTestSecond.test_id == test_id)
            .order_by(LoadTestSecond.second)
        )
        return [dict(r.data) for r in rows]

    async def cancel(self, test: LoadTest) -> LoadTest:
        """Cancel a running test: it keeps what it measured so far. A test that has
        ended is a 409."""
        await begin_write(self.session)
        now = utcnow()
        res = await self.session.execute(
            update(LoadTest)
            .where(LoadTest.id == test.id, LoadTest.status == RUNNING)
            .values(status=CANCELLED, completed_at=now, updated_at=now)
            .execution_options(synchronize_session=False)
        )
        if not res.rowcount:  # type: ignore[attr-defined]
            await self.session.rollback()
            await self.session.refresh(test)
            raise Conflict(f"The load test has already ended ({test.status})", test_id=test.id)
        if test.operation_id is not None:
            op = await self.session.get(Operation, test.operation_id)
            if op is not None and op.status == "pending":
                await cancel_pending(self.session, op)
        record(self.session, _event(_event_data(test, CANCELLED), test.project_id))
        await self.session.commit()
        await self.session.refresh(test)
        return test

    # --- scenarios ----------------------------------------------------------------
    async def list_scenarios(
        self, project: Project, page: PageParams
    ) -> tuple[Sequence[LoadTestScenario], int]:
        return await fetch_page(
            self.session,
            LoadTestScenario,
            LoadTestScenario.project_id == project.id,
            order_by=(LoadTestScenario.created_at, LoadTestScenario.id),
            page=page,
        )

    async def scenario(
        self, principal: Principal, scenario_id: str, permission: Permission
    ) -> LoadTestScenario:
        found = await self.session.get(LoadTestScenario, scenario_id)
        if found is None:
            raise NotFound("Scenario not found", scenario_id=scenario_id)
        try:
            await authorize_project(self.session, principal, found.project_id, permission)
        except NotFound:
            raise NotFound("Scenario not found", scenario_id=scenario_id) from None
        return found

    async def create_scenario(
        self, principal: Principal, project: Project, body: ScenarioCreate
    ) -> LoadTestScenario:
        await begin_write(self.session)
        found = LoadTestScenario(
            project_id=project.id,
            user_id=principal.user_id,
            name=body.name,
            description=body.description,
            requests=[r.model_dump() for r in body.requests],
        )
        self.session.add(found)
        await self._commit_named(body.name)
        return found

    async def update_scenario(
        self, found: LoadTestScenario, body: ScenarioUpdate
    ) -> LoadTestScenario:
        await begin_write(self.session)
        if body.name is not None:
            found.name = body.name
        if body.description is not None:
            found.description = body.description
        if body.requests is not None:
            found.requests = [r.model_dump() for r in body.requests]
        await self._commit_named(found.name)
        return found

    async def _commit_named(self, name: str) -> None:
        try:
            await self.session.commit()
        except IntegrityError as exc:
            await self.session.rollback()
            raise Conflict("A scenario with this name exists in the project", name=name) from exc

    async def delete_scenario(self, found: LoadTestScenario) -> None:
        """Delete a scenario; the tests that used it keep their copy of its requests."""
        await begin_write(self.session)
        await self.session.delete(found)
        await self.session.commit()


def _event_data(
    t: LoadTest, status: str, summary: dict[str, Any] | None = None, **extra: Any
) -> dict[str, Any]:
    results = summary if summary is not None else (t.results or {})
    return {
        "test_id": t.id,
        "status": status,
        "scenario": t.scenario,
        "target": t.target_id,
        "results": {k: results.get(k) for k in EVENT_KEYS},
        **extra,
    }


# --- the runner (a worker's operation) -------------------------------------------------
class LoadTestOps:
    """The ``load_test`` operation: runs one test's generator to its end."""

    def __init__(self, core: Core) -> None:
        self.core = core
        #: The generators this process runs, by test id (shutdown, tests).
        self.running: dict[str, GeneratorProcess] = {}

    def register(self) -> None:
        self.core.workers.register(KIND, self.run, on_failure=self.on_failure)

    @property
    def db(self) -> Database:
        return self.core.db

    async def run(self, ctx: OpContext) -> dict[str, Any] | None:
        test_id = ctx.op.resource_id
        async with self.db.sessionmaker() as session:
            test = await session.get(LoadTest, test_id)
            if test is None or test.status != RUNNING:
                return {"status": test.status if test else "deleted"}
            if ctx.op.attempts > 1:
                # Claimed again: the process that ran it died (its heartbeat stopped).
                await session.rollback()
                await self._end(
                    test_id,
                    FAILED,
                    error="interrupted: the process running the test stopped before it ended",
                )
                return {"status": FAILED, "interrupted": True}
            target = Target(test.target_type, test.target_id, test.project_id)
            urls = await resolve_target(session, self.core.settings, target)
            params = dict(test.params)
            await session.rollback()
        if not urls:
            await self._end(test_id, FAILED, error="the target has no instance taking traffic")
            return {"status": FAILED}
        plan = self._plan(urls, params)
        return await self._drive(ctx, test_id, plan, params, target)

    def _plan(self, urls: list[str], params: dict[str, Any]) -> Plan:
        s = self.core.settings
        return Plan(
            urls=tuple(urls),
            requests=tuple(RequestSpec(**r) for r in params["requests"]),
            duration=float(params["duration"]),
            users=int(params["users"]),
            ramp_up=float(params.get("ramp_up_time") or 0),
            rate=params.get("rate"),
            timeout=s.loadtest_request_timeout,
            max_in_flight=int(params["users"]),
        )

    async def _drive(
        self, ctx: OpContext, test_id: str, plan: Plan, params: dict[str, Any], target: Target
    ) -> dict[str, Any]:
        gen = GeneratorProcess(plan)
        await gen.start()
        self.running[test_id] = gen
        stopped: list[str] = []  # why the watcher stopped the generator, if it did
        watcher = asyncio.create_task(self._watch(test_id, gen, plan, target, stopped))
        seconds: list[dict[str, Any]] = []
        summary: dict[str, Any] | None = None
        final: dict[str, Any] | None = None
        error: str | None = None
        last_save = 0.0
        done_seconds = 0
        loop = asyncio.get_running_loop()
        try:
            await self._save(test_id, [], None, runner=f"{socket.gethostname()}:{gen.pid}")
            async for message in gen.messages():
                kind = message.get("type")
                if kind == "second":
                    seconds.append(message["entry"])
                elif kind == "progress":
                    summary = message["summary"]
                elif kind == "final":
                    final = message["summary"]
                elif kind == "error":
                    error = str(message.get("message"))[:2000]
                if seconds and loop.time() - last_save >= SAVE_INTERVAL:
                    last_save = loop.time()
                    if not await self._save(test_id, seconds, summary):
                        await gen.kill()  # cancelled meanwhile
                        break
                    done_seconds += len(seconds)
                    seconds = []
                    ctx.progress(int(100 * done_seconds / max(1.0, plan.duration)))
        finally:
            watcher.cancel()
            await gen.kill()
            self.running.pop(test_id, None)
        if stopped:
            final, error = None, stopped[0]
        if final is None and error is None:
            if not await self._still_running(test_id):
                return {"status": CANCELLED}
            error = f"the generator exited ({gen.returncode}) without results"
            if gen.stderr:
                log.warning("load test %s: generator: %s", test_id, gen.stderr.decode()[-2000:])
        if final is None:
            await self._end(test_id, FAILED, seconds=seconds, summary=summary, error=error)
            return {"status": FAILED}
        rules = [threshold_rules.parse(t) for t in params.get("thresholds") or []]
        verdict = threshold_rules.verdict(rules, final)
        await self._end(test_id, COMPLETED, seconds=seconds, summary=final, verdict=verdict)
        return {"status": COMPLETED, "passed": verdict["passed"]}

    async def _watch(
        self,
        test_id: str,
        gen: GeneratorProcess,
        plan: Plan,
        target: Target,
        stopped: list[str],
    ) -> None:
        """Every second: kill the generator on a cancel from any process; when an
        instance it sends to has left the target (scaled away, replaced: its port may
        soon be another container's; an instance merely failing keeps its port, and
        the test counts its errors); and when the run outlasts its plan by far (a hung
        generator holds a test slot)."""
        ends = asyncio.get_running_loop().time() + plan.duration + plan.timeout + RUN_SLACK
        sent_to = set(plan.urls)
        while True:
            await asyncio.sleep(SAVE_INTERVAL)
            try:
                if not await self._still_running(test_id):
                    await gen.kill()
                    return
                async with self.db.sessionmaker() as session:
                    now = {
                        _url(u.address, u.port) for u in await endpoints.held(session, target.id)
                    }
                    await session.rollback()
                if sent_to - now:
                    stopped.append(
                        "an instance of the target left it during the test (scaled away or "
                        "replaced): the test stopped rather than send to an address that "
                        "may be another's"
                    )
                    await gen.kill()
                    return
                if asyncio.get_running_loop().time() > ends:
                    stopped.append("the generator did not end in time")
                    await gen.kill()
                    return
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("load test %s: cannot read its status", test_id, exc_info=True)

    async def _still_running(self, test_id: str) -> bool:
        async with self.db.sessionmaker() as session:
            status = await session.scalar(select(LoadTest.status).where(LoadTest.id == test_id))
            await session.rollback()
        return status == RUNNING

    async def _save(
        self,
        test_id: str,
        seconds: list[dict[str, Any]],
        summary: dict[str, Any] | None,
        *,
        status: str = RUNNING,
        runner: str | None = None,
        verdict: dict[str, Any] | None = None,
        error: str | None = None,
    ) -> bool:
        """Append ``seconds``, store ``summary`` (and end the test unless ``status`` is
        running), guarded by the test still running; False if it no longer was."""
        values: dict[str, Any] = {"updated_at": utcnow()}
        histogram = None
        if summary is not None:
            summary = dict(summary)
            histogram = summary.pop("histogram", None)
            values["results"] = summary
            if histogram is not None:
                values["histogram"] = histogram
        if runner is not None:
            values["runner"] = runner
        if status != RUNNING:
            values.update(status=status, completed_at=utcnow(), runner=None)
            values["verdict"] = verdict
            values["error"] = error
        async with self.db.sessionmaker() as session:
            await begin_write(session)
            res = await session.execute(
                update(LoadTest)
                .where(LoadTest.id == test_id, LoadTest.status == RUNNING)
                .values(**values)
                .execution_options(synchronize_session=False)
            )
            if not res.rowcount:  # type: ignore[attr-defined]
                await session.rollback()
                return False
            for entry in seconds:
                await session.merge(
                    LoadTestSecond(test_id=test_id, second=int(entry["second"]), data=entry)
                )
            test = await session.get(LoadTest, test_id, populate_existing=True)
            if test is not None:
                extra: dict[str, Any] = {"second": seconds[-1] if seconds else None}
                if status != RUNNING:
                    extra["passed"] = None if verdict is None else verdict["passed"]
                    extra["error"] = error
                record(session, _event(_event_data(test, status, **extra), test.project_id))
            await session.commit()
        return True

    async def _end(
        self,
        test_id: str,
        status: str,
        *,
        seconds: Sequence[dict[str, Any]] = (),
        summary: dict[str, Any] | None = None,
        verdict: dict[str, Any] | None = None,
        error: str | None = None,
    ) -> None:
        await self._save(
            test_id, list(seconds), summary, status=status, verdict=verdict, error=error
        )

    async def on_failure(self, ctx: OpContext, code: str, message: str) -> None:
        await self._end(ctx.op.resource_id, FAILED, error=f"{code}: {message}"[:2000])
