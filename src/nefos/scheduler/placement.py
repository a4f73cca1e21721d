"""Placement: the host for each replica of a request, all or nothing.

``place(hosts, request, config)`` is the reference. For each replica it runs every
filter over every host, takes the passing host with the smallest
``weighers.sort_key`` and claims the replica on a copy of that host, so the next
replica sees it (that is how replicas of one call honour anti-affinity between
themselves). It is O(hosts) per replica and never changes its arguments.

``HostPool`` is the same decision, kept incrementally for the services layer's
in-memory view of the fleet: hosts that could take work sit in heaps ordered by
weight, one per driver kind and class of free memory, and a placement walks the
heaps with room for its memory from the best host until one passes the remaining
filters. With spread that is usually the first host; the walk is longer only past
hosts too full for this request or holding its anti-affinity group. A property
test keeps its choices identical to ``place``'s.
It records claims in memory only: persisting them atomically is the caller's job.

``NoValidHost`` subclasses ``domain.errors.ResourceExhausted`` rather than being
mapped later: "no host has room" is exactly a capacity limit, so it reaches the
client as ``RESOURCE_EXHAUSTED`` through the one error map with no new entry, and
services can still catch it apart from a quota or wallet limit. Its message and
``details`` carry only counts per reason ("0/5 hosts: 3 insufficient memory,
2 not active"), never host ids, which tenants must not see.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from nefos.domain.errors import ResourceExhausted
from nefos.scheduler.filters import (
    CPU_EPSILON,
    DEFAULT_FILTERS,
    RESOURCE_FILTERS,
    first_failure,
    host_passes,
)
from nefos.scheduler.types import HostState, PlacementRequest, SchedulerConfig, anti_affinity_of
from nefos.scheduler.weighers import sort_key, weigh

DEFAULT_CONFIG = SchedulerConfig()
_REASON_ORDER = {f.reason: i for i, f in enumerate(DEFAULT_FILTERS)}


@dataclass(frozen=True, slots=True)
class Placement:
    replica: int  # 0-based index within the request
    host_id: str


class NoValidHost(ResourceExhausted):
    default_message = "No host has room for this request"

    def __init__(
        self, *, hosts: int, rejections: Mapping[str, int], replica: int = 0, count: int = 1
    ) -> None:
        self.hosts = hosts
        self.rejections = dict(rejections)
        self.replica = replica
        summary = describe_rejections(hosts, self.rejections)
        where = f" for replica {replica + 1} of {count}" if count > 1 else ""
        super().__init__(
            f"No valid host{where}: {summary}",
            hosts=hosts,
            rejections=self.rejections,
            replica=replica,
            count=count,
        )

    @classmethod
    def explain(
        cls,
        hosts: Iterable[HostState],
        request: PlacementRequest,
        config: SchedulerConfig,
        replica: int = 0,
    ) -> NoValidHost:
        """Count each host under the first filter that rejects it."""
        counts: Counter[str] = Counter()
        total = 0
        for host in hosts:
            total += 1
            failed = first_failure(host, request, config)
            # Every host fails, or the caller would have found one; but if a caller
            # asks about a host that passes, say so rather than lose it.
            counts[failed.reason if failed else "not chosen"] += 1
        return cls(hosts=total, rejections=counts, replica=replica, count=request.count)


def describe_rejections(hosts: int, rejections: Mapping[str, int]) -> str:
    """'0/5 hosts: 3 insufficient memory, 2 not active': most common reason first."""
    parts = sorted(rejections.items(), key=lambda kv: (-kv[1], _REASON_ORDER.get(kv[0], 99)))
    text = f"0/{hosts} hosts"
    if parts:
        text += ": " + ", ".join(f"{n} {reason}" for reason, n in parts)
    return text


def place(
    hosts: Iterable[HostState],
    request: PlacementRequest,
    config: SchedulerConfig = DEFAULT_CONFIG,
) -> list[Placement]:
    """The host of each of ``request.count`` replicas, or ``NoValidHost`` and nothing.

    Deterministic: among equally good hosts the smallest id wins. ``hosts`` is not
    changed; the claims of earlier replicas are applied to private copies.
    """
    pool = hosts if isinstance(hosts, list | tuple) else list(hosts)
    claimed: dict[str, HostState] = {}  # only the hosts this call has claimed on
    placements: list[Placement] = []
    for replica in range(request.count):
        best: HostState | None = None
        best_key: tuple[int, float, str] | None = None
        for host in pool:
            if claimed:
                host = claimed.get(host.id, host)
            if not host_passes(host, request, config):
                continue
            key = sort_key(host, request, config)
            if best_key is None or key < best_key:
                best, best_key = host, key
        if best is None:
            raise NoValidHost.explain(
                (claimed.get(h.id, h) for h in pool), request, config, replica
            )
        claimed[best.id] = best.with_claim(request)
        placements.append(Placement(replica, best.id))
    return placements


_Entry = tuple[float, str, int]  # (-weight, host id, version of the host when pushed)


_Class = tuple[int, int]  # (free memory class, free disk class)


def _room(memory: float, disk: float) -> _Class:
    """Powers-of-two classes: x units of free room fit a request of n only if
    class(x) >= class(n), so a host in a lower class need not be looked at."""
    return max(0, int(memory)).bit_length(), max(0, int(disk)).bit_length()


class HostPool:
    """A mutable set of hosts that places requests and remembers the claims.

    Makes the same choices as ``place`` over ``list(pool)``, but in time that grows
    with the hosts it has to skip, not with the fleet. Not thread-safe: one owner
    (the services layer's placement lock) at a time.

    The index: per driver kind, per class of free memory and free disk (powers of
    two), a heap of the hosts that could take some request, best weight first. A
    request only looks at the classes with room for its memory and disk, so hosts
    left with a few hundred MB or a few GB, which pack piles up at the front, are
    not walked past again and again.
    """

    def __init__(
        self, hosts: Iterable[HostState] = (), config: SchedulerConfig = DEFAULT_CONFIG
    ) -> None:
        self.config = config
        self._hosts: dict[str, HostState] = {}
        # A heap entry is live while its version is the host's; any change to a host
        # bumps the version and pushes a new entry, leaving the old one to be skipped.
        self._version: dict[str, int] = {}
        self._heaps: dict[str, dict[_Class, list[_Entry]]] = {}
        self._entries = 0  # live and stale, to know when to rebuild
        self._members: dict[str, set[str]] = {}  # anti-affinity group -> hosts holding it
        for host in hosts:
            if host.id in self._hosts:
                raise ValueError(f"duplicate host id {host.id!r}")
            self._store(host, push=False)
        self._rebuild()

    # --- reading ---------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._hosts)

    def __iter__(self) -> Iterator[HostState]:
        return iter(self._hosts.values())

    def __contains__(self, host_id: object) -> bool:
        return host_id in self._hosts

    def get(self, host_id: str) -> HostState | None:
        return self._hosts.get(host_id)

    # --- changing --------------------------------------------------------------------
    def place(self, request: PlacementRequest) -> list[Placement]:
        """Place and claim every replica of ``request``, or raise ``NoValidHost``.

        On failure the claims made for earlier replicas of this request are undone,
        so the pool is exactly as before the call.
        """
        before: dict[str, HostState] = {}
        placements: list[Placement] = []
        for replica in range(request.count):
            host = self._choose(request)
            if host is None:
                error = NoValidHost.explain(self._hosts.values(), request, self.config, replica)
                for original in before.values():
                    self._store(original)
                raise error
            before.setdefault(host.id, host)
            self._store(host.with_claim(request))
            placements.append(Placement(replica, host.id))
        return placements

    def release(self, host_id: str, request: PlacementRequest) -> None:
        """Free one replica of ``request`` on ``host_id``; a host no longer here is ignored."""
        host = self._hosts.get(host_id)
        if host is not None:
            self._store(host.with_release(request))

    def update(self, host: HostState) -> None:
        """Add ``host`` or replace the pool's state of it (after a refresh from the database)."""
        self._store(host)

    def remove(self, host_id: str) -> None:
        host = self._hosts.pop(host_id, None)
        if host is not None:
            self._version[host_id] += 1
            for group in host.groups:
                self._members[group].discard(host_id)

    # --- internals -------------------------------------------------------------------
    def _indexable(self, host: HostState) -> bool:
        # Hosts no request can use stay out of the heaps: every request asks for some
        # CPU and at least 1 MB of memory (PlacementRequest checks it).
        return (
            host.schedulable
            and (host.max_instances is None or host.instance_count < host.max_instances)
            and host.free_cpus(self.config) + CPU_EPSILON > 0
            and host.free_memory_mb(self.config) >= 1
        )

    def _room(self, host: HostState) -> _Class:
        return _room(host.free_memory_mb(self.config), host.free_disk_gb(self.config))

    def _store(self, host: HostState, *, push: bool = True) -> None:
        old = self._hosts.get(host.id)
        self._hosts[host.id] = host
        version = self._version.get(host.id, 0) + 1
        self._version[host.id] = version
        if old is not None and old.groups is not host.groups:
            for group in old.groups.keys() - host.groups.keys():
                self._members[group].discard(host.id)
        for group in host.groups:
            self._members.setdefault(group, set()).add(host.id)
        if push and self._indexable(host):
            buckets = self._heaps.setdefault(host.driver, {})
            heap = buckets.setdefault(self._room(host), [])
            heapq.heappush(heap, (-weigh(host, self.config), host.id, version))
            self._entries += 1
            if self._entries > 2 * len(self._hosts) + 64:
                self._rebuild()

    def _rebuild(self) -> None:
        heaps: dict[str, dict[_Class, list[_Entry]]] = {}
        entries = 0
        for host in self._hosts.values():
            if self._indexable(host):
                entry = (-weigh(host, self.config), host.id, self._version[host.id])
                buckets = heaps.setdefault(host.driver, {})
                buckets.setdefault(self._room(host), []).append(entry)
                entries += 1
        for buckets in heaps.values():
            for heap in buckets.values():
                heapq.heapify(heap)
        self._heaps, self._entries = heaps, entries

    def _choose(self, request: PlacementRequest) -> HostState | None:
        config = self.config
        group = request.anti_affinity_group
        # Hosts already holding the group are skipped in the walk: rejected under hard
        # anti-affinity, and under soft worse than any host without the group.
        members = self._members.get(group, ()) if group is not None else ()
        best: _Entry | None = None
        best_heap: list[_Entry] = []
        versions, hosts = self._version, self._hosts
        need_memory, need_disk = _room(request.memory_mb, request.disk_gb)
        buckets = self._heaps.get(request.driver, {})
        # Spread's best hosts tend to have the most room, pack's the least: visiting
        # those classes first lets the others be skipped on their first entry.
        order = sorted(buckets, key=sum, reverse=config.weigher == "spread")
        for room in order:
            heap = buckets[room]
            if room[0] < need_memory or room[1] < need_disk or not heap:
                continue
            # heap[0] may be stale, but no live entry in this heap sorts before it.
            if best is not None and heap[0] >= best:
                continue
            skipped: list[_Entry] = []
            while heap:
                entry = heapq.heappop(heap)
                if versions[entry[1]] != entry[2]:
                    self._entries -= 1
                    continue  # stale: the host changed or left since this was pushed
                if best is not None and entry >= best:
                    skipped.append(entry)
                    break
                host = hosts[entry[1]]
                if host.id not in members and host_passes(host, request, config, RESOURCE_FILTERS):
                    if best is not None:
                        heapq.heappush(best_heap, best)  # dethroned: back where it came from
                    best, best_heap = entry, heap
                    break
                skipped.append(entry)
            for entry in skipped:
                heapq.heappush(heap, entry)
        chosen: HostState | None = None
        if best is not None:
            # The winner's entry stays out: the claim makes it stale anyway.
            self._entries -= 1
            chosen = hosts[best[1]]
        if chosen is None and members and anti_affinity_of(request, config) == "soft":
            candidates = [
                self._hosts[h]
                for h in members
                if host_passes(self._hosts[h], request, config, DEFAULT_FILTERS)
            ]
            if candidates:
                chosen = min(candidates, key=lambda h: sort_key(h, request, config))
        return chosen
