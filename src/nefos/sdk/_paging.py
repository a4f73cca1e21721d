"""Every item of a list, page after page, by keyset cursor."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from pydantic import BaseModel

from nefos.schemas.common import Page
from nefos.sdk._errors import NefosError

M = TypeVar("M", bound=BaseModel)

#: Pages :func:`iterate` reads at most, unless told otherwise (500 items a page:
#: half a million items).
MAX_PAGES = 1000


class TooManyPagesError(NefosError):
    """:func:`iterate` read ``max_pages`` pages and the list went on."""

    def __init__(self, max_pages: int, next_cursor: str) -> None:
        super().__init__(f"the list goes on after {max_pages} pages (next cursor {next_cursor})")
        self.max_pages = max_pages
        #: Where to go on from: pass it as ``cursor`` to the same list.
        self.next_cursor = next_cursor


def iterate(
    list_page: Callable[..., Page[M]],
    /,
    *args: Any,
    limit: int | None = 500,
    cursor: str | None = None,
    max_pages: int = MAX_PAGES,
    **filters: Any,
) -> Iterator[M]:
    """Each item of a list, in the list's order, following ``next_cursor`` from page
    to page, so that items added or removed meanwhile neither repeat nor go missing::

        for project in iterate(nefos.projects.list, organisation_id=org_id):
            ...

    ``list_page`` is a list method of the client (``nefos.vms.list``,
    ``nefos.organisations.list_children``, ...), called with ``*args``, ``filters``,
    ``limit`` items a page and the cursor. After ``max_pages`` pages with more to
    come, raises :class:`TooManyPagesError` (which holds the cursor to go on from).
    """
    if max_pages < 1:
        raise ValueError("max_pages must be at least 1")
    for _ in range(max_pages):
        page = list_page(*args, limit=limit, cursor=cursor, **filters)
        yield from page.items
        if page.pagination.next_cursor is None:
            return
        cursor = page.pagination.next_cursor
    raise TooManyPagesError(max_pages, cursor or "")
