"""Quotes (seed 000): pricing against a hand computation, reseller margins, and
accepting, which provisions real containers (Podman) and a real VM and volume
(libvirt) exactly once, resumably."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from decimal import Decimal
from typing import Any

import httpx
from sqlalchemy import select, update

from nefos.billing import ledger
from nefos.billing.money import round_money
from nefos.db.models import Container, Quote, Wallet
from nefos.db.session import begin_write
from nefos.db.types import utcnow
from tests.api.conftest import HALT_DISK
from tests.api.test_products import call, reseller_with_child
from tests.conftest import TEST_IMAGE, Account, join_org, wait_operation

D = Decimal
V1 = "/api/v1"
SMALL = {"cpu": "0.1", "memory": "32m"}

CONFIG = {
    "name": "shop",
    "hours_per_month": 730,
    "items": [
        {"type": "vm", "count": 2, "cpu_cores": 2, "memory_gb": 4, "storage_gb": 20},
        {
            "type": "container",
            "cpu": "0.5",
            "memory": "512m",
            "storage_gb": 5,
            "replicas": 3,
            "image": TEST_IMAGE,
        },
        {"type": "volume", "size_gb": 100},
    ],
}


def expected_lines(margin: Decimal) -> list[tuple[int, str, Decimal, Decimal]]:
    """(item, sku, monthly quantity, amount) of CONFIG, computed by hand: quantity in
    the SKU's unit times the price with the margin, rounded half-up once."""
    h = D(730)
    factor = 1 + margin / 100
    price = {
        "vcpu_hour": D("0.05"),
        "ram_gb_hour": D("0.005"),
        "storage_gb_day": D("0.10"),
        "vm_hour": D("0.01"),
        "container_hour": D("0.002"),
    }
    quantities = [
        (0, "vcpu_hour", 2 * 2 * h),  # 2 VMs of 2 cores
        (0, "ram_gb_hour", 2 * 4 * h),  # 4 GB each
        (0, "storage_gb_day", 2 * 20 * h / 24),
        (0, "vm_hour", 2 * h),
        (1, "vcpu_hour", 3 * D("0.5") * h),  # 3 replicas of half a core
        (1, "ram_gb_hour", 3 * D("0.5") * h),  # 512 MiB each
        (1, "storage_gb_day", 3 * 5 * h / 24),
        (1, "container_hour", 3 * h),
        (2, "storage_gb_day", 100 * h / 24),
    ]
    return [
        (item, sku, qty, round_money(qty * price[sku] * factor, "USD"))
        for item, sku, qty in quantities
    ]


async def set_instance_prices(client: httpx.AsyncClient, admin: Account) -> None:
    for sku, price in (("vm_hour", "0.01"), ("container_hour", "0.002")):
        await call(client, admin, "PUT", f"/products/{sku}", json={"unit_price": price})


def check_pricing(quote: dict[str, Any], margin: Decimal) -> None:
    want = expected_lines(margin)
    got = [(ln["item"], ln["sku"], D(ln["quantity"]), D(ln["amount"])) for ln in quote["lines"]]
    assert len(got) == len(want)
    for (gi, gs, gq, ga), (wi, ws, wq, wa) in zip(got, want, strict=True):
        assert (gi, gs, ga) == (wi, ws, wa)
        assert abs(gq - wq) < D("1e-9")  # a GB-day is a 24th: shown to nine places
    assert D(quote["monthly_total"]) == sum(a for *_, a in want)
    for ln in quote["lines"]:
        assert ln["currency"] == "USD" and D(ln["amount"]) == D(ln["amount"]).quantize(D("0.01"))


async def test_pricing_equals_the_hand_computation(client, register, admin):
    user = await register()
    await set_instance_prices(client, admin)
    quote = await call(client, user, "POST", "/quotes", 201, json=CONFIG)
    check_pricing(quote, D(0))
    # Rounded once per line, half-up: 1095 GB-hours at 0.005 is 5.475 -> 5.48.
    ram = next(ln for ln in quote["lines"] if ln["item"] == 1 and ln["sku"] == "ram_gb_hour")
    assert (ram["quantity"], ram["unit_price"], ram["amount"]) == ("1095", "0.005", "5.48")
    vm_cpu = quote["lines"][0]
    assert vm_cpu["name"] == "shop-vm-1..shop-vm-2" and vm_cpu["count"] == 2
    assert vm_cpu["unit"] == "vCPU-hour" and vm_cpu["meter"] == "cpu"
    assert quote["monthly_total"] == "725.88"
    assert quote["status"] == "open" and quote["currency"] == "USD"
    assert quote["project_id"] == user.project_id and quote["resources"] == []
    valid = (utcnow() + timedelta(days=30)).isoformat()[:10]
    assert quote["valid_until"][:10] == valid
    # Read back, listed, and the default hours are the setting's.
    assert await call(client, user, "GET", f"/quotes/{quote['id']}") == quote
    listed = await call(client, user, "GET", "/quotes")
    assert [q["id"] for q in listed["items"]] == [quote["id"]] and listed["quotes"]
    short = await call(
        client, user, "POST", "/quotes", 201, json={"items": [{"type": "volume", "size_gb": 24}]}
    )
    assert short["hours_per_month"] == 730 and short["lines"][0]["quantity"] == "730"
    assert short["monthly_total"] == "73.00"
    # A flavor's own price replaces vm_hour.
    await call(client, admin, "PUT", "/products/flavor:big", json={"unit_price": "1.5"})
    flavored = await call(
        client,
        user,
        "POST",
        "/quotes",
        201,
        json={"items": [{"type": "vm", "flavor": "big", "storage_gb": 0}], "hours_per_month": 10},
    )
    assert [(ln["sku"], ln["amount"]) for ln in flavored["lines"]] == [
        ("vcpu_hour", "0.50"),
        ("ram_gb_hour", "0.05"),
        ("flavor:big", "15.00"),
    ]


async def test_margin_applies_to_a_resellers_child_not_the_reseller(client, register, admin):
    owner = await register()
    await set_instance_prices(client, admin)
    reseller, child = await reseller_with_child(client, owner)
    await call(
        client,
        owner,
        "PUT",
        "/billing/account",
        json={"organisation_id": reseller, "margin_percent": "25"},
    )
    own = await call(
        client, owner, "POST", "/quotes", 201, json={**CONFIG, "organisation_id": reseller}
    )
    check_pricing(own, D(0))
    assert own["organisation_id"] == reseller and own["project_id"] is None
    theirs = await call(
        client, owner, "POST", "/quotes", 201, json={**CONFIG, "organisation_id": child}
    )
    check_pricing(theirs, D(25))
    vcpu = theirs["lines"][0]
    assert vcpu["unit_price"] == "0.0625" and vcpu["amount"] == "182.50"
    # Each organisation lists its own quotes.
    listed = await call(client, owner, "GET", "/quotes", params={"organisation_id": child})
    assert [q["id"] for q in listed["items"]] == [theirs["id"]]


async def test_bad_quotes_are_refused_in_the_envelope(client, register):
    user = await register()
    bad_items: list[Any] = [
        [],
        [{"type": "gpu"}],
        [{"type": "container", "cpu": "abc"}],
        [{"type": "container", "memory": "1x"}],
        [{"type": "container", "ports": ["99999"]}],
        [{"type": "container", "image": "-bad"}],
        [{"type": "vm", "count": 0}],
        [{"type": "vm", "memory_gb": 1, "memory_mb": 1024}],
        [{"type": "vm", "name": "bad name"}],
        [{"type": "volume"}],
        [{"type": "volume", "size_gb": 1, "count": 100}, {"type": "volume", "size_gb": 1}],
        [
            {"type": "volume", "size_gb": 1, "name": "v"},
            {"type": "volume", "size_gb": 1, "name": "v"},
        ],
        "nope",
    ]
    for items in bad_items:
        error = await call(client, user, "POST", "/quotes", 422, json={"items": items})
        assert error["code"] == "VALIDATION_ERROR", items
    for extra in ({"hours_per_month": 0}, {"hours_per_month": 745}, {"surprise": 1}):
        body = {"items": [{"type": "volume", "size_gb": 1}], **extra}
        await call(client, user, "POST", "/quotes", 422, json=body)
    r = await client.post(
        V1 + "/quotes",
        headers={**user.headers, "Content-Type": "application/json"},
        content=b"{not json",
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "VALIDATION_ERROR"
    # Nothing was saved.
    assert (await call(client, user, "GET", "/quotes"))["items"] == []
    # Quote ids and filters are checked too.
    await call(client, user, "GET", "/quotes", 422, params={"status": "sold"})
    await call(client, user, "GET", "/quotes/not%20an%20id", 422)
    await call(client, user, "GET", "/quotes/0f3c1e0e-0000-4000-8000-000000000000", 404)


async def test_a_quote_too_large_to_be_real_is_refused(client, register, admin):
    user = await register()
    await call(client, admin, "PUT", "/products/vcpu_hour", json={"unit_price": "1000000"})
    big = {"type": "vm", "count": 100, "cpu_cores": 256, "storage_gb": 0}
    error = await call(client, user, "POST", "/quotes", 422, json={"items": [big]})
    assert error["details"]["limit"] == "1000000000.00"
    assert (await call(client, user, "GET", "/quotes"))["items"] == []


async def test_another_tenants_quote_does_not_exist(client, register):
    owner, other = await register(), await register()
    quote = await call(
        client, owner, "POST", "/quotes", 201, json={"items": [{"type": "volume", "size_gb": 1}]}
    )
    for method, path in (("GET", ""), ("POST", "/accept")):
        error = await call(client, other, method, f"/quotes/{quote['id']}{path}", 404)
        assert error["message"] == "Quote not found"
    # Nor may anyone quote in another tenant's project or organisation.
    body = {"items": [{"type": "volume", "size_gb": 1}]}
    await call(client, other, "POST", "/quotes", 404, json={**body, "project_id": owner.project_id})
    org_id = quote["organisation_id"]
    await call(client, other, "POST", "/quotes", 404, json={**body, "organisation_id": org_id})
    await call(client, other, "GET", "/quotes", 404, params={"organisation_id": org_id})
    # A viewer prices and reads, but provisions nothing.
    team = await call(client, owner, "POST", "/organisations", 201, json={"name": "Team"})
    project = await call(
        client, owner, "POST", "/projects", 201, json={"name": "p", "organisation_id": team["id"]}
    )
    viewer = await register()
    await join_org(client, team["id"], owner.headers, viewer, "viewer")
    mine = await call(
        client, viewer, "POST", "/quotes", 201, json={**body, "project_id": project["id"]}
    )
    error = await call(client, viewer, "POST", f"/quotes/{mine['id']}/accept", 403)
    assert error["code"] == "FORBIDDEN"
    assert (await call(client, viewer, "GET", f"/quotes/{mine['id']}"))["status"] == "open"


async def _containers(app: Any, project_id: str) -> dict[str, str]:
    async with app.state.core.db.sessionmaker() as session:
        rows = (
            await session.execute(
                select(Container.name, Container.id).where(Container.project_id == project_id)
            )
        ).all()
    return {name: cid for name, cid in rows}


def _container_quote(quote_name: str, count: int = 2, **extra: Any) -> dict[str, Any]:
    item = {"type": "container", "count": count, "image": TEST_IMAGE, "ports": ["8080"], **SMALL}
    return {"name": quote_name, "items": [{**item, **extra}]}


async def test_accept_provisions_real_containers_once(client, register, podman_host, app):
    user = await register()
    quote = await call(client, user, "POST", "/quotes", 201, json=_container_quote("web shop!"))
    r = await client.post(
        f"{V1}/quotes/{quote['id']}/accept", headers={**user.headers, "Idempotency-Key": "acc-1"}
    )
    assert r.status_code == 202, r.text
    data = r.json()["data"]
    assert data["quote"]["status"] == "accepted" and data["quote"]["accepted_by"] == user.id
    names = [res["name"] for res in data["resources"]]
    assert names == ["web-shop-container-1", "web-shop-container-2"]
    for res in data["resources"]:
        op = await wait_operation(client, user.headers, res["operation"])
        assert op["status"] == "succeeded", op
        c = await call(client, user, "GET", f"/containers/{res['id']}")
        assert c["container"]["status"] == "running" and c["container"]["image"] == TEST_IMAGE
        assert c["container"]["resources"] == SMALL
    # A retry with the same key is the first answer; without one, a 409.
    again = await client.post(
        f"{V1}/quotes/{quote['id']}/accept", headers={**user.headers, "Idempotency-Key": "acc-1"}
    )
    assert again.status_code == 202 and again.headers.get("idempotent-replayed") == "true"
    error = await call(client, user, "POST", f"/quotes/{quote['id']}/accept", 409)
    assert error["message"] == "The quote has been accepted already"
    assert set(await _containers(app, user.project_id)) == set(names)
    got = await call(client, user, "GET", f"/quotes/{quote['id']}")
    assert [res["id"] for res in got["resources"]] == [res["id"] for res in data["resources"]]
    listed = await call(client, user, "GET", "/quotes", params={"status": "accepted"})
    assert [q["id"] for q in listed["items"]] == [quote["id"]]


async def test_accept_resumes_after_a_crash_and_races_make_nothing_twice(
    client, register, podman_host, app
):
    user = await register()
    core = app.state.core
    quote = await call(client, user, "POST", "/quotes", 201, json=_container_quote("crash", 3))
    # An accept that claimed the quote, made its first container, and died before
    # noting it; then a second try.
    now = utcnow()
    plan = [
        {
            "item": 0,
            "type": "container",
            "name": f"crash-container-{i}",
            "id": None,
            "operation": None,
        }
        for i in (1, 2, 3)
    ]
    async with core.db.sessionmaker() as session:
        await begin_write(session)
        await session.execute(
            update(Quote)
            .where(Quote.id == quote["id"])
            .values(
                status="accepting",
                resources=plan,
                project_id=user.project_id,
                accepted_by=user.id,
                accepted_at=now,
            )
        )
        await session.commit()
    made = await call(
        client,
        user,
        "POST",
        "/containers",
        202,
        json={"name": "crash-container-1", "image": TEST_IMAGE, "resources": SMALL},
    )
    # Concurrent retries: each resumes; names are unique, so nothing is made twice.
    answers = await asyncio.gather(
        *(client.post(f"{V1}/quotes/{quote['id']}/accept", headers=user.headers) for _ in range(3))
    )
    codes = sorted(a.status_code for a in answers)
    assert all(c in (202, 409) for c in codes) and 202 in codes, [a.text for a in answers]
    final = await call(client, user, "GET", f"/quotes/{quote['id']}")
    assert final["status"] == "accepted"
    ids = [res["id"] for res in final["resources"]]
    assert ids[0] == made["container_id"]
    # The adopted container's entry names the operation that made it.
    assert final["resources"][0]["operation"]["id"] == made["operation"]["id"]
    assert len(set(ids)) == 3
    containers = await _containers(app, user.project_id)
    assert containers == {f"crash-container-{i}": ids[i - 1] for i in (1, 2, 3)}
    for res in final["resources"][1:]:
        op = await wait_operation(client, user.headers, res["operation"])
        assert op["status"] == "succeeded", op


async def test_expired_incomplete_and_unaffordable_quotes(client, register, app):
    user = await register()
    core = app.state.core
    quote = await call(client, user, "POST", "/quotes", 201, json=_container_quote("old", 1))
    async with core.db.sessionmaker() as session:
        await begin_write(session)
        await session.execute(
            update(Quote)
            .where(Quote.id == quote["id"])
            .values(valid_until=utcnow() - timedelta(seconds=1))
        )
        await session.commit()
    error = await call(client, user, "POST", f"/quotes/{quote['id']}/accept", 409)
    assert error["message"].startswith("The quote has expired")
    assert (await call(client, user, "GET", f"/quotes/{quote['id']}"))["status"] == "expired"
    listed = await call(client, user, "GET", "/quotes", params={"status": "expired"})
    assert [q["id"] for q in listed["items"]] == [quote["id"]]
    assert (await call(client, user, "GET", "/quotes", params={"status": "open"}))["items"] == []
    # What a create needs must be there: an image for containers and VMs.
    bare = await call(
        client,
        user,
        "POST",
        "/quotes",
        201,
        json={"items": [{"type": "container"}, {"type": "vm"}, {"type": "volume", "size_gb": 1}]},
    )
    error = await call(client, user, "POST", f"/quotes/{bare['id']}/accept", 422)
    assert set(error["details"]) == {"items[0]", "items[1]"}
    assert (await call(client, user, "GET", f"/quotes/{bare['id']}"))["status"] == "open"
    # A name the quote would give that is taken: 409 before anything is made.
    taken = await call(
        client, user, "POST", "/quotes", 201, json=_container_quote("dup", 1, name="mine")
    )
    async with core.db.sessionmaker() as session:
        await begin_write(session)
        session.add(
            Container(
                project_id=user.project_id,
                name="mine",
                image=TEST_IMAGE,
                cpu_milli=100,
                memory_mb=32,
                status="stopped",
                desired="stopped",
            )
        )
        await session.commit()
    error = await call(client, user, "POST", f"/quotes/{taken['id']}/accept", 409)
    assert error["details"]["names"] == ["container mine"]
    # An empty wallet: 402 before anything is made, and the quote stays open.
    cheap = await call(client, user, "POST", "/quotes", 201, json=_container_quote("broke", 1))
    await call(client, user, "GET", "/billing/subscription")  # opens the wallet
    async with core.db.sessionmaker() as session:
        await begin_write(session)
        wallet = await session.scalar(select(Wallet))
        assert wallet is not None
        await ledger.post(session, wallet, "charge", -wallet.balance, key="drain")
        await session.commit()
    error = await call(client, user, "POST", f"/quotes/{cheap['id']}/accept", 402)
    assert error["code"] == "RESOURCE_EXHAUSTED"
    assert (await call(client, user, "GET", f"/quotes/{cheap['id']}"))["status"] == "open"
    # A project quota the whole quote exceeds: refused as a whole, nothing made.
    async with core.db.sessionmaker() as session:
        await begin_write(session)
        wallet = await session.scalar(select(Wallet))
        assert wallet is not None
        await ledger.post(session, wallet, "top_up", D("50"), key="refill")
        await session.commit()
    await call(client, user, "PUT", f"/projects/{user.project_id}/quotas", json={"containers": 1})
    many = await call(client, user, "POST", "/quotes", 201, json=_container_quote("many", 2))
    error = await call(client, user, "POST", f"/quotes/{many['id']}/accept", 409)
    assert error["code"] == "RESOURCE_EXHAUSTED" and error["details"]["quota"] == "containers"
    assert set(await _containers(app, user.project_id)) == {"mine"}


async def test_accept_provisions_a_vm_and_a_volume(client, register, libvirt_host, app):
    user = await register()
    r = await client.post(
        f"{V1}/images/upload",
        headers=user.headers,
        params={"project_id": user.project_id},
        data={"name": "halt"},
        files={"disk": ("halt", HALT_DISK)},
    )
    assert r.status_code == 202, r.text
    op = await wait_operation(client, user.headers, r.json()["data"]["operation"])
    assert op["status"] == "succeeded", op
    image_id = r.json()["data"]["image_id"]
    quote = await call(
        client,
        user,
        "POST",
        "/quotes",
        201,
        json={
            "name": "lab",
            "items": [
                {"type": "vm", "image_id": image_id, "memory_mb": 64, "storage_gb": 1},
                {"type": "volume", "size_gb": 1, "name": "data"},
            ],
        },
    )
    data = await call(client, user, "POST", f"/quotes/{quote['id']}/accept", 202)
    vm_res, volume_res = data["resources"]
    assert (vm_res["type"], vm_res["name"]) == ("vm", "lab-vm-1")
    assert (volume_res["type"], volume_res["name"]) == ("volume", "data")
    for res in data["resources"]:
        op = await wait_operation(client, user.headers, res["operation"], timeout=120)
        assert op["status"] == "succeeded", op
    vm = await call(client, user, "GET", f"/vms/{vm_res['id']}")
    assert vm["status"] == "running" and vm["memory_mb"] == 64 and vm["image_id"] == image_id
    volume = await call(client, user, "GET", f"/volumes/{volume_res['id']}")
    assert volume["status"] == "available" and volume["size_gb"] == 1
    for path in (f"/vms/{vm_res['id']}", f"/volumes/{volume_res['id']}"):
        gone = await call(client, user, "DELETE", path, 202)
        op = await wait_operation(client, user.headers, gone["operation"], timeout=120)
        assert op["status"] == "succeeded", op


async def _balance(client: httpx.AsyncClient, who: Account) -> str:
    wallet = await call(client, who, "GET", "/wallet")
    return str(wallet["balance"])


async def test_a_quote_whose_container_cannot_be_made_fails_and_refunds(
    client, register, podman_host, app
):
    """Pulling is off in the tests: an image no host has cannot be had, so the quote
    says failed, and why; nothing stays charged; it cannot be accepted again."""
    user = await register()
    before = await _balance(client, user)
    body = _container_quote("absent", 1, image="localhost/nefos-quote-absent:none")
    quote = await call(client, user, "POST", "/quotes", 201, json=body)
    error = await call(client, user, "POST", f"/quotes/{quote['id']}/accept", 422)
    assert error["code"] == "VALIDATION_ERROR"
    got = await call(client, user, "GET", f"/quotes/{quote['id']}")
    assert got["status"] == "failed", got
    reason = got["failure_reason"]
    assert reason.startswith("Container 'absent-container-1' cannot be made: "), reason
    listed = await call(client, user, "GET", "/quotes", params={"status": "failed"})
    assert [q["id"] for q in listed["items"]] == [quote["id"]]
    error = await call(client, user, "POST", f"/quotes/{quote['id']}/accept", 409)
    assert error["message"].startswith("The quote failed:")
    assert await _containers(app, user.project_id) == {}
    assert await _balance(client, user) == before


async def test_a_quote_whose_vm_cannot_be_made_fails_at_accept(client, register, app):
    user = await register()
    before = await _balance(client, user)
    item = {"type": "vm", "os_type": "nefos-no-such-os", "memory_gb": 1, "storage_gb": 1}
    quote = await call(client, user, "POST", "/quotes", 201, json={"name": "nos", "items": [item]})
    error = await call(client, user, "POST", f"/quotes/{quote['id']}/accept", 422)
    assert error["code"] == "VALIDATION_ERROR"
    got = await call(client, user, "GET", f"/quotes/{quote['id']}")
    assert got["status"] == "failed"
    assert got["failure_reason"].startswith("VM 'nos-vm-1' cannot be made: "), got
    assert await _balance(client, user) == before
