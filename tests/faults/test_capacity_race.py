"""Two creates at once that together do not fit on the only host: one is accepted, the
other is 409 RESOURCE_EXHAUSTED, and the host carries exactly one allocation; within
one app (one placer) and across two apps on one database (two placers, whose stale
pools both choose the host: the guarded UPDATE is what refuses the second)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from nefos.db.models import Host
from tests.faults.conftest import Lab, Nefos

LIMITS = ["max_instances", "memory"]


async def _host_for(n: Nefos, limit: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Register the only host, sized so that exactly one container fits; the host and
    the container body."""
    admin = await n.admin()
    if limit == "max_instances":
        host = await n.add_host(admin, max_instances=1)
        return host, {"resources": {"cpu": "0.5", "memory": "64m"}}
    host = await n.add_host(admin)
    row = await n.host_row(host["id"])
    reserved = n.core.settings.reserved_host_memory_mb
    room = int(row.memory_mb * n.core.settings.memory_allocation_ratio) - reserved
    one = room // 2 + 1  # two do not fit, one does
    assert one <= room
    return host, {"resources": {"cpu": "0.1", "memory": f"{one}m"}}


def _outcome(responses: list[Any]) -> Any:
    codes = sorted(r.status_code for r in responses)
    assert codes == [202, 409], [r.text for r in responses]
    loser = next(r for r in responses if r.status_code == 409)
    assert loser.json()["error"]["code"] == "RESOURCE_EXHAUSTED", loser.text
    return next(r for r in responses if r.status_code == 202)


async def _one_allocation(n: Nefos, host_id: str, body: dict[str, Any]) -> None:
    row: Host = await n.host_row(host_id)
    memory = int(body["resources"]["memory"].rstrip("m"))
    cpu_milli = round(float(body["resources"]["cpu"]) * 1000)
    assert (row.instance_count, row.used_cpu_milli, row.used_memory_mb, row.used_storage_gb) == (
        1,
        cpu_milli,
        memory,
        0,
    )
    assert await n.counts() == {"containers": 1, "replicas": 1, "operations": 1}
    (replica,) = await n.replica_rows()
    assert replica.host_id == host_id and replica.memory_mb == memory


@pytest.mark.parametrize("limit", LIMITS)
async def test_two_creates_one_app(lab: Lab, limit: str) -> None:
    # No workers: the race is about placement; nothing needs to reach the engine.
    async with lab.app(workers=0) as n:
        host, body = await _host_for(n, limit)
        a, b = await n.user(), await n.user()
        responses = await asyncio.gather(n.create(a, "one", **body), n.create(b, "two", **body))
        _outcome(list(responses))
        await _one_allocation(n, host["id"], body)


@pytest.mark.parametrize("limit", LIMITS)
async def test_two_creates_two_apps_one_database(lab: Lab, limit: str) -> None:
    url = await lab.new_url()
    async with lab.app(url, workers=0) as first, lab.app(url, workers=0) as second:
        host, body = await _host_for(first, limit)
        a, b = await first.user(), await first.user()
        # Both placers load the (empty) host now and keep that view: each will think
        # the host has room, so only the database can refuse the second claim.
        placers = [first.core.placer, second.core.placer]
        for n, placer in zip((first, second), placers, strict=True):
            placer.max_age = 3600.0
            placer.invalidate()
            async with n.core.db.sessionmaker() as session:
                pool = await placer._pool_for(session)
                assert host["id"] in pool
            placer.claims_won = placer.claims_lost = 0

        responses = await asyncio.gather(
            first.create(a, "one", **body), second.create(b, "two", **body)
        )
        _outcome(list(responses))
        # The loser's placer chose the host and its guarded UPDATE matched no row.
        claims = sorted((p.claims_won, p.claims_lost) for p in placers)
        assert claims == [(0, 1), (1, 0)], claims
        await _one_allocation(first, host["id"], body)
