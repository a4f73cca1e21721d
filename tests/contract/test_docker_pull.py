"""The docker driver's pull-on-create: a missing image is fetched, or ImageNotFound."""

from __future__ import annotations

import os

import docker
import pytest

from nefos.drivers.base import ImageNotFound, InstanceSpec
from nefos.drivers.docker import DockerDriver


@pytest.fixture
def uri() -> str:
    value = os.environ.get("NEFOS_TEST_DOCKER_HOST")
    if not value:
        raise RuntimeError("NEFOS_TEST_DOCKER_HOST is not set: run `make services` first")
    return value


async def test_an_image_no_registry_has_is_image_not_found_and_nothing_is_left(uri: str) -> None:
    driver = DockerDriver(uri, pull=True, timeout=60)
    spec = InstanceSpec(
        nefos_id="pull-test-1",
        project_id="p",
        name="pull",
        image="localhost/nefos-does-not-exist:1",
    )
    try:
        with pytest.raises(ImageNotFound, match="could not be pulled"):
            await driver.create(spec)
    finally:
        await driver.close()
    client = docker.DockerClient(base_url=uri, version="1.41")
    try:
        assert client.containers.list(all=True, filters={"name": "nefos-pull-test-1"}) == []
    finally:
        client.close()


async def test_a_present_image_is_used_without_pulling(uri: str) -> None:
    driver = DockerDriver(uri, pull=True)
    spec = InstanceSpec(
        nefos_id="pull-test-2", project_id="p", name="pull", image="localhost/nefos-busybox:test"
    )
    try:
        info = await driver.create(spec)
        assert info.image.endswith("nefos-busybox:test")
        await driver.destroy(info.driver_id)
    finally:
        await driver.close()
