"""`nefos host|container|operation ...` against a live server and the test Podman.

The Podman host is registered through the SDK (only if it is not there yet: the
live server and its database are shared by the session) and removed at the end
of the module.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from nefos.schemas.compute import HostPublic
from nefos.sdk import Client
from tests.cli.conftest import Cli
from tests.conftest import ADMIN_PASSWORD, TEST_IMAGE, LiveServer
from tests.sdk.test_compute_sdk import (
    MISSING_IMAGE,
    PODMAN_HOSTNAME,
    ensure_podman_host,
    fetch,
    unique,
    unregister_podman_host,
)


@pytest.fixture(scope="module")
def podman_teardown(live_server: LiveServer) -> Iterator[None]:
    yield
    unregister_podman_host(live_server)


@pytest.fixture
def podman(live_server: LiveServer, podman_teardown: None) -> HostPublic:
    """The Podman host of the live server, registered through the SDK unless it is already."""
    with Client(live_server.url, username="admin", password=ADMIN_PASSWORD) as admin:
        return ensure_podman_host(admin)


@pytest.fixture
def admin_cli(make_cli) -> Cli:
    cli = make_cli()
    cli.login_admin()
    return cli


def _no_traceback(result) -> None:
    assert "Traceback" not in result.stdout + result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit)


def _ok(result) -> str:
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return str(result.stdout)


# --- hosts ------------------------------------------------------------------------------
def test_host_list_show_stats_add_and_rm(admin_cli, podman):
    table = _ok(admin_cli("host", "list"))
    assert PODMAN_HOSTNAME in table and podman.id in table and "active" in table
    assert podman.id in [h["id"] for h in admin_cli.json("host", "list")["items"]]

    shown = _ok(admin_cli("host", "show", podman.id))
    assert "docker" in shown and "used.instances" in shown
    assert admin_cli.json("host", "show", podman.id)["hostname"] == PODMAN_HOSTNAME

    stats = _ok(admin_cli("host", "stats"))
    assert "Hosts:" in stats and "containers" in stats and "docker" in stats
    assert admin_cli.json("host", "stats")["by_driver"]["docker"] >= 1

    # A disabled sim host: it gets no work, so the containers below stay on Podman.
    name = unique("sim")
    added = admin_cli.json(
        "host", "add", name, "--driver", "sim", "--uri", f"sim://{name}", "--disabled"
    )
    assert added["hostname"] == name and added["enabled"] is False
    again = admin_cli("host", "add", name, "--driver", "sim", "--uri", f"sim://{name}")
    assert again.exit_code == 1 and "CONFLICT" in again.stderr
    removed = admin_cli("host", "rm", added["id"], "--yes")
    assert f"Host {added['id']} removed" in _ok(removed)
    gone = admin_cli("host", "show", added["id"])
    assert gone.exit_code == 1 and "NOT_FOUND" in gone.stderr
    _no_traceback(gone)


def test_hosts_are_for_platform_admins_only(cli, user, podman):
    result = cli("host", "list")
    assert result.exit_code == 1 and "FORBIDDEN" in result.stderr
    _no_traceback(result)


# --- containers ---------------------------------------------------------------------------
def test_container_lifecycle_with_wait(cli, user, admin_cli, podman):
    name = unique("web")
    created = cli(
        "container", "create", name,
        "--image", TEST_IMAGE,
        "-p", "8080",
        "-e", "GREETING=hello world",
        "--cpu", "0.25",
        "--memory", "64m",
        "--wait",
    )  # fmt: skip
    out = _ok(created)
    assert name in out and "running" in out and "endpoints" in out and "metrics" in out
    # The progress bar, on stderr, counts replicas ready out of those wanted.
    assert "container.create succeeded: 1/1 replicas ready" in created.stderr

    rows = cli.json("container", "list")["items"]
    (container,) = [r for r in rows if r["name"] == name]
    cid = container["id"]
    assert container["environment"] == {"GREETING": "hello world"}

    shown = _ok(cli("container", "show", cid))
    (endpoint,) = cli.json("container", "show", cid)["endpoints"]
    assert f"{PODMAN_HOSTNAME}:{endpoint['host_port']} -> 8080/tcp" in shown
    assert "cpu" in shown and "% of limit" in shown
    started = datetime.now(UTC)
    assert "nefos test page" in fetch(endpoint["host_port"])
    listed = _ok(cli("container", "list", "--status", "running"))
    assert name in listed and "CPU" in listed and "MEM" in listed  # the collector's figures
    assert "usage" in container

    logs = cli("container", "logs", cid, "--tail", "20")
    assert logs.exit_code == 0, logs.stderr
    assert cli.json("container", "logs", cid)["container_id"] == cid
    # Followed from before the request: httpd's line for it, with its replica and time.
    since = ("--since", started.isoformat(), "--seconds", "1")
    followed = _ok(cli("container", "logs", cid, "--follow", *since))
    assert any(
        line.startswith("[replica 0] ") and "response:200" in line for line in followed.splitlines()
    ), followed
    as_json = _ok(cli("container", "logs", cid, "-f", *since, "--json")).splitlines()
    assert {tuple(sorted(json.loads(line))) for line in as_json} == {("line", "replica", "time")}
    endless = cli("container", "logs", cid, "--follow", "--until", started.isoformat())
    assert endless.exit_code == 2 and "no end" in endless.stderr, endless.stderr
    stamped = _ok(cli("container", "logs", cid, "--timestamps", "--since", started.isoformat()))
    assert stamped.startswith(str(started.year)), stamped

    scaled = cli.json("container", "scale", cid, "2", "--wait")
    assert scaled["operation"]["status"] == "succeeded" and scaled["replicas"] == 2
    assert scaled["container"]["replicas"] == 2 and len(scaled["container"]["endpoints"]) == 2
    for e in scaled["container"]["endpoints"]:
        assert "nefos test page" in fetch(e["host_port"])
    both = cli.json("container", "logs", cid, "--replica", "1")
    assert [r["replica"] for r in both["replicas"]] == [1]

    assert "stopped" in _ok(cli("container", "stop", cid, "--wait"))
    stopped = cli.json("container", "show", cid)
    assert stopped["status"] == "stopped" and stopped["metrics"] is None
    started = cli.json("container", "start", cid, "--wait")
    assert started["container"]["status"] == "running"

    ops = cli.json("operation", "list", "--resource", cid)["items"]
    assert [o["kind"] for o in ops] == [
        "container.start",
        "container.stop",
        "container.scale",
        "container.create",
    ]
    table = _ok(cli("operation", "list", "--resource", cid))
    assert "container.scale" in table and "succeeded" in table
    shown_op = _ok(cli("operation", "show", ops[0]["id"]))
    assert ops[0]["id"] in shown_op and "container.start" in shown_op
    cancel = cli("operation", "cancel", ops[0]["id"])  # finished: too late
    assert cancel.exit_code == 1 and "CONFLICT" in cancel.stderr
    _no_traceback(cancel)

    # A rolling update, followed to its end.
    updated = cli.json("container", "update", cid, "-e", "GREETING=hi", "--wait")
    assert updated["operation"]["status"] == "succeeded", updated
    assert updated["operation"]["kind"] == "container.update"
    assert updated["container"]["environment"] == {"GREETING": "hi"}
    assert updated["container"]["generation"] == 2
    assert [r["generation"] for r in updated["container"]["replica_states"]] == [2, 2]
    for e in updated["container"]["endpoints"]:
        assert "nefos test page" in fetch(e["host_port"])
    assert "Nothing to change" in _ok(cli("container", "update", cid, "-e", "GREETING=hi"))

    # The admin may not remove the host while it carries the container.
    busy = admin_cli("host", "rm", podman.id, "--yes")
    assert busy.exit_code == 1 and "CONFLICT" in busy.stderr and "drain" in busy.stderr

    deleted = cli("container", "rm", cid, "--yes", "--wait")
    assert f"Container {cid} deleted" in _ok(deleted)
    gone = cli("container", "show", cid)
    assert gone.exit_code == 1 and "NOT_FOUND" in gone.stderr


def test_write_without_wait_then_operation_wait(cli, user, podman):
    accepted = cli.json("container", "create", unique("later"), "--image", TEST_IMAGE)
    assert accepted["container"]["status"] == "creating"
    op_id = accepted["operation"]["id"]
    waited = cli("operation", "wait", op_id)
    assert "succeeded" in _ok(waited) and "container.create" in waited.stderr
    assert cli.json("operation", "show", op_id)["status"] == "succeeded"

    text = _ok(cli("container", "rm", accepted["container_id"], "--yes"))
    assert "deletion accepted" in text and "nefos operation wait" in text
    op = cli.json("container", "list")["items"]
    assert [c["status"] for c in op if c["id"] == accepted["container_id"]] in ([], ["deleting"])
    deleting = cli.json("operation", "list", "--resource", accepted["container_id"])["items"][0]
    assert deleting["kind"] == "container.delete"
    assert cli.json("operation", "wait", deleting["id"])["status"] == "succeeded"


def test_a_failed_operation_exits_non_zero_with_its_error(cli, user, podman):
    name = unique("nope")
    result = cli("container", "create", name, "--image", MISSING_IMAGE, "--wait")
    assert result.exit_code == 1
    assert "IMAGE_PULL_FAILED" in result.stderr and MISSING_IMAGE in result.stderr
    assert "container.create" in result.stderr and "failed" in result.stderr
    _no_traceback(result)

    again = cli("container", "create", unique("nope"), "--image", MISSING_IMAGE, "--wait", "--json")
    assert again.exit_code == 1
    error = json.loads(again.stderr)["error"]
    assert error["code"] == "IMAGE_PULL_FAILED" and error["operation"]["status"] == "failed"

    for c in cli.json("container", "list")["items"]:
        assert c["status"] == "error"
        waited = cli("container", "rm", c["id"], "--yes", "--wait")
        assert waited.exit_code == 0, waited.stderr
    assert cli.json("container", "list")["items"] == []


def test_quota_and_validation_errors(cli, user, podman):
    project = cli.json("whoami")["default_project_id"]
    quota = cli("project", "set-quota", project, "--containers", "0")
    assert quota.exit_code == 0, quota.stderr
    over = cli("container", "create", unique("over"), "--image", TEST_IMAGE, "--wait")
    assert over.exit_code == 1 and "RESOURCE_EXHAUSTED" in over.stderr
    assert "containers" in over.stderr
    _no_traceback(over)
    assert cli("project", "set-quota", project, "--containers", "unlimited").exit_code == 0

    bad_port = cli("container", "create", unique("p"), "--image", TEST_IMAGE, "-p", "nope")
    assert bad_port.exit_code == 1 and "VALIDATION_ERROR" in bad_port.stderr
    bad_env = cli("container", "create", unique("e"), "--image", TEST_IMAGE, "-e", "NOEQUALS")
    assert bad_env.exit_code == 2 and "KEY=VALUE" in bad_env.stderr
    missing = cli("operation", "show", "00000000-0000-0000-0000-000000000000")
    assert missing.exit_code == 1 and "NOT_FOUND" in missing.stderr
    assert cli.json("container", "list")["items"] == []
