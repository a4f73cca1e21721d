"""Passwords are stored as argon2id with at least OWASP's minimum parameters."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from argon2 import PasswordHasher, Type, extract_parameters
from pydantic import ValidationError
from sqlalchemy import update

from nefos.api.app import create_app
from nefos.config import (
    ARGON2_MIN_MEMORY_KIB,
    ARGON2_MIN_PARALLELISM,
    ARGON2_MIN_TIME_COST,
    Settings,
)
from nefos.db.models import User
from tests.conftest import PASSWORD, make_settings
from tests.security.conftest import API, login

OWASP = {"memory_cost": 19456, "time_cost": 2, "parallelism": 1}


def test_the_settings_floor_is_owasps_minimum() -> None:
    assert ARGON2_MIN_MEMORY_KIB == OWASP["memory_cost"]
    assert ARGON2_MIN_TIME_COST == OWASP["time_cost"]
    assert ARGON2_MIN_PARALLELISM == OWASP["parallelism"]


def test_default_settings_are_at_least_owasps_minimum() -> None:
    s = Settings(_env_file=None)  # type: ignore[call-arg]
    assert s.argon2_memory_kib >= OWASP["memory_cost"]
    assert s.argon2_time_cost >= OWASP["time_cost"]
    assert s.argon2_parallelism >= OWASP["parallelism"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("argon2_memory_kib", 19455),
        ("argon2_memory_kib", 4096),
        ("argon2_memory_kib", 0),
        ("argon2_time_cost", 1),
        ("argon2_time_cost", 0),
        ("argon2_parallelism", 0),
        ("argon2_parallelism", -1),
    ],
)
def test_settings_reject_argon2_parameters_below_owasps_minimum(
    field: str, value: int, tmp_path: Any
) -> None:
    with pytest.raises(ValidationError) as info:
        make_settings("sqlite:///unused.db", tmp_path, **{field: value})
    assert field in str(info.value)


def test_settings_accept_exactly_owasps_minimum(tmp_path: Any) -> None:
    s = make_settings(
        "sqlite:///unused.db",
        tmp_path,
        argon2_memory_kib=19456,
        argon2_time_cost=2,
        argon2_parallelism=1,
    )
    assert (s.argon2_memory_kib, s.argon2_time_cost, s.argon2_parallelism) == (19456, 2, 1)


async def test_stored_password_hash_is_argon2id_with_at_least_owasps_minimum(
    register: Any, user_row: Any
) -> None:
    acct = await register()
    stored = (await user_row(acct.id)).password_hash
    assert stored.startswith("$argon2id$")
    assert PASSWORD not in stored
    params = extract_parameters(stored)
    assert params.type is Type.ID
    assert params.memory_cost >= OWASP["memory_cost"]
    assert params.time_cost >= OWASP["time_cost"]
    assert params.parallelism >= OWASP["parallelism"]
    assert PasswordHasher().verify(stored, PASSWORD)


async def test_stored_hash_uses_the_configured_parameters(
    register: Any, user_row: Any, core: Any
) -> None:
    acct = await register()
    params = extract_parameters((await user_row(acct.id)).password_hash)
    s = core.settings
    assert (params.memory_cost, params.time_cost, params.parallelism) == (
        s.argon2_memory_kib,
        s.argon2_time_cost,
        s.argon2_parallelism,
    )


async def _set_hash(core: Any, user_id: str, value: str) -> None:
    async with core.db.session() as s:
        await s.execute(update(User).where(User.id == user_id).values(password_hash=value))
        await s.commit()


async def test_login_rehashes_a_hash_weaker_than_the_current_parameters(
    client: Any, register: Any, user_row: Any, core: Any
) -> None:
    acct = await register()
    # A legacy hash (argon2id, but under today's parameters and even under OWASP's).
    weak = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1, type=Type.ID)
    legacy = weak.hash(PASSWORD)
    await _set_hash(core, acct.id, legacy)

    r = await login(client, acct)
    assert r.status_code == 200, r.text

    stored = (await user_row(acct.id)).password_hash
    assert stored != legacy
    params = extract_parameters(stored)
    s = core.settings
    assert params.type is Type.ID
    assert (params.memory_cost, params.time_cost, params.parallelism) == (
        s.argon2_memory_kib,
        s.argon2_time_cost,
        s.argon2_parallelism,
    )
    assert PasswordHasher().verify(stored, PASSWORD)
    # The new hash is the one in use: the password still logs in, a wrong one does not.
    assert (await login(client, acct)).status_code == 200
    assert (await login(client, acct, "not-the-password")).status_code == 401


async def test_failed_login_does_not_rehash(
    client: Any, register: Any, user_row: Any, core: Any
) -> None:
    acct = await register()
    legacy = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1, type=Type.ID).hash(
        PASSWORD
    )
    await _set_hash(core, acct.id, legacy)
    r = await login(client, acct, "wrong-password-here")
    assert r.status_code == 401
    assert (await user_row(acct.id)).password_hash == legacy


async def test_raising_the_time_cost_rehashes_at_the_next_login(
    client: Any, register: Any, user_row: Any, core: Any, tmp_path: Any
) -> None:
    acct = await register()
    before = (await user_row(acct.id)).password_hash
    assert extract_parameters(before).time_cost == 2

    # The same database, served by a Nefos whose operator raised the time cost.
    stronger = create_app(make_settings(core.settings.database_url, tmp_path, argon2_time_cost=3))
    async with stronger.router.lifespan_context(stronger):
        transport = httpx.ASGITransport(app=stronger, client=("198.51.100.20", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://nefos.test") as c2:
            r = await c2.post(f"{API}/auth/login", json={"email": acct.email, "password": PASSWORD})
            assert r.status_code == 200, r.text

    after = (await user_row(acct.id)).password_hash
    assert after != before
    params = extract_parameters(after)
    assert params.type is Type.ID
    assert params.time_cost == 3
    assert params.memory_cost >= OWASP["memory_cost"]
    assert PasswordHasher().verify(after, PASSWORD)
    # And the original server, whose parameters are now lower, still accepts it.
    assert (await login(client, acct)).status_code == 200
