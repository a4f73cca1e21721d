"""What every service needs, built once per process."""

from __future__ import annotations

from dataclasses import dataclass

from nefos.config import Settings
from nefos.db.session import Database
from nefos.security.passwords import Passwords
from nefos.security.tokens import TokenCodec


@dataclass
class Core:
    settings: Settings
    db: Database
    passwords: Passwords
    tokens: TokenCodec

    @classmethod
    def build(cls, settings: Settings) -> Core:
        return cls(
            settings=settings,
            db=Database(settings.resolved_database_url, pool_size=settings.db_pool_size),
            passwords=Passwords(
                time_cost=settings.argon2_time_cost,
                memory_kib=settings.argon2_memory_kib,
                parallelism=settings.argon2_parallelism,
            ),
            tokens=TokenCodec(
                secret=settings.jwt_secret,
                issuer=settings.jwt_issuer,
                audience=settings.jwt_audience,
            ),
        )
