"""The in-process event bus: fan-out, filters, bounded queues, tenants named once."""

from __future__ import annotations

import asyncio

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
