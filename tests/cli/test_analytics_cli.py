"""`nefos analytics overview|traffic|performance|geography` against a live server."""

from __future__ import annotations

from tests.cli.conftest import Cli, no_traceback, ok
from tests.sdk.test_analytics_sdk import moment, until


def test_analytics_commands(cli: Cli, user: str) -> None:
    start = moment()
    for _ in range(2):
        ok(cli("whoami"))
    end = moment()
    window = ("--from", start.isoformat(), "--to", end.isoformat())

    overview = until(
        lambda: (o := cli.json("analytics", "overview", *window))["total_requests"] == 2 and o
    )
    assert overview, "the log did not record the 2 calls"
    assert overview["top_endpoints"] == [
        {"method": "GET", "route": "/auth/me", "requests": 2, "error_rate": 0.0}
    ]
    text = ok(cli("analytics", "overview", *window))
    assert "total_requests" in text and "/auth/me" in text

    perf = cli.json("analytics", "performance", *window)
    [endpoint] = perf["endpoints"]
    assert endpoint["route"] == "/auth/me" and endpoint["requests"] == 2
    assert "/auth/me" in ok(cli("analytics", "performance", *window))

    traffic = cli.json("analytics", "traffic", *window, "--interval", "minute")
    assert sum(b["requests"] for b in traffic["buckets"]) == 2
    assert "REQUESTS" in ok(cli("analytics", "traffic", "--period", "1h"))

    geo = cli.json("analytics", "geography", *window)
    assert geo["items"][0]["network"] == "127.0.0.0/24" and geo["items"][0]["requests"] == 2
    assert "127.0.0.0/24" in ok(cli("analytics", "geography", *window))

    refused = cli("analytics", "overview", "--platform")
    assert refused.exit_code != 0 and "administrators" in refused.stderr
    no_traceback(refused)
