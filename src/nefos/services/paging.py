"""One way to read a page of rows and the total they are a page of."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from nefos.domain.paging import PageParams

M = TypeVar("M")


async def fetch_page(
    session: AsyncSession,
    model: type[M],
    *where: Any,
    order_by: Sequence[Any],
    page: PageParams,
) -> tuple[Sequence[M], int]:
    """Rows of ``model`` matching ``where``, in ``order_by`` order (end it with a
    unique column so pages never overlap), and the count of all that match."""
    total = await session.scalar(select(func.count()).select_from(model).where(*where))
    rows = (
        await session.scalars(
            select(model).where(*where).order_by(*order_by).offset(page.offset).limit(page.limit)
        )
    ).all()
    return rows, total or 0
