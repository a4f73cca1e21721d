"""`nefos rate-limit show|get|set|unset` against a live server."""

from __future__ import annotations

from tests.cli.conftest import Cli, no_traceback, ok


def test_rate_limit_commands(cli: Cli, user: str, admin_cli: Cli) -> None:
    mine = cli.json("rate-limit", "show")
    assert mine["caller"] == "user"
    assert "containers" in ok(cli("rate-limit", "show"))
    org = cli.json("org", "list")["items"][0]["id"]

    refused = cli("rate-limit", "set", org, "containers=500/minute")
    assert refused.exit_code != 0
    no_traceback(refused)
    bad = admin_cli("rate-limit", "set", org, "containers")
    assert bad.exit_code != 0 and "GROUP=RATE" in bad.stderr
    no_traceback(bad)

    made = admin_cli.json("rate-limit", "set", org, "containers=500/minute", "user=none")
    assert made["limits"]["containers"] == {
        "rate": "500/minute", "limit": 500, "window": 60, "source": "organisation"
    }  # fmt: skip
    assert "500/minute" in ok(admin_cli("rate-limit", "get", org))
    state = {x["group"]: x for x in cli.json("rate-limit", "show")["limits"]}
    assert state["containers"]["limit"] == 500 and state["user"]["rate"] == "none"

    back = admin_cli.json("rate-limit", "unset", org, "containers")
    assert back["limits"]["containers"]["source"] == "default"
