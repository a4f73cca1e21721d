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

import asyncio
import re
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

import httpx
from playwright.sync_api import expect

from nefos.billing import ledger
from nefos.config import async_database_url
from nefos.db.models import Wallet
from nefos.db.session import Database, begin_write
from tests.conftest import ADMIN_PASSWORD, PASSWORD, TEST_IMAGE, tiny_vm_image
from tests.console.conftest import V1, ConsoleServer, Visit, check_a11y, sign_up


@contextmanager
def signed_in_under_the_policy(
    browser: Any, console_server: ConsoleServer, account: dict[str, Any]
) -> Iterator[Any]:
    """A page of a context of its own, signed in as ``account``: unlike the tests'
    contexts, it keeps the console's Content-Security-Policy (no axe injected)."""
    context = browser.new_context(base_url=console_server.url)
    try:
        page = context.new_page()
        page.goto("/signin")
        page.get_by_label("E-mail or username").fill(account["user"]["email"])
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url("**/overview")
        yield page
    finally:
        context.close()


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


def test_top_up_by_card_declined_then_paid_under_the_consoles_own_policy(
    visit: Visit, console_server: ConsoleServer, browser: Any
) -> None:
    page = visit.page
    account = sign_up(visit)
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Billing").click()
    expect(page.get_by_test_id("wallet-balance")).to_contain_text("10.00 USD")
    page.get_by_label("Amount (USD)").fill("20.00")
    with page.expect_response(f"**{V1}/payments") as answer:
        page.get_by_role("button", name="Top up").click()
    payment = answer.value.json()["data"]
    assert (payment["provider"], payment["status"]) == ("stripe", "pending")
    # Stripe.js's card form, in the page; a declined card is Stripe's own message.
    form = page.get_by_test_id("card-payment")
    expect(form.get_by_role("heading")).to_have_text("Pay 20.00 USD by card")
    form.get_by_label("Card number").fill("4000 0000 0000 0002")
    check_a11y(visit, "billing (card form)")
    form.get_by_role("button", name="Pay", exact=True).click()
    expect(form.get_by_test_id("card-status")).to_have_text("Your card was declined.")
    expect(page.get_by_test_id("wallet-balance")).to_contain_text("10.00 USD")

    # Later, in a browser that keeps the console's Content-Security-Policy (Stripe.js
    # from the origin the platform names): the pending payment is paid from its row.
    with signed_in_under_the_policy(browser, console_server, account) as other:
        other.goto("/billing")
        row = other.locator(f'tr[data-payment="{payment["id"]}"]')
        row.get_by_role("button", name=re.compile("^Pay ")).click()
        card = other.get_by_test_id("card-payment")
        card.get_by_label("Card number").fill("4242 4242 4242 4242")
        with other.expect_response(f"**/payments/{payment['id']}/refresh") as refreshed:
            card.get_by_role("button", name="Pay", exact=True).click()
        assert refreshed.value.json()["data"]["status"] == "succeeded"
        expect(
            other.get_by_text("20.00 USD paid by card and credited to the wallet.")
        ).to_be_visible()
        expect(other.get_by_test_id("wallet-balance")).to_contain_text("30.00 USD")
        expect(card).to_have_count(0)
    # The first page learns of the credit live (billing_update).
    expect(page.get_by_test_id("wallet-balance")).to_contain_text("30.00 USD")
    expect(page.locator(f'tr[data-payment="{payment["id"]}"] .status')).to_have_attribute(
        "data-status", "succeeded"
    )

    # A method that redirects to the payer's bank comes back to /billing?paid=ID:
    # the payment is refreshed from Stripe there, and the address is cleaned.
    with console_server.http() as http:
        r = http.post(
            f"{V1}/payments",
            json={"amount": "5.00", "provider": "stripe"},
            headers=_bearer(account["access_token"]),
        )
        assert r.status_code == 201, r.text
        redirected = r.json()["data"]
    console_server.stripe.pay(redirected["provider_ref"])
    visit.goto(f"/billing?paid={redirected['id']}&payment_intent={redirected['provider_ref']}")
    expect(page.get_by_text("5.00 USD paid and credited to the wallet.")).to_be_visible()
    expect(page.get_by_test_id("wallet-balance")).to_contain_text("35.00 USD")
    assert visit.path() == "/billing" and "paid=" not in page.url


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

    # Cards are on (Stripe's stand-in): the method a top-up starts with; this one is a
    # bank transfer.
    expect(page.get_by_label("Method")).to_have_value("stripe")
    page.get_by_label("Method").select_option("manual")
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
    with signed_in_under_the_policy(browser, console_server, account) as other:
        other.goto(f"/billing/invoices/{invoice_id}")
        shown = other.frame_locator(f'iframe[title="Invoice {number}"]').get_by_text(number)
        expect(shown.first).to_be_visible()
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
    # Accepting it: its VMs name no image, and the API's message says so.
    row = page.locator('tr[data-quote="web-tier"]')
    row.get_by_role("button", name="Accept web-tier").click()
    row.get_by_role("button", name="Confirm: provision web-tier").click()
    expect(page.get_by_role("alert")).to_contain_text("image")
    expect(row.locator(".status")).to_have_attribute("data-status", "open")
    # One container with its image: accepted, made, and running on its own page.
    page.get_by_role("button", name="Remove item 1").click()
    page.get_by_label("Name").first.fill("one-box")
    page.get_by_label("CPU (cores)").fill("0.05")
    page.get_by_label("Memory", exact=True).fill("16m")
    page.get_by_label("Replicas").fill("1")
    page.get_by_label("Image (to accept)").fill(TEST_IMAGE)
    page.get_by_role("button", name="Get a quote").click()
    row = page.locator('tr[data-quote="one-box"]')
    row.get_by_role("button", name="Accept one-box").click()
    row.get_by_role("button", name="Confirm: provision one-box").click()
    made = page.get_by_test_id("quote-resources").get_by_role("link")
    expect(made).to_have_count(1)
    expect(row.locator(".status")).not_to_have_attribute("data-status", "open")
    check_a11y(visit, "quotes (accepted)")
    made.click()
    page.wait_for_url("**/containers/*")
    expect(page.locator("main .heading-row .status")).to_have_attribute("data-status", "running")
    page.get_by_role("button", name="Delete").first.click()
    page.get_by_role("button", name="Confirm delete").first.click()
    expect(page.get_by_text("This container was deleted.")).to_be_visible()
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Billing").click()

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


async def _earn(database_url: str, wallet_id: str, amount: str) -> None:
    """Revenue in the wallet, as the billing pass credits a creator's or a
    reseller's share."""
    db = Database(async_database_url(database_url))
    try:
        async with db.sessionmaker() as session:
            await begin_write(session)
            wallet = await session.get(Wallet, wallet_id)
            assert wallet is not None
            await ledger.post(session, wallet, "revenue", Decimal(amount), key=uuid.uuid4().hex)
            await session.commit()
    finally:
        await db.dispose()


def _run(coro: Any) -> Any:
    """A coroutine on a loop of its own, off the thread Playwright's loop runs on."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def test_platform_admins_see_hosts_payouts_prices_and_traffic(
    visit: Visit, other_visit: Visit, console_server: ConsoleServer
) -> None:
    admin_token = _bearer(console_server.admin_token)
    with console_server.http() as http:
        creator = console_server.register(http)
        mine = _bearer(creator["access_token"])
        wallet = http.get(f"{V1}/wallet", headers=mine).json()["data"]
        _run(_earn(console_server.server.env["NEFOS_DATABASE_URL"], wallet["id"], "40.00"))
        payouts = {}
        for amount, destination in (("12.00", "IBAN-SETTLE"), ("15.00", "IBAN-REJECT")):
            r = http.post(
                f"{V1}/billing/payout-request",
                json={"amount": amount, "method": "bank_transfer", "destination": destination},
                headers=mine,
            )
            assert r.status_code == 201, r.text
            payouts[destination] = r.json()["data"]["id"]
        balance = http.get(f"{V1}/wallet", headers=mine).json()["data"]["balance"]
        network = next(
            p
            for p in http.get(f"{V1}/products", headers=mine).json()["data"]["items"]
            if p["sku"] == "network_gb"
        )

    # Anyone else: no Admin link, and the pages do not exist for them.
    page = visit.page
    sign_up(visit)
    nav = page.get_by_role("navigation", name="Main")
    expect(nav.get_by_role("link", name="VMs")).to_be_visible()
    expect(nav.get_by_role("link", name="Admin")).to_have_count(0)
    visit.goto("/admin/payouts")
    expect(page.get_by_role("heading", name="Page not found")).to_be_visible()
    assert not [u for _, u in visit.requests if "/billing/payouts" in u], visit.requests

    # The platform's administrator signs in by username.
    admin = other_visit.page
    other_visit.goto("/signin")
    admin.get_by_label("E-mail or username").fill("admin")
    admin.get_by_label("Password").fill(ADMIN_PASSWORD)
    admin.get_by_role("button", name="Sign in").click()
    admin.wait_for_url("**/overview")
    admin.get_by_role("navigation", name="Main").get_by_role("link", name="Admin").click()
    admin.get_by_role("heading", name="Platform administration").wait_for()
    host = admin.locator('tr[data-host="podman-console"]')
    expect(host.locator(".status")).to_have_attribute("data-status", "active")
    expect(host.get_by_test_id("host-cpu")).to_contain_text(re.compile(r"^[\d.]+ of \d+ \("))
    check_a11y(other_visit, "admin: hosts")
    host.get_by_role("link", name="podman-console").click()
    admin.get_by_role("heading", name="podman-console").wait_for()
    expect(admin.get_by_test_id("cpu-graph").locator("canvas")).to_have_count(1)
    asked = [u for _, u in other_visit.requests if "/monitoring/host-metrics/" in u]
    assert len(asked) == 1 and "hours=1" in asked[0], asked
    check_a11y(other_visit, "admin: a host")

    # Payouts: the pending ones of every organisation; one settled with its transfer's
    # reference, one rejected (its amount back in the creator's wallet).
    sub = admin.get_by_role("navigation", name="Administration")
    sub.get_by_role("link", name="Payouts").click()
    settle = admin.locator(f'tr[data-payout="{payouts["IBAN-SETTLE"]}"]')
    reject = admin.locator(f'tr[data-payout="{payouts["IBAN-REJECT"]}"]')
    expect(settle).to_contain_text("12.00 USD")
    expect(reject).to_contain_text("IBAN-REJECT")
    check_a11y(other_visit, "admin: payouts")
    settle.get_by_role("button", name="Settle").click()
    settle.get_by_label("Transfer reference").fill("REF-42")
    check_a11y(other_visit, "admin: settling a payout")
    settle.get_by_role("button", name="Confirm settle").click()
    expect(admin.get_by_role("status").filter(has_text="12.00 USD paid")).to_be_visible()
    expect(settle).to_have_count(0)  # no longer pending
    reject.get_by_role("button", name="Reject").click()
    reject.get_by_label("Reason").fill("unknown account")
    reject.get_by_role("button", name="Confirm reject").click()
    expect(reject).to_have_count(0)
    admin.get_by_label("Status").select_option("any")
    expect(settle.locator(".status")).to_have_attribute("data-status", "paid")
    expect(settle).to_contain_text("REF-42")
    expect(reject.locator(".status")).to_have_attribute("data-status", "rejected")
    with console_server.http() as http:
        seen = {
            p["id"]: (p["status"], p["note"])
            for p in http.get(f"{V1}/billing/payouts", headers=mine).json()["data"]["items"]
        }
        assert seen == {
            payouts["IBAN-SETTLE"]: ("paid", "REF-42"),
            payouts["IBAN-REJECT"]: ("rejected", "unknown account"),
        }
        after = http.get(f"{V1}/wallet", headers=mine).json()["data"]["balance"]
        assert Decimal(after) == Decimal(balance) + 15

    # A price: a refused one says why; a new one is in force from now on, and the
    # SKU's history shows both.
    try:
        sub.get_by_role("link", name="Prices").click()
        row = admin.locator('tr[data-sku="network_gb"]')
        expect(row).to_contain_text(_money(network["unit_price"], network["currency"]))
        row.get_by_role("button", name="Change the price of network_gb").click()
        editor = admin.get_by_test_id("price-editor")
        expect(admin.get_by_test_id("price-history").locator("tbody tr")).to_have_count(1)
        editor.get_by_label(re.compile("^New price")).fill("-1")
        editor.get_by_role("button", name="Set the price from now on").click()
        expect(editor.get_by_role("alert")).to_be_visible()
        editor.get_by_label(re.compile("^New price")).fill("0.125")
        editor.get_by_role("button", name="Set the price from now on").click()
        expect(editor.get_by_role("status")).to_contain_text("0.125 USD per")
        expect(row).to_contain_text("0.125 USD")
        history = admin.get_by_test_id("price-history")
        expect(history.locator("tbody tr")).to_have_count(2)
        expect(history.locator("tbody tr").first).to_contain_text("in force")
        check_a11y(other_visit, "admin: prices")
        with console_server.http() as http:
            priced = http.get(f"{V1}/products", headers=mine).json()["data"]["items"]
            assert {p["sku"]: p["unit_price"] for p in priced}["network_gb"] == "0.125"

        # A product of its own: a VM flavor's hourly price; a bad name is told before
        # any request; then the flavor is retired (asked twice).
        flavor = f"c{uuid.uuid4().hex[:6]}.small"
        form = admin.get_by_test_id("flavor-form")
        form.get_by_label("Flavor", exact=True).fill("no spaces allowed")
        form.get_by_label("Price per hour").fill("0.04")
        form.get_by_role("button", name="Add the flavor").click()
        expect(form.get_by_role("alert")).to_contain_text("letters, digits")
        form.get_by_label("Flavor", exact=True).fill(flavor)
        form.get_by_label("Name").fill("Console small")
        form.get_by_role("button", name="Add the flavor").click()
        made = admin.locator(f'tr[data-sku="flavor:{flavor}"]')
        expect(made).to_contain_text("Console small")
        expect(made).to_contain_text("0.04 USD")
        expect(editor.get_by_role("status")).to_contain_text("Console small: 0.04 USD per hour")
        made.get_by_role("button", name=f"Retire flavor:{flavor}").click()
        made.get_by_role("button", name="Confirm retire").click()
        expect(admin.get_by_test_id("retired")).to_have_text(
            f"flavor:{flavor} retired: no longer offered."
        )
        expect(made).to_have_count(0)
        with console_server.http() as http:
            priced = http.get(f"{V1}/products", headers=mine).json()["data"]["items"]
            assert f"flavor:{flavor}" not in {p["sku"] for p in priced}
    finally:
        with console_server.http() as http:  # as it was, for the module's other tests
            r = http.put(
                f"{V1}/products/network_gb",
                json={"unit_price": network["unit_price"]},
                headers=admin_token,
            )
            assert r.status_code == 200, r.text

    # The platform's API traffic: what was asked above is in the request log.
    sub.get_by_role("link", name="Analytics").click()
    admin.get_by_role("heading", name="API traffic").wait_for()
    expect(admin.get_by_test_id("total-requests")).to_contain_text(re.compile(r"^[1-9]\d* \("))
    expect(admin.locator('tr[data-endpoint="POST /billing/payout-request"]')).to_be_visible()
    expect(
        admin.locator('tr[data-endpoint="POST /billing/payouts/{payout_id}/settle"]')
    ).to_contain_text("0%")
    expect(admin.get_by_test_id("traffic-graph").locator("canvas")).to_have_count(1)
    admin.get_by_role("button", name="1h").click()
    expect(admin.get_by_role("button", name="1h")).to_have_attribute("aria-pressed", "true")
    asked = [u for _, u in other_visit.requests if "/analytics/overview" in u]
    assert any("scope=platform" in u and "period=1h" in u for u in asked), asked
    check_a11y(other_visit, "admin: analytics")

    # Images: one registered from the server's files, public, imported live; deleted.
    sub.get_by_role("link", name="Images").click()
    admin.get_by_role("heading", name="Images").wait_for()
    image = f"shared-{uuid.uuid4().hex[:6]}"
    admin.get_by_label("New images are public").check()
    admin.get_by_label("Image name").last.fill(image)
    admin.get_by_label("Path").fill(str(tiny_vm_image()))
    admin.get_by_role("button", name="Register").click()
    row = admin.locator(f'tr[data-image="{image}"]')
    expect(row).to_contain_text("public")
    expect(row.locator('.status[data-status="active"]')).to_be_visible()
    check_a11y(other_visit, "admin: images")
    row.get_by_role("button", name=f"Delete {image}").click()
    row.get_by_role("button", name=f"Confirm delete {image}").click()
    expect(row).to_have_count(0)

    # Users: disabling one ends its sessions at once; enabled again, it signs in.
    sub.get_by_role("link", name="Users").click()
    email = creator["user"]["email"]
    row = admin.locator(f'tr[data-user="{email}"]')
    expect(row.get_by_test_id("user-status")).to_have_text("active")
    check_a11y(other_visit, "admin: users")
    row.get_by_role("button", name=f"Disable {email}").click()
    row.get_by_role("button", name=f"Confirm: disable {email}").click()
    expect(row.get_by_test_id("user-status")).to_have_text("disabled")
    with console_server.http() as http:
        assert http.get(f"{V1}/auth/me", headers=mine).status_code == 401
    row.get_by_role("button", name=f"Enable {email}").click()
    expect(row.get_by_test_id("user-status")).to_have_text("active")
    with console_server.http() as http:
        r = http.post(f"{V1}/auth/login", json={"email": email, "password": PASSWORD})
        assert r.status_code == 200, r.text
    # The administrator's own row offers nothing to do to oneself.
    expect(admin.locator('tr[data-user="admin@nefos.local"]')).to_contain_text("you")
