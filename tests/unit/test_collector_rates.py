"""The collector's arithmetic: rates from two counter reads, a container's replicas
as one series, a host's cpu from its busy and total time."""

from __future__ import annotations

from datetime import UTC, datetime

from nefos.drivers.base import HostUsage, InstanceCounters
from nefos.monitoring.collector import host_cpu_percent, resource_samples, usage_between
from nefos.monitoring.types import Metric, ResourceKind

TS = datetime(2026, 1, 1, tzinfo=UTC)
GIB = 1024**3


def read(
    at: float, cpu_ns: int, *, cpus: float = 2.0, rx: int = 0, running: bool = True
) -> InstanceCounters:
    return InstanceCounters(
        running=running,
        cpu_time_ns=cpu_ns,
        cpus=cpus,
        memory_bytes=GIB // 2,
        memory_limit_bytes=GIB,
        net_rx_bytes=rx,
        net_tx_bytes=rx // 2,
        disk_read_bytes=0,
        disk_write_bytes=4096,
        read_at=at,
    )


def test_rates_come_from_two_reads() -> None:
    first = read(100.0, 0, rx=1000)
    # 10 s later: 5 CPU-seconds on 2 CPUs is 25 %, 10,000 bytes in is 1,000 B/s.
    usage = usage_between(first, read(110.0, 5_000_000_000, rx=11_000))
    assert usage.cpu_percent == 25.0
    assert usage.rates[Metric.NET_RX_BPS] == 1000.0
    assert usage.rates[Metric.NET_TX_BPS] == 500.0
    assert usage.rates[Metric.DISK_WRITE_BPS] == 0.0
    # A first read, or a restart (counters went down), gives no rates.
    assert usage_between(None, first).cpu_percent is None
    restarted = usage_between(read(110.0, 9_000_000_000, rx=5000), read(120.0, 1000, rx=10))
    assert restarted.cpu_percent is None and Metric.NET_RX_BPS not in restarted.rates
    # More than the CPUs could do (clock jitter) is capped at 100 %.
    assert usage_between(first, read(101.0, 3_000_000_000)).cpu_percent == 100.0


def test_a_containers_replicas_make_one_series() -> None:
    a = usage_between(read(0.0, 0, cpus=1.0), read(10.0, 10_000_000_000, cpus=1.0, rx=100))
    b = usage_between(read(0.0, 0, cpus=3.0), read(10.0, 0, cpus=3.0, rx=300))
    samples = {
        s.metric: s.value
        for s in resource_samples(ResourceKind.CONTAINER, "c-1", "p-1", [a, b], TS)
    }
    assert samples[Metric.CPU_PERCENT] == 25.0  # one busy CPU of four
    assert samples[Metric.MEMORY_BYTES] == GIB
    assert samples[Metric.MEMORY_PERCENT] == 50.0
    assert samples[Metric.NET_RX_BPS] == 40.0
    stopped = usage_between(None, read(10.0, 0, running=False))
    only = resource_samples(ResourceKind.VM, "vm-1", "p-1", [stopped], TS)
    assert [(s.metric, s.value) for s in only] == [(Metric.MEMORY_BYTES, 0.0)]


def test_host_cpu_is_busy_time_over_total_time() -> None:
    before = HostUsage(1_000, 10_000, GIB, 4 * GIB, 0.0)
    after = HostUsage(4_000, 20_000, GIB, 4 * GIB, 1.0)
    assert host_cpu_percent(before, after) == 30.0
    assert host_cpu_percent(None, after) is None
    blind = HostUsage(None, None, GIB, 4 * GIB, 1.0)  # Podman reports memory only
    assert host_cpu_percent(blind, blind) is None
