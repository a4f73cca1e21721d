"""The console's virtual machines in Chromium, on the real libvirtd + QEMU, each
scenario from a fresh sign-up.

What a person does: price a VM and create it, watch it turn running without a
reload, read its boot on the serial console, connect to the console and type into the
guest's shell, take the console over from a second browser, open its month graph, see
its CPU and memory in the list, stop it and delete it; and open another tenant's VM by
its URL and be told it is not found. The VM boots the tiny image the API's VM tests
use (tests/api/test_vms.py): a kernel and a busybox initramfs that prints markers on
the serial console and runs a root shell on it.

The month graph's budget (docs/benchmarks.md: one request, rendered within 100 ms for
720 points per series) is measured here on 720 hourly buckets written into the
1-hour rollup table for the VM: the figure is printed, never asserted; that it is one
request is.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from playwright.sync_api import expect
from sqlalchemy import insert

from nefos.config import async_database_url
from nefos.db.models import MetricRollupHour
from nefos.db.session import WRITE_OPTION, Database
from tests.api.test_vms import tiny_checksum
from tests.conftest import PASSWORD, libvirt_test_uri, remove_managed_domains, tiny_vm_image
from tests.console.conftest import (
    ARTIFACTS,
    UI_TIMEOUT_MS,
    V1,
    ConsoleServer,
    Visit,
    check_a11y,
    record_timing,
    sign_up,
)

#: A boot under TCG on a loaded two-core machine: the tests/api VM tests allow 120 s
#: for the guest's markers; the console adds the reads' backoff on top.
BOOT_MS = 240_000
MONTH_HOURS = 720


BARE_CANVAS = """(n) => {
  const t0 = performance.now();
  for (let g = 0; g < 2; g++) {
    const c = document.createElement("canvas");
    c.width = 560; c.height = 180;
    const ctx = c.getContext("2d");
    for (let s = 0; s < 2; s++) {
      ctx.beginPath();
      for (let i = 0; i < n; i++) {
        const y = 180 - ((20 + ((i * (7 + 4 * s)) % 50)) / 100) * 180;
        if (i) ctx.lineTo((i / n) * 560, y); else ctx.moveTo(0, y);
      }
      ctx.stroke();
    }
  }
  return performance.now() - t0;
}"""


def _console_sockets(visit: Visit, vm_id: str) -> list[dict[str, list[str]]]:
    """The queries of the VM console sockets the page opened (conftest's check_calls
    checks each has a ticket and nothing but ``force`` beside it)."""
    path = f"{V1}/vms/{vm_id}/console"
    return [parse_qs(urlsplit(u).query) for u in visit.sockets if urlsplit(u).path == path]


def _admin(server: ConsoleServer) -> dict[str, str]:
    return {"Authorization": f"Bearer {server.admin_token}"}


def _run(coro: Any) -> Any:
    """A coroutine on a loop of its own, off the thread Playwright's loop runs on."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


@pytest.fixture(scope="module")
def vm_host(console_server: ConsoleServer) -> Iterator[dict[str, Any]]:
    """The test libvirtd as a host of the console's server, and the tiny image
    registered (public) and imported; the domains and pool images it made are removed
    afterwards."""
    with httpx.Client(base_url=console_server.url, timeout=120) as http:
        r = http.post(
            f"{V1}/resources/hosts",
            json={"hostname": "libvirt-console", "driver": "libvirt", "uri": libvirt_test_uri()},
            headers=_admin(console_server),
        )
        assert r.status_code == 201 and r.json()["data"]["status"] == "active", r.text
        r = http.post(
            f"{V1}/images",
            json={
                "name": "tiny",
                "os_type": "busybox",
                "os_version": "1",
                "path": str(tiny_vm_image()),
                "checksum": f"sha256:{tiny_checksum()}",
            },
            headers=_admin(console_server),
        )
        assert r.status_code == 202, r.text
        image = r.json()["data"]["image"]
        op_url = r.json()["data"]["operation"]["url"]
        deadline = time.monotonic() + 300
        while True:
            op = http.get(op_url, headers=_admin(console_server)).json()["data"]
            if op["status"] in ("succeeded", "failed") or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert op["status"] == "succeeded", op
    try:
        yield image
    finally:
        _run(_cleanup(image["id"]))


async def _cleanup(image_id: str) -> None:
    from nefos.drivers.libvirt import LibvirtDriver
    from nefos.services.images import pool_image_name

    await remove_managed_domains()
    driver = LibvirtDriver(libvirt_test_uri(), domain_type="qemu")
    try:
        await driver.delete_image(pool_image_name(image_id))
    finally:
        await driver.close()


async def _seed_month(database_url: str, vm_id: str, project_id: str) -> None:
    """720 closed hours of CPU and memory for the VM, as the rollup would leave them."""
    now = int(datetime.now(UTC).timestamp()) // 3600 * 3600
    db = Database(async_database_url(database_url))
    try:
        async with db.engine.execution_options(**{WRITE_OPTION: True}).begin() as conn:
            rows = [
                {
                    "resource_id": vm_id,
                    "metric": metric,
                    "bucket": now - 3600 * (MONTH_HOURS - i),
                    "kind": "vm",
                    "project_id": project_id,
                    "avg": 20 + (i * 7) % 50,
                    "min": 5.0,
                    "max": 60 + (i * 11) % 40,
                    "count": 240,
                }
                for metric in ("cpu_percent", "memory_percent")
                for i in range(MONTH_HOURS)
            ]
            await conn.execute(insert(MetricRollupHour), rows)
    finally:
        await db.dispose()


def test_create_a_vm_watch_it_boot_graph_it_stop_and_delete_it(
    visit: Visit,
    other_visit: Visit,
    console_server: ConsoleServer,
    vm_host: dict[str, Any],
    backend: str,
) -> None:
    page = visit.page
    account = sign_up(visit)
    nav = page.get_by_role("navigation", name="Main")
    nav.get_by_role("link", name="VMs").click()
    expect(page.get_by_text("No virtual machines yet.")).to_be_visible()
    check_a11y(visit, "VMs (empty)")

    # Price it first: the quote's total is on the button that creates it.
    page.get_by_role("link", name="New VM").first.click()
    page.get_by_role("heading", name="New virtual machine").wait_for()
    name = f"vm-{uuid.uuid4().hex[:6]}"
    page.get_by_label("Name").fill(name)
    expect(page.get_by_label("Image")).to_have_value(vm_host["id"])
    page.get_by_label("vCPUs").fill("1")
    page.get_by_label("Memory (MiB)").fill("128")
    page.get_by_label("Disk (GB)").fill("1")
    check_a11y(visit, "new VM")
    with page.expect_response(f"**{V1}/quotes") as quoted:
        page.get_by_role("button", name="Get the price").click()
    assert quoted.value.status == 201, quoted.value.text()
    total = quoted.value.json()["data"]["monthly_total"]
    quote = page.get_by_test_id("quote")
    expect(quote).to_contain_text(total)
    check_a11y(visit, "new VM (priced)")
    # A change of size asks for a new price before anything is made.
    page.get_by_label("Memory (MiB)").fill("192")
    expect(quote).to_have_count(0)
    page.get_by_label("Memory (MiB)").fill("128")
    expect(quote).to_contain_text(total)  # the price of these sizes stands
    page.evaluate("() => { window.__sameDocument = true; }")
    with page.expect_response(
        lambda r: r.url.endswith(f"{V1}/vms") and r.request.method == "POST"
    ) as made:
        quote.get_by_role("button", name="Create for").click()
    assert made.value.status == 202, made.value.text()
    vm = made.value.json()["data"]["vm"]
    assert vm["memory_mb"] == 128 and vm["storage_gb"] == 1

    # The detail page turns running from /ws, and the serial console shows the boot.
    page.wait_for_url(f"**/vms/{vm['id']}")
    expect(page.get_by_role("heading", name=name)).to_be_visible()
    status = page.locator("main .heading-row .status").first
    expect(status).to_have_attribute("data-status", "running", timeout=BOOT_MS)
    serial = page.get_by_test_id("serial-console")
    serial.scroll_into_view_if_needed()  # xterm.js draws nothing off the screen
    expect(serial).to_contain_text("NEFOS-READY", timeout=BOOT_MS)
    assert page.evaluate("() => window.__sameDocument === true")
    check_a11y(visit, "VM detail (running)")

    # The console, live: what is typed runs in the guest's shell (its prompt is on the
    # log), its answer shown.
    expect(serial).to_contain_text("/ #")
    serial_state = page.get_by_test_id("serial-status")
    page.get_by_role("button", name="Connect", exact=True).click()
    expect(serial_state).to_have_attribute("data-state", "open")
    expect(serial_state).to_have_text("Connected to the serial console.")
    live = page.get_by_test_id("serial-terminal")
    live.click()
    page.keyboard.type("echo serial-$((6*7))")
    page.keyboard.press("Enter")
    expect(live.locator(".xterm-rows")).to_contain_text("serial-42")
    check_a11y(visit, "VM detail (console open)")
    # The same user on a phone, in the dark theme: the console is busy until taken over,
    # which ends the first page's (back to the log, which shows what was typed).
    other = other_visit.page
    other.set_viewport_size({"width": 360, "height": 740})
    other.emulate_media(color_scheme="dark")
    other_visit.goto(f"/vms/{vm['id']}")
    other.wait_for_url("**/signin?next=*")
    check_a11y(other_visit, "sign-in (360 px, dark)")
    other.get_by_label("E-mail or username").fill(account["user"]["email"])
    other.get_by_label("Password").fill(PASSWORD)
    other.get_by_role("button", name="Sign in").click()
    other.get_by_role("button", name="Connect", exact=True).click()
    other_state = other.get_by_test_id("serial-status")
    expect(other_state).to_have_attribute("data-state", "refused")
    expect(other_state).to_have_text(
        "Another console is open on this VM (force=true takes it over)"
    )
    check_a11y(other_visit, "VM detail (console busy, 360 px, dark)")
    other.get_by_role("button", name="Take over").click()
    expect(other_state).to_have_attribute("data-state", "open")
    expect(serial_state).to_have_attribute("data-state", "exited")
    expect(serial_state).to_have_text("The console ended.")
    serial.scroll_into_view_if_needed()
    expect(serial).to_contain_text("serial-42")
    expect(page.get_by_role("button", name="Connect", exact=True)).to_be_focused()
    overflow = "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"
    assert other.evaluate(overflow) <= 0
    check_a11y(other_visit, "VM detail (console taken over, 360 px, dark)")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    other.screenshot(path=str(ARTIFACTS / f"vm-console-{backend}.png"), full_page=True)
    other.get_by_role("button", name="Disconnect").click()
    expect(other_state).to_have_attribute("data-state", "closed")
    assert [sorted(q) for q in _console_sockets(visit, vm["id"])] == [["ticket"]]
    theirs = _console_sockets(other_visit, vm["id"])
    assert [q.get("force") for q in theirs] == [None, ["true"]], theirs

    # The hour's graph (the page's first) grows from metrics_update, not requests.
    graphs = page.locator("section.graphs")
    expect(graphs).not_to_have_attribute("data-points", "0")
    asked = [url for _, url in visit.requests if "/monitoring/vm-metrics/" in url]
    assert len(asked) == 1 and "hours=1" in asked[0], asked

    # The month graph: 720 hourly buckets a series, in one request.
    _run(_seed_month(console_server.server.env["NEFOS_DATABASE_URL"], vm["id"], vm["project_id"]))
    metrics_calls = lambda: [  # noqa: E731
        url for _, url in visit.requests if f"{V1}/monitoring/vm-metrics/{vm['id']}" in url
    ]
    before = len(metrics_calls())
    page.evaluate("() => performance.clearMeasures('nefos:graph-render')")
    page.get_by_role("button", name="Month").click()
    expect(graphs).to_have_attribute("data-resolution", "1h")
    expect(page.get_by_test_id("cpu-graph").locator("canvas")).to_have_count(1)
    expect(page.get_by_test_id("memory-graph").locator("canvas")).to_have_count(1)
    page.wait_for_function(
        "() => performance.getEntriesByName('nefos:graph-render').length > 0",
        timeout=UI_TIMEOUT_MS,
    )
    calls = metrics_calls()[before:]
    assert len(calls) == 1 and "hours=720" in calls[0], calls
    points = int(graphs.get_attribute("data-points") or 0)
    assert points >= 2 * MONTH_HOURS, points
    render = page.evaluate("() => performance.getEntriesByName('nefos:graph-render')[0].duration")
    # The baseline, in the same page: the same number of points drawn as bare canvas
    # polylines (two series on each of two canvases of the graphs' size).
    baseline = page.evaluate(BARE_CANVAS, points // 2)
    record_timing(f"VM month graph render ({points // 2} points a series, 2 graphs)", render)
    record_timing("  baseline: the same points as bare canvas polylines", baseline)
    print(f"  ratio {render / max(baseline, 0.01):.1f}")  # noqa: T201
    # The figures beside the graph: average and max, absolute and in percent.
    expect(page.get_by_test_id("cpu-graph")).to_have_attribute(
        "aria-label",
        re.compile(r"^CPU over the last month: average [\d.]+ of 1 vCPU \(\d+%\), max "),
    )
    expect(graphs).to_contain_text("of 128 MiB (")
    check_a11y(visit, "VM detail (month graph)")
    page.screenshot(path=str(ARTIFACTS / f"vm-detail-month-{backend}.png"), full_page=True)
    # On a phone: the graphs shrink to the page, the terminal scrolls in its box.
    page.set_viewport_size({"width": 360, "height": 740})
    page.wait_for_function(f"() => ({overflow})() <= 0")
    page.set_viewport_size({"width": 1280, "height": 900})

    # The list: running, with its memory used of its 128 MiB from metrics_update.
    nav.get_by_role("link", name="VMs").click()
    row = page.locator(f'tr[data-vm="{name}"]')
    expect(row.locator(".status")).to_have_attribute("data-status", "running")
    expect(row.get_by_test_id("vm-memory")).to_contain_text("of 128 MiB (")
    expect(row.get_by_test_id("vm-cpu")).to_contain_text("of 1 vCPU (")
    check_a11y(visit, "VMs (one running)")

    # Stop (confirmed), then delete (confirmed): both end from /ws.
    row.get_by_role("link", name=name).click()
    page.get_by_role("button", name="Stop").click()
    page.get_by_role("button", name="Confirm stop").click()
    expect(status).to_have_attribute("data-status", "stopped", timeout=BOOT_MS)
    # A snapshot of the stopped VM: listed, and available when its operation ends.
    page.get_by_label("Snapshot name").fill("before")
    page.get_by_role("button", name="Take a snapshot").click()
    snapshot = page.locator('li[data-snapshot="before"] .status')
    expect(snapshot).to_have_attribute("data-status", "available", timeout=BOOT_MS)
    page.get_by_role("button", name="Delete", exact=True).click()
    page.get_by_role("button", name="Confirm delete").click()
    expect(page.get_by_text("This VM was deleted.")).to_be_visible(timeout=BOOT_MS)
    assert page.evaluate("() => window.__sameDocument === true")
    with console_server.http() as http:
        r = http.get(
            f"{V1}/vms/{vm['id']}", headers={"Authorization": f"Bearer {account['access_token']}"}
        )
        assert r.status_code == 404, r.text


def test_another_tenants_vm_url_shows_not_found(
    visit: Visit, console_server: ConsoleServer, vm_host: dict[str, Any]
) -> None:
    with console_server.http() as http:
        owner = console_server.register(http)
        auth = {"Authorization": f"Bearer {owner['access_token']}"}
        r = http.post(
            f"{V1}/vms",
            json={"name": "theirs", "image_id": vm_host["id"], "memory_mb": 128, "storage_gb": 0},
            headers=auth,
        )
        assert r.status_code == 202, r.text
        theirs = r.json()["data"]["vm_id"]
        try:
            # Running first: its start changes the host's network (a tap device),
            # which Chromium would take for a change under a page it is loading.
            deadline = time.monotonic() + BOOT_MS / 1000
            while (
                http.get(f"{V1}/vms/{theirs}", headers=auth).json()["data"]["status"] != "running"
            ):
                assert time.monotonic() < deadline, "their VM did not start"
                time.sleep(0.5)
            page = visit.page
            sign_up(visit)
            visit.goto(f"/vms/{theirs}")
            expect(page.get_by_role("heading", name="VM not found")).to_be_visible()
            expect(page.get_by_text("theirs")).to_have_count(0)
            check_a11y(visit, "VM not found")
            # The create form on a phone, in the dark theme: nothing wider than it.
            page.set_viewport_size({"width": 360, "height": 740})
            page.emulate_media(color_scheme="dark")
            visit.goto("/vms/new")
            expect(page.get_by_label("Image")).to_have_value(vm_host["id"])
            overflow = (
                "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"
            )
            assert page.evaluate(overflow) <= 0
            check_a11y(visit, "new VM (360 px, dark)")
        finally:
            http.delete(f"{V1}/vms/{theirs}", headers=auth)


def test_upload_an_image_watch_it_import_and_delete_it(
    visit: Visit, console_server: ConsoleServer, vm_host: dict[str, Any]
) -> None:
    """From the VMs page to its images: the public image is listed (not the user's to
    delete); a kernel and initrd uploaded from the browser (multipart) import into the
    libvirt host's pool and turn active without a reload; then the image is deleted."""
    page = visit.page
    account = sign_up(visit)
    page.get_by_role("navigation", name="Main").get_by_role("link", name="VMs").click()
    page.get_by_role("link", name="Images", exact=True).click()
    page.wait_for_url("**/vms/images")
    public = page.locator('tr[data-image="tiny"]')
    expect(public).to_contain_text("public")
    expect(public.get_by_role("button")).to_have_count(0)
    check_a11y(visit, "images")

    name = f"mine-{uuid.uuid4().hex[:6]}"
    page.get_by_role("button", name="Upload", exact=True).click()
    expect(page.get_by_role("alert")).to_contain_text("Give the image a name")
    page.get_by_label("Name", exact=True).fill(name)
    page.get_by_label("A kernel and an initrd").check()
    image_dir = tiny_vm_image()
    page.get_by_label("Kernel", exact=True).set_input_files(str(image_dir / "vmlinuz"))
    page.get_by_label("Initrd (optional)").set_input_files(str(image_dir / "initrd.img"))
    page.get_by_role("button", name="Upload", exact=True).click()
    mine = page.locator(f'tr[data-image="{name}"]')
    expect(mine).to_contain_text("this project")
    expect(mine.locator('.status[data-status="active"]')).to_be_visible(timeout=BOOT_MS)
    check_a11y(visit, "images (uploaded)")
    with console_server.http() as http:
        auth = {"Authorization": f"Bearer {account['access_token']}"}
        listed = http.get(f"{V1}/images", params={"kind": "vm"}, headers=auth).json()["data"]
        (row,) = [i for i in listed["items"] if i["name"] == name]
        assert row["format"] == "kernel" and row["size_bytes"] > 0, row

    mine.get_by_role("button", name=f"Delete {name}").click()
    mine.get_by_role("button", name=f"Confirm delete {name}").click()
    expect(mine).to_have_count(0, timeout=BOOT_MS)
