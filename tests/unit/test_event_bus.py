"""The in-process event bus: fan-out, filters, bounded queues, tenants named once."""

from __future__ import annotations

import asyncio

import pytest

from nefos.events import Event, EventType, make
from nefos.events.bus import EventBus


async def settle(bus: EventBus) -> None:
    assert bus._outbox is not None
    await asyncio.wait_for(bus._outbox.join(), 5)


async def test_each_subscriber_gets_what_its_filter_accepts() -> None:
    looked_up: list[str] = []

    async def org_of(project: str) -> str | None:
        looked_up.append(project)
        return {"p1": "o1", "p2": "o2"}.get(project)

    bus = EventBus(resolve_org=org_of)
    await bus.start()
    try:
        everything = bus.subscribe()
        only_o1 = bus.subscribe(lambda e: e.organisation_id == "o1")
        for project in ("p1", "p2", "p1", "gone"):
            bus.publish(make(EventType.VM_STATUS, {"vm_id": "v"}, project_id=project))
        bus.publish(make(EventType.HOST_STATUS, {"host_id": "h"}))
        await settle(bus)
        got = [everything.get_nowait() for _ in range(5)]
        assert [e.organisation_id if e else None for e in got] == ["o1", "o2", "o1", None, None]
        assert everything.get_nowait() is None
        assert [only_o1.get_nowait() is not None for _ in range(3)] == [True, True, False]
        # A project's organisation is looked up once; an unknown one is asked again.
        assert looked_up == ["p1", "p2", "gone"]
        assert got[0] is not None and got[0].data["project_id"] == "p1"
        assert got[4] is not None and got[4].is_platform
        everything.close()
        only_o1.close()
        assert bus.subscribers == 0
    finally:
        await bus.stop()


async def test_a_slow_subscriber_loses_its_oldest_events_and_is_told() -> None:
    bus = EventBus()
    await bus.start()
    try:
        slow = bus.subscribe(maxsize=3)
        fast = bus.subscribe(maxsize=100)
        for i in range(10):
            bus.publish(Event(type=EventType.METRICS, data={"i": i}, organisation_id="o"))
        await settle(bus)
        assert slow.take_dropped() == 7 and slow.take_dropped() == 0
        assert [slow.get_nowait().data["i"] for _ in range(3)] == [7, 8, 9]  # type: ignore[union-attr]
        assert [(await fast.get()).data["i"] for _ in range(10)] == list(range(10))
        assert fast.dropped == 0
    finally:
        await bus.stop()


async def test_publishing_from_another_thread_and_before_start() -> None:
    bus = EventBus()
    bus.publish(make(EventType.METRICS, {}))  # not started: nobody listens, nothing breaks
    await bus.start()
    try:
        sub = bus.subscribe()
        await asyncio.to_thread(bus.publish, make(EventType.METRICS, {"from": "thread"}))
        event = await asyncio.wait_for(sub.get(), 5)
        assert event.data["from"] == "thread"
        assert await bus.check() == "healthy" and await bus.check_redis() is None
    finally:
        await bus.stop()
    assert await bus.check() == "unhealthy"


def test_the_wire_form_round_trips() -> None:
    event = make(EventType.CONTAINER_STATUS, {"container_id": "c"}, project_id="p")
    event = event.with_org("o")
    back = Event.from_wire(event.to_wire())
    assert back == event
    assert set(event.message()) == {"id", "type", "data", "timestamp"}
    assert event.message()["data"]["timestamp"] == event.timestamp


async def test_control_messages_cross_processes_through_redis_and_reach_no_subscriber() -> None:
    """Two buses on one Redis stand for two processes: a control message told in one
    is handled in the other (not twice in its own), and never reaches a subscriber
    of events. While a bus's subscription is down, it says it shares nothing."""
    import os
    import uuid

    from nefos.events.bus import RedisBus

    url = os.environ.get("NEFOS_TEST_REDIS_URL")
    if not url:
        pytest.fail("NEFOS_TEST_REDIS_URL is not set: run the tests through `make test`")
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    a, b = RedisBus(url, prefix=prefix), RedisBus(url, prefix=prefix)
    got_a: list[dict[str, object]] = []
    got_b: list[dict[str, object]] = []
    a.on_control(got_a.append)
    b.on_control(got_b.append)
    assert not a.shares_control  # not subscribed yet: nothing would reach the others
    await a.start()
    await b.start()
    try:
        assert a.shares_control and b.shares_control
        got_a.clear()  # each (re)subscription forgets everything: {"principals": "all"}
        got_b.clear()
        with b.subscribe() as events:
            a.control({"principals": ["u1"]})
            assert got_a == [{"principals": ["u1"]}]  # at once, in its own process
            for _ in range(100):
                if got_b:
                    break
                await asyncio.sleep(0.02)
            assert got_b == [{"principals": ["u1"]}]
            await asyncio.sleep(0.1)
            assert got_a == [{"principals": ["u1"]}]  # not again, back through Redis
            assert events.get_nowait() is None
    finally:
        await a.stop()
        await b.stop()
