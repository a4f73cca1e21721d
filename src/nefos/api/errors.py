"""The one map from errors to HTTP responses.

Domain errors carry their wire code; this module adds the status. Library errors
that reach here are mapped too: a database that cannot be reached is a 503, an
unexpected constraint violation a 409, anything else a 500 whose body names the
request id and nothing of the cause.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from nefos.domain import errors as e
from nefos.gateway.bodylimit import BodyTooLarge
from nefos.gateway.envelope import JSONResponse, error_body

log = logging.getLogger("nefos.api")

STATUS: dict[type[e.NefosError], int] = {
    e.ValidationFailed: 422,
    e.MalformedRequest: 400,
    e.Unauthorized: 401,
    e.Forbidden: 403,
    e.NotFound: 404,
    e.Conflict: 409,
    e.PaymentRequired: 402,
    e.ImagePullFailed: 422,
    e.RolledBack: 409,  # an operation's error; no request raises it
    e.ResourceExhausted: 409,
    e.RateLimited: 429,
    e.ServiceUnavailable: 503,
}

HTTP_CODES = {
    400: "VALIDATION_ERROR",
    401: "UNAUTHORIZED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    406: "UNSUPPORTED_VERSION",
    409: "CONFLICT",
    413: "PAYLOAD_TOO_LARGE",
    415: "VALIDATION_ERROR",
    422: "VALIDATION_ERROR",
    429: "RATE_LIMITED",
    503: "SERVICE_UNAVAILABLE",
}


def status_of(exc: e.NefosError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500


def request_id(request: Request) -> str:
    return str(request.scope.get("state", {}).get("request_id", ""))


def nefos_error_response(request: Request, exc: e.NefosError) -> Response:
    status = status_of(exc)
    details = dict(exc.details)
    headers: dict[str, str] = {}
    if isinstance(exc, e.RateLimited):
        headers["Retry-After"] = str(exc.retry_after)
    if isinstance(exc, e.Unauthorized):
        reason = details.get("reason")
        headers["WWW-Authenticate"] = (
            f'Bearer error="invalid_token", error_description="{reason}"' if reason else "Bearer"
        )
    if status >= 500:
        details["request_id"] = request_id(request)
    if exc.engine_message:
        if getattr(request.state, "engine_messages", False):  # set by api/deps.py
            details["engine_message"] = exc.engine_message
    return JSONResponse(error_body(exc.code, exc.message, details), status, headers=headers)


def _field(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header", "form")]
    return ".".join(parts) or "body"


def _message(err: dict[str, Any]) -> str:
    msg = str(err.get("msg", "Invalid value"))
    return msg.removeprefix("Value error, ")


SEND_JSON = "Send the body as JSON with Content-Type: application/json"


def _is_json(content_type: str | None) -> bool:
    media = (content_type or "").split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


def _json_error(err: dict[str, Any], doc: Any) -> str:
    """``Invalid JSON at line L, column C: <what>`` from the parser's offset."""
    loc = tuple(err.get("loc", ()))
    pos = loc[1] if len(loc) > 1 and isinstance(loc[1], int) else None
    what = str((err.get("ctx") or {}).get("error") or "not valid JSON")
    if pos is None or not isinstance(doc, str):
        return f"Invalid JSON: {what}"
    line = doc.count("\n", 0, pos) + 1
    column = pos - doc.rfind("\n", 0, pos)
    return f"Invalid JSON at line {line}, column {column}: {what}"


async def validation_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    malformed = [err for err in errors if err.get("type") == "json_invalid"]
    if malformed:  # where the parser stopped, in lines and columns, not an offset
        where = {"body": _json_error(malformed[0], exc.body)}
        return JSONResponse(error_body("VALIDATION_ERROR", "Malformed JSON body", where), 400)
    if not _is_json(request.headers.get("content-type")) and any(
        tuple(err.get("loc", ())) == ("body",) for err in errors
    ):
        # A JSON route sent no body, or one it did not parse for want of the header.
        return JSONResponse(error_body("VALIDATION_ERROR", SEND_JSON, {"body": SEND_JSON}), 422)
    details: dict[str, str] = {}
    for err in errors:
        details.setdefault(_field(tuple(err.get("loc", ()))), _message(err))
    return JSONResponse(error_body("VALIDATION_ERROR", "Invalid input parameters", details), 422)


async def http_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    code = HTTP_CODES.get(exc.status_code, "INTERNAL_ERROR" if exc.status_code >= 500 else "ERROR")
    message = exc.detail if isinstance(exc.detail, str) else "Error"
    if exc.status_code == 404 and message == "Not Found":
        message = "No such route"
    details: dict[str, Any] = {}
    if exc.status_code >= 500:
        details["request_id"] = request_id(request)
    if isinstance(exc, BodyTooLarge):
        details["limit"] = exc.limit
    return JSONResponse(
        error_body(code, message, details), exc.status_code, headers=getattr(exc, "headers", None)
    )


async def nefos_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, e.NefosError)
    return nefos_error_response(request, exc)


async def database_handler(request: Request, exc: Exception) -> Response:
    if isinstance(exc, IntegrityError):
        log.warning("integrity error: %s", exc.orig)
        return nefos_error_response(request, e.Conflict("Conflicts with an existing record"))
    if isinstance(exc, OperationalError | InterfaceError) and _is_unavailable(exc):
        log.error("database unavailable: %s", exc.orig)
        return nefos_error_response(request, e.ServiceUnavailable("The database is unavailable"))
    return await unhandled_handler(request, exc)


def _is_unavailable(exc: DBAPIError) -> bool:
    text = str(exc.orig).lower()
    return exc.connection_invalidated or any(
        s in text for s in ("connect", "connection", "database is locked", "unable to open")
    )


async def unhandled_handler(request: Request, exc: Exception) -> Response:
    rid = request_id(request)
    log.exception("unhandled error in %s %s (request %s)", request.method, request.url.path, rid)
    return JSONResponse(
        error_body("INTERNAL_ERROR", "Internal server error", {"request_id": rid}), 500
    )


def install(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, validation_handler)
    app.add_exception_handler(StarletteHTTPException, http_handler)
    app.add_exception_handler(e.NefosError, nefos_handler)
    app.add_exception_handler(DBAPIError, database_handler)
    # Anything else is turned into a 500 envelope by gateway.context, which also
    # sets the request id on it.
