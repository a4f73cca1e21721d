"""API keys: ``nfs_`` + 40 URL-safe random characters (240 bits).

Keys are high-entropy, so a single SHA-256 is the right store (as GitHub does for
tokens): a slow password hash would only slow every API call. The first 12
characters are kept in clear as a ``prefix`` so users can tell keys apart.
"""

from __future__ import annotations

import hashlib
import secrets

API_KEY_PREFIX = "nfs_"
_BODY_LEN = 40


def generate_api_key() -> str:
    return API_KEY_PREFIX + secrets.token_urlsafe(30)[:_BODY_LEN]


def looks_like_api_key(value: str) -> bool:
    return value.startswith(API_KEY_PREFIX)


def hash_secret(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def display_prefix(key: str) -> str:
    return key[:12]
