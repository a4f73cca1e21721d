"""The SDK's wallet and billing calls against a live server."""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest

from nefos.sdk import Client, NotFoundError
from tests.conftest import PASSWORD, LiveServer


def test_wallet_ledger_summary_and_usage(live_server: LiveServer) -> None:
    email = f"sdk-billing-{uuid.uuid4().hex[:10]}@example.com"
    with Client(live_server.url) as c:
        c.auth.register(email=email, password=PASSWORD)
        wallet = c.wallet.get()
        assert wallet.currency == "USD" and wallet.balance == "10.00"
        assert wallet.status == "active"
        assert Decimal(wallet.available) == Decimal(wallet.balance) - Decimal(
            wallet.pending_charges
        )
        ledger = c.wallet.ledger()
        assert ledger.pagination.total == 1
        [entry] = ledger.items
        assert entry.kind == "adjustment" and entry.amount == "10.00"
        assert c.wallet.ledger(kind="charge").pagination.total == 0

        summary = c.billing.summary()
        assert summary.current_period.total_cost == "0.00"
        assert summary.containers == [] and summary.organisation_id == wallet.organisation_id
        with pytest.raises(NotFoundError):
            c.billing.container_usage(str(uuid.uuid4()))
        with pytest.raises(NotFoundError):
            c.wallet.get(organisation_id=str(uuid.uuid4()))
