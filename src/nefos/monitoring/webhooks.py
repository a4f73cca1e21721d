"""Signed webhook deliveries, and the guard that keeps them off internal networks.

A delivery is a row (``WebhookDelivery``) written in the transaction that made its
event (an alert firing or resolving), so that no event is told without being
recorded nor recorded without being told. The dispatcher sends the due ones:

* ``POST`` of the JSON payload, with ``X-Nefos-Event``, ``X-Nefos-Delivery`` and
  ``X-Nefos-Signature: t=<unix time>,v1=<hex HMAC-SHA256 of "<t>.<body>">``, keyed
  with the webhook's secret (the scheme of Stripe's signatures);
* a 2xx answer is success; anything else (a redirect too: none is followed, a
  timeout, a refused connection) is retried after ``webhook_retry_base`` seconds,
  doubled at each attempt, until ``webhook_max_attempts``; every attempt is logged
  on the delivery.

Server-side request forgery: a webhook URL must be http(s) and its host must
resolve only to public addresses (the guard of :mod:`nefos.security.addresses`,
shared with image pulls); loopback, private, link-local (the cloud
metadata address 169.254.169.254 among them), shared (CGNAT), multicast,
reserved and unspecified addresses, and their IPv6 forms (IPv4-mapped, NAT64,
6to4, Teredo) are refused unless inside ``webhook_allowed_networks``. The check
runs when the webhook is made and again at each delivery, whose connection goes
to the very address that was checked (the Host header and TLS SNI carry the
name), so a DNS answer that changes in between cannot redirect it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
from sqlalchemy import select, update

from nefos import __version__
from nefos.db.models import Webhook, WebhookDelivery
from nefos.db.session import Database, begin_write
from nefos.domain.errors import ValidationFailed
from nefos.security.addresses import (
    IPAddress,
    IPNetwork,
    UnsafeTarget,
    check_address,
    parse_networks,
    resolve,
)

log = logging.getLogger("nefos.webhooks")

SIGNATURE_HEADER = "X-Nefos-Signature"
EVENT_HEADER = "X-Nefos-Event"
DELIVERY_HEADER = "X-Nefos-Delivery"
MAX_ERROR = 500  # characters of an error kept on a delivery
MAX_BATCH = 20  # deliveries claimed at once
CLAIM_LEASE = timedelta(minutes=5)  # a claimed delivery is retried after this if we die


@dataclass(frozen=True, slots=True)
class Target:
    """A checked URL and the address to connect to."""

    url: httpx.URL
    host: str  # as written (the Host header and the TLS name)
    ip: IPAddress


def parse_url(raw: str) -> httpx.URL:
    try:
        url = httpx.URL(raw)
    except (httpx.InvalidURL, ValueError, TypeError) as exc:
        raise UnsafeTarget(f"not a valid URL ({exc})") from None
    if url.scheme not in ("http", "https"):
        raise UnsafeTarget("only http and https URLs are allowed")
    if not url.host:
        raise UnsafeTarget("the URL has no host")
    if url.userinfo:
        raise UnsafeTarget("credentials in the URL are not allowed (sign with the secret)")
    try:
        port = url.port
    except ValueError as exc:
        raise UnsafeTarget(f"invalid port ({exc})") from None
    if port is not None and not 0 < port < 65536:
        raise UnsafeTarget("invalid port")
    return url


async def check_target(raw: str, allowed: Sequence[IPNetwork]) -> Target:
    """The URL checked, resolved, and every address it resolves to allowed; else
    ``UnsafeTarget``. Nothing is connected to."""
    url = parse_url(raw)
    port = url.port or (443 if url.scheme == "https" else 80)
    addresses = await resolve(url.host, port)
    for ip in addresses:
        check_address(ip, allowed)
    return Target(url=url, host=url.host, ip=addresses[0])


async def validate_webhook_url(raw: str, allowed_networks: Iterable[str]) -> str:
    """For the API: the URL, or ``ValidationFailed`` (422) saying why not."""
    try:
        await check_target(
            raw, parse_networks(allowed_networks, setting="webhook_allowed_networks")
        )
    except UnsafeTarget as exc:
        raise ValidationFailed(f"Webhook URL refused: {exc}", url=str(exc)) from None
    return raw


# --- signing ---------------------------------------------------------------------------
def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The hex HMAC-SHA256 of ``"<timestamp>.<body>"`` keyed with ``secret``."""
    message = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def signature_header(secret: str, body: bytes, timestamp: int | None = None) -> str:
    t = int(time.time()) if timestamp is None else timestamp
    return f"t={t},v1={signature(secret, t, body)}"


def verify_signature(secret: str, header: str, body: bytes, *, tolerance: int = 300) -> bool:
    """What a receiver does (see docs/operations.md): the timestamp is recent and one
    ``v1`` matches."""
    parts: dict[str, list[str]] = {}
    for item in header.split(","):
        key, _, value = item.strip().partition("=")
        parts.setdefault(key, []).append(value)
    try:
        t = int(parts["t"][0])
    except (KeyError, ValueError):
        return False
    if abs(time.time() - t) > tolerance:
        return False
    expected = signature(secret, t, body)
    return any(hmac.compare_digest(expected, v) for v in parts.get("v1", []))


# --- sending ---------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Attempt:
    ok: bool
    status_code: int | None
    error: str | None
    duration_ms: int


def _ip_url(target: Target) -> httpx.URL:
    return target.url.copy_with(host=str(target.ip))


async def send(
    http: httpx.AsyncClient,
    url: str,
    *,
    secret: str,
    event_type: str,
    delivery_id: str,
    body: bytes,
    allowed: Sequence[IPNetwork],
    timeout_seconds: float,
) -> Attempt:
    """One attempt: the URL checked again and called at the checked address."""
    started = time.monotonic()

    def took() -> int:
        return int((time.monotonic() - started) * 1000)

    try:
        target = await check_target(url, allowed)
    except UnsafeTarget as exc:
        return Attempt(False, None, f"refused: {exc}"[:MAX_ERROR], took())
    headers = {
        "Content-Type": "application/json",
        "User-Agent": f"Nefos-Webhooks/{__version__}",
        "Host": target.url.netloc.decode("ascii"),
        EVENT_HEADER: event_type,
        DELIVERY_HEADER: delivery_id,
        SIGNATURE_HEADER: signature_header(secret, body),
    }
    extensions: dict[str, Any] = {"timeout": httpx.Timeout(timeout_seconds).as_dict()}
    if target.url.scheme == "https":
        extensions["sni_hostname"] = target.host
    request = http.build_request("POST", _ip_url(target), headers=headers, content=body)
    request.extensions.update(extensions)
    try:
        response = await http.send(request, follow_redirects=False)
        await response.aclose()
    except httpx.HTTPError as exc:
        return Attempt(False, None, f"{type(exc).__name__}: {exc}"[:MAX_ERROR], took())
    if 200 <= response.status_code < 300:
        return Attempt(True, response.status_code, None, took())
    reason = "redirect not followed" if response.is_redirect else "non-2xx answer"
    return Attempt(False, response.status_code, f"HTTP {response.status_code} ({reason})", took())


def payload_bytes(payload: dict[str, Any]) -> bytes:
    return orjson.dumps(payload)


class WebhookDispatcher:
    """Sends due deliveries; started and stopped with the app."""

    def __init__(
        self,
        db: Database,
        *,
        timeout: float,
        max_attempts: int,
        retry_base: float,
        allowed_networks: Iterable[str],
        poll_interval: float = 1.0,
    ) -> None:
        self.db = db
        self.timeout = timeout
        self.max_attempts = max_attempts
        self.retry_base = retry_base
        self.allowed = parse_networks(allowed_networks, setting="webhook_allowed_networks")
        self.poll_interval = poll_interval
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._http: httpx.AsyncClient | None = None
        self.sent = 0
        self.failed = 0

    @classmethod
    def from_settings(cls, db: Database, settings: Any) -> WebhookDispatcher:
        return cls(
            db,
            timeout=settings.webhook_timeout,
            max_attempts=settings.webhook_max_attempts,
            retry_base=settings.webhook_retry_base,
            allowed_networks=settings.webhook_allowed_networks,
        )

    # --- life ---------------------------------------------------------------------
    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            # No proxies from the environment: the checked address is the one called.
            self._http = httpx.AsyncClient(trust_env=False, follow_redirects=False)
        return self._http

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="nefos-webhooks")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    def wake(self) -> None:
        """New deliveries are due: look now rather than at the next poll."""
        self._wake.set()

    async def _loop(self) -> None:
        while True:
            try:
                while await self.run_once():
                    pass
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("webhook dispatch pass failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_interval)
            self._wake.clear()

    # --- one pass -----------------------------------------------------------------
    async def _claim(self, now: datetime) -> list[tuple[WebhookDelivery, Webhook]]:
        """Due deliveries, each claimed by moving its next attempt past a lease (a
        guarded UPDATE: two dispatchers never send one delivery at once). Each
        statement reads one table, so the poll never holds locks on two at once."""
        async with self.db.sessionmaker() as session:
            due = (
                await session.scalars(
                    select(WebhookDelivery)
                    .where(
                        WebhookDelivery.status == "pending",
                        WebhookDelivery.next_attempt_at <= now,
                    )
                    .order_by(WebhookDelivery.next_attempt_at, WebhookDelivery.id)
                    .limit(MAX_BATCH)
                )
            ).all()
            await session.commit()
            claimed = []
            for delivery in due:
                result = await session.execute(
                    update(WebhookDelivery)
                    .where(
                        WebhookDelivery.id == delivery.id,
                        WebhookDelivery.status == "pending",
                        WebhookDelivery.next_attempt_at == delivery.next_attempt_at,
                    )
                    .values(next_attempt_at=now + CLAIM_LEASE)
                )
                await session.commit()
                if result.rowcount != 1:  # type: ignore[attr-defined]
                    continue
                webhook = await session.get(Webhook, delivery.webhook_id)
                await session.commit()
                if webhook is not None:
                    claimed.append((delivery, webhook))
            return claimed

    async def run_once(self, now: datetime | None = None) -> int:
        """Send every delivery due at ``now``; how many were attempted."""
        now = now or datetime.now(UTC)
        claimed = await self._claim(now)
        for delivery, webhook in claimed:
            await self._attempt(delivery, webhook)
        return len(claimed)

    async def _attempt(self, delivery: WebhookDelivery, webhook: Webhook) -> None:
        if not webhook.enabled:
            attempt = Attempt(False, None, "webhook disabled", 0)
        else:
            attempt = await send(
                self._client(),
                webhook.url,
                secret=webhook.secret,
                event_type=delivery.event_type,
                delivery_id=delivery.id,
                body=payload_bytes(delivery.payload),
                allowed=self.allowed,
                timeout_seconds=self.timeout,
            )
        finished = datetime.now(UTC)
        async with self.db.sessionmaker() as session:
            # A read-modify-write: on SQLite it takes the write lock up front, so a
            # writer that commits in between makes it wait, not fail "locked".
            await begin_write(session)
            row = await session.get(WebhookDelivery, delivery.id, populate_existing=True)
            if row is None:  # the webhook was deleted meanwhile
                return
            row.attempts += 1
            row.last_status_code = attempt.status_code
            row.last_error = attempt.error
            row.log = [
                *row.log,
                {
                    "attempt": row.attempts,
                    "at": finished.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                    "status_code": attempt.status_code,
                    "error": attempt.error,
                    "duration_ms": attempt.duration_ms,
                },
            ][-50:]
            if attempt.ok:
                row.status = "succeeded"
                row.delivered_at = finished
                row.next_attempt_at = None
                self.sent += 1
            elif row.attempts >= self.max_attempts or not webhook.enabled:
                row.status = "failed"
                row.next_attempt_at = None
                self.failed += 1
            else:
                row.next_attempt_at = finished + timedelta(seconds=self.retry_delay(row.attempts))
            await session.commit()
        if not attempt.ok:
            log.info(
                "webhook %s delivery %s attempt %d: %s",
                webhook.id,
                delivery.id,
                delivery.attempts + 1,
                attempt.error,
            )

    def retry_delay(self, attempts: int) -> float:
        """Seconds before the next attempt after ``attempts`` failed ones."""
        return float(self.retry_base * 2 ** (attempts - 1))
