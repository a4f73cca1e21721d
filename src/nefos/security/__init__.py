"""Credentials: argon2id password hashes, JWTs and API keys. Pure, no storage."""
