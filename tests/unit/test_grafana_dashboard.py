"""docs/grafana-dashboard.json asks only for metrics that GET /prometheus serves."""

from __future__ import annotations

import json
import re
from pathlib import Path

from nefos.monitoring.prometheus import HOST_FAMILIES, INSTANCE_FAMILIES

DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "grafana-dashboard.json"
PLATFORM = {
    "nefos_up",
    "nefos_hosts",
    "nefos_containers",
    "nefos_vms",
    "nefos_http_requests_total",
    "nefos_http_errors_total",
    "nefos_http_requests_per_second",
}


def test_the_dashboard_names_only_served_metrics() -> None:
    served = PLATFORM | {f for f, _ in HOST_FAMILIES.values()}
    served |= {f for f, _ in INSTANCE_FAMILIES.values()}
    text = DASHBOARD.read_text()
    dashboard = json.loads(text)
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs += [v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]
    used = {name for e in exprs for name in re.findall(r"\bnefos_[a-z_]+", e)}
    assert used and used <= served, used - served
    # Every instance family has a panel.
    assert {f for f, _ in INSTANCE_FAMILIES.values()} <= used
