"""Reading and cancelling operations, with tenant checks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from nefos.db.models import Operation, Project
from nefos.db.session import begin_write
from nefos.domain.access import Permission, scopes_allow
from nefos.domain.errors import Conflict, NotFound
from nefos.domain.paging import PageParams
from nefos.operations import queue
from nefos.services.core import Core
from nefos.services.paging import fetch_page
from nefos.services.principal import Principal, authorize_project, visible_org_ids


def operation_error(op: Operation, *, engine_messages: bool = False) -> dict[str, Any] | None:
    """The operation's error as its owner sees it: a stable code and a plain message;
    the engine's raw text (``details.engine_message``) only for platform admins."""
    if not op.error_code:
        return None
    error: dict[str, Any] = {"code": op.error_code, "message": op.error_message or ""}
    raw = (op.params or {}).get(queue.ENGINE_MESSAGE)
    if engine_messages and raw:
        error["details"] = {"engine_message": raw}
    return error


def sees_engine_messages(principal: Principal) -> bool:
    """Platform admins (with the platform-admin scope) see engines' raw errors."""
    return principal.is_admin and scopes_allow(principal.scopes, Permission.PLATFORM_ADMIN)


def operation_public(op: Operation, *, engine_messages: bool = False) -> dict[str, Any]:
    return {
        "id": op.id,
        "kind": op.kind,
        "resource_type": op.resource_type,
        "resource_id": op.resource_id,
        "project_id": op.project_id,
        "status": op.status,
        "progress": op.progress,
        "attempts": op.attempts,
        "result": op.result,
        "error": operation_error(op, engine_messages=engine_messages),
        "created_at": op.created_at,
        "started_at": op.started_at,
        "finished_at": op.finished_at,
        "updated_at": op.updated_at,
    }


class OperationService:
    def __init__(self, core: Core, session: AsyncSession) -> None:
        self.core = core
        self.session = session

    async def visible(self, principal: Principal, op_id: str, permission: Permission) -> Operation:
        op = await self.session.get(Operation, op_id)
        if op is None:
            raise NotFound("Operation not found", operation_id=op_id)
        if op.project_id is None:
            # Host operations belong to the platform.
            if not principal.is_admin:
                raise NotFound("Operation not found", operation_id=op_id)
            principal.require_scope(Permission.PLATFORM_ADMIN)
            return op
        try:
            await authorize_project(self.session, principal, op.project_id, permission)
        except NotFound:
            raise NotFound("Operation not found", operation_id=op_id) from None
        return op

    async def list_page(
        self,
        principal: Principal,
        page: PageParams,
        *,
        resource_id: str | None,
        status: str | None,
    ) -> tuple[Sequence[Operation], int]:
        where: list[Any] = []
        if not principal.is_admin or principal.key_organisation_id is not None:
            orgs = await visible_org_ids(self.session, principal)
            where.append(
                Operation.project_id.in_(
                    select(Project.id).where(Project.organisation_id.in_(orgs))
                )
            )
        if resource_id:
            where.append(Operation.resource_id == resource_id)
        if status:
            where.append(Operation.status == status)
        return await fetch_page(
            self.session,
            Operation,
            *where,
            order_by=(Operation.created_at.desc(), Operation.id),
            page=page,
        )

    async def cancel(self, op: Operation) -> Operation:
        """Cancel a pending operation and undo what its request reserved."""
        await begin_write(self.session)
        current = await self.session.get(Operation, op.id, populate_existing=True)
        if current is None:
            raise NotFound("Operation not found", operation_id=op.id)
        status = current.status  # read before the rollback expires the row
        if status != queue.OpStatus.PENDING:
            await self.session.rollback()
            raise Conflict(
                f"Only a pending operation can be cancelled; this one is {status}",
                status=status,
            )
        handler = self.core.workers.handlers.get(current.kind)
        if not await queue.cancel_pending(self.session, current):
            await self.session.rollback()
            raise Conflict("The operation has just started; it can no longer be cancelled")
        if handler is not None and handler.on_cancel is not None:
            await handler.on_cancel(self.session, current)
        await self.session.commit()
        self.core.placer.invalidate()
        refreshed = await self.session.get(Operation, op.id, populate_existing=True)
        assert refreshed is not None
        return refreshed
