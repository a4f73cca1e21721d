"""Consumer keys: what a marketplace subscriber calls a published API with.

A key is ``nfc_`` and 43 URL-safe characters (32 random bytes); Nefos keeps only its
SHA-256 (a key is as random as a password is not, so a fast hash is enough) and a
display prefix. ``looks_like`` tells a consumer key from Nefos's own API keys
(``nfs_``) and sessions, so the gateway never mistakes one for the other.
"""

from __future__ import annotations

import hashlib
import secrets

PREFIX = "nfc_"
_LENGTH = len(PREFIX) + 43


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> tuple[str, str, str]:
    """(the key, shown once; its display prefix; its hash, kept)."""
    key = PREFIX + secrets.token_urlsafe(32)
    return key, key[: len(PREFIX) + 6], key_hash(key)


def looks_like(text: str) -> bool:
    return text.startswith(PREFIX) and len(text) == _LENGTH
