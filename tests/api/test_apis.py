"""APIs (seed 002's API management), end to end on the real test Podman: an API is a
container service checked on its health-check path, with deployments, logs and
metrics."""

from __future__ import annotations

from typing import Any

import httpx

from tests.api.test_containers import Api, assert_error
from tests.conftest import TEST_IMAGE, wait_serving

V1 = "/api/v1"
OPENAPI = {
    "openapi": "3.1.0",
    "info": {"title": "Weather", "version": "1.0.0"},
    "paths": {"/forecast": {"get": {"responses": {"200": {"description": "A forecast"}}}}},
}


def api_body(name: str = "weather", **extra: Any) -> dict[str, Any]:
    """Seed 002's deploy body, on the test image (busybox httpd on 8080)."""
    return {
        "name": name,
        "image": TEST_IMAGE,
        "port": 8080,
        "health_check_path": "/index.html",
        "replicas": 1,
        "environment": {"MODE": "production", "API_TOKEN": "s3cret"},
        "resources": {"cpu": "0.25", "memory": "64m"},
        "description": "Forecasts for any city",
        **extra,
    }


async def test_an_api_is_deployed_checked_served_scaled_and_deleted(
    client: httpx.AsyncClient, register: Any, podman_host: Any
) -> None:
    user = await register()
    api = Api(client, user)
    data = await api.call("POST", "/apis", 202, json=api_body(openapi=OPENAPI))
    created = data["api"]
    api_id, container_id = data["api_id"], created["container_id"]
    assert created["name"] == "weather" and created["slug"] == f"weather-{api_id[:8]}"
    assert created["status"] == "creating" and created["has_openapi"] is True
    deployment = data["deployment"]
    assert (deployment["number"], deployment["status"], deployment["replicas"]) == (
        1,
        "in_progress",
        1,
    )
    # Variables are shown by name only: a token given at deploy is never echoed.
    assert deployment["environment_keys"] == ["API_TOKEN", "MODE"]
    assert "s3cret" not in str(data)
    assert (await api.wait(data["operation"]))["status"] == "succeeded"

    # Its replicas take calls once they pass the API's own health check.
    service = await wait_serving(client, user.headers, container_id)
    assert service["tags"] == ["api"] and service["metadata"]["api_id"] == api_id
    assert service["check"]["type"] == "http" and service["check"]["path"] == "/index.html"
    got = (await api.call("GET", f"/apis/{api_id}"))["api"]
    assert (got["status"], got["health"], got["image"]) == ("running", "passing", TEST_IMAGE)
    assert got["deployment"]["status"] == "active" and got["endpoint"]
    r = await client.get(f"/svc/{container_id}/")
    assert r.status_code == 200 and r.text.strip() == "nefos test page"
    # Its container changes only through the API (each change a deployment).
    for method, path, body in (
        ("PUT", "", {"environment": {"MODE": "x"}}),
        ("POST", "/scale", {"replicas": 2}),
        ("DELETE", "", None),
    ):
        r = await client.request(
            method, f"{V1}/containers/{container_id}{path}", json=body, headers=user.headers
        )
        assert_error(r, 409, "CONFLICT")
    listed = await api.call("GET", "/apis")
    assert [a["id"] for a in listed["apis"]] == [api_id] and listed["pagination"]["total"] == 1
    assert (await api.call("GET", f"/apis/{api_id}/openapi"))["openapi"] == OPENAPI

    # Logs: the replicas' output (busybox httpd logs each request it serves).
    logs = await api.call("GET", f"/apis/{api_id}/logs?tail=50")
    assert logs["api_id"] == api_id and "response:200" in logs["logs"]
    metrics = await api.call("GET", f"/apis/{api_id}/metrics?period=1h")
    assert metrics["api_id"] == api_id and set(metrics["metrics"]) == {"cpu", "memory", "network"}

    # What changes at once: 200, no deployment.
    put = await api.call(
        "PUT", f"/apis/{api_id}", json={"description": "Forecasts", "health_check_path": "/"}
    )
    assert put["operation"] is None and put["api"]["description"] == "Forecasts"
    assert (await api.call("GET", f"/services/{container_id}"))["service"]["check"]["path"] == "/"
    # A new replica count is a deployment, carried out by a scale.
    put = await api.call("PUT", f"/apis/{api_id}", 202, json={"replicas": 2})
    assert put["deployment"]["number"] == 2 and put["deployment"]["replicas"] == 2
    assert (await api.wait(put["operation"]))["status"] == "succeeded"
    deployments = (await api.call("GET", f"/apis/{api_id}/deployments"))["deployments"]
    assert [(d["number"], d["status"]) for d in deployments] == [(2, "active"), (1, "succeeded")]
    await wait_serving(client, user.headers, container_id, 2)

    # Another tenant sees nothing of it.
    other = await register()
    for method, path in [
        ("GET", f"/apis/{api_id}"),
        ("PUT", f"/apis/{api_id}"),
        ("DELETE", f"/apis/{api_id}"),
        ("GET", f"/apis/{api_id}/logs"),
        ("GET", f"/apis/{api_id}/metrics"),
        ("GET", f"/apis/{api_id}/deployments"),
        ("GET", f"/apis/{api_id}/openapi"),
    ]:
        r = await client.request(method, V1 + path, json={} if method == "PUT" else None,
                                 headers=other.headers)  # fmt: skip
        assert_error(r, 404, "NOT_FOUND")
    assert (await Api(client, other).call("GET", "/apis"))["apis"] == []

    # Deleted: its replicas go; the API is a 404; its name is free again.
    deleted = await api.call("DELETE", f"/apis/{api_id}", 202)
    assert deleted["api"]["status"] == "deleting"
    assert (await api.wait(deleted["operation"]))["status"] == "succeeded"
    await api.call("GET", f"/apis/{api_id}", 404)
    await api.call("GET", f"/containers/{container_id}", 404)
    assert (await api.call("GET", "/apis"))["apis"] == []


async def test_api_requests_that_cannot_be_met_make_nothing(
    client: httpx.AsyncClient, register: Any, podman_host: Any
) -> None:
    user = await register()
    api = Api(client, user)
    for bad in (
        {"port": 0},
        {"port": 70000},
        {"health_check_path": "health"},
        {"health_check_path": "//evil.example/x"},
        {"base_path": "/a b"},
        {"slug": "Not_A_Slug"},
        {"image": "no spaces allowed"},
        {"environment": {"1BAD": "x"}},
        {"openapi": {"title": "not an OpenAPI document"}},
        {"replicas": 0},
    ):
        r = await client.post(f"{V1}/apis", json=api_body(**bad), headers=user.headers)
        assert_error(r, 422, "VALIDATION_ERROR")
    r = await client.post(f"{V1}/apis", json={"name": "x"}, headers=user.headers)
    assert_error(r, 422, "VALIDATION_ERROR")

    # A name (or a slug) once: 409, and nothing more is made.
    data = await api.call("POST", "/apis", 202, json=api_body("dup", slug="dup-api"))
    assert data["api"]["slug"] == "dup-api"
    assert_error(
        await client.post(f"{V1}/apis", json=api_body("dup"), headers=user.headers),
        409,
        "CONFLICT",
    )
    other = await register()
    assert_error(
        await client.post(
            f"{V1}/apis", json=api_body("mine", slug="dup-api"), headers=other.headers
        ),
        409,
        "CONFLICT",
    )
    assert [a["name"] for a in (await api.call("GET", "/apis"))["apis"]] == ["dup"]
    containers = (await api.call("GET", "/containers"))["containers"]
    assert [c["name"] for c in containers] == ["api-dup"]
    await api.wait(data["operation"])
    await api.act("DELETE", f"/apis/{data['api_id']}")


async def test_a_deployment_rolls_out_a_failing_one_rolls_back_and_rollback_restores(
    client: httpx.AsyncClient, register: Any, podman_host: Any, app: Any, monkeypatch: Any
) -> None:
    # An image that is nowhere: with pulling off the engine refuses it at once.
    monkeypatch.setattr(app.state.core.settings, "container_image_pull", False)
    user = await register()
    api = Api(client, user)
    data = await api.call("POST", "/apis", 202, json=api_body("rolling", replicas=2))
    api_id, container_id = data["api_id"], data["api"]["container_id"]
    await api.wait(data["operation"])
    await wait_serving(client, user.headers, container_id, 2)

    # A new environment is deployment 2, rolled out replica by replica.
    put = await api.call("PUT", f"/apis/{api_id}", 202, json={"environment": {"MODE": "v2"}})
    assert put["deployment"]["number"] == 2 and put["operation"]["kind"] == "container.update"
    assert (await api.wait(put["operation"]))["status"] == "succeeded"
    assert (await api.call("GET", f"/apis/{api_id}/deployments"))["deployments"][0][
        "status"
    ] == "active"
    await wait_serving(client, user.headers, container_id, 2)
    # Both a spec and a replica count in one request: one deployment each, so 422.
    r = await client.put(
        f"{V1}/apis/{api_id}", json={"image": TEST_IMAGE, "replicas": 3}, headers=user.headers
    )
    assert_error(r, 422, "VALIDATION_ERROR")

    # A deployment whose replicas never come up is rolled back; the API answers
    # from its old replicas throughout.
    put = await api.call(
        "PUT",
        f"/apis/{api_id}",
        202,
        json={"image": "localhost/nefos-missing:absent", "description": "broken"},
    )
    answers = []
    while True:
        op = await api.call("GET", f"/operations/{put['operation']['id']}")
        answers.append((await client.get(f"/svc/{container_id}/")).status_code)
        if op["status"] not in ("pending", "running"):
            break
    assert op["status"] == "failed" and op["error"]["code"] == "ROLLED_BACK", op
    assert set(answers) == {200}, answers
    listed = (await api.call("GET", f"/apis/{api_id}/deployments"))["deployments"]
    assert [(d["number"], d["status"]) for d in listed] == [
        (3, "rolled_back"),
        (2, "active"),
        (1, "succeeded"),
    ]
    got = (await api.call("GET", f"/apis/{api_id}"))["api"]
    assert got["image"] == TEST_IMAGE and got["description"] == "broken"

    # Rollback: deployment 1's spec again, as deployment 4.
    back = await api.call("POST", f"/apis/{api_id}/rollback", 202)
    first = listed[2]
    assert back["deployment"]["number"] == 4 and back["deployment"]["rollback_of"] == first["id"]
    assert (await api.wait(back["operation"]))["status"] == "succeeded"
    listed = (await api.call("GET", f"/apis/{api_id}/deployments"))["deployments"]
    assert listed[0]["status"] == "active" and listed[0]["environment_keys"] == [
        "API_TOKEN",
        "MODE",
    ]
    # A scale is a deployment but no spec: rolling back after one goes past it, to
    # the newest earlier spec that differs from the running one (deployment 2's),
    # at the replica count the API runs now.
    scaled = await api.call("PUT", f"/apis/{api_id}", 202, json={"replicas": 1})
    assert (await api.wait(scaled["operation"]))["status"] == "succeeded"
    back = await api.call("POST", f"/apis/{api_id}/rollback", 202)
    second = next(d for d in listed if d["number"] == 2)
    assert back["deployment"]["rollback_of"] == second["id"]
    assert back["deployment"]["replicas"] == 1
    assert (await api.wait(back["operation"]))["status"] == "succeeded"
    # Another tenant cannot roll it back.
    other = await register()
    r = await client.post(f"{V1}/apis/{api_id}/rollback", headers=other.headers)
    assert_error(r, 404, "NOT_FOUND")
    await api.act("DELETE", f"/apis/{api_id}")
