"""The web console's first pages, each scenario from a fresh sign-up, in Chromium.

What a person does: sign up and land on the overview; create a container and see it
turn running without reloading, then delete it; browse the marketplace without an
account; open another tenant's container by its URL and be told it is not found.
Every page visited passes axe-core; every API call is in the OpenAPI document
(conftest.check_calls); a screenshot of the last page is kept.
"""

from __future__ import annotations

import re
import uuid

from playwright.sync_api import expect

from tests.api.test_apis import api_body
from tests.api.test_marketplace import listing_body
from tests.conftest import PASSWORD, TEST_IMAGE
from tests.console.conftest import (
    UI_TIMEOUT_MS,
    V1,
    ConsoleServer,
    Visit,
    check_a11y,
    record_timing,
    sign_up,
)


def test_sign_up_lands_on_the_overview_with_the_wallet_and_quota(
    visit: Visit, console_server: ConsoleServer
) -> None:
    page = visit.page
    account = sign_up(visit)
    expect(page.get_by_text(account["user"]["email"])).to_be_visible()
    # The sign-up credit, as the API gives it, and the figures of an empty project.
    expect(page.get_by_test_id("wallet-balance")).to_contain_text("10.00")
    expect(page.get_by_test_id("containers-total")).to_have_text("0")
    expect(page.get_by_role("heading", name="Quota used")).to_be_visible()
    # Services, APIs and open alerts beside them; the wallet's 30 days: the sign-up
    # credit's step from 0.00.
    expect(page.get_by_test_id("services-total")).to_have_text("0")
    expect(page.get_by_test_id("apis-total")).to_have_text("0")
    expect(page.get_by_test_id("alerts-open")).to_have_text("0")
    trend = page.get_by_test_id("wallet-trend")
    expect(trend).to_have_attribute("aria-label", re.compile(r"from 0\.00 USD to 10\.00 USD$"))
    expect(page.get_by_text("30 days: +10.00 USD")).to_be_visible()
    check_a11y(visit, "overview")

    # A reload keeps the session (the refresh token renews the in-memory access token)
    # and times the overview from navigation start to its figures on the page.
    page.reload()
    expect(page.get_by_test_id("wallet-balance")).to_contain_text("10.00")
    # The balance can show before the other figures have come: the mark is set when
    # the last of them has.
    page.wait_for_function(
        "() => performance.getEntriesByName('nefos:overview-ready').length > 0",
        timeout=UI_TIMEOUT_MS,
    )
    ready = page.evaluate("() => performance.getEntriesByName('nefos:overview-ready')[0].startTime")
    record_timing("overview interactive (reload, from navigation start)", ready)
    # The access token is in memory only; the tab keeps the refresh token, which the
    # reload spent (the server rotates it) for a new one.
    stored = page.evaluate("() => JSON.stringify({...sessionStorage, ...localStorage})")
    assert account["access_token"] not in stored
    assert account["refresh_token"] not in stored
    assert page.evaluate("() => sessionStorage.getItem('nefos.refresh')")

    # Sign out: back to sign-in, and the overview asks for it again.
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url("**/signin")
    visit.goto("/overview")
    page.wait_for_url("**/signin?next=%2Foverview")
    check_a11y(visit, "sign-in")
    # Signing in from a page that asked for it goes back to that page.
    visit.goto("/containers")
    page.wait_for_url("**/signin?next=%2Fcontainers")
    page.get_by_label("E-mail or username").fill(account["user"]["email"])
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/containers")
    page.get_by_role("heading", name="Containers").wait_for()


def test_create_a_container_watch_it_run_live_then_delete_it(
    visit: Visit, console_server: ConsoleServer
) -> None:
    page = visit.page
    sign_up(visit)
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Containers").click()
    expect(page.get_by_text("No containers yet.")).to_be_visible()
    check_a11y(visit, "containers (empty)")

    page.get_by_role("link", name="New container").first.click()
    page.get_by_role("heading", name="New container").wait_for()
    check_a11y(visit, "new container")
    name = f"web-{uuid.uuid4().hex[:6]}"
    page.get_by_label("Image").fill(TEST_IMAGE)
    page.get_by_label("Name").fill(name)
    page.get_by_label("Replicas").fill("1")
    # A marker in the page's memory: still there at the end means no reload happened.
    page.evaluate("() => { window.__sameDocument = true; }")
    page.get_by_role("button", name="Create").click()

    page.wait_for_url("**/containers/*")
    expect(page.get_by_role("heading", name=name)).to_be_visible()
    # The page never polls: "running" arrives through /ws (container_status_update).
    expect(page.locator("main .status").first).to_have_attribute(
        "data-status", "running", timeout=UI_TIMEOUT_MS
    )
    assert page.evaluate("() => window.__sameDocument === true")
    # Its graphs: the hour's from one request, the day's from another.
    graphs = page.locator("section.graphs")
    expect(page.get_by_test_id("cpu-graph").locator("canvas")).to_have_count(1)
    expect(page.get_by_test_id("memory-graph").locator("canvas")).to_have_count(1)
    page.get_by_role("button", name="Day").click()
    expect(page.get_by_role("button", name="Day")).to_have_attribute("aria-pressed", "true")
    expect(graphs).to_have_attribute("data-resolution", re.compile(r"^(raw|1m|1h)$"))
    asked = [url for _, url in visit.requests if re.search(r"/containers/[^/]+/metrics", url)]
    assert [u.rsplit("period=", 1)[-1] for u in asked] == ["1h", "24h"], asked
    check_a11y(visit, "container detail")

    page.get_by_role("navigation", name="Main").get_by_role("link", name="Containers").click()
    row = page.locator(f'tr[data-container="{name}"]')
    expect(row.locator(".status")).to_have_attribute("data-status", "running")
    # Its memory in use, from the list's usage or the next metrics_update.
    expect(row.get_by_test_id("container-memory")).to_contain_text(
        re.compile(r"^[\d.]+ (B|KiB|MiB|GiB)( of [\d.]+ (MiB|GiB))? \((<1|[\d.]+)%\)$")
    )
    check_a11y(visit, "containers (one running)")
    row.get_by_role("button", name=f"Delete {name}").click()
    row.get_by_role("button", name=f"Confirm delete {name}").click()
    # Gone from the list when its last event ("deleted") arrives.
    expect(row).to_have_count(0, timeout=UI_TIMEOUT_MS)
    expect(page.get_by_text("No containers yet.")).to_be_visible()
    assert page.evaluate("() => window.__sameDocument === true")
    # The socket was opened with a ticket, never a token (conftest.check_calls too).
    assert visit.sockets and all("ticket=" in url for url in visit.sockets)


def test_the_marketplace_shows_a_published_listing_to_an_anonymous_visitor(
    visit: Visit, console_server: ConsoleServer
) -> None:
    with console_server.http() as http:
        seller = console_server.register(http)
        auth = {"Authorization": f"Bearer {seller['access_token']}"}
        title = f"Weather {uuid.uuid4().hex[:6]}"
        r = http.post(f"{V1}/apis", json=api_body(f"w{uuid.uuid4().hex[:8]}"), headers=auth)
        assert r.status_code == 202, r.text
        api_id = r.json()["data"]["api_id"]
        r = http.post(
            f"{V1}/marketplace/publish", json=listing_body(api_id, title=title), headers=auth
        )
        assert r.status_code == 201, r.text

    page = visit.page
    visit.goto("/marketplace")
    expect(page.get_by_role("link", name=title)).to_be_visible()
    check_a11y(visit, "marketplace")
    page.get_by_label("Search").fill("forecasting")
    page.get_by_role("button", name="Search").click()
    expect(page.get_by_role("link", name=title)).to_be_visible()
    page.get_by_label("Search").fill("nothingmatchesthisword")
    page.get_by_role("button", name="Search").click()
    expect(page.get_by_text("No listings match this search.")).to_be_visible()
    check_a11y(visit, "marketplace (no match)")

    page.get_by_label("Search").fill("")
    page.get_by_role("button", name="Search").click()
    page.get_by_role("link", name=title).click()
    expect(page.get_by_role("heading", name=title)).to_be_visible()
    expect(page.get_by_role("cell", name="Basic")).to_be_visible()
    expect(page.get_by_role("cell", name="Hobby")).to_be_visible()
    check_a11y(visit, "listing")
    # Anonymous throughout: no call carried credentials, so none renewed any.
    assert not any("/auth/" in url for _, url in visit.requests)


def test_another_tenants_container_url_shows_not_found(
    visit: Visit, console_server: ConsoleServer
) -> None:
    with console_server.http() as http:
        owner = console_server.register(http)
        r = http.post(
            f"{V1}/containers",
            json={"name": "theirs", "image": TEST_IMAGE},
            headers={"Authorization": f"Bearer {owner['access_token']}"},
        )
        assert r.status_code == 202, r.text
        theirs = r.json()["data"]["container_id"]

    page = visit.page
    sign_up(visit)
    visit.goto(f"/containers/{theirs}")
    expect(page.get_by_role("heading", name="Container not found")).to_be_visible()
    expect(page.get_by_text("theirs")).to_have_count(0)
    check_a11y(visit, "container not found")
    # A page the console does not have at all: its own "not found", not a server error.
    visit.goto("/no-such-page")
    expect(page.get_by_role("heading", name="Page not found")).to_be_visible()


def test_a_phone_in_the_dark_theme_by_keyboard_alone(
    visit: Visit, console_server: ConsoleServer
) -> None:
    page = visit.page
    page.set_viewport_size({"width": 360, "height": 740})
    page.emulate_media(color_scheme="dark")
    sign_up(visit)
    assert page.evaluate("() => matchMedia('(prefers-color-scheme: dark)').matches")
    background = page.evaluate("() => getComputedStyle(document.body).backgroundColor")
    assert background == "rgb(18, 20, 23)", background
    overflow = "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"
    assert page.evaluate(overflow) <= 0
    check_a11y(visit, "overview (360 px, dark)")

    # On a page load the first Tab reaches the skip link; the menu opens from the
    # keyboard, and a link in it is followed with Enter.
    page.reload()
    page.get_by_role("heading", name="Overview").wait_for()
    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="Skip to content")).to_be_focused()
    menu = page.get_by_role("button", name="Menu")
    menu.focus()
    page.keyboard.press("Enter")
    expect(menu).to_have_attribute("aria-expanded", "true")
    containers = page.get_by_role("navigation", name="Main").get_by_role("link", name="Containers")
    containers.focus()
    page.keyboard.press("Enter")
    page.wait_for_url("**/containers")
    expect(page.get_by_role("heading", name="Containers")).to_be_visible()
    # The move put the focus on the new page's content.
    expect(page.locator("main")).to_be_focused()
    assert page.evaluate(overflow) <= 0
    check_a11y(visit, "containers (360 px, dark)")
    page.get_by_role("link", name="New container").first.focus()
    page.keyboard.press("Enter")
    page.get_by_role("heading", name="New container").wait_for()
    assert page.evaluate(overflow) <= 0
    check_a11y(visit, "new container (360 px, dark)")


def test_the_accessibility_check_finds_what_it_should(visit: Visit) -> None:
    # The checker itself: a page with an unlabelled field and unreadable text fails it.
    visit.page.set_content(
        '<html lang="en"><body><main><input type="text">'
        '<p style="color:#777;background:#888">faint</p></main></body></html>'
    )
    try:
        check_a11y(visit, "a broken page")
    except AssertionError as exc:
        assert "label" in str(exc) and "color-contrast" in str(exc)
    else:
        raise AssertionError("axe found nothing wrong with an unlabelled field")
