"""The Nefos exception tree.

Every error a service raises is a :class:`NefosError`. Each subclass carries the
wire ``code`` of ``shared/API.md``; the one map from these classes to HTTP status
codes lives in :mod:`nefos.api.errors`, so services never speak HTTP. Errors raised
by a library are wrapped with ``raise ... from exc`` so the cause stays in logs but
never reaches a response body.

    NefosError
    ├── ValidationFailed      VALIDATION_ERROR    bad input that passed the schema
    │   └── MalformedRequest                      a request that cannot be read at all (400)
    ├── Unauthorized          UNAUTHORIZED        no, bad, expired or revoked credentials
    ├── Forbidden             FORBIDDEN           authenticated, but the role or scope lacks it
    ├── NotFound              NOT_FOUND           missing, or another tenant's (same answer)
    ├── Conflict              CONFLICT            state or uniqueness conflict
    ├── ResourceExhausted     RESOURCE_EXHAUSTED  quota, capacity or wallet limit
    │   └── PaymentRequired                       an empty wallet (402)
    │       └── PaymentDue                        a marketplace plan's fee the wallet
    │                                                 cannot pay (402, as the gateway's)
    ├── RateLimited           RATE_LIMITED        too many attempts; has retry_after
    ├── ImagePullFailed       IMAGE_PULL_FAILED   an image neither on the host nor pullable
    ├── RolledBack            ROLLED_BACK         an operation that failed and undid its work
    └── ServiceUnavailable    SERVICE_UNAVAILABLE a driver, host, database or Redis is down
"""

from __future__ import annotations

from typing import Any


class NefosError(Exception):
    code = "INTERNAL_ERROR"
    default_message = "Internal error"
    #: What an engine or hypervisor said (a driver error's raw text): for the server
    #: log and platform admins only, never in a tenant's response.
    engine_message: str | None = None
    #: Raised by an operation's handler: the result its failed operation records
    #: (what the handler did before failing, or undid).
    result: dict[str, Any] | None = None

    def __init__(self, message: str | None = None, **details: Any) -> None:
        self.message = message or self.default_message
        self.details: dict[str, Any] = details
        super().__init__(self.message)


class ValidationFailed(NefosError):
    code = "VALIDATION_ERROR"
    default_message = "Invalid input parameters"


class MalformedRequest(ValidationFailed):
    """The request cannot be read at all: a body that does not parse, a signature
    that does not verify (400, where ValidationFailed is 422)."""

    default_message = "Malformed request"


class Unauthorized(NefosError):
    code = "UNAUTHORIZED"
    default_message = "Authentication required"


class Forbidden(NefosError):
    code = "FORBIDDEN"
    default_message = "You do not have permission to do this"


class NotFound(NefosError):
    code = "NOT_FOUND"
    default_message = "Not found"


class Conflict(NefosError):
    code = "CONFLICT"
    default_message = "Conflict with the current state"


class ResourceExhausted(NefosError):
    code = "RESOURCE_EXHAUSTED"
    default_message = "Resource limit exceeded"


class PaymentRequired(ResourceExhausted):
    default_message = "Insufficient wallet balance"


class PaymentDue(PaymentRequired):
    """A marketplace plan's fee the consumer's wallet cannot pay: the code the API
    gateway answers an unpaid call with, so a consumer meets one code for both."""

    default_message = "The wallet cannot pay this plan's fee: top it up"


class RateLimited(NefosError):
    code = "RATE_LIMITED"
    default_message = "Too many requests"

    def __init__(self, message: str | None = None, *, retry_after: int, **details: Any) -> None:
        super().__init__(message, retry_after=retry_after, **details)
        self.retry_after = retry_after


class ImagePullFailed(NefosError):
    code = "IMAGE_PULL_FAILED"
    default_message = "The image could not be pulled from its registry"


class RolledBack(NefosError):
    """An operation failed and put back what it had changed (a rolling update whose
    new replicas did not come up): the resource serves as before. An operation's
    error only, never an HTTP answer."""

    code = "ROLLED_BACK"
    default_message = "The change failed and was rolled back"

    def __init__(self, message: str | None = None, **details: Any) -> None:
        super().__init__(message, **details)
        self.result = {"rolled_back": True, **details}


class ServiceUnavailable(NefosError):
    code = "SERVICE_UNAVAILABLE"
    default_message = "Service temporarily unavailable"
