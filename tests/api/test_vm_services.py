"""A VM that declares a service port is a service, end to end on the real libvirtd +
QEMU: the tiny image boots on a Nefos network with a subnet, its user data starts
busybox httpd, the health checker finds the guest's leased address and checks it,
and the ingress and load tests reach it there."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import httpx

from tests.api.test_containers import Api, assert_error
from tests.api.test_services import health_of, until
from tests.api.test_vms import BOOT_SECONDS, V1, register_tiny
from tests.conftest import Account, wait_serving

SERVE = "#!/bin/sh\nhttpd -p 8080 -h /www\necho NEFOS-HTTPD-UP\n"


async def test_a_vm_with_a_service_port_is_a_checked_routed_service(
    client: httpx.AsyncClient, admin: Account, register: Any, libvirt_host: dict[str, Any]
) -> None:
    image = await register_tiny(Api(client, admin))
    user = await register()
    api = Api(client, user)
    body = {"name": "web-vm", "image_id": image["id"], "memory_mb": 128, "storage_gb": 1}

    # A service port needs a network with a subnet: there is nothing to reach otherwise.
    r = await client.post(f"{V1}/vms", json={**body, "service_port": 8080}, headers=user.headers)
    assert_error(r, 422, "VALIDATION_ERROR")
    assert "network" in r.json()["error"]["message"]
    bare = await api.call("POST", "/networks", 201, json={"name": "bare"})
    r = await client.post(
        f"{V1}/vms",
        json={**body, "service_port": 8080, "network_id": bare["id"]},
        headers=user.headers,
    )
    assert_error(r, 422, "VALIDATION_ERROR")
    await api.act("DELETE", f"/networks/{bare['id']}")

    cidr = f"10.78.{random.randrange(256)}.0/24"  # noqa: S311 - a subnet, not a secret
    network = await api.call("POST", "/networks", 201, json={"name": "front", "cidr": cidr})
    data = await api.act(
        "POST",
        "/vms",
        {**body, "network_id": network["id"], "service_port": 8080, "user_data": SERVE},
    )
    vm_id = data["vm_id"]
    vm = await api.call("GET", f"/vms/{vm_id}")
    assert vm["service_port"] == 8080 and vm["status"] == "running"

    # It is listed as a service at once (not passing yet), kind "vm", one instance.
    listed = (await api.call("GET", "/services?name=web-vm"))["services"]
    assert [(s["id"], s["kind"], s["instances"]) for s in listed] == [(vm_id, "vm", 1)]
    assert listed[0]["check"]["type"] == "tcp"

    # An exec check runs in containers only; an HTTP check of the guest is fine.
    r = await client.put(
        f"{V1}/services/{vm_id}",
        json={"check": {"type": "exec", "command": ["true"]}},
        headers=user.headers,
    )
    assert_error(r, 422, "VALIDATION_ERROR")
    check = {"type": "http", "path": "/", "interval": 1, "timeout": 1, "rise": 1, "fall": 2}
    await api.call("PUT", f"/services/{vm_id}", json={"version": "1.1.0", "check": check})

    # The checker finds the address the network leased the guest, and it passes.
    service = await wait_serving(client, user.headers, vm_id, timeout=BOOT_SECONDS)
    # (The address the check found is the instance's endpoint from the same pass on;
    # a view read between the two may still show the instance without it.)
    deadline = time.monotonic() + 60
    while service["instances"][0]["endpoint"] is None:
        assert time.monotonic() < deadline, service
        await asyncio.sleep(0.2)
        service = await api.call("GET", f"/services/{vm_id}")
        service = service["service"]
    [instance] = service["instances"]
    assert instance["id"] == vm_id and instance["state"] == "running"
    address = (await api.call("GET", f"/vms/{vm_id}"))["ip_address"]
    prefix = cidr.rsplit(".", 1)[0] + "."
    assert address.startswith(prefix) and address != prefix + "1"
    assert instance["endpoint"] == f"http://{address}:8080"
    assert "HTTP GET /: 200" in instance["checks"][0]["output"]

    # The ingress reaches it, by path and by Host.
    r = await client.get(f"/svc/{vm_id}/")
    assert r.status_code == 200 and r.text.strip() == "nefos test page", r.text
    host = service["endpoint"].split("//", 1)[1].split("/", 1)[0]
    r = await client.get("/", headers={"Host": host})
    assert r.status_code == 200 and r.text.strip() == "nefos test page", r.text

    # A short load test against it: every request answered.
    test = await api.call(
        "POST",
        "/testing/load",
        202,
        json={"target": vm_id, "scenario": "web_app", "duration": 2, "users": 2},
    )
    result = await until(
        api,
        f"/testing/results/{test['test_id']}",
        lambda d: d["status"] in ("completed", "failed"),
        "load test done",
        within=60,
    )
    assert result["status"] == "completed", result
    totals = result["results"]
    assert totals["total_requests"] > 0 and totals["failed_requests"] == 0, totals

    # Maintenance takes it out of traffic: the ingress answers 503, in the envelope.
    await api.call(
        "POST", f"/services/{vm_id}/instances/{vm_id}/maintenance", json={"reason": "patching"}
    )
    r = await client.get(f"/svc/{vm_id}/")
    assert_error(r, 503, "SERVICE_UNAVAILABLE")
    await api.call(
        "POST", f"/services/{vm_id}/instances/{vm_id}/maintenance", json={"enabled": False}
    )

    # Another tenant sees none of it.
    other = await register()
    for path in (f"/services/{vm_id}", f"/vms/{vm_id}"):
        assert_error(await client.get(V1 + path, headers=other.headers), 404, "NOT_FOUND")
    r = await client.post(
        f"{V1}/testing/load",
        json={"target": vm_id, "scenario": "web_app", "duration": 1, "users": 1},
        headers=other.headers,
    )
    assert_error(r, 404, "NOT_FOUND")

    # Stopped, it is critical at once; started again, it passes again.
    await api.act("POST", f"/vms/{vm_id}/stop", {"force": True})
    await until(
        api,
        f"/services/{vm_id}",
        lambda d: health_of(d) == {vm_id: "critical"},
        "critical when stopped",
    )
    assert_error(await client.get(f"/svc/{vm_id}/"), 503, "SERVICE_UNAVAILABLE")
    await api.act("POST", f"/vms/{vm_id}/start")
    await wait_serving(client, user.headers, vm_id, timeout=BOOT_SECONDS)

    # No longer declaring a port, it is no longer a service.
    await api.call("PUT", f"/vms/{vm_id}", json={"service_port": None})
    await api.call("GET", f"/services/{vm_id}", 404)
    assert (await api.call("GET", "/services?name=web-vm"))["services"] == []

    await api.act("DELETE", f"/vms/{vm_id}")
    await api.act("DELETE", f"/networks/{network['id']}")
