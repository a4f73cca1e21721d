"""place() and HostPool.place(): choices, anti-affinity, all-or-nothing, and the reasons."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from nefos.domain.errors import ResourceExhausted
from nefos.scheduler import (
    HostPool,
    HostState,
    NoValidHost,
    Placement,
    PlacementRequest,
    SchedulerConfig,
    place,
)

CONFIG = SchedulerConfig(cpu_allocation_ratio=1.0)
Placer = Callable[[list[HostState], PlacementRequest, SchedulerConfig], list[Placement]]


def pool_place(
    hosts: list[HostState], request: PlacementRequest, config: SchedulerConfig
) -> list[Placement]:
    return HostPool(hosts, config).place(request)


# Every behaviour holds for the reference and for the incremental pool alike.
PLACERS = pytest.mark.parametrize("placer", [place, pool_place], ids=["place", "pool"])


def host(hid: str, **kw: object) -> HostState:
    fields: dict[str, object] = {
        "id": hid,
        "driver": "docker",
        "total_cpus": 8,
        "total_memory_mb": 16384,
        "total_disk_gb": 100,
    }
    fields.update(kw)
    return HostState(**fields)


def ids(placements: list[Placement]) -> list[str]:
    assert [p.replica for p in placements] == list(range(len(placements)))
    return [p.host_id for p in placements]


@PLACERS
def test_spread_and_pack_choose_differently(placer: Placer) -> None:
    hosts = [host("empty"), host("half", used_cpus=4, used_memory_mb=8192, used_disk_gb=50)]
    r = PlacementRequest("docker", 1, 1024)
    assert ids(placer(hosts, r, CONFIG)) == ["empty"]
    assert ids(placer(hosts, r, SchedulerConfig(cpu_allocation_ratio=1.0, weigher="pack"))) == [
        "half"
    ]


@PLACERS
def test_pack_skips_the_fullest_host_when_the_request_does_not_fit_it(placer: Placer) -> None:
    hosts = [host("full", used_cpus=7.5), host("half", used_cpus=4), host("empty")]
    pack = SchedulerConfig(cpu_allocation_ratio=1.0, weigher="pack")
    assert ids(placer(hosts, PlacementRequest("docker", 1, 1024), pack)) == ["half"]


@PLACERS
def test_equal_hosts_are_chosen_by_id(placer: Placer) -> None:
    hosts = [host("c"), host("a"), host("b")]
    assert ids(placer(hosts, PlacementRequest("docker", 1, 1024), CONFIG)) == ["a"]


@PLACERS
def test_spread_places_replicas_round_the_hosts(placer: Placer) -> None:
    hosts = [host("a"), host("b")]
    r = PlacementRequest("docker", 1, 1024, count=4)
    assert ids(placer(hosts, r, CONFIG)) == ["a", "b", "a", "b"]


@PLACERS
def test_pack_fills_one_host_before_the_next(placer: Placer) -> None:
    hosts = [host("a", total_cpus=2), host("b", total_cpus=2)]
    pack = SchedulerConfig(cpu_allocation_ratio=1.0, weigher="pack")
    assert ids(placer(hosts, PlacementRequest("docker", 1, 1024, count=3), pack)) == [
        "a",
        "a",
        "b",
    ]


@PLACERS
def test_only_hosts_of_the_requested_driver_kind_are_used(placer: Placer) -> None:
    hosts = [host("a", driver="libvirt"), host("b", driver="docker", used_cpus=6)]
    assert ids(placer(hosts, PlacementRequest("docker", 1, 1024), CONFIG)) == ["b"]


@PLACERS
def test_hard_anti_affinity_puts_replicas_on_distinct_hosts(placer: Placer) -> None:
    hosts = [host(h) for h in "abcd"]
    pack = SchedulerConfig(cpu_allocation_ratio=1.0, weigher="pack")
    r = PlacementRequest("docker", 1, 1024, count=4, anti_affinity_group="web")
    assert sorted(ids(placer(hosts, r, pack))) == ["a", "b", "c", "d"]


@PLACERS
def test_hard_anti_affinity_avoids_hosts_with_existing_group_members(placer: Placer) -> None:
    hosts = [host("a", groups={"web": 1}), host("b", used_cpus=7)]
    r = PlacementRequest("docker", 1, 1024, anti_affinity_group="web")
    assert ids(placer(hosts, r, CONFIG)) == ["b"]


@PLACERS
def test_hard_anti_affinity_fails_without_enough_hosts(placer: Placer) -> None:
    hosts = [host("a"), host("b")]
    r = PlacementRequest("docker", 1, 1024, count=3, anti_affinity_group="web")
    with pytest.raises(NoValidHost) as caught:
        placer(hosts, r, CONFIG)
    assert caught.value.replica == 2
    assert caught.value.rejections == {"anti-affinity": 2}
    assert str(caught.value) == "No valid host for replica 3 of 3: 0/2 hosts: 2 anti-affinity"


@PLACERS
def test_soft_anti_affinity_spreads_when_it_can_and_doubles_up_when_it_must(
    placer: Placer,
) -> None:
    soft_pack = SchedulerConfig(cpu_allocation_ratio=1.0, anti_affinity="soft", weigher="pack")
    hosts = [host("a"), host("b")]
    r = PlacementRequest("docker", 1, 1024, count=5, anti_affinity_group="web")
    chosen = ids(placer(hosts, r, soft_pack))
    # Distinct hosts first even under pack; then the host with fewer members.
    assert chosen[:2] in (["a", "b"], ["b", "a"])
    assert sorted(chosen) == ["a", "a", "a", "b", "b"]


@PLACERS
def test_soft_anti_affinity_falls_back_to_the_host_with_fewest_members(placer: Placer) -> None:
    soft = SchedulerConfig(cpu_allocation_ratio=1.0, anti_affinity="soft")
    hosts = [host("a", groups={"web": 3}), host("b", groups={"web": 1}, used_cpus=6)]
    r = PlacementRequest("docker", 1, 1024, anti_affinity_group="web")
    assert ids(placer(hosts, r, soft)) == ["b"]


@PLACERS
def test_a_request_that_fits_nowhere_says_why_per_host(placer: Placer) -> None:
    hosts = [
        host("a", used_memory_mb=16000),
        host("b", used_memory_mb=16000),
        host("c", used_memory_mb=16000),
        host("d", status="offline"),
        host("e", status="offline"),
    ]
    with pytest.raises(NoValidHost) as caught:
        placer(hosts, PlacementRequest("docker", 1, 1024), CONFIG)
    error = caught.value
    assert str(error) == "No valid host: 0/5 hosts: 3 insufficient memory, 2 not active"
    assert error.code == "RESOURCE_EXHAUSTED"
    assert isinstance(error, ResourceExhausted)
    assert error.details == {
        "hosts": 5,
        "rejections": {"insufficient memory": 3, "not active": 2},
        "replica": 0,
        "count": 1,
    }


@PLACERS
def test_no_hosts_at_all_is_no_valid_host(placer: Placer) -> None:
    with pytest.raises(NoValidHost, match=r"^No valid host: 0/0 hosts$"):
        placer([], PlacementRequest("docker", 1, 1024), CONFIG)


@PLACERS
def test_multi_replica_is_all_or_nothing(placer: Placer) -> None:
    hosts = [host("a", total_cpus=2), host("b", total_cpus=2)]
    r = PlacementRequest("docker", 1, 1024, count=5)
    with pytest.raises(NoValidHost) as caught:
        placer(hosts, r, CONFIG)
    assert caught.value.replica == 4
    assert caught.value.rejections == {"insufficient CPU": 2}
    assert ids(placer(hosts, PlacementRequest("docker", 1, 1024, count=4), CONFIG)) == [
        "a",
        "b",
        "a",
        "b",
    ]


def test_place_does_not_change_the_hosts_it_is_given() -> None:
    hosts = [host("a"), host("b")]
    before = list(hosts)
    place(hosts, PlacementRequest("docker", 1, 1024, count=2, anti_affinity_group="g"), CONFIG)
    assert hosts == before
    assert all(h.used_cpus == 0 and not h.groups for h in hosts)


def test_pool_records_claims_and_releases_them() -> None:
    pool = HostPool([host("a"), host("b")], CONFIG)
    r = PlacementRequest("docker", 2, 2048, disk_gb=10, anti_affinity_group="web")
    assert ids(pool.place(r)) == ["a"]
    a = pool.get("a")
    assert a is not None
    assert (a.used_cpus, a.used_memory_mb, a.used_disk_gb, a.instance_count) == (2, 2048, 10, 1)
    assert dict(a.groups) == {"web": 1}
    assert ids(pool.place(r)) == ["b"]
    pool.release("a", r)
    assert pool.get("a") == host("a")
    assert ids(pool.place(r)) == ["a"]
    pool.release("gone", r)  # a host that left the pool is ignored


def test_pool_is_unchanged_after_a_failed_multi_replica_request() -> None:
    hosts = [host("a", total_cpus=2), host("b", total_cpus=2)]
    pool = HostPool(hosts, CONFIG)
    with pytest.raises(NoValidHost):
        pool.place(PlacementRequest("docker", 1, 1024, count=5, anti_affinity_group="g"))
    assert list(pool) == hosts
    assert ids(pool.place(PlacementRequest("docker", 2, 1024, anti_affinity_group="g"))) == ["a"]


def test_pool_follows_updates_and_removals() -> None:
    pool = HostPool([host("a"), host("b", used_cpus=4)], CONFIG)
    r = PlacementRequest("docker", 1, 1024)
    pool.update(host("a", status="offline"))
    assert ids(pool.place(r)) == ["b"]
    pool.remove("b")
    pool.update(host("c", driver="docker"))
    assert ids(pool.place(r)) == ["c"]
    pool.update(host("a"))
    assert ids(pool.place(r)) == ["a"]
    assert len(pool) == 2 and "b" not in pool


def test_pool_refuses_duplicate_host_ids() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        HostPool([host("a"), host("a")])


def test_a_full_host_comes_back_to_the_pool_when_released() -> None:
    pool = HostPool([host("a", total_cpus=1, max_instances=1)], CONFIG)
    r = PlacementRequest("docker", 1, 1024)
    pool.place(r)
    with pytest.raises(NoValidHost, match="1 insufficient CPU"):
        pool.place(r)
    pool.release("a", r)
    assert ids(pool.place(r)) == ["a"]
