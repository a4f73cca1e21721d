"""One-time tickets for the WebSocket handshake (``POST /ws/ticket``, ``/ws?ticket=``).

A browser cannot set headers on a WebSocket handshake, and a long-lived credential
in a URL ends up in logs, proxies and history. So a client authenticated by any
accepted credential asks for a ticket, and opens ``/ws?ticket=<ticket>`` with it:

* the ticket is random (``nft_`` and 256 bits); only its SHA-256 is stored, in the
  database, so any server process of the installation can take it;
* it is short-lived (``ws_ticket_ttl``) and taken exactly once: redeeming deletes
  its row (``DELETE ... RETURNING``), so of two handshakes with one ticket, on one
  process or two, exactly one gets it;
* it stands for the caller's session or API key (a :class:`~nefos.services.auth.Grant`),
  which the socket re-checks like the credential itself: a logout, a revoked key, a
  disabled user or an expired token closes it, and an unused ticket of a revoked
  session or key opens nothing (the handshake checks the credential too).
"""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta

from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncSession

from nefos.db.models import WsTicket
from nefos.db.session import begin_write
from nefos.db.types import utcnow
from nefos.domain.errors import Unauthorized
from nefos.security.apikeys import hash_secret
from nefos.services.auth import Grant
from nefos.services.core import Core
from nefos.services.principal import Principal

TICKET_PREFIX = "nft_"
MAX_TICKET = 100


class WsTicketService:
    def __init__(self, core: Core, session: AsyncSession) -> None:
        self.core = core
        self.session = session

    async def issue(self, principal: Principal) -> tuple[str, datetime]:
        """A new ticket for ``principal`` and when it expires."""
        raw = TICKET_PREFIX + secrets.token_urlsafe(32)
        grant = Grant.of(principal)
        now = utcnow()
        expires_at = now + timedelta(seconds=self.core.settings.ws_ticket_ttl)
        await begin_write(self.session)
        # Unused tickets do not pile up: each issue sweeps the expired ones.
        await self.session.execute(delete(WsTicket).where(WsTicket.expires_at <= now))
        self.session.add(
            WsTicket(
                ticket_hash=hash_secret(raw),
                user_id=grant.user_id,
                session_id=grant.session_id,
                api_key_id=grant.api_key_id,
                credential_expires_at=grant.credential_expires_at,
                created_at=now,
                expires_at=expires_at,
            )
        )
        await self.session.commit()
        return raw, expires_at

    async def redeem(self, raw: str) -> Grant:
        """Take the ticket (once): what it stands for. An unknown, spent or expired
        ticket raises ``Unauthorized``."""
        if not raw.startswith(TICKET_PREFIX) or len(raw) > MAX_TICKET:
            raise Unauthorized("Invalid or spent ticket", reason="invalid_ticket")
        await begin_write(self.session)
        row = (
            await self.session.execute(
                delete(WsTicket)
                .where(WsTicket.ticket_hash == hash_secret(raw))
                .returning(
                    WsTicket.user_id,
                    WsTicket.session_id,
                    WsTicket.api_key_id,
                    WsTicket.credential_expires_at,
                    WsTicket.expires_at,
                )
            )
        ).one_or_none()
        await self.session.commit()
        if row is None:
            raise Unauthorized("Invalid or spent ticket", reason="invalid_ticket")
        if row.expires_at <= utcnow():
            raise Unauthorized("The ticket has expired", reason="ticket_expired")
        return Grant(
            user_id=row.user_id,
            session_id=row.session_id,
            api_key_id=row.api_key_id,
            credential_expires_at=row.credential_expires_at,
        )
