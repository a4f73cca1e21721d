from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from nefos.config import Settings, async_database_url, settings_table

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_lists_every_setting() -> None:
    assert settings_table() in README.read_text(), (
        "README's configuration table is stale: paste the output of `python -m nefos.config`"
    )


@pytest.mark.parametrize(
    ("field", "value"),
    [("argon2_memory_kib", 19455), ("argon2_time_cost", 1), ("argon2_parallelism", 0)],
)
def test_settings_refuse_argon2_below_owasp_minimum(field: str, value: int) -> None:
    with pytest.raises(ValidationError):
        Settings(_env_file=None, **{field: value})  # type: ignore[call-arg]


def test_database_urls_get_async_drivers() -> None:
    assert async_database_url("postgresql://u:p@h/db") == "postgresql+asyncpg://u:p@h/db"
    assert async_database_url("sqlite:///var/x.db") == "sqlite+aiosqlite:///var/x.db"
    assert async_database_url("sqlite+aiosqlite:///x.db") == "sqlite+aiosqlite:///x.db"


def test_secret_key_is_generated_once_and_kept_private(tmp_path: Path) -> None:
    first = Settings(_env_file=None, data_dir=tmp_path).jwt_secret  # type: ignore[call-arg]
    second = Settings(_env_file=None, data_dir=tmp_path).jwt_secret  # type: ignore[call-arg]
    assert first == second and len(first) >= 32
    assert (tmp_path / "secret.key").stat().st_mode & 0o077 == 0
