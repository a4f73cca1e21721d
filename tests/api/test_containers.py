"""Containers (seed 004) and their operations, end to end on the real test Podman.

Each container here is real: its replicas are engine containers running the busybox
test image, and the tests fetch its page over HTTP from the published ports.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest
from sqlalchemy import select, text

from nefos.api.app import create_app
from nefos.db.models import Container, ContainerReplica
from nefos.db.session import begin_write
from nefos.domain.publishing import PublishPolicy
from nefos.operations import queue
from nefos.services.containers import LABEL_SLOT
from nefos.services.users import UserService
from tests.api.conftest import Follow
from tests.conftest import (
    ADMIN_PASSWORD,
    TEST_IMAGE,
    Account,
    DatabaseFactory,
    docker_host_uri,
    join_org,
    make_settings,
    wait_operation,
)

V1 = "/api/v1"
PAGE = "nefos test page"
HTTPD = "/bin/busybox httpd -f -p 8080 -h /www"  # what the test image runs
NEW_PAGE = "the new generation"
#: Serves a page of its own (the test image's httpd, on another document root): what a
#: rolling update moves to.
SERVE_NEW = [
    "/bin/sh",
    "-c",
    f"mkdir -p /tmp/w && echo '{NEW_PAGE}' > /tmp/w/index.html && exec httpd -f -p 8080 -h /tmp/w",
]


def seed_body(name: str = "my-app", **extra: Any) -> dict[str, Any]:
    """Seed 004's example body, on the test image."""
    return {
        "name": name,
        "image": TEST_IMAGE,
        "ports": ["8080"],
        "environment": {"ENV": "production"},
        "resources": {"cpu": "0.5", "memory": "64m"},
        **extra,
    }


# --- helpers ------------------------------------------------------------------------------
def engine_containers(container_id: str) -> list[Any]:
    """The engine containers of one Nefos container (by its label)."""
    client = docker.DockerClient(base_url=docker_host_uri(), version="1.41")
    try:
        return list(
            client.containers.list(all=True, filters={"label": f"nefos.container={container_id}"})
        )
    finally:
        client.close()


def remove_engine_containers(container_ids: list[str]) -> None:
    for cid in container_ids:
        for c in engine_containers(cid):
            c.remove(force=True)


def assert_error(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body: dict[str, Any] = r.json()
    assert body["success"] is False and body["data"] is None
    assert body["error"]["code"] == code, body
    assert body["detail"] == body["error"]["message"]
    return body


async def fetch_page(port: int) -> str:
    async with httpx.AsyncClient(timeout=2) as http:
        r = await http.get(f"http://127.0.0.1:{port}/")
    return r.text if r.status_code == 200 else ""


async def eventually(check: Any, what: str, within: float = 30) -> Any:
    """Poll ``check`` until it returns a truthy value; fail at the deadline."""
    deadline = time.monotonic() + within
    last: Any = None
    while True:
        try:
            last = await check()
            if last:
                return last
        except httpx.HTTPError as exc:
            last = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not true within {within}s; last: {last!r}")
        await asyncio.sleep(0.1)


async def serves(port: int) -> None:
    text = await eventually(lambda: fetch_page(port), f"port {port} serves the page")
    assert PAGE in text


async def refuses(port: int) -> None:
    async def closed() -> bool:
        try:
            return await fetch_page(port) == ""
        except httpx.HTTPError:
            return True

    await eventually(closed, f"port {port} stops answering")


class Api:
    """Calls as one account, asserting the status."""

    def __init__(self, client: httpx.AsyncClient, who: Account) -> None:
        self.client = client
        self.who = who

    async def call(self, method: str, path: str, status: int = 200, **kw: Any) -> Any:
        headers = {**self.who.headers, **kw.pop("headers", {})}
        r = await self.client.request(method, V1 + path, headers=headers, **kw)
        assert r.status_code == status, f"{method} {path}: {r.status_code} {r.text}"
        return r.json()["data"]

    async def create(self, body: dict[str, Any], **kw: Any) -> dict[str, Any]:
        data: dict[str, Any] = await self.call("POST", "/containers", 202, json=body, **kw)
        return data

    async def created(self, body: dict[str, Any], **kw: Any) -> dict[str, Any]:
        """Create and wait for it to run; the container as GET shows it."""
        data = await self.create(body, **kw)
        op = await self.wait(data["operation"])
        assert op["status"] == "succeeded", op
        return await self.get(data["container_id"])

    async def get(self, container_id: str) -> dict[str, Any]:
        data = await self.call("GET", f"/containers/{container_id}")
        container: dict[str, Any] = data["container"]
        return container

    async def wait(self, op: dict[str, Any]) -> dict[str, Any]:
        return await wait_operation(self.client, self.who.headers, op)

    async def act(
        self, method: str, path: str, body: Any = None, expect: str = "succeeded"
    ) -> dict[str, Any]:
        """A 202 write, followed to its end."""
        data = await self.call(method, path, 202, json=body)
        op = await self.wait(data["operation"])
        assert op["status"] == expect, (op["error"], op)
        return data

    async def delete(self, container_id: str) -> None:
        await self.act("DELETE", f"/containers/{container_id}")
        await self.call("GET", f"/containers/{container_id}", 404)


async def new_org_project(api: Api) -> tuple[str, str]:
    org = await api.call(
        "POST", "/organisations", 201, json={"name": f"Org {uuid.uuid4().hex[:6]}"}
    )
    project = await api.call(
        "POST", "/projects", 201, json={"name": "apps", "organisation_id": org["id"]}
    )
    return org["id"], project["id"]


async def host_usage(client: httpx.AsyncClient, admin: Account, host_id: str) -> dict[str, Any]:
    r = await client.get(f"{V1}/resources/hosts/{host_id}", headers=admin.headers)
    assert r.status_code == 200, r.text
    used: dict[str, Any] = r.json()["data"]["used"]
    return used


IDLE = {"cpu_cores": 0, "memory_gb": 0, "storage_gb": 0, "instances": 0}


# --- the seed 004 flow --------------------------------------------------------------------
async def test_seed_004_flow_end_to_end(client, admin, register, podman_host):
    user = await register()
    api = Api(client, user)
    # Seed 004 calls the /api alias.
    r = await client.post("/api/containers", json=seed_body(), headers=user.headers)
    assert r.status_code == 202, r.text
    data = r.json()["data"]
    c = data["container"]
    assert c["status"] == "creating" and data["container_id"] == c["id"] and data["message"]
    assert c["name"] == "my-app" and c["image"] == TEST_IMAGE and c["ports"] == ["8080"]
    assert c["environment"] == {"ENV": "production"}
    assert c["resources"] == {"cpu": "0.5", "memory": "64m"} and c["replicas"] == 1
    assert c["project_id"] == user.project_id and c["user_id"] == user.id
    op_ref = data["operation"]
    assert op_ref["status"] == "pending" and op_ref["url"] == f"/api/v1/operations/{op_ref['id']}"
    assert r.headers["location"] == op_ref["url"]

    op = await api.wait(op_ref)
    assert op["status"] == "succeeded", op
    assert op["kind"] == "container.create" and op["resource_type"] == "container"
    assert op["resource_id"] == c["id"] and op["project_id"] == user.project_id
    assert op["progress"] == 100 and op["attempts"] == 1 and op["error"] is None
    assert op["result"] == {"replicas": 1}
    assert op["started_at"] and op["finished_at"]

    got = await api.get(c["id"])
    assert got["status"] == "running" and got["status_reason"] is None
    assert got["generation"] == 1
    assert got["replica_states"] == [
        {"slot": 0, "state": "running", "host_id": podman_host["id"], "generation": 1}
    ]
    [endpoint] = got["endpoints"]
    assert endpoint["replica"] == 0 and endpoint["container_port"] == 8080
    assert endpoint["protocol"] == "tcp" and endpoint["host"] == "podman-test"
    assert endpoint["host_port"] > 0
    await serves(endpoint["host_port"])
    metrics = got["metrics"]
    assert metrics is not None and metrics["replicas_reporting"] == 1
    assert metrics["cpu_usage"] >= 0 and metrics["memory_usage"] > 0
    assert metrics["memory_bytes"] > 0 and isinstance(metrics["network_io"], str)

    # The engine container: labelled, limited and configured as asked.
    [engine] = engine_containers(c["id"])
    assert engine.status == "running"
    labels = engine.labels
    assert labels["nefos.managed"] == "true" and labels["nefos.project"] == user.project_id
    assert labels["nefos.slot"] == "0" and engine.name == f"nefos-{labels['nefos.id']}"
    assert "ENV=production" in engine.attrs["Config"]["Env"]
    assert engine.attrs["HostConfig"]["Memory"] == 64 * 1024**2
    assert engine.attrs["HostConfig"]["NanoCpus"] == 500_000_000
    # The host carries the allocation.
    assert await host_usage(client, admin, podman_host["id"]) == {
        "cpu_cores": 0.5,
        "memory_gb": round(64 / 1024, 2),
        "storage_gb": 0,
        "instances": 1,
    }

    # Logs: busybox httpd -v logs each request it served.
    async def logged() -> Any:
        logs = await api.call("GET", f"/containers/{c['id']}/logs")
        return logs if logs["logs"] else None

    logs = await eventually(logged, "the request shows in the logs")
    assert logs["container_id"] == c["id"]
    [one] = logs["replicas"]
    assert one["replica"] == 0 and one["state"] == "running" and one["logs"] == logs["logs"]
    await api.call("GET", f"/containers/{c['id']}/logs", params={"replica": 0, "tail": 1})
    await api.call("GET", f"/containers/{c['id']}/logs", 404, params={"replica": 5})
    await api.call("GET", f"/containers/{c['id']}/logs", 422, params={"tail": 0})

    # Stop: the page goes away; start: it comes back.
    data = await api.act("PUT", f"/containers/{c['id']}/stop")
    assert data["container"]["status"] == "stopping"
    got = await api.get(c["id"])
    assert got["status"] == "stopped" and got["metrics"] is None
    assert [s["state"] for s in got["replica_states"]] == ["stopped"]
    await refuses(endpoint["host_port"])
    assert engine_containers(c["id"])[0].status == "exited"

    data = await api.act("PUT", f"/containers/{c['id']}/start")
    assert data["container"]["status"] == "starting"
    got = await api.get(c["id"])
    assert got["status"] == "running"
    [endpoint] = got["endpoints"]
    await serves(endpoint["host_port"])

    # The operations, newest first; a finished one cannot be cancelled.
    ops = await api.call("GET", "/operations", params={"resource_id": c["id"]})
    assert [o["kind"] for o in ops["items"]] == [
        "container.start",
        "container.stop",
        "container.create",
    ]
    assert all(o["status"] == "succeeded" for o in ops["items"])
    assert ops["pagination"]["total"] == 3
    ops = await api.call("GET", "/operations", params={"status": "pending"})
    assert ops["items"] == []
    r = await client.delete(f"{V1}/operations/{op['id']}", headers=user.headers)
    assert_error(r, 409, "CONFLICT")
    await api.call("GET", "/operations", 422, params={"status": "bogus"})
    assert (await api.call("GET", "/containers", params={"status": "degraded"}))["items"] == []
    await api.call("GET", f"/operations/{uuid.uuid4()}", 404)

    # Delete: the row, the engine container and the allocation go.
    data = await api.act("DELETE", f"/containers/{c['id']}")
    assert data["container"]["status"] == "deleting"
    await api.call("GET", f"/containers/{c['id']}", 404)
    assert engine_containers(c["id"]) == []
    assert await host_usage(client, admin, podman_host["id"]) == IDLE
    listed = await api.call("GET", "/containers")
    assert listed["items"] == [] and listed["pagination"]["total"] == 0
    ops = await api.call("GET", "/operations", params={"resource_id": c["id"]})
    assert ops["items"][0]["kind"] == "container.delete"
    assert ops["items"][0]["result"] == {"deleted": True}


async def test_command_as_a_string_and_its_output_in_the_logs(client, register, podman_host):
    api = Api(client, await register())
    marker = f"hello-{uuid.uuid4().hex[:8]}"
    c = await api.created(
        seed_body(
            "talker",
            command=f"/bin/busybox sh -c 'echo {marker}; exec {HTTPD}'",
        )
    )
    assert c["command"][:3] == ["/bin/busybox", "sh", "-c"]

    async def said() -> bool:
        logs = await api.call("GET", f"/containers/{c['id']}/logs")
        return marker in logs["logs"]

    await eventually(said, "the command's output shows in the logs")
    await serves(c["endpoints"][0]["host_port"])
    await api.delete(c["id"])


async def test_logs_follow_and_by_time(app, client, register, podman_host):
    """`follow=true` streams the lines every replica writes, with its slot and time,
    poll after poll; the same lines are found again by `since`/`until`, each after
    its time."""
    api = Api(client, await register())
    c = await api.created(seed_body("followed", replicas=2))
    logs = f"/containers/{c['id']}/logs"
    follow = Follow(app, V1 + logs, "follow=true&seconds=120", api.who.headers)
    await asyncio.wait_for(follow.started.wait(), 30)
    assert follow.status == 200
    engines = {int(e.labels[LABEL_SLOT]): e for e in engine_containers(c["id"])}
    assert sorted(engines) == [0, 1]

    async def said(slot: int) -> dict[str, Any]:
        marker = f"nefos-followed-{slot}-{uuid.uuid4().hex[:8]}"
        out = await asyncio.to_thread(
            engines[slot].exec_run, ["sh", "-c", f"echo {marker} > /proc/1/fd/1"]
        )
        assert out.exit_code == 0, out.output
        while not any(x["line"] == marker for x in follow.lines):
            follow.arrived.clear()
            await follow.arrived.wait()
        [line] = [x for x in follow.lines if x["line"] == marker]
        return line

    # Replica 1 first, then replica 0 (after a poll that read replica 1's line):
    # every replica is read on every poll, not only the last one read.
    one = await asyncio.wait_for(said(1), 60)  # a deadline, not a measure
    line = await asyncio.wait_for(said(0), 60)
    await follow.close()
    marker = line["line"]
    assert one["replica"] == 1 and line["replica"] == 0
    assert line["time"].startswith(str(time.gmtime().tm_year))

    # By time: within a window around it, each line after its time; not before it.
    at = datetime.fromisoformat(line["time"][:19] + "+00:00")
    window = {"timestamps": "true", "since": (at - timedelta(seconds=2)).isoformat()}
    within = await api.call(
        "GET", logs, params={**window, "until": (at + timedelta(seconds=2)).isoformat()}
    )
    [stamped] = [x for x in within["logs"].splitlines() if x.endswith(marker)]
    assert stamped.startswith("[replica 0] " + line["time"][:19])
    before = await api.call("GET", logs, params={"until": (at - timedelta(seconds=2)).isoformat()})
    assert marker not in before["logs"]

    # Bad asks: an empty window, a followed log with an end, a replica not there.
    empty = {"since": "2026-01-02T00:00:00Z", "until": "2026-01-01T00:00:00Z"}
    assert_error(
        await client.get(V1 + logs, params=empty, headers=api.who.headers), 422, "VALIDATION_ERROR"
    )
    endless = {"follow": "true", "until": "2030-01-01T00:00:00Z"}
    assert_error(
        await client.get(V1 + logs, params=endless, headers=api.who.headers),
        422,
        "VALIDATION_ERROR",
    )
    gone = {"follow": "true", "replica": 5}
    assert_error(
        await client.get(V1 + logs, params=gone, headers=api.who.headers), 404, "NOT_FOUND"
    )
    assert_error(
        await client.get(
            V1 + logs, params={"follow": "true", "seconds": 301}, headers=api.who.headers
        ),
        422,
        "VALIDATION_ERROR",
    )
    # Another tenant's container: 404, followed or not.
    other = Api(client, await register())
    await other.call("GET", logs, 404, params={"follow": "true"})
    await api.delete(c["id"])


# --- scaling ------------------------------------------------------------------------------
async def test_scale_rolling_and_recreate(client, admin, register, podman_host):
    api = Api(client, await register())
    c = await api.created(seed_body("scaled"))
    url = f"/containers/{c['id']}/scale"

    data = await api.act("POST", url, {"replicas": 3})
    assert data["container"]["status"] == "scaling" and data["replicas"] == 3
    # The answer shows the replica that runs (and its endpoint) beside the new ones.
    states = [(s["slot"], s["state"]) for s in data["container"]["replica_states"]]
    assert states == [(0, "running"), (1, "pending"), (2, "pending")]
    assert [e["replica"] for e in data["container"]["endpoints"]] == [0]
    got = await api.get(c["id"])
    assert got["status"] == "running" and got["replicas"] == 3
    assert [(s["slot"], s["state"]) for s in got["replica_states"]] == [
        (0, "running"),
        (1, "running"),
        (2, "running"),
    ]
    assert sorted(e["replica"] for e in got["endpoints"]) == [0, 1, 2]
    ports = {e["host_port"] for e in got["endpoints"]}
    assert len(ports) == 3
    for port in ports:
        await serves(port)
    assert len(engine_containers(c["id"])) == 3
    assert (await host_usage(client, admin, podman_host["id"]))["instances"] == 3
    assert got["metrics"]["replicas_reporting"] == 3
    logs = await api.call("GET", f"/containers/{c['id']}/logs")
    assert [r["replica"] for r in logs["replicas"]] == [0, 1, 2]

    # Rolling back down keeps the first replica.
    await api.act("POST", url, {"replicas": 1, "strategy": "rolling"})
    got = await api.get(c["id"])
    assert got["replicas"] == 1 and got["status"] == "running"
    assert [s["slot"] for s in got["replica_states"]] == [0]
    assert len(engine_containers(c["id"])) == 1
    await serves(got["endpoints"][0]["host_port"])

    # Recreate replaces every replica.
    await api.act("POST", url, {"replicas": 2, "strategy": "recreate"})
    got = await api.get(c["id"])
    assert got["replicas"] == 2 and got["status"] == "running"
    assert [s["slot"] for s in got["replica_states"]] == [1, 2]
    assert all(s["state"] == "running" for s in got["replica_states"])
    made = engine_containers(c["id"])
    assert sorted(e.labels["nefos.slot"] for e in made) == ["1", "2"]
    for e in got["endpoints"]:
        await serves(e["host_port"])
    assert (await host_usage(client, admin, podman_host["id"]))["instances"] == 2

    for bad in ({"replicas": 65}, {"replicas": 2, "strategy": "bogus"}, {}, {"replicas": "x"}):
        r = await client.post(V1 + url, json=bad, headers=api.who.headers)
        assert_error(r, 422, "VALIDATION_ERROR")
    await api.delete(c["id"])
    assert engine_containers(c["id"]) == []
    assert await host_usage(client, admin, podman_host["id"]) == IDLE


# --- listing ------------------------------------------------------------------------------
async def test_list_pages_and_filters_and_names_per_project(client, register, podman_host):
    owner, member = await register(), await register()
    api, member_api = Api(client, owner), Api(client, member)
    org_id, project_id = await new_org_project(api)
    await join_org(client, org_id, owner.headers, member, "member")
    # The project named three ways: X-Project-ID, ?project_id= and the body.
    a = await api.created(seed_body("a"), headers={"X-Project-ID": project_id})
    b = await api.created(seed_body("b"), params={"project_id": project_id})
    c = await member_api.created(seed_body("c", project_id=project_id))
    assert {x["project_id"] for x in (a, b, c)} == {project_id}
    # Names are unique per project, not across projects.
    r = await client.post(
        f"{V1}/containers",
        json=seed_body("a"),
        params={"project_id": project_id},
        headers=member.headers,
    )
    assert_error(r, 409, "CONFLICT")
    r = await client.post(
        f"{V1}/containers", json=seed_body("b", project_id=project_id), headers=owner.headers
    )
    assert_error(r, 409, "CONFLICT")
    mine = await api.created(seed_body("a"))  # the owner's default project
    assert mine["project_id"] == owner.project_id

    async def names(who: Api = api, **params: Any) -> list[str]:
        data = await who.call("GET", "/containers", params=params)
        assert data["items"] == data["containers"]
        return [x["name"] for x in data["items"]]

    data = await api.call("GET", "/containers", params={"project_id": project_id})
    assert data["pagination"] == {
        "page": 1,
        "limit": 20,
        "total": 3,
        "pages": 1,
        "next_cursor": None,
    }
    assert await names(project_id=project_id) == ["a", "b", "c"]
    r = await client.get(f"{V1}/containers", headers={**owner.headers, "X-Project-ID": project_id})
    assert [x["name"] for x in r.json()["data"]["items"]] == ["a", "b", "c"]
    assert await names() == ["a"] and (await names())[0] == mine["name"]
    assert await names(project_id=project_id, page=2, limit=2) == ["c"]
    assert await names(project_id=project_id, skip=1, limit=1) == ["b"]
    assert await names(project_id=project_id, user_id=member.id) == ["c"]
    assert await names(member_api, project_id=project_id, user_id=owner.id) == ["a", "b"]
    assert await names(project_id=project_id, user_id=str(uuid.uuid4())) == []
    listed = (await api.call("GET", "/containers", params={"project_id": project_id}))["items"]
    assert [x["replica_states"][0]["state"] for x in listed] == ["running"] * 3
    assert all(x["endpoints"] for x in listed)

    await api.act("PUT", f"/containers/{a['id']}/stop")
    assert await names(project_id=project_id, status="stopped") == ["a"]
    assert await names(project_id=project_id, status_filter="running") == ["b", "c"]
    # A status no container can have is a mistake, said as such.
    r = await client.get(
        f"{V1}/containers", params={"project_id": project_id, "status": "nosuch"},
        headers=owner.headers,
    )  # fmt: skip
    assert assert_error(r, 422, "VALIDATION_ERROR")["error"]["details"]["status"].startswith(
        "Input should be 'creating'"
    )
    await api.call("GET", "/containers", 422, params={"status": "BAD!"})
    await api.call("GET", "/containers", 422, params={"user_id": "not an id"})
    await api.call("GET", "/containers", 404, params={"project_id": str(uuid.uuid4())})

    for x in (a, b, c, mine):
        await api.delete(x["id"])
        assert engine_containers(x["id"]) == []


# --- refusals -------------------------------------------------------------------------------
async def test_invalid_bodies_are_422_with_the_envelope(client, register, podman_host):
    user = await register()
    bad = {
        "ports": seed_body(ports=["abc"]),
        "ports.0": seed_body(ports=["70000"]),
        "ports.1": seed_body(ports=["8080", "8080"]),
        "resources.memory": seed_body(resources={"cpu": "0.5", "memory": "12xx"}),
        "resources.cpu": seed_body(resources={"cpu": "lots", "memory": "64m"}),
        "colour": seed_body(colour="red"),
        "name": seed_body("bad name!"),
        "image": seed_body(image=""),
        "replicas": seed_body(replicas=0),
        "replicas.": seed_body(replicas=65),
        "environment": seed_body(environment={"1BAD": "x"}),
        "command": seed_body(command="sh -c 'unterminated"),
    }
    for field, body in bad.items():
        r = await client.post(f"{V1}/containers", json=body, headers=user.headers)
        err = assert_error(r, 422, "VALIDATION_ERROR")
        stem = field.split(".")[0]
        assert any(k.startswith(stem) for k in err["error"]["details"]), (field, err)
    r = await client.post(
        f"{V1}/containers",
        content=b"{not json",
        headers={**user.headers, "Content-Type": "application/json"},
    )
    assert_error(r, 400, "VALIDATION_ERROR")
    # A malformed project id in the body names no project (ids in bodies are not patterned).
    r = await client.post(
        f"{V1}/containers", json=seed_body(project_id="not an id"), headers=user.headers
    )
    assert_error(r, 404, "NOT_FOUND")
    r = await client.post(
        f"{V1}/containers",
        json=seed_body(),
        params={"project_id": "not an id"},
        headers=user.headers,
    )
    assert_error(r, 422, "VALIDATION_ERROR")
    listed = await Api(client, user).call("GET", "/containers")
    assert listed["items"] == []
    assert engine_managed_by(user.project_id) == []


def engine_managed_by(project_id: str) -> list[Any]:
    client = docker.DockerClient(base_url=docker_host_uri(), version="1.41")
    try:
        return list(
            client.containers.list(all=True, filters={"label": f"nefos.project={project_id}"})
        )
    finally:
        client.close()


async def test_quota_exceeded_makes_nothing(client, admin, register, podman_host):
    user = await register()
    api = Api(client, user)
    quota_url = f"/projects/{user.project_id}/quotas"
    await api.call("PUT", quota_url, json={"containers": 1})
    stats_before = await Api(client, admin).call("GET", "/resources/stats")

    r = await client.post(f"{V1}/containers", json=seed_body(replicas=2), headers=user.headers)
    err = assert_error(r, 409, "RESOURCE_EXHAUSTED")["error"]
    assert err["details"]["quota"] == "containers"
    assert err["details"]["limit"] == 1 and err["details"]["requested"] == 2
    assert (await api.call("GET", "/containers"))["items"] == []
    assert (await api.call("GET", "/operations"))["items"] == []
    assert await Api(client, admin).call("GET", "/resources/stats") == stats_before
    assert await host_usage(client, admin, podman_host["id"]) == IDLE
    assert engine_managed_by(user.project_id) == []

    # vCPUs count too.
    await api.call("PUT", quota_url, json={"containers": 10, "vcpus": 1})
    body = seed_body(replicas=3)
    r = await client.post(f"{V1}/containers", json=body, headers=user.headers)
    assert assert_error(r, 409, "RESOURCE_EXHAUSTED")["error"]["details"]["quota"] == "vcpus"

    # Within the quota it runs; a scale past it is refused and changes nothing.
    await api.call("PUT", quota_url, json={"containers": 1, "vcpus": None})
    c = await api.created(seed_body())
    r = await client.post(
        f"{V1}/containers/{c['id']}/scale", json={"replicas": 2}, headers=user.headers
    )
    assert assert_error(r, 409, "RESOURCE_EXHAUSTED")["error"]["details"]["quota"] == "containers"
    got = await api.get(c["id"])
    assert got["replicas"] == 1 and got["status"] == "running"
    assert len(got["replica_states"]) == 1 and len(engine_containers(c["id"])) == 1
    assert (await host_usage(client, admin, podman_host["id"]))["instances"] == 1
    # A second container is one engine container too many.
    r = await client.post(f"{V1}/containers", json=seed_body("two"), headers=user.headers)
    assert_error(r, 409, "RESOURCE_EXHAUSTED")

    quotas = await api.call("GET", quota_url)
    assert quotas["project_id"] == user.project_id
    assert quotas["limits"]["containers"] == 1 and quotas["limits"]["vcpus"] is None
    await api.delete(c["id"])


async def test_no_active_host_is_resource_exhausted(client, admin, register):
    user = await register()
    r = await client.post(f"{V1}/containers", json=seed_body(), headers=user.headers)
    assert_error(r, 409, "RESOURCE_EXHAUSTED")
    # An offline host is no better.
    r = await client.post(
        f"{V1}/resources/hosts",
        json={"hostname": "dead", "driver": "docker", "uri": "unix:///nonexistent.sock"},
        headers=admin.headers,
    )
    assert r.status_code == 201 and r.json()["data"]["status"] == "offline"
    r = await client.post(f"{V1}/containers", json=seed_body(), headers=user.headers)
    assert_error(r, 409, "RESOURCE_EXHAUSTED")
    api = Api(client, user)
    assert (await api.call("GET", "/containers"))["items"] == []
    assert (await api.call("GET", "/operations"))["items"] == []


async def test_an_unknown_image_fails_the_operation(
    client, admin, register, podman_host, app, monkeypatch
):
    # Pulling off, so the reference passes the request's registry check and the
    # engine's missing image fails the operation (tests/security/test_image_pulls.py).
    monkeypatch.setattr(app.state.core.settings, "container_image_pull", False)
    api = Api(client, await register())
    data = await api.create(seed_body(image="localhost/nefos-no-such-image:never"))
    assert data["container"]["status"] == "creating"
    op = await api.wait(data["operation"])
    assert op["status"] == "failed", op
    assert op["error"]["code"] == "IMAGE_PULL_FAILED" and op["error"]["message"], op
    got = await api.get(data["container_id"])
    assert got["status"] == "error" and got["status_reason"]
    assert got["metrics"] is None and got["endpoints"] == []
    assert engine_containers(data["container_id"]) == []
    # What it held is free again before it is deleted.
    assert await host_usage(client, admin, podman_host["id"]) == IDLE
    # It never ran: a failed operation, not a crash.
    await app.state.alert_engine.on_samples([])
    r = await client.get(f"{V1}/monitoring/alerts", headers=api.who.headers)
    assert r.status_code == 200, r.text
    assert [a for a in r.json()["data"]["items"] if a["kind"] == "instance_crashed"] == []
    # It can still be deleted, and the allocation goes with it.
    await api.delete(data["container_id"])
    assert await host_usage(client, admin, podman_host["id"]) == IDLE


async def test_a_failed_scale_up_gives_its_capacity_back(client, admin, register, podman_host, app):
    api = Api(client, await register())
    c = await api.created(seed_body("grows"))
    before = await host_usage(client, admin, podman_host["id"])
    # The image goes away behind Nefos's back: the new replicas cannot be made.
    async with app.state.core.db.sessionmaker() as session:
        await begin_write(session)
        row = await session.get(Container, c["id"])
        assert row is not None
        row.image = "localhost/nefos-no-such-image:never"
        await session.commit()
    await api.act("POST", f"/containers/{c['id']}/scale", {"replicas": 3}, expect="failed")
    assert await host_usage(client, admin, podman_host["id"]) == before
    got = await api.get(c["id"])
    assert [(s["slot"], s["state"]) for s in got["replica_states"]] == [(0, "running")]
    await api.delete(c["id"])


# --- publishing ports ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "ports",
    [["127.0.0.1:31000:8080"], ["22:8080"], ["8150:8080"], ["0.0.0.0::8080"], ["5432:8080"]],
)
async def test_tenants_publish_only_in_the_range_on_the_public_address(
    client, register, podman_host, ports
):
    user = await register()
    r = await client.post(f"{V1}/containers", json=seed_body(ports=ports), headers=user.headers)
    body = assert_error(r, 422, "VALIDATION_ERROR")
    assert "ports" in body["error"]["message"]
    assert (await Api(client, user).call("GET", "/containers"))["items"] == []


async def test_a_bare_port_gets_a_host_port_of_the_range(client, register, podman_host):
    api = Api(client, await register())
    c = await api.created(seed_body("ranged", ports=["8080"]))
    [endpoint] = c["endpoints"]
    assert 30000 <= endpoint["host_port"] <= 32767
    await serves(endpoint["host_port"])
    # A fixed port inside the range is the tenant's to choose.
    port = 32767 if endpoint["host_port"] != 32767 else 32766
    fixed = await api.created(seed_body("fixed", ports=[f"{port}:8080"]))
    assert [e["host_port"] for e in fixed["endpoints"]] == [port]
    await serves(port)
    await api.delete(c["id"])
    await api.delete(fixed["id"])


def _two_free_ports() -> tuple[socket.socket, int, int]:
    """A listening socket on a port of the range (as any process of the host might
    hold one) and the free port after it."""
    for low in range(31000 + uuid.uuid4().int % 1500, 32700):
        held = socket.socket()
        try:
            held.bind(("0.0.0.0", low))
            with socket.socket() as probe:
                probe.bind(("0.0.0.0", low + 1))
        except OSError:
            held.close()
            continue
        held.listen()
        return held, low, low + 1
    raise AssertionError("no two free ports in the range")


async def test_a_picked_port_taken_on_the_host_is_picked_again(
    client, register, podman_host, app, monkeypatch
):
    """Nefos knows the ports its own replicas publish, not those of the host's other
    processes (or of another installation): the engine refuses a start on a taken
    one, and the replica is made again on another port of the range."""
    held, taken, free = _two_free_ports()
    settings = app.state.core.settings
    monkeypatch.setitem(
        settings.__dict__,
        "publish_policy",
        PublishPolicy(low=taken, high=free, reserved=settings.publish_policy.reserved),
    )

    def lowest(self: PublishPolicy, used: Any, rng: Any = None) -> int | None:
        ports = range(self.low, self.high + 1)
        return next((p for p in ports if p not in used and p not in self.reserved), None)

    monkeypatch.setattr(PublishPolicy, "pick", lowest)  # the taken port comes first
    try:
        api = Api(client, await register())
        c = await api.created(seed_body("second-pick", ports=["8080"]))
        assert [e["host_port"] for e in c["endpoints"]] == [free]
        await serves(free)
        await api.delete(c["id"])
    finally:
        held.close()


async def test_a_platform_admin_may_publish_outside_the_range(client, admin, podman_host):
    api = Api(client, admin)
    c = await api.created(seed_body("admin-port", ports=["127.0.0.1:29999:8080"]))
    assert [(e["host_ip"], e["host_port"]) for e in c["endpoints"]] == [("127.0.0.1", 29999)]
    await serves(29999)
    # Never on the platform's own ports.
    r = await client.post(
        f"{V1}/containers", json=seed_body("on-pg", ports=["5432:8080"]), headers=admin.headers
    )
    assert_error(r, 422, "VALIDATION_ERROR")
    await api.delete(c["id"])


# --- tenants, roles and scopes --------------------------------------------------------------
async def test_another_tenants_container_does_not_exist_for_me(client, register, podman_host):
    owner, other = await register(), await register()
    api = Api(client, owner)
    c = await api.created(seed_body())
    [op] = (await api.call("GET", "/operations"))["items"]
    theirs = {"container": c["id"], "op": op["id"], "project": owner.project_id}
    random = {"container": str(uuid.uuid4()), "op": str(uuid.uuid4()), "project": str(uuid.uuid4())}

    def calls(ids: dict[str, str]) -> list[tuple[str, str, dict[str, Any]]]:
        cid = ids["container"]
        return [
            ("GET", f"/containers/{cid}", {}),
            ("PUT", f"/containers/{cid}/start", {}),
            ("PUT", f"/containers/{cid}/stop", {}),
            ("POST", f"/containers/{cid}/scale", {"json": {"replicas": 2}}),
            ("DELETE", f"/containers/{cid}", {}),
            ("GET", f"/containers/{cid}/logs", {}),
            ("GET", f"/operations/{ids['op']}", {}),
            ("DELETE", f"/operations/{ids['op']}", {}),
            ("GET", "/containers", {"params": {"project_id": ids["project"]}}),
            ("GET", "/containers", {"headers": {"X-Project-ID": ids["project"]}}),
            ("POST", "/containers", {"json": seed_body("x", project_id=ids["project"])}),
            (
                "POST",
                "/containers",
                {"json": seed_body("x"), "params": {"project_id": ids["project"]}},
            ),
        ]

    for (method, path, kw), (_, fake_path, fake_kw) in zip(
        calls(theirs), calls(random), strict=True
    ):
        headers = {**other.headers, **kw.pop("headers", {})}
        r = await client.request(method, V1 + path, headers=headers, **kw)
        assert_error(r, 404, "NOT_FOUND")
        fake_headers = {**other.headers, **fake_kw.pop("headers", {})}
        f = await client.request(method, V1 + fake_path, headers=fake_headers, **fake_kw)
        assert f.json()["error"]["code"] == "NOT_FOUND"
    other_api = Api(client, other)
    assert (await other_api.call("GET", "/containers"))["items"] == []
    assert (await other_api.call("GET", "/operations"))["items"] == []
    assert (await other_api.call("GET", "/operations", params={"resource_id": c["id"]}))[
        "items"
    ] == []
    # Nothing of it changed.
    got = await api.get(c["id"])
    assert got["status"] == "running" and got["replicas"] == 1
    await api.delete(c["id"])


async def test_viewers_read_members_write(client, register, podman_host):
    owner, viewer, member = await register(), await register(), await register()
    api = Api(client, owner)
    org_id, project_id = await new_org_project(api)
    for who, role in ((viewer, "viewer"), (member, "member")):
        await join_org(client, org_id, owner.headers, who, role)
    c = await api.created(seed_body(project_id=project_id))
    [op] = (await api.call("GET", "/operations", params={"resource_id": c["id"]}))["items"]
    view = Api(client, viewer)
    assert (await view.get(c["id"]))["status"] == "running"
    listed = await view.call("GET", "/containers", params={"project_id": project_id})
    assert [x["id"] for x in listed["items"]] == [c["id"]]
    await view.call("GET", f"/containers/{c['id']}/logs")
    assert (await view.call("GET", f"/operations/{op['id']}"))["id"] == op["id"]
    assert [o["id"] for o in (await view.call("GET", "/operations"))["items"]] == [op["id"]]
    writes = [
        ("PUT", f"/containers/{c['id']}/start", None),
        ("PUT", f"/containers/{c['id']}/stop", None),
        ("POST", f"/containers/{c['id']}/scale", {"replicas": 2}),
        ("DELETE", f"/containers/{c['id']}", None),
        ("DELETE", f"/operations/{op['id']}", None),
        ("POST", "/containers", seed_body("v", project_id=project_id)),
    ]
    for method, path, body in writes:
        r = await client.request(method, V1 + path, json=body, headers=viewer.headers)
        assert_error(r, 403, "FORBIDDEN")
    assert (await api.get(c["id"]))["status"] == "running"
    # A member runs workloads there.
    made = await Api(client, member).created(seed_body("m", project_id=project_id))
    assert made["user_id"] == member.id and made["status"] == "running"
    await Api(client, member).delete(c["id"])
    await Api(client, member).delete(made["id"])


async def test_a_read_only_api_key_cannot_write(client, register, podman_host):
    owner = await register()
    api = Api(client, owner)
    c = await api.created(seed_body())
    key = await api.call("POST", "/api-keys", 201, json={"name": "ro", "scopes": ["compute:read"]})
    ro = {"Authorization": f"Bearer {key['key']}"}
    r = await client.get(f"{V1}/containers", headers=ro)
    assert r.status_code == 200 and [x["id"] for x in r.json()["data"]["items"]] == [c["id"]]
    assert (await client.get(f"{V1}/containers/{c['id']}", headers=ro)).status_code == 200
    assert (await client.get(f"{V1}/operations", headers=ro)).status_code == 200
    for method, path, body in (
        ("POST", "/containers", seed_body("k")),
        ("PUT", f"/containers/{c['id']}/stop", None),
        ("POST", f"/containers/{c['id']}/scale", {"replicas": 2}),
        ("DELETE", f"/containers/{c['id']}", None),
    ):
        r = await client.request(method, V1 + path, json=body, headers=ro)
        err = assert_error(r, 403, "FORBIDDEN")["error"]
        assert err["details"]["required_scope"] == "compute:write"
    key = await api.call(
        "POST", "/api-keys", 201, json={"name": "rw", "scopes": ["compute:read", "compute:write"]}
    )
    rw = {"Authorization": f"Bearer {key['key']}"}
    r = await client.post(f"{V1}/containers", json=seed_body("k"), headers=rw)
    assert r.status_code == 202, r.text
    op = await wait_operation(client, rw, r.json()["data"]["operation"])
    assert op["status"] == "succeeded"
    await api.delete(r.json()["data"]["container_id"])
    await api.delete(c["id"])


# --- pending operations: a platform whose workers do not run ---------------------------------
@dataclass
class Idle:
    """A platform of its own with no workers: operations stay pending until
    ``run_one`` runs the oldest."""

    app: Any
    client: httpx.AsyncClient
    admin: Account
    host: dict[str, Any]
    made: list[str]

    async def run_one(self) -> None:
        assert await self.app.state.core.workers.run_one()


@pytest.fixture
def idle_database(databases: DatabaseFactory) -> str:
    # A sync fixture: making a PostgreSQL database runs its own event loop.
    return databases.new_url()


@pytest.fixture
async def idle(idle_database: str, tmp_path: Path) -> AsyncIterator[Idle]:
    settings = make_settings(idle_database, tmp_path, workers=0)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        core = app.state.core
        async with core.db.session() as session:
            await UserService(core, session).ensure_admin()
        transport = httpx.ASGITransport(app=app, client=("203.0.113.9", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://nefos.test") as c:
            r = await c.post(
                f"{V1}/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD}
            )
            assert r.status_code == 200, r.text
            d = r.json()["data"]
            admin = Account(d["user"], d["access_token"], d["refresh_token"], ADMIN_PASSWORD)
            r = await c.post(
                f"{V1}/resources/hosts",
                json={"hostname": "podman-idle", "driver": "docker", "uri": docker_host_uri()},
                headers=admin.headers,
            )
            assert r.status_code == 201 and r.json()["data"]["status"] == "active", r.text
            platform = Idle(app, c, admin, r.json()["data"], [])
            try:
                yield platform
            finally:
                remove_engine_containers(platform.made)


async def test_cancelling_a_pending_create_undoes_it(idle: Idle):
    client, admin = idle.client, idle.admin
    api = Api(client, admin)
    data = await api.create(seed_body())
    cid, op = data["container_id"], data["operation"]
    idle.made.append(cid)
    assert (await api.call("GET", op["url"].removeprefix(V1)))["status"] == "pending"
    assert (await host_usage(client, admin, idle.host["id"]))["instances"] == 1
    assert (await api.get(cid))["status"] == "creating"

    # Any other write on it waits for the pending one.
    for method, path, body in (
        ("PUT", f"/containers/{cid}/stop", None),
        ("PUT", f"/containers/{cid}/start", None),
        ("POST", f"/containers/{cid}/scale", {"replicas": 2}),
        ("DELETE", f"/containers/{cid}", None),
    ):
        r = await client.request(method, V1 + path, json=body, headers=admin.headers)
        err = assert_error(r, 409, "CONFLICT")["error"]
        assert err["details"]["operation_id"] == op["id"]

    pending = await api.call("GET", "/operations", params={"status": "pending"})
    assert [o["id"] for o in pending["items"]] == [op["id"]]
    cancelled = await api.call("DELETE", f"/operations/{op['id']}")
    assert cancelled["status"] == "cancelled" and cancelled["finished_at"]
    assert (await api.call("GET", f"/operations/{op['id']}"))["status"] == "cancelled"
    await api.call("GET", f"/containers/{cid}", 404)
    assert await host_usage(client, admin, idle.host["id"]) == IDLE
    assert (await api.call("GET", "/containers"))["items"] == []
    # Once cancelled it stays so, and no worker runs it.
    r = await client.delete(f"{V1}/operations/{op['id']}", headers=admin.headers)
    assert_error(r, 409, "CONFLICT")
    assert not await idle.app.state.core.workers.run_one()
    assert engine_containers(cid) == []
    # The project and its quotas are untouched.
    quotas = await api.call("GET", f"/projects/{admin.project_id}/quotas")
    assert quotas["limits"]["containers"] == 50
    # The name is free again.
    data = await api.create(seed_body())
    idle.made.append(data["container_id"])
    await api.call("DELETE", f"/operations/{data['operation']['id']}")


async def test_cancelling_a_create_while_its_health_is_written(idle: Idle):
    """A health check's write holds the container (as its new row's foreign key does,
    before it reaches the replica) when the create is cancelled: the cancel waits for
    the write instead of removing the replica under it. It used to remove the replica
    first, and the two transactions deadlocked (PostgreSQL aborted the cancel: a 500)."""
    core = idle.app.state.core
    if core.db.engine.dialect.name != "postgresql":
        pytest.skip("row locks are PostgreSQL's; SQLite has one writer")
    api = Api(idle.client, idle.admin)
    data = await api.create(seed_body())
    cid, op = data["container_id"], data["operation"]
    idle.made.append(cid)
    async with core.db.sessionmaker() as session:
        (replica_id,) = (
            await session.scalars(
                select(ContainerReplica.id).where(ContainerReplica.container_id == cid)
            )
        ).all()

    async with core.db.sessionmaker() as writer, core.db.sessionmaker() as watcher:
        pid = await writer.scalar(text("SELECT pg_backend_pid()"))
        await writer.execute(
            select(Container.id).where(Container.id == cid).with_for_update(key_share=True)
        )
        cancel = asyncio.create_task(
            idle.client.delete(f"{V1}/operations/{op['id']}", headers=idle.admin.headers)
        )
        blocked = text(
            "SELECT count(*) FROM pg_stat_activity WHERE :pid = ANY(pg_blocking_pids(pid))"
        )
        deadline = time.monotonic() + 30
        while not await watcher.scalar(blocked, {"pid": pid}):
            assert not cancel.done(), cancel.result().text
            assert time.monotonic() < deadline, "the cancel never waited for the writer"
            await asyncio.sleep(0.05)
            await watcher.rollback()  # a fresh snapshot of pg_stat_activity
        # The replica is still there for the writer to hold, as its row's key needs.
        live = await writer.scalars(
            select(ContainerReplica.id)
            .where(ContainerReplica.id == replica_id)
            .with_for_update(key_share=True)
        )
        assert live.all() == [replica_id]
        await writer.commit()
    r = await cancel
    assert r.status_code == 200, r.text
    assert r.json()["data"]["status"] == "cancelled"
    await api.call("GET", f"/containers/{cid}", 404)


async def test_cancelling_a_pending_stop_or_scale_restores_the_container(idle: Idle):
    client, admin = idle.client, idle.admin
    api = Api(client, admin)
    data = await api.create(seed_body())
    cid = data["container_id"]
    idle.made.append(cid)
    await idle.run_one()
    assert (await api.call("GET", data["operation"]["url"].removeprefix(V1)))[
        "status"
    ] == "succeeded"
    got = await api.get(cid)
    assert got["status"] == "running"
    await serves(got["endpoints"][0]["host_port"])

    stop = await api.call("PUT", f"/containers/{cid}/stop", 202)
    assert (await api.get(cid))["status"] == "stopping"
    await api.call("DELETE", f"/operations/{stop['operation']['id']}")
    assert (await api.get(cid))["status"] == "running"

    scale = await api.call("POST", f"/containers/{cid}/scale", 202, json={"replicas": 3})
    got = await api.get(cid)
    assert got["status"] == "scaling" and got["replicas"] == 3
    assert len(got["replica_states"]) == 3
    assert (await host_usage(client, admin, idle.host["id"]))["instances"] == 3
    await api.call("DELETE", f"/operations/{scale['operation']['id']}")
    got = await api.get(cid)
    assert got["status"] == "running" and got["replicas"] == 1
    assert [s["slot"] for s in got["replica_states"]] == [0]
    assert (await host_usage(client, admin, idle.host["id"]))["instances"] == 1
    assert len(engine_containers(cid)) == 1
    await serves(got["endpoints"][0]["host_port"])
    # A finished operation cannot be cancelled.
    r = await client.delete(data["operation"]["url"], headers=admin.headers)
    assert_error(r, 409, "CONFLICT")

    gone = await api.call("DELETE", f"/containers/{cid}", 202)
    await idle.run_one()
    op = await api.call("GET", f"/operations/{gone['operation']['id']}")
    assert op["status"] == "succeeded", op
    await api.call("GET", f"/containers/{cid}", 404)
    assert engine_containers(cid) == []
    assert await host_usage(client, admin, idle.host["id"]) == IDLE


async def test_a_pending_update_cancelled_puts_the_spec_back(idle: Idle):
    client, admin = idle.client, idle.admin
    api = Api(client, admin)
    data = await api.create(seed_body())
    cid = data["container_id"]
    idle.made.append(cid)
    await idle.run_one()
    assert (await api.get(cid))["status"] == "running"

    upd = await api.call("PUT", f"/containers/{cid}", 202, json={"resources": {"cpu": "0.25"}})
    got = await api.get(cid)
    assert got["status"] == "updating" and got["generation"] == 2
    assert got["resources"] == {"cpu": "0.25", "memory": "64m"}
    assert len(got["replica_states"]) == 2
    assert (await host_usage(client, admin, idle.host["id"]))["instances"] == 2
    await api.call("DELETE", f"/operations/{upd['operation']['id']}")
    got = await api.get(cid)
    assert got["status"] == "running" and got["generation"] == 1
    assert got["resources"] == {"cpu": "0.5", "memory": "64m"}
    assert [(r["slot"], r["generation"]) for r in got["replica_states"]] == [(0, 1)]
    assert (await host_usage(client, admin, idle.host["id"]))["instances"] == 1


async def test_an_update_whose_worker_dies_is_finished_by_the_next_claim(idle: Idle):
    client, admin = idle.client, idle.admin
    api = Api(client, admin)
    core = idle.app.state.core
    data = await api.create(seed_body(replicas=2))
    cid = data["container_id"]
    idle.made.append(cid)
    await idle.run_one()

    upd = await api.call("PUT", f"/containers/{cid}", 202, json={"command": SERVE_NEW})
    # A worker runs it and dies once the first new replica runs (its task cancelled:
    # the lease is left to run out, as when a process is killed).
    worker = asyncio.create_task(core.workers.run_one())
    deadline = time.monotonic() + 60
    while True:
        states = (await api.get(cid))["replica_states"]
        if any(r["generation"] == 2 and r["state"] == "running" for r in states):
            break
        assert time.monotonic() < deadline and not worker.done(), states
        await asyncio.sleep(0.05)
    worker.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await worker
    op = await api.call("GET", f"/operations/{upd['operation']['id']}")
    assert op["status"] == "running"

    # The reconciler requeues it (its heartbeat is older than the lease); the next
    # claim finishes the rollout from where it stood.
    async with core.db.sessionmaker() as session:
        assert await queue.requeue_stale(session, 0) == [op["id"]]
    await idle.run_one()
    op = await api.call("GET", f"/operations/{op['id']}")
    assert op["status"] == "succeeded" and op["attempts"] == 2, op
    got = await api.get(cid)
    assert got["status"] == "running" and got["generation"] == 2
    assert [r["generation"] for r in got["replica_states"]] == [2, 2]
    engine = engine_containers(cid)
    assert len(engine) == 2
    assert {e.labels["nefos.id"] for e in engine} == {
        r["id"] for r in (await api.call("GET", f"/services/{cid}"))["service"]["instances"]
    }
