"""`nefos loadtest ...` (and the SDK under it) against a live server, on a real
container of the test Podman."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from nefos.schemas.compute import HostPublic
from nefos.sdk import Client
from tests.cli.conftest import Cli, no_traceback, ok
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


def test_loadtest_run_show_list_cancel_and_scenarios(cli: Cli, user: str, podman, live_server):
    accepted = cli.json(
        "container", "create", unique("lt"), "--image", TEST_IMAGE, "-p", "8080", "--wait"
    )
    target = accepted["id"] if "id" in accepted else accepted["container"]["id"]
    # A load test goes where traffic may: to instances that pass their checks.
    deadline = time.monotonic() + 60
    while cli.json("service", "show", target)["passing"] < 1:
        assert time.monotonic() < deadline, "the container's instance never passed"
        time.sleep(0.2)

    # A failing threshold: the results table, and exit status 1.
    result = cli(
        "loadtest", "run", target,
        "--users", "2", "--duration", "2", "--ramp-up", "1",
        "--threshold", "p99<0.001", "--threshold", "error_rate < 1%",
    )  # fmt: skip
    assert result.exit_code == 1, (result.stdout, result.stderr)
    no_traceback(result)
    out = result.stdout
    assert "completed" in out and "p95" in out and "p99.9" in out
    assert "threshold p99 < 0.001" in out and "FAIL" in out and "pass (measured 0.0)" in out

    # --json: the API's data; the thresholds pass.
    data = cli.json("loadtest", "run", target, "--users", "1", "--duration", "1", "--rate", "20",
                    "--threshold", "rps > 1")  # fmt: skip
    assert data["status"] == "completed" and data["passed"] is True
    assert data["results"]["total_requests"] == sum(e["ok"] + e["failed"] for e in data["timeline"])
    listed = cli.json("loadtest", "list")["items"]
    assert data["test_id"] in [t["test_id"] for t in listed]
    assert "completed" in ok(cli("loadtest", "show", data["test_id"]))
    cancelled = cli("loadtest", "cancel", data["test_id"])  # ended: a 409
    assert cancelled.exit_code != 0 and "CONFLICT" in cancelled.stderr
    no_traceback(cancelled)

    # A detached run, cancelled.
    started = cli.json("loadtest", "run", target, "--duration", "60", "--users", "1", "--detach")
    gone = cli.json("loadtest", "cancel", started["test_id"])
    assert gone["status"] == "cancelled"

    made = cli.json(
        "loadtest", "scenarios", "create", "mix", "--request", "GET / 3", "--request", "GET /x"
    )
    assert [r["weight"] for r in made["requests"]] == [3, 1]
    assert "mix" in ok(cli("loadtest", "scenarios", "list"))
    ok(cli("loadtest", "scenarios", "delete", made["id"]))

    # The SDK under it.
    with Client(live_server.url, email=user, password=PASSWORD) as c:
        page = c.load_tests.list(status="cancelled")
        assert [t.test_id for t in page.items] == [started["test_id"]]
        assert c.load_tests.get(started["test_id"]).status == "cancelled"
