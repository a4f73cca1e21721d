"""`nefos product|quote|payout|billing-account ...` against the SDK tests' billing
server (its own database: the prices changed here touch no other module)."""

from __future__ import annotations

import json
import uuid
from decimal import Decimal
from pathlib import Path

import pytest

from nefos.sdk import Client
from tests.cli.conftest import Cli, no_traceback, ok
from tests.conftest import ADMIN_PASSWORD, PASSWORD, TEST_IMAGE, LiveServer
from tests.sdk.test_compute_sdk import ensure_podman_host
from tests.sdk.test_quotes_sdk import billing_server, earn

__all__ = ["billing_server"]  # the fixture, shared with the SDK tests

D = Decimal


def _cli(server: LiveServer, tmp_path: Path) -> Cli:
    return Cli(config=tmp_path / uuid.uuid4().hex[:8] / "config.json", url=server.url)


@pytest.fixture
def cli(billing_server: LiveServer, tmp_path: Path) -> Cli:
    c = _cli(billing_server, tmp_path)
    email = f"cli-bill-{uuid.uuid4().hex[:10]}@example.com"
    with Client(billing_server.url) as sdk:
        sdk.auth.register(email=email, password=PASSWORD)
    c.login(email)
    return c


@pytest.fixture
def admin_cli(billing_server: LiveServer, tmp_path: Path) -> Cli:
    c = _cli(billing_server, tmp_path)
    c.login_admin()
    return c


def test_products_through_the_cli(cli: Cli, admin_cli: Cli) -> None:
    table = ok(cli("product", "list"))
    assert "vcpu_hour" in table and "0.05 USD" in table and "vCPU-hour" in table
    listed = cli.json("product", "list")
    assert listed["currency"] == "USD" and len(listed["items"]) >= 7
    made = admin_cli.json("product", "set-price", "flavor:cli-small", "0.015", "--name", "Small")
    assert (made["sku"], made["unit_price"], made["name"]) == ("flavor:cli-small", "0.015", "Small")
    assert "0.015 USD" in ok(admin_cli("product", "history", "flavor:cli-small"))
    retired = ok(admin_cli("product", "retire", "flavor:cli-small", "--yes"))
    assert "flavor:cli-small retired" in retired
    assert "flavor:cli-small" not in ok(cli("product", "list"))
    base = admin_cli("product", "retire", "vcpu_hour", "--yes")
    assert base.exit_code == 1 and "CONFLICT" in base.stderr
    denied = cli("product", "set-price", "vcpu_hour", "1")
    assert denied.exit_code == 1 and "FORBIDDEN" in denied.stderr
    bad = admin_cli("product", "set-price", "vcpu_hour", "--", "-3")
    assert bad.exit_code == 1 and "VALIDATION_ERROR" in bad.stderr
    no_traceback(bad)


def test_quotes_through_the_cli(cli: Cli, billing_server: LiveServer, tmp_path: Path) -> None:
    with Client(billing_server.url, username="admin", password=ADMIN_PASSWORD) as a:
        ensure_podman_host(a)
    quote = cli.json(
        "quote", "create", "--name", "cli",
        "--vm", "count=2,cpu=2,memory=4g,storage=20",
        "--container", f"cpu=0.1,memory=32m,replicas=2,image={TEST_IMAGE},ports=8080",
        "--volume", "size=24",
        "--hours", "24",
    )  # fmt: skip
    vm, container, volume = quote["items"]
    assert (vm["count"], vm["cpu_cores"], vm["memory_mb"], vm["storage_gb"]) == (2, 2, 4096, 20)
    assert container["replicas"] == 2 and container["ports"] == ["8080"]
    assert volume["size_gb"] == 24
    # Hand-computed: 24 hours of each meter at the default prices.
    want = sum(
        (
            D(2) * 2 * 24 * D("0.05"),  # vCPU-hours of the VMs
            D(2) * 4 * 24 * D("0.005"),  # GB-hours of their memory
            D(2) * 20 * D("0.10"),  # a GB-day each of 20 GB
            D(2) * D("0.1") * 24 * D("0.05"),  # the container's two replicas
            D(2) * 32 * 24 * D("0.005") / 1024,
            D(24) * D("0.10"),
        )
    )
    assert D(quote["monthly_total"]) == want.quantize(D("0.01"))
    table = ok(cli("quote", "show", quote["id"]))
    assert "Monthly total: " + quote["monthly_total"] + " USD" in table and "cli-vm-1" in table
    assert quote["id"] in ok(cli("quote", "list"))
    # A body from a file, and accepting it with --wait.
    body = tmp_path / "quote.json"
    body.write_text(
        json.dumps(
            {
                "name": "cli-run",
                "items": [
                    {"type": "container", "image": TEST_IMAGE, "cpu": "0.1", "memory": "32m"}
                ],
            }
        )
    )
    run = cli.json("quote", "create", "--file", str(body))
    accepted = cli.json("quote", "accept", run["id"], "--wait")
    [res] = accepted["resources"]
    assert res["name"] == "cli-run-container-1" and res["operation"]["status"] == "succeeded"
    again = cli("quote", "accept", run["id"])
    assert again.exit_code == 1 and "CONFLICT" in again.stderr
    ok(cli("container", "rm", res["id"], "--yes", "--wait"))
    # Mistakes are reported, never a traceback.
    for args in (
        ("quote", "create"),
        ("quote", "create", "--vm", "cores=2"),
        ("quote", "create", "--vm", "cpu=two"),
        ("quote", "create", "--file", str(tmp_path / "missing.json")),
    ):
        result = cli(*args)
        assert result.exit_code == 2, (args, result.stdout, result.stderr)
        no_traceback(result)
    refused = cli("quote", "create", "--container", "cpu=abc")
    assert refused.exit_code == 1 and "VALIDATION_ERROR" in refused.stderr
    no_traceback(refused)


def test_payouts_and_account_through_the_cli(
    cli: Cli, admin_cli: Cli, billing_server: LiveServer
) -> None:
    org = cli.json("org", "create", "CLI Payee", "--kind", "reseller")
    account = cli.json("billing-account", "update", "--org", org["id"], "--margin", "15")
    assert account["margin_percent"] == "15" and account["organisation_kind"] == "reseller"
    assert "pay-as-you-go" in ok(cli("billing-account", "subscription", "--org", org["id"]))
    earn(billing_server, org["id"], "50")
    request = ("payout", "request", "20", "--org", org["id"], "--idempotency-key", "cli-1")
    made = cli.json(*request, "--destination", "payee@example.com")
    same = cli.json(*request, "--destination", "payee@example.com")
    assert same["id"] == made["id"] and made["status"] == "pending"
    changed = cli(*request)  # the same key for another request
    assert changed.exit_code == 1 and "Idempotency-Key" in changed.stderr
    other = cli.json("payout", "request", "15", "--org", org["id"])
    too_much = cli("payout", "request", "16", "--org", org["id"])
    assert too_much.exit_code == 1 and "available: 15.00" in too_much.stderr
    assert made["id"] in ok(cli("payout", "list", "--org", org["id"]))
    assert admin_cli.json("payout", "settle", made["id"], "--note", "done")["status"] == "paid"
    assert admin_cli.json("payout", "reject", other["id"])["status"] == "rejected"
    assert made["id"] in ok(admin_cli("payout", "list", "--all", "--status", "paid"))
    view = cli.json("payout", "overview", "--org", org["id"])
    assert (view["balance"], view["available_earnings"], view["total_revenue"]) == (
        "40.00",
        "30.00",
        "50.00",
    )
    assert "Revenue overview" in ok(cli("payout", "overview", "--org", org["id"]))
    tx = cli.json("payout", "transactions", "--org", org["id"], "--type", "payout")
    assert [t["amount"] for t in tx["items"]] == ["-15.00", "-20.00"]
    assert "revenue" in ok(cli("payout", "transactions", "--org", org["id"]))
    shown = cli.json("billing-account", "show", "--org", org["id"])
    assert shown["currency"] == "USD" and shown["status"] == "active"
    denied = cli("payout", "settle", other["id"])
    assert denied.exit_code == 1 and "FORBIDDEN" in denied.stderr
