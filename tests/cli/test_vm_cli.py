"""`nefos vm|image ...` against a live server and the real libvirtd + QEMU.

The libvirt host is registered through the SDK (only if it is not there yet: the
live server and its database are shared by the session) and removed at the end
of the module, with whatever domains and pool images are left.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from tests.cli.conftest import no_traceback, ok
from tests.conftest import tiny_vm_image
from tests.sdk.conftest import KEY, USER_DATA, between, tiny_checksum, track, unique


@pytest.mark.timeout(900)
def test_images_and_a_vm_through_the_cli(admin_cli, cli, user, libvirt, tmp_path: Path):
    tiny = tiny_vm_image()
    kernel, initrd = str(tiny / "vmlinuz"), str(tiny / "initrd.img")
    cmdline = (tiny / "cmdline").read_text().strip()

    # The admin registers the tiny image from the server's files (public by default).
    name = unique("tiny")
    registered = admin_cli.json(
        "image", "register", name,
        "--kernel", kernel, "--initrd", initrd, "--cmdline", cmdline,
        "--os-type", "busybox", "--os-version", "1",
        "--checksum", f"sha256:{tiny_checksum()}",
        "--wait",
    )  # fmt: skip
    public_id = track(registered["image_id"])
    assert registered["operation"]["status"] == "succeeded"
    assert registered["image"]["status"] == "active" and registered["image"]["public"] is True
    assert registered["image"]["kernel_cmdline"] == cmdline
    listed = ok(cli("image", "list"))
    assert name in listed and public_id in listed and "kernel" in listed
    shown = ok(cli("image", "show", public_id))
    assert "kernel_cmdline" in shown and cmdline in shown and "busybox" in shown

    # A user uploads the same kernel and initrd as an image of their own.
    own = unique("mine")
    uploaded = cli(
        "image", "upload", own,
        "--kernel", kernel, "--initrd", initrd, "--cmdline", cmdline,
        "--os-type", "busybox", "--checksum", tiny_checksum(),
        "--wait",
    )  # fmt: skip
    out = ok(uploaded)
    assert own in out and "active" in out and "image.import" in uploaded.stderr
    (image,) = [i for i in cli.json("image", "list", "--kind", "vm")["items"] if i["name"] == own]
    image_id = track(image["id"])
    assert image["public"] is False and image["format"] == "kernel"
    assert own not in ok(admin_cli("image", "list"))  # another project's

    # A VM from it, with user data and a key file (comments and blank lines skipped).
    user_data = tmp_path / "user-data"
    user_data.write_text(USER_DATA)
    keys = tmp_path / "keys.pub"
    keys.write_text(f"# my laptop\n\n{KEY}\n")
    vm_name = unique("vm")
    # On a network with a subnet, serving on a port: the VM is a service too.
    cidr = f"10.79.{random.randrange(256)}.0/24"  # noqa: S311 - a subnet, not a secret
    network_id = cli.json("network", "create", unique("net"), "--cidr", cidr)["id"]
    created = cli(
        "vm", "create", vm_name,
        "--image", image_id,
        "--memory", "128m",
        "--disk", "1",
        "--user-data-file", str(user_data),
        "--ssh-key-file", str(keys),
        "--network", network_id,
        "--service-port", "8080",
        "--wait",
    )  # fmt: skip
    out = ok(created)
    assert vm_name in out and "running" in out and "vm.create succeeded" in created.stderr
    (vm,) = cli.json("vm", "list")["items"]
    vm_id = vm["id"]
    assert (vm["name"], vm["memory_mb"], vm["storage_gb"], vm["ssh_keys"]) == (
        vm_name,
        128,
        1,
        [KEY],
    )
    service = cli.json("service", "show", vm_id)
    assert (service["kind"], service["name"], service["check"]["port"]) == ("vm", vm_name, None)
    assert [i["id"] for i in service["instances"]] == [vm_id]
    assert "no longer a service" in ok(cli("vm", "serve", vm_id, "--off"))
    gone = cli("service", "show", vm_id)
    assert gone.exit_code == 1 and "NOT_FOUND" in gone.stderr
    assert "serves on port 9090" in ok(cli("vm", "serve", vm_id, "9090"))
    assert cli.json("vm", "show", vm_id)["service_port"] == 9090
    assert cli("vm", "serve", vm_id).exit_code == 2  # a port, or --off
    table = ok(cli("vm", "list", "--status", "running"))
    assert vm_id in table and "128 MiB" in table
    assert cli.json("vm", "show", vm_id)["image_id"] == image_id

    console = cli.console_until(vm_id, "NEFOS-READY")
    assert between(console, "NEFOS-USER-DATA-BEGIN", "NEFOS-USER-DATA-END") == USER_DATA.rstrip()
    as_json = cli.json("vm", "console", vm_id, "--tail", "5")
    assert as_json["vm_id"] == vm_id and as_json["lines"] <= 5

    # Attached, stdin typed into the guest's shell: the answer is printed.
    attached = cli("vm", "console", vm_id, "--attach", "--linger", "5", input="echo cli-$((6*7))\n")
    assert "cli-42" in ok(attached)
    assert cli("vm", "console", vm_id, "--attach", "--json").exit_code == 2

    rebooted = cli.json("vm", "reboot", vm_id, "--hard", "--wait")
    assert rebooted["operation"]["kind"] == "vm.reboot"
    assert rebooted["operation"]["status"] == "succeeded"
    cli.console_until(vm_id, "NEFOS-READY", count=2)

    busy = cli("vm", "resize", vm_id, "--cpu", "2")
    assert busy.exit_code == 1 and "CONFLICT" in busy.stderr and "Stop the VM" in busy.stderr
    no_traceback(busy)

    assert "stopped" in ok(cli("vm", "stop", vm_id, "--force", "--wait"))
    resized = cli.json(
        "vm", "resize", vm_id, "--cpu", "2", "--memory", "0.1875g", "--disk", "2", "--wait"
    )
    assert resized["operation"]["kind"] == "vm.resize"
    assert [resized["vm"][k] for k in ("status", "cpu_cores", "memory_mb", "storage_gb")] == [
        "stopped",
        2,
        192,
        2,
    ]
    assert cli.json("vm", "start", vm_id, "--wait")["vm"]["status"] == "running"

    # Images in use stay.
    in_use = cli("image", "rm", image_id, "--yes")
    assert in_use.exit_code == 1 and "CONFLICT" in in_use.stderr

    kinds = [o["kind"] for o in cli.json("operation", "list", "--resource", vm_id)["items"]]
    assert kinds == ["vm.start", "vm.resize", "vm.stop", "vm.reboot", "vm.create"]
    assert f"VM {vm_id} deleted" in ok(cli("vm", "rm", vm_id, "--yes", "--wait"))
    gone = cli("vm", "show", vm_id)
    assert gone.exit_code == 1 and "NOT_FOUND" in gone.stderr
    no_traceback(gone)
    ok(cli("network", "rm", network_id, "--yes", "--wait"))

    # Without --wait: the operation to follow.
    text = ok(cli("image", "rm", image_id, "--yes"))
    assert "deletion accepted" in text and "nefos operation wait" in text
    op_id = text.split("operation ", 1)[1].split()[0]
    ok(cli("operation", "wait", op_id, "--json"))
    image_gone = cli("image", "show", image_id)
    assert image_gone.exit_code == 1 and "NOT_FOUND" in image_gone.stderr
    removed = admin_cli("image", "rm", public_id, "--yes", "--wait", "--json")
    ok(removed)
    assert json.loads(removed.stdout)["operation"]["status"] == "succeeded"
    left = [i["id"] for i in cli.json("image", "list", "--kind", "vm")["items"]]
    assert image_id not in left and public_id not in left


def test_vm_and_image_errors(cli, user, libvirt, tmp_path: Path):
    no_image = cli("vm", "create", unique("vm"))
    assert no_image.exit_code == 2 and "--image" in no_image.stderr
    bare = cli("vm", "create", unique("vm"), "--os-type", "busybox", "--memory", "512")
    assert bare.exit_code == 2 and "512m or 1g" in bare.stderr
    both = cli("vm", "create", unique("vm"), "--os-type", "x", "--memory", "1g", "--memory-gb", "1")
    assert both.exit_code == 2
    unmatched = cli("vm", "create", unique("vm"), "--os-type", "no-such-os", "--memory", "64m")
    assert unmatched.exit_code == 1 and "VALIDATION_ERROR" in unmatched.stderr
    assert "no-such-os" in unmatched.stderr
    no_traceback(unmatched)

    forbidden = cli("image", "register", unique("mine"), "--path", str(tiny_vm_image()))
    assert forbidden.exit_code == 1 and "FORBIDDEN" in forbidden.stderr
    neither = cli("image", "upload", unique("empty"))
    assert neither.exit_code == 2 and "--disk" in neither.stderr

    # An import that fails: --wait exits 1 with the operation's error.
    disk = tmp_path / "disk.raw"
    disk.write_bytes(b"\0" * 65536)
    failed = cli(
        "image", "upload", unique("bad"), "--disk", str(disk), "--checksum", "0" * 64, "--wait"
    )
    assert failed.exit_code == 1
    assert "VALIDATION_ERROR" in failed.stderr and "Checksum mismatch" in failed.stderr
    assert "image.import" in failed.stderr and "failed" in failed.stderr
    no_traceback(failed)
    again = cli(
        "image", "upload", unique("bad"), "--disk", str(disk), "--checksum", "0" * 64,
        "--wait", "--json",
    )  # fmt: skip
    assert again.exit_code == 1
    error = json.loads(again.stderr)["error"]
    assert error["code"] == "VALIDATION_ERROR" and error["operation"]["status"] == "failed"

    own = [i for i in cli.json("image", "list", "--kind", "vm")["items"] if not i["public"]]
    assert [i["status"] for i in own] == ["error", "error"]
    for image in own:
        track(image["id"])
        ok(cli("image", "rm", image["id"], "--yes", "--wait", "--json"))
    assert [i for i in cli.json("image", "list", "--kind", "vm")["items"] if not i["public"]] == []
    assert cli.json("vm", "list")["items"] == []
