"""`nefos api logs|metrics` and `nefos marketplace usage`, and the SDK's
``client.apis.logs|follow|metrics`` and ``client.subscriptions.usage``, against a
live server: calls through the gateway to an API on the test Podman."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import pytest

from nefos.schemas.apis import ApiCallLog
from nefos.schemas.compute import HostPublic
from nefos.sdk import Client
from nefos.sdk._errors import NotFoundError, ValidationError
from tests.cli.conftest import Cli, register
from tests.cli.test_apis_cli import _ok, passing
from tests.conftest import ADMIN_PASSWORD, PASSWORD, TEST_IMAGE, LiveServer
from tests.sdk.test_compute_sdk import ensure_podman_host, unique, unregister_podman_host


@pytest.fixture(scope="module")
def podman_teardown(live_server: LiveServer) -> Iterator[None]:
    yield
    unregister_podman_host(live_server)


@pytest.fixture
def podman(live_server: LiveServer, podman_teardown: None) -> HostPublic:
    with Client(live_server.url, username="admin", password=ADMIN_PASSWORD) as admin:
        return ensure_podman_host(admin)


def test_call_log_figures_and_usage_through_the_cli_and_the_sdk(
    cli: Cli, make_cli, user: str, podman: HostPublic
) -> None:
    # The CLI's user is the creator; a consumer subscribes through the SDK.
    with Client(cli.url, email=user, password=PASSWORD) as creator:
        made = creator.apis.deploy(
            unique("api"), image=TEST_IMAGE, port=8080, health_check_path="/index.html"
        )
        creator.operations.wait(made)
        passing(creator, made.api.container_id or "", 1)
        listed = creator.marketplace.publish(
            made.api_id,
            title="Tide Tables",
            category="weather",
            plans=[{"name": "Small", "model": "free", "included_calls": 4}],
        )
    consumer_email = register(cli.url)
    consumer_cli = make_cli()
    consumer_cli.login(consumer_email)
    with Client(cli.url, email=consumer_email, password=PASSWORD) as consumer:
        got = consumer.subscriptions.subscribe(listed.id, listed.plans[0].id)
        key, sid = got.key.key, got.subscription.id
        org = got.subscription.organisation_id
    gw = f"{cli.url}/gw/{listed.slug}"
    started = datetime.now(UTC)
    with httpx.Client(timeout=30) as http:
        for n in range(2):
            r = http.get(f"{gw}/index.html", headers={"X-API-Key": key, "X-Request-ID": f"c-{n}"})
            assert r.status_code == 200, r.text
        assert http.get(f"{gw}/nope.html", headers={"X-API-Key": key}).status_code == 404

    # The creator's call log and figures.
    table = _ok(cli("api", "logs", made.api_id, "--source", "gateway"))
    assert "/nope.html" in table and "c-1" in table and org in table
    only = cli.json("api", "logs", made.api_id, "--source", "gateway", "--status", "4xx")
    assert [c["path"] for c in only["items"]] == ["/nope.html"]
    figures = cli.json("api", "metrics", made.api_id)["calls"]
    assert (figures["calls"], figures["client_errors"], figures["errors"]) == (3, 1, 0)
    text = _ok(cli("api", "metrics", made.api_id))
    assert "Calls" in text and "/index.html" in text and "cpu" in text
    with Client(cli.url, email=user, password=PASSWORD) as creator:
        page = creator.apis.logs(made.api_id, source="gateway", consumer=org, limit=2)
        assert [c.request_id for c in page.items[1:]] == ["c-1"]
        assert page.pagination is not None and page.pagination.next_cursor
        rest = creator.apis.logs(
            made.api_id, source="gateway", consumer=org, cursor=page.pagination.next_cursor
        )
        assert [c.request_id for c in rest.items] == ["c-0"]
        assert creator.apis.metrics(made.api_id, period="24h")["calls"]["calls"] == 3
        with pytest.raises(ValidationError):
            creator.apis.logs(made.api_id, status="999")

        # Following: a call made while the SDK follows the log arrives.
        seen: list[ApiCallLog] = []

        def follow() -> None:
            for call in creator.apis.follow(made.api_id, seconds=120, since=started):
                seen.append(call)
                if call.request_id == "followed":
                    return

        reader = threading.Thread(target=follow)
        reader.start()
        with httpx.Client(timeout=30) as http:
            r = http.get(f"{gw}/index.html", headers={"X-API-Key": key, "X-Request-ID": "followed"})
            assert r.status_code == 200
        reader.join(150)  # a deadline, not a measure
        assert not reader.is_alive()
        assert [c.request_id for c in seen][-1] == "followed" and len(seen) == 4

        # The replicas' output since the calls began (httpd said a line per request),
        # followed for two seconds, with each line's replica and time.
        output = list(creator.apis.follow_output(made.api_id, seconds=2, since=started))
        assert any("response:200" in o.line for o in output), output
        assert all(
            o.replica == 0 and o.time >= started.strftime("%Y-%m-%dT%H:%M:%S") for o in output
        )
    printed = _ok(
        cli(
            "api",
            "logs",
            made.api_id,
            "--source",
            "container",
            "--follow",
            "--seconds",
            "2",
            "--since",
            started.isoformat(),
        )
    )
    assert "[replica 0] " in printed and "response:200" in printed
    stamped = _ok(cli("api", "logs", made.api_id, "--source", "container", "--timestamps"))
    assert f"[replica 0] {started:%Y-%m-%d}T" in stamped

    # The consumer's usage: 4 of 4 calls, every alert told; the creator's log is not
    # the consumer's to read.
    shown = _ok(consumer_cli("marketplace", "usage", sid))
    assert "4 of 4 units" in shown and "in 4 calls" in shown and "50 %, 80 %, 100 %" in shown
    usage = consumer_cli.json("marketplace", "usage", sid)
    assert (usage["calls"], usage["remaining"], usage["alerts"]) == (4, 0, [50, 80, 100])
    with Client(cli.url, email=consumer_email, password=PASSWORD) as consumer:
        assert consumer.subscriptions.usage(sid).percent_used == 100.0
        with pytest.raises(NotFoundError):
            consumer.apis.logs(made.api_id)
        with pytest.raises(NotFoundError):
            next(iter(consumer.apis.follow(made.api_id, seconds=1)))
    denied = consumer_cli("api", "metrics", made.api_id)
    assert denied.exit_code == 1 and "NOT_FOUND" in denied.stderr

    with Client(cli.url, email=user, password=PASSWORD) as creator:
        creator.operations.wait(creator.apis.delete(made.api_id))
