"""Brute-force lockout: 10 failed logins per account or per IP within the window -> 429."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from sqlalchemy import select, update

from nefos.db.models import KnownLoginAddress, LoginFailure
from nefos.db.types import utcnow
from tests.security.conftest import API, login

LOGIN = f"{API}/auth/login"
WRONG = "wrong-password-guess"


def _assert_rate_limited(r: Any, window: int) -> None:
    assert r.status_code == 429, r.text
    body = r.json()
    assert body["success"] is False
    assert body["error"]["code"] == "RATE_LIMITED"
    assert body["detail"] == body["error"]["message"]
    retry = int(r.headers["Retry-After"])
    assert 1 <= retry <= window
    assert "access_token" not in r.text


async def _fail(client: Any, email: str, times: int) -> None:
    for i in range(times):
        r = await login(client, email, f"{WRONG}-{i}")
        assert r.status_code == 401, (i, r.text)
        assert r.json()["error"]["code"] == "UNAUTHORIZED"


async def test_the_limit_is_ten_failures(core: Any) -> None:
    assert core.settings.login_max_failures == 10


async def test_eleventh_login_after_ten_failures_is_429_even_with_the_right_password(
    client: Any, register: Any, core: Any
) -> None:
    acct = await register()
    await _fail(client, acct.email, 10)
    r = await login(client, acct)
    _assert_rate_limited(r, core.settings.login_failure_window)
    # Still locked for a wrong password too.
    _assert_rate_limited(await login(client, acct, WRONG), core.settings.login_failure_window)


async def test_nine_failures_do_not_lock_the_account(client: Any, register: Any) -> None:
    acct = await register()
    await _fail(client, acct.email, 9)
    assert (await login(client, acct)).status_code == 200


async def test_account_lockout_applies_from_every_ip(
    client: Any, client_at: Any, register: Any, core: Any
) -> None:
    acct = await register()
    # Ten failures spread over ten addresses: no single IP reaches the limit.
    for i in range(10):
        c = client_at(f"198.51.100.{i + 1}")
        assert (await login(c, acct.email, WRONG)).status_code == 401
    fresh = client_at("192.0.2.200")
    _assert_rate_limited(await login(fresh, acct), core.settings.login_failure_window)


async def test_account_lockout_counts_failures_by_email_and_by_username_together(
    client: Any, client_at: Any, register: Any, core: Any
) -> None:
    """One account, named two ways, is still one account."""
    acct = await register(username="victim-user")
    for i in range(10):
        c = client_at(f"198.51.100.{i + 1}")
        if i % 2:
            r = await c.post(LOGIN, json={"username": "Victim-User", "password": WRONG})
        else:
            r = await login(c, acct.email, WRONG)
        assert r.status_code == 401, r.text
    c = client_at("192.0.2.201")
    window = core.settings.login_failure_window
    _assert_rate_limited(await login(c, acct), window)
    r = await c.post(LOGIN, json={"username": "victim-user", "password": acct.password})
    _assert_rate_limited(r, window)
    # The OAuth2 form endpoint shares the limit.
    r = await c.post(
        f"{API}/auth/token", data={"username": "victim-user", "password": acct.password}
    )
    _assert_rate_limited(r, window)


async def test_account_lockout_leaves_other_accounts_alone(
    client: Any, client_at: Any, register: Any
) -> None:
    victim = await register()
    bystander = await register()
    for i in range(10):
        assert (
            await login(client_at(f"198.51.100.{i + 1}"), victim.email, WRONG)
        ).status_code == 401
    assert (await login(client_at("192.0.2.50"), bystander)).status_code == 200


async def test_ten_failures_from_one_ip_across_accounts_lock_that_ip(
    client: Any, client_at: Any, register: Any, core: Any
) -> None:
    accounts = [await register() for _ in range(11)]
    for acct in accounts[:10]:
        r = await login(client, acct.email, WRONG)  # one failure per account
        assert r.status_code == 401
    window = core.settings.login_failure_window
    # That IP is locked out, whichever account it tries, even with the right password.
    _assert_rate_limited(await login(client, accounts[10]), window)
    _assert_rate_limited(await login(client, accounts[0]), window)
    _assert_rate_limited(await login(client, "nobody@example.com", WRONG), window)
    # Other IPs are unaffected, for those same accounts.
    other = client_at("192.0.2.77")
    assert (await login(other, accounts[10])).status_code == 200
    assert (await login(other, accounts[0])).status_code == 200


async def test_failures_for_unknown_accounts_count_against_the_ip(
    client: Any, client_at: Any, register: Any, core: Any
) -> None:
    acct = await register()
    for i in range(10):
        assert (await login(client, f"ghost-{i}@example.com", WRONG)).status_code == 401
    _assert_rate_limited(await login(client, acct), core.settings.login_failure_window)
    assert (await login(client_at("192.0.2.78"), acct)).status_code == 200


async def test_x_forwarded_for_is_ignored_unless_trusted(
    client: Any, register: Any, core: Any
) -> None:
    assert core.settings.forwarded_allow_ips == []
    accounts = [await register() for _ in range(11)]
    for i, acct in enumerate(accounts[:10]):
        r = await client.post(
            LOGIN,
            json={"email": acct.email, "password": WRONG},
            headers={"X-Forwarded-For": f"10.0.0.{i}"},
        )
        assert r.status_code == 401
    r = await client.post(
        LOGIN,
        json={"email": accounts[10].email, "password": accounts[10].password},
        headers={"X-Forwarded-For": "10.9.9.9"},
    )
    _assert_rate_limited(r, core.settings.login_failure_window)


async def test_a_successful_login_clears_the_account_counter(
    client: Any, client_at: Any, register: Any
) -> None:
    acct = await register()
    for i in range(9):
        assert (await login(client_at(f"198.51.100.{i + 1}"), acct.email, WRONG)).status_code == 401
    assert (await login(client_at("192.0.2.1"), acct)).status_code == 200
    for i in range(9):
        assert (
            await login(client_at(f"198.51.100.{i + 20}"), acct.email, WRONG)
        ).status_code == 401
    assert (await login(client_at("192.0.2.2"), acct)).status_code == 200


async def test_successful_logins_never_count_as_failures(
    client: Any, register: Any, core: Any
) -> None:
    limit = core.settings.login_max_failures
    accounts = [await register() for _ in range(limit)]
    for acct in accounts[: limit - 1]:
        assert (await login(client, acct.email, WRONG)).status_code == 401
    # One failure short of the IP's limit: any number of good logins still pass ...
    for _ in range(limit + 2):
        assert (await login(client, accounts[-1])).status_code == 200
    # ... and the next failure is the one that reaches it.
    assert (await login(client, accounts[-1].email, WRONG)).status_code == 401
    _assert_rate_limited(await login(client, accounts[-1]), core.settings.login_failure_window)


async def test_failures_older_than_the_window_do_not_count(
    client: Any, register: Any, core: Any
) -> None:
    acct = await register()
    await _fail(client, acct.email, 10)
    assert (await login(client, acct)).status_code == 429
    # Age the failures past the window (instead of waiting for it).
    aged = utcnow() - timedelta(seconds=core.settings.login_failure_window + 1)
    async with core.db.session() as s:
        await s.execute(update(LoginFailure).values(created_at=aged))
        await s.commit()
    assert (await login(client, acct)).status_code == 200


async def test_retry_after_counts_down_from_the_oldest_failure(
    client: Any, register: Any, core: Any
) -> None:
    acct = await register()
    await _fail(client, acct.email, 10)
    window = core.settings.login_failure_window
    # Pretend the failures happened most of a window ago: little time is left.
    async with core.db.session() as s:
        await s.execute(
            update(LoginFailure).values(created_at=utcnow() - timedelta(seconds=window - 30))
        )
        await s.commit()
    r = await login(client, acct)
    assert r.status_code == 429
    assert 1 <= int(r.headers["Retry-After"]) <= 31


async def test_concurrent_guesses_cannot_exceed_the_limit(
    client: Any, register: Any, core: Any
) -> None:
    """Firing guesses in parallel must not buy more than ``login_max_failures`` tries."""
    acct = await register()
    limit = core.settings.login_max_failures
    results = await asyncio.gather(
        *(login(client, acct.email, f"{WRONG}-{i}") for i in range(limit + 10))
    )
    statuses = [r.status_code for r in results]
    assert set(statuses) <= {401, 429}, statuses
    evaluated = statuses.count(401)
    assert evaluated <= limit, statuses
    # Every guess that was evaluated was counted: the sequential guesses that follow
    # reach the lock after exactly the rest of the allowance.
    for i in range(limit + 1):
        r = await login(client, acct.email, f"{WRONG}-late-{i}")
        if r.status_code == 429:
            break
        assert r.status_code == 401
        evaluated += 1
    assert evaluated == limit, statuses
    _assert_rate_limited(await login(client, acct), core.settings.login_failure_window)


async def test_an_attack_from_many_addresses_slows_guessing_but_not_the_owner(
    client_at: Any, register: Any, core: Any
) -> None:
    """Issue 14: failures from ten addresses used to lock the owner out everywhere.
    Now they start a per-account back-off for unknown addresses only: the owner keeps
    signing in from an address they signed in from before, and the back-off doubles
    with each further failure, up to its cap."""
    s = core.settings
    acct = await register()
    home = client_at("192.0.2.10")
    assert (await login(home, acct)).status_code == 200  # a known address from now on
    for i in range(10):  # the attack: ten addresses, each far under its own limit
        assert (await login(client_at(f"198.51.100.{i + 1}"), acct.email, WRONG)).status_code == 401
    # An unknown address waits, even with the right password ...
    stranger = client_at("203.0.113.77")
    r = await login(stranger, acct)
    _assert_rate_limited(r, s.login_backoff_base)
    assert r.json()["error"]["details"]["scope"] == "account"
    # ... the owner at home does not, and signing in does not undo the back-off.
    assert (await login(home, acct)).status_code == 200
    _assert_rate_limited(await login(stranger, acct), s.login_backoff_base)
    # Once the back-off has run (the failures aged instead of waited for), one more
    # guess is let through, and the next wait is twice as long.
    aged = utcnow() - timedelta(seconds=s.login_backoff_base + 1)
    async with core.db.session() as db:
        await db.execute(
            update(LoginFailure)
            .where(LoginFailure.kind == "account", LoginFailure.key == acct.email)
            .values(created_at=aged)
        )
        await db.commit()
    assert (await login(client_at("198.51.100.50"), acct.email, WRONG)).status_code == 401
    r = await login(stranger, acct)
    _assert_rate_limited(r, 2 * s.login_backoff_base)
    assert int(r.headers["Retry-After"]) > s.login_backoff_base
    # The wait is capped.
    async with core.db.session() as db:
        db.add_all(LoginFailure(kind="account", key=acct.email) for _ in range(40))
        await db.commit()
    r = await login(stranger, acct)
    _assert_rate_limited(r, s.login_backoff_max)
    assert (await login(home, acct)).status_code == 200
    # A known address still has its own per-IP limit.
    for i in range(s.login_max_failures):
        assert (await login(home, acct.email, f"{WRONG}-{i}")).status_code == 401
    r = await login(home, acct)
    _assert_rate_limited(r, s.login_failure_window)
    assert r.json()["error"]["details"]["scope"] == "ip"


async def test_known_addresses_are_stored_hashed(client_at: Any, register: Any, core: Any) -> None:
    acct = await register()
    assert (await login(client_at("192.0.2.44"), acct)).status_code == 200
    async with core.db.session() as db:
        rows = (await db.execute(select(KnownLoginAddress))).scalars().all()
    mine = [r for r in rows if r.user_id == acct.id]
    assert len(mine) == 1 and "192.0.2.44" not in mine[0].ip_hash
