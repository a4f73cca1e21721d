"""The ComputeDriver contract (nefos/drivers/base.py), run against every driver.

Each test is about one promise of the contract. Tests that need an optional
feature skip by the driver's Capabilities, never for any other reason.
"""

from __future__ import annotations

import asyncio
import gc
import time
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest

from nefos.drivers.base import (
    LABEL_ID,
    LABEL_MANAGED,
    LABEL_PROJECT,
    ComputeDriver,
    HostUnreachable,
    ImageNotFound,
    InstanceCounters,
    InstanceInfo,
    InstanceKind,
    InstanceNotFound,
    InstanceSpec,
    InstanceState,
    InstanceStats,
    InvalidSpec,
)

from .conftest import GREETING, HTTP_PORT, PAGE, RUN_ID, RUN_LABEL, Harness

Make = Callable[..., Awaitable[InstanceInfo]]


async def eventually(check: Callable[[], Awaitable[Any]], *, within: float = 15) -> Any:
    """Poll ``check`` until it returns a truthy value; fail at the deadline."""
    deadline = time.monotonic() + within
    last: Any = None
    while True:
        try:
            last = await check()
            if last:
                return last
        except (httpx.HTTPError, AssertionError) as exc:
            last = exc
        if time.monotonic() > deadline:
            pytest.fail(f"not true within {within}s; last result: {last!r}")
        await asyncio.sleep(0.05)


async def fetch(info: InstanceInfo) -> str:
    [port] = [p for p in info.ports if p.container_port == HTTP_PORT]
    async with httpx.AsyncClient(timeout=2) as http:
        r = await http.get(f"http://127.0.0.1:{port.host_port}/")
    return r.text if r.status_code == 200 else ""


def requires(driver: ComputeDriver, capability: str) -> None:
    if not getattr(driver.capabilities, capability):
        pytest.skip(f"{driver.name} lacks {capability} (its Capabilities say False)")


@pytest.fixture
async def make(harness: Harness) -> AsyncIterator[Make]:
    """Create (and by default start) an instance; destroyed after the test."""
    made: list[str] = []

    async def _make(*, start: bool = True, **overrides: Any) -> InstanceInfo:
        info = await harness.driver.create(harness.spec(**overrides))
        made.append(info.driver_id)
        return await harness.driver.start(info.driver_id) if start else info

    yield _make
    for driver_id in made:
        await harness.driver.destroy(driver_id)


# --- the host -------------------------------------------------------------------------
async def test_ping_answers(driver: ComputeDriver) -> None:
    await driver.ping()


async def test_capacity_reports_the_real_host(driver: ComputeDriver) -> None:
    cap = await driver.capacity()
    assert cap.cpus >= 1
    assert cap.memory_mb >= 256
    assert cap.disk_gb is None or cap.disk_gb >= 1


async def test_unreachable_host_raises_host_unreachable(harness: Harness) -> None:
    dead = harness.unreachable()
    # docker-py leaves the socket of a failed connect for the collector to close
    # (with a ResourceWarning); the driver releases it while handling the error.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        for call in (dead.ping, dead.list, dead.capacity, lambda: dead.create(harness.spec())):
            with pytest.raises(HostUnreachable):
                # The driver's own timeout ends it: a deadline against a hang, not a measure.
                await asyncio.wait_for(call(), 60)
        gc.collect()
    await dead.close()


# --- lifecycle ------------------------------------------------------------------------
async def test_create_leaves_a_labelled_instance_that_is_not_running(
    harness: Harness, make: Make
) -> None:
    spec = harness.spec()
    info = await make(start=False, nefos_id=spec.nefos_id)
    assert info.state in (InstanceState.CREATED, InstanceState.STOPPED)
    assert info.nefos_id == spec.nefos_id
    assert info.project_id == "contract-project"
    assert info.labels[LABEL_ID] == spec.nefos_id
    assert info.labels[LABEL_PROJECT] == "contract-project"
    assert info.labels[LABEL_MANAGED] == "true"
    assert info.labels[RUN_LABEL] == RUN_ID


async def test_started_instance_serves_http_on_its_published_port(
    driver: ComputeDriver, make: Make
) -> None:
    requires(driver, "supports_ports")
    info = await make()
    assert info.state is InstanceState.RUNNING
    [port] = info.ports
    assert port.container_port == HTTP_PORT and port.protocol == "tcp"
    assert port.host_port > 0
    assert PAGE in await eventually(lambda: fetch(info))


async def test_stop_then_start_serves_again(driver: ComputeDriver, make: Make) -> None:
    requires(driver, "supports_ports")
    info = await make()
    await eventually(lambda: fetch(info))

    stopped = await driver.stop(info.driver_id, grace_seconds=2)
    assert stopped.state is InstanceState.STOPPED
    assert (await driver.get(info.driver_id)).state is InstanceState.STOPPED
    again = await driver.stop(info.driver_id, grace_seconds=2)  # stopping a stopped one is fine
    assert again.state is InstanceState.STOPPED

    restarted = await driver.start(info.driver_id)
    assert restarted.state is InstanceState.RUNNING
    assert PAGE in await eventually(lambda: fetch(restarted))
    # Starting a running instance succeeds and changes nothing.
    assert (await driver.start(info.driver_id)).state is InstanceState.RUNNING


async def test_stats_report_usage_within_the_limits(
    harness: Harness, driver: ComputeDriver, make: Make
) -> None:
    requires(driver, "supports_stats")
    info = await make()
    if driver.capabilities.supports_ports:  # else there is no port to send traffic to
        await eventually(lambda: fetch(info))  # some traffic, so the counters move

    async def moving() -> InstanceStats | None:
        # A VM's counters move once its guest has booted and brought its NIC up.
        sample = await driver.stats(info.driver_id)
        return sample if sample.net_rx_bytes > 0 and sample.net_tx_bytes > 0 else None

    stats: InstanceStats = await eventually(moving, within=harness.boot_seconds)
    assert stats.memory_limit_bytes == harness.memory_mb * 1024**2
    assert 0 < stats.memory_bytes <= stats.memory_limit_bytes
    assert 0 < stats.memory_percent <= 100
    assert stats.cpu_percent >= 0
    assert stats.net_rx_bytes > 0 and stats.net_tx_bytes > 0

    await driver.stop(info.driver_id, grace_seconds=2)
    idle = await driver.stats(info.driver_id)
    assert (idle.cpu_percent, idle.memory_bytes) == (0, 0)


async def test_counters_grow_while_running_and_skip_unknown_ids(
    harness: Harness, driver: ComputeDriver, make: Make
) -> None:
    requires(driver, "supports_stats")
    info = await make()
    if driver.capabilities.supports_ports:
        await eventually(lambda: fetch(info))
    missing = f"nefos-missing-{RUN_ID}"
    first = (await driver.counters([info.driver_id, missing]))[info.driver_id]
    assert first.running and first.cpus > 0

    async def grown() -> InstanceCounters | None:
        if driver.capabilities.supports_ports:
            await fetch(info)  # traffic, so the network counters move
        answer = await driver.counters([info.driver_id, missing])
        assert missing not in answer
        now = answer[info.driver_id]
        moved = now.cpu_time_ns > first.cpu_time_ns or now.net_rx_bytes > first.net_rx_bytes
        traffic = now.net_rx_bytes > 0 and now.net_tx_bytes > 0
        return now if moved and traffic and now.read_at > first.read_at else None

    later: InstanceCounters = await eventually(grown, within=harness.boot_seconds)
    assert 0 < later.memory_bytes <= later.memory_limit_bytes
    assert later.net_tx_bytes > 0

    await driver.stop(info.driver_id, grace_seconds=2)
    stopped = (await driver.counters([info.driver_id]))[info.driver_id]
    assert not stopped.running
    assert (stopped.cpu_time_ns, stopped.memory_bytes) == (0, 0)


async def test_host_usage_is_within_the_host(driver: ComputeDriver) -> None:
    usage = await driver.host_usage()
    if usage is None:  # the host does not report it (Docker's Engine API)
        return
    assert 0 <= usage.memory_used_bytes <= usage.memory_total_bytes
    assert usage.memory_total_bytes > 0
    if usage.cpu_total_ns is not None:
        assert usage.cpu_busy_ns is not None
        assert 0 <= usage.cpu_busy_ns <= usage.cpu_total_ns


async def test_logs_hold_the_console_output(
    harness: Harness, driver: ComputeDriver, make: Make
) -> None:
    requires(driver, "supports_logs")
    info = await make()

    async def greeted() -> bool:
        return GREETING in await driver.logs(info.driver_id, tail=10)

    await eventually(greeted, within=harness.boot_seconds)


async def test_list_by_label_finds_only_matching_instances(
    harness: Harness, driver: ComputeDriver, make: Make
) -> None:
    mine = await make(start=False, project_id="project-a")
    theirs = await make(start=False, project_id="project-b")
    found = await driver.list({RUN_LABEL: RUN_ID, LABEL_PROJECT: "project-a"})
    ids = {i.driver_id for i in found}
    assert mine.driver_id in ids
    assert theirs.driver_id not in ids
    [listed] = [i for i in found if i.driver_id == mine.driver_id]
    assert listed.nefos_id == mine.nefos_id
    assert listed.project_id == "project-a"
    everything = {i.driver_id for i in await driver.list()}
    assert {mine.driver_id, theirs.driver_id} <= everything


async def test_destroy_removes_it_and_destroying_again_succeeds(
    driver: ComputeDriver, make: Make
) -> None:
    info = await make()
    await driver.destroy(info.driver_id)
    with pytest.raises(InstanceNotFound):
        await driver.get(info.driver_id)
    assert info.driver_id not in {i.driver_id for i in await driver.list({RUN_LABEL: RUN_ID})}
    await driver.destroy(info.driver_id)  # already gone: still succeeds


async def test_calls_on_a_missing_instance_raise_instance_not_found(
    driver: ComputeDriver, make: Make
) -> None:
    info = await make(start=False)
    await driver.destroy(info.driver_id)
    for call in (
        lambda: driver.get(info.driver_id),
        lambda: driver.start(info.driver_id),
        lambda: driver.stop(info.driver_id, grace_seconds=1),
        lambda: driver.stats(info.driver_id),
        lambda: driver.logs(info.driver_id),
    ):
        with pytest.raises(InstanceNotFound):
            await call()


async def test_create_with_an_unknown_image_raises_and_leaves_nothing(
    harness: Harness, driver: ComputeDriver
) -> None:
    spec: InstanceSpec = harness.spec(image=harness.missing_image)
    with pytest.raises(ImageNotFound):
        await driver.create(spec)
    assert await driver.list({LABEL_ID: spec.nefos_id}) == []


# --- isolation ------------------------------------------------------------------------
async def test_the_host_enforces_the_isolation_and_limits(
    harness: Harness, driver: ComputeDriver, make: Make
) -> None:
    info = await make(cpu=0.5, memory_mb=harness.memory_mb, pids_limit=64)
    seen = harness.isolation(info.driver_id)
    assert seen.privileged is False
    assert seen.host_mounts == 0
    assert seen.memory_bytes == harness.memory_mb * 1024**2
    assert seen.cpu == pytest.approx(0.5)
    if driver.capabilities.kind is InstanceKind.CONTAINER:
        assert seen.pids_limit == 64
        assert seen.all_capabilities_dropped
        assert seen.no_new_privileges
    else:
        # A VM's processes are its guest kernel's: no host pids limit applies, and
        # capabilities are a container's isolation, not a VM's.
        assert seen.pids_limit is None


async def test_creating_the_same_nefos_id_twice_fails_and_keeps_the_first(
    harness: Harness, driver: ComputeDriver, make: Make
) -> None:
    first = await make(start=False)
    with pytest.raises(InvalidSpec):
        await driver.create(harness.spec(nefos_id=first.nefos_id))
    assert (await driver.get(first.driver_id)).nefos_id == first.nefos_id
    assert [i.driver_id for i in await driver.list({LABEL_ID: str(first.nefos_id)})] == [
        first.driver_id
    ]
