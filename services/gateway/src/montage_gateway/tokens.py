"""Supabase access tokens: verification (HS256 and JWKS RS256/ES256) and development minting.

- Only the configured algorithms are accepted, never ``none``; the key is chosen by the
  token's ``alg``: HS256 uses the shared secret (never a public key), RS256/ES256 use the JWKS
  key with the token's ``kid`` and a matching key type.
- ``exp`` (required), ``nbf`` and ``iat`` are checked with a small leeway; ``aud`` must be
  ``authenticated``; ``iss`` is checked when configured; ``sub`` is the user id.
- The JWKS is cached; an unknown ``kid`` triggers a refetch at most once per
  ``min_refetch_seconds`` (so forged kids cannot hammer the key server), and the set is also
  refreshed after ``cache_seconds``, so rotated keys are honoured both ways.

:func:`mint_dev_token` makes an HS256 token for development and tests.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jwt

DEFAULT_AUDIENCE = "authenticated"
ASYMMETRIC_KEY_TYPES: dict[str, str] = {"RS256": "RSA", "ES256": "EC"}
SUPPORTED_ALGORITHMS: tuple[str, ...] = ("HS256", *ASYMMETRIC_KEY_TYPES)

JwksFetcher = Callable[[], Awaitable[Mapping[str, Any]]]


class TokenError(Exception):
    """A token was refused; ``reason`` is a short snake_case label for metrics and logs."""

    def __init__(self, reason: str, message: str = "Invalid or expired token") -> None:
        self.reason = reason
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a verified token speaks for."""

    user_id: str
    expires_at: float
    claims: Mapping[str, Any]


class JwksKeys:
    """A cached JSON Web Key Set, refetched on an unknown ``kid`` at most every ``min_refetch_seconds``."""

    def __init__(self, fetch: JwksFetcher, *, cache_seconds: float = 600.0, min_refetch_seconds: float = 30.0) -> None:
        self._fetch = fetch
        self.cache_seconds = cache_seconds
        self.min_refetch_seconds = min_refetch_seconds
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at = float("-inf")
        self._lock = asyncio.Lock()

    async def key(self, kid: str) -> jwt.PyJWK:
        now = time.monotonic()
        stale = now - self._fetched_at > self.cache_seconds
        if (found := self._keys.get(kid)) is not None and not stale:
            return found
        async with self._lock:  # one fetch at a time; waiters see its result
            now = time.monotonic()
            wanted = kid not in self._keys or now - self._fetched_at > self.cache_seconds
            if wanted and now - self._fetched_at >= self.min_refetch_seconds:
                await self._refresh()
        if (found := self._keys.get(kid)) is None:
            raise TokenError("unknown_kid")
        return found

    async def _refresh(self) -> None:
        try:
            document = await self._fetch()
        except Exception:
            self._fetched_at = time.monotonic()  # rate-limit retries against a failing server too
            if self._keys:
                return  # keep serving the keys we have
            raise TokenError("jwks_unavailable", "Signing keys unavailable") from None
        keys: dict[str, jwt.PyJWK] = {}
        for raw in document.get("keys", []):
            if not isinstance(raw, dict) or not raw.get("kid"):
                continue
            try:
                keys[str(raw["kid"])] = jwt.PyJWK(raw)
            except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError):
                continue  # a key we cannot use (unknown kty/alg) is skipped, not fatal
        self._keys = keys
        self._fetched_at = time.monotonic()


class TokenVerifier:
    """Verifies Supabase access tokens; see the module docstring for the rules."""

    def __init__(
        self,
        *,
        hs_secret: str = "",
        jwks: JwksKeys | None = None,
        audience: str = DEFAULT_AUDIENCE,
        issuer: str = "",
        leeway_seconds: float = 10.0,
        algorithms: Sequence[str] = SUPPORTED_ALGORITHMS,
    ) -> None:
        unknown = set(algorithms) - set(SUPPORTED_ALGORITHMS)
        if unknown:
            raise ValueError(f"unsupported JWT algorithms: {sorted(unknown)}")
        self.hs_secret = hs_secret
        self.jwks = jwks
        self.audience = audience
        self.issuer = issuer
        self.leeway = leeway_seconds
        self.algorithms = frozenset(algorithms)

    async def verify(self, token: str) -> Identity:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise TokenError("malformed") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.algorithms:
            raise TokenError("alg_not_allowed")
        key: Any
        if alg == "HS256":
            if not self.hs_secret:
                raise TokenError("alg_not_allowed")
            key = self.hs_secret
        else:
            kid = header.get("kid")
            if self.jwks is None or not isinstance(kid, str) or not kid:
                raise TokenError("unknown_kid")
            jwk = await self.jwks.key(kid)
            if jwk.key_type != ASYMMETRIC_KEY_TYPES[alg] or jwk.algorithm_name != alg:
                raise TokenError("alg_not_allowed")
            key = jwk.key
        return self._decode(token, key, alg)

    def _decode(self, token: str, key: Any, alg: str) -> Identity:
        options: Any = {"require": ["exp", "sub"], "verify_iss": bool(self.issuer)}
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=self.audience,
                issuer=self.issuer or None,
                leeway=self.leeway,
                options=options,
            )
        except jwt.ExpiredSignatureError:
            raise TokenError("expired") from None
        except jwt.ImmatureSignatureError:
            raise TokenError("not_yet_valid") from None
        except jwt.InvalidAudienceError:
            raise TokenError("bad_audience") from None
        except jwt.InvalidIssuerError:
            raise TokenError("bad_issuer") from None
        except jwt.InvalidSignatureError:
            raise TokenError("bad_signature") from None
        except jwt.MissingRequiredClaimError:
            raise TokenError("missing_claim") from None
        except jwt.PyJWTError:
            raise TokenError("malformed") from None
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            raise TokenError("missing_claim")
        return Identity(user_id=sub, expires_at=float(claims["exp"]), claims=claims)


def mint_dev_token(
    secret: str,
    user_id: str,
    ttl: float = 3600.0,
    *,
    audience: str = DEFAULT_AUDIENCE,
    issuer: str = "",
    extra: Mapping[str, Any] | None = None,
) -> str:
    """An HS256 token shaped like a Supabase access token (development and tests only)."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": user_id,
        "aud": audience,
        "role": "authenticated",
        "iat": now,
        "exp": now + int(ttl),
        "session_id": str(uuid.uuid4()),
    }
    if issuer:
        claims["iss"] = issuer
    claims.update(extra or {})
    return jwt.encode(claims, secret, algorithm="HS256")
