"""JWTs: HS256 pinned, every claim required, access and refresh kept apart, forgeries refused."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import jwt
import pytest

from nefos.security.tokens import ALGORITHM, InvalidToken, TokenCodec
from tests.security.conftest import API, DROP, Forger, b64url, b64url_json, bearer

ME = f"{API}/auth/me"
REQUIRED_CLAIMS = ("exp", "iat", "nbf", "iss", "aud", "sub", "typ", "jti", "sid")


def _header(token: str) -> dict[str, Any]:
    return dict(jwt.get_unverified_header(token))


async def test_issued_tokens_are_hs256_with_every_claim(register: Any, core: Any) -> None:
    acct = await register()
    s = core.settings
    for token, typ in ((acct.access_token, "access"), (acct.refresh_token, "refresh")):
        assert _header(token)["alg"] == "HS256" == ALGORITHM
        # Verifies with the server's key and pinned algorithm only.
        claims = jwt.decode(
            token,
            s.jwt_secret,
            algorithms=["HS256"],
            audience=s.jwt_audience if typ == "access" else f"{s.jwt_audience}:refresh",
            issuer=s.jwt_issuer,
        )
        for name in REQUIRED_CLAIMS:
            assert name in claims, f"{typ} token lacks {name}"
        assert claims["typ"] == typ
        assert claims["sub"] == acct.id
        assert claims["iss"] == s.jwt_issuer
        assert claims["iat"] <= time.time() + 5
        assert claims["exp"] > claims["iat"]
    access = jwt.decode(acct.access_token, options={"verify_signature": False})
    refresh = jwt.decode(acct.refresh_token, options={"verify_signature": False})
    assert access["exp"] - access["iat"] == s.access_token_ttl
    assert refresh["exp"] - refresh["iat"] == s.refresh_token_ttl
    assert access["aud"] != refresh["aud"]
    assert access["jti"] != refresh["jti"]
    assert access["sid"] == refresh["sid"]


async def test_each_issued_token_has_a_unique_jti(client: Any, register: Any) -> None:
    acct = await register()
    jtis = set()
    for _ in range(3):
        r = await client.post(
            f"{API}/auth/login", json={"email": acct.email, "password": acct.password}
        )
        data = r.json()["data"]
        for t in (data["access_token"], data["refresh_token"]):
            jtis.add(jwt.decode(t, options={"verify_signature": False})["jti"])
    assert len(jtis) == 6


def test_codec_refuses_a_short_secret() -> None:
    with pytest.raises(ValueError, match="32"):
        TokenCodec(secret="x" * 31, issuer="nefos", audience="nefos-api")


def test_codec_keeps_access_and_refresh_apart() -> None:
    codec = TokenCodec(secret="s" * 40, issuer="nefos", audience="nefos-api")
    access = codec.issue(typ="access", user_id="u", session_id="s", ttl=60).token
    refresh = codec.issue(typ="refresh", user_id="u", session_id="s", ttl=60).token
    assert codec.decode(access, typ="access").typ == "access"
    assert codec.decode(refresh, typ="refresh").typ == "refresh"
    with pytest.raises(InvalidToken):
        codec.decode(access, typ="refresh")
    with pytest.raises(InvalidToken):
        codec.decode(refresh, typ="access")


async def test_refresh_token_is_not_an_access_token(client: Any, register: Any) -> None:
    acct = await register()
    for headers in (bearer(acct.refresh_token), {"X-Auth-Token": acct.refresh_token}):
        r = await client.get(ME, headers=headers)
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "UNAUTHORIZED"


async def test_access_token_is_not_a_refresh_token(client: Any, register: Any) -> None:
    acct = await register()
    r = await client.post(f"{API}/auth/refresh", json={"refresh_token": acct.access_token})
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "UNAUTHORIZED"
    # The refused attempt did not spend or revoke anything: the real pair still works.
    assert (await client.get(ME, headers=acct.headers)).status_code == 200
    r = await client.post(f"{API}/auth/refresh", json={"refresh_token": acct.refresh_token})
    assert r.status_code == 200


def _tamper_payload(token: str, **changes: Any) -> str:
    """Change the payload but keep the original header and signature."""
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims.update(changes)
    return f"{header}.{b64url_json(claims)}.{signature}"


def _forged_access_tokens(acct: Any, other: Any, f: Forger) -> dict[str, str]:
    """Every way an access token can be wrong, each otherwise made to look right."""
    now = int(time.time())
    tok = acct.access_token
    claims = f.claims_from(tok)
    forged: dict[str, str] = {
        "alg none": f.unsigned(f.fresh_claims(tok)),
        "alg None (capitalised)": f.unsigned(f.fresh_claims(tok), alg="None"),
        "alg none, original signature kept": f.unsigned(claims) + tok.split(".")[2],
        "wrong key": f.sign(f.fresh_claims(tok), key="another-secret-that-is-long-enough-xx"),
        "empty key": _hmac_token({"alg": "HS256", "typ": "JWT"}, f.fresh_claims(tok), ""),
        "tampered payload (sub), same signature": _tamper_payload(tok, sub=other.id),
        "tampered payload (exp), same signature": _tamper_payload(tok, exp=now + 10**6),
        "expired": f.sign(f.fresh_claims(tok, iat=now - 7200, nbf=now - 7200, exp=now - 3600)),
        "expired a minute ago": f.sign(
            f.fresh_claims(tok, iat=now - 600, nbf=now - 600, exp=now - 60)
        ),
        "not valid before the future": f.sign(f.fresh_claims(tok, nbf=now + 3600, exp=now + 7200)),
        "issued in the future": f.sign(f.fresh_claims(tok, iat=now + 3600, exp=now + 7200)),
        "wrong issuer": f.sign(f.fresh_claims(tok, iss="someone-else")),
        "wrong audience": f.sign(f.fresh_claims(tok, aud="other-api")),
        "refresh audience on an access token": f.sign(
            f.fresh_claims(tok, aud=f"{f.audience}:refresh")
        ),
        "audience list": f.sign(f.fresh_claims(tok, aud=[f.audience, "other-api"])),
        "typ refresh": f.sign(f.fresh_claims(tok, typ="refresh")),
        "typ missing value": f.sign(f.fresh_claims(tok, typ="")),
        "the real refresh token": acct.refresh_token,
        "refresh token re-signed as typ access": f.sign(
            f.fresh_claims(acct.refresh_token, typ="access")
        ),
        "sub of a user that does not exist": f.sign(
            f.fresh_claims(tok, sub="00000000-0000-0000-0000-000000000000")
        ),
        "sub of another user, own session": f.sign(f.fresh_claims(tok, sub=other.id)),
        "sid of a session that does not exist": f.sign(
            f.fresh_claims(tok, sid="00000000-0000-0000-0000-000000000000")
        ),
        "sub not a string": f.sign(f.fresh_claims(tok, sub=12345)),
        "exp not a number": f.sign(f.fresh_claims(tok, exp="tomorrow")),
        "HS512 with the right key": _hmac_token(
            {"alg": "HS512", "typ": "JWT"}, f.fresh_claims(tok), f.secret, hashlib.sha512
        ),
        "HS384 with the right key": _hmac_token(
            {"alg": "HS384", "typ": "JWT"}, f.fresh_claims(tok), f.secret, hashlib.sha384
        ),
        "RS256 header": (
            f"{b64url_json({'alg': 'RS256', 'typ': 'JWT'})}."
            f"{b64url_json(f.fresh_claims(tok))}.{b64url(b'x' * 256)}"
        ),
        "RS256 header, HMAC signature": _hmac_token(
            {"alg": "RS256", "typ": "JWT"}, f.fresh_claims(tok), f.secret
        ),
        "ES256 header": (
            f"{b64url_json({'alg': 'ES256', 'typ': 'JWT'})}."
            f"{b64url_json(f.fresh_claims(tok))}.{b64url(b'y' * 64)}"
        ),
        "garbage": "garbage",
        "three garbage parts": "a.b.c",
        "two parts": tok.rsplit(".", 1)[0],
        "signature stripped": tok.rsplit(".", 1)[0] + ".",
        "non-base64": "!!!.@@@.###",
        "very long": "a" * 10000,
        "api-key-looking junk": "nfs_" + "A" * 40,
        "JSON": json.dumps(claims),
        "token twice": f"{tok} {tok}",
    }
    for name in REQUIRED_CLAIMS:
        forged[f"missing {name}"] = f.sign(f.fresh_claims(tok, **{name: DROP}))
    return forged


def _hmac_token(
    header: dict[str, Any], claims: dict[str, Any], key: str, digest: Any = hashlib.sha256
) -> str:
    """An HMAC over header and claims, whatever algorithm the header names."""
    signing_input = f"{b64url_json(header)}.{b64url_json(claims)}"
    sig = hmac.new(key.encode(), signing_input.encode(), digest).digest()
    return f"{signing_input}.{b64url(sig)}"


async def test_control_a_freshly_signed_token_is_accepted(
    client: Any, register: Any, forger: Forger
) -> None:
    """The forgeries below differ from this one in one thing each; it must pass."""
    acct = await register()
    good = forger.sign(forger.fresh_claims(acct.access_token))
    r = await client.get(ME, headers=bearer(good))
    assert r.status_code == 200, r.text
    assert r.json()["data"]["id"] == acct.id
    # Re-encoding an untouched payload keeps the token valid, so the tampered
    # tokens below fail for their changed claim, not for the re-encoding.
    assert _tamper_payload(acct.access_token) == acct.access_token
    good_hmac = _hmac_token(
        {"alg": "HS256", "typ": "JWT"}, forger.fresh_claims(acct.access_token), forger.secret
    )
    assert (await client.get(ME, headers=bearer(good_hmac))).status_code == 200


async def test_every_forged_token_gets_401(client: Any, register: Any, forger: Forger) -> None:
    acct = await register()
    other = await register()
    accepted = {}
    for name, token in _forged_access_tokens(acct, other, forger).items():
        for headers in (bearer(token), {"X-Auth-Token": token}):
            r = await client.get(ME, headers=headers)
            body = r.json()
            if r.status_code != 401 or body["error"]["code"] != "UNAUTHORIZED":
                accepted[f"{name} via {next(iter(headers))}"] = (r.status_code, body)
            elif body["data"] is not None:
                accepted[f"{name}: data in a 401"] = body
    assert accepted == {}
    # None of it disturbed the real session.
    assert (await client.get(ME, headers=acct.headers)).status_code == 200


@pytest.mark.parametrize(
    "authorization",
    ["", "Bearer", "Bearer ", "Bearer    ", "Basic dXNlcjpwYXNz", "Token abc", "bearer"],
)
async def test_empty_or_malformed_authorization_gets_401(
    client: Any, register: Any, authorization: str
) -> None:
    await register()
    r = await client.get(ME, headers={"Authorization": authorization})
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "UNAUTHORIZED"


async def test_empty_x_auth_token_gets_401(client: Any) -> None:
    r = await client.get(ME, headers={"X-Auth-Token": ""})
    assert r.status_code == 401


async def test_no_credentials_gets_401(client: Any) -> None:
    r = await client.get(ME)
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"].startswith("Bearer")


async def test_forged_refresh_tokens_get_401(client: Any, register: Any, forger: Forger) -> None:
    acct = await register()
    now = int(time.time())
    rt = acct.refresh_token
    forged = {
        "access token": acct.access_token,
        "access token re-signed as typ refresh": forger.sign(
            forger.fresh_claims(acct.access_token, typ="refresh")
        ),
        "alg none": forger.unsigned(forger.fresh_claims(rt)),
        "wrong key": forger.sign(forger.fresh_claims(rt), key="z" * 40),
        "expired": forger.sign(forger.fresh_claims(rt, iat=now - 99, nbf=now - 99, exp=now - 60)),
        "wrong issuer": forger.sign(forger.fresh_claims(rt, iss="evil")),
        "access audience": forger.sign(forger.fresh_claims(rt, aud=forger.audience)),
        "HS512": _hmac_token(
            {"alg": "HS512", "typ": "JWT"}, forger.fresh_claims(rt), forger.secret, hashlib.sha512
        ),
        # Well signed, but no such token was ever issued (its jti is unknown).
        "unknown jti": forger.sign(forger.fresh_claims(rt)),
        "tampered payload": _tamper_payload(rt, exp=now + 10**8),
        "garbage": "garbage",
    }
    for name in ("sid", "jti", "exp", "typ"):
        forged[f"missing {name}"] = forger.sign(forger.fresh_claims(rt, **{name: DROP}))
    wrong = {}
    for name, token in forged.items():
        r = await client.post(f"{API}/auth/refresh", json={"refresh_token": token})
        if r.status_code != 401:
            wrong[name] = (r.status_code, r.text)
    assert wrong == {}
    # The genuine refresh token was never spent by any of the above.
    r = await client.post(f"{API}/auth/refresh", json={"refresh_token": rt})
    assert r.status_code == 200, r.text
