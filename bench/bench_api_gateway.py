"""Gateway benchmark: a published API's calls through ``/gw/{slug}/`` (key check,
plan rate limit, quota, and one ``api_calls`` row per call) against the bare
reverse proxy and the instance itself, in the same run.

    python bench/bench_api_gateway.py [--database sqlite] [--database postgresql] [--duration 5]
        [--upstream-cpu 0] [--proxy-cpu 1] [--no-pin] [--no-pin-database] [--redis]
        [--flush-interval SECONDS]

The harness is bench_ingress's (the same three processes, pinning, PostgreSQL's
server and with ``--redis`` Redis's on the upstream's CPU, wrk, rounds and medians);
on top of its service the bench writes an API, a listing with a free plan
(a rate limit of 1,000,000 a minute: the limit is checked on every call, never
reached), a subscription and its key, and adds a fourth target: ``gateway``, wrk
sending ``X-API-Key``. Aims (issue 17): the gateway at >= 0.8 of the bare proxy's
req/s, its p99 within +2 ms of the bare proxy's (Kong's published cost of rate
limiting is 12 % of throughput).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from contextlib import suppress
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_api import busy_note_for, ensure_wrk, machine
from bench_ingress import BODY, Target, bench_backend

SLUG = "bench-gw"


async def _publish(database_url: str) -> str:
    """The API, listing, plan, subscription and key over bench_ingress's service; the key."""
    from sqlalchemy import select
    from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

    from nefos.config import async_database_url
    from nefos.db.models import (
        Api,
        Container,
        Listing,
        ListingPlan,
        Project,
        Subscription,
        SubscriptionKey,
    )
    from nefos.db.types import utcnow
    from nefos.domain.consumer_keys import new_key

    engine = create_async_engine(async_database_url(database_url))
    try:
        async with async_sessionmaker(engine)() as session:
            container = (
                await session.scalars(select(Container).where(Container.name == "bench-app"))
            ).one()
            project = await session.get(Project, container.project_id)
            assert project is not None
            api = Api(
                project_id=project.id,
                name="bench-gw",
                slug=SLUG,
                container_id=container.id,
                port=8080,
                health_check_path="/",
                base_path="/",
            )
            session.add(api)
            await session.flush()
            listing = Listing(
                api_id=api.id,
                organisation_id=project.organisation_id,
                title="Bench",
                category="bench",
                tags=[],
                currency="USD",
                published_at=utcnow(),
                # Unpublished after its subscriber came (a subscriber keeps calling):
                # the service stays reachable through the ingress too (a published
                # API's container is the gateway's only), so both run over one upstream.
                status="unpublished",
            )
            session.add(listing)
            await session.flush()
            plan = ListingPlan(
                listing_id=listing.id,
                key="free",
                name="Free",
                model="free",
                rate_limit_per_minute=1_000_000,
            )
            session.add(plan)
            await session.flush()
            now = utcnow()
            sub = Subscription(
                listing_id=listing.id,
                plan_id=plan.id,
                organisation_id=project.organisation_id,
                period_start=now,
                period_end=now + timedelta(days=30),
            )
            session.add(sub)
            await session.flush()
            key, prefix, digest = new_key()
            session.add(SubscriptionKey(subscription_id=sub.id, prefix=prefix, key_hash=digest))
            await session.commit()
            return key
    finally:
        await engine.dispose()


def gateway_target(nefos: str, database_url: str) -> list[Target]:
    key = asyncio.run(_publish(database_url))
    r = httpx.get(f"{nefos}/gw/{SLUG}/", headers={"X-API-Key": key}, timeout=5.0)
    if r.status_code != 200 or r.content != BODY:
        raise RuntimeError(f"the gateway does not reach the upstream: {r.status_code} {r.text}")
    return [Target("gateway", f"{nefos}/gw/{SLUG}/", headers=[f"X-API-Key: {key}"])]


def redis_server(url: str) -> tuple[int, ...]:
    """The pid of the local ``redis-server`` listening on ``url``'s port (none if it
    runs elsewhere): pinned with the database and counted as the measured system's."""
    port = urlsplit(url).port or 6379
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with suppress(OSError):
                title = (entry / "cmdline").read_bytes().split(b"\0", 1)[0]
                if title.startswith(b"redis-server") and title.endswith(f":{port}".encode()):
                    return (int(entry.name),)
    return ()


def report(backend: str, targets: list[Target], connections: int) -> bool:
    direct, bare, ingress, gateway = targets
    print(f"\n{backend}: medians")
    print(f"| target | req/s ({connections} clients) | p99 ms (1 client) | CPU us/request |")
    print("| --- | ---: | ---: | ---: |")
    for t in targets:
        print(f"| {t.name} | {t.rps:,.0f} | {t.p99:.2f} | {t.cpu_us:,.0f} |")
    ratio = gateway.rps / bare.rps
    p99_delta = gateway.p99 - bare.p99
    print(
        f"gateway / bare proxy: {ratio:.2f} of its req/s (aim >= 0.80), p99 {p99_delta:+.2f} ms "
        f"(aim <= +2 ms); gateway / ingress: {gateway.rps / ingress.rps:.2f} of req/s, "
        f"CPU per request {gateway.cpu_us / ingress.cpu_us:.2f}; gateway / direct: "
        f"{gateway.rps / direct.rps:.2f} of req/s"
    )
    note = busy_note_for([*bare.runs, *gateway.runs, *bare.light, *gateway.light])
    if note:
        print(note + " (p99 not judged)")
        return ratio >= 0.8
    return ratio >= 0.8 and p99_delta <= 2.0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--database", action="append", choices=["sqlite", "postgresql"],
        help="Backend (repeatable; default sqlite).",
    )  # fmt: skip
    parser.add_argument("--duration", type=float, default=5.0, help="Seconds per measurement.")
    parser.add_argument("--warmup", type=float, default=2.0, help="Warm-up seconds per target.")
    parser.add_argument("--connections", type=int, default=50, help="Concurrent clients.")
    parser.add_argument("--rounds", type=int, default=3, help="Measurements of each target.")
    parser.add_argument("--upstream-cpu", type=int, default=0, help="The upstream's CPU.")
    parser.add_argument("--proxy-cpu", type=int, default=1, help="The proxies' CPU.")
    parser.add_argument("--no-pin", action="store_true", help="Run everything on every CPU.")
    parser.add_argument(
        "--no-pin-database",
        action="store_true",
        help="Leave PostgreSQL's server on every CPU (by default it shares the upstream's).",
    )
    parser.add_argument(
        "--redis",
        action="store_true",
        help="Nefos with NEFOS_REDIS_URL (NEFOS_TEST_REDIS_URL): the gateway's windows and "
        "quota counts (and the API's rate limits) in Redis.",
    )
    parser.add_argument(
        "--flush-interval",
        type=float,
        default=None,
        help="NEFOS_API_CALL_FLUSH_INTERVAL: seconds between the call log's group writes.",
    )
    args = parser.parse_args(argv)
    extra: dict[str, str] = {}
    service_pids: tuple[int, ...] = ()
    if args.flush_interval is not None:
        extra["NEFOS_API_CALL_FLUSH_INTERVAL"] = str(args.flush_interval)
    if args.redis:
        url = os.environ.get("NEFOS_TEST_REDIS_URL") or os.environ.get("NEFOS_REDIS_URL")
        if not url:
            raise SystemExit("--redis needs NEFOS_TEST_REDIS_URL (make services starts Redis)")
        extra |= {"NEFOS_REDIS_URL": url, "NEFOS_REDIS_PREFIX": f"bench-gw-{os.getpid()}"}
        service_pids = redis_server(url)
    wrk = ensure_wrk()
    if wrk is None:
        print("bench_api_gateway: wrk is not available; skipped")
        return 0
    print(
        f"Machine: {machine()}; load: wrk -t1, {args.connections} and 1 client(s); "
        f"counts {'in Redis' if args.redis else 'in the process'}"
    )
    pins = (None, None) if args.no_pin else ({args.upstream_cpu}, {args.proxy_cpu})
    if not args.no_pin and (
        args.upstream_cpu == args.proxy_cpu
        or not {args.upstream_cpu, args.proxy_cpu} <= os.sched_getaffinity(0)
    ):
        raise SystemExit("--upstream-cpu and --proxy-cpu must be two different CPUs")
    met = True
    for backend in args.database or ["sqlite"]:
        targets = bench_backend(
            backend,
            wrk,
            duration=args.duration,
            warmup=args.warmup,
            connections=args.connections,
            rounds=args.rounds,
            upstream_cpus=pins[0],
            proxy_cpus=pins[1],
            more=gateway_target,
            nefos_env_extra=extra,
            database_cpus=None if args.no_pin_database else pins[0],
            service_pids=service_pids,
        )
        met = report(backend, targets, args.connections) and met
    print("\naims met" if met else "\naims NOT met (see above)")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main(sys.argv[1:]))
