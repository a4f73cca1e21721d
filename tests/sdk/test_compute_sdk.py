"""The SDK's hosts, containers and operations against a live server and the test Podman.

The live server is shared by the whole session (its database too): names are
unique, and the Podman host is registered only if it is not there yet. It is
removed again at the end of the module, so that no later test shares the engine
with this server's reconciler.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import docker
import httpx
import pytest

from nefos.schemas.compute import (
    ContainerAccepted,
    ContainerPublic,
    HostPublic,
    OperationPublic,
    OperationRef,
    ResourceStats,
)
from nefos.sdk import (
    Client,
    ConflictError,
    NotFoundError,
    OperationFailedError,
    OperationTimeoutError,
    Page,
    PermissionDeniedError,
    ResourceExhaustedError,
    ValidationError,
)
from tests.conftest import (
    ADMIN_PASSWORD,
    TEST_IMAGE,
    DatabaseFactory,
    LiveServer,
    docker_host_uri,
    make_settings,
    remove_managed_containers,
)

PODMAN_HOSTNAME = "podman-live"
WAIT = {"timeout": 120, "poll": 0.2}
MISSING_IMAGE = "localhost/nefos-no-such-image:missing"


# --- helpers the CLI tests share -------------------------------------------------------
def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def ensure_podman_host(admin: Client) -> HostPublic:
    """The test Podman as a docker host of this server, registered unless it is already."""
    for host in admin.hosts.list(limit=500).items:
        if host.hostname == PODMAN_HOSTNAME:
            return host
    try:
        host = admin.hosts.register(
            hostname=PODMAN_HOSTNAME, driver="docker", uri=docker_host_uri()
        )
    except ConflictError:  # registered meanwhile
        host = next(h for h in admin.hosts.list(limit=500).items if h.hostname == PODMAN_HOSTNAME)
    assert host.status == "active", host
    return host


def unregister_podman_host(server: LiveServer) -> None:
    """Remove what Nefos made on the Podman, and the host from ``server``, so that the
    server's reconciler takes no other server's engine containers for its orphans."""
    remove_managed_containers()
    with Client(server.url, username="admin", password=ADMIN_PASSWORD) as admin:
        for host in admin.hosts.list(limit=500).items:
            if host.hostname == PODMAN_HOSTNAME:
                try:
                    admin.hosts.delete(host.id)
                except ConflictError:
                    pass  # a failed test left replicas behind


def fetch(port: int, deadline: float = 60) -> str:
    """GET / on a published port of the test Podman, once the server in it answers."""
    end = time.monotonic() + deadline
    while True:
        try:
            r = httpx.get(f"http://127.0.0.1:{port}/", timeout=5)
            if r.status_code == 200:
                return r.text
        except httpx.HTTPError:
            pass
        if time.monotonic() > end:
            raise AssertionError(f"nothing answers on port {port}")
        time.sleep(0.2)


def engine_containers(container_id: str) -> list[str]:
    """Names of the engine containers Nefos made for ``container_id``."""
    client = docker.DockerClient(base_url=docker_host_uri(), version="1.41")
    try:
        found = client.containers.list(
            all=True, filters={"label": f"nefos.container={container_id}"}
        )
        return [c.name for c in found]
    finally:
        client.close()


@pytest.fixture(scope="module")
def podman_teardown(live_server: LiveServer) -> Iterator[None]:
    yield
    unregister_podman_host(live_server)


@pytest.fixture
def podman(live_server: LiveServer, podman_teardown: None) -> HostPublic:
    """The Podman host of the live server (registered unless it is already)."""
    with Client(live_server.url, username="admin", password=ADMIN_PASSWORD) as admin:
        return ensure_podman_host(admin)


# --- hosts ------------------------------------------------------------------------------
def test_hosts_list_show_and_stats(admin_client, podman):
    page = admin_client.hosts.list()
    assert isinstance(page, Page)
    assert podman.id in [h.id for h in page.items]
    host = admin_client.hosts.get(podman.id)
    assert isinstance(host, HostPublic)
    assert (host.hostname, host.driver, host.status) == (PODMAN_HOSTNAME, "docker", "active")
    assert host.uri == docker_host_uri() and host.cpu_cores >= 1 and host.memory_mb > 0

    stats = admin_client.hosts.stats()
    assert isinstance(stats, ResourceStats)
    assert stats.active_hosts >= 1 and stats.by_driver.get("docker", 0) >= 1
    assert stats.total_cpu_cores >= host.cpu_cores and "containers" in stats.by_class

    with pytest.raises(ConflictError):  # hostnames are unique
        admin_client.hosts.register(hostname=PODMAN_HOSTNAME, driver="docker", uri="tcp://x:1")
    with pytest.raises(NotFoundError):
        admin_client.hosts.get(str(uuid.uuid4()))


def test_hosts_are_for_platform_admins_only(new_user, podman):
    c = new_user()
    with pytest.raises(PermissionDeniedError):
        c.hosts.list()
    with pytest.raises(PermissionDeniedError):
        c.hosts.get(podman.id)
    with pytest.raises(PermissionDeniedError):
        c.hosts.stats()


def test_an_unreachable_host_is_registered_offline(admin_client):
    host = admin_client.hosts.register(
        hostname=unique("gone"),
        driver="docker",
        uri="unix:///nonexistent/podman.sock",
        cpu_cores=4,
        memory_gb=8,
    )
    try:
        assert host.status == "offline" and host.last_error
        assert (host.cpu_cores, host.memory_gb) == (4, 8)
    finally:
        assert admin_client.hosts.delete(host.id) is None  # empty: removed at once
    with pytest.raises(NotFoundError):
        admin_client.hosts.get(host.id)


# --- containers: the whole life of one ---------------------------------------------------
def test_container_lifecycle_on_podman(live_server, admin_client, new_user, podman):
    c = new_user()
    name = unique("web")
    accepted = c.containers.create(
        name=name,
        image=TEST_IMAGE,
        ports=["8080"],
        environment={"GREETING": "hello"},
        cpu="0.25",
        memory="64m",
    )
    assert isinstance(accepted, ContainerAccepted)
    assert accepted.container.status == "creating" and accepted.container.name == name
    assert accepted.operation.status in ("pending", "running", "succeeded")
    cid = accepted.container_id

    seen: list[OperationPublic] = []
    op = c.operations.wait(accepted, on_progress=seen.append, **WAIT)
    assert op.status == "succeeded" and op.kind == "container.create" and op.resource_id == cid
    assert seen and seen[-1].status == "succeeded"
    assert {o.status for o in seen} <= {"pending", "running", "succeeded"}

    container = c.containers.get(cid)
    assert isinstance(container, ContainerPublic)
    assert container.status == "running" and container.replicas == 1
    assert container.resources["memory"] == "64m" and container.environment == {"GREETING": "hello"}
    assert [r.state for r in container.replica_states] == ["running"]
    assert container.replica_states[0].host_id == podman.id
    (endpoint,) = container.endpoints
    assert endpoint.container_port == 8080 and endpoint.host == PODMAN_HOSTNAME
    assert "nefos test page" in fetch(endpoint.host_port)
    assert container.metrics is not None and container.metrics.replicas_reporting == 1
    assert name in [x.name for x in c.containers.list(status="running").items]
    assert cid not in [x.id for x in c.containers.list(status="stopped").items]

    # The host carries it now: removing the host needs a drain.
    with pytest.raises(ConflictError):
        admin_client.hosts.delete(podman.id)
    assert admin_client.hosts.get(podman.id).used.instances >= 1

    # Another tenant sees neither the container nor its operations.
    other = new_user()
    with pytest.raises(NotFoundError):
        other.containers.get(cid)
    with pytest.raises(NotFoundError):
        other.operations.get(op.id)
    assert cid not in [x.id for x in other.containers.list().items]

    scaled = c.containers.scale(cid, replicas=2)
    assert scaled.container.status == "scaling" and scaled.replicas == 2
    c.operations.wait(scaled.operation, **WAIT)
    container = c.containers.get(cid)
    assert container.replicas == 2 and len(container.endpoints) == 2
    assert sorted(r.state for r in container.replica_states) == ["running", "running"]
    started = datetime.now(UTC)
    for e in container.endpoints:
        assert "nefos test page" in fetch(e.host_port)
    assert len(engine_containers(cid)) == 2

    logs = c.containers.logs(cid, tail=50)
    assert logs.container_id == cid and len(logs.replicas) == 2
    one = c.containers.logs(cid, replica=1)
    assert [r["replica"] for r in one.replicas] == [1]
    with pytest.raises(NotFoundError):
        c.containers.logs(cid, replica=7)
    # Replica 1's output followed from before its request: httpd's line for it.
    followed = list(c.containers.follow(cid, seconds=1, since=started, replica=1))
    assert any("response:200" in o.line for o in followed), followed
    assert {o.replica for o in followed} == {1}
    with pytest.raises(NotFoundError):
        next(c.containers.follow(cid, seconds=1, replica=7))

    c.operations.wait(c.containers.stop(cid), **WAIT)
    stopped = c.containers.get(cid)
    assert stopped.status == "stopped" and stopped.metrics is None
    assert {r.state for r in stopped.replica_states} == {"stopped"}

    c.operations.wait(c.containers.start(cid), **WAIT)
    started = c.containers.get(cid)
    assert started.status == "running"
    for e in started.endpoints:
        assert "nefos test page" in fetch(e.host_port)

    history = c.operations.list(resource_id=cid)
    kinds = [o.kind for o in history.items]
    assert kinds == ["container.start", "container.stop", "container.scale", "container.create"]
    assert all(o.status == "succeeded" for o in history.items)
    assert c.operations.get(history.items[0].id).id == history.items[0].id
    assert [o.id for o in c.operations.list(resource_id=cid, status="failed").items] == []
    with pytest.raises(ConflictError):  # finished: too late to cancel
        c.operations.cancel(history.items[0].id)

    # A rolling update: the replicas are replaced by ones of the new spec.
    updated = c.containers.update(cid, environment={"GREETING": "bonjour"}, memory="48m")
    assert isinstance(updated, ContainerAccepted)
    assert updated.container.status == "updating" and updated.container.generation == 2
    done = c.operations.wait(updated, **WAIT)
    assert done.kind == "container.update" and done.result == {"generation": 2, "replaced": 2}
    container = c.containers.get(cid)
    assert container.environment == {"GREETING": "bonjour"} and container.generation == 2
    assert container.resources["memory"] == "48m"
    assert [r.generation for r in container.replica_states] == [2, 2]
    for e in container.endpoints:
        assert "nefos test page" in fetch(e.host_port)
    same = c.containers.update(cid, environment={"GREETING": "bonjour"})
    assert isinstance(same, ContainerPublic) and same.generation == 2

    deleting = c.containers.delete(cid)
    assert deleting.container.status == "deleting"
    done = c.operations.wait(deleting, **WAIT)
    assert done.kind == "container.delete"
    with pytest.raises(NotFoundError):
        c.containers.get(cid)
    assert engine_containers(cid) == []


# --- errors -------------------------------------------------------------------------------
def test_an_unknown_image_fails_the_operation_with_a_typed_error(new_user, podman):
    c = new_user()
    accepted = c.containers.create(name=unique("nope"), image=MISSING_IMAGE)
    with pytest.raises(OperationFailedError) as info:
        c.operations.wait(accepted, **WAIT)
    err = info.value
    assert err.code == "IMAGE_PULL_FAILED" and MISSING_IMAGE in err.message
    assert err.operation.status == "failed" and err.operation.id == accepted.operation.id
    assert err.operation.error == {"code": err.code, "message": err.message}
    assert accepted.operation.id in str(err)

    container = c.containers.get(accepted.container_id)
    assert container.status == "error" and MISSING_IMAGE in (container.status_reason or "")
    failed = c.operations.list(resource_id=accepted.container_id, status="failed")
    assert [o.id for o in failed.items] == [accepted.operation.id]

    c.operations.wait(c.containers.delete(accepted.container_id), **WAIT)
    with pytest.raises(NotFoundError):
        c.containers.get(accepted.container_id)


def test_quota_validation_and_missing_objects_raise_typed_errors(new_user, podman):
    c = new_user()
    project = c.auth.me().default_project_id
    assert project
    c.projects.set_quotas(project, containers=0)
    with pytest.raises(ResourceExhaustedError) as info:
        c.containers.create(name=unique("over"), image=TEST_IMAGE)
    assert info.value.status_code == 409 and "containers" in info.value.message
    assert c.containers.list().pagination.total == 0  # nothing was made

    c.projects.set_quotas(project, containers=None)
    with pytest.raises(ValidationError) as bad:
        c.containers.create(name="-bad name-", image=TEST_IMAGE, ports=["not-a-port"])
    assert bad.value.status_code == 422 and bad.value.details
    with pytest.raises(ValidationError):
        c.containers.create(name=unique("big"), image=TEST_IMAGE, replicas=65)

    missing = str(uuid.uuid4())
    with pytest.raises(NotFoundError):
        c.containers.get(missing)
    with pytest.raises(NotFoundError):
        c.containers.start(missing)
    with pytest.raises(NotFoundError):
        c.operations.get(missing)


def test_writes_send_the_idempotency_key(live_server, new_user, podman):
    sent: list[tuple[str, str | None]] = []

    class Spy(httpx.HTTPTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            sent.append((request.method, request.headers.get("idempotency-key")))
            return super().handle_request(request)

    user = new_user()
    assert user.tokens is not None
    with Client(live_server.url, access_token=user.tokens.access_token, transport=Spy()) as c:
        key = uuid.uuid4().hex
        accepted = c.containers.create(name=unique("idem"), image=TEST_IMAGE, idempotency_key=key)
        c.operations.wait(accepted, **WAIT)
        c.operations.wait(c.containers.delete(accepted.container_id), **WAIT)
    assert sent[0] == ("POST", key)
    assert ("DELETE", None) in sent  # no key given: no header
    assert all(k is None for m, k in sent if m == "GET")


# --- draining a host (two hosts on the one Podman, on a server of their own) ---------------
@pytest.fixture
def drain_server(
    live_server: LiveServer, databases: DatabaseFactory, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    """A live server of its own, whose hosts are the two the drain test registers on the
    Podman. The shared live server lets go of the Podman meanwhile: the engine has
    one owner at a time (each server's reconciler removes the other's containers)."""
    unregister_podman_host(live_server)
    settings = make_settings(databases.new_url(), tmp_path_factory.mktemp("drain"))
    with LiveServer(settings) as server:
        yield server
    remove_managed_containers()


def test_draining_a_host_moves_its_replicas_then_removes_it(drain_server):
    uri = docker_host_uri()
    with Client(drain_server.url, username="admin", password=ADMIN_PASSWORD) as c:
        first = c.hosts.register(hostname=unique("drain-a"), driver="docker", uri=uri)
        accepted = c.containers.create(name=unique("moved"), image=TEST_IMAGE, memory="64m")
        c.operations.wait(accepted, **WAIT)
        cid = accepted.container_id
        assert [r.host_id for r in c.containers.get(cid).replica_states] == [first.id]
        before = engine_containers(cid)
        second = c.hosts.register(hostname=unique("drain-b"), driver="docker", uri=uri)

        with pytest.raises(ConflictError):
            c.hosts.delete(first.id)
        ref = c.hosts.delete(first.id, drain=True, idempotency_key=uuid.uuid4().hex)
        assert isinstance(ref, OperationRef) and ref.url.endswith(ref.id)
        op = c.operations.wait(ref, **WAIT)
        assert op.kind == "host.drain" and op.resource_id == first.id

        with pytest.raises(NotFoundError):
            c.hosts.get(first.id)
        moved = c.containers.get(cid)
        assert moved.status == "running"
        assert [(r.host_id, r.state) for r in moved.replica_states] == [(second.id, "running")]
        after = engine_containers(cid)
        assert len(after) == 1 and after != before  # a new replica; the old one is gone

        c.operations.wait(c.containers.delete(cid), **WAIT)
        assert engine_containers(cid) == []
        assert c.hosts.delete(second.id) is None


# --- wait(), without a server ---------------------------------------------------------------
def _operation(status: str, **extra: Any) -> dict[str, Any]:
    now = "2026-01-01T00:00:00Z"
    return {
        "id": "op-1",
        "kind": "container.create",
        "resource_type": "container",
        "resource_id": "c-1",
        "project_id": "p-1",
        "status": status,
        "progress": 40,
        "attempts": 1,
        "result": None,
        "error": None,
        "created_at": now,
        "started_at": now,
        "finished_at": None,
        "updated_at": now,
        **extra,
    }


def _serving(*states: dict[str, Any]) -> httpx.MockTransport:
    """Answers GET /operations/op-1 with each state in turn, then the last one forever."""
    calls = iter(states)
    last: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/api/v1/operations/op-1"
        state = next(calls, None) or last[-1]
        last.append(state)
        return httpx.Response(200, json={"success": True, "data": state, "error": None})

    return httpx.MockTransport(handler)


def test_wait_reports_progress_and_returns_the_succeeded_operation():
    transport = _serving(_operation("pending"), _operation("running"), _operation("succeeded"))
    seen: list[str] = []
    with Client("http://nefos.test", api_key="nfs_x", transport=transport) as c:
        op = c.operations.wait("op-1", poll=0.01, on_progress=lambda o: seen.append(o.status))
    assert op.status == "succeeded" and seen == ["pending", "running", "succeeded"]


def test_wait_raises_the_operations_error_when_it_fails_or_is_cancelled():
    error = {"code": "RESOURCE_EXHAUSTED", "message": "no host has room"}
    transport = _serving(_operation("running"), _operation("failed", error=error))
    with Client("http://nefos.test", api_key="nfs_x", transport=transport) as c:
        with pytest.raises(OperationFailedError) as info:
            c.operations.wait("op-1", poll=0.01)
    assert (info.value.code, info.value.message) == ("RESOURCE_EXHAUSTED", "no host has room")
    assert info.value.operation.status == "failed"

    transport = _serving(_operation("cancelled"))
    with Client("http://nefos.test", api_key="nfs_x", transport=transport) as c:
        with pytest.raises(OperationFailedError) as cancelled:
            c.operations.wait("op-1", poll=0.01)
    assert cancelled.value.code == "CANCELLED"


def test_wait_gives_up_after_its_timeout_and_leaves_the_operation_running():
    with Client(
        "http://nefos.test", api_key="nfs_x", transport=_serving(_operation("running"))
    ) as c:
        with pytest.raises(OperationTimeoutError) as info:
            c.operations.wait("op-1", timeout=0.05, poll=0.01)
        with pytest.raises(ValueError):
            c.operations.wait("op-1", poll=0)
    assert info.value.operation.status == "running" and "op-1" in str(info.value)
