"""What the collector, the time-series store and the alert engine share."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Protocol


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
