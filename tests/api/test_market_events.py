"""The life of a marketplace subscription told (seed 002): subscription.created,
plan_changed, renewed, past_due, cancelled and ended reach the consumer
organisation's WebSocket subscribers and webhooks, and the creator's of who comes
and goes (created, cancelled, ended); each once, only if it happened."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from nefos.api.app import create_app
from nefos.billing import planfees
from nefos.config import Settings
from nefos.db.models import WebhookDelivery
from nefos.events import Event
from nefos.services.subscriptions import EventView
from tests.api.test_containers import Api, assert_error
from tests.api.test_marketplace import FREE, FREEMIUM
from tests.api.test_plan_billing import PRO, end_period_now
from tests.api.test_subscriptions import org_of, plan_of, publish
from tests.conftest import DatabaseFactory, make_settings

V1 = "/api/v1"
TYPES = [
    "subscription.created",
    "subscription.plan_changed",
    "subscription.renewed",
    "subscription.past_due",
    "subscription.cancelled",
    "subscription.ended",
]


@pytest.fixture(scope="module")
def events_settings(
    databases: DatabaseFactory, tmp_path_factory: pytest.TempPathFactory
) -> Settings:
    return make_settings(
        databases.new_url(),
        Path(tmp_path_factory.mktemp("market-events")),
        webhook_allowed_networks=["127.0.0.0/8"],
    )


@pytest.fixture(scope="module")
async def app(events_settings: Settings) -> AsyncIterator[Any]:
    """An app of this module's own: webhooks to loopback allowed, its dispatcher
    stopped (the deliveries stay rows to read)."""
    application = create_app(events_settings)
    async with application.router.lifespan_context(application):
        await application.state.webhooks.stop()
        yield application


class Told:
    """The subscription events published, in order."""

    def __init__(self, app: Any) -> None:
        self.queue = app.state.core.events.subscribe(lambda e: e.type.startswith("subscription."))
        self.seen: list[Event] = []

    async def next(self, count: int) -> list[tuple[str, str, str]]:
        """The next ``count`` events: (type, audience, organisation)."""
        got = [await asyncio.wait_for(self.queue.get(), 30) for _ in range(count)]
        self.seen += got
        return [(e.type, e.data["audience"], str(e.organisation_id)) for e in got]


async def test_a_subscriptions_life_is_told_to_the_websocket_and_webhooks(
    client: httpx.AsyncClient, register: Any, podman_host: Any, app: Any
) -> None:
    core = app.state.core
    creator_user, consumer_user, stranger_user = (
        await register(),
        await register(),
        await register(),
    )
    creator, consumer = Api(client, creator_user), Api(client, consumer_user)
    consumer_hook = await consumer.call(
        "POST", "/monitoring/webhooks", 201, json={"url": "http://127.0.0.1:9/s", "events": TYPES}
    )
    creator_hook = await creator.call(
        "POST",
        "/monitoring/webhooks",
        201,
        json={"url": "http://127.0.0.1:9/c", "events": ["subscription.created", "usage_alert"]},
    )
    r = await client.post(
        f"{V1}/monitoring/webhooks",
        json={"url": "http://127.0.0.1:9/x", "events": ["subscription.deleted"]},
        headers=consumer_user.headers,
    )
    assert_error(r, 422, "VALIDATION_ERROR")
    made, listed = await publish(creator, "told", [FREE, PRO, FREEMIUM])
    lid = listed["id"]
    hobby, pro, basic = (plan_of(listed, k) for k in ("hobby", "pro", "basic"))
    consumer_org, creator_org = await org_of(consumer), await org_of(creator)
    told = Told(app)

    # Subscribing: told to both; the creator's copy says it is the creator's.
    sid = (
        await consumer.call(
            "POST", f"/marketplace/listings/{lid}/subscribe", 201, json={"plan_id": hobby["id"]}
        )
    )["subscription"]["id"]
    assert await told.next(2) == [
        ("subscription.created", "consumer", consumer_org),
        ("subscription.created", "creator", creator_org),
    ]
    created = told.seen[0].data
    assert (created["subscription_id"], created["listing_id"], created["plan"]) == (
        sid,
        lid,
        "Hobby",
    )
    assert created["status"] == "active" and created["api_slug"] == listed["slug"]
    assert created["seller_organisation_id"] == creator_org
    # A refused subscription (a second one) tells nothing.
    r = await client.post(
        f"{V1}/marketplace/listings/{lid}/subscribe",
        json={"plan_id": hobby["id"]},
        headers=consumer_user.headers,
    )
    assert_error(r, 409, "CONFLICT")

    # To the monthly plan: the consumer's alone, naming the plan it left.
    await consumer.call("PUT", f"/marketplace/subscriptions/{sid}", json={"plan_id": pro["id"]})
    assert await told.next(1) == [("subscription.plan_changed", "consumer", consumer_org)]
    changed = told.seen[-1].data
    assert (changed["plan_id"], changed["previous_plan_id"], changed["previous_plan"]) == (
        pro["id"],
        hobby["id"],
        "Hobby",
    )
    # The same plan again changes nothing, and tells nothing.
    await consumer.call("PUT", f"/marketplace/subscriptions/{sid}", json={"plan_id": pro["id"]})

    # Renewed by the billing pass (the fee charged), then past due (the wallet, 10
    # less two fees of 4, cannot pay a third); passes at once tell each once.
    await end_period_now(app, sid)
    await asyncio.gather(
        planfees.renew_due(core.db, core.settings), planfees.renew_due(core.db, core.settings)
    )
    assert await told.next(1) == [("subscription.renewed", "consumer", consumer_org)]
    assert (told.seen[-1].data["charged"], told.seen[-1].data["currency"]) == ("4.00", "USD")
    await end_period_now(app, sid)
    await planfees.renew_due(core.db, core.settings)
    assert await told.next(1) == [("subscription.past_due", "consumer", consumer_org)]
    assert (told.seen[-1].data["status"], told.seen[-1].data["due"]) == ("past_due", "4.00")

    # Cancelled (past due: at once), told to both.
    await consumer.call("DELETE", f"/marketplace/subscriptions/{sid}")
    assert await told.next(2) == [
        ("subscription.cancelled", "consumer", consumer_org),
        ("subscription.cancelled", "creator", creator_org),
    ]
    cancelled = told.seen[-2].data
    assert (cancelled["status"], cancelled["by"], cancelled["ended_reason"]) == (
        "cancelled",
        "consumer",
        "cancelled",
    )

    # A paid plan cancelled runs to its period's end; its end is told when the
    # billing pass settles it.
    second = (
        await consumer.call(
            "POST", f"/marketplace/listings/{lid}/subscribe", 201, json={"plan_id": basic["id"]}
        )
    )["subscription"]["id"]
    assert [t for t, *_ in await told.next(2)] == ["subscription.created"] * 2
    await consumer.call("DELETE", f"/marketplace/subscriptions/{second}")
    assert [t for t, *_ in await told.next(2)] == ["subscription.cancelled"] * 2
    pending_end = told.seen[-2].data
    assert (pending_end["status"], pending_end["cancel_at_period_end"]) == ("active", True)
    await consumer.call("DELETE", f"/marketplace/subscriptions/{second}")  # again: a no-op
    _, end = await end_period_now(app, second)
    await planfees.renew_due(core.db, core.settings)
    assert await told.next(2) == [
        ("subscription.ended", "consumer", consumer_org),
        ("subscription.ended", "creator", creator_org),
    ]
    ended = told.seen[-2].data
    assert (ended["status"], ended["ended_reason"]) == ("ended", "cancelled")
    assert ended["subscription_id"] == second
    # Nothing else was told (the no-ops, the refused subscription, the pass at once,
    # another pass): the next events, in the order told, are a new subscription's.
    await planfees.renew_due(core.db, core.settings)
    third = (
        await consumer.call(
            "POST", f"/marketplace/listings/{lid}/subscribe", 201, json={"plan_id": hobby["id"]}
        )
    )["subscription"]["id"]
    assert await told.next(2) == [
        ("subscription.created", "consumer", consumer_org),
        ("subscription.created", "creator", creator_org),
    ]
    assert told.seen[-1].data["subscription_id"] == third

    # Each organisation's members see their own copies; a stranger sees none.
    views = {}
    for name, who in (("consumer", consumer_user), ("creator", creator_user), ("x", stranger_user)):
        views[name] = EventView(core, who.access_token)
        await views[name].refresh()
    for event in told.seen:
        audience = event.data["audience"]
        assert views[audience].sees(event)
        assert not views["x"].sees(event)
        assert not views["creator" if audience == "consumer" else "consumer"].sees(event)

    # Webhooks: each event its organisation's hooks take, once, with its data.
    async with core.db.sessionmaker() as session:
        deliveries = (
            await session.scalars(
                select(WebhookDelivery)
                .where(WebhookDelivery.event_type.like("subscription.%"))
                .order_by(WebhookDelivery.created_at, WebhookDelivery.id)
            )
        ).all()
    mine = [d for d in deliveries if d.webhook_id == consumer_hook["id"]]
    assert [d.event_type for d in mine] == [
        "subscription.created",
        "subscription.plan_changed",
        "subscription.renewed",
        "subscription.past_due",
        "subscription.cancelled",
        "subscription.created",
        "subscription.cancelled",
        "subscription.ended",
        "subscription.created",
    ]
    assert mine[0].payload["data"]["subscription"]["subscription_id"] == sid
    assert mine[0].payload["type"] == "subscription.created"
    theirs = [d for d in deliveries if d.webhook_id == creator_hook["id"]]
    assert [d.event_type for d in theirs] == ["subscription.created"] * 3
    assert {d.payload["data"]["subscription"]["audience"] for d in theirs} == {"creator"}
    assert len(deliveries) == len(mine) + len(theirs)

    # Deleting the API ends a live subscription: told as ended, reason api_deleted.
    await creator.wait(made["operation"])
    await creator.act("DELETE", f"/apis/{made['api_id']}")
    assert await told.next(2) == [
        ("subscription.ended", "consumer", consumer_org),
        ("subscription.ended", "creator", creator_org),
    ]
    assert told.seen[-1].data["subscription_id"] == third
    assert told.seen[-1].data["ended_reason"] == "api_deleted"
