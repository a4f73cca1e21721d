"""The engine's socket goes away: before a create (503, nothing made, host offline)
and under a create operation (it retries, and finishes once the engine is back). The
engine stops answering without going away: a create is a 503 and the host stays
active until the host checker judges it."""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

from nefos.services.hosts import HostService
from tests.faults.conftest import V1, EngineService, Lab, eventually


async def test_create_on_a_dead_engine_is_503_and_makes_nothing(
    lab: Lab, engine: EngineService
) -> None:
    engine.start()
    async with lab.app() as n:
        admin = await n.admin()
        host = await n.add_host(admin, engine.uri)
        assert host["status"] == "active", host
        user = await n.user()
        before = await n.host_row(host["id"])

        engine.kill()
        r = await n.create(user, "web")
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "SERVICE_UNAVAILABLE"

        # Nothing made: no container, replica or operation; the allocation was undone.
        assert await n.counts() == {"containers": 0, "replicas": 0, "operations": 0}
        listed = await n.client.get(f"{V1}/containers", headers=user.headers)
        assert listed.json()["data"]["pagination"]["total"] == 0
        after = await n.host_row(host["id"])
        assert (after.used_cpu_milli, after.used_memory_mb, after.used_storage_gb) == (
            before.used_cpu_milli,
            before.used_memory_mb,
            before.used_storage_gb,
        )
        assert after.instance_count == before.instance_count == 0
        shown = await n.host(admin, host["id"])
        assert shown["status"] == "offline", shown
        assert shown["last_error"]

        # While it is offline nothing is placed on it (no other host: 409, not 503).
        r = await n.create(user, "web")
        assert r.status_code == 409, r.text
        assert r.json()["error"]["code"] == "RESOURCE_EXHAUSTED"
        assert await n.counts() == {"containers": 0, "replicas": 0, "operations": 0}

        engine.start()
        async with n.core.db.sessionmaker() as session:
            changed = await HostService(n.core, session).check_all()
        assert changed == [host["id"]]
        shown = await n.host(admin, host["id"])
        assert shown["status"] == "active", shown
        assert shown["last_error"] is None

        container = await n.created(user, "web")
        assert container["status"] == "running", container
        await n.assert_converged()
        allocated = await n.host_row(host["id"])
        assert allocated.instance_count == 1
        assert allocated.used_memory_mb == before.used_memory_mb + 256


async def test_a_slow_engine_is_a_503_and_only_the_host_checker_marks_it_offline(
    lab: Lab, engine: EngineService
) -> None:
    engine.start()
    async with lab.app() as n:  # the checker's timeout: 10 s; a request's check: 3 s
        admin = await n.admin()
        host = await n.add_host(admin, engine.uri)
        user = await n.user()
        assert engine.proc is not None
        # Its session stopped (the service and any process it started): connections
        # are accepted by the kernel, never answered.
        os.killpg(engine.proc.pid, signal.SIGSTOP)
        try:
            r = await n.create(user, "web")
            assert r.status_code == 503, r.text
            assert r.json()["error"]["code"] == "SERVICE_UNAVAILABLE"
            assert await n.counts() == {"containers": 0, "replicas": 0, "operations": 0}
            # A slow answer is no proof of a dead host (a loaded engine, a busy
            # machine): the request's check does not take the host out of placement.
            assert (await n.host(admin, host["id"]))["status"] == "active"
            # The host checker, on NEFOS_HOST_TIMEOUT, is the one that judges.
            async with n.core.db.sessionmaker() as session:
                assert await HostService(n.core, session).check_all() == [host["id"]]
            assert (await n.host(admin, host["id"]))["status"] == "offline"
        finally:
            os.killpg(engine.proc.pid, signal.SIGCONT)
        async with n.core.db.sessionmaker() as session:
            assert await HostService(n.core, session).check_all() == [host["id"]]
        assert (await n.created(user, "web"))["status"] == "running"


async def test_pending_create_retries_until_the_engine_is_back(
    lab: Lab, engine: EngineService
) -> None:
    """The engine dies after the 202, before a worker runs the operation."""
    engine.start()
    # No workers: the test runs the operation by hand, then lets workers finish it.
    # The host checker runs often, so the host comes back by itself.
    async with lab.app(workers=0, host_check_interval=0.2) as n:
        admin = await n.admin()
        host = await n.add_host(admin, engine.uri)
        user = await n.user()
        r = await n.create(user, "web", replicas=2)
        assert r.status_code == 202, r.text
        accepted = r.json()["data"]
        op_id = accepted["operation"]["id"]

        engine.kill()
        assert await n.core.workers.run_one() is True
        op = await n.op_row(op_id)
        assert op.status == "pending", (op.status, op.error_code, op.error_message)
        assert op.run_after is not None and op.run_after > op.created_at
        assert op.worker is None and op.lock == accepted["container_id"]
        assert op.attempts == 1
        # The tenant's words; the engine's own are kept for platform admins.
        assert op.error_message == "The host does not answer; the operation will be retried"
        assert "unreachable" in op.params["engine_message"]
        # Marked offline by the failed call (and kept so by the host checker).
        await eventually(lambda: _host_status(n, host["id"], "offline"), "the host is offline")
        assert [r.state for r in await n.replica_rows()] == ["pending", "pending"]
        shown = await n.container(user, accepted["container_id"])
        assert shown["status"] == "creating", shown

        engine.start()
        await eventually(
            lambda: _host_status(n, host["id"], "active"), "the host checker marks it active"
        )
        n.core.workers.concurrency = 2
        n.core.workers.start()
        final = await n.wait(user, accepted["operation"])
        assert final["status"] == "succeeded", final
        assert final["attempts"] >= 2
        container = await n.container(user, accepted["container_id"])
        assert container["status"] == "running", container
        assert [s["state"] for s in container["replica_states"]] == ["running", "running"]
        await n.assert_converged()
        assert (await n.host_row(host["id"])).instance_count == 2


async def test_engine_dies_under_a_running_create(lab: Lab, engine: EngineService) -> None:
    """The engine dies between the operation's create and start calls."""
    engine.start()
    async with lab.app(workers=2) as n:
        admin = await n.admin()
        host = await n.add_host(admin, engine.uri)
        user = await n.user()
        driver = n.core.drivers.for_host(await n.host_row(host["id"]))
        made = asyncio.Event()
        original = driver.create
        made_ids: list[str] = []

        async def create_then_die(spec: Any) -> Any:
            info = await original(spec)
            made_ids.append(info.driver_id)
            await asyncio.to_thread(engine.kill)
            made.set()
            return info

        driver.create = create_then_die
        r = await n.create(user, "web")
        assert r.status_code == 202, r.text
        accepted = r.json()["data"]
        op_id = accepted["operation"]["id"]
        await asyncio.wait_for(made.wait(), 60)

        async def retrying() -> bool:
            op = await n.op_row(op_id)
            return op.status == "pending" and op.attempts == 1

        await eventually(retrying, "the operation goes back to pending")
        op = await n.op_row(op_id)
        assert op.run_after is not None and op.started_at is not None
        assert op.run_after > op.started_at
        # The tenant's words; the engine's own are kept for platform admins.
        assert op.error_message == "The host does not answer; the operation will be retried"
        assert "unreachable" in op.params["engine_message"]
        (replica,) = await n.replica_rows()
        # Made on the engine, not started, and not yet recorded (no write between the
        # create and the start): the next attempt must find it by its name.
        assert replica.state == "pending" and replica.driver_id is None
        assert (await n.host_row(host["id"])).status == "offline"

        driver.create = original
        engine.start()
        final = await n.wait(user, accepted["operation"])
        assert final["status"] == "succeeded", final
        assert final["attempts"] == 2
        container = await n.container(user, accepted["container_id"])
        assert container["status"] == "running", container
        # The container made before the engine died is the one running: none lost, none extra.
        (found,) = await n.assert_converged()
        (row,) = await n.replica_rows()
        assert found["id"] == row.driver_id == made_ids[0]


async def _host_status(n: Any, host_id: str, status: str) -> bool:
    return bool((await n.host_row(host_id)).status == status)


async def test_unreachable_host_is_offline_not_lost(lab: Lab, engine: EngineService) -> None:
    """The reconciler cannot list a dead engine: the host goes offline, but its
    replicas are not taken for lost; when it answers again nothing has changed."""
    engine.start()
    async with lab.app(workers=2) as n:
        admin = await n.admin()
        host = await n.add_host(admin, engine.uri)
        user = await n.user()
        container = await n.created(user, "web", replicas=2)

        engine.kill()
        report = await n.app.state.reconciler.run_once()
        assert report.hosts_unreachable == [host["id"]]
        assert report.replicas_changed == {} and report.orphans_removed == []
        assert (await n.host(admin, host["id"]))["status"] == "offline"
        shown = await n.container(user, container["id"])
        assert shown["status"] == "running", shown
        assert [s["state"] for s in shown["replica_states"]] == ["running", "running"]
        # An offline host is not listed again, so nothing changes while it is down.
        report = await n.app.state.reconciler.run_once()
        assert (report.hosts_unreachable, report.replicas_changed) == ([], {})

        engine.start()
        async with n.core.db.sessionmaker() as session:
            assert await HostService(n.core, session).check_all() == [host["id"]]
        report = await n.app.state.reconciler.run_once()
        assert (report.hosts_unreachable, report.replicas_changed, report.orphans_removed) == (
            [],
            {},
            [],
        )
        assert (await n.container(user, container["id"]))["status"] == "running"
        await n.assert_converged()
