"""The console's billing, monitoring and account pages, each scenario from a fresh
sign-up, in Chromium against `nefos serve`.

What a person does: top up the wallet by bank transfer and, once the platform's
administrator confirms the money arrived (through the REST API, as they would from
their own browser), see the credit in the wallet and its ledger without reloading;
read an invoice as the API renders it; price a configuration. End a session signed in
elsewhere; create an API key and
see its secret once (and use it); create a project and an organisation, invite a
member. Create an alert rule, and be told why a webhook's address is refused. Every
page visited passes axe-core; every API call is in the OpenAPI document
(conftest.check_calls); a screenshot of the last page is kept.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import httpx
from playwright.sync_api import expect

from tests.conftest import PASSWORD
from tests.console.conftest import V1, ConsoleServer, Visit, check_a11y, sign_up


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _money(amount: str, currency: str) -> str:
    """As the console shows money (console/src/lib/format.ts): thousands grouped."""
    whole, _, fraction = amount.partition(".")
    return f"{int(whole):,}{'.' + fraction if fraction else ''} {currency}"


def _organisation_of(http: httpx.Client, account: dict[str, Any]) -> str:
    r = http.get(f"{V1}/wallet", headers=_bearer(account["access_token"]))
    assert r.status_code == 200, r.text
    return str(r.json()["data"]["organisation_id"])


def test_top_up_by_transfer_confirmed_by_the_platform_shows_in_the_ledger_live(
    visit: Visit, console_server: ConsoleServer, browser: Any
) -> None:
    page = visit.page
    account = sign_up(visit)
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Billing").click()
    page.get_by_role("heading", name="Billing", exact=True).wait_for()
    expect(page.get_by_test_id("wallet-balance")).to_contain_text("10.00 USD")
    ledger = page.get_by_test_id("ledger")
    expect(ledger.locator("tr[data-kind=adjustment]")).to_have_count(1)
    check_a11y(visit, "billing")

    # More places than the currency has: told before any request is made.
    page.get_by_label("Amount (USD)").fill("10.001")
    page.get_by_role("button", name="Top up").click()
    expect(page.get_by_role("alert")).to_contain_text("at most 2 decimal places")

    page.get_by_label("Amount (USD)").fill("25.00")
    page.evaluate("() => { window.__sameDocument = true; }")
    with page.expect_response(f"**{V1}/payments") as answer:
        page.get_by_role("button", name="Top up").click()
    response = answer.value
    assert response.status == 201, response.text()
    assert response.request.headers.get("idempotency-key"), "a payment without Idempotency-Key"
    payment = response.json()["data"]
    assert (payment["provider"], payment["status"]) == ("manual", "pending")
    expect(page.get_by_role("status").filter(has_text="requested (pending)")).to_be_visible()
    row = page.locator(f'tr[data-payment="{payment["id"]}"]')
    expect(row.locator(".status")).to_have_attribute("data-status", "pending")
    expect(page.get_by_test_id("wallet-balance")).to_contain_text("10.00 USD")

    # The platform's administrator confirms the transfer; the billing_update event
    # brings the credit to the open page.
    with console_server.http() as http:
        r = http.post(
            f"{V1}/payments/{payment['id']}/confirm",
            headers=_bearer(console_server.admin_token),
        )
        assert r.status_code == 200 and r.json()["data"]["status"] == "succeeded", r.text
    expect(page.get_by_test_id("wallet-balance")).to_contain_text("35.00 USD")
    top_up = ledger.locator("tr[data-kind=top_up]")
    expect(top_up).to_have_count(1)
    expect(top_up).to_contain_text("+25.00 USD")
    expect(top_up).to_contain_text("35.00 USD")
    expect(row.locator(".status")).to_have_attribute("data-status", "succeeded")
    assert page.evaluate("() => window.__sameDocument === true")
    check_a11y(visit, "billing (credited)")

    # An invoice for a past month, made and finalized by the platform (nothing was
    # used then: paid at once), read as the API renders it.
    with console_server.http() as http:
        org = _organisation_of(http, account)
        admin = _bearer(console_server.admin_token)
        r = http.post(
            f"{V1}/invoices",
            json={
                "organisation_id": org,
                "period_start": "2026-01-01T00:00:00Z",
                "period_end": "2026-02-01T00:00:00Z",
            },
            headers=admin,
        )
        assert r.status_code == 201, r.text
        invoice_id = r.json()["data"]["id"]
        r = http.post(f"{V1}/invoices/{invoice_id}/finalize", headers=admin)
        assert r.status_code == 200, r.text
        number = r.json()["data"]["number"]
    page.get_by_role("navigation", name="Billing").get_by_role("link", name="Invoices").click()
    page.get_by_role("link", name=number).click()
    expect(page.get_by_role("heading", name=f"Invoice {number}")).to_be_visible()
    frame = page.frame_locator(f'iframe[title="Invoice {number}"]')
    expect(frame.get_by_text(number).first).to_be_visible()
    assert page.locator("iframe").get_attribute("sandbox") == ""
    check_a11y(visit, "invoice")
    # The test's context bypasses the console's Content-Security-Policy (axe is
    # injected inline); under the policy itself the frame shows the invoice too.
    strict = browser.new_context(base_url=console_server.url)
    try:
        other = strict.new_page()
        other.goto("/signin")
        other.get_by_label("E-mail or username").fill(account["user"]["email"])
        other.get_by_label("Password").fill(PASSWORD)
        other.get_by_role("button", name="Sign in").click()
        other.wait_for_url("**/overview")
        other.goto(f"/billing/invoices/{invoice_id}")
        shown = other.frame_locator(f'iframe[title="Invoice {number}"]').get_by_text(number)
        expect(shown.first).to_be_visible()
    finally:
        strict.close()
    page.get_by_role("link", name="All invoices").click()
    expect(page.get_by_role("link", name=number)).to_be_visible()
    check_a11y(visit, "invoices")

    # A quote for two VMs and a container, priced by the catalogue.
    page.get_by_role("navigation", name="Billing").get_by_role("link", name="Quotes").click()
    expect(page.get_by_text("No quotes yet.")).to_be_visible()
    check_a11y(visit, "quotes (none)")
    page.get_by_label("Name").first.fill("web-tier")
    page.get_by_label("How many").fill("2")
    page.get_by_role("button", name="Add an item").click()
    page.get_by_label("Replicas").fill("3")
    with page.expect_response(f"**{V1}/quotes") as answer:
        page.get_by_role("button", name="Get a quote").click()
    assert answer.value.status == 201, answer.value.text()
    quote = answer.value.json()["data"]
    assert quote["lines"]
    heading = page.get_by_role("heading", name=re.compile(r"^web-tier: .* a month$"))
    expect(heading).to_contain_text(_money(quote["monthly_total"], quote["currency"]))
    expect(page.locator('tr[data-quote="web-tier"]')).to_be_visible()
    check_a11y(visit, "quotes")

    page.get_by_role("navigation", name="Billing").get_by_role("link", name="Reseller").click()
    expect(page.get_by_text("None of your organisations is a reseller.")).to_be_visible()
    check_a11y(visit, "reseller (none)")


def test_sessions_an_api_key_shown_once_a_project_and_an_organisation_with_a_member(
    visit: Visit, console_server: ConsoleServer
) -> None:
    page = visit.page
    account = sign_up(visit)
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Account").click()
    page.get_by_role("heading", name="Account").wait_for()
    check_a11y(visit, "account")
    page.get_by_label("Name", exact=True).fill("Ada Console")
    page.get_by_role("button", name="Save profile").click()
    expect(page.get_by_text("Profile saved.")).to_be_visible()

    # Signed in elsewhere too (a script's login): that session is ended from here.
    expect(page.locator("tr[data-session]")).to_have_count(1)
    with console_server.http() as http:
        r = http.post(
            f"{V1}/auth/login", json={"email": account["user"]["email"], "password": PASSWORD}
        )
        assert r.status_code == 200, r.text
        elsewhere = _bearer(r.json()["data"]["access_token"])
        page.reload()
        other = page.locator('tr[data-current="false"]')
        expect(other).to_have_count(1)
        other.get_by_role("button", name="End").click()
        other.get_by_role("button", name="Confirm end").click()
        expect(page.locator("tr[data-session]")).to_have_count(1)
        assert http.get(f"{V1}/auth/me", headers=elsewhere).status_code == 401
    expect(page.locator('tr[data-current="true"]')).to_be_visible()

    nav = page.get_by_role("navigation", name="Account")
    nav.get_by_role("link", name="API keys").click()
    expect(page.get_by_text("No API keys yet.")).to_be_visible()
    check_a11y(visit, "API keys (none)")
    name = f"ci-{uuid.uuid4().hex[:6]}"
    page.get_by_label("Name").fill(name)
    page.get_by_label("Read the account").check()
    page.get_by_role("button", name="Create key").click()
    secret = page.get_by_test_id("shown-once")
    expect(secret).to_have_text(re.compile(r"^nfs_"))
    key = secret.inner_text().strip()
    row = page.locator(f'tr[data-key="{name}"]')
    expect(row).to_contain_text("account:read")
    check_a11y(visit, "API keys (secret shown)")
    # The key works, with the scopes it was given.
    with console_server.http() as http:
        r = http.get(f"{V1}/auth/me", headers={"X-API-Key": key})
        assert r.status_code == 200, r.text
        assert r.json()["data"]["name"] == "Ada Console"
    page.get_by_role("button", name="I have saved it").click()
    expect(page.get_by_test_id("shown-once")).to_have_count(0)
    # Never again: not after a reload either, only its prefix.
    page.reload()
    expect(row).to_be_visible()
    expect(page.get_by_text(key)).to_have_count(0)
    row.get_by_role("button", name=f"Revoke {name}").click()
    row.get_by_role("button", name=f"Confirm revoke {name}").click()
    expect(row).to_contain_text("revoked")
    with console_server.http() as http:
        r = http.get(f"{V1}/auth/me", headers={"X-API-Key": key})
        assert r.status_code == 401, r.text

    # A project in the personal organisation; then deleted.
    page.get_by_role("navigation", name="Account").get_by_role("link", name="Projects").click()
    expect(page.locator('tr[data-project="default"]')).to_be_visible()
    check_a11y(visit, "projects")
    page.get_by_label("Name").fill("staging")
    page.get_by_role("button", name="Create project").click()
    project = page.locator('tr[data-project="staging"]')
    expect(project).to_be_visible()
    project.get_by_role("button", name="Delete staging").click()
    project.get_by_role("button", name="Confirm delete staging").click()
    expect(project).to_have_count(0)

    # An organisation of one's own, and a member invited into it.
    page.get_by_role("navigation", name="Account").get_by_role("link", name="Organisations").click()
    check_a11y(visit, "organisations")
    org_name = f"Team {uuid.uuid4().hex[:6]}"
    page.get_by_label("Name").fill(org_name)
    page.get_by_role("button", name="Create organisation").click()
    org_row = page.locator(f'tr[data-org="{org_name}"]')
    expect(org_row).to_contain_text("owner")
    org_row.get_by_role("link", name=org_name).click()
    expect(page.get_by_role("heading", name=org_name)).to_be_visible()
    invitee = f"invitee-{uuid.uuid4().hex[:6]}@example.com"
    page.get_by_label("E-mail").fill(invitee)
    page.get_by_label("Role", exact=True).select_option("viewer")
    page.get_by_role("button", name="Invite").click()
    expect(page.get_by_test_id("shown-once")).not_to_be_empty()
    expect(page.get_by_text(f"{invitee} as viewer")).to_be_visible()
    check_a11y(visit, "organisation")


def test_an_alert_rule_is_created_and_deleted_and_a_refused_webhook_says_why(
    visit: Visit, console_server: ConsoleServer
) -> None:
    page = visit.page
    sign_up(visit)
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Monitoring").click()
    expect(page.get_by_text("No alert rules yet.")).to_be_visible()
    expect(page.get_by_text("No alerts.")).to_be_visible()
    check_a11y(visit, "monitoring (none)")

    page.get_by_label("Name").fill("hot cpu")
    page.get_by_label("Metric").select_option("cpu_percent")
    page.get_by_label("Comparison").select_option("gt")
    page.get_by_label("Threshold").fill("90")
    page.get_by_label("Severity").select_option("critical")
    page.get_by_role("button", name="Create rule").click()
    rule = page.locator('tr[data-rule="hot cpu"]')
    expect(rule).to_contain_text("CPU (%) > 90")
    expect(rule).to_contain_text("critical")
    check_a11y(visit, "monitoring (a rule)")
    # The same name again: the API's own message.
    page.get_by_label("Name").fill("hot cpu")
    page.get_by_role("button", name="Create rule").click()
    expect(page.get_by_role("alert")).to_be_visible()
    rule.get_by_role("button", name="Disable hot cpu").click()
    expect(rule).to_contain_text("disabled")
    rule.get_by_role("button", name="Delete hot cpu").click()
    rule.get_by_role("button", name="Confirm delete hot cpu").click()
    expect(rule).to_have_count(0)

    page.get_by_role("navigation", name="Monitoring").get_by_role("link", name="Webhooks").click()
    expect(page.get_by_text("No webhooks yet.")).to_be_visible()
    check_a11y(visit, "webhooks (none)")
    page.get_by_label("URL").fill("http://127.0.0.1:9/hook")
    page.get_by_role("button", name="Create webhook").click()
    expect(page.get_by_role("alert")).to_contain_text("Webhook URL refused")
    check_a11y(visit, "webhooks (refused)")
