"""Pure placement benchmark: 5,000 simulated hosts, 10,000 placements, no I/O.

    python bench/bench_scheduler.py [--hosts 5000] [--placements 10000] [--linear 300]
                                    [--seed 1] [--json results.json]

The scheduler alone, in this process: no database, no HTTP, no persistence (the
issue's end-to-end aim, >= 1,000 placements/s *including* persistence, needs the
services layer and is measured there later). It

1. builds a seeded fleet of ``--hosts`` hosts (90 % ``sim``, 10 % ``docker``; 4-32
   CPUs with 2 GiB of memory per CPU; 2 % disabled, 2 % offline; at most 100
   instances each) and ``--placements`` single-replica requests (0.5-4 CPUs,
   0.5-8 GiB, 10-40 GB of disk; one in ten with an anti-affinity group);
2. times the first ``--linear`` requests three ways, each applying its claims to
   its own copy of the fleet, and checks that all three make the same choices:

   - **raw floor**: one plain-Python loop over a list of lists holding the same
     numbers, with every filter and the spread weight written inline: the cheapest
     O(hosts) scan Python can do, and the baseline of the ratio;
   - ``place()``: the reference, every filter function over every host;
   - ``HostPool.place()``: the incremental pool;

3. times ``HostPool.place()`` over all ``--placements`` requests, with spread and
   with pack.

Each line reports wall time and this process's CPU time; when they differ by more
than 10 %, other work on the machine disturbed the figure. ``--database`` (which
``bench/run_all.py`` passes to every benchmark) and other unknown options are
ignored: nothing here touches a database.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from nefos.scheduler import (
    HostPool,
    HostState,
    NoValidHost,
    PlacementRequest,
    SchedulerConfig,
    place,
)
from nefos.scheduler.filters import CPU_EPSILON

SPREAD = SchedulerConfig()
PACK = SchedulerConfig(weigher="pack")


@dataclass
class Row:
    variant: str
    placements: int
    failed: int
    wall_s: float
    cpu_s: float

    @property
    def rate(self) -> float:
        return self.placements / self.wall_s if self.wall_s else math.inf


def fleet(n: int, rng: random.Random) -> list[HostState]:
    hosts = []
    for i in range(n):
        cpus = rng.choice([4, 8, 16, 32])
        roll = rng.random()
        hosts.append(
            HostState(
                id=f"host-{i:05d}",
                driver="docker" if rng.random() < 0.1 else "sim",
                total_cpus=cpus,
                total_memory_mb=cpus * 2048,
                total_disk_gb=rng.choice([100, 200, 400]),
                enabled=roll >= 0.02,
                status="offline" if 0.02 <= roll < 0.04 else "active",
                max_instances=100,
            )
        )
    return hosts


def workload(n: int, rng: random.Random) -> list[PlacementRequest]:
    return [
        PlacementRequest(
            driver="docker" if rng.random() < 0.1 else "sim",
            cpus=rng.choice([0.5, 1.0, 2.0, 4.0]),
            memory_mb=rng.choice([512, 1024, 2048, 4096, 8192]),
            disk_gb=rng.choice([10, 20, 40]),
            anti_affinity_group=f"group-{rng.randrange(500)}" if rng.random() < 0.1 else None,
        )
        for _ in range(n)
    ]


def timed(
    variant: str, run: Callable[[], tuple[list[str | None], int]]
) -> tuple[Row, list[str | None]]:
    wall0, cpu0 = time.perf_counter(), time.process_time()
    chosen, failed = run()
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    return Row(variant, len(chosen) - failed, failed, wall, cpu), chosen


def raw_floor(
    hosts: Sequence[HostState], requests: Sequence[PlacementRequest], config: SchedulerConfig
) -> Callable[[], tuple[list[str | None], int]]:
    """The same feasibility check and spread weight, inline over plain lists."""
    assert config.weigher == "spread" and config.reserved_host_memory_mb == 0
    rows = [
        [
            h.id,
            h.driver,
            h.schedulable,
            h.total_cpus * config.cpu_allocation_ratio,
            h.total_memory_mb * config.memory_allocation_ratio,
            h.total_disk_gb * config.disk_allocation_ratio,
            h.used_cpus,
            h.used_memory_mb,
            h.used_disk_gb,
            h.instance_count,
            h.max_instances,
            set(h.groups),
        ]
        for h in sorted(hosts, key=lambda h: h.id)  # ties go to the first, smallest id
    ]

    def run() -> tuple[list[str | None], int]:
        chosen: list[str | None] = []
        failed = 0
        for r in requests:
            best, best_w = None, -math.inf
            cpus, mem, disk, group = r.cpus, r.memory_mb, r.disk_gb, r.anti_affinity_group
            for row in rows:
                if not row[2] or row[1] != r.driver:
                    continue
                fc = row[3] - row[6]
                fm = row[4] - row[7]
                fd = row[5] - row[8]
                if fc + CPU_EPSILON < cpus or fm < mem or fd < disk:
                    continue
                if row[10] is not None and row[9] >= row[10]:
                    continue
                if group is not None and group in row[11]:
                    continue
                w = (
                    (min(1.0, max(0.0, fc / row[3])) if row[3] > 0 else 0.0)
                    + (min(1.0, max(0.0, fm / row[4])) if row[4] > 0 else 0.0)
                    + (min(1.0, max(0.0, fd / row[5])) if row[5] > 0 else 0.0)
                )
                if w > best_w:
                    best, best_w = row, w
            if best is None:
                chosen.append(None)
                failed += 1
                continue
            best[6] += cpus
            best[7] += mem
            best[8] += disk
            best[9] += 1
            if group is not None:
                best[11].add(group)
            chosen.append(best[0])
        return chosen, failed

    return run


def reference(
    hosts: Sequence[HostState], requests: Sequence[PlacementRequest], config: SchedulerConfig
) -> Callable[[], tuple[list[str | None], int]]:
    state = list(hosts)
    index = {h.id: i for i, h in enumerate(state)}

    def run() -> tuple[list[str | None], int]:
        chosen: list[str | None] = []
        failed = 0
        for r in requests:
            try:
                (p,) = place(state, r, config)
            except NoValidHost:
                chosen.append(None)
                failed += 1
                continue
            i = index[p.host_id]
            state[i] = state[i].with_claim(r)
            chosen.append(p.host_id)
        return chosen, failed

    return run


def pooled(
    hosts: Sequence[HostState], requests: Sequence[PlacementRequest], config: SchedulerConfig
) -> Callable[[], tuple[list[str | None], int]]:
    pool = HostPool(hosts, config)  # built outside the timing, as the services layer would

    def run() -> tuple[list[str | None], int]:
        chosen: list[str | None] = []
        failed = 0
        for r in requests:
            try:
                (p,) = pool.place(r)
            except NoValidHost:
                chosen.append(None)
                failed += 1
                continue
            chosen.append(p.host_id)
        return chosen, failed

    return run


def machine() -> str:
    return (
        f"{platform.python_implementation()} {platform.python_version()}, "
        f"{os.cpu_count()} CPUs, {platform.machine()}, {platform.system()} {platform.release()}"
    )


def format_row(row: Row, floor: Row | None) -> str:
    ratio = f"{row.rate / floor.rate:,.1f}" if floor else "-"
    us = 1e6 * row.wall_s / max(1, row.placements + row.failed)
    busy = " (disturbed)" if row.wall_s and abs(row.cpu_s - row.wall_s) > 0.1 * row.wall_s else ""
    return (
        f"| {row.variant} | {row.placements:,} | {row.failed:,} | {row.wall_s:.2f} | "
        f"{row.cpu_s:.2f}{busy} | {row.rate:,.0f} | {us:,.0f} | {ratio} |"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--hosts", type=int, default=5000)
    parser.add_argument("--placements", type=int, default=10_000)
    parser.add_argument(
        "--linear", type=int, default=300, help="Requests timed with the O(hosts) variants."
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, help="Also write the results here.")
    args, ignored = parser.parse_known_args(argv)
    ignored = [a for a in ignored if a not in ("--database", "sqlite", "postgresql")]
    if ignored:
        print(f"ignoring {' '.join(ignored)}: this benchmark has no such option")

    rng = random.Random(args.seed)
    hosts = fleet(args.hosts, rng)
    requests = workload(args.placements, rng)
    prefix = requests[: args.linear]
    print(f"Machine: {machine()}")
    print(
        f"{len(hosts):,} hosts; {len(requests):,} single-replica requests; "
        f"the O(hosts) variants on the first {len(prefix):,}"
    )

    floor, raw_choice = timed("raw floor (inline loop, spread)", raw_floor(hosts, prefix, SPREAD))
    ref, ref_choice = timed("place() (spread)", reference(hosts, prefix, SPREAD))
    short, pool_choice = timed("HostPool.place() (spread)", pooled(hosts, prefix, SPREAD))
    same = raw_choice == ref_choice == pool_choice
    full = [
        timed(f"HostPool.place() (spread), all {len(requests):,}", pooled(hosts, requests, SPREAD))[
            0
        ],
        timed(f"HostPool.place() (pack), all {len(requests):,}", pooled(hosts, requests, PACK))[0],
    ]
    rows = [floor, ref, short, *full]

    print()
    print(
        "| variant | placed | failed | wall s | CPU s | placements/s | µs/placement "
        "| vs raw floor |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in rows:
        print(format_row(row, None if row is floor else floor))
    print()
    print(f"Same choices from the raw floor, place() and HostPool: {'yes' if same else 'NO'}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "machine": machine(),
                    "hosts": len(hosts),
                    "same_choices": same,
                    "rows": [asdict(r) | {"rate": r.rate} for r in rows],
                },
                indent=2,
            )
        )
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
