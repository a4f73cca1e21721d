"""The SDK's exception tree, and the one map from an HTTP answer to it.

    NefosError                      anything the SDK raises on purpose
    ├── NefosAPIError               the API answered with an error (or a body it cannot read)
    │   ├── ValidationError             VALIDATION_ERROR     400, 422; PAYLOAD_TOO_LARGE 413
    │   ├── AuthenticationError         UNAUTHORIZED         401
    │   ├── PermissionDeniedError       FORBIDDEN            403
    │   ├── NotFoundError               NOT_FOUND            404 (also: another tenant's object)
    │   ├── ConflictError               CONFLICT             409
    │   ├── ResourceExhaustedError      RESOURCE_EXHAUSTED   409, 402, 429 (a plan's quota)
    │   ├── RateLimitedError            RATE_LIMITED         429, with ``retry_after``
    │   ├── ServiceUnavailableError     SERVICE_UNAVAILABLE  503
    │   └── InternalServerError         INTERNAL_ERROR       500
    ├── OperationFailedError        an operation failed or was cancelled; ``code``: its error's
    ├── OperationTimeoutError       ``operations.wait`` gave up before the operation ended
    └── TransportError              no answer at all: connection refused, timeout, ...

An error is classed by its wire ``code`` first and, for codes this SDK does not
know, by its HTTP status. httpx's own errors are wrapped in :class:`TransportError`
with ``raise ... from exc``, so the cause stays in ``__cause__``.
"""

from __future__ import annotations

import email.utils
import time
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from nefos.schemas.compute import OperationPublic


class NefosError(Exception):
    """Base class of every exception the SDK raises on purpose."""


class NefosAPIError(NefosError):
    """The API answered with an error envelope (or with a body that is not one).

    ``code`` is the wire code of ``shared/API.md`` (``NOT_FOUND``, ...), ``details``
    the envelope's ``error.details`` and ``request_id`` the ``X-Request-ID`` of the
    answer, to quote in a bug report.
    """

    def __init__(
        self,
        status_code: int,
        code: str,
        message: str,
        details: dict[str, Any] | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.code = code
        self.message = message
        self.details: dict[str, Any] = details or {}
        self.request_id = request_id

    def __str__(self) -> str:
        text = f"{self.message} ({self.code}, HTTP {self.status_code})"
        return f"{text} [request {self.request_id}]" if self.request_id else text

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(status_code={self.status_code}, code={self.code!r}, "
            f"message={self.message!r}, details={self.details!r}, "
            f"request_id={self.request_id!r})"
        )


class ValidationError(NefosAPIError):
    """The request was malformed or failed validation; ``details`` maps fields to reasons."""


class AuthenticationError(NefosAPIError):
    """Missing, invalid, expired or revoked credentials (401).

    ``reason`` is the server's ``details.reason`` (``token_expired``,
    ``session_revoked``, ``invalid_api_key``, ...) when it gave one.
    """

    @property
    def reason(self) -> str | None:
        reason = self.details.get("reason")
        return str(reason) if reason is not None else None


class PermissionDeniedError(NefosAPIError):
    """Authenticated, but the role or the API key's scope does not allow it (403)."""


class NotFoundError(NefosAPIError):
    """No such object, or one of another tenant (the API does not tell them apart)."""


class ConflictError(NefosAPIError):
    """The request conflicts with the current state (409)."""


class ResourceExhaustedError(NefosAPIError):
    """A quota, capacity or wallet limit would be exceeded (409, or 402 for an empty wallet)."""


class RateLimitedError(NefosAPIError):
    """Too many requests (429). ``retry_after`` is in seconds, when the API said."""

    def __init__(
        self,
        status_code: int,
        code: str,
        message: str,
        details: dict[str, Any] | None = None,
        request_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(status_code, code, message, details, request_id)
        self.retry_after = retry_after


class ServiceUnavailableError(NefosAPIError):
    """A dependency of the API (driver, host, database, Redis) is down (503)."""


class InternalServerError(NefosAPIError):
    """The API failed (500). Quote ``request_id`` when reporting it."""


class OperationFailedError(NefosError):
    """An operation (the work behind a 202) ended without succeeding.

    ``operation`` is its final state; ``code`` and ``message`` are its error's
    (``VALIDATION_ERROR`` for an image the host cannot find, ``RESOURCE_EXHAUSTED``,
    ...), or ``CANCELLED`` for an operation that was cancelled.
    """

    def __init__(self, operation: OperationPublic) -> None:
        error = operation.error or {}
        cancelled = operation.status == "cancelled"
        self.operation = operation
        self.code = error.get("code") or ("CANCELLED" if cancelled else "INTERNAL_ERROR")
        self.message = error.get("message") or (
            "The operation was cancelled" if cancelled else "The operation failed"
        )
        super().__init__(self.message)

    def __str__(self) -> str:
        op = self.operation
        return f"{op.kind} {op.id} {op.status}: {self.message} ({self.code})"


class OperationTimeoutError(NefosError):
    """:meth:`Operations.wait` stopped waiting; the operation goes on.

    ``operation`` is its state when the wait gave up.
    """

    def __init__(self, operation: OperationPublic, timeout: float) -> None:
        self.operation = operation
        self.timeout = timeout
        super().__init__(
            f"{operation.kind} {operation.id} still {operation.status} "
            f"({operation.progress}%) after {timeout:g}s"
        )


class TransportError(NefosError):
    """No usable answer: the connection failed, timed out or broke off.

    The httpx exception is the ``__cause__``.
    """


_BY_CODE: dict[str, type[NefosAPIError]] = {
    "VALIDATION_ERROR": ValidationError,
    "PAYLOAD_TOO_LARGE": ValidationError,
    "UNAUTHORIZED": AuthenticationError,
    "FORBIDDEN": PermissionDeniedError,
    "NOT_FOUND": NotFoundError,
    "CONFLICT": ConflictError,
    "RESOURCE_EXHAUSTED": ResourceExhaustedError,
    # A marketplace plan's fee or call the wallet cannot pay (the gateway's code).
    "RATE_LIMITED": RateLimitedError,
    "SERVICE_UNAVAILABLE": ServiceUnavailableError,
    "INTERNAL_ERROR": InternalServerError,
}

_BY_STATUS: dict[int, tuple[type[NefosAPIError], str]] = {
    400: (ValidationError, "VALIDATION_ERROR"),
    401: (AuthenticationError, "UNAUTHORIZED"),
    402: (ResourceExhaustedError, "RESOURCE_EXHAUSTED"),
    403: (PermissionDeniedError, "FORBIDDEN"),
    404: (NotFoundError, "NOT_FOUND"),
    409: (ConflictError, "CONFLICT"),
    413: (ValidationError, "PAYLOAD_TOO_LARGE"),
    422: (ValidationError, "VALIDATION_ERROR"),
    429: (RateLimitedError, "RATE_LIMITED"),
    500: (InternalServerError, "INTERNAL_ERROR"),
    503: (ServiceUnavailableError, "SERVICE_UNAVAILABLE"),
}


def _retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header: delta-seconds or an HTTP-date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def error_from_response(response: httpx.Response, body: Any) -> NefosAPIError:
    """Build the exception for a non-2xx answer; ``body`` is its parsed JSON or None."""
    status = response.status_code
    error = body.get("error") if isinstance(body, dict) else None
    fallback_cls, fallback_code = _BY_STATUS.get(
        status, (InternalServerError if status >= 500 else NefosAPIError, f"HTTP_{status}")
    )
    if isinstance(error, dict):
        code = str(error.get("code") or fallback_code)
        message = str(error.get("message") or response.reason_phrase or "Error")
        raw_details = error.get("details")
        details: dict[str, Any] = dict(raw_details) if isinstance(raw_details, dict) else {}
    else:
        # Not an envelope: a proxy's page, or a server that is not Nefos.
        code = fallback_code
        message = response.reason_phrase or f"HTTP {status}"
        details = {}
    cls = _BY_CODE.get(code, fallback_cls)
    request_id = response.headers.get("x-request-id") or details.get("request_id")
    rid = str(request_id) if request_id else None
    if issubclass(cls, RateLimitedError):
        retry = _retry_after(response.headers.get("retry-after"))
        if retry is None and isinstance(details.get("retry_after"), int | float):
            retry = float(details["retry_after"])
        return cls(status, code, message, details, rid, retry_after=retry)
    return cls(status, code, message, details, rid)
