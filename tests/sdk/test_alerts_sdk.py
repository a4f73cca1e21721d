"""The SDK's alert rules, alerts and webhooks against a live server of their own:
loopback webhooks allowed, and a collector pass every second, so that a host that
does not answer raises a real ``host_down`` alert and a ping reaches a real
receiver on 127.0.0.1."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from nefos.monitoring.webhooks import verify_signature
from nefos.schemas.alerts import AlertRulePublic, WebhookCreated
from nefos.sdk import Client, NotFoundError, Page, PermissionDeniedError, ValidationError
from tests.conftest import ADMIN_PASSWORD, PASSWORD, DatabaseFactory, LiveServer, make_settings
from tests.sdk.conftest import unique_email

DEAD_ENGINE = "unix:///nonexistent/nefos-alerts-sdk.sock"
WAIT = 60.0  # seconds to wait for the server's background passes (never asserted on)


@pytest.fixture(scope="module")
def alerts_server(
    databases: DatabaseFactory, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    settings = make_settings(
        databases.new_url(),
        tmp_path_factory.mktemp("alerts-live"),
        webhook_allowed_networks=["127.0.0.0/8"],
        metrics_interval=1.0,
        host_check_interval=1.0,
    )
    with LiveServer(settings) as server:
        yield server


class Hook:
    """A webhook receiver on 127.0.0.1 (a real HTTP server in a thread)."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                outer.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/nefos"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook() -> Iterator[Hook]:
    h = Hook()
    yield h
    h.close()


def user(server: LiveServer) -> Client:
    c = Client(server.url)
    c.auth.register(email=unique_email("alerts"), password=PASSWORD)
    return c


def wait_for(what: str, check: Any) -> Any:
    deadline = time.monotonic() + WAIT
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {WAIT}s")
        time.sleep(0.2)


def test_alert_rules_through_the_sdk(alerts_server: LiveServer) -> None:
    with user(alerts_server) as c, user(alerts_server) as other:
        rule = c.alert_rules.create(
            "cpu hot",
            metric="cpu_percent",
            threshold=90,
            duration_seconds=300,
            severity="critical",
            resource_kind="vm",
        )
        assert isinstance(rule, AlertRulePublic)
        assert (rule.comparison, rule.duration_seconds, rule.enabled) == ("gt", 300, True)
        page = c.alert_rules.list()
        assert isinstance(page, Page) and [r.id for r in page.items] == [rule.id]
        assert c.alert_rules.get(rule.id).name == "cpu hot"
        updated = c.alert_rules.update(rule.id, threshold=80.5, enabled=False)
        assert (updated.threshold, updated.enabled, updated.severity) == (80.5, False, "critical")
        assert c.alert_rules.list(enabled=True).items == []
        with pytest.raises(ValidationError) as bad:
            c.alert_rules.create("x", metric="cpu_percent", threshold=1, comparison="eq")
        assert "comparison" in str(bad.value.details)
        with pytest.raises(NotFoundError):
            other.alert_rules.get(rule.id)
        with pytest.raises(NotFoundError):
            other.alert_rules.delete(rule.id)
        assert c.alert_rules.delete(rule.id).message == "Alert rule deleted"
        with pytest.raises(NotFoundError):
            c.alert_rules.get(rule.id)
        assert c.alerts.list().items == []


def test_a_host_down_alert_and_a_signed_ping(alerts_server: LiveServer, hook: Hook) -> None:
    with (
        Client(alerts_server.url, username="admin", password=ADMIN_PASSWORD) as admin,
        user(alerts_server) as c,
    ):
        host = admin.hosts.register(hostname="alerts-dead", driver="docker", uri=DEAD_ENGINE)
        try:
            assert host.status == "offline"

            def firing() -> Any:
                page = admin.alerts.list(platform=True, resource_id=host.id, status="firing")
                return page.items

            (alert,) = wait_for("host_down alert", firing)
            assert (alert.kind, alert.severity, alert.project_id) == (
                "host_down",
                "critical",
                None,
            )
            assert admin.alerts.get(alert.id).id == alert.id
            with pytest.raises(NotFoundError):
                c.alerts.get(alert.id)
            with pytest.raises(PermissionDeniedError):
                c.alerts.list(platform=True)
        finally:
            admin.hosts.delete(host.id)

        def resolved() -> Any:
            got = admin.alerts.get(alert.id)
            return got if got.status == "resolved" else None

        assert wait_for("host_down resolved", resolved).resolved_at is not None

        created = c.webhooks.create(hook.url, description="ci")
        assert isinstance(created, WebhookCreated) and created.secret.startswith("whsec_")
        assert created.events == ["alert.firing", "alert.resolved"]
        assert [w.id for w in c.webhooks.list().items] == [created.id]
        assert c.webhooks.get(created.id).url == hook.url
        ping = c.webhooks.test(created.id)
        assert ping.event_type == "ping"
        wait_for("the ping", lambda: hook.received)
        headers, body = hook.received[0]
        assert headers["x-nefos-event"] == "ping" and headers["x-nefos-delivery"] == ping.id
        assert verify_signature(created.secret, headers["x-nefos-signature"], body)
        assert json.loads(body)["type"] == "ping"

        def succeeded() -> Any:
            items = c.webhooks.deliveries(created.id, status="succeeded").items
            return items

        (done,) = wait_for("delivery logged", succeeded)
        assert (done.attempts, done.last_status_code) == (1, 204)
        with pytest.raises(ValidationError) as refused:
            c.webhooks.create("http://169.254.169.254/latest/meta-data/")
        assert "link-local" in str(refused.value)
        assert c.webhooks.delete(created.id).message == "Webhook deleted"
        with pytest.raises(NotFoundError):
            c.webhooks.deliveries(created.id)
