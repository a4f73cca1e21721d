"""Weighers: which of the hosts that passed the filters is best.

A host's weight is the sum, over CPU, memory and disk, of the resource's multiplier
times the *fraction of its capacity that is free* (clamped to [0, 1]). Nova
normalises each weigher to [0, 1] too, but by min-max over the hosts being weighed;
here each host is normalised by its own capacity instead. The weight then depends
on the host alone, not on which other hosts passed, so it is the same in every call
and ``HostPool`` can keep hosts sorted by it between placements.

- ``spread`` (default): the largest weight wins, i.e. the emptiest host: load is
  balanced and one host's failure takes down fewer instances.
- ``pack``: the smallest weight wins, i.e. the fullest host that still fits: whole
  hosts stay free for large requests or to be powered down.

``sort_key`` puts it all in one order (smaller is better): under soft
anti-affinity, first fewest instances of the request's group on the host, then
the weight, then the host id, so ties are broken the same way on every run.
"""

from __future__ import annotations

from nefos.scheduler.types import HostState, PlacementRequest, SchedulerConfig, anti_affinity_of


def _fraction(free: float, capacity: float) -> float:
    if capacity <= 0:
        return 0.0
    return min(1.0, max(0.0, free / capacity))


def free_fractions(host: HostState, config: SchedulerConfig) -> tuple[float, float, float]:
    """Free CPU, memory and disk as fractions of the host's allocatable capacity."""
    return (
        _fraction(host.free_cpus(config), host.total_cpus * config.cpu_allocation_ratio),
        _fraction(
            host.free_memory_mb(config),
            host.total_memory_mb * config.memory_allocation_ratio - config.reserved_host_memory_mb,
        ),
        _fraction(
            host.free_disk_gb(config),
            host.total_disk_gb * config.disk_allocation_ratio - config.reserved_host_disk_gb,
        ),
    )


def spread(host: HostState, config: SchedulerConfig) -> float:
    """Higher for emptier hosts."""
    c, m, d = free_fractions(host, config)
    return (
        config.cpu_weight_multiplier * c
        + config.memory_weight_multiplier * m
        + config.disk_weight_multiplier * d
    )


def pack(host: HostState, config: SchedulerConfig) -> float:
    """Higher for fuller hosts."""
    return -spread(host, config)


def weigh(host: HostState, config: SchedulerConfig) -> float:
    """The configured weigher's weight: higher is better."""
    return spread(host, config) if config.weigher == "spread" else pack(host, config)


def group_members(host: HostState, request: PlacementRequest, config: SchedulerConfig) -> int:
    """Under soft anti-affinity, how many of the request's group already run on ``host``."""
    group = request.anti_affinity_group
    if group is None or anti_affinity_of(request, config) != "soft":
        return 0
    return host.groups.get(group, 0)


def sort_key(
    host: HostState, request: PlacementRequest, config: SchedulerConfig
) -> tuple[int, float, str]:
    """The order hosts are preferred in: the smallest key wins."""
    return (group_members(host, request, config), -weigh(host, config), host.id)
