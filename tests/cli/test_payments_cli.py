"""`nefos payment ...` and `nefos wallet top-up` against the SDK tests' payments
server (its Stripe provider talks to the loopback Stripe of tests/stripe_server.py)."""

from __future__ import annotations

import json
import uuid
from decimal import Decimal
from pathlib import Path

import pytest

from nefos.sdk import Client
from tests.cli.conftest import Cli, no_traceback, ok
from tests.conftest import PASSWORD, LiveServer
from tests.sdk.test_payments_sdk import payments_server, stripe_api

__all__ = ["payments_server", "stripe_api"]  # the fixtures, shared with the SDK tests


def _cli(server: LiveServer, tmp_path: Path) -> Cli:
    return Cli(config=tmp_path / uuid.uuid4().hex[:8] / "config.json", url=server.url)


@pytest.fixture
def cli(payments_server: LiveServer, tmp_path: Path) -> Cli:
    c = _cli(payments_server, tmp_path)
    email = f"cli-pay-{uuid.uuid4().hex[:10]}@example.com"
    with Client(payments_server.url) as sdk:
        sdk.auth.register(email=email, password=PASSWORD)
    c.login(email)
    return c


@pytest.fixture
def admin_cli(payments_server: LiveServer, tmp_path: Path) -> Cli:
    c = _cli(payments_server, tmp_path)
    c.login_admin()
    return c


def test_a_bank_transfer_through_the_cli(cli: Cli, admin_cli: Cli) -> None:
    start = Decimal(cli.json("wallet", "show")["balance"])
    made = cli.json(
        "payment", "create", "12.50", "--provider", "manual", "--description", "Invoice 9",
        "--idempotency-key", "inv-9",
    )  # fmt: skip
    assert (made["status"], made["amount"], made["currency"]) == ("pending", "12.50", "USD")
    again = cli.json(
        "payment", "create", "12.50", "--provider", "manual", "--description", "Invoice 9",
        "--idempotency-key", "inv-9",
    )  # fmt: skip
    assert again["id"] == made["id"]
    table = ok(cli("payment", "list"))
    assert made["id"] in table and "12.50 USD" in table and "pending" in table
    shown = cli("payment", "show", made["id"])
    assert shown.exit_code == 0 and f"nefos payment confirm {made['id']}" in shown.stderr
    refused = cli("payment", "confirm", made["id"], "--json")
    assert refused.exit_code == 1
    assert json.loads(refused.stderr)["error"]["code"] == "FORBIDDEN"
    done = admin_cli.json("payment", "confirm", made["id"])
    assert done["status"] == "succeeded"
    assert Decimal(cli.json("wallet", "show")["balance"]) == start + Decimal("12.50")
    assert cli.json("payment", "list", "--status", "succeeded")["items"][0]["id"] == made["id"]
    late = cli("payment", "cancel", made["id"], "--yes")
    assert late.exit_code == 1 and "CONFLICT" in late.stderr
    no_traceback(late)
    other = cli.json("payment", "create", "3", "--provider", "manual")
    failed = admin_cli.json("payment", "fail", other["id"], "--reason", "Never came")
    assert (failed["status"], failed["failure_reason"]) == ("failed", "Never came")


def test_top_ups_and_stripe_through_the_cli(cli: Cli, admin_cli: Cli) -> None:
    org = cli.json("wallet", "show")["organisation_id"]
    start = Decimal(cli.json("wallet", "show")["balance"])
    # With Stripe set up, a customer's top-up is a PaymentIntent to pay.
    pending = cli("wallet", "top-up", "25")
    assert pending.exit_code == 0, pending.stderr
    assert "client_secret" in pending.stdout and "Stripe.js" in pending.stderr
    stripe = cli.json("payment", "list", "--provider", "stripe")["items"][0]
    assert stripe["status"] == "pending" and stripe["provider_ref"].startswith("pi_")
    methods = ok(cli("payment", "methods"))
    assert "Providers: stripe, manual (default stripe)" in methods and "Stripe.js" in methods
    assert cli.json("payment", "refresh", stripe["id"])["status"] == "pending"
    cancelled = cli.json("payment", "cancel", stripe["id"], "--yes")
    assert cancelled["status"] == "cancelled"
    credit = admin_cli.json("wallet", "top-up", "7", "--reason", "Goodwill", "--org", org)
    assert (credit["provider"], credit["status"]) == ("credit", "succeeded")
    assert Decimal(cli.json("wallet", "show")["balance"]) == start + 7
    bad = cli("wallet", "top-up", "-5", "--provider", "manual")
    assert bad.exit_code != 0
    no_traceback(bad)
    bad = cli("payment", "create", "1.001", "--provider", "manual")
    assert bad.exit_code == 1 and "VALIDATION_ERROR" in bad.stderr and "amount" in bad.stderr
    no_traceback(bad)
    assert Decimal(cli.json("wallet", "show")["balance"]) == start + 7
