"""The Nefos Python SDK.

    from nefos.sdk import Client, NotFoundError

    with Client("http://127.0.0.1:8000", email="me@example.com", password="...") as nefos:
        me = nefos.auth.me()
        page = nefos.projects.list(limit=50)
        for project in page.items:
            print(project.id, project.name)
        for vm in iterate(nefos.vms.list, status="running"):  # every page, by cursor
            print(vm.id)
        accepted = nefos.containers.create(name="web", image="nginx:alpine", ports=["8080:80"])
        nefos.operations.wait(accepted)  # raises OperationFailedError if it failed

Methods return the wire models of :mod:`nefos.schemas`; lists return a
:class:`Page` (``items`` and ``pagination``). Errors are :class:`NefosAPIError`
subclasses named after the API's error codes, or :class:`TransportError`;
an operation that fails raises :class:`OperationFailedError` from ``wait``.
This module's ``__all__`` is the SDK's whole public surface; the modules
beginning with ``_`` are private.
"""

from nefos.schemas.common import Message, Page, Pagination
from nefos.schemas.events import EventMessage, WsTicket
from nefos.sdk._alerts import AlertRules, Alerts, Webhooks
from nefos.sdk._analytics import Analytics
from nefos.sdk._client import Client
from nefos.sdk._errors import (
    AuthenticationError,
    ConflictError,
    InternalServerError,
    NefosAPIError,
    NefosError,
    NotFoundError,
    OperationFailedError,
    OperationTimeoutError,
    PermissionDeniedError,
    RateLimitedError,
    ResourceExhaustedError,
    ServiceUnavailableError,
    TransportError,
    ValidationError,
)
from nefos.sdk._events import EventStream
from nefos.sdk._invoices import Invoices
from nefos.sdk._loadtests import LoadTests, Scenarios
from nefos.sdk._paging import TooManyPagesError, iterate
from nefos.sdk._payments import Payments
from nefos.sdk._quotes import (
    BillingAccounts,
    Payouts,
    Products,
    Quotes,
    container_item,
    vm_item,
    volume_item,
)
from nefos.sdk._rate_limits import RateLimits
from nefos.sdk._resources import (
    Admin,
    ApiKeys,
    Auth,
    Backups,
    Containers,
    Hosts,
    Images,
    Monitoring,
    Networks,
    Operations,
    Organisations,
    Projects,
    Snapshots,
    Users,
    Vms,
    Volumes,
)
from nefos.sdk._services import Services
from nefos.sdk._terminal import Terminal
from nefos.sdk._types import NOT_GIVEN, NotGiven, Tokens

__all__ = [
    "NOT_GIVEN",
    "Admin",
    "AlertRules",
    "Alerts",
    "Analytics",
    "ApiKeys",
    "Auth",
    "AuthenticationError",
    "Backups",
    "BillingAccounts",
    "Client",
    "ConflictError",
    "Containers",
    "EventMessage",
    "EventStream",
    "Hosts",
    "Images",
    "InternalServerError",
    "Invoices",
    "LoadTests",
    "Message",
    "Monitoring",
    "NefosAPIError",
    "NefosError",
    "Networks",
    "NotFoundError",
    "NotGiven",
    "OperationFailedError",
    "OperationTimeoutError",
    "Operations",
    "Organisations",
    "Page",
    "Pagination",
    "Payments",
    "Payouts",
    "PermissionDeniedError",
    "Products",
    "Projects",
    "Quotes",
    "RateLimitedError",
    "RateLimits",
    "ResourceExhaustedError",
    "Scenarios",
    "ServiceUnavailableError",
    "Services",
    "Snapshots",
    "Terminal",
    "Tokens",
    "TooManyPagesError",
    "TransportError",
    "Users",
    "ValidationError",
    "Vms",
    "Volumes",
    "Webhooks",
    "WsTicket",
    "container_item",
    "iterate",
    "vm_item",
    "volume_item",
]
