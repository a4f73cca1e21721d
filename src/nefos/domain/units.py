"""Parsing what clients write for sizes and ports: "1.0", "512m", "10Gi", "8080:80".

Seed 004 writes CPU as a decimal string of cores, memory Docker-style ("512m") and
storage Kubernetes-style ("10Gi"); both styles are accepted for both, as are plain
numbers (memory in MB, storage in GB). Every parser raises ``ValueError`` with a
message fit for a client.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")
_UNITS = {
    "": None,  # the parser's default unit
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "ki": 1024,
    "kib": 1024,
    "m": 1024**2,  # Docker: "512m" is MiB
    "mb": 1000**2,
    "mi": 1024**2,
    "mib": 1024**2,
    "g": 1024**3,
    "gb": 1000**3,
    "gi": 1024**3,
    "gib": 1024**3,
    "t": 1024**4,
    "tb": 1000**4,
    "ti": 1024**4,
    "tib": 1024**4,
}

MIB = 1024**2
GIB = 1024**3


def parse_cpu_milli(value: str | float | int) -> int:
    """Cores as millicores: "1.0" -> 1000, "0.25" -> 250, "500m" -> 500."""
    text = str(value).strip().lower()
    try:
        milli = int(Decimal(text[:-1])) if text.endswith("m") else int(Decimal(text) * 1000)
    except (InvalidOperation, ValueError, OverflowError):  # OverflowError: "Infinity"
        raise ValueError("CPU must be a number of cores such as '0.5' or '2'") from None
    if milli < 10:
        raise ValueError("CPU must be at least 0.01 cores")
    if milli > 1024 * 1000:
        raise ValueError("CPU must be at most 1024 cores")
    return milli


def parse_bytes(value: str | float | int, *, default_unit: int, what: str) -> int:
    m = _SIZE.match(str(value))
    if not m:
        raise ValueError(f"{what} must be a size such as '512m', '1Gi' or '2g'")
    number, unit = Decimal(m.group(1)), m.group(2).lower()
    if unit not in _UNITS:
        raise ValueError(f"{what}: unknown unit {m.group(2)!r}")
    scale = _UNITS[unit] or default_unit
    return int(number * scale)


def parse_memory_mb(value: str | float | int) -> int:
    """Memory in MiB; a bare number is MiB. At least 6 MiB (the engines' floor)."""
    mb = math.ceil(parse_bytes(value, default_unit=MIB, what="Memory") / MIB)
    if mb < 6:
        raise ValueError("Memory must be at least 6m")
    if mb > 16 * 1024 * 1024:
        raise ValueError("Memory must be at most 16Ti")
    return mb


def parse_storage_gb(value: str | float | int) -> int:
    """Storage in GiB, rounded up; a bare number is GiB."""
    gb = math.ceil(parse_bytes(value, default_unit=GIB, what="Storage") / GIB)
    if gb > 1024 * 1024:
        raise ValueError("Storage must be at most 1Pi")
    return gb


@dataclass(frozen=True, slots=True)
class PortMapping:
    container_port: int
    host_port: int | None = None
    host_ip: str | None = None
    protocol: str = "tcp"


_PORT = re.compile(
    r"^(?:(?:(?P<ip>\[[0-9a-fA-F:.]+\]|[0-9.]+):)?(?P<host>\d{1,5})?:)?"
    r"(?P<container>\d{1,5})(?:/(?P<proto>tcp|udp))?$"
)


def parse_port(text: str) -> PortMapping:
    """Docker's short syntax: "80", "8080:80", "127.0.0.1:8080:80", "53/udp", ":80"."""
    m = _PORT.match(text.strip())
    if not m:
        raise ValueError(
            f"Invalid port {text!r}: use 'CONTAINER', 'HOST:CONTAINER' or "
            "'IP:HOST:CONTAINER', with an optional '/tcp' or '/udp'"
        )
    container = int(m.group("container"))
    host = int(m.group("host")) if m.group("host") else None
    for port in (container, host):
        if port is not None and not 1 <= port <= 65535:
            raise ValueError(f"Invalid port {text!r}: ports are 1-65535")
    ip = m.group("ip")
    return PortMapping(
        container_port=container,
        host_port=host,
        host_ip=ip.strip("[]") if ip else None,
        protocol=m.group("proto") or "tcp",
    )


def human_rate(bytes_per_second: float) -> str:
    """1234567 -> '1.2MB/s' (seed 004's ``network_io``)."""
    value = float(bytes_per_second)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f}{unit}/s" if unit == "B" else f"{value:.1f}{unit}/s"
        value /= 1000
    raise AssertionError("unreachable")
