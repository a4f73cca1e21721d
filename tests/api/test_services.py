"""Services (seed 004's service discovery), end to end on the real test Podman: the
instances are a container's replicas, checked server-side by the app's own health
checker (it runs every second in the test app, as in `nefos serve`)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import docker
import pytest

from nefos.events import EventType
from tests.api.test_containers import Api, assert_error, engine_containers, seed_body
from tests.conftest import docker_host_uri

HTTP_CHECK = {
    "type": "http",
    "path": "/",
    "expected_status": "200-299",
    "interval": 1,
    "timeout": 1,
    "rise": 1,
    "fall": 2,
}


async def until(api: Api, path: str, check: Any, what: str, within: float = 45) -> Any:
    """GET ``path`` until ``check(data)`` holds; fail at the deadline."""
    deadline = time.monotonic() + within
    data = None
    while time.monotonic() < deadline:
        data = await api.call("GET", path)
        if check(data):
            return data
        await asyncio.sleep(0.2)
    raise AssertionError(f"{what}: not within {within}s; last: {data!r}")


def health_of(data: dict[str, Any]) -> dict[str, str]:
    return {i["id"]: i["health"] for i in data["service"]["instances"]}


async def test_a_container_is_a_service_checked_server_side(client, register, podman_host, app):
    user = await register()
    api = Api(client, user)
    c = await api.created(seed_body("web-app", replicas=2))
    sid = c["id"]

    # The tenant's word: version, tags, metadata, and an HTTP check every second.
    body = {
        "version": "2.1.0",
        "tags": ["web", "frontend"],
        "metadata": {"environment": "production", "team": "frontend"},
        "check": HTTP_CHECK,
    }
    put = (await api.call("PUT", f"/services/{sid}", json=body))["service"]
    assert put["version"] == "2.1.0" and put["tags"] == ["web", "frontend"]
    assert put["metadata"] == body["metadata"]
    assert put["check"]["type"] == "http" and put["check"]["expected_status"] == "200-299"

    detail = await until(
        api,
        f"/services/{sid}",
        lambda d: (
            d["service"]["health"] == "passing"
            and all(i["checks"][0]["output"].startswith("HTTP") for i in d["service"]["instances"])
        ),
        "both instances pass their HTTP check",
    )
    s = detail["service"]
    assert s["id"] == sid and s["name"] == "web-app" and s["instances"] and s["passing"] == 2
    assert len(s["instances"]) == 2
    for i in s["instances"]:
        assert i["state"] == "running" and i["health"] == "passing"
        assert i["endpoint"].startswith("http://127.0.0.1:") and i["host"] == "podman-test"
        [check] = i["checks"]
        assert check["type"] == "http" and check["status"] == "passing"
        assert "HTTP GET /: 200" in check["output"] and "nefos test page" in check["output"]
        assert check["history"] and check["history"][-1]["status"] == "passing"
        assert i["transitions"][-1]["to"] == "passing"
        assert i["metrics"] is not None and "cpu_usage" in i["metrics"]

    # Seed 004's list: id, name, version, endpoint, health, instances, metadata.
    listed = await api.call("GET", "/services")
    [row] = listed["services"]
    assert listed["items"] == listed["services"] and listed["pagination"]["total"] == 1
    assert row["id"] == sid and row["version"] == "2.1.0" and row["health"] == "passing"
    assert row["instances"] == 2 and row["metadata"]["team"] == "frontend" and row["endpoint"]
    # The /api alias, as seed 004 calls it.
    r = await client.get("/api/services", headers=user.headers)
    assert r.status_code == 200 and r.json()["data"]["services"][0]["id"] == sid

    # Filters.
    for query, hits in [
        ("health=passing", 1),
        ("health=critical", 0),
        ("name=web-app", 1),
        ("name=other", 0),
        ("tag=web&tag=frontend", 1),
        ("tag=backend", 0),
        ("metadata.team=frontend", 1),
        ("metadata.team=backend", 0),
    ]:
        got = await api.call("GET", f"/services?{query}")
        assert len(got["services"]) == hits, query

    # A blocking query on the current index waits for the next change: maintenance.
    victim = engine_containers(sid)[0]
    victim_id = victim.labels["nefos.id"]
    [alive] = [i["id"] for i in s["instances"] if i["id"] != victim_id]
    index = listed["index"]
    waiting = asyncio.create_task(api.call("GET", f"/services?index={index}&wait=30s"))
    await asyncio.sleep(0.5)
    assert not waiting.done()
    m = await api.call(
        "POST",
        f"/services/{sid}/instances/{alive}/maintenance",
        json={"enabled": True, "reason": "kernel upgrade"},
    )
    [mine] = [i for i in m["service"]["instances"] if i["id"] == alive]
    assert mine["health"] == "maintenance" and mine["maintenance_reason"] == "kernel upgrade"
    woke = await asyncio.wait_for(waiting, 20)
    assert woke["index"] != index and woke["services"][0]["passing"] == 1
    # The list changed since `index`, so a blocking query on it answers at once.
    again = await api.call("GET", f"/services?index={index}&wait=20s")
    assert again["index"] != index
    back = await api.call(
        "POST", f"/services/{sid}/instances/{alive}/maintenance", json={"enabled": False}
    )
    assert health_of(back)[alive] == "passing"

    # Readiness: a rolling scale of a service with its own check ends once the new
    # replica passes it; a replica removed is `terminating` (out of traffic) first.
    data = await api.call("POST", f"/containers/{sid}/scale", 202, json={"replicas": 3})
    op = await api.wait(data["operation"])
    assert op["status"] == "succeeded" and op["result"] == {"replicas": 3, "ready": 1}, op
    grown = (await api.call("GET", f"/services/{sid}"))["service"]
    assert grown["passing"] == 3 and len(grown["instances"]) == 3
    data = await api.call("POST", f"/containers/{sid}/scale", 202, json={"replicas": 2})
    states: set[str] = set()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        shown = (await api.call("GET", f"/services/{sid}"))["service"]
        states |= {i["state"] for i in shown["instances"]}
        if len(shown["instances"]) == 2:
            break
        await asyncio.sleep(0.05)
    assert "terminating" in states and len(shown["instances"]) == 2, states
    assert (await api.wait(data["operation"]))["status"] == "succeeded"
    assert {i["id"] for i in shown["instances"]} == {victim_id, alive}

    # A replica killed in the engine: its checks fail, it goes critical after `fall`
    # failures, and the service shows one passing instance of two. (The reconciler
    # may see the engine container stopped meanwhile: critical as well.)
    with app.state.core.events.subscribe(
        lambda e: e.type == EventType.SERVICE_HEALTH and e.data["instance_id"] == victim_id
    ) as told:
        engine = docker.DockerClient(base_url=docker_host_uri(), version="1.41")
        try:
            engine.containers.get(victim.id).kill()
        finally:
            engine.close()
        detail = await until(
            api,
            f"/services/{sid}",
            lambda d: health_of(d)[victim_id] == "critical",
            "the killed replica goes critical",
        )
        event = await asyncio.wait_for(told.get(), 10)
    assert event.data["service_id"] == sid and event.data["to"] == "critical"
    assert event.project_id == user.project_id
    s = detail["service"]
    assert s["health"] == "warning" and s["passing"] == 1
    [dead] = [i for i in s["instances"] if i["id"] == victim_id]
    assert dead["checks"][0]["history"][-1]["status"] == "critical"
    assert [t["to"] for t in dead["transitions"]][-2:] == ["passing", "critical"]

    # A check that could never reach the container: refused, not a service cut off.
    for check in ({"type": "tcp", "port": 9999}, {"type": "http", "port": 22}):
        r = await client.put(f"/api/v1/services/{sid}", json={"check": check}, headers=user.headers)
        assert_error(r, 422, "VALIDATION_ERROR")

    # Another tenant sees nothing of it.
    other = Api(client, await register())
    assert (await other.call("GET", "/services"))["services"] == []
    for method, path, kw in [
        ("GET", f"/services/{sid}", {}),
        ("PUT", f"/services/{sid}", {"json": {"version": "9"}}),
        ("POST", f"/services/{sid}/instances/{alive}/maintenance", {"json": {}}),
    ]:
        r = await client.request(method, f"/api/v1{path}", headers=other.who.headers, **kw)
        assert_error(r, 404, "NOT_FOUND")
    # An instance of another service is not this service's.
    r = await client.post(
        f"/api/v1/services/{sid}/instances/{sid}/maintenance", json={}, headers=user.headers
    )
    assert_error(r, 404, "NOT_FOUND")

    # An exec check: exit 0 passes, exit 1 warns (Consul's convention).
    await api.call(
        "PUT",
        f"/services/{sid}",
        json={
            "check": {
                "type": "exec",
                "command": ["/bin/busybox", "false"],
                "interval": 1,
                "timeout": 1,
            }
        },
    )
    await until(
        api,
        f"/services/{sid}",
        lambda d: health_of(d)[alive] == "warning",
        "an exec check exiting 1 warns",
    )
    # A command that never ends (and never stops talking) is cut at its timeout:
    # critical, and no thread of the checker's process waits on it.
    await api.call(
        "PUT",
        f"/services/{sid}",
        json={
            "check": {
                "type": "exec",
                "command": ["/bin/busybox", "yes"],
                "interval": 1,
                "timeout": 1,
                "fall": 1,
            }
        },
    )
    cut = await until(
        api,
        f"/services/{sid}",
        lambda d: health_of(d)[alive] == "critical",
        "a never-ending exec check goes critical",
    )
    [mine] = [i for i in cut["service"]["instances"] if i["id"] == alive]
    output = mine["checks"][0]["output"]
    assert "did not end within 1 s" in output or "timed out after 1 s" in output, output
    assert (await asyncio.wait_for(asyncio.to_thread(lambda: 1), 5)) == 1
    await api.delete(sid)
    assert (await api.call("GET", "/services"))["services"] == []


@pytest.mark.parametrize(
    "check",
    [
        {"type": "exec"},
        {"type": "http", "path": "http://169.254.169.254/latest"},
        {"type": "http", "path": "//evil.example/"},
        {"type": "http", "path": "/ ok"},
        {"type": "http", "expected_status": "99"},
        {"type": "http", "expected_status": "300-200"},
        {"type": "tcp", "interval": 1, "timeout": 5},
        {"type": "tcp", "command": ["true"]},
        {"type": "grpc"},
        {"type": "tcp", "port": 70000},
    ],
)
async def test_a_bad_check_is_refused(client, register, check):
    user = await register()
    r = await client.put(
        "/api/v1/services/00000000-0000-4000-8000-000000000000",
        json={"check": check},
        headers=user.headers,
    )
    assert_error(r, 422, "VALIDATION_ERROR")


async def test_blocking_queries_are_bounded_per_user(client, register):
    from nefos.api.routes.services import MAX_WAITING

    user = await register()
    index = (await client.get("/api/v1/services", headers=user.headers)).json()["data"]["index"]
    # Waits that end on their own (nothing changes): no request is cancelled under
    # its database session.
    waiting = [
        asyncio.create_task(
            client.get(f"/api/v1/services?index={index}&wait=4s", headers=user.headers)
        )
        for _ in range(MAX_WAITING)
    ]
    await asyncio.sleep(1.0)
    assert not any(w.done() for w in waiting)
    r = await client.get(f"/api/v1/services?index={index}&wait=4s", headers=user.headers)
    assert_error(r, 429, "RATE_LIMITED")
    # Another user is not held up by this one's waits.
    other = await register()
    r = await client.get("/api/v1/services?index=1&wait=1s", headers=other.headers)
    assert r.status_code == 200
    answers = await asyncio.gather(*waiting)
    assert all(a.status_code == 200 and a.json()["data"]["index"] == index for a in answers)
    # Their slots are free again.
    r = await client.get(f"/api/v1/services?index={index}&wait=0s", headers=user.headers)
    assert r.status_code == 200


async def test_bad_list_queries_are_refused(client, register):
    user = await register()
    for query in ("health=sick", "index=1&wait=forever", "index=-1", "cursor=abc"):
        r = await client.get(f"/api/v1/services?{query}", headers=user.headers)
        assert_error(r, 422, "VALIDATION_ERROR")
    r = await client.put(
        "/api/v1/services/00000000-0000-4000-8000-000000000000",
        json={"metadata": {"bad key": "x"}},
        headers=user.headers,
    )
    assert_error(r, 422, "VALIDATION_ERROR")
    r = await client.get(
        "/api/v1/services/00000000-0000-4000-8000-000000000000", headers=user.headers
    )
    assert_error(r, 404, "NOT_FOUND")
