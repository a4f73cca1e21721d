"""The SDK's invoices, credit notes and billing history against the live server, with
usage records written into its database as the metering writes them."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import insert

from nefos.billing import catalogue
from nefos.db.models import UsageRecord
from nefos.db.session import Database, begin_write
from nefos.db.types import new_id, utcnow
from nefos.schemas.billing import BillingHistory, InvoiceDetail
from nefos.sdk import (
    Client,
    ConflictError,
    Invoices,
    NotFoundError,
    Page,
    PermissionDeniedError,
    ValidationError,
)
from tests.conftest import LiveServer

MARCH = datetime(2025, 3, 1, tzinfo=UTC)
APRIL = datetime(2025, 4, 1, tzinfo=UTC)


def add_usage(server: LiveServer, org_id: str, *, hours: int = 10, cpu: int = 1000) -> str:
    """``hours`` of a container of ``cpu`` milli-vCPUs (and 1 GiB) in March 2025, in
    the server's database; the container's id."""
    resource_id = new_id()

    async def write() -> None:
        db = Database(server.settings.resolved_database_url)
        try:
            async with db.sessionmaker() as session:
                await begin_write(session)
                await catalogue.ensure_defaults(session, "USD")
                start = MARCH + timedelta(days=2)
                await session.execute(
                    insert(UsageRecord).values(
                        id=new_id(),
                        key=f"container:{resource_id}:{start.isoformat()}",
                        organisation_id=org_id,
                        project_id="p",
                        resource_kind="container",
                        resource_id=resource_id,
                        resource_name="web",
                        state="running",
                        started_at=start,
                        ended_at=start + timedelta(hours=hours),
                        seconds=hours * 3600,
                        cpu_milli=cpu,
                        memory_mb=1024,
                        storage_gb=0,
                        instances=1,
                        network_bytes=0,
                        created_at=utcnow(),
                    )
                )
                await session.commit()
        finally:
            await db.engine.dispose()

    asyncio.run(write())
    return resource_id


def org_of(c: Client) -> str:
    me = c.auth.me()
    assert me.default_project_id is not None
    return c.projects.get(me.default_project_id).organisation_id


@pytest.fixture
def billed(live_server: LiveServer, new_user: Callable[..., Client]) -> tuple[Client, str]:
    """A user whose organisation ran a container for ten hours in March 2025."""
    user = new_user()
    org = org_of(user)
    add_usage(live_server, org)
    return user, org


def test_invoices_through_the_sdk(
    billed: tuple[Client, str], admin_client: Client, new_user: Callable[..., Client]
) -> None:
    user, org = billed
    assert isinstance(user.invoices, Invoices)
    draft = admin_client.invoices.create(org, period_start=MARCH, period_end=APRIL)
    assert isinstance(draft, InvoiceDetail) and draft.status == "draft"
    assert {(ln.sku, ln.quantity, ln.amount) for ln in draft.lines} == {
        ("vcpu_hour", "10", "0.50"),
        ("ram_gb_hour", "10", "0.05"),
    }
    assert draft.total == "0.55"
    # Drafts are the platform's: the user sees none, and may not finalize.
    assert user.invoices.list().items == []
    with pytest.raises(NotFoundError):
        user.invoices.get(draft.id)
    with pytest.raises(PermissionDeniedError):
        user.invoices.finalize(draft.id)

    inv = admin_client.invoices.finalize(draft.id)
    assert inv.number and inv.status == "open" and inv.due_at is not None
    listed = user.invoices.list()
    assert isinstance(listed, Page) and [i.id for i in listed.items] == [inv.id]
    got = user.invoices.get(inv.id)
    assert got.lines == inv.lines and got.period == "2025-03-01 to 2025-03-31"
    page = user.invoices.html(inv.id)
    assert page.startswith("<!DOCTYPE html>") and inv.number in page

    history = user.invoices.history(start_date=MARCH, end_date="2025-04-01")
    assert isinstance(history, BillingHistory)
    assert [(b.id, b.amount, b.status) for b in history.bills] == [(inv.id, "0.55", "open")]
    assert history.items == history.bills

    note = admin_client.invoices.credit_note(inv.id, reason="Goodwill", amount=Decimal("0.05"))
    assert note.kind == "credit_note" and note.total == "-0.05" and note.corrects_id == inv.id
    cpu = next(ln for ln in inv.lines if ln.sku == "vcpu_hour")
    second = admin_client.invoices.credit_note(inv.id, reason="Outage", lines=[(cpu.id, "0.10")])
    assert second.total == "-0.10"
    assert user.invoices.get(inv.id).credited == "0.15"
    with pytest.raises(ValidationError):
        admin_client.invoices.credit_note(inv.id, reason="Too much", amount="1.00")
    with pytest.raises(TypeError):
        admin_client.invoices.credit_note(inv.id, reason="A float", amount=0.1)  # type: ignore[arg-type]
    with pytest.raises(ConflictError):
        admin_client.invoices.finalize(inv.id)
    notes = user.invoices.list(kind="credit_note")
    assert {n.id for n in notes.items} == {note.id, second.id}

    # Another tenant: as missing.
    stranger = new_user()
    for call in (lambda: stranger.invoices.get(inv.id), lambda: stranger.invoices.html(inv.id)):
        with pytest.raises(NotFoundError):
            call()
    with pytest.raises(NotFoundError):
        stranger.invoices.list(organisation_id=org)


def test_voiding_and_listing_every_organisation(
    live_server: LiveServer, admin_client: Client, new_user: Callable[..., Client]
) -> None:
    user = new_user()
    org = org_of(user)
    add_usage(live_server, org, hours=1)
    preview = admin_client.invoices.create(org, notes="Preview")
    assert preview.status == "draft" and preview.notes == "Preview"
    everything = admin_client.invoices.list(all_organisations=True, status="draft", limit=500)
    assert preview.id in {i.id for i in everything.items}
    with pytest.raises(PermissionDeniedError):
        user.invoices.list(all_organisations=True)
    voided = admin_client.invoices.void(preview.id)
    assert voided.status == "void"
    with pytest.raises(ConflictError):
        admin_client.invoices.void(preview.id)
    bad: dict[str, Any] = {"period_start": APRIL, "period_end": MARCH}
    with pytest.raises(ValidationError):
        admin_client.invoices.create(org, **bad)
    with pytest.raises(NotFoundError):
        admin_client.invoices.create(str(uuid.uuid4()), period_start=MARCH, period_end=APRIL)
