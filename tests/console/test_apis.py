"""The console's API hosting and marketplace pages, in Chromium, as two people, each from
a fresh sign-up in a browser context of their own.

A creator deploys an API from the test image (built locally by
scripts/build-test-image.sh: busybox httpd on 8080; no registry), sees it running and
passing its health check without a reload, and publishes it with a free plan. A
consumer finds it in the marketplace, reads its documentation, subscribes and is shown
the key once; the test calls the gateway with that key over HTTP, and the consumer's
usage page shows the call. The creator's call log (followed as it streams) and metrics
show it; the consumer reviews the API and the creator replies. Every page passes
axe-core; every API call is a route of the OpenAPI document (conftest.check_calls).
"""

from __future__ import annotations

import json
import re
import uuid

import httpx
from playwright.sync_api import expect

from tests.api.test_apis import OPENAPI
from tests.conftest import TEST_IMAGE
from tests.console.conftest import (
    UI_TIMEOUT_MS,
    ConsoleServer,
    Visit,
    check_a11y,
    sign_up,
)

OVERFLOW = "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"
#: What sticks out past the right edge, for the message when something does.
WIDE = (
    "() => [...document.querySelectorAll('main *')]"
    ".filter(e => e.getBoundingClientRect().right > document.documentElement.clientWidth + 1)"
    ".slice(0, 8).map(e => e.tagName + '.' + e.className + ' ' + e.textContent.slice(0, 40))"
)


def test_deploy_publish_subscribe_and_call_an_api_as_two_people(
    visit: Visit, other_visit: Visit, console_server: ConsoleServer
) -> None:
    creator, consumer = visit.page, other_visit.page

    # --- the creator deploys an API and sees it come up, live ---------------------
    sign_up(visit)
    creator.get_by_role("navigation", name="Main").get_by_role("link", name="My APIs").click()
    expect(creator.get_by_text("No APIs yet.")).to_be_visible()
    check_a11y(visit, "my APIs (empty)")
    creator.get_by_role("link", name="Deploy an API").first.click()
    creator.get_by_role("heading", name="Deploy an API").wait_for()
    check_a11y(visit, "deploy an API")
    name = f"weather{uuid.uuid4().hex[:6]}"
    creator.get_by_label("Name").fill(name)
    creator.get_by_label("Image").fill(TEST_IMAGE)
    creator.get_by_label("Port").fill("8080")
    creator.get_by_label("Health check path").fill("/index.html")
    creator.get_by_label("Environment").fill("MODE=production")
    creator.get_by_label("OpenAPI document").fill(json.dumps(OPENAPI))
    creator.evaluate("() => { window.__sameDocument = true; }")
    creator.get_by_role("button", name="Deploy").click()

    creator.wait_for_url("**/apis/*")
    expect(creator.get_by_role("heading", name=name)).to_be_visible()
    # Running, then passing its health check: both arrive through /ws.
    heading = creator.locator(".heading-row")
    expect(heading.locator(".status").first).to_have_attribute("data-status", "running")
    expect(heading.locator('.status[data-status="passing"]')).to_be_visible()
    expect(creator.get_by_role("cell", name="MODE")).to_be_visible()
    assert creator.evaluate("() => window.__sameDocument === true")
    check_a11y(visit, "API detail (running)")
    gateway = creator.get_by_test_id("gateway-url").inner_text()
    slug = gateway.rstrip("/").rsplit("/", 1)[1]

    # Published with a free plan of 100 calls a month.
    title = f"Forecasts {uuid.uuid4().hex[:6]}"
    creator.get_by_label("Title").fill(title)
    creator.get_by_label("Summary").fill("Weather forecasts for any city")
    creator.get_by_label("Category").fill("weather")
    creator.get_by_label("Plan name").fill("Hobby")
    creator.get_by_label("Included calls a month").fill("100")
    creator.get_by_role("button", name="Publish", exact=True).click()
    expect(creator.get_by_role("link", name=title)).to_be_visible()
    detail = "/" + creator.url.split("/", 3)[3]
    expect(creator.get_by_test_id("subscribers")).to_have_text("0")
    check_a11y(visit, "API detail (published)")

    # --- the consumer: the landing page, then the marketplace -----------------------
    other_visit.goto("/")
    expect(consumer.get_by_role("heading", level=1)).to_contain_text("Sell your APIs")
    expect(consumer.get_by_role("link", name=title)).to_be_visible()
    check_a11y(other_visit, "landing")
    sign_up(other_visit)
    consumer.get_by_role("navigation", name="Main").get_by_role("link", name="Prices").click()
    expect(consumer.get_by_role("cell", name="vcpu_hour")).to_be_visible()
    check_a11y(other_visit, "prices")
    consumer.get_by_role("navigation", name="Main").get_by_role("link", name="Marketplace").click()
    consumer.get_by_label("Search").fill(title)
    consumer.get_by_role("button", name="Search").click()
    consumer.get_by_role("link", name=title).click()
    expect(consumer.get_by_role("heading", name=title, level=1)).to_be_visible()
    # Its documentation, from the OpenAPI document the API carries.
    expect(consumer.get_by_role("heading", name="GET /forecast")).to_be_visible()
    check_a11y(other_visit, "listing (signed in)")

    consumer.get_by_role("button", name="Subscribe to Hobby").click()
    key = consumer.get_by_test_id("new-key").inner_text().strip()
    assert key.startswith("nfc_"), key
    expect(consumer.get_by_text("shown only this once")).to_be_visible()
    check_a11y(other_visit, "listing (subscribed, key shown)")
    # Shown once: the listing read again shows the subscription, never the key.
    consumer.reload()
    expect(consumer.get_by_text("Your organisation subscribes to the")).to_be_visible()
    expect(consumer.get_by_test_id("new-key")).to_have_count(0)
    assert key not in consumer.content()

    # --- a call through the gateway with that key -------------------------------------
    with httpx.Client(base_url=console_server.url, timeout=30) as http:
        answer = http.get(f"/gw/{slug}/index.html", headers={"X-API-Key": key})
        assert answer.status_code == 200, answer.text
        assert "nefos test page" in answer.text

    nav = consumer.get_by_role("navigation", name="Main")
    nav.get_by_role("link", name="Subscriptions").click()
    row = consumer.locator(f'tr[data-subscription="{title}"]')
    expect(row.get_by_role("cell", name="1 of 100 (1%)")).to_be_visible()
    check_a11y(other_visit, "subscriptions")
    consumer.go_back()
    consumer.get_by_role("link", name="Usage, keys and plan").click()
    consumer.wait_for_url("**/subscriptions/*")
    expect(consumer.get_by_test_id("usage-calls")).to_have_text("1")
    expect(consumer.get_by_test_id("usage-units")).to_have_text("1 of 100 (1%)")
    check_a11y(other_visit, "subscription")
    # On a phone in the dark theme: nothing wider than the screen (tables scroll in
    # their own box), and still no serious accessibility violation.
    consumer.set_viewport_size({"width": 360, "height": 740})
    consumer.emulate_media(color_scheme="dark")
    assert consumer.evaluate(OVERFLOW) <= 0, consumer.evaluate(WIDE)
    check_a11y(other_visit, "subscription (360 px, dark)")
    consumer.set_viewport_size({"width": 1280, "height": 900})
    consumer.emulate_media(color_scheme="light")
    # Another key: shown once too; then revoked.
    consumer.get_by_label("New key's name").fill("ci")
    consumer.get_by_role("button", name="Create a key").click()
    second = consumer.get_by_test_id("new-key").inner_text().strip()
    assert second.startswith("nfc_") and second != key
    prefix = second[:10]  # the key's display prefix: nfc_ and 6 characters
    consumer.get_by_role("button", name=f"Revoke {prefix}", exact=True).click()
    consumer.get_by_role("button", name=f"Confirm revoke {prefix}", exact=True).click()
    expect(consumer.get_by_role("status").filter(has_text="revoked")).to_be_visible()
    expect(consumer.get_by_role("cell", name="revoked")).to_be_visible()

    # --- the creator sees the call: its log (followed as it streams) and metrics ------
    creator.get_by_role("button", name="Refresh logs").click()
    log = creator.get_by_test_id("call-log")
    expect(log.get_by_role("cell", name="GET /index.html")).to_have_count(1)
    creator.get_by_role("button", name="Refresh metrics").click()
    expect(creator.get_by_test_id("metrics-calls")).to_have_text("1")
    expect(creator.get_by_role("cell", name="GET /index.html")).to_have_count(2)  # + endpoints
    # The consumer's subscription reached the creator's page through /ws.
    expect(creator.get_by_test_id("subscribers")).to_have_text("1")
    creator.get_by_role("button", name="Follow calls").click()
    expect(creator.get_by_text("Following the call log")).to_be_visible()
    with httpx.Client(base_url=console_server.url, timeout=30) as http:
        answer = http.get(f"/gw/{slug}/index.html?again=1", headers={"X-API-Key": key})
        assert answer.status_code == 200, answer.text
    expect(log.get_by_role("cell", name="GET /index.html")).to_have_count(2, timeout=UI_TIMEOUT_MS)
    creator.get_by_role("button", name="Stop following").click()
    check_a11y(visit, "API detail (calls)")
    creator.set_viewport_size({"width": 360, "height": 740})
    assert creator.evaluate(OVERFLOW) <= 0, creator.evaluate(WIDE)
    creator.set_viewport_size({"width": 1280, "height": 900})

    # --- a review, and the creator's reply ---------------------------------------------
    consumer.get_by_role("link", name=title).click()
    consumer.get_by_role("button", name="Write a review").click()
    consumer.get_by_label("Stars").select_option("4")
    consumer.get_by_label("Your review").fill("Quick and accurate.")
    consumer.get_by_role("button", name="Post review").click()
    expect(consumer.get_by_text("Quick and accurate.")).to_be_visible()
    expect(consumer.get_by_role("button", name="Edit your review")).to_be_visible()
    check_a11y(other_visit, "listing (reviewed)")

    creator.get_by_role("link", name=title).click()
    expect(creator.get_by_text("Quick and accurate.")).to_be_visible()
    # The seller replies to reviews and never writes one.
    expect(creator.get_by_role("button", name="Write a review")).to_have_count(0)
    creator.get_by_role("button", name="Reply", exact=True).click()
    creator.get_by_label("Your reply").fill("Thank you!")
    creator.get_by_role("button", name="Post reply").click()
    expect(creator.get_by_text("Thank you!")).to_be_visible()

    # Revenue and payouts: a free plan earned nothing, and a payout says why not.
    creator.get_by_role("navigation", name="Main").get_by_role("link", name="My APIs").click()
    expect(creator.locator(f'tr[data-api="{name}"] .status').first).to_have_attribute(
        "data-status", "running"
    )
    creator.get_by_role("link", name="Revenue and payouts").click()
    expect(creator.get_by_role("cell", name=title)).to_be_visible()
    # The portal's paths are the console's on a page load too, not the API's.
    creator.reload()
    expect(creator.get_by_role("cell", name=title)).to_be_visible()
    check_a11y(visit, "revenue and payouts")
    creator.get_by_label("Amount").fill("10.00")
    creator.get_by_role("button", name="Request payout").click()
    expect(creator.get_by_role("alert")).to_contain_text(re.compile("available", re.I))
    check_a11y(visit, "revenue and payouts (refused)")

    # --- the creator edits the listing: a new title and plan, off and on the market,
    # then private, with an invitation made (its token shown once) and revoked -------
    visit.goto(detail)
    creator.get_by_role("button", name="Edit the listing").click()
    expect(creator.get_by_label("Title")).to_have_value(title)
    expect(creator.get_by_label("Included calls a month")).to_have_value("100")
    renamed = f"{title} v2"
    creator.get_by_label("Title").fill(renamed)
    creator.get_by_role("button", name="Add a plan").click()
    creator.get_by_label("Plan name").nth(1).fill("Pro")
    creator.get_by_label("Included calls a month").nth(1).fill("10")
    creator.get_by_label("Price a call").fill("0.01")
    check_a11y(visit, "API detail (listing edited)")
    creator.get_by_role("button", name="Save the listing").click()
    expect(creator.get_by_role("link", name=renamed)).to_be_visible()
    expect(creator.get_by_text("Pro: 10 calls a month free, then 0.01")).to_be_visible()
    # The consumer keeps the plan it subscribed to (a changed listing, same subscription).
    consumer.get_by_role("navigation", name="Main").get_by_role(
        "link", name="Subscriptions"
    ).click()
    expect(consumer.locator(f'tr[data-subscription="{renamed}"]')).to_be_visible()

    market = creator.get_by_role("region", name="Marketplace")
    creator.get_by_role("button", name="Unpublish").click()
    expect(market.locator('.status[data-status="unpublished"]')).to_be_visible()
    creator.get_by_role("button", name="Publish again").click()
    expect(market.locator('.status[data-status="published"]')).to_be_visible()

    creator.get_by_role("button", name="Edit the listing").click()
    creator.get_by_label("Visibility").select_option("private")
    creator.get_by_role("button", name="Save the listing").click()
    expect(market).to_contain_text("private")
    invited = f"friend-{uuid.uuid4().hex[:6]}@example.com"
    creator.get_by_label("E-mail address or organisation id").fill(invited)
    creator.get_by_role("button", name="Invite", exact=True).click()
    token = creator.get_by_test_id("shown-once").inner_text().strip()
    assert token.startswith("nfl_"), token
    row = creator.locator(f'tr[data-invitation="{invited}"]')
    expect(row.locator('.status[data-status="pending"]')).to_be_visible()
    check_a11y(visit, "API detail (private listing, invitation)")
    creator.get_by_role("button", name="I have saved it").click()
    expect(creator.get_by_test_id("shown-once")).to_have_count(0)
    row.get_by_role("button", name=f"Revoke the invitation of {invited}").click()
    expect(row.locator('.status[data-status="revoked"]')).to_be_visible()
    # An address that is not one is the API's own message.
    creator.get_by_label("E-mail address or organisation id").fill("not an address")
    creator.get_by_role("button", name="Invite", exact=True).click()
    expect(market.get_by_role("alert")).to_be_visible()

    # --- the creator changes the API: at once (description, units), then a new
    # deployment (two replicas) rolled out with its progress ------------------------
    creator.get_by_role("button", name="Change the API").click()
    creator.get_by_label("Units", exact=False).first.fill("GET /index.html")
    creator.get_by_role("button", name="Save changes").click()
    expect(creator.get_by_role("alert").filter(has_text="Units: Line 1")).to_be_visible()
    creator.get_by_label("Units", exact=False).first.fill("GET /index.html 3")
    creator.get_by_label("Description").last.fill("Forecasts, three units a page")
    check_a11y(visit, "API detail (changing)")
    creator.get_by_role("button", name="Save changes").click()
    expect(creator.get_by_test_id("api-description")).to_have_text("Forecasts, three units a page")
    creator.get_by_role("button", name="Change the API").click()
    expect(creator.get_by_label("Units", exact=False).first).to_have_value("GET /index.html 3")
    creator.get_by_label("Replicas", exact=True).fill("2")
    creator.get_by_role("button", name="Save changes").click()
    second = creator.locator('tr[data-deployment="2"]')
    expect(second.locator('.status[data-status="active"]')).to_be_visible()
    expect(creator.get_by_test_id("api-replicas")).to_have_text("2")
