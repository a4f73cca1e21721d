"""Services' endpoints (issue 16): the HTTP ingress and the port mesh, on real
containers in the test Podman (a local engine: the port mesh serves it).

The replicas run the test image's busybox httpd on a page holding their own hostname,
so each answer says which replica gave it.
"""

from __future__ import annotations

import socket
import uuid
from typing import Any

import docker
import httpx

from nefos.domain.publishing import PublishPolicy
from tests.api.test_containers import (
    Api,
    assert_error,
    engine_containers,
    eventually,
    refuses,
    seed_body,
)
from tests.conftest import docker_host_uri, wait_serving

V1 = "/api/v1"
#: Serve a page holding the container's hostname: one distinct page per replica.
WHOAMI = [
    "/bin/sh",
    "-c",
    "mkdir -p /tmp/w && hostname > /tmp/w/index.html && exec httpd -f -p 8080 -h /tmp/w",
]


def free_port_of_range(policy: PublishPolicy) -> int:
    """A host port of the publishing range nothing listens on now."""
    start = policy.low + uuid.uuid4().int % (policy.high - policy.low)
    for port in range(start, policy.high):
        if port in policy.reserved:
            continue
        with socket.socket() as s:
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                continue
            return port
    raise AssertionError("no free port in the range")


async def direct(port: int) -> str:
    """One request on a new connection to 127.0.0.1:port; the page, or '' if refused."""
    async with httpx.AsyncClient(timeout=5) as http:
        try:
            r = await http.get(f"http://127.0.0.1:{port}/")
        except httpx.HTTPError:
            return ""
    return r.text.strip() if r.status_code == 200 else ""


def host_of(container: dict[str, Any]) -> str:
    """The Host of the container's endpoint URL."""
    return str(httpx.URL(container["endpoint"]).host)


async def via_host(client: httpx.AsyncClient, host: str, path: str = "/") -> httpx.Response:
    return await client.get(path, headers={"Host": host})


async def test_a_fixed_port_scaled_to_three_on_one_host_is_balanced(
    client, app, register, podman_host
):
    settings = app.state.core.settings
    port = free_port_of_range(settings.publish_policy)
    api = Api(client, await register())
    c = await api.created(seed_body("web-app", ports=[f"{port}:8080"], command=WHOAMI))
    assert c["endpoint"] == f"http://web-app-{c['id'][:8]}.apps.localhost:{settings.port}/"

    # Seed 004: scale to 3 with a fixed host port, on a one-host install.
    await api.act("POST", f"/containers/{c['id']}/scale", {"replicas": 3})
    await wait_serving(client, api.who.headers, c["id"], 3)  # traffic once they pass
    got = await api.get(c["id"])
    assert got["status"] == "running" and len(got["replica_states"]) == 3
    # The API shows the fixed port, published by the mesh; each replica has its own.
    assert [e["host_port"] for e in got["endpoints"]] == [port] * 3
    assert all(e["mesh"] for e in got["endpoints"])
    own = {e["instance_port"] for e in got["endpoints"]}
    assert len(own) == 3 and port not in own
    assert all(settings.publish_policy.low <= p <= settings.publish_policy.high for p in own)

    # The fixed port answers, and every replica takes some of the connections (once
    # the mesh's next pass, after the third passed its check, has it as an upstream).
    await eventually(lambda: direct(port), f"the mesh listens on {port}")
    mesh = app.state.mesh

    async def balanced() -> bool:
        return port in mesh.listeners and len(mesh.listeners[port].upstreams) == 3

    await eventually(balanced, "the mesh balances over the three replicas")
    pages = [await direct(port) for _ in range(30)]
    assert all(pages) and len(set(pages)) == 3, pages
    stats = app.state.mesh.stats()[port]
    assert stats.service_id == c["id"] and len(stats.connections) == 3

    # The HTTP ingress: by Host header, and by /svc/{id}/.
    host = host_of(got)
    answers = [await via_host(client, host) for _ in range(30)]
    assert all(r.status_code == 200 for r in answers), [r.text for r in answers]
    assert len({r.text.strip() for r in answers}) == 3
    r = await via_host(client, f"{host}:8000", "/index.html?x=1")
    assert r.status_code == 200 and r.text.strip() in set(pages)
    for path in (f"/svc/{c['id']}/", f"/svc/{c['id']}", f"/svc/{c['id']}/index.html"):
        r = await client.get(path)
        assert r.status_code == 200 and r.text.strip() in set(pages), (path, r.text)
    # Forwarded headers are set; hop-by-hop ones never reach the client.
    assert "connection" not in r.headers and "keep-alive" not in r.headers

    # One replica dies behind Nefos's back: no client sees a 5xx for it.
    engine = docker.DockerClient(base_url=docker_host_uri(), version="1.41")
    try:
        # The last slot: the one a scale down to one removes.
        [victim] = [e for e in engine_containers(c["id"]) if e.labels["nefos.slot"] == "2"]
        engine.api.kill(victim.id)
    finally:
        engine.close()
    answers = [await via_host(client, host) for _ in range(30)]
    assert [r.status_code for r in answers] == [200] * 30, [r.text for r in answers]
    assert len({r.text.strip() for r in answers}) == 2
    after = [await direct(port) for _ in range(10)]
    assert all(after), after

    # Scaled back to one: the fixed port still answers.
    await api.act("POST", f"/containers/{c['id']}/scale", {"replicas": 1})
    got = await api.get(c["id"])
    assert [e["host_port"] for e in got["endpoints"]] == [port]
    await eventually(lambda: direct(port), f"port {port} answers with one replica")
    r = await via_host(client, host)
    assert r.status_code == 200

    # Deleted: the mesh stops listening, and the endpoint is unknown.
    await api.delete(c["id"])
    await refuses(port)
    r = await eventually(
        lambda: _status(client, host, 404), "the deleted service's endpoint is a 404"
    )


async def _status(
    client: httpx.AsyncClient, host: str, status: int, text: str = ""
) -> httpx.Response | None:
    r = await via_host(client, host)
    return r if r.status_code == status and text in r.text else None


async def test_endpoints_are_public_but_their_instances_are_not(client, app, register, podman_host):
    owner, other = await register(), await register()
    mine = Api(client, owner)
    c = await mine.created(seed_body("shop", ports=["8080"]))
    host = host_of(c)
    await wait_serving(client, owner.headers, c["id"])

    # Anyone reaches the published app, with no credential or another tenant's.
    for headers in ({}, other.headers):
        r = await client.get("/", headers={"Host": host, **headers})
        assert r.status_code == 200 and "nefos test page" in r.text
        r = await client.get(f"/svc/{c['id']}/", headers=headers)
        assert r.status_code == 200 and "nefos test page" in r.text
    # The path form serves the page on the API's own origin: sandboxed there (an
    # opaque origin: no access to the API's storage, cookies or pages); the host
    # form, on its own origin, is not.
    r = await client.get(f"/svc/{c['id']}/")
    assert r.headers["content-security-policy"].startswith("sandbox")
    r = await client.get("/", headers={"Host": host})
    assert "content-security-policy" not in r.headers
    # Its owner sees the traffic the ingress sent each instance.
    [instance] = (await mine.call("GET", f"/services/{c['id']}"))["service"]["instances"]
    seen = instance["metrics"]
    assert seen["requests_per_second"] > 0 and seen["error_rate"] == 0, seen
    assert seen["p95_response_time"] > 0
    # ... and nothing of where it runs: no upstream in the answer.
    instance_port = c["endpoints"][0]["host_port"]
    assert str(instance_port) not in "".join(f"{k}{v}" for k, v in r.headers.items())
    # Bodies are bounded as the API's are: refused before any instance is reached.
    limit = app.state.core.settings.max_body_bytes
    r = await client.post(f"/svc/{c['id']}/", content=b"x" * (limit + 1))
    assert_error(r, 413, "PAYLOAD_TOO_LARGE")

    # A body within the limit reaches the instance: busybox httpd's own 501 (it
    # serves no POST here), relayed as it is, not an envelope of the ingress.
    r = await client.post("/", headers={"Host": host}, content=b"hello")
    assert r.status_code == 501 and '"success"' not in r.text
    # The service's metadata stays its owner's.
    theirs = Api(client, other)
    await theirs.call("GET", f"/containers/{c['id']}", 404)

    # Stopped: 503 in the envelope (at once: its instance refuses; then from the
    # database: no instance passes), naming no instance.
    await mine.act("PUT", f"/containers/{c['id']}/stop")
    r = await via_host(client, host)
    assert_error(r, 503, "SERVICE_UNAVAILABLE")
    r = await eventually(lambda: _status(client, host, 503, "passes"), "stopped is a 503")
    assert_error(r, 503, "SERVICE_UNAVAILABLE")
    assert str(instance_port) not in r.text
    await mine.delete(c["id"])


async def test_unknown_services_are_404(client, register):
    r = await client.get(f"/svc/{uuid.uuid4()}/")
    assert_error(r, 404, "NOT_FOUND")
    r = await via_host(client, "nothing-1a2b3c4d.apps.localhost")
    assert_error(r, 404, "NOT_FOUND")
    r = await via_host(client, "no-label.apps.localhost:8000", "/api/v1/health")
    assert_error(r, 404, "NOT_FOUND")
    # Ids that cannot be one: a 404 without a look in the database (a NUL byte is
    # an error of PostgreSQL's, not an id).
    for odd in ("%00", "a.b", "%E2%9C%93"):
        r = await client.get(f"/svc/{odd}/")
        assert_error(r, 404, "NOT_FOUND")
    # The API's own host is untouched.
    assert (await client.get("/health")).status_code == 200


async def test_a_request_target_that_is_not_a_path_is_refused(app):
    """``OPTIONS *`` and absolute-form targets reach no instance: a 400 in the
    envelope, not an error of the HTTP client's."""
    for raw in (b"*", b"http://elsewhere.example/x"):
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any], into: list[dict[str, Any]] = sent) -> None:
            into.append(message)

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "OPTIONS",
            "scheme": "http",
            "path": raw.decode(),
            "raw_path": raw,
            "query_string": b"",
            "root_path": "",
            "headers": [(b"host", b"shop-1a2b3c4d.apps.localhost")],
            "client": ("203.0.113.9", 4000),
            "server": ("127.0.0.1", 8000),
        }
        await app(scope, receive, send)
        assert sent[0]["status"] == 400, sent
        assert b"VALIDATION_ERROR" in b"".join(m.get("body", b"") for m in sent[1:])


async def test_the_apis_websocket_is_not_served_under_a_service_name(app):
    """WebSockets are not proxied: under a service's host (or /svc/) the API's own
    /ws is never reached either; it is closed before the handshake (a 403)."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    for host, path in (("web-1a2b3c4d.apps.localhost", "/ws"), ("nefos.test", "/svc/x/ws")):
        scope = {
            "type": "websocket",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "headers": [(b"host", host.encode())],
            "scheme": "ws",
            "client": ("127.0.0.1", 1234),
            "subprotocols": [],
        }
        sent.clear()
        await app(scope, receive, send)
        assert sent == [{"type": "websocket.close", "code": 1008}], (host, sent)


async def test_a_tenant_may_not_publish_below_1024_or_on_reserved_ports(
    client, register, podman_host
):
    user = await register()
    for ports in (["22:8080"], ["80:8080"], ["5432:8080"]):
        r = await client.post(
            f"{V1}/containers", json=seed_body("low", ports=ports), headers=user.headers
        )
        assert_error(r, 422, "VALIDATION_ERROR")


async def test_without_the_mesh_a_fixed_port_is_once_per_host(
    client, app, register, podman_host, monkeypatch
):
    """Where Nefos cannot listen (a remote host; here: the mesh turned off), replicas
    publishing a fixed port need a host each, and the refusal says so."""
    settings = app.state.core.settings
    monkeypatch.setattr(settings, "port_mesh_enabled", False)
    port = free_port_of_range(settings.publish_policy)
    user = await register()
    body = seed_body("fixed", ports=[f"{port}:8080"], replicas=3)
    r = await client.post(f"{V1}/containers", json=body, headers=user.headers)
    err = assert_error(r, 409, "RESOURCE_EXHAUSTED")["error"]
    assert "can be published once per host" in err["message"]
    assert "1 host(s) can carry 1 replica(s)" in err["message"]
    assert "Leave the host port out" in err["message"]
    assert err["details"]["host_ports"] == [port]


async def test_two_containers_cannot_share_a_meshed_port(client, app, register, podman_host):
    port = free_port_of_range(app.state.core.settings.publish_policy)
    api = Api(client, await register())
    c = await api.created(seed_body("first", ports=[f"{port}:8080"]))
    r = await client.post(
        f"{V1}/containers",
        json=seed_body("second", ports=[f"{port}:8080"]),
        headers=api.who.headers,
    )
    assert_error(r, 409, "CONFLICT")
    await api.delete(c["id"])
