"""`nefos service ...` and the SDK's ``client.services`` against a live server whose
own health checker checks a real container on the test Podman."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from nefos.schemas.compute import HostPublic
from nefos.sdk import Client
from nefos.sdk._errors import NefosAPIError
from tests.cli.conftest import Cli
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


def test_service_list_show_update_maintenance_and_watch(cli: Cli, user: str, podman) -> None:
    name = unique("svc")
    _ok(cli("container", "create", name, "--image", TEST_IMAGE, "-p", "8080", "--replicas", "2",
            "--cpu", "0.1", "--memory", "32m", "--wait"))  # fmt: skip
    [row] = [s for s in cli.json("service", "list")["items"] if s["name"] == name]
    sid = row["id"]
    check = '{"type":"http","path":"/","interval":1,"timeout":1,"rise":1,"fall":2}'
    updated = cli.json(
        "service", "update", sid, "--version", "1.2.3", "--tag", "web", "--meta", "team=a",
        "--check", check,
    )  # fmt: skip
    assert updated["version"] == "1.2.3" and updated["tags"] == ["web"]
    assert updated["metadata"] == {"team": "a"} and updated["check"]["type"] == "http"

    with Client(cli.url, email=user, password=PASSWORD) as sdk:
        deadline = time.monotonic() + 45

        def checked_by_http() -> bool:
            s = sdk.services.get(sid)
            outputs = [i.checks[0].output for i in s.instances]
            return s.health == "passing" and all(o.startswith("HTTP GET") for o in outputs)

        while not checked_by_http():
            assert time.monotonic() < deadline, sdk.services.get(sid)
            time.sleep(0.3)
        listed = sdk.services.list(tags=["web"], metadata={"team": "a"}, health="passing")
        assert [s.id for s in listed.items] == [sid] and listed.index > 0
        assert sdk.services.list(metadata={"team": "b"}).items == []

        table = _ok(cli("service", "list", "--tag", "web"))
        assert name in table and "passing" in table and "2/2" in table
        shown = _ok(cli("service", "show", sid))
        assert "Instances" in shown and "HTTP GET" in shown and "▮" in shown
        instance = cli.json("service", "show", sid)["instances"][0]["id"]

        # A watcher sees the maintenance of an instance as a change of the list.
        seen: list[int] = []

        def watch() -> None:
            with Client(cli.url, email=user, password=PASSWORD) as watcher:
                for result in watcher.services.watch(wait=20, max_changes=1):
                    seen.append(result.items[0].passing if result.items else -1)

        watcher = threading.Thread(target=watch)
        watcher.start()
        time.sleep(1.0)
        out = _ok(cli("service", "maintenance", sid, instance, "--reason", "upgrade"))
        assert "maintenance" in out and "upgrade" in out
        watcher.join(30)
        assert not watcher.is_alive() and seen[-1] == 1 and len(seen) == 2
        back = cli.json("service", "maintenance", sid, instance, "--off")
        assert {i["health"] for i in back["instances"]} == {"passing"}

        with pytest.raises(NefosAPIError) as err:
            sdk.services.update(sid, check={"type": "exec"})
        assert err.value.status_code == 422

    bad = cli("service", "update", sid, "--check", "{not json")
    assert bad.exit_code == 2 and "not JSON" in bad.stderr
    missing = cli("service", "show", "00000000-0000-4000-8000-000000000000")
    assert missing.exit_code == 1 and "NOT_FOUND" in missing.stderr
    _ok(cli("container", "rm", sid, "--yes", "--wait"))
