"""What every service needs, built once per process (by nefos.bootstrap, the
composition root, which also builds what runs: collector, billing engine, loops)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from sqlalchemy import select

from nefos.billing.calllog import CallLog
from nefos.config import Settings
from nefos.db.models import Project
from nefos.db.session import Database
from nefos.events import capture, identity
from nefos.events.bus import EventBus, RedisBus
from nefos.monitoring.store import MetricStore, Retention
from nefos.operations import Workers
from nefos.security.passwords import Passwords
from nefos.security.tokens import TokenCodec
from nefos.services.drivers import DriverManager, DriverOptions
from nefos.services.placement import Placer, scheduler_config
from nefos.services.principal import PrincipalCache


class BalanceCheck(Protocol):
    """The billing engine's look at one organisation's balance (a top-up lifts a
    402 at once); set on ``Core.balances`` by the bootstrap."""

    async def check_org(self, org_id: str, now: datetime) -> bool: ...


@dataclass
class Core:
    settings: Settings
    db: Database
    passwords: Passwords
    tokens: TokenCodec
    drivers: DriverManager
    placer: Placer
    workers: Workers
    events: EventBus
    metrics: MetricStore
    #: Authenticated callers, forgotten when a commit changes them (services.authn).
    principals: PrincipalCache
    #: The gateway's answered calls on their way to ``api_calls`` (billing.calllog):
    #: readers of the calls flush it first.
    calls: CallLog
    # The billing engine's balance check, in every role; None without billing.
    balances: BalanceCheck | None = None

    @classmethod
    def build(cls, settings: Settings) -> Core:
        db = Database(settings.resolved_database_url, pool_size=settings.db_pool_size)
        events = event_bus(settings, db)
        capture.install(db, events.publish_many)
        principals = PrincipalCache(
            settings.auth_cache_seconds, trusted=lambda: events.shares_control
        )
        events.on_control(principals.on_control)
        identity.install(
            db,
            lambda users: events.control(
                {"principals": users if isinstance(users, str) else sorted(users)}
            ),
        )
        workers = Workers(
            db=db,
            concurrency=settings.workers,
            poll_interval=settings.operation_poll_interval,
            lease=settings.operation_lease,
            retry_deadline=settings.operation_retry_deadline,
        )
        if events.kind == "redis":
            # Several processes: an operation enqueued in one wakes the workers of all.
            workers.broadcast = lambda: events.control({"operations": "wake"})
            events.on_control(
                lambda message: workers.woken() if message.get("operations") == "wake" else None
            )
        return cls(
            settings=settings,
            db=db,
            passwords=Passwords(
                time_cost=settings.argon2_time_cost,
                memory_kib=settings.argon2_memory_kib,
                parallelism=settings.argon2_parallelism,
            ),
            tokens=TokenCodec(
                secret=settings.jwt_secret,
                issuer=settings.jwt_issuer,
                audience=settings.jwt_audience,
            ),
            drivers=DriverManager(timeout=settings.host_timeout, options=driver_options(settings)),
            placer=Placer(scheduler_config(settings)),
            workers=workers,
            events=events,
            metrics=metric_store(settings, db),
            principals=principals,
            calls=CallLog(
                db,
                interval=settings.api_call_flush_interval,
                limit=settings.api_call_buffer,
                # Written within half the billing's settling delay, or stamped anew.
                restamp_after=max(1.0, settings.marketplace_settle_seconds / 2),
            ),
        )


def event_bus(settings: Settings, db: Database) -> EventBus:
    """The in-process bus, or Redis pub/sub when ``NEFOS_REDIS_URL`` is set."""

    async def organisation_of(project_id: str) -> str | None:
        async with db.sessionmaker() as session:
            return await session.scalar(
                select(Project.organisation_id).where(Project.id == project_id)
            )

    if settings.redis_url:
        return RedisBus(
            settings.redis_url, prefix=settings.redis_prefix, resolve_org=organisation_of
        )
    # Without Redis, processes cannot tell each other what changed: the principal
    # cache is then used only by the installation's one process.
    single = settings.role == "all" and settings.processes == 1
    return EventBus(resolve_org=organisation_of, single_process=single)


def metric_store(settings: Settings, db: Database) -> MetricStore:
    return MetricStore(
        db,
        retention=Retention(
            raw=timedelta(hours=settings.metrics_raw_retention_hours),
            minute=timedelta(days=settings.metrics_minute_retention_days),
            hour=timedelta(days=settings.metrics_hour_retention_days),
        ),
        interval=settings.metrics_interval,
    )


def driver_options(settings: Settings) -> DriverOptions:
    """Each driver's own settings, from the process's."""
    return {
        "docker": {
            "pull": settings.container_image_pull,
            "registries": settings.container_registries,
            "registry_networks": settings.container_registry_allowed_networks,
            "threads": settings.engine_threads,
        },
        "libvirt": {
            "domain_type": settings.libvirt_domain_type,
            "pool": settings.libvirt_pool,
            "backup_pool": settings.libvirt_backup_pool,
        },
    }
