"""The Prometheus text exposition format (0.0.4) and Nefos's metric families.

``GET /prometheus`` (``nefos.services.metrics``) writes the platform's counts and
the latest sample of each host and instance with these names;
``docs/grafana-dashboard.json`` reads them.
"""

from __future__ import annotations

from nefos.monitoring.types import Metric

HOST_FAMILIES: dict[str, tuple[str, str]] = {
    Metric.CPU_PERCENT: ("nefos_host_cpu_percent", "Host CPU busy, % of all its cores."),
    Metric.MEMORY_PERCENT: ("nefos_host_memory_percent", "Host memory in use, %."),
    Metric.MEMORY_BYTES: ("nefos_host_memory_bytes", "Host memory in use, bytes."),
}
INSTANCE_FAMILIES: dict[str, tuple[str, str]] = {
    Metric.CPU_PERCENT: ("nefos_instance_cpu_percent", "Instance CPU busy, % of its own CPUs."),
    Metric.MEMORY_PERCENT: ("nefos_instance_memory_percent", "Instance memory, % of its limit."),
    Metric.MEMORY_BYTES: ("nefos_instance_memory_bytes", "Instance memory in use, bytes."),
    Metric.NET_RX_BPS: (
        "nefos_instance_network_receive_bytes_per_second",
        "Instance network bytes received per second.",
    ),
    Metric.NET_TX_BPS: (
        "nefos_instance_network_transmit_bytes_per_second",
        "Instance network bytes sent per second.",
    ),
    Metric.DISK_READ_BPS: (
        "nefos_instance_disk_read_bytes_per_second",
        "Instance disk bytes read per second.",
    ),
    Metric.DISK_WRITE_BPS: (
        "nefos_instance_disk_write_bytes_per_second",
        "Instance disk bytes written per second.",
    ),
}


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class Exposition:
    """Prometheus text format 0.0.4, one family at a time."""

    def __init__(self) -> None:
        self._lines: list[str] = []

    def metric(self, name: str, kind: str, help_text: str) -> None:
        self._lines.append(f"# HELP {name} {help_text}")
        self._lines.append(f"# TYPE {name} {kind}")

    def sample(self, name: str, labels: dict[str, str], value: float) -> None:
        if labels:
            inner = ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items())
            name = f"{name}{{{inner}}}"
        self._lines.append(f"{name} {float(value):.17g}")

    def text(self) -> str:
        return "\n".join(self._lines) + "\n"
