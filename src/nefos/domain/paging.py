"""Windows over a list: offset pages (``page``/``skip`` + ``limit``) and keyset pages
(``cursor`` + ``limit``), and the opaque cursor that names a keyset position.

A cursor is ``urlsafe-base64(version || payload || tag)`` where the payload is the
sort key of the last row a page showed (JSON, each value tagged with its type) and
the tag is an HMAC-SHA256 (truncated to 16 bytes) over the version, the payload and
the list's *scope*: the path and the filters of the request it was made for, under
a key derived from the installation's secret. So a cursor cannot be forged, nor
carried from one list, one set of filters or one installation to another. It grants
nothing: the list's access rules and filters are applied afresh on every page, so
it only says where to start within what the caller may see anyway.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import orjson

from nefos.domain.errors import ValidationFailed

CURSOR_VERSION = 1
_TAG_BYTES = 16
#: A cursor longer than this is refused before it is decoded (a sort key is a few
#: short values; the limit keeps a hostile one from costing anything).
MAX_CURSOR_CHARS = 1024

#: One value of a sort key.
KeyValue = str | int | bool | datetime | Decimal
SortKey = tuple[KeyValue, ...]


class InvalidCursor(ValidationFailed):
    """422, with the reason under ``details.cursor`` as for any invalid parameter."""

    default_message = "Invalid cursor: start again without one"

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message, cursor=message or self.default_message)


def _tagged(value: KeyValue) -> list[Any]:
    # bool before int: a bool is an int to isinstance.
    if isinstance(value, bool):
        return ["b", value]
    if isinstance(value, int):
        return ["i", value]
    if isinstance(value, str):
        return ["s", value]
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("a cursor holds aware datetimes only")
        return ["t", value.isoformat()]
    if isinstance(value, Decimal):
        return ["d", str(value)]
    raise TypeError(f"a cursor cannot hold a {type(value).__name__}")


def _untagged(item: Any) -> KeyValue:
    if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)):
        raise InvalidCursor()
    tag, raw = item
    if tag == "b" and isinstance(raw, bool):
        return raw
    if tag == "i" and isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    if tag == "s" and isinstance(raw, str):
        return raw
    if tag == "t" and isinstance(raw, str):
        try:
            moment = datetime.fromisoformat(raw)
        except ValueError:
            raise InvalidCursor() from None
        if moment.tzinfo is None:
            raise InvalidCursor()
        return moment
    if tag == "d" and isinstance(raw, str):
        try:
            number = Decimal(raw)
        except InvalidOperation:
            raise InvalidCursor() from None
        if not number.is_finite():
            raise InvalidCursor()
        return number
    raise InvalidCursor()


@dataclass(frozen=True, slots=True)
class CursorCodec:
    """Signs and checks the cursors of one list (``scope``) of one installation (``key``)."""

    key: bytes
    scope: bytes

    @classmethod
    def for_list(cls, secret: str, scope: str) -> CursorCodec:
        key = hmac.new(secret.encode(), b"nefos-list-cursor-v1", hashlib.sha256).digest()
        return cls(key=key, scope=scope.encode("utf-8", "surrogatepass"))

    def _tag(self, head: bytes) -> bytes:
        mac = hmac.new(self.key, head, hashlib.sha256)
        mac.update(b"\x00")
        mac.update(self.scope)
        return mac.digest()[:_TAG_BYTES]

    def encode(self, values: SortKey) -> str:
        head = bytes([CURSOR_VERSION]) + orjson.dumps([_tagged(v) for v in values])
        raw = head + self._tag(head)
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    def decode(self, token: str) -> SortKey:
        """The sort key ``token`` names; InvalidCursor (422) for anything this list of
        this installation did not make: garbage, a truncated or altered cursor, one of
        another list or filters, or of an older format."""
        if not token or len(token) > MAX_CURSOR_CHARS:
            raise InvalidCursor()
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (binascii.Error, ValueError):
            raise InvalidCursor() from None
        if len(raw) <= 1 + _TAG_BYTES:
            raise InvalidCursor()
        head, tag = raw[:-_TAG_BYTES], raw[-_TAG_BYTES:]
        if not hmac.compare_digest(tag, self._tag(head)):
            raise InvalidCursor(
                "Invalid cursor: it was not made by this list with these filters "
                "(start again without a cursor)"
            )
        if head[0] != CURSOR_VERSION:
            raise InvalidCursor("This cursor is from an older version; start again")
        try:
            items = orjson.loads(head[1:])
        except orjson.JSONDecodeError:
            raise InvalidCursor() from None
        if not isinstance(items, list) or not items:
            raise InvalidCursor()
        return tuple(_untagged(i) for i in items)


@dataclass(slots=True)
class PageEnd:
    """Where a page ended, noted by the query that read it (``services.paging``), so
    that the answer's ``next_cursor`` needs no threading through each service."""

    #: The sort key of the page's last row when more rows follow; None on the last page.
    after: SortKey | None = None
    #: True once a keyset-capable query read the page (a cursor was honoured).
    keyset: bool = False


@dataclass(frozen=True, slots=True)
class PageParams:
    """A window over a list: ``page``+``limit`` and ``skip``+``limit`` map to
    ``offset``; ``cursor``+``limit`` to ``after`` (the sort key to start after, with
    ``offset`` 0)."""

    offset: int
    limit: int
    after: SortKey | None = None
    cursors: CursorCodec | None = None
    end: PageEnd = field(default_factory=PageEnd, compare=False)

    @property
    def page(self) -> int:
        return self.offset // self.limit + 1

    def pages(self, total: int) -> int:
        return max(1, math.ceil(total / self.limit)) if total else 0

    def next_cursor(self) -> str | None:
        if self.cursors is None or self.end.after is None:
            return None
        return self.cursors.encode(self.end.after)
