"""A request's move of a compute object (``nefos.domain.lifecycle``), recorded with its
operation in one write transaction."""

from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession

from nefos.db.models import Container, Operation, Vm
from nefos.db.session import begin_write
from nefos.domain.actors import SystemActor
from nefos.domain.errors import NotFound
from nefos.domain.lifecycle import Lifecycle
from nefos.operations import enqueue
from nefos.services.core import Core
from nefos.services.principal import Principal

M = TypeVar("M", Vm, Container)


async def transition(
    core: Core,
    session: AsyncSession,
    lifecycle: Lifecycle[Any],
    model: type[M],
    object_id: str,
    principal: Principal | SystemActor,
    action: str,
    params: dict[str, Any] | None = None,
) -> tuple[M, Operation]:
    """Move the object by ``action`` and enqueue the ``{kind}.{action}`` operation.

    The object is read again inside the write transaction and the move checked there,
    so a request that raced another (a delete, a stop) sees its outcome: 404 if the
    object is gone, 409 if the move is not allowed from where it now is. The
    operation keeps where the object was (``from_status``, ``from_desired``) for a
    failed or cancelled operation to put it back."""
    await begin_write(session)
    try:
        current = await session.get(model, object_id, populate_existing=True)
        if current is None:
            raise NotFound(f"{lifecycle.title} not found", **{lifecycle.id_field: object_id})
        move = lifecycle.move(action, current.status)
        op = await enqueue(
            session,
            kind=f"{lifecycle.kind}.{action}",
            resource_type=lifecycle.kind,
            resource_id=current.id,
            project_id=current.project_id,
            user_id=principal.user_id,
            params={
                "from_status": current.status,
                "from_desired": current.desired,
                **(params or {}),
                **(principal.record() if isinstance(principal, SystemActor) else {}),
            },
        )
        current.status = move.to
        if move.desired is not None:
            current.desired = move.desired
        await session.commit()
    except BaseException:
        if session.in_transaction():
            await session.rollback()
        raise
    core.workers.notify()
    return current, op
