"""The response envelope of API.md, serialised once with orjson.

It lives in the gateway, the lower of the two layers that answer HTTP: the pure
ASGI middlewares refuse requests in it (:func:`send_error`) before the app runs,
and the API's routes and error map answer in it.

Routes declare ``response_model=Envelope[X]`` for the OpenAPI schema and return
:func:`ok`, whose body is built straight from the pydantic model; FastAPI does not
validate a returned ``Response`` a second time.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
from pydantic import BaseModel
from starlette.responses import Response
from starlette.types import Send

from nefos.domain.errors import ValidationFailed
from nefos.domain.paging import PageParams


def utc_timestamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _plain(data: Any) -> Any:
    if isinstance(data, datetime):  # ISO 8601 UTC with Z, as pydantic writes it
        return data.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(data, BaseModel):
        return data.model_dump(mode="json")
    if isinstance(data, list | tuple):
        return [_plain(d) for d in data]
    if isinstance(data, dict):
        return {k: _plain(v) for k, v in data.items()}
    return data


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def ok(
    data: Any,
    status_code: int = 200,
    headers: dict[str, str] | None = None,
    **top_level: Any,
) -> JSONResponse:
    body = {"success": True, "data": _plain(data), "error": None, "timestamp": utc_timestamp()}
    body.update(top_level)
    return JSONResponse(body, status_code=status_code, headers=headers)


def page(items: Sequence[Any], total: int, params: PageParams, **extra: Any) -> dict[str, Any]:
    """A list's ``data``: its items and ``pagination``. ``next_cursor`` continues after
    the last item (null on the last page); on a page read by cursor, ``page`` and
    ``pages`` are null (a keyset page has no number)."""
    if params.after is not None and not params.end.keyset:
        # A list that does not read through services.paging cannot honour a cursor:
        # refused rather than answered with its first page again (a loop for clients).
        raise ValidationFailed("This list does not take a cursor", cursor="not supported here")
    keyset = params.after is not None
    return {
        "items": [_plain(i) for i in items],
        "pagination": {
            "page": None if keyset else params.page,
            "limit": params.limit,
            "total": total,
            "pages": None if keyset else params.pages(total),
            "next_cursor": params.next_cursor(),
        },
        **extra,
    }


def listing(items: Sequence[Any], key: str, total: int, params: PageParams) -> JSONResponse:
    """A list answer: ``{items, <key>: items, pagination}``, ``key`` being the seed's
    own name for the list (``containers``, ``vms``, ...)."""
    body = page(items, total, params)
    body[key] = body["items"]
    return ok(body)


def error_body(code: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "success": False,
        "data": None,
        "error": {"code": code, "message": message, "details": details or {}},
        "detail": message,
        "timestamp": utc_timestamp(),
    }


async def send_error(
    send: Send,
    status: int,
    code: str,
    message: str,
    details: dict[str, Any] | None = None,
    headers: Sequence[tuple[bytes, bytes]] = (),
) -> None:
    """The error envelope straight to an ASGI ``send``, for the pure ASGI middlewares
    that answer before (or instead of) the app."""
    raw = orjson.dumps(error_body(code, message, details))
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(raw)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": raw})
