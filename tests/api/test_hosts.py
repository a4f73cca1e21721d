"""Hosts and capacity (seed 003 "resources"), against the real test Podman."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import docker
import httpx
import pytest

from nefos.db.models import Host
from nefos.drivers.base import HostUnreachable
from nefos.operations import Retry
from nefos.schemas.compute import HostDraining
from nefos.services.hosts import HostService, driver_call
from tests.conftest import TEST_IMAGE, docker_host_uri, wait_operation

V1 = "/api/v1"
# Seed 003's body, on a loopback address: a test reaches nothing outside this machine.
SEED_003_HOST = {
    "hostname": "compute-01",
    "ip_address": "127.0.0.2",
    "cpu_cores": 16,
    "memory_gb": 64,
    "storage_gb": 1000,
    "hypervisor_type": "kvm",
}
SEED_003_STATS = {
    "total_hosts",
    "active_hosts",
    "total_cpu_cores",
    "total_memory_gb",
    "total_storage_gb",
    "used_cpu_cores",
    "used_memory_gb",
    "used_storage_gb",
    "utilization_percentage",
}


def engine() -> docker.DockerClient:
    return docker.DockerClient(base_url=docker_host_uri(), version="1.41")


def engine_containers(container_id: str) -> list[Any]:
    client = engine()
    try:
        return list(
            client.containers.list(all=True, filters={"label": f"nefos.container={container_id}"})
        )
    finally:
        client.close()


async def add_host(client: httpx.AsyncClient, admin: Any, **body: Any) -> dict[str, Any]:
    r = await client.post(f"{V1}/resources/hosts", json=body, headers=admin.headers)
    assert r.status_code == 201, r.text
    data: dict[str, Any] = r.json()["data"]
    return data


async def serves_page(port: int, *, within: float = 30) -> bool:
    """The busybox test page answers on 127.0.0.1:port (polled until ``within``)."""
    deadline = time.monotonic() + within
    last: Any = None
    async with httpx.AsyncClient(timeout=2) as http:
        while True:
            try:
                r = await http.get(f"http://127.0.0.1:{port}/")
                if r.status_code == 200 and "nefos test page" in r.text:
                    return True
                last = r
            except httpx.HTTPError as exc:
                last = exc
            if time.monotonic() > deadline:
                raise AssertionError(f"port {port} does not serve the page: {last!r}")
            await asyncio.sleep(0.1)


def assert_error(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body: dict[str, Any] = r.json()
    assert body["success"] is False and body["data"] is None
    assert body["error"]["code"] == code
    assert body["detail"] == body["error"]["message"]
    return body


# --- registering ------------------------------------------------------------------------
async def test_a_docker_host_is_active_with_the_engines_real_capacity(client, admin):
    host = await add_host(
        client, admin, hostname="engine-1", driver="docker", uri=docker_host_uri()
    )
    client_ = engine()
    try:
        info = client_.info()
    finally:
        client_.close()
    assert host["status"] == "active" and host["enabled"] is True
    assert host["driver"] == "docker" and host["uri"] == docker_host_uri()
    assert host["hypervisor_type"] == "docker"
    assert host["cpu_cores"] == info["NCPU"]
    assert host["memory_mb"] == info["MemTotal"] // 1024**2
    assert host["memory_gb"] == round(host["memory_mb"] / 1024, 2)
    assert host["storage_gb"] > 0  # a local socket: the engine's disk, looked at
    assert host["used"] == {"cpu_cores": 0, "memory_gb": 0, "storage_gb": 0, "instances": 0}
    assert host["last_error"] is None and host["last_seen_at"] is not None
    assert host["max_instances"] is None

    r = await client.get(f"{V1}/resources/hosts/{host['id']}", headers=admin.headers)
    assert r.status_code == 200 and r.json()["data"] == host
    # The /api alias serves the same.
    r = await client.get(f"/api/resources/hosts/{host['id']}", headers=admin.headers)
    assert r.status_code == 200 and r.json()["data"] == host


async def test_seed_003_body_registers_a_libvirt_host_with_its_declared_capacity(client, admin):
    r = await client.post(f"{V1}/resources/hosts", json=SEED_003_HOST, headers=admin.headers)
    assert r.status_code == 201, r.text
    host = r.json()["data"]
    assert host["hostname"] == "compute-01" and host["ip_address"] == "127.0.0.2"
    assert host["driver"] == "libvirt" and host["hypervisor_type"] == "kvm"
    assert host["uri"] == "qemu+ssh://root@127.0.0.2/system"
    # No libvirtd answers over ssh there: it is offline and says why.
    assert host["status"] == "offline"
    assert "libvirt" in host["last_error"] and host["last_seen_at"] is None
    assert host["cpu_cores"] == 16 and host["memory_gb"] == 64 and host["memory_mb"] == 65536
    assert host["storage_gb"] == 1000


async def test_an_unreachable_docker_host_is_offline_with_its_declared_capacity(client, admin):
    host = await add_host(
        client,
        admin,
        hostname="gone",
        driver="docker",
        uri="unix:///nonexistent.sock",
        cpu_cores=4,
        memory_gb=8,
        storage_gb=100,
    )
    assert host["status"] == "offline" and host["last_error"]
    assert host["last_seen_at"] is None
    assert (host["cpu_cores"], host["memory_mb"], host["storage_gb"]) == (4, 8192, 100)
    # The driver follows from the URI when none is named.
    host = await add_host(client, admin, hostname="gone-2", uri="unix:///nonexistent.sock")
    assert host["driver"] == "docker" and host["status"] == "offline"


async def test_bad_driver_or_uri_is_a_422(client, admin):
    bad = [
        {"hostname": "h1", "driver": "vmware", "uri": "unix:///x.sock"},
        {"hostname": "h1", "driver": "docker", "uri": "ftp://example.com"},
        {"hostname": "h1", "driver": "libvirt", "uri": "unix:///x.sock"},
        {"hostname": "h1", "driver": "docker"},  # neither uri nor ip_address
        {"hostname": "h1", "uri": "ftp://example.com"},  # no driver follows from it
        {"hostname": "h1", "hypervisor_type": "vmware", "ip_address": "10.0.0.1"},
        {"hostname": "h1", "driver": "docker", "uri": "tcp://example.com:notaport"},
        {"hostname": "bad host!", "driver": "docker", "uri": docker_host_uri()},
        {"hostname": "h1", "driver": "docker", "uri": docker_host_uri(), "cpu_cores": 0},
        {"hostname": "h1", "driver": "docker", "uri": docker_host_uri(), "colour": "red"},
    ]
    for body in bad:
        r = await client.post(f"{V1}/resources/hosts", json=body, headers=admin.headers)
        assert_error(r, 422, "VALIDATION_ERROR")
    r = await client.get(f"{V1}/resources/hosts", headers=admin.headers)
    assert r.json()["data"]["items"] == []


async def test_a_duplicate_hostname_is_a_409(client, admin):
    await add_host(client, admin, hostname="dup", driver="docker", uri="unix:///nonexistent.sock")
    r = await client.post(
        f"{V1}/resources/hosts",
        json={"hostname": "dup", "driver": "docker", "uri": docker_host_uri()},
        headers=admin.headers,
    )
    assert_error(r, 409, "CONFLICT")


async def test_hosts_are_for_platform_admins_only(client, admin, register):
    host = await add_host(
        client, admin, hostname="private", driver="docker", uri="unix:///nonexistent.sock"
    )
    user = await register()
    calls = [
        ("GET", "/resources/hosts", None),
        ("POST", "/resources/hosts", {"hostname": "mine", "uri": docker_host_uri()}),
        ("GET", f"/resources/hosts/{host['id']}", None),
        ("GET", f"/resources/hosts/{uuid.uuid4()}", None),
        ("DELETE", f"/resources/hosts/{host['id']}", None),
        ("GET", "/resources/stats", None),
    ]
    for method, path, body in calls:
        r = await client.request(method, V1 + path, json=body, headers=user.headers)
        assert_error(r, 403, "FORBIDDEN")
    r = await client.get(f"{V1}/resources/hosts/{host['id']}", headers=admin.headers)
    assert r.status_code == 200
    r = await client.get(f"{V1}/resources/hosts", headers=admin.headers)
    assert [h["hostname"] for h in r.json()["data"]["items"]] == ["private"]


async def test_list_get_and_delete(client, admin):
    made = [
        await add_host(
            client, admin, hostname=f"h{i}", driver="docker", uri="unix:///nonexistent.sock"
        )
        for i in range(3)
    ]
    r = await client.get(f"{V1}/resources/hosts", headers=admin.headers)
    data = r.json()["data"]
    assert [h["hostname"] for h in data["items"]] == ["h0", "h1", "h2"]
    assert data["pagination"] == {
        "page": 1,
        "limit": 20,
        "total": 3,
        "pages": 1,
        "next_cursor": None,
    }
    r = await client.get(
        f"{V1}/resources/hosts", params={"page": 2, "limit": 2}, headers=admin.headers
    )
    assert [h["hostname"] for h in r.json()["data"]["items"]] == ["h2"]
    r = await client.get(
        f"{V1}/resources/hosts", params={"skip": 1, "limit": 1}, headers=admin.headers
    )
    assert [h["hostname"] for h in r.json()["data"]["items"]] == ["h1"]

    r = await client.get(f"{V1}/resources/hosts/{uuid.uuid4()}", headers=admin.headers)
    assert_error(r, 404, "NOT_FOUND")
    r = await client.get(f"{V1}/resources/hosts/not%00an-id", headers=admin.headers)
    assert_error(r, 422, "VALIDATION_ERROR")

    r = await client.delete(f"{V1}/resources/hosts/{made[1]['id']}", headers=admin.headers)
    assert r.status_code == 200, r.text
    assert r.json()["data"]["host_id"] == made[1]["id"] and r.json()["data"]["message"]
    r = await client.get(f"{V1}/resources/hosts/{made[1]['id']}", headers=admin.headers)
    assert_error(r, 404, "NOT_FOUND")
    r = await client.delete(f"{V1}/resources/hosts/{made[1]['id']}", headers=admin.headers)
    assert_error(r, 404, "NOT_FOUND")
    r = await client.get(f"{V1}/resources/hosts", headers=admin.headers)
    assert [h["hostname"] for h in r.json()["data"]["items"]] == ["h0", "h2"]


# --- stats --------------------------------------------------------------------------------
async def test_stats_sum_the_hosts_and_what_runs_on_them(client, admin, podman_host):
    r = await client.get(f"{V1}/resources/stats", headers=admin.headers)
    assert r.status_code == 200, r.text
    stats = r.json()["data"]
    assert SEED_003_STATS <= set(stats)
    assert stats["total_hosts"] == 1 and stats["active_hosts"] == 1
    assert stats["total_cpu_cores"] == podman_host["cpu_cores"]
    assert stats["total_memory_gb"] == podman_host["memory_gb"]
    assert stats["total_storage_gb"] == podman_host["storage_gb"]
    assert stats["used_cpu_cores"] == 0 and stats["used_memory_gb"] == 0
    assert stats["utilization_percentage"] == 0
    assert stats["by_driver"] == {"docker": 1}
    assert stats["by_class"]["containers"]["count"] == 0

    # An offline host counts among the hosts and their capacity, not the active ones.
    offline = await add_host(client, admin, **SEED_003_HOST)
    r = await client.post(
        f"{V1}/containers",
        json={
            "name": "web",
            "image": TEST_IMAGE,
            "ports": ["8080"],
            "resources": {"cpu": "0.5", "memory": "64m"},
        },
        headers=admin.headers,
    )
    assert r.status_code == 202, r.text
    op = await wait_operation(client, admin.headers, r.json()["data"]["operation"])
    assert op["status"] == "succeeded", op

    stats = (await client.get(f"{V1}/resources/stats", headers=admin.headers)).json()["data"]
    total_cpu = podman_host["cpu_cores"] + offline["cpu_cores"]
    total_mem_mb = podman_host["memory_mb"] + offline["memory_mb"]
    assert stats["total_hosts"] == 2 and stats["active_hosts"] == 1
    assert stats["total_cpu_cores"] == total_cpu
    assert stats["total_memory_gb"] == round(total_mem_mb / 1024, 2)
    assert stats["total_storage_gb"] == podman_host["storage_gb"] + 1000
    assert stats["used_cpu_cores"] == 0.5
    assert stats["used_memory_gb"] == round(64 / 1024, 2)
    assert stats["used_storage_gb"] == 0
    assert stats["utilization_percentage"] == round(
        100 * (0.5 / total_cpu + 64 / total_mem_mb) / 2, 1
    )
    assert stats["by_driver"] == {"docker": 1, "libvirt": 1}
    assert stats["by_class"]["containers"] == {
        "count": 1,
        "running": 1,
        "cpu_cores": 0.5,
        "memory_gb": round(64 / 1024, 2),
        "storage_gb": 0,
    }
    assert stats["by_class"]["vms"]["count"] == 0
    # The host's own figures carry the allocation too.
    r = await client.get(f"{V1}/resources/hosts/{podman_host['id']}", headers=admin.headers)
    assert r.json()["data"]["used"] == {
        "cpu_cores": 0.5,
        "memory_gb": round(64 / 1024, 2),
        "storage_gb": 0,
        "instances": 1,
    }


# --- deleting a host that carries work ---------------------------------------------------
async def test_a_host_with_replicas_is_refused_then_drained(client, admin, podman_host, app):
    r = await client.post(
        f"{V1}/containers",
        json={
            "name": "moving",
            "image": TEST_IMAGE,
            "ports": ["8080"],
            "resources": {"cpu": "0.5", "memory": "64m"},
            "replicas": 2,
        },
        headers=admin.headers,
    )
    assert r.status_code == 202, r.text
    container_id = r.json()["data"]["container_id"]
    op = await wait_operation(client, admin.headers, r.json()["data"]["operation"])
    assert op["status"] == "succeeded", op
    before = (await client.get(f"{V1}/containers/{container_id}", headers=admin.headers)).json()[
        "data"
    ]["container"]
    assert {s["host_id"] for s in before["replica_states"]} == {podman_host["id"]}

    host_url = f"{V1}/resources/hosts/{podman_host['id']}"
    r = await client.delete(host_url, headers=admin.headers)
    body = assert_error(r, 409, "CONFLICT")
    assert body["error"]["details"]["instances"] == 2
    assert (await client.get(host_url, headers=admin.headers)).json()["data"]["status"] == (
        "active"
    )
    # With nowhere to go, a drain fails and the host is active again.
    r = await client.delete(host_url, params={"drain": "true"}, headers=admin.headers)
    assert r.status_code == 202, r.text
    op = await wait_operation(client, admin.headers, r.json()["data"]["operation"])
    assert op["status"] == "failed" and op["error"]["code"] == "RESOURCE_EXHAUSTED", op
    host = (await client.get(host_url, headers=admin.headers)).json()["data"]
    assert host["status"] == "active" and "drain failed" in host["last_error"]

    # A second host on the same engine (the URI need not be unique) takes the replicas.
    other = await add_host(client, admin, hostname="podman-two", uri=docker_host_uri())
    assert other["status"] == "active"
    r = await client.delete(host_url, params={"drain": "true"}, headers=admin.headers)
    assert r.status_code == 202, r.text
    data = r.json()["data"]
    HostDraining.model_validate(data)
    documented = app.openapi()["paths"]["/api/v1/resources/hosts/{host_id}"]["delete"]
    assert documented["responses"]["202"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Envelope_HostDraining_"
    }
    assert data["host_id"] == podman_host["id"] and data["message"]
    assert data["operation"]["url"] == f"/api/v1/operations/{data['operation']['id']}"
    assert data["operation"]["status"] == "pending"
    op = await wait_operation(client, admin.headers, data["operation"])
    assert op["status"] == "succeeded", op
    assert op["kind"] == "host.drain" and op["resource_type"] == "host"
    assert op["resource_id"] == podman_host["id"] and op["project_id"] is None
    assert op["result"] == {"moved": 2} and op["progress"] == 100

    assert_error(await client.get(host_url, headers=admin.headers), 404, "NOT_FOUND")
    after = (await client.get(f"{V1}/containers/{container_id}", headers=admin.headers)).json()[
        "data"
    ]["container"]
    assert after["status"] == "running", after
    assert [s["host_id"] for s in after["replica_states"]] == [other["id"], other["id"]]
    assert all(s["state"] == "running" for s in after["replica_states"])
    assert {s["slot"] for s in after["replica_states"]}.isdisjoint(
        {s["slot"] for s in before["replica_states"]}
    )
    assert len(after["endpoints"]) == 2
    for endpoint in after["endpoints"]:
        assert endpoint["host"] == "podman-two"
        assert await serves_page(endpoint["host_port"])
    # The engine holds the two new replicas only.
    made = engine_containers(container_id)
    assert len(made) == 2 and all(c.status == "running" for c in made)
    other_now = (
        await client.get(f"{V1}/resources/hosts/{other['id']}", headers=admin.headers)
    ).json()["data"]
    assert other_now["used"]["instances"] == 2 and other_now["used"]["cpu_cores"] == 1.0
    stats = (await client.get(f"{V1}/resources/stats", headers=admin.headers)).json()["data"]
    assert stats["total_hosts"] == 1 and stats["by_class"]["containers"]["count"] == 2


async def test_an_operations_slow_engine_call_retries_and_leaves_the_host_to_the_checker(
    client: httpx.AsyncClient, admin: Any, podman_host: dict[str, Any], app: Any
) -> None:
    core = app.state.core
    async with core.db.sessionmaker() as session:
        host = await session.get(Host, podman_host["id"])
    assert host is not None

    async def status() -> str:
        r = await client.get(f"/api/v1/resources/hosts/{host.id}", headers=admin.headers)
        return str(r.json()["data"]["status"])

    async def slow() -> None:
        raise HostUnreachable("container engine unreachable: ReadTimeout", slow=True)

    async def refused() -> None:
        raise HostUnreachable("container engine unreachable: ConnectionRefusedError")

    # Only slow (a loaded engine): the operation retries later, the host stays.
    with pytest.raises(Retry):
        await driver_call(core, host, slow())
    assert await status() == "active"
    # Refused: offline at once, until the host checker finds it answering again.
    with pytest.raises(Retry):
        await driver_call(core, host, refused())
    assert await status() == "offline"
    async with core.db.sessionmaker() as session:
        assert host.id in await HostService(core, session).check_all()
    assert await status() == "active"
