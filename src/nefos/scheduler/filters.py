"""Host filters: ``host_passes(host, request, config) -> bool``, one question each.

As in Nova's ``nova/scheduler/filters``: a filter only says yes or no about one host
and never touches I/O. Each carries the one-line ``reason`` a rejected host is
counted under, so ``NoValidHost`` can say "0/5 hosts: 3 insufficient memory,
2 not active". Filters run in ``DEFAULT_FILTERS`` order and a host is counted under
the first that rejects it: the request-independent ones come first, so a disabled
host reads "disabled", not "insufficient CPU".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from nefos.scheduler.types import (
    ACTIVE,
    HostState,
    PlacementRequest,
    SchedulerConfig,
    anti_affinity_of,
)

# Fractional vCPUs add up in floating point (0.1 * 3 != 0.3): a host exactly full
# must still be full, not a hair over, so CPU comparisons allow this much slack.
CPU_EPSILON = 1e-9

HostPasses = Callable[[HostState, PlacementRequest, SchedulerConfig], bool]


@dataclass(frozen=True, slots=True)
class HostFilter:
    name: str
    reason: str  # what a host this filter rejects is counted as
    host_passes: HostPasses


def enabled(host: HostState, request: PlacementRequest, config: SchedulerConfig) -> bool:
    return host.enabled


def active(host: HostState, request: PlacementRequest, config: SchedulerConfig) -> bool:
    return host.status == ACTIVE


def driver_kind(host: HostState, request: PlacementRequest, config: SchedulerConfig) -> bool:
    return host.driver == request.driver


def cpu(host: HostState, request: PlacementRequest, config: SchedulerConfig) -> bool:
    return host.free_cpus(config) + CPU_EPSILON >= request.cpus


def memory(host: HostState, request: PlacementRequest, config: SchedulerConfig) -> bool:
    return host.free_memory_mb(config) >= request.memory_mb


def disk(host: HostState, request: PlacementRequest, config: SchedulerConfig) -> bool:
    return host.free_disk_gb(config) >= request.disk_gb


def instance_count(host: HostState, request: PlacementRequest, config: SchedulerConfig) -> bool:
    return host.max_instances is None or host.instance_count < host.max_instances


def anti_affinity(host: HostState, request: PlacementRequest, config: SchedulerConfig) -> bool:
    """Hard anti-affinity rejects a host already holding one of the group's instances.

    Soft anti-affinity never rejects: it is an ordering (see ``weighers.sort_key``).
    """
    group = request.anti_affinity_group
    return group is None or anti_affinity_of(request, config) == "soft" or group not in host.groups


DEFAULT_FILTERS: tuple[HostFilter, ...] = (
    HostFilter("enabled", "disabled", enabled),
    HostFilter("active", "not active", active),
    HostFilter("driver_kind", "wrong driver", driver_kind),
    HostFilter("cpu", "insufficient CPU", cpu),
    HostFilter("memory", "insufficient memory", memory),
    HostFilter("disk", "insufficient disk", disk),
    HostFilter("instance_count", "too many instances", instance_count),
    HostFilter("anti_affinity", "anti-affinity", anti_affinity),
)

# The filters HostPool still runs on a candidate: its index already holds only
# enabled, active hosts of the request's driver kind.
RESOURCE_FILTERS: tuple[HostFilter, ...] = DEFAULT_FILTERS[3:]


def first_failure(
    host: HostState,
    request: PlacementRequest,
    config: SchedulerConfig,
    filters: tuple[HostFilter, ...] = DEFAULT_FILTERS,
) -> HostFilter | None:
    """The first filter that rejects ``host``, or None if every filter passes it."""
    for f in filters:
        if not f.host_passes(host, request, config):
            return f
    return None


def host_passes(
    host: HostState,
    request: PlacementRequest,
    config: SchedulerConfig,
    filters: tuple[HostFilter, ...] = DEFAULT_FILTERS,
) -> bool:
    return first_failure(host, request, config, filters) is None
