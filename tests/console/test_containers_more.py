"""The console's container detail and services pages, each scenario from a fresh
sign-up, in Chromium against real Podman.

What a person does: create a container, open a terminal in it and run a command,
scale it to two replicas watching the operation's progress, read each replica's logs
and follow one's output,
stop it; find it among the services, see its instances' health and check history,
run a load test of it and read the result's percentiles. Every page passes axe-core;
every API call is in the OpenAPI document and every socket opens with a ticket
(conftest.check_calls); a screenshot of the last page is kept.
"""

from __future__ import annotations

import uuid

from playwright.sync_api import expect

from nefos.services.containers import LABEL_SLOT
from tests.api.test_containers import engine_containers
from tests.conftest import TEST_IMAGE
from tests.console.conftest import ConsoleServer, Visit, check_a11y, sign_up


def _create(visit: Visit, name: str, ports: str = "") -> None:
    page = visit.page
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Containers").click()
    page.get_by_role("link", name="New container").first.click()
    page.get_by_label("Image").fill(TEST_IMAGE)
    page.get_by_label("Name").fill(name)
    if ports:
        page.get_by_label("Ports").fill(ports)
    page.get_by_label("Replicas").fill("1")
    page.get_by_role("button", name="Create").click()
    page.wait_for_url("**/containers/*")
    expect(page.get_by_role("heading", name=name)).to_be_visible()
    expect(page.locator("main .heading-row .status")).to_have_attribute("data-status", "running")


def test_a_containers_terminal_scale_logs_and_stop(
    visit: Visit, console_server: ConsoleServer
) -> None:
    page = visit.page
    sign_up(visit)
    name = f"box-{uuid.uuid4().hex[:6]}"
    _create(visit, name)
    expect(
        page.locator('[data-testid="replica-states"] [data-replica="0"] .status')
    ).to_have_attribute("data-status", "running")
    check_a11y(visit, "container detail (running)")

    # A terminal: xterm.js is loaded only now (its own chunk), the socket opened with a
    # ticket; what is typed runs in the replica and its output is drawn.
    assert not any("xterm" in url for _, url in visit.requests)
    page.get_by_role("button", name="Open terminal").click()
    status = page.get_by_test_id("terminal-status")
    expect(status).to_have_attribute("data-state", "open")
    expect(status).to_have_text("Connected to replica 0.")
    assert any("xterm" in url for _, url in visit.requests)
    terminal = page.get_by_test_id("terminal")
    terminal.click()
    page.keyboard.type("echo hel''lo")
    page.keyboard.press("Enter")
    expect(terminal.locator(".xterm-rows")).to_contain_text("hello")
    check_a11y(visit, "container detail (terminal open)")
    page.keyboard.type("exit 3")
    page.keyboard.press("Enter")
    expect(status).to_have_attribute("data-state", "exited")
    expect(status).to_have_text("The command exited with code 3.")

    # Scale to two: the operation's progress arrives by operation_update events, then
    # the second replica shows, running.
    page.get_by_role("spinbutton", name="Replicas").fill("2")
    page.get_by_label("Strategy").select_option("rolling")
    page.get_by_role("button", name="Scale").click()
    operation = page.get_by_test_id("operation")
    expect(operation).to_contain_text("container.scale")
    expect(operation).to_have_attribute("data-status", "succeeded")
    expect(operation.locator("progress")).to_have_attribute("value", "100")
    expect(page.get_by_test_id("replicas")).to_have_text("2")
    expect(
        page.locator('[data-testid="replica-states"] [data-replica="1"] .status')
    ).to_have_attribute("data-status", "running")
    # Logs of each replica, read again after the operation; one replica's alone.
    expect(page.get_by_role("heading", name="Replica 1", exact=False)).to_have_count(1)
    page.get_by_label("Replica", exact=True).first.select_option("1")
    expect(page.get_by_role("heading", name="Replica 0 (")).to_have_count(0)
    expect(page.get_by_role("heading", name="Replica 1 (")).to_be_visible()
    check_a11y(visit, "container detail (two replicas)")

    # Follow replica 1's output: a line it writes now shows without a refresh.
    page.get_by_role("button", name="Follow", exact=True).click()
    expect(page.get_by_role("status").filter(has_text="Following the output")).to_be_visible()
    container_id = page.url.rstrip("/").rsplit("/", 1)[1]
    (engine,) = [e for e in engine_containers(container_id) if e.labels.get(LABEL_SLOT) == "1"]
    marker = f"followed-{uuid.uuid4().hex[:8]}"
    # The stream is open once the API has read the engine once: write until it shows.
    log = page.get_by_label("Logs of replica 1")
    for _ in range(60):
        said = engine.exec_run(["sh", "-c", f"echo {marker} > /proc/1/fd/1"])
        assert said.exit_code == 0, said.output
        try:
            expect(log).to_contain_text(marker, timeout=1000)
            break
        except AssertionError:
            continue
    expect(log).to_contain_text(marker)
    page.get_by_role("button", name="Stop following").click()
    expect(page.get_by_role("button", name="Follow", exact=True)).to_be_visible()

    # Stop: the operation ends and the container shows stopped.
    page.get_by_role("button", name="Stop").click()
    expect(operation).to_contain_text("container.stop")
    expect(operation).to_have_attribute("data-status", "succeeded")
    expect(page.locator("main .heading-row .status")).to_have_attribute("data-status", "stopped")
    expect(page.get_by_role("button", name="Start")).to_be_enabled()
    # A terminal in a stopped container is refused with the API's message.
    page.get_by_role("button", name="Open a new terminal").click()
    expect(status).to_have_attribute("data-state", "refused")
    expect(status).not_to_have_text("")
    check_a11y(visit, "container detail (stopped)")


def test_a_service_health_and_a_load_test(visit: Visit, console_server: ConsoleServer) -> None:
    page = visit.page
    sign_up(visit)
    name = f"web-{uuid.uuid4().hex[:6]}"
    _create(visit, name, ports="8080")

    page.get_by_role("navigation", name="Main").get_by_role("link", name="Services").click()
    row = page.locator(f'tr[data-service="{name}"]')
    # Health turns passing live (service_health_changed), without a reload.
    expect(row.locator(".status")).to_have_attribute("data-status", "passing")
    check_a11y(visit, "services")
    row.get_by_role("link", name=name).click()
    expect(page.get_by_role("heading", name=name)).to_be_visible()
    expect(page.get_by_test_id("service-health").locator(".status")).to_have_attribute(
        "data-status", "passing"
    )
    instance = page.locator('[data-instance="0"]')
    expect(instance.get_by_role("table")).to_be_visible()
    expect(instance.get_by_role("table").locator(".status").first).to_have_attribute(
        "data-status", "passing"
    )
    expect(page.get_by_text("No load test of this service yet.")).to_be_visible()
    check_a11y(visit, "service")

    # A bad threshold: the API's message, field by field.
    page.get_by_label("Virtual users").fill("2")
    page.get_by_label("Duration (seconds)").fill("2")
    page.get_by_label("Thresholds").fill("p95 <<< fast")
    page.get_by_role("button", name="Start load test").click()
    expect(page.get_by_role("alert")).to_contain_text("thresholds[0]")

    page.get_by_label("Thresholds").fill("p95 < 5000\nerror_rate < 50%")
    page.get_by_role("button", name="Start load test").click()
    result = page.get_by_test_id("load-test")
    expect(result).to_have_attribute("data-status", "completed")
    expect(result).to_contain_text("p95")
    expect(result.locator(".status", has_text="passed")).to_have_count(2)
    expect(page.locator("tr[data-test]")).to_have_count(1)
    expect(page.locator("tr[data-test]")).to_contain_text("passed")
    check_a11y(visit, "service (load test done)")

    # A phone in the dark theme: no page wider than the screen, and still readable.
    page.set_viewport_size({"width": 360, "height": 740})
    page.emulate_media(color_scheme="dark")
    overflow = "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"
    assert page.evaluate(overflow) <= 0
    check_a11y(visit, "service (360 px, dark)")
    page.get_by_role("link", name=name).last.click()
    expect(page.get_by_role("button", name="Open terminal")).to_be_visible()
    page.get_by_role("button", name="Open terminal").click()
    expect(page.get_by_test_id("terminal-status")).to_have_attribute("data-state", "open")
    assert page.evaluate(overflow) <= 0
    check_a11y(visit, "container detail (360 px, dark, terminal open)")
