"""What the scheduler reads: host snapshots, the request, and the policy.

All three are frozen. A placement never mutates a ``HostState``; it makes a new one
with ``with_claim`` (and ``with_release`` undoes it), so a caller's list of hosts is
never changed behind its back.

Capacity of a host for one resource is ``total * allocation_ratio`` (memory also
minus ``reserved_host_memory_mb``, disk minus ``reserved_host_disk_gb``), as in Nova:
a ratio of 4.0 lets 8 physical CPUs carry 32 virtual CPUs. ``free_*`` may go
negative when an operator lowers a ratio below what is already allocated; such a
host simply fits nothing more.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Literal

Weigher = Literal["spread", "pack"]
AntiAffinity = Literal["hard", "soft"]

# Only an active host takes new work; "offline", "maintenance", "error" and any
# status a driver invents do not.
ACTIVE = "active"

_NO_GROUPS: Mapping[str, int] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    """Placement policy. The services layer builds it from ``Settings``."""

    cpu_allocation_ratio: float = 4.0
    # 1.0: memory overcommit on containers and VMs without swap ends in the OOM killer.
    memory_allocation_ratio: float = 1.0
    disk_allocation_ratio: float = 1.0
    reserved_host_memory_mb: int = 0
    reserved_host_disk_gb: int = 0
    weigher: Weigher = "spread"
    anti_affinity: AntiAffinity = "hard"
    # How much each resource's free fraction counts in the weight (Nova's multipliers).
    cpu_weight_multiplier: float = 1.0
    memory_weight_multiplier: float = 1.0
    disk_weight_multiplier: float = 1.0

    def __post_init__(self) -> None:
        for name in ("cpu_allocation_ratio", "memory_allocation_ratio", "disk_allocation_ratio"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0")
        if self.reserved_host_memory_mb < 0 or self.reserved_host_disk_gb < 0:
            raise ValueError("reserved host resources must be >= 0")
        if self.weigher not in ("spread", "pack"):
            raise ValueError(f"unknown weigher {self.weigher!r}")
        if self.anti_affinity not in ("hard", "soft"):
            raise ValueError(f"unknown anti_affinity {self.anti_affinity!r}")


@dataclass(frozen=True, slots=True)
class PlacementRequest:
    """``count`` replicas of one size, for one driver kind, placed in one call.

    Replicas sharing ``anti_affinity_group`` (and instances already in that group)
    go on distinct hosts: always under ``anti_affinity="hard"``, when possible under
    ``"soft"``.
    """

    driver: str
    cpus: float
    memory_mb: int
    disk_gb: int = 0
    count: int = 1
    anti_affinity_group: str | None = None
    # Overrides SchedulerConfig.anti_affinity for this request (replicas publishing a
    # fixed host port cannot share a host, whatever the policy).
    anti_affinity: AntiAffinity | None = None

    def __post_init__(self) -> None:
        # Every instance takes some CPU and memory: HostPool relies on it to drop
        # hosts with none left from its index.
        if not self.cpus > 0 or self.memory_mb <= 0:
            raise ValueError("cpus and memory_mb must be > 0")
        if self.disk_gb < 0:
            raise ValueError("disk_gb must be >= 0")
        if self.count < 1:
            raise ValueError("count must be >= 1")


def anti_affinity_of(request: PlacementRequest, config: SchedulerConfig) -> AntiAffinity:
    """The anti-affinity rule in force for ``request``."""
    return request.anti_affinity or config.anti_affinity


@dataclass(frozen=True, slots=True)
class HostState:
    """A snapshot of one host's capacity and what is allocated on it.

    ``groups`` maps an anti-affinity group id to how many of its instances run here.
    Host ids must be unique within one call; ties between equal hosts go to the
    smallest id, so placements are deterministic.
    """

    id: str
    driver: str
    total_cpus: int
    total_memory_mb: int
    total_disk_gb: int
    enabled: bool = True
    status: str = ACTIVE
    used_cpus: float = 0.0
    used_memory_mb: int = 0
    used_disk_gb: int = 0
    instance_count: int = 0
    max_instances: int | None = None
    groups: Mapping[str, int] = field(default_factory=lambda: _NO_GROUPS, hash=False)

    def __post_init__(self) -> None:
        if self.groups is not _NO_GROUPS:
            # A private read-only copy: the snapshot must not change under the scheduler.
            frozen = {g: n for g, n in self.groups.items() if n > 0}
            object.__setattr__(self, "groups", MappingProxyType(frozen) if frozen else _NO_GROUPS)

    @property
    def schedulable(self) -> bool:
        """Enabled and active: the request-independent part of the filters."""
        return self.enabled and self.status == ACTIVE

    def free_cpus(self, config: SchedulerConfig) -> float:
        return self.total_cpus * config.cpu_allocation_ratio - self.used_cpus

    def free_memory_mb(self, config: SchedulerConfig) -> float:
        return (
            self.total_memory_mb * config.memory_allocation_ratio
            - config.reserved_host_memory_mb
            - self.used_memory_mb
        )

    def free_disk_gb(self, config: SchedulerConfig) -> float:
        return (
            self.total_disk_gb * config.disk_allocation_ratio
            - config.reserved_host_disk_gb
            - self.used_disk_gb
        )

    def with_claim(self, request: PlacementRequest) -> HostState:
        """This host with one replica of ``request`` allocated on it (no checks)."""
        return self._moved(request, 1)

    def with_release(self, request: PlacementRequest) -> HostState:
        """This host with one replica of ``request`` freed (the inverse of ``with_claim``)."""
        return self._moved(request, -1)

    def _moved(self, request: PlacementRequest, sign: int) -> HostState:
        groups = self.groups
        group = request.anti_affinity_group
        if group is not None:
            counts = dict(groups)
            counts[group] = counts.get(group, 0) + sign
            groups = counts
        return replace(
            self,
            used_cpus=self.used_cpus + sign * request.cpus,
            used_memory_mb=self.used_memory_mb + sign * request.memory_mb,
            used_disk_gb=self.used_disk_gb + sign * request.disk_gb,
            instance_count=self.instance_count + sign,
            groups=groups,
        )
