"""What the collector, the time-series store and the alert engine share."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol

from nefos.domain.units import human_rate


class ResourceKind(StrEnum):
    HOST = "host"
    VM = "vm"
    CONTAINER = "container"


class Metric(StrEnum):
    """Metric names, as stored and as alert rules name them. Rates are per second."""

    CPU_PERCENT = "cpu_percent"  # of the resource's own CPUs (a host: of all its cores)
    MEMORY_PERCENT = "memory_percent"  # of its memory limit (a host: of its memory)
    MEMORY_BYTES = "memory_bytes"
    NET_RX_BPS = "net_rx_bps"  # network bytes in per second
    NET_TX_BPS = "net_tx_bps"  # network bytes out per second
    DISK_READ_BPS = "disk_read_bps"
    DISK_WRITE_BPS = "disk_write_bps"


def usage_figures(values: Mapping[str, float]) -> dict[str, Any]:
    """One pass's samples of a VM or a container as seed 004's ``metrics_update``
    figures (usage in %, network as a rate string) and the raw numbers: what the
    event carries and what lists show as ``usage``."""
    network = values.get(Metric.NET_RX_BPS, 0.0) + values.get(Metric.NET_TX_BPS, 0.0)
    return {
        "cpu_usage": round(values.get(Metric.CPU_PERCENT, 0.0), 2),
        "memory_usage": round(values.get(Metric.MEMORY_PERCENT, 0.0), 2),
        "network_io": human_rate(network),
        "memory_bytes": int(values.get(Metric.MEMORY_BYTES, 0)),
        "net_rx_bps": round(values.get(Metric.NET_RX_BPS, 0.0), 1),
        "net_tx_bps": round(values.get(Metric.NET_TX_BPS, 0.0), 1),
    }


#: Metrics in bytes (rates: bytes per second); the rest of Metric are percents.
_BYTES = {Metric.MEMORY_BYTES}
_BYTE_RATES = {Metric.NET_RX_BPS, Metric.NET_TX_BPS, Metric.DISK_READ_BPS, Metric.DISK_WRITE_BPS}
_PERCENTS = {Metric.CPU_PERCENT, Metric.MEMORY_PERCENT}


def _binary(value: float) -> str:
    """Bytes with an IEC unit: 512 -> '512 B', 2256896 -> '2.2 MiB'."""
    if abs(value) < 1024:
        return f"{value:.0f} B"
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        value /= 1024
        if abs(value) < 1024 or unit == "PiB":
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")


def format_metric(metric: str, value: float) -> str:
    """A value of ``metric`` as people read it, in the metric's unit: bytes as
    '2.2 MiB', rates as '1.5 KiB/s', percents as '85.3 %'. An unknown metric gets
    the plain number (never float notation such as '2.40435e+06')."""
    if metric in _BYTES:
        return _binary(value)
    if metric in _BYTE_RATES:
        return f"{_binary(value)}/s"
    if metric in _PERCENTS:
        return f"{value:.1f} %"
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.6f}".rstrip("0")


@dataclass(frozen=True, slots=True)
class Sample:
    """One measured value of one metric of one resource at one time (UTC)."""

    kind: ResourceKind
    resource_id: str
    metric: Metric
    value: float
    ts: datetime
    project_id: str | None = None  # None for hosts


class SampleListener(Protocol):
    """Called by the collector after each pass with every sample it stored."""

    async def on_samples(self, samples: Sequence[Sample]) -> None: ...
