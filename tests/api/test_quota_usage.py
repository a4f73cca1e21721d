"""Quota usage reflects what a project holds; projects holding containers are kept."""

from __future__ import annotations

from typing import Any

import httpx

from tests.conftest import TEST_IMAGE, wait_operation


async def test_usage_counts_replicas_and_deleting_a_busy_project_is_refused(
    client: httpx.AsyncClient, admin: Any, podman_host: dict[str, Any]
) -> None:
    r = await client.post("/api/v1/projects", json={"name": "busy"}, headers=admin.headers)
    project = r.json()["data"]["id"]
    headers = {**admin.headers, "X-Project-ID": project}
    r = await client.get(f"/api/v1/projects/{project}/quotas", headers=admin.headers)
    assert r.json()["data"]["usage"] == {
        "instances": 0,
        "vcpus": 0,
        "memory_gb": 0,
        "storage_gb": 0,
        "containers": 0,
    }
    body = {
        "name": "u",
        "image": TEST_IMAGE,
        "replicas": 2,
        "resources": {"cpu": "0.25", "memory": "64m", "storage": "1Gi"},
    }
    r = await client.post("/api/v1/containers", json=body, headers=headers)
    assert r.status_code == 202, r.text
    op = r.json()["data"]["operation"]
    usage = (await client.get(f"/api/v1/projects/{project}/quotas", headers=admin.headers)).json()[
        "data"
    ]["usage"]
    assert usage == {
        "instances": 0,
        "vcpus": 0.5,
        "memory_gb": 0.125,
        "storage_gb": 2,
        "containers": 2,
    }
    r = await client.delete(f"/api/v1/projects/{project}", headers=admin.headers)
    assert r.status_code == 409
    assert r.json()["error"]["details"]["containers"] == 1
    assert (await wait_operation(client, admin.headers, op))["status"] == "succeeded"
    cid = (await client.get("/api/v1/containers", headers=headers)).json()["data"]["items"][0]["id"]
    r = await client.delete(f"/api/v1/containers/{cid}", headers=admin.headers)
    assert (await wait_operation(client, admin.headers, r.json()["data"]["operation"]))[
        "status"
    ] == "succeeded"
    usage = (await client.get(f"/api/v1/projects/{project}/quotas", headers=admin.headers)).json()[
        "data"
    ]["usage"]
    assert usage["containers"] == 0 and usage["vcpus"] == 0
    assert (
        await client.delete(f"/api/v1/projects/{project}", headers=admin.headers)
    ).status_code == 200
