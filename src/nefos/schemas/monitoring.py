"""Wire types of metrics: series, summaries (seeds 003, 004)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class SeriesPoint(BaseModel):
    timestamp: str = Field(description="ISO 8601 UTC: a sample's time, or a bucket's start.")
    value: float = Field(description="The sample, or the bucket's average (1m and 1h).")
    max: float | None = Field(
        None, description="The bucket's highest sample (1m and 1h resolutions only)."
    )


class NetworkPoint(BaseModel):
    timestamp: str
    bytes_in: int = Field(description="Bytes received per second.")
    bytes_out: int = Field(description="Bytes sent per second.")


class UsageNow(BaseModel):
    """A VM's or a container's figures from the collector's last pass (as its
    ``metrics_update``)."""

    cpu_usage: float = Field(description="% of its CPU (a VM's vCPUs, a container's limit).")
    memory_usage: float = Field(description="% of its memory (a container's: of its limit).")
    memory_bytes: int
    network_io: str = Field(examples=["1.2MB/s"], description="In and out, per second.")
    net_rx_bps: float = Field(description="Network bytes in per second.")
    net_tx_bps: float = Field(description="Network bytes out per second.")
    sampled_at: str = Field(description="ISO 8601 UTC: the pass's time.")


class _Series(BaseModel):
    hours: int
    start: str
    end: str
    resolution: str = Field(description="raw, 1m or 1h: the finest that fits the range.")
    step_seconds: float
    metrics: dict[str, list[SeriesPoint]] = Field(
        description="By metric name (cpu_percent, memory_percent, memory_bytes, net_rx_bps, "
        "net_tx_bps, disk_read_bps, disk_write_bps)."
    )


class VmMetrics(_Series):
    vm_id: str


class HostMetrics(_Series):
    host_id: str
    hostname: str


class ContainerMetricSeries(BaseModel):
    cpu: list[SeriesPoint] = Field(description="% of the container's CPU limit.")
    memory: list[SeriesPoint] = Field(description="% of its memory limit.")
    network: list[NetworkPoint]


class ContainerMetrics(BaseModel):
    container_id: str
    period: str
    resolution: str
    step_seconds: float
    metrics: ContainerMetricSeries


class CountByStatus(BaseModel):
    total: int
    running: int | None = None
    by_status: dict[str, int]


class NetworkNow(BaseModel):
    rx_bps: float
    tx_bps: float
    total: str = Field(description="rx + tx as a rate string, e.g. 5.2MB/s.")


class SystemMetrics(BaseModel):
    hosts: CountByStatus
    containers: CountByStatus
    vms: CountByStatus
    cpu_usage: float | None = Field(description="Hosts' mean CPU busy %, latest pass.")
    memory_usage: float | None = Field(description="Hosts' mean memory use %, latest pass.")
    memory_used_bytes: int
    network: NetworkNow
    timestamp: str


class SystemSummary(BaseModel):
    total_containers: int
    running_containers: int
    total_vms: int
    running_vms: int
    total_cpu_usage: float
    total_memory_usage: float
    total_network_io: str


class RequestSummary(BaseModel):
    total_requests: int
    requests_per_second: float
    error_rate: float = Field(description="5xx responses, % of all requests.")


class MetricsSummary(BaseModel):
    system: SystemSummary
    requests: RequestSummary
