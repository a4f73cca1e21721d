"""Spread prefers the emptiest host, pack the fullest; both are normalised per host."""

from __future__ import annotations

from nefos.scheduler.types import HostState, PlacementRequest, SchedulerConfig
from nefos.scheduler.weighers import free_fractions, pack, sort_key, spread, weigh

SPREAD = SchedulerConfig(cpu_allocation_ratio=1.0)
PACK = SchedulerConfig(cpu_allocation_ratio=1.0, weigher="pack")


def host(hid: str = "h", **kw: object) -> HostState:
    fields: dict[str, object] = {
        "id": hid,
        "driver": "sim",
        "total_cpus": 8,
        "total_memory_mb": 16384,
        "total_disk_gb": 100,
    }
    fields.update(kw)
    return HostState(**fields)


def test_free_fractions_are_normalised_by_the_hosts_own_capacity() -> None:
    h = host(used_cpus=2, used_memory_mb=8192, used_disk_gb=100)
    assert free_fractions(h, SPREAD) == (0.75, 0.5, 0.0)
    # Same fractions on a host twice the size with twice the usage.
    big = host(
        total_cpus=16,
        total_memory_mb=32768,
        total_disk_gb=200,
        used_cpus=4,
        used_memory_mb=16384,
        used_disk_gb=200,
    )
    assert free_fractions(big, SPREAD) == free_fractions(h, SPREAD)


def test_free_fractions_count_the_allocation_ratio() -> None:
    h = host(used_cpus=8)
    assert free_fractions(h, SchedulerConfig(cpu_allocation_ratio=4.0))[0] == 0.75


def test_free_fractions_are_clamped_when_a_host_is_overcommitted_or_empty_of_capacity() -> None:
    over = host(used_cpus=12, total_disk_gb=0)
    assert free_fractions(over, SPREAD) == (0.0, 1.0, 0.0)


def test_spread_weighs_an_emptier_host_higher() -> None:
    empty, half = host(), host(used_cpus=4, used_memory_mb=8192, used_disk_gb=50)
    assert spread(empty, SPREAD) == 3.0
    assert spread(half, SPREAD) == 1.5
    assert weigh(empty, SPREAD) > weigh(half, SPREAD)


def test_pack_weighs_a_fuller_host_higher() -> None:
    empty, half = host(), host(used_cpus=4, used_memory_mb=8192, used_disk_gb=50)
    assert pack(half, PACK) > pack(empty, PACK)
    assert weigh(half, PACK) > weigh(empty, PACK)


def test_multipliers_choose_which_resource_counts() -> None:
    cpu_free = host(used_memory_mb=16384)  # all CPU free, no memory free
    mem_free = host(used_cpus=8)
    memory_only = SchedulerConfig(
        cpu_allocation_ratio=1.0, cpu_weight_multiplier=0.0, disk_weight_multiplier=0.0
    )
    assert weigh(mem_free, memory_only) > weigh(cpu_free, memory_only)
    cpu_only = SchedulerConfig(
        cpu_allocation_ratio=1.0, memory_weight_multiplier=0.0, disk_weight_multiplier=0.0
    )
    assert weigh(cpu_free, cpu_only) > weigh(mem_free, cpu_only)


def test_sort_key_breaks_ties_by_host_id() -> None:
    r = PlacementRequest("sim", 1, 512)
    assert sort_key(host("a"), r, SPREAD) < sort_key(host("b"), r, SPREAD)


def test_soft_anti_affinity_orders_by_group_members_before_weight() -> None:
    soft = SchedulerConfig(cpu_allocation_ratio=1.0, anti_affinity="soft")
    r = PlacementRequest("sim", 1, 512, anti_affinity_group="web")
    empty_with_member = host("a", groups={"web": 1})
    busy_without = host("b", used_cpus=7, used_memory_mb=16000)
    assert sort_key(busy_without, r, soft) < sort_key(empty_with_member, r, soft)
    # Under hard anti-affinity the filter decides; the key ignores the group.
    assert sort_key(empty_with_member, r, SPREAD) < sort_key(busy_without, r, SPREAD)
