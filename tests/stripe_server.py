"""A stand-in for api.stripe.com on 127.0.0.1, replaying the recorded responses of
tests/fixtures/stripe/ (see its README).

Nefos's ``stripe`` provider is pointed at it (``stripe_api_base``), so the real
``stripe`` package makes real HTTP requests, and api.stripe.com is never contacted.
It serves what the provider uses, as Stripe does: ``POST /v1/payment_intents``
(with Stripe's idempotency: the same ``Idempotency-Key`` gets the first answer
again), ``GET /v1/payment_intents/{id}`` and ``POST /v1/payment_intents/{id}/cancel``;
it refuses a wrong secret key (401) and an amount under Stripe's minimum (400).
``pay``, ``decline`` and ``cancel`` play the customer's (and Stripe's) part, and
``event`` and ``sign`` make the webhook requests Stripe would send.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import secrets
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

FIXTURES = Path(__file__).parent / "fixtures" / "stripe"
SECRET_KEY = "sk_test_nefos0000000000000000000000000000"
PUBLISHABLE_KEY = "pk_test_nefos0000000000000000000000000000"
#: Stripe's test cards: paid, and declined.
CARD_PAID = "4242424242424242"
CARD_DECLINED = "4000000000000002"
WEBHOOK_SECRET = "whsec_nefostest00000000000000000000000000"
# Stripe's minimum charge amounts, in minor units (docs.stripe.com/currencies#minimum).
MINIMUM = {"usd": 50, "eur": 50, "gbp": 30, "jpy": 50, "chf": 50}


def fixture(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text())
    return data


def _token(n: int = 12) -> str:
    return secrets.token_hex(n)


def sign(payload: bytes, secret: str = WEBHOOK_SECRET, timestamp: int | None = None) -> str:
    """A ``Stripe-Signature`` header for ``payload``, as Stripe computes it."""
    t = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{t}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


@dataclass
class Call:
    method: str
    path: str
    headers: dict[str, str]
    form: dict[str, str]


class StripeServer:
    def __init__(self, secret_key: str = SECRET_KEY) -> None:
        self.secret_key = secret_key
        self.intents: dict[str, dict[str, Any]] = {}
        self.calls: list[Call] = []
        self._replies: dict[str, tuple[int, dict[str, Any]]] = {}
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                outer._handle(self, "GET")

            def do_POST(self) -> None:
                outer._handle(self, "POST")

            def do_OPTIONS(self) -> None:  # a browser's preflight (Stripe.js's calls)
                self.send_response(204)
                self.send_header("Access-Control-Allow-Origin", "*")
                self.send_header("Access-Control-Allow-Methods", "GET, POST")
                self.send_header("Access-Control-Allow-Headers", "Content-Type")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def calls_to(self, method: str, prefix: str) -> list[Call]:
        return [c for c in self.calls if c.method == method and c.path.startswith(prefix)]

    # --- the API ----------------------------------------------------------------------
    def _handle(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length).decode() if length else ""
        form = dict(parse_qsl(raw, keep_blank_values=True))
        headers = {k.lower(): v for k, v in handler.headers.items()}
        path = handler.path.split("?", 1)[0]
        if method == "GET" and path == "/v3/":
            script = (FIXTURES / "stripe.js").read_bytes()
            handler.send_response(200)
            handler.send_header("Content-Type", "application/javascript; charset=utf-8")
            handler.send_header("Content-Length", str(len(script)))
            handler.end_headers()
            handler.wfile.write(script)
            return
        with self._lock:
            self.calls.append(Call(method, path, headers, form))
            status, body, replayed = self._answer(method, path, headers, form)
        data = json.dumps(body).encode()
        handler.send_response(status)
        handler.send_header("Access-Control-Allow-Origin", "*")
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.send_header("Request-Id", f"req_{_token(7)}")
        handler.send_header("Stripe-Version", "2026-10-28.endive")
        if replayed:
            handler.send_header("Idempotent-Replayed", "true")
        handler.end_headers()
        handler.wfile.write(data)

    def _answer(
        self, method: str, path: str, headers: dict[str, str], form: dict[str, str]
    ) -> tuple[int, dict[str, Any], bool]:
        if path.endswith("/confirm") and form.get("key") == PUBLISHABLE_KEY:
            return *self._confirm(path, form), False  # Stripe.js, with the publishable key
        if headers.get("authorization") != f"Bearer {self.secret_key}":
            return 401, fixture("error_invalid_api_key"), False
        key = headers.get("idempotency-key")
        if method == "POST" and key and key in self._replies:
            status, body = self._replies[key]
            return status, copy.deepcopy(body), True
        status, body = self._route(method, path, form)
        if method == "POST" and key:
            self._replies[key] = (status, copy.deepcopy(body))
        return status, body, False

    def _route(self, method: str, path: str, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        parts = path.strip("/").split("/")
        if parts[:2] != ["v1", "payment_intents"]:
            return 404, {"error": {"type": "invalid_request_error", "message": "No such route"}}
        if method == "POST" and len(parts) == 2:
            return self._create(form)
        intent = self.intents.get(parts[2]) if len(parts) > 2 else None
        if intent is None:
            error = fixture("error_resource_missing")
            error["error"]["message"] = f"No such payment_intent: '{parts[-1]}'"
            return 404, error
        if method == "GET" and len(parts) == 3:
            return 200, copy.deepcopy(intent)
        if method == "POST" and parts[3:] == ["cancel"]:
            if intent["status"] == "succeeded":
                return 400, fixture("error_unexpected_state")
            self.cancel(intent["id"], form.get("cancellation_reason"))
            return 200, copy.deepcopy(intent)
        return 404, {"error": {"type": "invalid_request_error", "message": "No such route"}}

    def _confirm(self, path: str, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        """Stripe.js confirms a PaymentIntent with a card: its client secret proves it
        may; the test cards decide."""
        ref = path.strip("/").split("/")[2]
        intent = self.intents.get(ref)
        if intent is None or form.get("client_secret") != intent["client_secret"]:
            error = fixture("error_resource_missing")
            error["error"]["message"] = f"No such payment_intent: '{ref}'"
            return 404, error
        if intent["status"] == "succeeded":
            return 400, fixture("error_unexpected_state")
        number = form.get("payment_method_data[card][number]", "")
        if number == CARD_PAID:
            return 200, self.pay(ref)
        failed = self.decline(ref)
        error = failed["last_payment_error"] or {}
        return 402, {"error": {**error, "payment_intent": failed}}

    def _create(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        amount, currency = int(form["amount"]), form["currency"]
        if amount < MINIMUM.get(currency, 50):
            return 400, fixture("error_amount_too_small")
        intent = fixture("payment_intent")
        ref = f"pi_{_token()}"
        intent.update(
            id=ref,
            amount=amount,
            currency=currency,
            client_secret=f"{ref}_secret_{_token()}",
            created=int(time.time()),
            description=form.get("description"),
            metadata={k[9:-1]: v for k, v in form.items() if k.startswith("metadata[")},
        )
        self.intents[ref] = intent
        return 200, copy.deepcopy(intent)

    # --- the customer's and Stripe's part ---------------------------------------------
    def _change(self, ref: str, name: str, **extra: Any) -> dict[str, Any]:
        intent = self.intents[ref]
        intent.update(fixture(name), **extra)
        return copy.deepcopy(intent)

    def pay(self, ref: str) -> dict[str, Any]:
        """The customer paid: the PaymentIntent succeeded."""
        return self._change(
            ref, "payment_intent_succeeded", amount_received=self.intents[ref]["amount"]
        )

    def decline(self, ref: str) -> dict[str, Any]:
        """An attempt was declined: the PaymentIntent wants another payment method."""
        return self._change(ref, "payment_intent_payment_failed")

    def cancel(self, ref: str, reason: str | None = None) -> dict[str, Any]:
        return self._change(
            ref,
            "payment_intent_canceled",
            canceled_at=int(time.time()),
            cancellation_reason=reason or "requested_by_customer",
        )

    def event(self, kind: str, ref: str, *, event_id: str | None = None) -> bytes:
        """The webhook body Stripe sends for ``kind`` about the PaymentIntent as it is."""
        event = fixture("event")
        event.update(
            id=event_id or f"evt_{_token()}",
            type=kind,
            created=int(time.time()),
            data={"object": copy.deepcopy(self.intents[ref])},
        )
        return json.dumps(event).encode()
