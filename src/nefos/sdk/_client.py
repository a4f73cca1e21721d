"""The Nefos client: one httpx session, credentials kept fresh, envelopes unwrapped.

Credentials, in order of precedence:

* ``api_key``: sent as ``X-API-Key`` on every call. Never refreshed; a 401 is
  final.
* ``access_token`` / ``refresh_token``: a session obtained earlier (the CLI keeps
  one in its config file).
* ``email`` or ``username`` with ``password``: the client logs in on its first
  call (``POST /auth/login``), and again whenever the session cannot be refreshed.

Keeping a session alive:

* Before each call, an access token that expires within ``refresh_margin``
  seconds (at most half its lifetime) is renewed first with ``POST /auth/refresh``.
  Its expiry comes from ``expires_in`` when the client received the pair, else
  from the JWT's ``exp`` claim, read without verification (the client holds no
  key, and only uses it to decide when to refresh).
* A call answered 401 with ``details.reason == "token_expired"`` (clocks can
  disagree) is retried once, after one renewal.
* A renewal spends the refresh token (the server rotates them, and replaying a
  spent one revokes the session), so renewals are serialised by a lock and a
  thread that finds the token already renewed by another uses the new one.
* When the refresh fails and a password is known, the client logs in again.

Each new token pair is reported to ``on_tokens`` (the CLI writes it back to its
config file), and ``None`` once the client logs out.
"""

from __future__ import annotations

import base64
import json as jsonlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import metadata
from types import TracebackType
from typing import IO, Any

import httpx

from nefos.schemas.events import WsTicket
from nefos.schemas.identity import AuthResult
from nefos.sdk._alerts import AlertRules, Alerts, Webhooks
from nefos.sdk._analytics import Analytics
from nefos.sdk._apis import Apis
from nefos.sdk._billing import Billing, Wallet
from nefos.sdk._errors import (
    AuthenticationError,
    NefosAPIError,
    TransportError,
    error_from_response,
)
from nefos.sdk._events import EventStream
from nefos.sdk._invoices import Invoices
from nefos.sdk._loadtests import LoadTests, Scenarios
from nefos.sdk._marketplace import Marketplace
from nefos.sdk._payments import Payments
from nefos.sdk._quotes import BillingAccounts, Payouts, Products, Quotes
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
from nefos.sdk._subscriptions import Subscriptions
from nefos.sdk._types import Tokens

API_PREFIX = "/api/v1"
ACCEPT = "application/vnd.nefos.v1+json"
DEFAULT_REFRESH_MARGIN = 60.0

TokenCallback = Callable[[Tokens | None], None]


def _now() -> float:
    """Wall-clock time, the scale of JWT ``exp``. A function so tests can move it."""
    return time.time()


def _version() -> str:
    try:
        return metadata.version("nefos")
    except metadata.PackageNotFoundError:
        return "0"


def api_base_url(url: str) -> str:
    """``http://host:8000`` (or ``.../api`` or ``.../api/v1``) -> ``http://host:8000/api/v1``."""
    url = url.strip().rstrip("/")
    if "://" not in url:
        raise ValueError(f"base_url must be an absolute http(s) URL, not {url!r}")
    if url.endswith(API_PREFIX):
        return url
    if url.endswith("/api"):
        return url + "/v1"
    return url + API_PREFIX


def jwt_claims(token: str) -> dict[str, Any] | None:
    """The payload of a JWT, *unverified*; None if ``token`` is not one."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        raw = base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4))
        claims = jsonlib.loads(raw)
    except ValueError:  # binascii.Error and UnicodeDecodeError are ValueErrors
        return None
    return claims if isinstance(claims, dict) else None


@dataclass(frozen=True, slots=True)
class _Login:
    email: str | None
    username: str | None
    password: str


class Client:
    """A synchronous Nefos API client. Thread-safe; use it as a context manager
    or call :meth:`close`.

    ``base_url`` is the server (``http://127.0.0.1:8000``); ``/api/v1`` is added.
    ``transport`` is handed to httpx (tests, proxies, retries). ``refresh_margin``
    is how long before its expiry an access token is renewed. ``on_tokens`` is
    called with each new token pair, and with None after :meth:`Auth.logout`.
    """

    def __init__(
        self,
        base_url: str,
        *,
        email: str | None = None,
        username: str | None = None,
        password: str | None = None,
        api_key: str | None = None,
        access_token: str | None = None,
        refresh_token: str | None = None,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        refresh_margin: float = DEFAULT_REFRESH_MARGIN,
        on_tokens: TokenCallback | None = None,
    ) -> None:
        if api_key and (password or access_token or refresh_token):
            raise ValueError("give either an api_key or a session (password or tokens), not both")
        if password and not (email or username):
            raise ValueError("a password needs an email or a username")
        self.base_url = api_base_url(base_url)
        self._api_key = api_key
        self._login: _Login | None = (
            _Login(email=email, username=username, password=password) if password else None
        )
        self._tokens: Tokens | None = None
        self._lifetime: float | None = None
        if access_token or refresh_token:
            self._set_tokens(access_token or "", refresh_token, expires_in=None)
        self._refresh_margin = refresh_margin
        self._on_tokens = on_tokens
        self._lock = threading.RLock()
        self._http = httpx.Client(
            base_url=self.base_url,
            timeout=httpx.Timeout(timeout),
            transport=transport,
            headers={"Accept": ACCEPT, "User-Agent": f"nefos-sdk/{_version()}"},
        )
        self.auth = Auth(self)
        self.users = Users(self)
        self.organisations = Organisations(self)
        self.projects = Projects(self)
        self.api_keys = ApiKeys(self)
        self.admin = Admin(self)
        self.hosts = Hosts(self)
        self.containers = Containers(self)
        self.services = Services(self)
        self.apis = Apis(self)
        self.marketplace = Marketplace(self)
        self.subscriptions = Subscriptions(self)
        self.vms = Vms(self)
        self.images = Images(self)
        self.snapshots = Snapshots(self)
        self.backups = Backups(self)
        self.volumes = Volumes(self)
        self.networks = Networks(self)
        self.operations = Operations(self)
        self.alert_rules = AlertRules(self)
        self.alerts = Alerts(self)
        self.webhooks = Webhooks(self)
        self.monitoring = Monitoring(self)
        self.payments = Payments(self)
        self.wallet = Wallet(self)
        self.billing = Billing(self)
        self.products = Products(self)
        self.billing_account = BillingAccounts(self)
        self.quotes = Quotes(self)
        self.payouts = Payouts(self)
        self.invoices = Invoices(self)
        self.analytics = Analytics(self)
        self.rate_limits = RateLimits(self)
        self.load_tests = LoadTests(self)
        self.load_test_scenarios = Scenarios(self)

    def events(
        self,
        types: list[str] | None = None,
        *,
        reconnect: bool = True,
        include_control: bool = False,
    ) -> EventStream:
        """The live events of your tenants (``WS /ws``), as an async or plain iterator:
        ``async for e in client.events(["vm_status_changed"])``. ``types`` narrows
        (default: every type your credentials may receive). See :class:`EventStream`."""
        return EventStream(self, types, reconnect=reconnect, include_control=include_control)

    def events_ticket(self) -> WsTicket:
        """A one-time ticket (``POST /ws/ticket``) for a client that cannot send
        headers, a browser: it opens ``/ws?ticket=<ticket>`` once, within
        ``expires_in`` seconds, acting as these credentials. The SDK's own stream
        sends its credentials in a header and needs none."""
        return WsTicket.model_validate(self.request("POST", "/ws/ticket"))

    # --- lifecycle ------------------------------------------------------------
    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self.base_url!r})"

    # --- credentials ----------------------------------------------------------
    @property
    def tokens(self) -> Tokens | None:
        """The current session's tokens, if the client holds one."""
        return self._tokens

    @property
    def refresh_token(self) -> str | None:
        return self._tokens.refresh_token if self._tokens else None

    def _set_tokens(self, access: str, refresh: str | None, *, expires_in: float | None) -> None:
        lifetime: float | None = None
        if expires_in is not None:
            expires_at: float | None = _now() + expires_in
            lifetime = expires_in
        else:
            claims = jwt_claims(access) or {}
            exp, iat = claims.get("exp"), claims.get("iat")
            expires_at = float(exp) if isinstance(exp, int | float) else None
            if expires_at is not None and isinstance(iat, int | float):
                lifetime = expires_at - float(iat)
        self._tokens = Tokens(access_token=access, refresh_token=refresh, expires_at=expires_at)
        self._lifetime = lifetime

    def _adopt(self, result: AuthResult) -> None:
        """Use the session an auth call returned, and report it."""
        with self._lock:
            self._set_tokens(
                result.access_token, result.refresh_token, expires_in=result.expires_in
            )
            tokens = self._tokens
        if self._on_tokens is not None:
            self._on_tokens(tokens)

    def _remember_login(
        self, *, email: str | None, username: str | None, password: str | None
    ) -> None:
        if password and not self._api_key:
            self._login = _Login(email=email, username=username, password=password)

    def _forget_session(self) -> None:
        with self._lock:
            self._tokens = None
            self._lifetime = None
            self._login = None
        if self._on_tokens is not None:
            self._on_tokens(None)

    def _expiring(self) -> bool:
        tokens = self._tokens
        if tokens is None or not tokens.access_token:
            return True
        if tokens.expires_at is None:
            return False
        margin = self._refresh_margin
        if self._lifetime is not None and self._lifetime > 0:
            # A margin as long as the token's life would renew it on every call.
            margin = min(margin, self._lifetime / 2)
        return _now() >= tokens.expires_at - margin

    def _log_in(self) -> None:
        login = self._login
        assert login is not None
        body: dict[str, Any] = {"password": login.password}
        if login.email:
            body["email"] = login.email
        else:
            body["username"] = login.username
        data = self.request("POST", "/auth/login", json=body, authenticated=False)
        self._adopt(AuthResult.model_validate(data))

    def _renew(self, stale: str | None) -> None:
        """Replace the access token ``stale`` (refresh, else log in again).

        A no-op when another thread already replaced it. Raises the refresh's
        AuthenticationError when there is no password to fall back on.
        """
        with self._lock:
            current = self._tokens.access_token if self._tokens else None
            if current != stale:
                return
            refresh = self.refresh_token
            if refresh:
                try:
                    data = self.request(
                        "POST",
                        "/auth/refresh",
                        json={"refresh_token": refresh},
                        authenticated=False,
                    )
                except AuthenticationError:
                    if self._login is None:
                        raise
                else:
                    self._adopt(AuthResult.model_validate(data))
                    return
            if self._login is not None:
                self._log_in()

    def _credentials(self) -> tuple[dict[str, str], str | None]:
        """Headers that authenticate the next call, and the access token among them."""
        if self._api_key:
            return {"X-API-Key": self._api_key}, None
        if self._expiring() and (self.refresh_token or self._login is not None):
            self._renew(self._tokens.access_token if self._tokens else None)
        token = self._tokens.access_token if self._tokens else None
        if not token:
            return {}, None  # the API answers 401 "Authentication required"
        return {"Authorization": f"Bearer {token}"}, token

    # --- the request pipeline -------------------------------------------------
    def _send(
        self,
        method: str,
        path: str,
        *,
        json: Any,
        params: dict[str, Any] | None,
        headers: dict[str, str],
        data: dict[str, str] | None = None,
        files: dict[str, tuple[str, IO[bytes]]] | None = None,
    ) -> httpx.Response:
        try:
            return self._http.request(
                method, path, json=json, params=params, headers=headers, data=data, files=files
            )
        except httpx.TimeoutException as exc:
            raise TransportError(f"{method} {path}: timed out ({exc})") from exc
        except httpx.HTTPError as exc:
            raise TransportError(f"{method} {path}: {exc}") from exc

    def stream(self, path: str, params: dict[str, Any], seconds: float) -> Iterator[str]:
        """The lines of a streamed answer (NDJSON, ``follow=true``) of ``path``
        (relative to ``/api/v1``) as they come, for up to ``seconds`` (plus a margin);
        stop iterating to leave earlier. Raises as :meth:`request` does."""
        auth, _ = self._credentials()
        timeout = httpx.Timeout(10.0, read=seconds + 30.0)
        try:
            with self._http.stream(
                "GET", path, params=params, headers=auth, timeout=timeout
            ) as response:
                if not response.is_success:
                    response.read()
                    raise error_from_response(response, _body(response))
                for line in response.iter_lines():
                    if line.strip():
                        yield line
        except httpx.HTTPError as exc:
            raise TransportError(f"GET {path}: {exc}") from exc

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        data: dict[str, str] | None = None,
        files: dict[str, tuple[str, IO[bytes]]] | None = None,
        authenticated: bool = True,
        raw: bool = False,
    ) -> Any:
        """Call ``path`` (relative to ``/api/v1``) and return the envelope's ``data``
        (with ``raw``, the body as text: a page that is not an envelope, such as an
        invoice's HTML).

        The low-level way to reach a route the typed methods do not cover yet.
        ``headers`` are sent besides the credentials (``Idempotency-Key``, ...).
        ``files`` (name -> (filename, open binary file)) and ``data`` (form fields)
        make a multipart/form-data body instead of ``json``; a file is read from its
        start again if the call is retried.
        Raises a :class:`NefosAPIError` subclass for an error answer and
        :class:`TransportError` when there is no answer.
        """
        extra = headers or {}
        auth, token = self._credentials() if authenticated else ({}, None)
        response = self._send(
            method,
            path,
            json=json,
            params=params,
            headers={**extra, **auth},
            data=data,
            files=files,
        )
        if response.status_code == 401 and token is not None and _expired(response):
            self._renew(token)
            auth, renewed = self._credentials()
            if renewed != token:  # nothing to renew with: the 401 stands
                response = self._send(
                    method,
                    path,
                    json=json,
                    params=params,
                    headers={**extra, **auth},
                    data=data,
                    files=files,
                )
        if raw and response.is_success:
            return response.text
        return _unwrap(response)


def _body(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _expired(response: httpx.Response) -> bool:
    body = _body(response)
    error = body.get("error") if isinstance(body, dict) else None
    details = error.get("details") if isinstance(error, dict) else None
    return isinstance(details, dict) and details.get("reason") == "token_expired"


def _unwrap(response: httpx.Response) -> Any:
    body = _body(response)
    if not response.is_success:
        raise error_from_response(response, body)
    if not isinstance(body, dict) or body.get("success") is not True or "data" not in body:
        raise NefosAPIError(
            response.status_code,
            "INVALID_RESPONSE",
            "The server's answer is not a Nefos envelope",
            request_id=response.headers.get("x-request-id"),
        )
    return body["data"]
