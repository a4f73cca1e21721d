"""Each filter on its own: what it passes, what it rejects, and the reason it gives."""

from __future__ import annotations

import pytest

from nefos.scheduler import filters
from nefos.scheduler.filters import DEFAULT_FILTERS, first_failure, host_passes
from nefos.scheduler.types import HostState, PlacementRequest, SchedulerConfig

CONFIG = SchedulerConfig(cpu_allocation_ratio=1.0)


def host(**kw: object) -> HostState:
    fields: dict[str, object] = {
        "id": "h1",
        "driver": "docker",
        "total_cpus": 4,
        "total_memory_mb": 8192,
        "total_disk_gb": 100,
    }
    fields.update(kw)
    return HostState(**fields)


def request(**kw: object) -> PlacementRequest:
    fields: dict[str, object] = {"driver": "docker", "cpus": 1, "memory_mb": 1024, "disk_gb": 10}
    fields.update(kw)
    return PlacementRequest(**fields)


def test_an_empty_host_of_the_right_kind_passes_every_filter() -> None:
    assert host_passes(host(), request(), CONFIG)
    assert first_failure(host(), request(), CONFIG) is None


def test_disabled_host_is_rejected_as_disabled() -> None:
    assert not filters.enabled(host(enabled=False), request(), CONFIG)
    assert first_failure(host(enabled=False), request(), CONFIG).reason == "disabled"


@pytest.mark.parametrize("status", ["offline", "maintenance", "error", ""])
def test_only_an_active_host_takes_work(status: str) -> None:
    assert filters.active(host(status="active"), request(), CONFIG)
    assert not filters.active(host(status=status), request(), CONFIG)
    assert first_failure(host(status=status), request(), CONFIG).reason == "not active"


def test_driver_kind_must_match() -> None:
    assert filters.driver_kind(host(driver="libvirt"), request(driver="libvirt"), CONFIG)
    assert not filters.driver_kind(host(driver="libvirt"), request(driver="docker"), CONFIG)


def test_cpu_filter_allows_exactly_full_and_not_a_hair_more() -> None:
    h = host(used_cpus=3.0)
    assert filters.cpu(h, request(cpus=1), CONFIG)
    assert not filters.cpu(h, request(cpus=1.5), CONFIG)


def test_cpu_filter_tolerates_float_sums_of_fractional_cpus() -> None:
    used = sum([0.1] * 39)  # 3.9000000000000017, not 3.9
    assert filters.cpu(host(used_cpus=used), request(cpus=0.1), CONFIG)


def test_cpu_allocation_ratio_multiplies_physical_cpus() -> None:
    h = host(total_cpus=4, used_cpus=15)
    assert not filters.cpu(h, request(cpus=2), SchedulerConfig(cpu_allocation_ratio=4.0))
    assert filters.cpu(h, request(cpus=1), SchedulerConfig(cpu_allocation_ratio=4.0))
    assert filters.cpu(h, request(cpus=2), SchedulerConfig(cpu_allocation_ratio=16.0))


def test_memory_filter_uses_ratio_and_reserved_memory() -> None:
    h = host(total_memory_mb=8192, used_memory_mb=4096)
    assert filters.memory(h, request(memory_mb=4096), CONFIG)
    assert not filters.memory(h, request(memory_mb=4097), CONFIG)
    assert filters.memory(h, request(memory_mb=8192), SchedulerConfig(memory_allocation_ratio=1.5))
    reserved = SchedulerConfig(reserved_host_memory_mb=512)
    assert not filters.memory(h, request(memory_mb=4096), reserved)
    assert filters.memory(h, request(memory_mb=3584), reserved)


def test_disk_filter_uses_ratio_and_reserved_disk() -> None:
    h = host(total_disk_gb=100, used_disk_gb=90)
    assert filters.disk(h, request(disk_gb=10), CONFIG)
    assert not filters.disk(h, request(disk_gb=11), CONFIG)
    assert filters.disk(h, request(disk_gb=20), SchedulerConfig(disk_allocation_ratio=1.1))
    assert not filters.disk(h, request(disk_gb=10), SchedulerConfig(reserved_host_disk_gb=1))


def test_a_request_without_disk_fits_a_host_without_disk() -> None:
    assert filters.disk(host(total_disk_gb=0), request(disk_gb=0), CONFIG)


def test_instance_count_filter_caps_at_max_instances() -> None:
    assert filters.instance_count(host(instance_count=1000), request(), CONFIG)
    assert filters.instance_count(host(instance_count=2, max_instances=3), request(), CONFIG)
    assert not filters.instance_count(host(instance_count=3, max_instances=3), request(), CONFIG)


def test_hard_anti_affinity_rejects_a_host_holding_the_group() -> None:
    h = host(groups={"web": 1})
    assert not filters.anti_affinity(h, request(anti_affinity_group="web"), CONFIG)
    assert filters.anti_affinity(h, request(anti_affinity_group="db"), CONFIG)
    assert filters.anti_affinity(h, request(), CONFIG)


def test_soft_anti_affinity_never_rejects() -> None:
    soft = SchedulerConfig(anti_affinity="soft")
    assert filters.anti_affinity(host(groups={"web": 5}), request(anti_affinity_group="web"), soft)


def test_a_group_with_zero_members_is_not_held() -> None:
    h = host(groups={"web": 0})
    assert "web" not in h.groups
    assert filters.anti_affinity(h, request(anti_affinity_group="web"), CONFIG)


def test_a_host_is_counted_under_the_first_filter_that_rejects_it() -> None:
    h = host(enabled=False, status="offline", driver="libvirt", used_cpus=4)
    assert first_failure(h, request(), CONFIG).reason == "disabled"


def test_every_filter_has_a_distinct_one_line_reason() -> None:
    reasons = [f.reason for f in DEFAULT_FILTERS]
    assert len(set(reasons)) == len(reasons)
    assert all(r and "\n" not in r for r in reasons)


def test_host_state_groups_are_a_private_read_only_copy() -> None:
    groups = {"web": 1}
    h = host(groups=groups)
    groups["db"] = 1
    assert dict(h.groups) == {"web": 1}
    with pytest.raises(TypeError):
        h.groups["x"] = 1


@pytest.mark.parametrize(
    "bad",
    [{"cpus": 0}, {"memory_mb": 0}, {"disk_gb": -1}, {"count": 0}],
)
def test_a_request_for_nothing_is_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        request(**bad)


@pytest.mark.parametrize(
    "bad",
    [
        {"cpu_allocation_ratio": 0},
        {"memory_allocation_ratio": -1},
        {"reserved_host_memory_mb": -1},
        {"weigher": "random"},
        {"anti_affinity": "maybe"},
    ],
)
def test_a_nonsensical_config_is_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        SchedulerConfig(**bad)
