"""`nefos snapshot|backup|volume|network ...` against a live server and the real
libvirtd + QEMU (two VM boots: the first VM, and the one a backup restores)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from nefos.sdk import Client
from tests.cli.conftest import Cli, no_traceback, ok
from tests.conftest import ADMIN_PASSWORD, LiveServer
from tests.sdk.conftest import BACKUPS, VOLUMES, delete_image, register_tiny, track, unique


@pytest.fixture
def tiny(live_server: LiveServer, libvirt: object) -> Iterator[str]:
    """The tiny image, registered (through the SDK) for this test and removed after it."""
    with Client(live_server.url, username="admin", password=ADMIN_PASSWORD) as admin:
        image = register_tiny(admin)
        yield image.id
        delete_image(admin, image.id)


def _accepted_operation(text: str) -> str:
    """The operation id in the answer of a write without --wait."""
    assert "nefos operation wait" in text, text
    return text.split("Operation ", 1)[1].split(":")[0]


@pytest.mark.timeout(900)
def test_storage_through_the_cli(cli: Cli, user, tiny):
    net_name = unique("net")
    network = cli.json("network", "create", net_name, "--cidr", "10.79.0.0/24")
    assert (network["name"], network["cidr"], network["status"]) == (
        net_name,
        "10.79.0.0/24",
        "active",
    )
    net_id = network["id"]
    assert net_id in ok(cli("network", "list")) and "10.79.0.0/24" in ok(
        cli("network", "show", net_id)
    )

    vm = cli.json(
        "vm", "create", unique("vm"), "--image", tiny, "--memory", "128m", "--disk", "1",
        "--network", net_id, "--wait",
    )  # fmt: skip
    vm_id = vm["vm_id"]
    assert vm["vm"]["status"] == "running" and vm["vm"]["network_id"] == net_id
    cli.console_until(vm_id, "NEFOS-READY")

    # A running VM: no snapshot, no backup; the network in use stays.
    running = cli("snapshot", "create", vm_id, "--wait")
    assert running.exit_code == 1 and "CONFLICT" in running.stderr
    assert "Stop the VM" in running.stderr
    no_traceback(running)
    busy = cli("backup", "create", vm_id, "--json")
    assert busy.exit_code == 1 and json.loads(busy.stderr)["error"]["code"] == "CONFLICT"
    in_use = cli("network", "rm", net_id, "--yes")
    assert in_use.exit_code == 1 and "CONFLICT" in in_use.stderr
    ok(cli("vm", "stop", vm_id, "--force", "--wait"))

    # Snapshots.
    created = cli("snapshot", "create", vm_id, "--name", "gen-1", "--description", "boot", "--wait")
    out = ok(created)
    assert "gen-1" in out and "available" in out and "snapshot.create succeeded" in created.stderr
    (snap,) = cli.json("snapshot", "list", "--vm", vm_id)["items"]
    snap_id = snap["id"]
    assert (snap["name"], snap["description"], snap["vm_id"]) == ("gen-1", "boot", vm_id)
    assert snap_id in ok(cli("snapshot", "list")) and "gen-1" in ok(
        cli("snapshot", "show", snap_id)
    )
    restored = cli.json("snapshot", "restore", snap_id, "--wait")
    assert restored["operation"]["kind"] == "snapshot.revert"
    assert restored["operation"]["status"] == "succeeded"
    assert restored["snapshot"]["status"] == "available"
    text = ok(cli("snapshot", "create", vm_id))  # without --wait: the operation to follow
    assert "Snapshot accepted" in text and "status creating" in text
    ok(cli("operation", "wait", _accepted_operation(text), "--json"))
    second = next(s for s in cli.json("snapshot", "list")["items"] if s["id"] != snap_id)
    assert second["name"].endswith("-snap-2")
    assert f"Snapshot {second['id']} deleted" in ok(
        cli("snapshot", "rm", second["id"], "--yes", "--wait")
    )
    assert [s["id"] for s in cli.json("snapshot", "list")["items"]] == [snap_id]

    # Volumes: made attached, grown, detached, removed.
    vol = cli.json("volume", "create", unique("data"), "--size", "1", "--vm", vm_id, "--wait")
    vol_id = track(vol["volume_id"], VOLUMES)
    assert vol["operation"]["kind"] == "volume.create"
    assert (vol["volume"]["status"], vol["volume"]["vm_id"]) == ("in-use", vm_id)
    device = vol["volume"]["device"]
    assert device.startswith("vd") and device != "vda"
    table = ok(cli("volume", "list", "--vm", vm_id))
    assert vol_id in table and device in table and "1 GB" in table
    attached = cli("volume", "rm", vol_id, "--yes")
    assert attached.exit_code == 1 and "CONFLICT" in attached.stderr and "detach" in attached.stderr
    grown = cli("volume", "resize", vol_id, "2", "--wait")
    assert "size_gb" in ok(grown) and "volume.resize succeeded" in grown.stderr
    assert cli.json("volume", "show", vol_id)["size_gb"] == 2
    shrink = cli("volume", "resize", vol_id, "1")
    assert shrink.exit_code == 1 and "VALIDATION_ERROR" in shrink.stderr
    detached = cli.json("volume", "detach", vol_id, "--wait")
    assert (detached["volume"]["status"], detached["volume"]["vm_id"]) == ("available", None)
    reattached = cli.json("volume", "attach", vol_id, vm_id, "--wait")
    assert reattached["operation"]["kind"] == "volume.attach"
    assert reattached["volume"]["status"] == "in-use"
    ok(cli("volume", "detach", vol_id, "--wait"))
    assert f"Volume {vol_id} deleted" in ok(cli("volume", "rm", vol_id, "--yes", "--wait"))
    assert "No volumes." in ok(cli("volume", "list"))

    # A backup, restored into a new VM that boots.
    backup = cli.json("backup", "create", vm_id, "--name", "nightly", "--wait")
    backup_id = track(backup["backup_id"], BACKUPS)
    assert backup["operation"]["kind"] == "backup.create"
    assert backup["backup"]["status"] == "available" and backup["backup"]["size_bytes"] > 0
    table = ok(cli("backup", "list", "--vm", vm_id))
    assert backup_id in table and "nightly" in table and "available" in table
    assert "storage_gb" in ok(cli("backup", "show", backup_id))
    new_name = unique("restored")
    restoring = cli(
        "backup", "restore", backup_id, "--name", new_name, "--cpu", "2", "--memory", "160m",
        "--wait",
    )  # fmt: skip
    out = ok(restoring)
    assert new_name in out and "running" in out and "vm.create succeeded" in restoring.stderr
    (new_vm,) = [v for v in cli.json("vm", "list")["items"] if v["name"] == new_name]
    assert (new_vm["cpu_cores"], new_vm["memory_mb"], new_vm["storage_gb"]) == (2, 160, 1)
    cli.console_until(new_vm["id"], "NEFOS-READY")

    # Clean up: both VMs (the snapshot goes with its VM), the backup, the network.
    for vm_to_go in (vm_id, new_vm["id"]):
        ok(cli("vm", "rm", vm_to_go, "--yes", "--wait"))
    assert cli.json("snapshot", "list")["items"] == []
    assert cli.json("backup", "show", backup_id)["vm_id"] is None
    gone = cli.json("backup", "rm", backup_id, "--yes", "--wait")
    assert gone["operation"]["kind"] == "backup.delete" and gone["backup"] is None
    text = ok(cli("network", "rm", net_id, "--yes"))
    assert "deletion accepted" in text
    ok(cli("operation", "wait", text.split("operation ", 1)[1].split()[0], "--json"))
    for kind in ("snapshot", "backup", "volume", "network", "vm"):
        assert cli.json(kind, "list")["items"] == [], kind
    missing = cli("network", "show", net_id)
    assert missing.exit_code == 1 and "NOT_FOUND" in missing.stderr
    no_traceback(missing)


def test_storage_cli_errors(cli: Cli, user, libvirt):
    assert cli("snapshot", "rm", "x").exit_code == 1  # not confirmed: aborted
    no_size = cli("volume", "create", unique("v"))
    assert no_size.exit_code == 2 and "--size" in no_size.stderr
    no_name = cli("backup", "restore", "b")
    assert no_name.exit_code == 2 and "--name" in no_name.stderr
    bare = cli("backup", "restore", "b", "--name", "x", "--memory", "512")
    assert bare.exit_code == 2 and "512m or 1g" in bare.stderr
    bad_cidr = cli("network", "create", unique("n"), "--cidr", "10.0.0.0/30", "--json")
    assert bad_cidr.exit_code == 1
    assert json.loads(bad_cidr.stderr)["error"]["code"] == "VALIDATION_ERROR"
    unknown = "0" * 8 + "-0000-4000-8000-" + "0" * 12
    for args in (
        ("snapshot", "create", unknown),
        ("snapshot", "restore", unknown),
        ("backup", "show", unknown),
        ("volume", "attach", unknown, unknown),
        ("network", "rm", unknown, "--yes"),
    ):
        result = cli(*args)
        assert result.exit_code == 1 and "NOT_FOUND" in result.stderr, args
        no_traceback(result)

    # A volume attached to nothing cannot be detached; --json reports the error.
    vol = cli.json("volume", "create", unique("spare"), "--size", "1", "--wait")
    track(vol["volume_id"], VOLUMES)
    assert vol["volume"]["status"] == "available"
    loose = cli("volume", "detach", vol["volume_id"], "--json")
    assert loose.exit_code == 1 and json.loads(loose.stderr)["error"]["code"] == "CONFLICT"
    ok(cli("volume", "rm", vol["volume_id"], "--yes", "--wait"))
    assert cli.json("volume", "list")["items"] == []
