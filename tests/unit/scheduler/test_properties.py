"""Properties of placement over random fleets, requests and policies (hypothesis)."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from nefos.scheduler import HostPool, HostState, NoValidHost, PlacementRequest, SchedulerConfig
from nefos.scheduler import place as place_
from nefos.scheduler.filters import CPU_EPSILON
from nefos.scheduler.placement import Placement

DRIVERS = ("docker", "sim")
GROUPS = ("g1", "g2")


@st.composite
def host_states(draw: st.DrawFn, hid: str) -> HostState:
    cpus = draw(st.integers(1, 16))
    memory = draw(st.sampled_from([1024, 4096, 8192, 32768]))
    disk = draw(st.sampled_from([0, 20, 100]))
    max_instances = draw(st.none() | st.integers(1, 6))
    return HostState(
        id=hid,
        driver=draw(st.sampled_from(DRIVERS)),
        total_cpus=cpus,
        total_memory_mb=memory,
        total_disk_gb=disk,
        enabled=draw(st.sampled_from([True, True, True, False])),
        status=draw(st.sampled_from(["active", "active", "active", "offline"])),
        used_cpus=draw(st.sampled_from([0.0, 0.5, 1.0])) * cpus,
        used_memory_mb=draw(st.sampled_from([0, 512, memory // 2])),
        used_disk_gb=draw(st.integers(0, disk)),
        instance_count=draw(st.integers(0, max_instances or 6)),
        max_instances=max_instances,
        groups={g: 1 for g in draw(st.sets(st.sampled_from(GROUPS)))},
    )


@st.composite
def fleets(draw: st.DrawFn, min_size: int = 0) -> list[HostState]:
    n = draw(st.integers(min_size, 12))
    return [draw(host_states(f"h{i:02d}")) for i in range(n)]


requests = st.builds(
    PlacementRequest,
    driver=st.sampled_from(DRIVERS),
    cpus=st.sampled_from([0.1, 0.25, 0.5, 1.0, 2.0, 3.0]),
    memory_mb=st.sampled_from([128, 512, 1024, 4096]),
    disk_gb=st.sampled_from([0, 5, 20]),
    count=st.integers(1, 4),
    anti_affinity_group=st.none() | st.sampled_from(GROUPS),
)

configs = st.builds(
    SchedulerConfig,
    cpu_allocation_ratio=st.sampled_from([1.0, 1.5, 4.0]),
    memory_allocation_ratio=st.sampled_from([1.0, 1.5]),
    disk_allocation_ratio=st.sampled_from([1.0, 2.0]),
    reserved_host_memory_mb=st.sampled_from([0, 256]),
    weigher=st.sampled_from(["spread", "pack"]),
    anti_affinity=st.sampled_from(["hard", "soft"]),
)


def apply(
    hosts: list[HostState], request: PlacementRequest, placements: list[Placement]
) -> list[HostState]:
    by_id = {h.id: h for h in hosts}
    for p in placements:
        by_id[p.host_id] = by_id[p.host_id].with_claim(request)
    return [by_id[h.id] for h in hosts]


def outcome(
    run: object, hosts: list[HostState], request: PlacementRequest, config: SchedulerConfig
) -> list[str] | dict[str, object]:
    try:
        return [p.host_id for p in run(hosts, request, config)]  # type: ignore[operator]
    except NoValidHost as e:
        return e.details


@settings(max_examples=200, deadline=None)
@given(fleets(), st.lists(requests, max_size=8), configs)
def test_a_placement_never_overcommits_beyond_the_ratios(
    hosts: list[HostState], batch: list[PlacementRequest], config: SchedulerConfig
) -> None:
    for request in batch:
        try:
            placements = place_(hosts, request, config)
        except NoValidHost:
            continue
        after = apply(hosts, request, placements)
        for old, new in zip(hosts, after, strict=True):
            if new is old:
                continue
            assert new.schedulable and new.driver == request.driver
            assert new.free_cpus(config) >= -CPU_EPSILON
            assert new.free_memory_mb(config) >= 0
            assert new.free_disk_gb(config) >= 0
            assert new.max_instances is None or new.instance_count <= new.max_instances
            group = request.anti_affinity_group
            if group is not None and config.anti_affinity == "hard":
                assert group not in old.groups and new.groups[group] == 1
        hosts = after


@settings(max_examples=200, deadline=None)
@given(fleets(), requests, configs)
def test_n_replicas_at_once_account_like_n_placed_one_by_one(
    hosts: list[HostState], request: PlacementRequest, config: SchedulerConfig
) -> None:
    try:
        together = place_(hosts, request, config)
    except NoValidHost:
        together = None
    one = replace(request, count=1)
    state, alone = hosts, []
    for _ in range(request.count):
        try:
            placed = place_(state, one, config)
        except NoValidHost:
            alone = None
            break
        alone.append(placed[0].host_id)
        state = apply(state, one, placed)
    if together is None:
        assert alone is None
        return
    assert alone == [p.host_id for p in together]
    assert apply(hosts, request, together) == state
    total = sum(h.used_memory_mb for h in state) - sum(h.used_memory_mb for h in hosts)
    assert total == request.count * request.memory_mb
    assert sum(h.instance_count for h in state) == sum(h.instance_count for h in hosts) + (
        request.count
    )


@settings(max_examples=200, deadline=None)
@given(fleets(), requests, configs)
def test_with_room_for_every_replica_on_its_own_host_placement_succeeds(
    hosts: list[HostState], request: PlacementRequest, config: SchedulerConfig
) -> None:
    # Add `count` fresh hosts, each with room for (at least) one replica of the request.
    memory = int(request.memory_mb / config.memory_allocation_ratio) + 1
    fresh = [
        HostState(
            id=f"room{i}",
            driver=request.driver,
            total_cpus=int(request.cpus) + 1,
            total_memory_mb=memory + config.reserved_host_memory_mb,
            total_disk_gb=request.disk_gb,
        )
        for i in range(request.count)
    ]
    placements = place_(hosts + fresh, request, config)
    assert len(placements) == request.count


@settings(max_examples=200, deadline=None)
@given(fleets(), st.lists(st.tuples(requests, st.booleans()), max_size=10), configs)
def test_the_pool_chooses_exactly_as_place_does(
    hosts: list[HostState],
    steps: list[tuple[PlacementRequest, bool]],
    config: SchedulerConfig,
) -> None:
    pool = HostPool(hosts, config)
    placed: list[tuple[PlacementRequest, str]] = []
    for request, release_one in steps:
        expected = outcome(place_, hosts, request, config)
        got = outcome(lambda _h, r, _c: pool.place(r), hosts, request, config)
        assert got == expected
        if isinstance(expected, list):
            hosts = apply(hosts, request, [Placement(i, h) for i, h in enumerate(expected)])
            placed.extend((request, h) for h in expected)
        if release_one and placed:
            r, h = placed.pop(0)
            pool.release(h, r)
            hosts = [x.with_release(r) if x.id == h else x for x in hosts]
        assert list(pool) == hosts
