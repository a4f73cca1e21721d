"""`nefos api ...` and the SDK's ``client.apis`` against a live server: an API
deployed on the test Podman, checked, scaled, followed and removed."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from nefos.schemas.apis import ApiAccepted
from nefos.schemas.compute import HostPublic
from nefos.sdk import Client
from nefos.sdk._errors import (
    ConflictError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    ValidationError,
)
from tests.cli.conftest import Cli, register
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


def _ok(result) -> str:
    assert result.exit_code == 0, (result.stdout, result.stderr)
    assert "Traceback" not in result.stdout + result.stderr
    return str(result.stdout)


def passing(sdk: Client, service_id: str, count: int, within: float = 60) -> None:
    deadline = time.monotonic() + within
    while sdk.services.get(service_id).passing < count:
        assert time.monotonic() < deadline, f"{count} replicas not passing in {within}s"
        time.sleep(0.2)


def test_api_deploy_show_update_logs_and_rm(
    cli: Cli, user: str, podman: HostPublic, tmp_path: Path
) -> None:
    name = unique("api")
    spec = tmp_path / "openapi.json"
    spec.write_text(json.dumps({"openapi": "3.1.0", "info": {"title": "t", "version": "1"}}))
    deployed = cli.json(
        "api", "deploy", name, "--image", TEST_IMAGE, "--port", "8080",
        "--health-path", "/index.html", "--cpu", "0.1", "--memory", "32m",
        "--env", "MODE=prod", "--openapi-file", str(spec), "--wait",
        "--units", "POST /v1/translate=5", "--units", "/v1/*=2", "--units-header", "X-Units",
    )  # fmt: skip
    api_id = deployed["api_id"]
    assert deployed["api"]["units"] == [
        {"method": "POST", "path": "/v1/translate", "units": 5},
        {"method": "*", "path": "/v1/*", "units": 2},
    ]
    assert deployed["api"]["units_header"] == "X-Units"
    assert deployed["operation"]["status"] == "succeeded"
    assert deployed["api"]["status"] == "running" and deployed["api"]["has_openapi"] is True
    assert deployed["deployment"]["environment_keys"] == ["MODE"]
    table = _ok(cli("api", "list"))
    assert name in table and "#1" in table

    with Client(cli.url, email=user, password=PASSWORD) as sdk:
        passing(sdk, deployed["api"]["container_id"], 1)
        shown = _ok(cli("api", "show", api_id))
        assert "passing" in shown and "/index.html" in shown
        assert "POST /v1/translate=5, * /v1/*=2" in shown and "header X-Units" in shown
        # --units replaces the list; --no-units and --units-header '' clear them.
        changed = cli.json("api", "update", api_id, "--units", "GET /a=3")
        assert changed["api"]["units"] == [{"method": "GET", "path": "/a", "units": 3}]
        assert changed["api"]["units_header"] == "X-Units" and changed["operation"] is None
        cleared = cli.json("api", "update", api_id, "--no-units", "--units-header", "")
        assert cleared["api"]["units"] == [] and cleared["api"]["units_header"] is None
        bad = cli("api", "update", api_id, "--units", "GET /a")
        assert bad.exit_code == 2 and "--units" in bad.stderr
        bad = cli("api", "update", api_id, "--units", "GET /a=0")
        assert bad.exit_code == 1 and "VALIDATION_ERROR" in bad.stderr
        back = sdk.apis.update(
            api_id, units=[{"method": "*", "path": "/*", "units": 4}], units_header="X-Cost"
        )
        assert [(r.method, r.path, r.units) for r in back.api.units] == [("*", "/*", 4)]
        assert sdk.apis.get(api_id).units_header == "X-Cost"
        scaled = cli.json("api", "update", api_id, "--replicas", "2", "--wait")
        assert scaled["deployment"]["number"] == 2 and scaled["api"]["replicas"] == 2
        deployments = [(d.number, d.status) for d in sdk.apis.deployments(api_id)]
        assert deployments == [(2, "active"), (1, "succeeded")]
        assert "active" in _ok(cli("api", "deployments", api_id))
        assert sdk.apis.openapi(api_id)["openapi"] == "3.1.0"

        # The SDK: the same API, its errors typed.
        got = sdk.apis.get(api_id)
        assert got.name == name and got.replicas == 2
        changed = sdk.apis.update(api_id, description="Forecasts")
        assert isinstance(changed, ApiAccepted) and changed.operation is None
        assert sdk.apis.get(api_id).description == "Forecasts"
        with pytest.raises(ConflictError):
            sdk.apis.deploy(name, image=TEST_IMAGE, port=8080)
        with pytest.raises(ValidationError):
            sdk.apis.deploy(unique("api"), image=TEST_IMAGE, port=8080, health_check_path="x")
        with pytest.raises(NotFoundError):
            sdk.apis.get("00000000-0000-0000-0000-000000000000")
        passing(sdk, deployed["api"]["container_id"], 2)
        assert "response:200" in sdk.apis.logs(api_id, tail=20).logs
        # A new environment is deployment 3 (rolled out); rollback is deployment 4.
        rolled = cli.json("api", "update", api_id, "--env", "MODE=v2", "--wait")
        assert rolled["deployment"]["number"] == 3
        assert rolled["operation"]["kind"] == "container.update"
        back = cli.json("api", "rollback", api_id, "--wait")
        assert back["deployment"]["number"] == 4 and back["deployment"]["rollback_of"]
        assert [d.status for d in sdk.apis.deployments(api_id)][:2] == ["active", "succeeded"]
        assert "cpu" in _ok(cli("api", "metrics", api_id))

    bad = cli("api", "deploy", unique("api"), "--image", TEST_IMAGE, "--port", "8080",
              "--openapi-file", str(tmp_path / "missing.json"))  # fmt: skip
    assert bad.exit_code == 2 and "--openapi-file" in bad.stderr
    assert f"API {api_id} deleted" in _ok(cli("api", "rm", api_id, "--yes", "--wait"))
    gone = cli("api", "show", api_id)
    assert gone.exit_code == 1 and "NOT_FOUND" in gone.stderr


def test_marketplace_publish_search_show_and_unpublish(
    cli: Cli, make_cli, user: str, podman: HostPublic
) -> None:
    with Client(cli.url, email=user, password=PASSWORD) as sdk:
        made = sdk.apis.deploy(unique("api"), image=TEST_IMAGE, port=8080, health_check_path="/")
    word = unique("zephyr").replace("-", "")  # a word no other listing has
    plan = '{"name":"Basic","model":"freemium","included_calls":1000,"price_per_call":"0.001"}'
    published = cli.json(
        "marketplace", "publish", made.api_id, "--title", "Wind Speeds",
        "--category", "weather", "--plan", plan, "--plan", '{"name":"Free","model":"free"}',
        "--summary", f"Gusts and {word} alerts", "--tag", "wind",
    )  # fmt: skip
    listing_id = published["id"]
    assert [p["key"] for p in published["plans"]] == ["basic", "free"]
    bad = cli("marketplace", "publish", made.api_id, "--title", "x", "--category", "w")
    assert bad.exit_code == 2 and "--plan" in bad.stderr

    # Anyone finds it, without logging in (NEFOS_URL names the server).
    stranger = make_cli()
    found = stranger.json("marketplace", "search", word, NEFOS_URL=cli.url)
    assert [i["id"] for i in found["items"]] == [listing_id]
    table = _ok(stranger("marketplace", "search", word, NEFOS_URL=cli.url))
    assert "Wind Speeds" in table and "freemium" in table
    shown = _ok(stranger("marketplace", "show", listing_id, NEFOS_URL=cli.url))
    assert "1,000 free, then 0.001" in shown and "/gw/" in shown
    with Client(cli.url) as anonymous:
        assert anonymous.marketplace.get(listing_id).title == "Wind Speeds"
        assert [i.id for i in anonymous.marketplace.search(word).items] == [listing_id]

    changed = cli.json("marketplace", "update", listing_id, "--unpublish")
    assert changed["status"] == "unpublished"
    assert stranger.json("marketplace", "search", word, NEFOS_URL=cli.url)["items"] == []
    gone = stranger("marketplace", "show", listing_id, NEFOS_URL=cli.url)
    assert gone.exit_code == 1 and "NOT_FOUND" in gone.stderr
    with Client(cli.url, email=user, password=PASSWORD) as sdk:
        sdk.operations.wait(made)
        sdk.operations.wait(sdk.apis.delete(made.api_id))


def test_marketplace_subscribe_keys_rotate_revoke_and_cancel(
    cli: Cli, make_cli, user: str, podman: HostPublic
) -> None:
    # A creator publishes (through the SDK); the CLI's user subscribes.
    creator_email = register(cli.url)
    with Client(cli.url, email=creator_email, password=PASSWORD) as creator:
        made = creator.apis.deploy(unique("api"), image=TEST_IMAGE, port=8080)
        listed = creator.marketplace.publish(
            made.api_id,
            title="Tide Tables",
            category="weather",
            plans=[
                {"name": "Basic", "model": "freemium", "included_calls": 100,
                 "price_per_call": "0.001"},
                {"name": "Free", "model": "free"},
                {"name": "Pro", "model": "monthly", "monthly_price": "3",
                 "included_calls": 1000},
                {"name": "Big", "model": "monthly", "monthly_price": "50",
                 "included_calls": 1000},
            ],
        )  # fmt: skip
    basic, free, pro, big = (
        next(p for p in listed.plans if p.key == k) for k in ("basic", "free", "pro", "big")
    )

    result = cli("marketplace", "subscribe", listed.id, "--plan", basic.id)
    out = _ok(result)
    assert "Tide Tables" in out and "nfc_" in out
    assert "only time the key is shown" in result.stderr
    key = next(w for w in out.split() if w.startswith("nfc_"))
    subs = cli.json("marketplace", "subscriptions")
    (sub,) = subs["items"]
    assert sub["listing_id"] == listed.id and sub["plan"]["id"] == basic.id
    again = cli("marketplace", "subscribe", listed.id, "--plan", free.id)
    assert again.exit_code == 1 and "CONFLICT" in again.stderr
    table = _ok(cli("marketplace", "keys", sub["id"]))
    assert key[:10] in table and key not in table

    rotated = cli.json("marketplace", "key-create", sub["id"], "--rotate", "--overlap", "30m")
    assert rotated["key"].startswith("nfc_")
    bad = cli("marketplace", "key-create", sub["id"], "--rotate", "--overlap", "8d")
    assert bad.exit_code == 2 and "7d" in bad.stderr
    with Client(cli.url, email=user, password=PASSWORD) as sdk:
        keys = {k.id: k for k in sdk.subscriptions.get(sub["id"]).keys}
        assert len(keys) == 2 and keys[rotated["id"]].expires_at is None
        (old,) = [k for k in keys.values() if k.id != rotated["id"]]
        assert old.expires_at is not None
        assert "revoked" in _ok(cli("marketplace", "key-revoke", sub["id"], old.id))
        assert sdk.subscriptions.get(sub["id"]).keys[-1].revoked_at is not None
        # The SDK: the rest of the calls, their errors typed.
        made_key = sdk.subscriptions.create_key(sub["id"], name="sdk")
        assert made_key.key.startswith("nfc_") and made_key.name == "sdk"
        assert sdk.subscriptions.revoke_key(sub["id"], made_key.id).revoked_at is not None
        changed = sdk.subscriptions.change_plan(sub["id"], free.id)
        assert (
            changed.plan.id == free.id
            and changed.period_end == sdk.subscriptions.get(sub["id"]).period_end
        )
        assert [s.id for s in sdk.subscriptions.list(status="active").items] == [sub["id"]]
        with pytest.raises(NotFoundError):
            sdk.subscriptions.get("00000000-0000-0000-0000-000000000000")
        with pytest.raises(ValidationError):
            sdk.subscriptions.change_plan(sub["id"], "00000000-0000-0000-0000-000000000000")
    # A free plan ends at once.
    assert "cancelled" in _ok(cli("marketplace", "cancel", sub["id"]))
    assert (
        cli.json("marketplace", "subscriptions", "--status", "cancelled")["items"][0]["id"]
        == sub["id"]
    )
    # Another user sees none of it.
    stranger = make_cli()
    stranger.login(register(cli.url))
    assert stranger.json("marketplace", "subscriptions")["items"] == []
    gone = stranger("marketplace", "keys", sub["id"])
    assert gone.exit_code == 1 and "NOT_FOUND" in gone.stderr
    with Client(cli.url, email=user, password=PASSWORD) as sdk:
        resub = sdk.subscriptions.subscribe(listed.id, basic.id)
        assert resub.key.key.startswith("nfc_")
        # A monthly plan: its fee paid now, its next charge shown; a fee the wallet
        # cannot pay is a 402 RESOURCE_EXHAUSTED.
        with pytest.raises(ResourceExhaustedError) as refused:
            sdk.subscriptions.change_plan(resub.subscription.id, big.id)
        assert refused.value.code == "RESOURCE_EXHAUSTED"
        rid = resub.subscription.id
        shown = _ok(cli("marketplace", "change-plan", rid, "--plan", pro.id))
        renews = sdk.subscriptions.get(rid)
        assert renews.next_charge is not None and renews.next_charge.amount == "3.00"
        when = f"{renews.period_end:%Y-%m-%d}"
        assert f"next charge 3.00 USD on {when}" in shown
        table = _ok(cli("marketplace", "subscriptions", "--status", "active"))
        assert "NEXT CHARGE" in table and f"3.00 USD on {when}" in table
        ends = sdk.subscriptions.cancel(resub.subscription.id)
        assert ends.status == "active" and ends.cancel_at_period_end is True
    with Client(cli.url, email=creator_email, password=PASSWORD) as creator:
        creator.operations.wait(made)
        creator.operations.wait(creator.apis.delete(made.api_id))


def test_marketplace_review_reviews_reply_and_rating_sort(
    cli: Cli, make_cli, user: str, podman: HostPublic
) -> None:
    # A creator publishes a serving API (through the SDK); the CLI's user subscribes.
    creator_email = register(cli.url)
    with Client(cli.url, email=creator_email, password=PASSWORD) as creator:
        made = creator.apis.deploy(
            unique("api"), image=TEST_IMAGE, port=8080, health_check_path="/index.html"
        )
        creator.operations.wait(made)
        passing(creator, made.api.container_id, 1)
        listed = creator.marketplace.publish(
            made.api_id,
            title="Moon Phases",
            category="science",
            plans=[{"name": "Free", "model": "free"}],
        )
    with Client(cli.url, email=user, password=PASSWORD) as sdk:
        key = sdk.subscriptions.subscribe(listed.id, listed.plans[0].id).key.key

    # Not before a successful call through the gateway.
    refused = cli("marketplace", "review", listed.id, "--stars", "4", "--text", "Handy")
    assert refused.exit_code == 1 and "FORBIDDEN" in refused.stderr and "used" in refused.stderr
    r = httpx.get(f"{cli.url}/gw/{listed.slug}/index.html", headers={"X-API-Key": key})
    assert r.status_code == 200
    # The gateway records the call once it has answered: poll for the review.
    deadline = time.monotonic() + 15
    while True:
        result = cli("marketplace", "review", listed.id, "--stars", "4", "--text", "Handy")
        if result.exit_code == 0:
            break
        assert "FORBIDDEN" in result.stderr and time.monotonic() < deadline, result.stderr
        time.sleep(0.2)
    assert "****." in result.stdout and "Handy" in result.stdout
    edited = cli.json("marketplace", "review", listed.id, "--stars", "5", "--text", "Very handy")
    assert edited["stars"] == 5 and edited["mine"] is True
    bad = cli("marketplace", "review", listed.id, "--stars", "6", "--text", "x")
    assert bad.exit_code == 1 and "VALIDATION_ERROR" in bad.stderr

    # Anyone reads them (no login), with the rating; the search shows it too.
    stranger = make_cli()
    table = _ok(stranger("marketplace", "reviews", listed.id, NEFOS_URL=cli.url))
    assert "5.00/5 (1 review)" in table and "Very handy" in table and "*****" in table
    page = stranger.json("marketplace", "reviews", listed.id, NEFOS_URL=cli.url)
    assert [i["id"] for i in page["items"]] == [edited["id"]] and page["rating"]["count"] == 1
    found = stranger.json("marketplace", "search", "--sort", "rating", NEFOS_URL=cli.url)
    assert found["items"][0]["id"] == listed.id
    assert found["items"][0]["rating"]["average"] == 5.0
    assert "5.00/5" in _ok(stranger("marketplace", "show", listed.id, NEFOS_URL=cli.url))

    # The creator replies, once; the reviewer cannot.
    seller = make_cli()
    seller.login(creator_email)
    mine = cli("marketplace", "reply", edited["id"], "--text", "Thanks")
    assert mine.exit_code == 1 and "NOT_FOUND" in mine.stderr
    assert "reply: Thanks" in _ok(seller("marketplace", "reply", edited["id"], "--text", "Thanks"))
    again = seller("marketplace", "reply", edited["id"], "--text", "Again")
    assert again.exit_code == 1 and "CONFLICT" in again.stderr
    with Client(cli.url) as anonymous:
        (shown,) = anonymous.marketplace.reviews(listed.id).items
        assert shown.reply is not None and shown.reply.text == "Thanks"
    with Client(cli.url, email=user, password=PASSWORD) as sdk:
        assert sdk.marketplace.update_review(edited["id"], text="Handy!").text == "Handy!"
    with Client(cli.url, email=creator_email, password=PASSWORD) as creator:
        with pytest.raises(PermissionDeniedError):
            creator.marketplace.review(listed.id, 5, "My own")
    assert f"Review {edited['id']} deleted" in _ok(cli("marketplace", "review-rm", edited["id"]))
    assert stranger.json("marketplace", "reviews", listed.id, NEFOS_URL=cli.url)["items"] == []
    with Client(cli.url, email=creator_email, password=PASSWORD) as creator:
        creator.operations.wait(creator.apis.delete(made.api_id))
