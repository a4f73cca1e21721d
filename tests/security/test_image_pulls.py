"""Image pulls reach only vetted registries, and engine errors never reach tenants raw
(issue 14), on the real test Podman."""

from __future__ import annotations

import contextlib
import select
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import update

from nefos.db.models import Host
from nefos.domain.errors import ImagePullFailed, ServiceUnavailable
from nefos.drivers.base import HostUnreachable, ImagePullRefused, InstanceSpec
from nefos.drivers.docker import DockerDriver
from nefos.services.hosts import domain_error
from tests.conftest import TEST_IMAGE, docker_host_uri, wait_operation

V1 = "/api/v1"


def body(image: str, name: str = "pull") -> dict[str, Any]:
    return {"name": name, "image": image, "resources": {"cpu": "0.1", "memory": "32m"}}


@contextlib.contextmanager
def listener() -> Iterator[tuple[socket.socket, int]]:
    """A listening TCP socket on loopback: an engine that pulled from it would connect."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    try:
        yield sock, sock.getsockname()[1]
    finally:
        sock.close()


def connected(sock: socket.socket) -> bool:
    """Whether anything has connected (the kernel queues it even before accept)."""
    ready, _, _ = select.select([sock], [], [], 0)
    return bool(ready)


def closed_port() -> int:
    with listener() as (_sock, port):
        pass
    return port


async def test_images_from_loopback_or_metadata_registries_are_refused_before_any_pull(
    client, register, podman_host
) -> None:
    user = await register()
    with listener() as (sock, open_port):
        messages = []
        for i, image in enumerate(
            [f"127.0.0.1:{open_port}/x:1", f"127.0.0.1:{closed_port()}/x:1", "169.254.169.254/x:1"]
        ):
            r = await client.post(
                f"{V1}/containers", json=body(image, f"p{i}"), headers=user.headers
            )
            assert r.status_code == 422, r.text
            error = r.json()["error"]
            assert error["code"] == "VALIDATION_ERROR"
            registry = image.split("/", 1)[0]
            messages.append(error["message"].replace(image, "I").replace(registry, "R"))
            assert "not one tenants may pull from" in error["message"]
        assert not connected(sock), "the engine connected to the loopback registry"
    # The same answer whether the port was open or closed: nothing about the target.
    assert messages[0] == messages[1]
    r = await client.get(f"{V1}/containers", headers=user.headers)
    assert r.json()["data"]["items"] == []


async def test_the_local_test_image_still_works_without_a_pull(
    client, register, podman_host
) -> None:
    user = await register()
    r = await client.post(f"{V1}/containers", json=body(TEST_IMAGE), headers=user.headers)
    assert r.status_code == 202, r.text
    op = await wait_operation(client, user.headers, r.json()["data"]["operation"])
    assert op["status"] == "succeeded", op


@pytest.mark.parametrize("networks", [[], ["10.0.0.0/8"]])
async def test_the_driver_vets_the_registry_address_right_before_the_pull(
    networks: list[str],
) -> None:
    # Listed (an admin's mistake, or a name that now resolves to loopback), yet its
    # address is loopback and not in the allowed networks: no pull, no connection.
    with listener() as (sock, port):
        driver = DockerDriver(
            docker_host_uri(),
            pull=True,
            registries=[f"127.0.0.1:{port}"],
            registry_networks=networks,
        )
        spec = InstanceSpec(
            nefos_id="vet-pull-1", project_id="p", name="vet", image=f"127.0.0.1:{port}/x:1"
        )
        try:
            with pytest.raises(ImagePullRefused, match="loopback"):
                await driver.create(spec)
        finally:
            await driver.close()
        assert not connected(sock)


async def test_an_unlisted_registry_is_refused_by_the_driver_too() -> None:
    driver = DockerDriver(docker_host_uri(), pull=True, registries=["quay.io"])
    spec = InstanceSpec(nefos_id="vet-pull-2", project_id="p", name="vet", image="ghcr.io/x/y:1")
    try:
        with pytest.raises(ImagePullRefused, match="not in container_registries"):
            await driver.create(spec)
    finally:
        await driver.close()


# --- engine errors: a plain message and a stable code for tenants -------------------------
async def test_a_failed_pull_tells_the_tenant_plainly_and_the_admin_the_engine_text(
    client, app, admin, register, podman_host, monkeypatch
) -> None:
    core = app.state.core
    monkeypatch.setattr(core.settings, "container_image_pull", False)
    monkeypatch.setitem(core.drivers.options, "docker", {"pull": False})
    await core.drivers.forget(podman_host["id"])
    image = "localhost/nefos-no-such-image:never"
    user = await register()
    r = await client.post(f"{V1}/containers", json=body(image), headers=user.headers)
    assert r.status_code == 202, r.text
    data = r.json()["data"]
    op = await wait_operation(client, user.headers, data["operation"])
    assert op["status"] == "failed", op
    assert op["error"] == {
        "code": "IMAGE_PULL_FAILED",
        "message": f"Image {image!r} is not on the host and could not be pulled from its registry",
    }
    c = (await client.get(f"{V1}/containers/{data['container_id']}", headers=user.headers)).json()
    assert c["data"]["container"]["status_reason"] == f"IMAGE_PULL_FAILED: {op['error']['message']}"
    seen = (await client.get(f"{V1}/operations/{op['id']}", headers=admin.headers)).json()
    assert "pulling is off" in seen["data"]["error"]["details"]["engine_message"]
    await core.drivers.forget(podman_host["id"])


async def test_a_missing_engine_socket_gives_tenants_no_python_repr(
    client, app, register, podman_host
) -> None:
    core = app.state.core
    async with core.db.sessionmaker() as session:
        await session.execute(
            update(Host)
            .where(Host.id == podman_host["id"])
            .values(uri="unix:///nonexistent/nefos-test/podman.sock")
        )
        await session.commit()
    await core.drivers.forget(podman_host["id"])
    user = await register()
    r = await client.post(f"{V1}/containers", json=body(TEST_IMAGE), headers=user.headers)
    assert r.status_code == 503, r.text
    assert "Error(" not in r.text and "nonexistent" not in r.text
    assert r.json()["error"]["details"] == {
        "request_id": r.json()["error"]["details"]["request_id"]
    }
    await core.drivers.forget(podman_host["id"])


async def test_domain_error_keeps_the_engine_text_out_of_the_message() -> None:
    driver = DockerDriver("unix:///nonexistent/nefos-test/podman.sock", timeout=2)
    try:
        with pytest.raises(HostUnreachable) as caught:
            await driver.ping()
    finally:
        await driver.close()
    assert "FileNotFoundError(" in caught.value.message  # what the engine client says
    err = domain_error(caught.value)
    assert isinstance(err, ServiceUnavailable)
    assert "Error(" not in err.message and "nonexistent" not in err.message
    assert err.engine_message == caught.value.message
    from nefos.drivers.base import ImageNotFound

    pull = domain_error(ImageNotFound('Podman said {"cause": "manifest unkn', image="a/b:1"))
    assert isinstance(pull, ImagePullFailed) and pull.code == "IMAGE_PULL_FAILED"
    assert (
        pull.message == "Image 'a/b:1' is not on the host and could not be pulled from its registry"
    )
