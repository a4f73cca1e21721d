"""Invoices: lines rated from usage records (hand-computed, and a rounding property
over random usage), price changes and reseller margins, finalized invoices frozen
in the service and in the database, credit notes refunding the wallet, seed 004's
billing history, tenancy, and the billing engine's ``run_due``."""

from __future__ import annotations

import asyncio
import math
import re
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, insert, select, text, update
from sqlalchemy.exc import DBAPIError

from nefos.billing import catalogue, invoices, ledger
from nefos.billing.catalogue import EPOCH
from nefos.db.models import (
    BillingAccount,
    Invoice,
    InvoiceLine,
    LedgerEntry,
    Organisation,
    Product,
    UsageRecord,
    Wallet,
)
from nefos.db.session import begin_write
from nefos.db.types import new_id, utcnow
from nefos.domain.access import Role
from tests.api.conftest import World
from tests.conftest import Account

D = Decimal
V1 = "/api/v1"
MARCH = datetime(2025, 3, 1, tzinfo=UTC)
APRIL = datetime(2025, 4, 1, tzinfo=UTC)
MARCH_BODY = {"period_start": "2025-03-01T00:00:00Z", "period_end": "2025-04-01T00:00:00Z"}
NUMBER = re.compile(r"^NEF-\d{4}-\d{6}$")


# --- helpers ----------------------------------------------------------------------------
def rec(
    org_id: str,
    kind: str,
    resource_id: str,
    start: datetime,
    seconds: int,
    *,
    state: str = "running",
    cpu: int = 0,
    mem: int = 0,
    gb: int = 0,
    n: int = 1,
    net: int = 0,
    name: str | None = None,
    flavor: str | None = None,
    charge_id: str | None = None,
) -> dict[str, Any]:
    """A usage record as the metering writes one."""
    return {
        "id": new_id(),
        "key": f"{kind}:{resource_id}:{start.isoformat()}:{state}:{uuid.uuid4().hex[:6]}",
        "organisation_id": org_id,
        "project_id": "p",
        "resource_kind": kind,
        "resource_id": resource_id,
        "resource_name": name or f"{kind}-{resource_id[:6]}",
        "state": state,
        "started_at": start,
        "ended_at": start + timedelta(seconds=seconds),
        "seconds": seconds,
        "cpu_milli": cpu,
        "memory_mb": mem,
        "storage_gb": gb,
        "instances": n,
        "flavor": flavor,
        "network_bytes": net,
        "charge_id": charge_id,
        "created_at": utcnow(),
    }


async def add_usage(core: Any, rows: Iterable[dict[str, Any]]) -> None:
    async with core.db.sessionmaker() as session:
        await begin_write(session)
        await session.execute(insert(UsageRecord), list(rows))
        await session.commit()


async def set_prices(core: Any, at: datetime = MARCH - timedelta(days=40), **prices: str) -> None:
    """The default catalogue, with ``prices`` (sku=price) from ``at`` on."""
    async with core.db.sessionmaker() as session:
        await begin_write(session)
        await catalogue.ensure_defaults(session, "USD")
        for sku, price in prices.items():
            await catalogue.set_price(session, sku=sku, currency="USD", unit_price=D(price), at=at)
        await session.commit()


async def org_of(client: Any, user: Account) -> str:
    r = await client.get(f"{V1}/projects/{user.project_id}", headers=user.headers)
    assert r.status_code == 200, r.text
    return str(r.json()["data"]["organisation_id"])


async def ok(
    client: Any, method: str, path: str, who: Account, status: int = 200, **kw: Any
) -> Any:
    r = await client.request(method, V1 + path, headers=who.headers, **kw)
    assert r.status_code == status, r.text
    return r.json()["data"]


async def draft(client: Any, admin: Account, org_id: str, **extra: Any) -> dict[str, Any]:
    body = {"organisation_id": org_id, **MARCH_BODY, **extra}
    data: dict[str, Any] = await ok(client, "POST", "/invoices", admin, 201, json=body)
    return data


async def finalized(client: Any, admin: Account, org_id: str) -> dict[str, Any]:
    made = await draft(client, admin, org_id)
    data: dict[str, Any] = await ok(client, "POST", f"/invoices/{made['id']}/finalize", admin)
    return data


def half_up(x: Fraction, places: int = 2) -> Decimal:
    scaled = x * 10**places
    n = (
        math.floor(scaled + Fraction(1, 2))
        if scaled >= 0
        else -math.floor(-scaled + Fraction(1, 2))
    )
    return D(n).scaleb(-places)


def exact_quantities(r: dict[str, Any]) -> dict[str, Fraction]:
    """A record's quantity of each SKU, exactly (as rating defines them)."""
    running = r["state"] == "running"
    s, n = r["seconds"], r["instances"]
    out: dict[str, Fraction] = {}
    if running and r["cpu_milli"]:
        out["vcpu_hour"] = Fraction(s * r["cpu_milli"] * n, 3_600_000)
    if running and r["memory_mb"]:
        out["ram_gb_hour"] = Fraction(s * r["memory_mb"] * n, 1024 * 3600)
    if r["state"] != "network" and r["storage_gb"]:
        out["storage_gb_day"] = Fraction(s * r["storage_gb"] * n, 86400)
    if r["network_bytes"]:
        out["network_gb"] = Fraction(r["network_bytes"], 10**9)
    return out


def lines_by(detail: dict[str, Any]) -> dict[tuple[str | None, str | None], dict[str, Any]]:
    return {(ln["resource_id"], ln["sku"]): ln for ln in detail["lines"]}


# --- rating into lines --------------------------------------------------------------------
async def test_invoice_lines_are_the_hand_computed_amounts(client, app, register, admin):
    core = app.state.core
    await set_prices(core)  # the defaults: 0.05 vCPU-h, 0.005 GB-h, 0.10 GB-day, 0.01 GB
    user, other = await register(), await register()
    org, other_org = await org_of(client, user), await org_of(client, other)
    c, vm, vol = new_id(), new_id(), new_id()
    h = 3600
    await add_usage(
        core,
        [
            # A container, 1 vCPU and 2 GiB with 10 GB of disk, for three hours.
            *(
                rec(org, "container", c, MARCH + timedelta(hours=i), h, cpu=1000, mem=2048, gb=10)
                for i in range(3)
            ),
            rec(org, "container", c, MARCH + timedelta(hours=3), h, state="stopped", gb=10),
            rec(org, "container", c, MARCH, h, state="network", net=5 * 10**9),
            # A VM, 2 vCPUs and 4 GiB with 20 GB, for two hours.
            rec(org, "vm", vm, MARCH + timedelta(days=3), 2 * h, cpu=2000, mem=4096, gb=20),
            # A 50 GB volume for a day.
            rec(org, "volume", vol, MARCH + timedelta(days=9), 24 * h, state="allocated", gb=50),
            # Not this invoice's: another organisation's, and April's.
            rec(other_org, "container", new_id(), MARCH, h, cpu=1000),
            rec(org, "container", c, APRIL, h, cpu=1000),
        ],
    )
    data = await draft(client, admin, org)
    assert data["status"] == "draft" and data["number"] is None
    assert data["kind"] == "invoice" and data["currency"] == "USD"
    assert data["period"] == "2025-03-01 to 2025-03-31"
    got = {k: (ln["quantity"], ln["unit_price"], ln["amount"]) for k, ln in lines_by(data).items()}
    assert got == {
        (c, "vcpu_hour"): ("3", "0.05", "0.15"),
        (c, "ram_gb_hour"): ("6", "0.005", "0.03"),
        # 10 GB for 4 hours: 1.666... GB-days.
        (c, "storage_gb_day"): ("1.666666667", "0.10", "0.17"),
        (c, "network_gb"): ("5", "0.01", "0.05"),
        (vm, "vcpu_hour"): ("4", "0.05", "0.20"),
        (vm, "ram_gb_hour"): ("8", "0.005", "0.04"),
        # 20 GB for 2 hours: 1.666... GB-days at 0.10 is 0.1666...: 0.17, rounded once.
        (vm, "storage_gb_day"): ("1.666666667", "0.10", "0.17"),
        (vol, "storage_gb_day"): ("50", "0.10", "5.00"),
    }
    assert data["subtotal"] == data["total"] == "5.81"
    assert [ln["position"] for ln in data["lines"]] == list(range(8))
    units = {ln["sku"]: ln["unit"] for ln in data["lines"]}
    assert units["vcpu_hour"] == "vCPU-hour" and units["storage_gb_day"] == "GB-day"

    # Generated again, a draft's lines are replaced (new usage is included).
    await add_usage(core, [rec(org, "vm", vm, MARCH + timedelta(days=4), h, cpu=2000)])
    again = await draft(client, admin, org)
    assert again["id"] == data["id"]
    assert lines_by(again)[(vm, "vcpu_hour")]["amount"] == "0.30"
    assert again["total"] == "5.91"

    # Finalized: numbered, due in billing_invoice_due_days, open until all is charged.
    done = await ok(client, "POST", f"/invoices/{data['id']}/finalize", admin)
    assert NUMBER.match(done["number"]), done["number"]
    assert done["status"] == "open" and done["paid_at"] is None
    finalized_at = datetime.fromisoformat(done["finalized_at"])
    assert datetime.fromisoformat(done["due_at"]) - finalized_at == timedelta(days=14)
    assert done["lines"] == again["lines"]


async def test_big_instances_do_not_overflow_the_sums(client, app, register, admin):
    core = app.state.core
    await set_prices(core)
    org = await org_of(client, await register())
    c = new_id()
    # 3 replicas of 256 GiB for an hour: 2.8e9 MiB-seconds, past a 32-bit integer.
    await add_usage(core, [rec(org, "container", c, MARCH, 3600, cpu=64000, mem=262144, n=3)])
    data = await draft(client, admin, org)
    got = {ln["sku"]: (ln["quantity"], ln["amount"]) for ln in data["lines"]}
    assert got == {"vcpu_hour": ("192", "9.60"), "ram_gb_hour": ("768", "3.84")}


async def test_batch_rating_of_every_organisation_equals_rating_each_alone(app):
    core = app.state.core
    async with core.db.sessionmaker() as session:
        await begin_write(session)
        await session.execute(Product.__table__.delete().where(Product.currency == "XTS"))
        await catalogue.ensure_defaults(session, "XTS")
        await catalogue.set_price(
            session,
            sku="vcpu_hour",
            currency="XTS",
            unit_price=D("0.07"),
            at=MARCH + timedelta(days=10),
        )
        orgs = []
        for i in range(3):
            org = Organisation(name=f"Batch {i}", slug=f"batch-{uuid.uuid4().hex[:10]}")
            session.add(org)
            orgs.append(org)
        await session.flush()
        rows = [
            rec(
                o.id,
                "container",
                f"{o.id[:8]}-{r}",
                MARCH + timedelta(days=d),
                3600,
                cpu=250 * (r + 1),
                mem=512,
                gb=r,
            )
            for o in orgs
            for r in range(3)
            for d in (1, 12, 20)
        ]
        await session.execute(insert(UsageRecord), rows)
        margins = {orgs[1].id: D("12.5")}
        book = await catalogue.price_book(session, "XTS", MARCH, APRIL)
        batch = await invoices.rate_organisations(
            session, book, MARCH, APRIL, margins, only=[o.id for o in orgs]
        )
        for o in orgs:
            alone = await invoices.rating.rate_span(
                session,
                book,
                MARCH,
                APRIL,
                UsageRecord.organisation_id == o.id,
                margin_percent=margins.get(o.id, D(0)),
            )
            assert batch[o.id] == alone
            # The price change splits each resource's CPU line in two.
            assert sum(1 for ln in alone if ln.sku == "vcpu_hour") == 6
        await session.rollback()


# A record of one of three resources: a container, a VM or a volume.
_records = st.lists(
    st.fixed_dictionaries(
        {
            "resource": st.integers(0, 3),
            "state": st.sampled_from(["running", "running", "stopped", "network"]),
            "minute": st.integers(0, 31 * 24 * 60 - 1),
            "seconds": st.one_of(
                st.integers(1, 7200), st.sampled_from([1200, 2400, 4800, 600, 3600])
            ),
            "cpu": st.one_of(st.just(0), st.integers(1, 8000), st.sampled_from([1000, 500, 333])),
            "mem": st.one_of(st.just(0), st.integers(1, 65536)),
            "gb": st.integers(0, 500),
            "n": st.integers(1, 5),
            "net": st.one_of(st.just(0), st.integers(1, 10**11)),
        }
    ),
    min_size=1,
    max_size=25,
)
# Prices that put thirds of an hour on half-cent boundaries (a third of a vCPU-hour
# at 0.165 is exactly 0.055), and any others.
_price = st.one_of(
    st.sampled_from([D("0.165"), D("0.195"), D("0.03"), D("0.15"), D("0.045"), D("0.0075")]),
    st.decimals(min_value=D("0.0001"), max_value=D("3"), places=4),
)
_PRICES = {sku: D("0.01") for sku in ("vcpu_hour", "ram_gb_hour", "storage_gb_day", "network_gb")}


def _one(seconds: int) -> dict[str, Any]:
    """One container record of a vCPU and nothing else."""
    return {
        "resource": 0,
        "state": "running",
        "minute": 0,
        "seconds": seconds,
        "cpu": 1000,
        "mem": 0,
        "gb": 0,
        "n": 1,
        "net": 0,
    }


_margin = st.one_of(st.just(D(0)), st.decimals(min_value=D(0), max_value=D(50), places=2))


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@example(  # 20 minutes of a vCPU at 0.165: exactly 0.055, so 0.06
    records=[_one(seconds=1200)], prices={**_PRICES, "vcpu_hour": D("0.165")}, margin=D(0)
)
@example(  # 80 minutes at 0.03 plus 12.5%: exactly 0.045, so 0.05
    records=[_one(seconds=4800)], prices={**_PRICES, "vcpu_hour": D("0.03")}, margin=D("12.5")
)
@given(
    records=_records,
    prices=st.fixed_dictionaries(
        {"vcpu_hour": _price, "ram_gb_hour": _price, "storage_gb_day": _price, "network_gb": _price}
    ),
    margin=_margin,
)
async def test_rounding_moves_no_line_and_no_total_more_than_half_a_minor_unit(
    app, records, prices, margin
):
    """For random usage, prices and margins: each line's amount is its exact amount
    (quantity times price, as fractions) rounded half-up once, and the total is
    within half a cent per line of the exact sum."""
    core = app.state.core
    kinds = ["container", "vm", "volume", "container"]
    async with core.db.sessionmaker() as session:
        await begin_write(session)
        org = Organisation(name="Property", slug=f"prop-{uuid.uuid4().hex[:12]}")
        session.add(org)
        await session.flush()
        currency = "XTS"  # the ISO code for tests: no one else's prices
        await session.execute(Product.__table__.delete().where(Product.currency == currency))
        for sku, price in prices.items():
            info = catalogue.describe(sku)
            session.add(
                Product(
                    sku=sku,
                    meter=info.meter,
                    currency=currency,
                    unit_price=price,
                    name=info.name,
                    effective_from=EPOCH,
                )
            )
        rows = []
        for r in records:
            kind = kinds[r["resource"]]
            state = r["state"]
            if kind == "volume" and state != "network":
                state = "allocated"
            rows.append(
                rec(
                    org.id,
                    kind,
                    f"{org.id[:8]}-r{r['resource']}",
                    MARCH + timedelta(minutes=r["minute"]),
                    r["seconds"],
                    state=state,
                    cpu=r["cpu"],
                    mem=r["mem"],
                    gb=r["gb"],
                    n=r["n"],
                    net=r["net"] if state == "network" else 0,
                )
            )
        await session.execute(insert(UsageRecord), rows)
        invoice = await invoices.generate(session, org, currency, MARCH, APRIL, margin)
        lines = [
            (ln.resource_id, ln.sku, ln.unit_price, ln.amount)
            for ln in await invoices.lines_of(session, invoice.id)
        ]
        invoice_total = invoice.total
        await session.rollback()

    exact: dict[tuple[str, str], Fraction] = {}
    for r in rows:
        for sku, qty in exact_quantities(r).items():
            k = (r["resource_id"], sku)
            exact[k] = exact.get(k, Fraction(0)) + qty
    factor = 1 + Fraction(margin) / 100
    amounts = {k: q * Fraction(prices[k[1]]) * factor for k, q in exact.items()}
    assert {(rid, sku) for rid, sku, _, _ in lines} == set(amounts)
    for rid, sku, unit_price, amount in lines:
        assert sku is not None and rid is not None
        assert amount == half_up(amounts[(rid, sku)]), sku
        with_margin = prices[sku] * factor.numerator / factor.denominator
        assert unit_price == with_margin.quantize(D("1e-9"))
    total = sum((amount for _, _, _, amount in lines), D(0))
    assert invoice_total == total
    drift = abs(Fraction(total) - sum(amounts.values(), Fraction(0)))
    assert drift <= Fraction(1, 200) * len(lines)


async def test_a_price_change_mid_period_splits_the_line(client, app, register, admin):
    core = app.state.core
    await set_prices(core, vcpu_hour="0.10")
    await set_prices(core, at=MARCH + timedelta(days=15), vcpu_hour="0.20")
    user = await register()
    org = await org_of(client, user)
    c = new_id()
    await add_usage(
        core,
        [
            rec(org, "container", c, MARCH + timedelta(days=2), 3600, cpu=1000),
            rec(org, "container", c, MARCH + timedelta(days=3), 3600, cpu=1000),
            rec(org, "container", c, MARCH + timedelta(days=20), 3600, cpu=2000),
        ],
    )
    data = await draft(client, admin, org)
    cpu = [
        (ln["quantity"], ln["unit_price"], ln["amount"])
        for ln in data["lines"]
        if ln["sku"] == "vcpu_hour"
    ]
    assert sorted(cpu) == [("2", "0.10", "0.20"), ("2", "0.20", "0.40")]


async def test_a_resellers_margin_is_on_its_customers_invoice(world: World, app, admin):
    w = world
    core = app.state.core
    await set_prices(core)
    reseller, child = w.ids["org_id"], w.a_org_ids[2]
    async with core.db.sessionmaker() as session:
        await begin_write(session)
        await ledger.account(session, reseller, currency="USD", threshold=D(5))
        await session.execute(
            update(BillingAccount)
            .where(BillingAccount.organisation_id == reseller)
            .values(margin_percent=D("20"))
        )
        await session.commit()
    c = new_id()
    await add_usage(core, [rec(child, "container", c, MARCH, 36000, cpu=1000, mem=1024)])
    data = await draft(w.client, admin, child)
    got = {ln["sku"]: (ln["quantity"], ln["unit_price"], ln["amount"]) for ln in data["lines"]}
    # 10 vCPU-hours at 0.05 + 20%, 10 GB-hours at 0.005 + 20%.
    assert got == {"vcpu_hour": ("10", "0.06", "0.60"), "ram_gb_hour": ("10", "0.006", "0.06")}
    await ok(w.client, "POST", f"/invoices/{data['id']}/finalize", admin)

    # The reseller sees its customer's invoices with include_children; the customer's
    # invoice is not the reseller's own.
    own = await ok(w.client, "GET", "/invoices", w.owner, params={"organisation_id": reseller})
    assert own["items"] == []
    both = await ok(
        w.client,
        "GET",
        "/invoices",
        w.owner,
        params={"organisation_id": reseller, "include_children": "true"},
    )
    assert [i["id"] for i in both["items"]] == [data["id"]]
    assert both["invoices"] == both["items"]
    # A viewer of the reseller reads it too (billing.read); B does not.
    viewer = w.roles[Role.VIEWER]
    got_one = await ok(w.client, "GET", f"/invoices/{data['id']}", viewer)
    assert got_one["total"] == "0.66"
    r = await w.client.get(f"{V1}/invoices/{data['id']}", headers=w.other.headers)
    assert r.status_code == 404 and r.json()["error"]["code"] == "NOT_FOUND"


# --- finalized invoices are frozen --------------------------------------------------------
async def _raw(core: Any, sql: str, **params: Any) -> None:
    async with core.db.engine.begin() as conn:
        await conn.execute(text(sql), params)


async def test_a_finalized_invoice_cannot_change(client, app, register, admin):
    core = app.state.core
    await set_prices(core)
    user = await register()
    org = await org_of(client, user)
    await add_usage(core, [rec(org, "container", new_id(), MARCH, 7200, cpu=1000)])
    inv = await finalized(client, admin, org)
    line_id = inv["lines"][0]["id"]

    # The service refuses: regenerating, finalizing again, voiding a paid one.
    for method, path, body in (
        ("POST", "/invoices", {"organisation_id": org, **MARCH_BODY}),
        ("POST", f"/invoices/{inv['id']}/finalize", None),
    ):
        r = await client.request(method, V1 + path, headers=admin.headers, json=body)
        assert r.status_code == 409, r.text
        assert r.json()["error"]["code"] == "CONFLICT"
    # An overlapping period is refused too.
    r = await client.post(
        f"{V1}/invoices",
        headers=admin.headers,
        json={
            "organisation_id": org,
            "period_start": "2025-03-15T00:00:00Z",
            "period_end": "2025-04-15T00:00:00Z",
        },
    )
    assert r.status_code == 409, r.text

    # So does the database, whatever the SQL.
    for sql in (
        "UPDATE invoice_lines SET amount = 0 WHERE id = :line",
        "UPDATE invoice_lines SET description = 'changed' WHERE id = :line",
        "DELETE FROM invoice_lines WHERE id = :line",
        "INSERT INTO invoice_lines (id, invoice_id, position, resource_name, meter, description,"
        " quantity, unit, unit_price, amount) VALUES ('x', :inv, 9, '', 'cpu', '', 1, 'h', 1, 1)",
        "UPDATE invoices SET total = 0 WHERE id = :inv",
        "UPDATE invoices SET number = 'NEF-1999-000001' WHERE id = :inv",
        "UPDATE invoices SET period_end = period_start WHERE id = :inv",
        "UPDATE invoices SET status = 'draft' WHERE id = :inv",
    ):
        with pytest.raises(DBAPIError, match="finalized invoice cannot change"):
            await _raw(core, sql, line=line_id, inv=inv["id"])
    # What may move: open to paid (or void), with its stamp.
    await _raw(
        core,
        "UPDATE invoices SET status = 'paid', paid_at = finalized_at WHERE id = :inv",
        inv=inv["id"],
    )
    with pytest.raises(DBAPIError, match="finalized invoice cannot change"):
        await _raw(core, "UPDATE invoices SET status = 'open' WHERE id = :inv", inv=inv["id"])
    with pytest.raises(DBAPIError, match="finalized invoice cannot change"):
        await _raw(core, "UPDATE invoices SET paid_at = NULL WHERE id = :inv", inv=inv["id"])
    r = await client.post(f"{V1}/invoices/{inv['id']}/void", headers=admin.headers)
    assert r.status_code == 409, r.text
    after = await ok(client, "GET", f"/invoices/{inv['id']}", admin)
    assert after["lines"] == inv["lines"] and after["total"] == inv["total"] == "0.10"


async def test_a_draft_changes_freely_and_a_void_one_does_not(client, app, register, admin):
    core = app.state.core
    await set_prices(core)
    org = await org_of(client, await register())
    await add_usage(core, [rec(org, "container", new_id(), MARCH, 3600, cpu=1000)])
    made = await draft(client, admin, org)
    await _raw(
        core,
        "UPDATE invoice_lines SET description = 'edited' WHERE invoice_id = :inv",
        inv=made["id"],
    )
    voided = await ok(client, "POST", f"/invoices/{made['id']}/void", admin)
    assert voided["status"] == "void" and voided["voided_at"] is not None
    with pytest.raises(DBAPIError, match="finalized invoice cannot change"):
        await _raw(core, "DELETE FROM invoice_lines WHERE invoice_id = :inv", inv=made["id"])
    for path in (f"/invoices/{made['id']}/finalize", f"/invoices/{made['id']}/void"):
        r = await client.post(V1 + path, headers=admin.headers)
        assert r.status_code == 409, r.text
    # The period stays invoiced: no new draft of it.
    r = await client.post(
        f"{V1}/invoices", headers=admin.headers, json={"organisation_id": org, **MARCH_BODY}
    )
    assert r.status_code == 409, r.text


async def test_an_open_invoice_is_paid_once_its_usage_is_charged(client, app, register, admin):
    core = app.state.core
    await set_prices(core)
    org = await org_of(client, await register())
    charged = rec(org, "container", new_id(), MARCH, 3600, cpu=1000, charge_id="entry-1")
    waiting = rec(org, "container", new_id(), MARCH + timedelta(days=1), 3600, cpu=1000)
    await add_usage(core, [charged, waiting])
    inv = await finalized(client, admin, org)
    assert inv["status"] == "open"
    async with core.db.sessionmaker() as session:
        await begin_write(session)
        assert await invoices.settle_open(session, org) == 0
        await session.execute(
            update(UsageRecord).where(UsageRecord.id == waiting["id"]).values(charge_id="entry-2")
        )
        assert await invoices.settle_open(session, org) == 1
        await session.commit()
    paid = await ok(client, "GET", f"/invoices/{inv['id']}", admin)
    assert paid["status"] == "paid" and paid["paid_at"] is not None
    # Usage all charged at finalization: paid at once.
    other = await org_of(client, await register())
    await add_usage(core, [rec(other, "container", new_id(), MARCH, 3600, cpu=1000, charge_id="e")])
    assert (await finalized(client, admin, other))["status"] == "paid"


# --- credit notes ---------------------------------------------------------------------------
async def _wallet_state(core: Any, org_id: str) -> tuple[Decimal, Decimal, list[LedgerEntry]]:
    async with core.db.sessionmaker() as session:
        wallet = await session.scalar(select(Wallet).where(Wallet.organisation_id == org_id))
        assert wallet is not None
        entries = (
            await session.scalars(select(LedgerEntry).where(LedgerEntry.wallet_id == wallet.id))
        ).all()
        return wallet.balance, await ledger.ledger_sum(session, wallet.id), list(entries)


async def test_a_credit_note_corrects_an_invoice_and_refunds_the_wallet(
    client, app, register, admin
):
    core = app.state.core
    await set_prices(core)
    user = await register()
    org = await org_of(client, user)
    c, vm = new_id(), new_id()
    await add_usage(
        core,
        [
            rec(org, "container", c, MARCH, 36000, cpu=1000),  # 10 vCPU-h: 0.50
            rec(org, "vm", vm, MARCH, 36000, cpu=4000, mem=2048),  # 40 vCPU-h 2.00, 20 GB-h 0.10
        ],
    )
    inv = await finalized(client, admin, org)
    assert inv["total"] == "2.60"
    await ok(client, "GET", "/wallet", user)  # the wallet, with its signup credit
    before, _, _ = await _wallet_state(core, org)

    note = await ok(
        client,
        "POST",
        f"/invoices/{inv['id']}/credit-notes",
        admin,
        201,
        json={"amount": "0.25", "reason": "Goodwill <b>credit</b>"},
    )
    assert note["kind"] == "credit_note" and note["corrects_id"] == inv["id"]
    assert note["total"] == "-0.25" and note["status"] == "paid"
    assert re.match(r"^NEF-CN-\d{4}-\d{6}$", note["number"]), note["number"]
    assert [(ln["quantity"], ln["unit_price"], ln["amount"]) for ln in note["lines"]] == [
        ("1", "-0.25", "-0.25")
    ]
    balance, total, entries = await _wallet_state(core, org)
    assert balance == total == before + D("0.25")
    [refund] = [e for e in entries if e.kind == "refund"]
    assert refund.key == f"credit-note:{note['id']}" and refund.amount == D("0.25")
    assert refund.reference_kind == "invoice" and refund.reference_id == note["id"]

    # A whole line, then part of another.
    vm_cpu = lines_by(inv)[(vm, "vcpu_hour")]
    c_cpu = lines_by(inv)[(c, "vcpu_hour")]
    second = await ok(
        client,
        "POST",
        f"/invoices/{inv['id']}/credit-notes",
        admin,
        201,
        json={
            "lines": [{"line_id": vm_cpu["id"]}, {"line_id": c_cpu["id"], "amount": "0.10"}],
            "reason": "Host outage",
        },
    )
    assert second["total"] == "-2.10"
    assert {ln["corrects_line_id"]: ln["amount"] for ln in second["lines"]} == {
        vm_cpu["id"]: "-2.00",
        c_cpu["id"]: "-0.10",
    }
    detail = await ok(client, "GET", f"/invoices/{inv['id']}", user)
    assert detail["credited"] == "2.35" and detail["total"] == "2.60"
    assert detail["credit_note_ids"] == [note["id"], second["id"]]
    # Nothing beyond what is left: 0.25 of the invoice, 0.40 of the container's line
    # but the line is only 0.50 - 0.10.
    for body in (
        {"amount": "0.26", "reason": "too much"},
        {"lines": [{"line_id": vm_cpu["id"], "amount": "0.01"}], "reason": "line spent"},
        {"lines": [{"line_id": c_cpu["id"], "amount": "0.41"}], "reason": "over the line"},
        {"lines": [{"line_id": new_id()}], "reason": "not a line of it"},
        {"amount": "0.001", "reason": "below the minor unit"},
        {"amount": "0.10", "lines": [{"line_id": c_cpu["id"]}], "reason": "both"},
        {"reason": "neither"},
        {"amount": "-1", "reason": "negative"},
        {"amount": "0.10", "reason": ""},
    ):
        r = await client.post(
            f"{V1}/invoices/{inv['id']}/credit-notes", headers=admin.headers, json=body
        )
        assert r.status_code in (400, 422), (body, r.text)
    last = await ok(
        client,
        "POST",
        f"/invoices/{inv['id']}/credit-notes",
        admin,
        201,
        json={"amount": "0.25", "reason": "the rest"},
    )
    balance, total, entries = await _wallet_state(core, org)
    assert balance == total == before + D("2.60")
    assert len([e for e in entries if e.kind == "refund"]) == 3
    # A credit note is itself final: not voided, not credited.
    for path in (f"/invoices/{last['id']}/void", f"/invoices/{last['id']}/credit-notes"):
        r = await client.post(
            V1 + path, headers=admin.headers, json={"amount": "0.01", "reason": "x"}
        )
        assert r.status_code == 409, r.text
    listed = await ok(client, "GET", "/invoices", user, params={"kind": "credit_note"})
    assert {i["id"] for i in listed["items"]} == {note["id"], second["id"], last["id"]}


async def test_only_a_finalized_invoice_is_credited(client, app, register, admin):
    core = app.state.core
    await set_prices(core)
    org = await org_of(client, await register())
    await add_usage(core, [rec(org, "container", new_id(), MARCH, 3600, cpu=1000)])
    made = await draft(client, admin, org)
    r = await client.post(
        f"{V1}/invoices/{made['id']}/credit-notes",
        headers=admin.headers,
        json={"amount": "0.01", "reason": "x"},
    )
    assert r.status_code == 409, r.text


# --- reading ------------------------------------------------------------------------------
async def test_billing_history_lists_finalized_invoices_in_seed_004s_shape(
    client, app, register, admin
):
    core = app.state.core
    await set_prices(core)
    user = await register()
    org = await org_of(client, user)
    feb = MARCH - timedelta(days=28)
    await add_usage(
        core,
        [
            rec(org, "container", new_id(), feb, 3600 * 10, cpu=1000, charge_id="e1"),
            rec(org, "container", new_id(), MARCH, 3600 * 20, cpu=1000),
        ],
    )
    feb_inv = await ok(
        client,
        "POST",
        "/invoices",
        admin,
        201,
        json={
            "organisation_id": org,
            "period_start": feb.isoformat(),
            "period_end": MARCH.isoformat(),
        },
    )
    await ok(client, "POST", f"/invoices/{feb_inv['id']}/finalize", admin)
    march = await finalized(client, admin, org)
    # A draft of April is no bill.
    await ok(
        client,
        "POST",
        "/invoices",
        admin,
        201,
        json={
            "organisation_id": org,
            "period_start": APRIL.isoformat(),
            "period_end": "2025-05-01T00:00:00Z",
        },
    )

    for prefix in ("/api/v1", "/api"):
        r = await client.get(f"{prefix}/billing/history", headers=user.headers)
        assert r.status_code == 200, r.text
        data = r.json()["data"]
        assert data["pagination"] == {
            "page": 1,
            "limit": 20,
            "total": 2,
            "pages": 1,
            "next_cursor": None,
        }
        assert data["items"] == data["bills"]
        newest, oldest = data["bills"]
        assert newest == {
            "id": march["id"],
            "number": march["number"],
            "period": "2025-03-01 to 2025-03-31",
            "period_start": "2025-03-01T00:00:00Z",
            "period_end": "2025-04-01T00:00:00Z",
            "amount": "1.00",
            "credited": "0.00",
            "currency": "USD",
            "status": "open",
            "due_date": march["due_at"],
            "paid_date": None,
            "html_url": f"/api/v1/invoices/{march['id']}/html",
        }
        assert oldest["period"] == "2025-02-01 to 2025-02-28"
        assert oldest["amount"] == "0.50" and oldest["status"] == "paid"
        assert oldest["paid_date"] is not None and oldest["due_date"].endswith("Z")
    only_march = await ok(
        client,
        "GET",
        "/billing/history",
        user,
        params={"start_date": "2025-03-01", "end_date": "2025-03-31"},
    )
    assert [b["id"] for b in only_march["bills"]] == [march["id"]]
    paged = await ok(client, "GET", "/billing/history", user, params={"limit": 1, "page": 2})
    assert [b["id"] for b in paged["bills"]] == [oldest["id"]]
    assert paged["pagination"]["pages"] == 2
    for bad in ({"start_date": "soon"}, {"start_date": "2025-04-01", "end_date": "2025-03-01"}):
        r = await client.get(f"{V1}/billing/history", headers=user.headers, params=bad)
        assert r.status_code in (400, 422), r.text


async def test_another_tenant_gets_404_and_drafts_are_the_platforms(client, app, register, admin):
    core = app.state.core
    await set_prices(core)
    owner, other = await register(), await register()
    org = await org_of(client, owner)
    await add_usage(core, [rec(org, "container", new_id(), MARCH, 3600, cpu=1000)])
    inv = await finalized(client, admin, org)
    preview = await ok(client, "POST", "/invoices", admin, 201, json={"organisation_id": org})
    assert preview["status"] == "draft"
    start = datetime.fromisoformat(preview["period_start"])
    assert start.day == 1 and start <= utcnow() < datetime.fromisoformat(preview["period_end"])

    for path in (f"/invoices/{inv['id']}", f"/invoices/{inv['id']}/html"):
        mine = await client.get(V1 + path, headers=owner.headers)
        assert mine.status_code == 200, mine.text
        theirs = await client.get(V1 + path, headers=other.headers)
        missing = await client.get(V1 + path.replace(inv["id"], new_id()), headers=other.headers)
        assert theirs.status_code == missing.status_code == 404
        assert theirs.json()["error"]["message"] == missing.json()["error"]["message"]
    for path in ("/invoices", "/billing/history"):
        r = await client.get(V1 + path, headers=other.headers, params={"organisation_id": org})
        assert r.status_code == 404, r.text
        r = await client.get(V1 + path, headers=other.headers)
        assert r.status_code == 200 and r.json()["data"]["items"] == []
    # Drafts are the platform's working copies.
    r = await client.get(f"{V1}/invoices/{preview['id']}", headers=owner.headers)
    assert r.status_code == 404
    listed = await ok(client, "GET", "/invoices", owner)
    assert [i["id"] for i in listed["items"]] == [inv["id"]]
    every = await ok(client, "GET", "/invoices", admin, params={"all": "true", "status": "draft"})
    assert [i["id"] for i in every["items"]] == [preview["id"]]
    # Only platform admins act on invoices, or list every organisation's.
    for method, path, body in (
        ("POST", "/invoices", {"organisation_id": org}),
        ("POST", f"/invoices/{preview['id']}/finalize", None),
        ("POST", f"/invoices/{preview['id']}/void", None),
        ("POST", f"/invoices/{inv['id']}/credit-notes", {"amount": "0.01", "reason": "x"}),
        ("GET", "/invoices?all=true", None),
    ):
        r = await client.request(method, V1 + path, headers=owner.headers, json=body)
        assert r.status_code == 403, (path, r.text)


async def test_the_html_rendering_escapes_everything(client, app, register, admin):
    core = app.state.core
    await set_prices(core)
    user = await register()
    org = await org_of(client, user)
    await ok(
        client, "PUT", f"/organisations/{org}", user, json={"name": "<script>alert(1)</script>"}
    )
    await add_usage(
        core,
        [rec(org, "container", new_id(), MARCH, 3600, cpu=1000, name="<img src=x onerror=y>")],
    )
    inv = await finalized(client, admin, org)
    await ok(
        client,
        "POST",
        f"/invoices/{inv['id']}/credit-notes",
        admin,
        201,
        json={"amount": "0.01", "reason": '"quoted" & <tagged>'},
    )
    r = await client.get(f"{V1}/invoices/{inv['id']}/html", headers=user.headers)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in r.headers["content-security-policy"]
    page = r.text
    assert "<script>" not in page and "<img" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;img src=x onerror=y&gt;" in page
    assert inv["number"] in page and "2025-03-01 to 2025-03-31" in page
    assert "0.05" in page and "Credited" in page
    notes = (await ok(client, "GET", "/invoices", user, params={"kind": "credit_note"}))["items"]
    r = await client.get(f"{V1}/invoices/{notes[0]['id']}/html", headers=user.headers)
    assert "&quot;quoted&quot; &amp; &lt;tagged&gt;" in r.text and inv["number"] in r.text


@pytest.mark.parametrize(
    "body",
    [
        {"period_start": "2025-03-01T00:00:00Z"},
        {"period_start": "2025-04-01T00:00:00Z", "period_end": "2025-03-01T00:00:00Z"},
        {"period_start": "2023-01-01T00:00:00Z", "period_end": "2025-03-01T00:00:00Z"},
        {"period_start": "0001-01-01T00:00:00+14:00", "period_end": "2025-03-01T00:00:00Z"},
        {"period_start": "yesterday", "period_end": "2025-03-01T00:00:00Z"},
        {**MARCH_BODY, "organisation_id": "x" * 65},
        {**MARCH_BODY, "surprise": 1},
    ],
)
async def test_bad_invoice_requests_are_refused_not_crashed(client, register, admin, body):
    org = await org_of(client, await register())
    r = await client.post(
        f"{V1}/invoices", headers=admin.headers, json={"organisation_id": org, **body}
    )
    assert r.status_code in (400, 422), r.text
    assert r.json()["error"]["code"] == "VALIDATION_ERROR"


async def test_unknown_invoices_and_organisations_are_404(client, admin):
    r = await client.post(
        f"{V1}/invoices", headers=admin.headers, json={"organisation_id": new_id(), **MARCH_BODY}
    )
    assert r.status_code == 404, r.text
    for path in ("finalize", "void"):
        r = await client.post(f"{V1}/invoices/{new_id()}/{path}", headers=admin.headers)
        assert r.status_code == 404, r.text
    r = await client.get(f"{V1}/invoices/{new_id()}", headers=admin.headers)
    assert r.status_code == 404


async def test_finalizing_waits_for_the_period_to_end(client, register, admin):
    org = await org_of(client, await register())
    preview = await ok(client, "POST", "/invoices", admin, 201, json={"organisation_id": org})
    r = await client.post(f"{V1}/invoices/{preview['id']}/finalize", headers=admin.headers)
    assert r.status_code == 409 and "not ended" in r.json()["error"]["message"]


# --- the billing engine's pass ----------------------------------------------------------------
async def test_run_due_invoices_each_finished_period_once(client, app, register):
    core = app.state.core
    await set_prices(core)
    users = [await register() for _ in range(3)]
    orgs = [await org_of(client, u) for u in users]
    for i, org in enumerate(orgs):
        await add_usage(core, [rec(org, "container", new_id(), MARCH, 3600 * (i + 1), cpu=1000)])
    # Usage of the period still running is not invoiced yet.
    await add_usage(core, [rec(orgs[0], "container", new_id(), APRIL, 3600, cpu=1000)])
    # Not in the first minutes after the period: its last hour's network usage is
    # still to be recorded.
    assert await invoices.run_due(core, now=APRIL + timedelta(minutes=5)) == []
    now = APRIL + timedelta(hours=1)
    # Two passes at once (two processes), then one more: one invoice per organisation.
    first, second = await asyncio.gather(
        invoices.run_due(core, now=now), invoices.run_due(core, now=now)
    )
    assert len(first) + len(second) == 3
    assert await invoices.run_due(core, now=now) == []
    async with core.db.sessionmaker() as session:
        rows = (
            await session.scalars(select(Invoice).where(Invoice.organisation_id.in_(orgs)))
        ).all()
        counts = await session.scalar(select(func.count()).select_from(InvoiceLine))
    assert len(rows) == 3 and counts == 3
    by_org = {r.organisation_id: r for r in rows}
    for i, org in enumerate(orgs):
        inv = by_org[org]
        assert (inv.period_start, inv.period_end) == (MARCH, APRIL)
        assert inv.status == "open" and inv.number and NUMBER.match(inv.number)
        assert inv.total == D("0.05") * (i + 1)
    numbers = sorted(int(r.number.rsplit("-", 1)[1]) for r in rows if r.number)
    assert numbers == list(range(numbers[0], numbers[0] + 3))  # no gaps
    # Once the engine has charged an organisation's March, its invoice is paid.
    async with core.db.sessionmaker() as session:
        await begin_write(session)
        await session.execute(
            update(UsageRecord)
            .where(UsageRecord.organisation_id == orgs[1], UsageRecord.started_at < APRIL)
            .values(charge_id="entry")
        )
        await session.commit()
    assert await invoices.run_due(core, now=now) == []
    async with core.db.sessionmaker() as session:
        found = await session.execute(
            select(Invoice.organisation_id, Invoice.status).where(Invoice.organisation_id.in_(orgs))
        )
        statuses = {org: status for org, status in found.all()}
    assert statuses == {orgs[0]: "open", orgs[1]: "paid", orgs[2]: "open"}
    # A draft preview of the period is what run_due finalizes (with the usage since).
    later = orgs[0]
    preview = None
    async with core.db.sessionmaker() as session:
        await begin_write(session)
        org = await session.get(Organisation, later)
        assert org is not None
        preview = await invoices.generate(
            session, org, "USD", APRIL, datetime(2025, 5, 1, tzinfo=UTC)
        )
        await session.commit()
    await add_usage(
        core, [rec(later, "container", new_id(), APRIL + timedelta(days=3), 3600, cpu=1000)]
    )
    made = await invoices.run_due(core, now=datetime(2025, 5, 1, 0, 30, tzinfo=UTC))
    assert made == [preview.id]
    async with core.db.sessionmaker() as session:
        april = await session.get(Invoice, preview.id)
        assert april is not None and april.status == "open" and april.total == D("0.10")


def test_period_bounds_cover_months_weeks_and_days():
    at = datetime(2024, 12, 31, 23, 59, 59, tzinfo=UTC)
    assert invoices.period_bounds(at, "month") == (
        datetime(2024, 12, 1, tzinfo=UTC),
        datetime(2025, 1, 1, tzinfo=UTC),
    )
    assert invoices.period_bounds(at, "week") == (
        datetime(2024, 12, 30, tzinfo=UTC),
        datetime(2025, 1, 6, tzinfo=UTC),
    )
    assert invoices.period_bounds(at, "day") == (
        datetime(2024, 12, 31, tzinfo=UTC),
        datetime(2025, 1, 1, tzinfo=UTC),
    )
    assert invoices.previous_period(datetime(2025, 3, 1, tzinfo=UTC), "month") == (
        datetime(2025, 2, 1, tzinfo=UTC),
        MARCH,
    )
    assert invoices.period_label(MARCH, APRIL) == "2025-03-01 to 2025-03-31"
