"""`nefos wallet show|ledger` and `nefos billing summary|usage` against a live server."""

from __future__ import annotations

import uuid

from tests.cli.conftest import Cli, no_traceback, ok


def test_wallet_and_billing_commands(cli: Cli, user: str) -> None:
    wallet = cli.json("wallet", "show")
    assert wallet["balance"] == "10.00" and wallet["currency"] == "USD"
    assert "10.00" in ok(cli("wallet", "show"))
    entries = cli.json("wallet", "ledger")
    assert [e["kind"] for e in entries["items"]] == ["adjustment"]
    assert "Welcome credit" in ok(cli("wallet", "ledger"))

    summary = cli.json("billing", "summary")
    assert summary["current_period"]["total_cost"] == "0.00"
    assert "0.00 USD" in ok(cli("billing", "summary"))

    missing = cli("billing", "usage", "container", str(uuid.uuid4()))
    assert missing.exit_code != 0 and "not found" in missing.stderr.lower()
    no_traceback(missing)
    bad = cli("billing", "usage", "disk", str(uuid.uuid4()))
    assert bad.exit_code != 0
