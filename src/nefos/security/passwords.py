"""argon2id password hashing (RFC 9106), parameters from settings.

Settings refuse anything under OWASP's minimum (m=19456 KiB, t=2, p=1). A hash made
with weaker parameters than the current ones is rehashed at the next good login.
"""

from __future__ import annotations

from argon2 import PasswordHasher, Type, extract_parameters
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError


class Passwords:
    def __init__(self, *, time_cost: int, memory_kib: int, parallelism: int) -> None:
        self._hasher = PasswordHasher(
            time_cost=time_cost,
            memory_cost=memory_kib,
            parallelism=parallelism,
            type=Type.ID,
        )
        # Verified against when the account does not exist, so that a login for an
        # unknown e-mail costs as long as one for a known e-mail with a bad password.
        self._dummy = self._hasher.hash("nefos-timing-equaliser")

    def hash(self, password: str) -> str:
        return self._hasher.hash(password)

    def verify(self, stored_hash: str | None, password: str) -> bool:
        try:
            return self._hasher.verify(stored_hash or self._dummy, password) and bool(stored_hash)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    def needs_rehash(self, stored_hash: str) -> bool:
        """True when the hash is weaker than the current parameters in any respect.

        A stronger hash (made before the settings were lowered) is kept: lowering the
        settings must never weaken stored hashes.
        """
        try:
            stored = extract_parameters(stored_hash)
        except (InvalidHashError, ValueError):
            return True
        current = self._hasher
        return (
            stored.type is not Type.ID
            or stored.time_cost < current.time_cost
            or stored.memory_cost < current.memory_cost
            or stored.parallelism < current.parallelism
            or stored.hash_len < current.hash_len
            or stored.salt_len < current.salt_len
        )
