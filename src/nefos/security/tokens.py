"""JSON Web Tokens: HS256 pinned, every claim required, access and refresh apart.

An access token and a refresh token differ in ``typ`` *and* in audience, so neither
can pass for the other even if one check were forgotten. Decoding accepts exactly
the algorithm Nefos signs with; ``alg: none`` and every other algorithm fail.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any, Literal

import jwt

ALGORITHM = "HS256"
LEEWAY = 5  # seconds of clock skew allowed on exp and nbf
#: Access tokens whose signature and claims were verified, kept so that a token is
#: verified once, not on every request (and not twice in one: the rate limiter and
#: the route both read it). At most this many; the oldest go first.
MAX_VERIFIED = 50_000
TokenType = Literal["access", "refresh"]
_REQUIRED = ["exp", "iat", "nbf", "iss", "aud", "sub", "typ", "jti", "sid"]


class InvalidToken(Exception):
    """The token is not one Nefos would accept. ``reason`` is safe to show."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class TokenClaims:
    sub: str
    sid: str
    jti: str
    typ: TokenType
    iat: int
    exp: int


@dataclass(frozen=True, slots=True)
class IssuedToken:
    token: str
    jti: str
    expires_at: int


class TokenCodec:
    def __init__(self, *, secret: str, issuer: str, audience: str) -> None:
        if len(secret) < 32:
            raise ValueError("the JWT secret must be at least 32 characters")
        self._secret = secret
        self._issuer = issuer
        self._audience = audience
        self._verified: dict[str, TokenClaims] = {}

    def _aud(self, typ: TokenType) -> str:
        return self._audience if typ == "access" else f"{self._audience}:refresh"

    def issue(self, *, typ: TokenType, user_id: str, session_id: str, ttl: int) -> IssuedToken:
        now = int(time.time())
        jti = str(uuid.uuid4())
        claims: dict[str, Any] = {
            "iss": self._issuer,
            "aud": self._aud(typ),
            "sub": user_id,
            "sid": session_id,
            "typ": typ,
            "jti": jti,
            "iat": now,
            "nbf": now,
            "exp": now + ttl,
        }
        token = jwt.encode(claims, self._secret, algorithm=ALGORITHM)
        return IssuedToken(token=token, jti=jti, expires_at=now + ttl)

    def decode(self, token: str, *, typ: TokenType) -> TokenClaims:
        """The claims of a token Nefos signed, of type ``typ``; ``InvalidToken`` if it
        is anything else or has expired. An access token verified before is not
        verified again: its claims are kept, and only its expiry is checked anew."""
        if typ == "access":
            known = self._verified.get(token)
            if known is not None:
                if known.exp + LEEWAY > time.time():
                    return known
                del self._verified[token]
                raise InvalidToken("token_expired")
        claims = self._verify(token, typ)
        if typ == "access":
            if len(self._verified) >= MAX_VERIFIED:
                del self._verified[next(iter(self._verified))]
            self._verified[token] = claims
        return claims

    def _verify(self, token: str, typ: TokenType) -> TokenClaims:
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],
                audience=self._aud(typ),
                issuer=self._issuer,
                options={"require": _REQUIRED, "strict_aud": True},
                leeway=LEEWAY,
            )
        except jwt.ExpiredSignatureError:
            raise InvalidToken("token_expired") from None
        except jwt.PyJWTError:
            raise InvalidToken("invalid_token") from None
        if claims.get("typ") != typ:
            raise InvalidToken("invalid_token")
        for name in ("sub", "sid", "jti"):
            if not isinstance(claims.get(name), str):
                raise InvalidToken("invalid_token")
        return TokenClaims(
            sub=claims["sub"],
            sid=claims["sid"],
            jti=claims["jti"],
            typ=typ,
            iat=int(claims["iat"]),
            exp=int(claims["exp"]),
        )
