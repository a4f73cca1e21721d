"""`nefos alert-rule|alert|webhook ...` against a live server (the SDK tests' own:
loopback webhooks allowed, a collector pass every second)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from nefos.monitoring.webhooks import verify_signature
from nefos.sdk import Client
from tests.cli.conftest import Cli, no_traceback, ok
from tests.conftest import PASSWORD, LiveServer
from tests.sdk.test_alerts_sdk import Hook, alerts_server

__all__ = ["alerts_server"]  # the fixture, shared with the SDK tests


@pytest.fixture
def cli(alerts_server: LiveServer, tmp_path: Path) -> Cli:
    c = Cli(config=tmp_path / uuid.uuid4().hex[:8] / "config.json", url=alerts_server.url)
    email = f"cli-alerts-{uuid.uuid4().hex[:10]}@example.com"
    with Client(alerts_server.url) as sdk:
        sdk.auth.register(email=email, password=PASSWORD)
    c.login(email)
    return c


@pytest.fixture
def hook() -> Iterator[Hook]:
    h = Hook()
    yield h
    h.close()


def test_alert_rules_and_alerts_through_the_cli(cli: Cli) -> None:
    rule = cli.json(
        "alert-rule", "create", "cpu-hot", "--metric", "cpu_percent", "--threshold", "90",
        "--for", "300", "--severity", "critical", "--kind", "container",
    )  # fmt: skip
    assert (rule["metric"], rule["threshold"], rule["duration_seconds"]) == (
        "cpu_percent",
        90.0,
        300,
    )
    assert rule["resource_kind"] == "container" and rule["enabled"] is True
    table = ok(cli("alert-rule", "list"))
    assert rule["id"] in table and "cpu_percent gt 90" in table and "300s" in table
    assert "critical" in ok(cli("alert-rule", "show", rule["id"]))
    updated = cli.json("alert-rule", "update", rule["id"], "--threshold", "75", "--disable")
    assert (updated["threshold"], updated["enabled"]) == (75.0, False)
    bad = cli("alert-rule", "create", "x", "--metric", "nope", "--threshold", "1")
    assert bad.exit_code == 1 and "VALIDATION_ERROR" in bad.stderr
    no_traceback(bad)
    listed = cli.json("alert", "list", "--status", "open")
    assert listed["items"] == [] and listed["pagination"]["total"] == 0
    assert "No alerts." in ok(cli("alert", "list"))
    missing = cli("alert", "show", str(uuid.uuid4()))
    assert missing.exit_code == 1 and "NOT_FOUND" in missing.stderr
    platform = cli("alert", "list", "--platform", "--json")
    assert platform.exit_code == 1 and json.loads(platform.stderr)["error"]["code"] == "FORBIDDEN"
    assert "Alert rule deleted" in ok(cli("alert-rule", "rm", rule["id"], "--yes"))
    assert cli.json("alert-rule", "list")["items"] == []


def test_webhooks_through_the_cli(cli: Cli, hook: Hook) -> None:
    out = ok(cli("webhook", "create", hook.url, "--event", "alert.firing"))
    assert "whsec_" in out and "not shown again" in out
    (listed,) = cli.json("webhook", "list")["items"]
    assert listed["url"] == hook.url and listed["events"] == ["alert.firing"]
    assert "secret" not in listed
    hook_id = listed["id"]
    assert hook.url in ok(cli("webhook", "show", hook_id))
    pinged = ok(cli("webhook", "test", hook_id))
    assert "Ping queued" in pinged and f"nefos webhook deliveries {hook_id}" in pinged
    deadline = time.monotonic() + 60
    while not hook.received:
        assert time.monotonic() < deadline, "the ping did not arrive"
        time.sleep(0.2)
    headers, body = hook.received[0]
    assert headers["x-nefos-event"] == "ping" and "v1=" in headers["x-nefos-signature"]
    while True:
        (delivery,) = cli.json("webhook", "deliveries", hook_id)["items"]
        if delivery["status"] != "pending":
            break
        assert time.monotonic() < deadline, delivery
        time.sleep(0.2)
    assert (delivery["status"], delivery["last_status_code"]) == ("succeeded", 204)
    assert "succeeded" in ok(cli("webhook", "deliveries", hook_id))
    refused = cli("webhook", "create", "http://10.0.0.1/hook")
    assert refused.exit_code == 1 and "private" in refused.stderr
    no_traceback(refused)
    assert "Webhook deleted" in ok(cli("webhook", "rm", hook_id, "--yes"))
    assert "No webhooks." in ok(cli("webhook", "list"))
    assert not verify_signature("whsec_wrong", headers["x-nefos-signature"], body)
