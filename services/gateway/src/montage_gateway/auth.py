"""Request authentication: ``Authorization: Bearer <jwt>`` → user id (Supabase tokens).

Verification itself is :class:`montage_gateway.tokens.TokenVerifier`. ``bench/jwt_cache.py`` measured
the spec's Redis cache (``jwt_valid:{sha256(token)}``) slower than verifying locally, so the default
(``JWT_CACHE=memory``) verifies locally and memoises verified tokens in a bounded in-process LRU for
``JWT_CACHE_SECONDS``; ``redis`` keeps the spec's cache; ``none`` verifies every request. No cached
entry ever outlives the token's ``exp``.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import aiohttp
import structlog
from aiohttp import web
from montage_common.web import USER_ID
from montage_contracts.errors import Unauthorized
from montage_contracts.keys import Keys
from redis.asyncio import Redis

from montage_gateway.metrics import AUTH_FAILURES
from montage_gateway.settings import GatewaySettings
from montage_gateway.tokens import Identity, JwksKeys, TokenError, TokenVerifier

log = structlog.get_logger()


def bearer_token(request: web.Request) -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        AUTH_FAILURES.labels("missing").inc()
        raise Unauthorized("Missing bearer token")
    return token.strip()


def jwks_fetcher(session: aiohttp.ClientSession, url: str, timeout: float = 5.0) -> Any:
    async def fetch() -> Mapping[str, Any]:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            resp.raise_for_status()
            body: Mapping[str, Any] = await resp.json(content_type=None)
            return body

    return fetch


def build_verifier(settings: GatewaySettings, session: aiohttp.ClientSession) -> TokenVerifier:
    jwks = None
    if settings.supabase_jwks_url:
        jwks = JwksKeys(
            jwks_fetcher(session, settings.supabase_jwks_url),
            cache_seconds=settings.jwks_cache_seconds,
            min_refetch_seconds=settings.jwks_min_refetch_seconds,
        )
    return TokenVerifier(
        hs_secret=settings.jwt_secret,
        jwks=jwks,
        audience=settings.jwt_audience,
        issuer=settings.jwt_issuer,
        leeway_seconds=settings.jwt_leeway_seconds,
        algorithms=settings.algorithms,
    )


class Authenticator:
    """Turns a request's bearer token into a user id, or raises :class:`Unauthorized`."""

    def __init__(
        self,
        verifier: TokenVerifier,
        redis: Redis,
        keys: Keys,
        *,
        cache: str = "memory",
        cache_seconds: int = 300,
        memo_size: int = 10_000,
    ) -> None:
        self.verifier = verifier
        self.redis = redis
        self.keys = keys
        self.cache = cache
        self.cache_seconds = cache_seconds
        self.memo_size = memo_size
        self._memo: OrderedDict[bytes, tuple[str, float]] = OrderedDict()

    async def authenticate(self, request: web.Request) -> str:
        return await self.user_of(bearer_token(request))

    async def user_of(self, token: str) -> str:
        if self.cache == "memory":
            return await self._memoised(token)
        if self.cache == "redis":
            return await self._cached(token)
        return (await self._verify(token)).user_id

    async def _memoised(self, token: str) -> str:
        digest = hashlib.sha256(token.encode()).digest()
        hit = self._memo.get(digest)
        now = time.time()
        if hit is not None and hit[1] > now:
            self._memo.move_to_end(digest)
            return hit[0]
        identity = await self._verify(token)
        self._memo[digest] = (identity.user_id, min(identity.expires_at, now + self.cache_seconds))
        if len(self._memo) > self.memo_size:
            self._memo.popitem(last=False)
        return identity.user_id

    async def _verify(self, token: str) -> Identity:
        try:
            return await self.verifier.verify(token)
        except TokenError as err:
            AUTH_FAILURES.labels(err.reason).inc()
            log.info("auth_refused", reason=err.reason)
            raise Unauthorized(str(err)) from None

    async def _cached(self, token: str) -> str:
        key = self.keys.jwt_valid(hashlib.sha256(token.encode()).hexdigest())
        hit = await self.redis.get(key)
        if hit is not None:
            return hit.decode() if isinstance(hit, bytes) else str(hit)
        identity = await self._verify(token)
        ttl = min(self.cache_seconds, int(identity.expires_at - time.time()))
        if ttl > 0:
            await self.redis.set(key, identity.user_id, ex=ttl)
        return identity.user_id


def request_user(request: web.Request) -> str:
    user: str | None = request.get(USER_ID)
    if not user:
        raise Unauthorized("Missing bearer token")
    return user
