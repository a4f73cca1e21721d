"""Metric values in alert messages: one number, in the metric's own unit."""

from __future__ import annotations

import pytest

from nefos.monitoring.types import Metric, format_metric


@pytest.mark.parametrize(
    ("metric", "value", "text"),
    [
        (Metric.MEMORY_BYTES, 2256896, "2.2 MiB"),
        (Metric.MEMORY_BYTES, 512, "512 B"),
        (Metric.MEMORY_BYTES, 3 * 1024**3, "3.0 GiB"),
        (Metric.CPU_PERCENT, 85.29, "85.3 %"),
        (Metric.MEMORY_PERCENT, 100, "100.0 %"),
        (Metric.NET_RX_BPS, 1536, "1.5 KiB/s"),
        (Metric.DISK_WRITE_BPS, 0, "0 B/s"),
        ("something_else", 2404350.0, "2404350"),
        ("something_else", 0.25, "0.25"),
    ],
)
def test_a_metric_value_reads_in_its_unit(metric: str, value: float, text: str) -> None:
    assert format_metric(metric, value) == text


def test_no_float_notation_for_any_size() -> None:
    for value in (0.5, 7, 2.40435e06, 9.9e12, 1e18):
        for metric in Metric:
            assert "e+" not in format_metric(metric, value)
