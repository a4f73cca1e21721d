"""The sim driver's own rules: its URI, its shared per-host state and its fault hooks.

The ComputeDriver contract itself runs against sim in tests/contract/. Each test
here uses hosts of its own and forgets them afterwards, so it never touches the
contract suite's sim host.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from nefos.drivers import sim
from nefos.drivers.base import (
    LABEL_MANAGED,
    DriverError,
    HostUnreachable,
    ImageNotFound,
    InstanceNotFound,
    InstanceSpec,
    InstanceState,
    InvalidSpec,
    InvalidState,
    PortSpec,
)
from nefos.drivers.sim import SimDriver


@pytest.fixture
def hosts() -> Iterator[list[str]]:
    """Fresh sim hostnames for this test (the first is ``hosts[0]``), forgotten after."""
    names = [f"unit-{uuid.uuid4().hex[:10]}-{i}" for i in range(3)]
    yield names
    for name in names:
        sim.reset(name)


@pytest.fixture
def host(hosts: list[str]) -> str:
    return hosts[0]


def spec(**overrides: Any) -> InstanceSpec:
    nefos_id = overrides.pop("nefos_id", f"u{uuid.uuid4().hex[:12]}")
    values: dict[str, Any] = {
        "nefos_id": nefos_id,
        "project_id": "p1",
        "name": f"web-{nefos_id}",
        "image": "docker.io/library/nginx:1.27",
        "command": ("/bin/sh", "-c", "echo hi; sleep 1d"),
        "ports": (PortSpec(80),),
        "cpu": 0.5,
        "memory_mb": 128,
        "pids_limit": 32,
        "labels": {"tier": "web"},
    }
    values.update(overrides)
    return InstanceSpec(**values)


# --- the URI ----------------------------------------------------------------------------
def test_uri_defaults() -> None:
    cfg = sim.parse_uri("sim://Rack1-Node07")
    assert (cfg.host, cfg.cpus, cfg.memory_mb, cfg.disk_gb) == ("rack1-node07", 16, 65536, 1000)
    assert sim.parse_uri("sim://h/?").host == "h"


async def test_uri_values_become_the_capacity(host: str) -> None:
    driver = SimDriver(f"sim://{host}?cpus=64&memory_mb=262144&disk_gb=2000")
    cap = await driver.capacity()
    assert (cap.cpus, cap.memory_mb, cap.disk_gb) == (64, 262144, 2000)
    partial = await SimDriver(f"sim://{host}?memory_mb=4096").capacity()
    assert (partial.cpus, partial.memory_mb, partial.disk_gb) == (16, 4096, 1000)


@pytest.mark.parametrize(
    "uri",
    [
        "sim://h?cpus=0",
        "sim://h?cpus=-4",
        "sim://h?cpus=abc",
        "sim://h?cpus=1.5",
        "sim://h?cpus=",
        "sim://h?cpus",
        "sim://h?memory_mb=1e6",
        "sim://h?disk_gb=%EF%BC%91",  # a full-width digit one: digits are ASCII only
        "sim://h?cpus=99999999999999999999999",
        "sim://h?cpus=4&cpus=8",
        "sim://h?gpus=1",
        "docker://h",
        "unix:///run/podman/podman.sock",
        "sim://",
        "sim:h",
        "sim://h:2375",
        "sim://h:",
        "sim://user@h",
        "sim://h/path",
        "sim://h#frag",
        "sim://-h",
        "",
    ],
)
def test_invalid_uris_are_invalid_spec(uri: str) -> None:
    with pytest.raises(InvalidSpec):
        SimDriver(uri)


def test_capabilities_say_what_is_simulated() -> None:
    caps = SimDriver("sim://h").capabilities
    assert caps.kind == "container"
    assert caps.supports_ports is False  # nothing listens
    assert caps.supports_stats and caps.supports_logs
    assert SimDriver.name == "sim"
    # The docstrings say it is simulated and never a default.
    for doc in (sim.__doc__, sim.driver.__doc__, SimDriver.__doc__):
        assert doc is not None and "SIMULATED" in doc.upper() and "never a default" in doc


# --- shared state -----------------------------------------------------------------------
async def test_two_drivers_for_one_host_share_its_instances(hosts: list[str]) -> None:
    a = SimDriver(f"sim://{hosts[0]}?cpus=4")
    b = SimDriver(f"sim://{hosts[0].upper()}")  # hostnames are case-insensitive
    other = SimDriver(f"sim://{hosts[1]}")
    made = await a.create(spec())
    assert (await b.get(made.driver_id)).state is InstanceState.CREATED
    await b.start(made.driver_id)
    assert (await a.get(made.driver_id)).state is InstanceState.RUNNING
    assert [i.driver_id for i in await b.list()] == [made.driver_id]
    assert await other.list() == []
    with pytest.raises(InstanceNotFound):
        await other.get(made.driver_id)
    await a.close()  # closing one driver leaves the host and the other driver alone
    assert (await b.get(made.driver_id)).state is InstanceState.RUNNING
    await b.destroy(made.driver_id)
    assert await SimDriver(f"sim://{hosts[0]}").list() == []


async def test_instances_answer_to_their_driver_id_and_their_name(host: str) -> None:
    driver = SimDriver(f"sim://{host}")
    s = spec()
    made = await driver.create(s)
    assert len(made.driver_id) == 64 and int(made.driver_id, 16) >= 0
    by_name = f"nefos-{s.nefos_id}"
    assert (await driver.get(by_name)).driver_id == made.driver_id
    assert (await driver.start(by_name)).state is InstanceState.RUNNING
    assert (await driver.stats(by_name)).memory_bytes > 0
    assert "started" in await driver.logs(by_name)
    assert (await driver.stop(by_name)).state is InstanceState.STOPPED
    await driver.destroy(by_name)
    with pytest.raises(InstanceNotFound):
        await driver.get(made.driver_id)


async def test_create_records_the_spec_and_labels_and_publishes_no_port(host: str) -> None:
    driver = SimDriver(f"sim://{host}")
    s = spec(labels={"tier": "web", LABEL_MANAGED: "false"})
    info = await driver.create(s)
    assert info.state is InstanceState.CREATED
    assert info.labels == s.all_labels()  # identity labels win over the spec's
    assert (info.nefos_id, info.project_id, info.name, info.image) == (
        s.nefos_id,
        "p1",
        s.name,
        s.image,
    )
    assert (await driver.start(info.driver_id)).ports == ()
    assert sim.recorded_spec(host, info.driver_id) == s


async def test_a_taken_name_is_invalid_spec_and_keeps_the_first(host: str) -> None:
    driver = SimDriver(f"sim://{host}")
    first = await driver.create(spec(nefos_id="same"))
    with pytest.raises(InvalidSpec):
        await driver.create(spec(nefos_id="same", image="other:1"))
    [only] = await driver.list()
    assert only.driver_id == first.driver_id and only.image == first.image


@pytest.mark.parametrize(
    "image",
    [
        "missing",
        "missing-image:1",
        "Missing/x",
        "registry.example/does-not-exist:1",
        "a/does-not-exist",
    ],
)
async def test_missing_images_are_image_not_found_and_leave_nothing(host: str, image: str) -> None:
    driver = SimDriver(f"sim://{host}")
    with pytest.raises(ImageNotFound):
        await driver.create(spec(image=image))
    assert await driver.list() == []
    assert not sim.image_is_missing("docker.io/library/missingno:1")


@pytest.mark.parametrize(
    "overrides",
    [
        {"image": ""},
        {"cpu": 0},
        {"cpu": -1},
        {"cpu": 17},  # more than the host's 16
        {"cpu": float("nan")},
        {"memory_mb": 5},
        {"nefos_id": "has space"},
        {"nefos_id": "a/b"},
        {"ports": (PortSpec(0),)},
        {"ports": (PortSpec(80, host_port=70000),)},
    ],
)
async def test_specs_the_engine_would_refuse_are_invalid_spec(
    host: str, overrides: dict[str, Any]
) -> None:
    driver = SimDriver(f"sim://{host}")
    with pytest.raises(InvalidSpec):
        await driver.create(spec(**overrides))
    assert await driver.list() == []


async def test_list_filters_on_managed_and_the_given_labels(host: str) -> None:
    driver = SimDriver(f"sim://{host}")
    a = await driver.create(spec(project_id="pa"))
    b = await driver.create(spec(project_id="pb", labels={"tier": "db"}))
    assert [i.driver_id for i in await driver.list()] == [a.driver_id, b.driver_id]
    assert [i.driver_id for i in await driver.list({"nefos.project": "pb"})] == [b.driver_id]
    assert [i.driver_id for i in await driver.list({"tier": "web"})] == [a.driver_id]
    assert await driver.list({"tier": "web", "nefos.project": "pb"}) == []
    assert await driver.list({"absent": ""}) == []


async def test_lifecycle_is_idempotent_and_logged(host: str) -> None:
    driver = SimDriver(f"sim://{host}")
    info = await driver.create(spec())
    assert (await driver.stop(info.driver_id)).state is InstanceState.STOPPED  # never started
    for _ in range(2):
        assert (await driver.start(info.driver_id)).state is InstanceState.RUNNING
    for _ in range(2):
        assert (await driver.stop(info.driver_id, grace_seconds=3)).state is InstanceState.STOPPED
    logs = await driver.logs(info.driver_id)
    lines = logs.splitlines()
    assert [line.split()[1] for line in lines] == ["created", "stopped", "started:", "stopped"]
    assert "echo hi; sleep 1d" in lines[2]
    assert await driver.logs(info.driver_id, tail=1) == lines[-1] + "\n"
    assert await driver.logs(info.driver_id, tail=0) == ""
    await driver.destroy(info.driver_id)
    await driver.destroy(info.driver_id)  # already gone: fine
    for call in (driver.get, driver.start, driver.stop, driver.stats, driver.logs):
        with pytest.raises(InstanceNotFound):
            await call(info.driver_id)


async def test_stats_are_deterministic_and_zero_when_not_running(hosts: list[str]) -> None:
    one, two = SimDriver(f"sim://{hosts[0]}"), SimDriver(f"sim://{hosts[1]}")
    a = await one.create(spec(nefos_id="twin"))
    b = await two.create(spec(nefos_id="twin"))
    idle = await one.stats(a.driver_id)
    assert (idle.cpu_percent, idle.memory_bytes, idle.net_rx_bytes) == (0, 0, 0)
    assert idle.memory_limit_bytes == 128 * 1024**2
    await one.start(a.driver_id)
    await two.start(b.driver_id)
    samples_a = [await one.stats(a.driver_id) for _ in range(3)]
    samples_b = [await two.stats(b.driver_id) for _ in range(3)]
    assert samples_a == samples_b  # same spec, same sequence: same numbers
    first, _, third = samples_a
    assert 0 < first.cpu_percent <= 0.5 * 100
    assert 0 < first.memory_bytes <= first.memory_limit_bytes
    assert first.memory_percent == pytest.approx(
        first.memory_bytes / first.memory_limit_bytes * 100
    )
    assert third.net_rx_bytes == 3 * first.net_rx_bytes > 0
    assert third.net_tx_bytes == 3 * first.net_tx_bytes > 0
    await one.stop(a.driver_id)
    stopped = await one.stats(a.driver_id)
    assert (stopped.cpu_percent, stopped.memory_bytes, stopped.net_tx_bytes) == (0, 0, 0)


# --- fault hooks ------------------------------------------------------------------------
async def test_an_unreachable_host_fails_every_call_until_it_answers(hosts: list[str]) -> None:
    host, other = hosts[0], hosts[1]
    driver = SimDriver(f"sim://{host}")
    info = await driver.start((await driver.create(spec())).driver_id)
    sim.set_reachable(host, False)
    calls = (
        driver.ping,
        driver.capacity,
        driver.list,
        lambda: driver.create(spec()),
        lambda: driver.start(info.driver_id),
        lambda: driver.stop(info.driver_id),
        lambda: driver.destroy(info.driver_id),
        lambda: driver.destroy("no-such-instance"),
        lambda: driver.get(info.driver_id),
        lambda: driver.stats(info.driver_id),
        lambda: driver.logs(info.driver_id),
    )
    for call in calls:
        with pytest.raises(HostUnreachable):
            await call()
    with pytest.raises(HostUnreachable):  # a new driver for the host too
        await SimDriver(f"sim://{host}").ping()
    await SimDriver(f"sim://{other}").ping()  # other hosts still answer
    sim.set_reachable(f"sim://{host}?cpus=2", True)  # a URI names the host too
    assert (await driver.get(info.driver_id)).state is InstanceState.RUNNING  # kept
    assert len(await driver.list()) == 1


async def test_a_host_can_be_unreachable_before_any_driver_exists(host: str) -> None:
    sim.set_reachable(host, False)
    dead = SimDriver(f"sim://{host}")  # making a driver does not call the host
    with pytest.raises(HostUnreachable):
        await dead.ping()
    await dead.close()  # closing never calls the host


async def test_crash_stops_an_instance_behind_nefos_back(host: str) -> None:
    driver = SimDriver(f"sim://{host}")
    info = await driver.start((await driver.create(spec())).driver_id)
    await driver.stats(info.driver_id)
    sim.crash(host, info.driver_id)
    assert (await driver.get(info.driver_id)).state is InstanceState.STOPPED
    assert [i.state for i in await driver.list()] == [InstanceState.STOPPED]
    assert (await driver.stats(info.driver_id)).memory_bytes == 0
    assert "crashed: exited" in await driver.logs(info.driver_id)
    # An exited instance starts again.
    assert (await driver.start(info.driver_id)).state is InstanceState.RUNNING


async def test_crash_into_error_leaves_a_dead_instance(host: str) -> None:
    driver = SimDriver(f"sim://{host}")
    s = spec()
    info = await driver.start((await driver.create(s)).driver_id)
    sim.crash(host, f"nefos-{s.nefos_id}", state=InstanceState.ERROR)  # by name
    assert (await driver.get(info.driver_id)).state is InstanceState.ERROR
    with pytest.raises(InvalidState):
        await driver.start(info.driver_id)
    assert (await driver.get(info.driver_id)).state is InstanceState.ERROR
    assert "crashed: dead" in await driver.logs(info.driver_id)
    assert (await driver.stop(info.driver_id)).state is InstanceState.STOPPED
    await driver.destroy(info.driver_id)
    assert await driver.list() == []


def test_crash_and_remove_need_an_instance_and_crash_a_crash_state(host: str) -> None:
    with pytest.raises(InstanceNotFound):
        sim.crash(host, "nope")
    with pytest.raises(InstanceNotFound):
        sim.remove(host, "nope")
    with pytest.raises(ValueError):
        sim.crash(host, "nope", state=InstanceState.RUNNING)


async def test_remove_makes_an_instance_vanish(host: str) -> None:
    driver = SimDriver(f"sim://{host}")
    s = spec()
    info = await driver.start((await driver.create(s)).driver_id)
    sim.remove(host, info.driver_id)
    with pytest.raises(InstanceNotFound):
        await driver.get(info.driver_id)
    assert await driver.list() == []
    await driver.destroy(info.driver_id)  # destroying the vanished one succeeds
    # Its name is free again.
    assert (await driver.create(s)).driver_id != info.driver_id


async def test_reset_forgets_one_host_or_all(hosts: list[str]) -> None:
    a, b = SimDriver(f"sim://{hosts[0]}"), SimDriver(f"sim://{hosts[1]}")
    made_a = await a.create(spec())
    await b.create(spec())
    sim.set_reachable(hosts[1], False)
    sim.reset(hosts[1])  # instances and reachability both forgotten
    await b.ping()
    assert await b.list() == []
    assert [i.driver_id for i in await a.list()] == [made_a.driver_id]
    sim.reset("never-seen-host")  # fine


async def test_reset_without_a_host_forgets_every_host() -> None:
    names = [f"unit-all-{uuid.uuid4().hex[:10]}-{i}" for i in range(2)]
    for name in names:
        sim.set_reachable(name, False)
    saved = dict(sim.driver._HOSTS)
    try:
        sim.reset()
        assert sim.driver._HOSTS == {}
    finally:
        # Give back the hosts of other tests (the contract suite's sim host), not ours.
        sim.driver._HOSTS.update({k: v for k, v in saved.items() if k not in names})
    await SimDriver(f"sim://{names[0]}").ping()  # answers again
    sim.reset(names[0])


async def test_a_closed_driver_is_unusable(host: str) -> None:
    driver = SimDriver(f"sim://{host}")
    await driver.close()
    await driver.close()  # twice is fine
    with pytest.raises(DriverError):
        await driver.ping()
    with pytest.raises(DriverError):
        await driver.list()


async def test_concurrent_creates_of_one_name_make_exactly_one(host: str) -> None:
    drivers = [SimDriver(f"sim://{host}") for _ in range(20)]
    results = await asyncio.gather(
        *(d.create(spec(nefos_id="race")) for d in drivers), return_exceptions=True
    )
    made = [r for r in results if not isinstance(r, BaseException)]
    assert len(made) == 1
    assert all(isinstance(r, InvalidSpec) for r in results if r not in made)
    many = await asyncio.gather(*(d.create(spec()) for d in drivers))
    assert len({i.driver_id for i in many}) == 20
    assert len(await drivers[0].list()) == 21
