"""Nefos settings: one pydantic-settings class, every field an ``NEFOS_*`` variable.

The README's configuration table is generated from this class (``nefos settings``)
and a test keeps the two in step.
"""

from __future__ import annotations

import secrets
from decimal import Decimal
from functools import cached_property
from ipaddress import ip_network
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from nefos.domain.publishing import PublishPolicy, parse_port_list, parse_port_range

# OWASP Password Storage Cheat Sheet, argon2id minimum: m=19 MiB, t=2, p=1.
ARGON2_MIN_MEMORY_KIB = 19456
ARGON2_MIN_TIME_COST = 2
ARGON2_MIN_PARALLELISM = 1

#: A rate limit: ``N/second|minute|hour|day`` or ``none``.
RATE_PATTERN = r"^(none|[1-9][0-9]{0,8}/(second|minute|hour|day))$"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="NEFOS_", env_file=".env", extra="ignore")

    # --- server -------------------------------------------------------------
    host: str = Field("127.0.0.1", description="Address `nefos serve` binds to.")
    port: int = Field(8000, ge=1, le=65535, description="Port `nefos serve` listens on.")
    data_dir: Path = Field(
        Path("var"), description="Directory for the SQLite database and the generated secret key."
    )
    database_url: str | None = Field(
        None,
        description="SQLAlchemy URL. Default: SQLite at `<data_dir>/nefos.db`. "
        "`postgresql://user:pass@host/db` selects PostgreSQL (asyncpg).",
    )
    db_pool_size: int = Field(10, ge=1, description="PostgreSQL connection pool size.")
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Log level of the server."
    )
    public_url: str | None = Field(
        None, description="Public base URL, shown in the start-up banner and links."
    )
    cors_origins: list[str] = Field(
        default_factory=list, description="Origins allowed by CORS (JSON list)."
    )
    console_dir: Path | None = Field(
        None,
        description="Directory of the web console's build (`index.html`, `assets/`), "
        "served at `/`. Default: the build inside the package, which `make run` makes "
        "from `console/` (scripts/ensure-console.sh).",
    )

    # --- identity -----------------------------------------------------------
    secret_key: str | None = Field(
        None,
        description="HMAC key for JWTs. Default: generated once and kept in "
        "`<data_dir>/secret.key`.",
    )
    jwt_issuer: str = Field("nefos", description="`iss` claim of issued tokens.")
    jwt_audience: str = Field("nefos-api", description="`aud` claim of issued tokens.")
    access_token_ttl: int = Field(
        7200, ge=60, description="Access token lifetime in seconds (2 hours)."
    )
    refresh_token_ttl: int = Field(
        30 * 24 * 3600, ge=300, description="Refresh token lifetime in seconds (30 days)."
    )
    argon2_time_cost: int = Field(3, description="argon2id iterations (OWASP minimum 2).")
    argon2_memory_kib: int = Field(
        65536, description="argon2id memory in KiB (OWASP minimum 19456)."
    )
    argon2_parallelism: int = Field(4, description="argon2id lanes (OWASP minimum 1).")
    password_min_length: int = Field(8, ge=8, description="Minimum password length.")
    login_max_failures: int = Field(
        10, ge=1, description="Failed logins per account or per IP before 429."
    )
    login_failure_window: int = Field(
        900, ge=1, description="Window, in seconds, over which failed logins are counted."
    )
    login_backoff_base: int = Field(
        60,
        ge=1,
        description="Seconds an account's sign-ins from unknown addresses wait after its "
        "failures reach `NEFOS_LOGIN_MAX_FAILURES`; doubled with each further failure.",
    )
    login_backoff_max: int = Field(
        900, ge=1, description="Longest per-account back-off, in seconds."
    )
    login_known_address_days: int = Field(
        30,
        ge=0,
        description="Days an address a user signed in from stays known: the per-account "
        "back-off does not apply there (the per-IP limit does). 0 = no known addresses.",
    )
    registration_enabled: bool = Field(True, description="Allow `POST /auth/register`.")
    admin_email: str = Field("admin@nefos.local", description="E-mail of the first admin.")
    admin_username: str = Field("admin", description="Username of the first admin.")
    admin_password: str | None = Field(
        None,
        description="Password of the first admin. Default: generated and printed once.",
    )
    api_key_max_ttl_days: int | None = Field(
        None, description="Longest lifetime an API key may be given (days); none = no cap."
    )
    api_keys_per_user: int = Field(
        25, ge=1, description="Live (not revoked, not expired) API keys a user may hold."
    )
    auth_cache_seconds: float = Field(
        60.0,
        ge=0,
        le=3600,
        description=(
            "How long a process may remember an authenticated caller (user, session or "
            "key) without reading the database. Changes made through Nefos are seen at "
            "once in every process (Redis carries them between processes); this bounds "
            "changes made straight in the database. 0 turns the cache off."
        ),
    )

    # --- API ----------------------------------------------------------------
    page_default_limit: int = Field(20, ge=1, description="Default `limit` of list endpoints.")
    page_max_limit: int = Field(500, ge=1, description="Cap on `limit` of list endpoints.")
    forwarded_allow_ips: list[str] = Field(
        default_factory=list,
        description="Proxies (addresses or CIDRs, JSON list; `*` = any) whose "
        "`X-Forwarded-For` is believed: the client is the rightmost hop that is not one "
        "of them. Default: none, the peer's address is the client's.",
    )
    trust_forwarded_for: bool = Field(
        False,
        description='Deprecated: `true` means `NEFOS_FORWARDED_ALLOW_IPS=["127.0.0.1", '
        '"::1"]` (a proxy on this machine) when that is not set.',
    )
    max_body_bytes: int = Field(
        1024 * 1024,
        ge=1,
        description="Largest request body (bytes) but image uploads' (see "
        "`NEFOS_IMAGE_UPLOAD_MAX_BYTES`); larger ones are refused (413) unread.",
    )

    # --- services: the ingress and the port mesh ------------------------------
    apps_domain: str = Field(
        "apps.localhost",
        max_length=200,
        pattern=r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$",
        description="Domain of services' endpoints: a request whose `Host` is "
        "`{name}-{first 8 characters of the id}.{apps_domain}` goes to that service "
        "(a wildcard DNS record `*.{apps_domain}` must point at Nefos; `*.localhost` "
        "resolves to loopback by itself). `/svc/{id}/...` reaches a service too.",
    )
    ingress_enabled: bool = Field(
        True, description="Serve services' endpoints (the HTTP ingress) on the API's port."
    )
    ingress_timeout: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="Seconds the ingress waits on an instance to connect, to answer, "
        "and between two chunks of its answer (504 when it answers nothing in time).",
    )
    ingress_max_connections: int = Field(
        256, ge=1, description="Connections the ingress keeps open to instances, in all."
    )
    ingress_instance_concurrency: int = Field(
        16,
        ge=1,
        le=10_000,
        description="Requests the ingress (each process) sends one instance at once; "
        "more wait, up to `NEFOS_INGRESS_TIMEOUT`, for one to end (then 503). New "
        "requests go to the instance with the fewest in flight.",
    )
    ingress_service_concurrency: int = Field(
        64,
        ge=1,
        le=100_000,
        description="Requests the ingress (each process) has in flight to one "
        "service's instances at once, all of them together; more are answered 503 at "
        "once, so that one service cannot take every connection of "
        "`NEFOS_INGRESS_MAX_CONNECTIONS` from the others.",
    )
    readiness_timeout: float = Field(
        60.0,
        ge=0,
        le=3600,
        description="Seconds a scale or a host drain waits for each new replica of a "
        "service with a health check of its own to pass it, before it goes on (and "
        "before it removes any old replica).",
    )
    drain_seconds: float = Field(
        2.0,
        ge=0,
        le=300,
        description="Seconds a replica being removed stays `terminating` (out of the "
        "ingress and the port mesh, still running) before it is stopped, so that the "
        "requests it was given end.",
    )
    ingress_cache_seconds: float = Field(
        1.0,
        ge=0,
        le=60,
        description="How long the ingress reuses a service's instance list read from "
        "the database (0: read on every request).",
    )
    port_mesh_enabled: bool = Field(
        True,
        description="Publish a container's fixed host port (`HOST:CONTAINER`) on a host "
        "Nefos can listen on (a local engine) by listening on it itself and balancing "
        "connections over the replicas, which then share the host on ports of the "
        "range; false: one replica per host, each publishing the port itself.",
    )
    port_mesh_interval: float = Field(
        1.0, gt=0, description="Seconds between the port mesh's looks at the database."
    )
    port_mesh_max_connections: int = Field(
        1024, ge=1, description="Connections the port mesh carries at once, per port."
    )
    port_mesh_idle_timeout: float = Field(
        300.0, gt=0, description="Seconds a port-mesh connection may stay silent both ways."
    )

    # --- default project quotas (null = unlimited) --------------------------
    quota_instances: int | None = Field(20, description="Default quota: instances per project.")
    quota_vcpus: int | None = Field(64, description="Default quota: vCPUs per project.")
    quota_memory_gb: int | None = Field(256, description="Default quota: memory (GB).")
    quota_storage_gb: int | None = Field(2048, description="Default quota: storage (GB).")
    quota_containers: int | None = Field(50, description="Default quota: containers.")

    # --- compute: hosts, placement, operations --------------------------------------
    register_local_hosts: bool = Field(
        True,
        description="`nefos serve` registers the local Podman/Docker socket as a host "
        "when one answers.",
    )
    local_docker_uri: str | None = Field(
        None,
        description="Engine API socket to register at start. Default: `$DOCKER_HOST`, "
        "then `/run/podman/podman.sock`, then `/var/run/docker.sock`.",
    )
    cpu_allocation_ratio: float = Field(
        4.0, gt=0, description="Virtual CPUs a host may carry per physical CPU."
    )
    memory_allocation_ratio: float = Field(
        1.0, gt=0, description="Memory a host may carry per byte of RAM (1.0: no overcommit)."
    )
    disk_allocation_ratio: float = Field(1.0, gt=0, description="Disk overcommit ratio.")
    reserved_host_memory_mb: int = Field(
        512, ge=0, description="Memory per host kept back for the host itself (MB)."
    )
    scheduler_weigher: Literal["spread", "pack"] = Field(
        "spread", description="Placement: `spread` (least loaded host) or `pack`."
    )
    scheduler_anti_affinity: Literal["hard", "soft"] = Field(
        "soft",
        description="Replicas of one container on distinct hosts: `soft` (when possible) "
        "or `hard` (always). Replicas publishing a fixed host port are always hard.",
    )
    host_check_interval: float = Field(
        30.0, gt=0, description="Seconds between reachability checks of every host."
    )
    engine_threads: int = Field(
        16,
        ge=1,
        le=1024,
        description="Engine calls (Docker/Podman) one container host takes at once from "
        "this process; more wait for one to end. Each host has its own: one host's slow "
        "calls (a stop's grace period, a pull) never hold up another's.",
    )
    host_timeout: float = Field(
        10.0, gt=0, description="Seconds an engine call may take before the host is unreachable."
    )
    role: Literal["all", "api", "worker"] = Field(
        "all",
        description="What this process runs: `all` (HTTP, operation workers and the "
        "singleton loops: the one-process install), `api` (HTTP only) or `worker` "
        "(operation workers and the singleton loops; HTTP serves only /health). `api` "
        "and `worker` need PostgreSQL.",
    )
    processes: int = Field(
        1,
        ge=1,
        le=64,
        description="API processes on one port (uvicorn workers), each with this role. "
        "More than 1 needs PostgreSQL (and Redis, so that events and revocations reach "
        "every process).",
    )
    lease_seconds: float = Field(
        15.0,
        ge=1.0,
        le=3600.0,
        description="Seconds a singleton loop's lease (collector, billing, reconciler, "
        "host checks, webhooks, retention) lasts unrenewed: another process takes the "
        "loop over within this long after its holder dies.",
    )
    workers: int = Field(
        4, ge=0, description="Operation workers in this process (0: this process runs none)."
    )
    operation_poll_interval: float = Field(
        1.0, gt=0, description="Seconds between idle workers' looks for pending operations."
    )
    operation_lease: float = Field(
        60.0,
        gt=0,
        description="Seconds without a heartbeat after which a running operation is "
        "taken to be interrupted and run again.",
    )
    operation_retry_deadline: float = Field(
        600.0,
        ge=0,
        description="Seconds an operation keeps retrying while its host is unreachable "
        "before it fails.",
    )
    reconcile_interval: float = Field(30.0, gt=0, description="Seconds between reconciler passes.")
    container_publish_ip: str = Field(
        "0.0.0.0",  # noqa: S104 - published ports are meant to be reachable, as in Docker
        description="Host address container ports are published on.",
    )
    container_port_range: str = Field(
        "30000-32767",
        description="Host ports tenants' containers publish on, `LOW-HIGH` (like "
        "Kubernetes' NodePort range): a fixed host port must lie inside it, a bare "
        "container port gets a free one of it. Platform admins may go outside it.",
    )
    container_reserved_ports: str = Field(
        "22,53,2375,2376,5432,6379,16509,16514",
        description="Comma-separated host ports no container may publish on, admin or "
        "not: the platform's own services (SSH, DNS, Docker, PostgreSQL, Redis, "
        "libvirt). `NEFOS_PORT` is always reserved too; add 80 and 443 when a proxy in "
        "front of Nefos listens there (by default a platform admin may publish a "
        'service on them, as seed 004\'s `"80:80"`; tenants stay inside '
        "`NEFOS_CONTAINER_PORT_RANGE`).",
    )
    installation_id: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9_.-]{1,63}$",
        description="Names this installation on the engines it uses (label "
        "`nefos.installation`); the reconciler removes only its own orphans. Default: "
        "derived from the secret key, so every process of one installation agrees.",
    )
    container_image_pull: bool = Field(
        True,
        description="Pull an image a host lacks from its registries when a container is "
        "created (false: the image must already be on the host).",
    )
    container_registries: list[str] = Field(
        default_factory=lambda: [
            "docker.io",
            "quay.io",
            "ghcr.io",
            "registry.k8s.io",
            "public.ecr.aws",
        ],
        description="Registries (host[:port], JSON list) hosts may pull tenants' images "
        "from; an image from any other registry must already be on the host. A "
        "registry on a private address also needs its network in "
        "container_registry_allowed_networks.",
    )
    container_registry_allowed_networks: list[str] = Field(
        default_factory=list,
        description="Networks (CIDR, JSON list) a listed registry may resolve to although "
        "they are loopback, private, link-local or metadata addresses. Only an admin "
        "sets this.",
    )
    container_pids_limit: int = Field(
        512, ge=16, description="Processes (pids) one container may run."
    )
    local_libvirt_uri: str | None = Field(
        None,
        description="libvirt URI to register at start. Default: `qemu:///system` when "
        "libvirtd's socket is there.",
    )
    libvirt_domain_type: Literal["auto", "kvm", "qemu"] = Field(
        "auto",
        description="Domain type of new VMs: `kvm`, `qemu` (TCG emulation) or `auto` (kvm "
        "when a probe guest boots under it in time, else qemu).",
    )
    libvirt_pool: str = Field(
        "default", description="libvirt storage pool for VM disks, seeds and images."
    )
    libvirt_backup_pool: str = Field(
        "nefos-backups", description="libvirt storage pool VM backups are copied to."
    )
    vm_stop_timeout: float = Field(
        60.0,
        ge=0,
        description="Seconds a VM has to shut down after the ACPI power button before "
        "it is forced off.",
    )
    image_dir: Path | None = Field(
        None,
        description="Where registered VM images are kept. Default: `<data_dir>/images`.",
    )
    image_upload_max_bytes: int = Field(
        20 * 1024**3, ge=1, description="Largest VM image file an upload may send (bytes)."
    )
    idempotency_ttl: int = Field(
        86400, ge=60, description="Seconds an `Idempotency-Key` and its response are kept."
    )

    # --- events ---------------------------------------------------------------
    redis_url: str | None = Field(
        None,
        description="Redis for the event bus's fan-out across server processes (and the "
        "rate limiter), e.g. `redis://127.0.0.1:6379/0`. Default: none, events stay "
        "in this process.",
    )
    redis_prefix: str = Field(
        "nefos",
        pattern=r"^[A-Za-z0-9_.:-]{1,64}$",
        description="Prefix of Nefos's Redis keys and channels.",
    )
    ws_allowed_origins: list[str] = Field(
        default_factory=list,
        description="Browser origins allowed to open `/ws` besides the API's own origin "
        "and `cors_origins` (JSON list). Clients sending no Origin (SDK, CLI) are allowed.",
    )
    ws_recheck_interval: float = Field(
        30.0,
        gt=0,
        le=60,
        description="Seconds between re-checks of a WebSocket's credentials and "
        "memberships: a revoked token or a lost membership closes it within this time.",
    )
    ws_queue_size: int = Field(
        1000,
        ge=10,
        description="Events buffered per WebSocket client; a slower client loses the "
        "oldest and is told how many it missed.",
    )
    ws_ticket_ttl: float = Field(
        30.0,
        gt=0,
        le=600,
        description="Seconds a one-time WebSocket ticket (POST /ws/ticket) may wait "
        "for its handshake (/ws?ticket=...).",
    )
    shell_idle_timeout: float = Field(
        900.0,
        gt=0,
        le=86400,
        description="Seconds a container terminal (`WS /containers/{id}/exec`) may pass "
        "with no byte either way before it is hung up.",
    )
    shell_max_seconds: float = Field(
        4 * 3600.0,
        gt=0,
        le=7 * 86400,
        description="Longest a container terminal stays open, however busy (seconds).",
    )
    shell_max_per_user: int = Field(
        5,
        ge=1,
        le=1000,
        description="Container terminals one user (or API key) may have open at once in "
        "this process.",
    )

    # --- load tests (nefos.loadtest, services/loadtests.py) -------------------------
    loadtest_max_duration: int = Field(
        600, ge=1, le=86400, description="Longest load test a tenant may run (seconds)."
    )
    loadtest_max_users: int = Field(
        500,
        ge=1,
        le=100_000,
        description="Most virtual users of a load test (closed model), and the most "
        "requests in flight at once (open model).",
    )
    loadtest_max_rate: float = Field(
        5000.0,
        gt=0,
        le=1_000_000,
        description="Highest arrival rate of a load test (open model, requests per second).",
    )
    loadtest_max_concurrent: int = Field(
        2,
        ge=0,
        description="Load tests an organisation may have running at once (more: 409 "
        "`RESOURCE_EXHAUSTED`). 0 turns load tests off.",
    )
    loadtest_request_timeout: float = Field(
        10.0,
        gt=0,
        le=300,
        description="Seconds a load test's request may take before it counts as a `timeout` error.",
    )

    # --- monitoring -------------------------------------------------------------
    metrics_interval: float = Field(
        15.0, gt=0, description="Seconds between samples of every host, VM and container."
    )
    metrics_raw_retention_hours: float = Field(
        24.0, gt=0, description="Hours raw samples are kept."
    )
    metrics_minute_retention_days: float = Field(
        8.0, gt=0, description="Days the 1-minute aggregates are kept."
    )
    metrics_hour_retention_days: float = Field(
        400.0, gt=0, description="Days the 1-hour aggregates are kept."
    )
    webhook_timeout: float = Field(
        5.0, gt=0, description="Seconds a webhook receiver has to answer a delivery."
    )
    webhook_max_attempts: int = Field(
        6, ge=1, le=20, description="Attempts at one webhook delivery before it fails."
    )
    webhook_retry_base: float = Field(
        2.0, gt=0, description="Seconds before a delivery's first retry; doubled each time."
    )
    webhook_allowed_networks: list[str] = Field(
        default_factory=list,
        description="Networks (CIDR, JSON list) webhooks may target although they are "
        "loopback, private, link-local or metadata addresses. Only an admin sets this.",
    )
    # --- billing (nefos.billing) ----------------------------------------------------
    billing_enabled: bool = Field(
        True,
        description="Meter, rate and charge usage to prepaid wallets; refuse creates (402) "
        "for an organisation whose wallet is empty.",
    )
    billing_currency: str = Field(
        "USD", pattern=r"^[A-Z]{3}$", description="Currency of new wallets and the catalogue."
    )
    marketplace_fee_percent: Decimal = Field(
        Decimal("20"),
        ge=0,
        le=100,
        description="The platform's share of each marketplace call's price, in percent "
        "(the creator earns the rest).",
    )
    marketplace_settle_seconds: float = Field(
        60.0,
        ge=0,
        le=3600,
        description="How old a marketplace call is when the billing pass charges it: "
        "each pass charges the calls up to now less this (a row committed later after "
        "its time is a late row, left to the recount).",
    )
    marketplace_recount_seconds: float = Field(
        3600.0,
        ge=60,
        le=30 * 86400,
        description="A charged window of marketplace calls is counted once more this "
        "long after it closed: a late row in it is charged (or credited) then.",
    )
    billing_interval: float = Field(
        300.0,
        gt=0,
        description="Seconds between billing passes (cut usage at the hour, charge wallets, "
        "check balances). Running resources are charged at least hourly.",
    )
    billing_signup_credit: Decimal = Field(
        Decimal("10.00"),
        ge=0,
        description="Credit a new organisation's wallet receives (an `adjustment` entry), "
        "so a new user can try Nefos before topping up. 0 for none.",
    )
    billing_low_balance_threshold: Decimal = Field(
        Decimal("5.00"),
        ge=0,
        description="Default low-balance threshold: under it a `billing_update` event and an "
        "alert are raised once.",
    )
    billing_grace_period: float = Field(
        86400.0,
        ge=0,
        description="Seconds an organisation may run on an empty wallet before its running "
        "instances are stopped (not deleted).",
    )
    billing_invoice_period: Literal["month", "week", "day"] = Field(
        "month", description="Length of an invoice period."
    )
    billing_invoice_due_days: int = Field(
        14, ge=0, description="Days after finalizing an invoice that it falls due."
    )
    billing_invoice_prefix: str = Field(
        "NEF",
        pattern=r"^[A-Z][A-Z0-9]{0,11}$",
        description="Prefix of invoice numbers (`NEF-2026-000123`; credit notes "
        "`NEF-CN-2026-000001`).",
    )
    billing_quote_validity_days: int = Field(30, ge=1, description="Days a quote stays valid.")
    billing_hours_per_month: int = Field(
        730, ge=1, le=744, description="Hours a month in quotes' monthly prices."
    )
    billing_min_payout: Decimal = Field(
        Decimal("10.00"), ge=0, description="Smallest payout an organisation may request."
    )
    stripe_secret_key: str | None = Field(
        None, description="Stripe secret key (`sk_...`): enables the `stripe` payment provider."
    )
    stripe_webhook_secret: str | None = Field(
        None,
        description="Stripe webhook signing secret (`whsec_...`) for `/payments/stripe/webhook`.",
    )
    stripe_api_base: str | None = Field(
        None, description="Stripe API base URL (a mock or proxy); default Stripe's own."
    )
    stripe_publishable_key: str | None = Field(
        None,
        description="Stripe publishable key (`pk_...`): the web console takes cards with "
        "Stripe.js (the `stripe` provider must be enabled too).",
    )
    stripe_js_url: str = Field(
        "https://js.stripe.com/v3/",
        description="Where the console loads Stripe.js from (Stripe's own; https, or http "
        "on a loopback address for a stand-in). The console's Content-Security-Policy "
        "allows its origin, and Stripe's API and frames, only when cards are enabled.",
    )

    # --- gateway: rate limits (nefos.gateway.ratelimit) ------------------------------
    rate_limit_enabled: bool = Field(
        True,
        description="Apply the rate limits below; every response carries `X-RateLimit-*` "
        "and `RateLimit`/`RateLimit-Policy` headers.",
    )
    rate_limit_auth: str = Field(
        "10/minute",
        pattern=RATE_PATTERN,
        description="Limit of the `auth` group (`/auth/...`), per user, API key or, "
        "anonymous, per IP. Form `N/second|minute|hour|day`, or `none`.",
    )
    rate_limit_containers: str = Field(
        "100/minute",
        pattern=RATE_PATTERN,
        description="Limit of the `containers` group (`/containers`, `/services`).",
    )
    rate_limit_monitoring: str = Field(
        "60/minute",
        pattern=RATE_PATTERN,
        description="Limit of the `monitoring` group (`/monitoring`, `/metrics`, "
        "`/alerts`, `/analytics`).",
    )
    rate_limit_billing: str = Field(
        "30/minute",
        pattern=RATE_PATTERN,
        description="Limit of the `billing` group (`/billing`, `/wallet`, `/payments`, "
        "`/invoices`, `/quotes`, `/products`).",
    )
    rate_limit_user: str = Field(
        "1000/hour",
        pattern=RATE_PATTERN,
        description="Overall limit of every request, per user, API key or anonymous IP.",
    )
    rate_limit_backend: Literal["auto", "memory", "redis"] = Field(
        "auto",
        description="Where counters live: `memory` (this process), `redis` (shared by "
        "every process) or `auto` (Redis when `NEFOS_REDIS_URL` is set).",
    )
    rate_limit_redis_failure: Literal["open", "closed"] = Field(
        "open",
        description="When Redis is unreachable: `open` admits requests (a warning in "
        "the log and `rate_limiter: degraded` in `/health`) or `closed` refuses them "
        "with 503.",
    )
    rate_limit_redis_timeout: float = Field(
        2.0,
        gt=0,
        le=60,
        description="Seconds a call to the limiter's Redis may take before Redis counts "
        "as unreachable (then `NEFOS_RATE_LIMIT_REDIS_FAILURE` applies). A timed-out "
        "call may still have counted in Redis.",
    )

    # --- gateway: request log and analytics (nefos.gateway.requestlog) ---------------
    request_log_enabled: bool = Field(
        True, description="Record every API request for `/analytics` and `GET /metrics`."
    )
    request_log_queue_size: int = Field(
        10000,
        ge=1,
        description="Requests waiting to be written; when full, new ones are dropped and "
        "counted (`nefos_request_log_dropped_total`).",
    )
    request_log_batch_size: int = Field(
        200,
        ge=1,
        description="Most requests written in one batch (the writer shares the event loop "
        "with the requests: smaller batches hold it for less at a time).",
    )
    request_log_flush_interval: float = Field(
        1.0, gt=0, description="Seconds between writes of the queued requests."
    )
    api_call_flush_interval: float = Field(
        0.05,
        gt=0,
        le=5,
        description="Seconds between two group writes of the gateway's answered calls "
        "(`api_calls`, billed): what a crash of the process may lose at most.",
    )
    api_call_buffer: int = Field(
        10000,
        ge=10,
        description="Answered gateway calls waiting to be written; at this many the "
        "gateway refuses new calls (503) until they are written.",
    )
    request_log_retention_days: float = Field(
        30.0, gt=0, description="Days requests are kept in the log."
    )
    geoip_database: Path | None = Field(
        None,
        description="A MaxMind-format country database (`.mmdb`, e.g. GeoLite2-Country) "
        "for `/analytics/geography`. Default: none, traffic is grouped by network.",
    )

    @field_validator("argon2_memory_kib")
    @classmethod
    def _argon2_memory(cls, v: int) -> int:
        if v < ARGON2_MIN_MEMORY_KIB:
            raise ValueError(f"must be at least {ARGON2_MIN_MEMORY_KIB} KiB (OWASP minimum)")
        return v

    @field_validator("argon2_time_cost")
    @classmethod
    def _argon2_time(cls, v: int) -> int:
        if v < ARGON2_MIN_TIME_COST:
            raise ValueError(f"must be at least {ARGON2_MIN_TIME_COST} (OWASP minimum)")
        return v

    @field_validator("argon2_parallelism")
    @classmethod
    def _argon2_lanes(cls, v: int) -> int:
        if v < ARGON2_MIN_PARALLELISM:
            raise ValueError("must be at least 1")
        return v

    @field_validator("stripe_publishable_key")
    @classmethod
    def _stripe_publishable_key(cls, v: str | None) -> str | None:
        if not v:
            return None  # unset, or set empty (cards off)
        # It is served to every user and every browser: a secret key here is a leak.
        if not v.startswith("pk_"):
            raise ValueError("must be a publishable key (pk_...), never a secret one")
        return v

    @field_validator("stripe_js_url")
    @classmethod
    def _stripe_js_url(cls, v: str) -> str:
        parts = urlsplit(v)
        loopback = parts.hostname in ("127.0.0.1", "localhost", "::1")
        if not parts.hostname or not (
            parts.scheme == "https" or (parts.scheme == "http" and loopback)
        ):
            raise ValueError("must be an https URL (or http on a loopback address)")
        try:
            parts.port  # noqa: B018 - raises for a port out of range
        except ValueError as exc:
            raise ValueError("has a port out of range") from exc
        return v

    @field_validator("container_port_range")
    @classmethod
    def _port_range(cls, v: str) -> str:
        parse_port_range(v)
        return v

    @field_validator("container_reserved_ports")
    @classmethod
    def _reserved_ports(cls, v: str) -> str:
        parse_port_list(v)
        return v

    @field_validator("forwarded_allow_ips")
    @classmethod
    def _proxies(cls, v: list[str]) -> list[str]:
        for entry in v:
            if entry.strip() != "*":
                ip_network(entry.strip(), strict=False)  # ValueError: not an address/CIDR
        return v

    @model_validator(mode="after")
    def _forwarded_alias(self) -> Settings:
        if self.trust_forwarded_for and not self.forwarded_allow_ips:
            self.forwarded_allow_ips = ["127.0.0.1", "::1"]
        return self

    @model_validator(mode="after")
    def _limits(self) -> Settings:
        if self.page_default_limit > self.page_max_limit:
            raise ValueError("page_default_limit must not exceed page_max_limit")
        return self

    @cached_property
    def resolved_database_url(self) -> str:
        """The URL with an async driver, whatever form the user wrote."""
        url = self.database_url or f"sqlite:///{(self.data_dir / 'nefos.db').resolve()}"
        return async_database_url(url)

    @cached_property
    def publish_policy(self) -> PublishPolicy:
        """Where tenants may publish container ports (see nefos.domain.publishing)."""
        low, high = parse_port_range(self.container_port_range)
        reserved = parse_port_list(self.container_reserved_ports) | {self.port}
        return PublishPolicy(low=low, high=high, reserved=reserved)

    @cached_property
    def resolved_image_dir(self) -> Path:
        return (self.image_dir or self.data_dir / "images").resolve()

    @cached_property
    def jwt_secret(self) -> str:
        if self.secret_key:
            return self.secret_key
        path = self.data_dir / "secret.key"
        if path.exists():
            return path.read_text().strip()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        key = secrets.token_urlsafe(48)
        # Written 0600 before the key goes in, so it is never world-readable.
        path.touch(mode=0o600, exist_ok=True)
        path.write_text(key)
        return key


def async_database_url(url: str) -> str:
    for plain, driver in (
        ("postgresql://", "postgresql+asyncpg://"),
        ("postgres://", "postgresql+asyncpg://"),
        ("postgresql+psycopg2://", "postgresql+asyncpg://"),
        ("postgresql+psycopg://", "postgresql+asyncpg://"),
        ("sqlite://", "sqlite+aiosqlite://"),
        ("sqlite+pysqlite://", "sqlite+aiosqlite://"),
    ):
        if url.startswith(plain):
            return driver + url[len(plain) :]
    return url


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def settings_table() -> str:
    """The README's configuration table, made from the Settings fields."""
    rows = ["| Variable | Default | Meaning |", "| --- | --- | --- |"]
    for name, field in Settings.model_fields.items():
        default = field.default
        if field.default_factory is not None:
            default = field.default_factory()  # type: ignore[call-arg]
        if default is None:
            shown = "—"
        elif isinstance(default, bool):
            shown = f"`{str(default).lower()}`"
        else:
            shown = f"`{default}`"
        rows.append(f"| `NEFOS_{name.upper()}` | {shown} | {field.description or ''} |")
    return "\n".join(rows)


if __name__ == "__main__":  # python -m nefos.config prints the table for the README
    print(settings_table())
