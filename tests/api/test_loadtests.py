"""Load tests (issue 16, seed 004's ``/testing``), end to end against real containers.

Each slow test here makes one real container (busybox httpd on the test Podman) and
runs real generator processes against its published port; the checks are of the
results' internal consistency (the timeline adds up to the totals, percentiles are
ordered and are the histogram's), never of timings.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from typing import Any

import docker
import httpx
from hdrh.histogram import HdrHistogram
from sqlalchemy import select

from nefos.db.models import LoadTest
from nefos.events import Event
from tests.api.test_containers import Api, assert_error, seed_body
from tests.conftest import docker_host_uri, wait_operation, wait_serving

V1 = "/api/v1"
ENDED = ("completed", "failed", "cancelled")


async def results(client: httpx.AsyncClient, who: Any, test_id: str) -> dict[str, Any]:
    r = await client.get(f"{V1}/testing/results/{test_id}", headers=who.headers)
    assert r.status_code == 200, r.text
    data: dict[str, Any] = r.json()["data"]
    return data


async def until(check: Any, what: str, within: float = 60) -> Any:
    deadline = time.monotonic() + within
    last = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(0.1)
    raise AssertionError(f"{what}: not within {within}s; last: {last!r}")


async def ended(client: httpx.AsyncClient, who: Any, test_id: str) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        data = await results(client, who, test_id)
        return data if data["status"] in ENDED else None

    found: dict[str, Any] = await until(check, f"load test {test_id} ends", 90)
    return found


def consistent(data: dict[str, Any]) -> dict[str, Any]:
    """The checks every finished result passes; its results."""
    res: dict[str, Any] = data["results"]
    timeline = data["timeline"]
    total = res["total_requests"]
    assert total == res["successful_requests"] + res["failed_requests"]
    assert sum(e["ok"] for e in timeline) == res["successful_requests"]
    assert sum(e["failed"] for e in timeline) == res["failed_requests"]
    assert [e["second"] for e in timeline] == list(range(len(timeline)))
    if res["successful_requests"]:
        p = [res[f"{k}_response_time"] for k in ("min", "p50", "p90", "p95", "p99", "p99_9")]
        assert p == sorted(p) and p[-1] <= res["max_response_time"], res
        assert res["p95_response_time"] <= res["p99_response_time"]
        hist = HdrHistogram.decode(data["histogram"])
        for key, pct in (("p50", 50), ("p95", 95), ("p99", 99), ("p99_9", 99.9)):
            assert res[f"{key}_response_time"] == round(
                min(hist.get_value_at_percentile(pct), hist.get_max_value()) / 1000, 3
            )
        assert res["max_response_time"] == round(hist.get_max_value() / 1000, 3)
        assert hist.get_total_count() <= total
    return res


def subscription(app: Any) -> Any:
    return app.state.core.events.subscribe(lambda e: e.type == "load_test_update")


def drain(sub: Any) -> list[Event]:
    out = []
    while (e := sub.get_nowait()) is not None:
        out.append(e)
    return out


def engine_kill(container_id: str) -> None:
    client = docker.DockerClient(base_url=docker_host_uri(), version="1.41")
    try:
        for c in client.containers.list(filters={"label": f"nefos.container={container_id}"}):
            c.kill()
    finally:
        client.close()


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


async def runner_pid(app: Any, test_id: str) -> int | None:
    async with app.state.core.db.sessionmaker() as session:
        runner = await session.scalar(select(LoadTest.runner).where(LoadTest.id == test_id))
    return int(runner.rsplit(":", 1)[1]) if runner else None


# --- the slow tests ---------------------------------------------------------------------
async def test_closed_and_open_model_against_a_real_container(client, app, register, podman_host):
    owner, other = await register(), await register()
    api = Api(client, owner)
    c = await api.created(seed_body("web"))
    await wait_serving(client, owner.headers, c["id"])  # load goes where traffic may
    sub = subscription(app)

    # Seed 004's body on seed 004's path (the /api alias), plus the target.
    body = {
        "scenario": "web_app",
        "duration": 3,
        "users": 4,
        "ramp_up_time": 1,
        "target": c["id"],
        "thresholds": ["p99 < 0.001", "error_rate < 1%", "rps>1"],
    }
    r = await client.post("/api/testing/load", json=body, headers=owner.headers)
    assert r.status_code == 202, r.text
    accepted = r.json()["data"]
    assert accepted["status"] == "running" and accepted["scenario"] == "web_app"
    assert accepted["test_id"] and accepted["started_at"].endswith("Z")
    test_id = accepted["test_id"]

    # Another tenant: the container, the test and its cancel do not exist for them.
    r = await client.post(f"{V1}/testing/load", json=body, headers=other.headers)
    assert_error(r, 404, "NOT_FOUND")
    for method in ("GET", "DELETE"):
        r = await client.request(method, f"{V1}/testing/results/{test_id}", headers=other.headers)
        assert_error(r, 404, "NOT_FOUND")
    r = await client.get(f"{V1}/testing/results", headers=other.headers)
    assert r.json()["data"]["items"] == []

    data = await ended(client, owner, test_id)
    assert data["status"] == "completed", data
    res = consistent(data)
    assert res["total_requests"] > 0 and res["failed_requests"] == 0
    assert res["requests_per_second"] > 0 and res["uncorrected"] is None
    assert isinstance(res["saturated"], bool)
    assert max(e["active_users"] for e in data["timeline"]) == 4
    verdict = {v["threshold"]: v for v in data["verdict"]["thresholds"]}
    assert data["passed"] is False and data["verdict"]["passed"] is False
    assert verdict["p99 < 0.001"]["passed"] is False
    assert verdict["p99 < 0.001"]["value"] == res["p99_response_time"]
    assert verdict["error_rate < 1%"] == {
        "threshold": "error_rate < 1%",
        "metric": "error_rate",
        "op": "<",
        "limit": 0.01,
        "value": 0.0,
        "passed": True,
    }
    assert verdict["rps > 1"]["passed"] is True
    # The seed's field names, in the seed's place.
    for key in (
        "total_requests",
        "successful_requests",
        "failed_requests",
        "avg_response_time",
        "p95_response_time",
        "p99_response_time",
        "requests_per_second",
    ):
        assert key in res
    assert data["completed_at"] is not None
    events = drain(sub)
    mine = [e for e in events if e.data["test_id"] == test_id]
    assert mine and mine[-1].data["status"] == "completed", [e.data for e in mine]
    assert all(e.project_id == owner.project_id for e in mine)
    listed = (await api.call("GET", "/testing/results"))["items"]
    assert [t["test_id"] for t in listed] == [test_id] and "timeline" not in listed[0]

    # A stored scenario (by name), the open model, and the container killed under it:
    # the requests fail, and the error-rate threshold with them.
    scenario = await api.call(
        "POST",
        "/testing/scenarios",
        201,
        json={
            "name": "home",
            "requests": [
                {"path": "/", "weight": 3},
                {"method": "GET", "path": "/missing?x=1", "headers": {"X-Test": "1"}},
            ],
        },
    )
    body = {
        "scenario": "home",
        "duration": 4,
        "users": 8,
        "rate": 40,
        "target": c["id"],
        "thresholds": ["error_rate < 1%"],
    }
    test_id = (await api.call("POST", "/testing/load", 202, json=body))["test_id"]

    async def some_seconds() -> bool:
        return bool((await results(client, owner, test_id))["timeline"])

    await until(some_seconds, "the first second of the open-model test")
    engine_kill(c["id"])
    data = await ended(client, owner, test_id)
    assert data["status"] == "completed" and data["scenario"] == "home", data
    res = consistent(data)
    assert res["uncorrected"] is not None
    assert res["uncorrected"]["max"] <= res["max_response_time"]
    assert res["errors"]["by_status"].get("404", 0) > 0  # the scenario's /missing
    assert res["errors"]["by_kind"].get("connect", 0) > 0  # the killed container
    assert data["passed"] is False
    assert data["timeline"][0]["target_rate"] == 40
    assert data["params"]["model"] == "open" and data["params"]["rate"] == 40
    r = await client.delete(f"{V1}/testing/results/{test_id}", headers=owner.headers)
    assert_error(r, 409, "CONFLICT")
    # A scenario of another tenant is no name of mine; theirs is a 404 for me.
    r = await client.get(f"{V1}/testing/scenarios/{scenario['id']}", headers=other.headers)
    assert_error(r, 404, "NOT_FOUND")
    sub.close()


async def test_cancel_kills_the_generator_and_the_cap_per_organisation(
    client, app, register, podman_host
):
    owner = await register()
    api = Api(client, owner)
    c = await api.created(seed_body("slow"))
    await wait_serving(client, owner.headers, c["id"])
    body = {"duration": 120, "users": 2, "target": c["id"]}
    first = (await api.call("POST", "/testing/load", 202, json=body))["test_id"]
    second = (await api.call("POST", "/testing/load", 202, json=body))["test_id"]
    # Two at once is the default cap of an organisation.
    r = await client.post(f"{V1}/testing/load", json=body, headers=owner.headers)
    assert_error(r, 409, "RESOURCE_EXHAUSTED")
    pids = []
    for test_id in (first, second):

        async def started(test_id: str = test_id) -> int | None:
            return await runner_pid(app, test_id)

        pids.append(await until(started, "the generator starts"))
    assert all(not gone(pid) for pid in pids)
    for test_id, pid in zip((first, second), pids, strict=True):
        r = await client.delete(f"{V1}/testing/results/{test_id}", headers=owner.headers)
        assert r.status_code == 200, r.text
        assert r.json()["data"]["status"] == "cancelled"

        async def reaped(pid: int = pid) -> bool:
            return gone(pid)

        await until(reaped, f"generator {pid} is gone", 30)
        data = await results(client, owner, test_id)
        assert data["status"] == "cancelled" and data["completed_at"] is not None
        op = await wait_operation(
            client, owner.headers, f"{V1}/operations/{await op_of(app, test_id)}"
        )
        assert op["status"] == "succeeded", op
    # With both ended a new one may start again.
    short = {**body, "duration": 1}
    test_id = (await api.call("POST", "/testing/load", 202, json=short))["test_id"]
    assert (await ended(client, owner, test_id))["status"] == "completed"

    # An instance that leaves the target during a test (scaled away: its port may be
    # given to another container) stops the test, with what it measured so far.
    await api.act("POST", f"/containers/{c['id']}/scale", {"replicas": 2})
    await wait_serving(client, owner.headers, c["id"], 2)
    test_id = (await api.call("POST", "/testing/load", 202, json=body))["test_id"]

    async def some_seconds() -> bool:
        return bool((await results(client, owner, test_id))["timeline"])

    await until(some_seconds, "the first second of the test")
    await api.act("POST", f"/containers/{c['id']}/scale", {"replicas": 1})
    data = await ended(client, owner, test_id)
    assert data["status"] == "failed" and "left it during the test" in data["error"], data
    assert data["results"]["total_requests"] > 0


async def op_of(app: Any, test_id: str) -> str:
    async with app.state.core.db.sessionmaker() as session:
        op_id = await session.scalar(select(LoadTest.operation_id).where(LoadTest.id == test_id))
    assert op_id is not None
    return str(op_id)


# --- quick ones -------------------------------------------------------------------------
async def test_bad_bodies_are_422_in_the_envelope(client, register):
    owner = await register()
    target = str(uuid.uuid4())
    cases = [
        ({"duration": 10, "users": 1}, "target"),
        ({"duration": 0, "users": 1, "target": target}, "duration"),
        ({"duration": 10, "users": 0, "target": target}, "users"),
        ({"duration": 10, "users": 1, "target": target, "rate": -1}, "rate"),
        ({"duration": 10, "users": 1, "target": target, "url": "http://x"}, "url"),
        ({"duration": 10**6, "users": 1, "target": target}, "duration"),
        ({"duration": 10, "users": 10**6, "target": target}, "users"),
        ({"duration": 10, "users": 1, "target": target, "rate": 10**7}, "rate"),
        ({"duration": 10, "users": 1, "ramp_up_time": 11, "target": target}, "ramp_up_time"),
        ({"duration": 10, "users": 1, "target": target, "thresholds": ["p95 <"]}, "thresholds[0]"),
        (
            {"duration": 10, "users": 1, "target": target, "thresholds": ["p95<1", "p42 < 1"]},
            "thresholds[1]",
        ),
        (
            {"duration": 10, "users": 1, "target": target, "thresholds": ["error_rate < 2ms"]},
            "thresholds[0]",
        ),
    ]
    for body, field in cases:
        r = await client.post(f"{V1}/testing/load", json=body, headers=owner.headers)
        err = assert_error(r, 422, "VALIDATION_ERROR")["error"]
        assert any(field in key for key in err["details"]), (body, err)
    # A valid body naming no service of mine.
    body = {"duration": 10, "users": 1, "target": target}
    r = await client.post(f"{V1}/testing/load", json=body, headers=owner.headers)
    assert_error(r, 404, "NOT_FOUND")
    for bad in (
        {"name": "x", "requests": []},
        {"name": "web_app", "requests": [{"path": "/"}]},
        {"name": "x", "requests": [{"path": "no-slash"}]},
        {"name": "x", "requests": [{"path": "/", "headers": {"Host": "evil"}}]},
        {"name": "x", "requests": [{"path": "/", "headers": {"X-A": "a\r\nB: c"}}]},
        {"name": "x", "requests": [{"path": "/ HTTP/1.1\r\n"}]},
        {"name": "x", "requests": [{"path": "/", "weight": 0}]},
        {"name": "x", "requests": [{"method": "TRACE", "path": "/"}]},
    ):
        r = await client.post(f"{V1}/testing/scenarios", json=bad, headers=owner.headers)
        assert_error(r, 422, "VALIDATION_ERROR")


async def test_scenarios_crud(client, register):
    owner, other = await register(), await register()
    api = Api(client, owner)
    made = await api.call(
        "POST", "/testing/scenarios", 201, json={"name": "mix", "requests": [{"path": "/a"}]}
    )
    assert made["requests"][0] == {
        "method": "GET",
        "path": "/a",
        "headers": {},
        "body": None,
        "weight": 1,
    }
    await api.call(
        "POST", "/testing/scenarios", 409, json={"name": "mix", "requests": [{"path": "/"}]}
    )
    changed = await api.call(
        "PUT",
        f"/testing/scenarios/{made['id']}",
        json={"requests": [{"method": "POST", "path": "/b", "body": "{}", "weight": 2}]},
    )
    assert changed["name"] == "mix" and changed["requests"][0]["weight"] == 2
    listed = await api.call("GET", "/testing/scenarios")
    assert [s["id"] for s in listed["items"]] == [made["id"]]
    assert (await Api(client, other).call("GET", "/testing/scenarios"))["items"] == []
    r = await client.put(
        f"{V1}/testing/scenarios/{made['id']}", json={"name": "x"}, headers=other.headers
    )
    assert_error(r, 404, "NOT_FOUND")
    await api.call("DELETE", f"/testing/scenarios/{made['id']}")
    await api.call("GET", f"/testing/scenarios/{made['id']}", 404)


async def test_a_test_whose_process_died_is_marked_failed_not_run_again(client, app, register):
    """The operation of a test whose worker died is claimed again (its heartbeat
    stopped): the second attempt ends the test as failed, "interrupted"."""
    from nefos.db.models import Project
    from nefos.db.types import utcnow
    from nefos.operations import OpContext
    from nefos.operations.queue import OpView
    from nefos.services.loadtests import LoadTestOps

    owner = await register()
    core = app.state.core
    async with core.db.sessionmaker() as session:
        project = await session.get(Project, owner.project_id)
        test = LoadTest(
            project_id=project.id,
            organisation_id=project.organisation_id,
            target_type="container",
            target_id=str(uuid.uuid4()),
            scenario="web_app",
            params={"duration": 60, "users": 1, "requests": []},
            status="running",
            started_at=utcnow(),
        )
        session.add(test)
        await session.commit()
        test_id = test.id
    op = OpView(
        id=str(uuid.uuid4()),
        kind="load_test",
        resource_type="load_test",
        resource_id=test_id,
        project_id=owner.project_id,
        user_id=owner.id,
        params={},
        attempts=2,
        created_at=utcnow(),
    )
    result = await LoadTestOps(core).run(OpContext(op=op, db=core.db, worker="w"))
    assert result == {"status": "failed", "interrupted": True}
    data = await results(client, owner, test_id)
    assert data["status"] == "failed" and "interrupted" in data["error"]
    assert data["completed_at"] is not None
