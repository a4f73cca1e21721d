"""Metric series as a terminal table: one row a metric, with a sparkline."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rich.table import Table

from nefos.cli._common import stdout

BARS = "▁▂▃▄▅▆▇█"
#: How many cells a sparkline takes at most; longer series are averaged down.
WIDTH = 40


def sparkline(values: Sequence[float], width: int = WIDTH) -> str:
    """``values`` as block characters, lowest ▁ to highest █ (all ▁ when flat);
    more values than ``width`` are averaged into ``width`` cells."""
    if not values:
        return ""
    if len(values) > width:
        step = len(values) / width
        values = [
            sum(chunk) / len(chunk)
            for i in range(width)
            if (chunk := values[int(i * step) : max(int((i + 1) * step), int(i * step) + 1)])
        ]
    low, high = min(values), max(values)
    if high <= low:
        return BARS[0] * len(values)
    top = len(BARS) - 1
    return "".join(BARS[round((v - low) / (high - low) * top)] for v in values)


def human(metric: str, value: float) -> str:
    if metric.endswith("_percent") or metric in ("cpu", "memory"):
        return f"{value:.1f}%"
    if metric.endswith("_bps"):
        return _bytes(value) + "/s"
    if metric.endswith("_bytes"):
        return _bytes(value)
    return f"{value:g}"


def _bytes(value: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    raise AssertionError("unreachable")


def series_table(series: Mapping[str, Sequence[float]], *, title: str | None = None) -> None:
    """Print METRIC, LAST, MIN, AVG, MAX and a TREND sparkline for each series."""
    table = Table(title=title)
    for header in ("METRIC", "LAST", "MIN", "AVG", "MAX", "POINTS"):
        table.add_column(header, no_wrap=True, justify="left" if header == "METRIC" else "right")
    table.add_column("TREND", no_wrap=True)
    for metric, values in series.items():
        if not values:
            table.add_row(metric, "-", "-", "-", "-", "0", "")
            continue
        table.add_row(
            metric,
            human(metric, values[-1]),
            human(metric, min(values)),
            human(metric, sum(values) / len(values)),
            human(metric, max(values)),
            str(len(values)),
            sparkline(values),
        )
    stdout().print(table)


def values_of(points: Sequence[Any]) -> list[float]:
    return [float(p.value) for p in points]


def usage_cpu(item: Any) -> str:
    """A listed VM's or container's CPU from its ``usage`` (the collector's last pass)."""
    usage = getattr(item, "usage", None)
    return "-" if usage is None else f"{usage.cpu_usage:.1f}%"


def usage_memory(item: Any) -> str:
    usage = getattr(item, "usage", None)
    return "-" if usage is None else f"{_bytes(usage.memory_bytes)} ({usage.memory_usage:.0f}%)"
