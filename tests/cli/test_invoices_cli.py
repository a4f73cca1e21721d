"""`nefos invoice ...` against the live server, with usage records written into its
database as the metering writes them."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from nefos.sdk import Client
from tests.cli.conftest import Cli, no_traceback, ok
from tests.conftest import PASSWORD, LiveServer
from tests.sdk.test_invoices_sdk import add_usage, org_of


@pytest.fixture
def user(live_server: LiveServer, tmp_path: Path) -> tuple[Cli, str]:
    """A logged-in CLI whose organisation ran a container for ten hours in March 2025;
    and that organisation."""
    cli = Cli(config=tmp_path / "user" / "config.json", url=live_server.url)
    email = f"cli-inv-{uuid.uuid4().hex[:10]}@example.com"
    with Client(live_server.url) as sdk:
        sdk.auth.register(email=email, password=PASSWORD)
        org = org_of(sdk)
    add_usage(live_server, org)
    cli.login(email)
    return cli, org


@pytest.fixture
def admin_cli(live_server: LiveServer, tmp_path: Path) -> Cli:
    cli = Cli(config=tmp_path / "admin" / "config.json", url=live_server.url)
    cli.login_admin()
    return cli


def test_invoices_through_the_cli(user: tuple[Cli, str], admin_cli: Cli, tmp_path: Path) -> None:
    cli, org = user
    draft = admin_cli.json(
        "invoice", "create", org, "--from", "2025-03-01T00:00:00Z", "--to", "2025-04-01T00:00:00Z"
    )
    assert draft["status"] == "draft" and draft["total"] == "0.55"
    refused = cli("invoice", "finalize", draft["id"], "--json")
    assert refused.exit_code == 1
    assert json.loads(refused.stderr)["error"]["code"] == "FORBIDDEN"
    inv = admin_cli.json("invoice", "finalize", draft["id"])
    number = inv["number"]

    table = ok(cli("invoice", "list"))
    assert number in table and "0.55 USD" in table and "2025-03-01 to 2025-03-31" in table
    shown = ok(cli("invoice", "show", inv["id"]))
    assert f"Invoice {number}" in shown and "open" in shown
    # The lines as a table: what, how much, at what price, for how much.
    assert "vCPU, per hour" in shown and "Memory, per GB-hour" in shown
    for cell in ("vCPU-hour", "GB-hour", "0.05", "0.005", "0.50", "Total 0.55 USD"):
        assert cell in shown, cell
    assert cli.json("invoice", "show", inv["id"])["lines"] == inv["lines"]

    page = ok(cli("invoice", "html", inv["id"]))
    assert page.startswith("<!DOCTYPE html>") and number in page
    target = tmp_path / "invoice.html"
    ok(cli("invoice", "html", inv["id"], "--output", str(target)))
    assert number in target.read_text()

    history = ok(cli("invoice", "history", "--from", "2025-03-01"))
    assert number in history and "0.55 USD" in history

    note = admin_cli.json("invoice", "credit-note", inv["id"], "--reason", "Goodwill",
                          "--amount", "0.05")  # fmt: skip
    assert note["kind"] == "credit_note" and note["total"] == "-0.05"
    cpu = next(ln for ln in inv["lines"] if ln["sku"] == "vcpu_hour")
    second = admin_cli.json("invoice", "credit-note", inv["id"], "--reason", "Outage",
                            "--line", f"{cpu['id']}=0.10")  # fmt: skip
    assert second["lines"][0]["corrects_line_id"] == cpu["id"] and second["total"] == "-0.10"
    shown = ok(cli("invoice", "show", inv["id"]))
    assert "Credited 0.15 USD" in shown
    notes = ok(cli("invoice", "list", "--kind", "credit_note"))
    assert note["number"] in notes and second["number"] in notes

    too_much = admin_cli("invoice", "credit-note", inv["id"], "--reason", "x", "--amount", "9")
    assert too_much.exit_code == 1 and "left to credit" in too_much.stderr
    no_traceback(too_much)
    missing = cli("invoice", "show", str(uuid.uuid4()))
    assert missing.exit_code == 1 and "Invoice not found" in missing.stderr
    no_traceback(missing)


def test_voiding_a_draft_through_the_cli(user: tuple[Cli, str], admin_cli: Cli) -> None:
    _, org = user
    preview = admin_cli.json("invoice", "create", org)
    assert preview["status"] == "draft"
    asked = admin_cli("invoice", "void", preview["id"], input="n\n")
    assert asked.exit_code != 0
    voided = admin_cli.json("invoice", "void", preview["id"], "--yes")
    assert voided["status"] == "void"
    listed = admin_cli.json("invoice", "list", "--all", "--status", "void")
    assert preview["id"] in {i["id"] for i in listed["items"]}
