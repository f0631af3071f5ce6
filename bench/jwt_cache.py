"""Local JWT verification vs the spec's Redis cache (``jwt_valid:{hash}``) vs an in-process memo.

    .venv/bin/python bench/jwt_cache.py [--n 20000]

Uses REDIS_URL, or starts an embedded Redis. Prints µs per authentication for each path.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from montage_common.redis import create_redis
from montage_contracts.keys import Keys
from montage_dev.devstack import EmbeddedRedis
from montage_gateway.auth import Authenticator
from montage_gateway.tokens import JwksKeys, TokenVerifier, mint_dev_token

SECRET = "bench-secret-" + "x" * 32


async def per_op(fn: Any, n: int) -> float:
    for _ in range(200):
        await fn()
    start = time.perf_counter()
    for _ in range(n):
        await fn()
    return (time.perf_counter() - start) / n * 1e6


async def run(redis_url: str, n: int) -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    jwk_rsa = {**jwt.algorithms.RSAAlgorithm.to_jwk(rsa_key.public_key(), as_dict=True), "kid": "r", "alg": "RS256"}
    jwk_ec = {**jwt.algorithms.ECAlgorithm.to_jwk(ec_key.public_key(), as_dict=True), "kid": "e", "alg": "ES256"}

    async def fetch() -> dict[str, Any]:
        return {"keys": [jwk_rsa, jwk_ec]}

    verifier = TokenVerifier(hs_secret=SECRET, jwks=JwksKeys(fetch))
    now = int(time.time())
    claims = {"sub": "u", "aud": "authenticated", "exp": now + 3600, "iat": now}
    tokens = {
        "HS256": mint_dev_token(SECRET, "u", 3600),
        "RS256": jwt.encode(claims, rsa_key, "RS256", headers={"kid": "r"}),
        "ES256": jwt.encode(claims, ec_key, "ES256", headers={"kid": "e"}),
    }
    redis = create_redis(redis_url)
    keys = Keys("bench-jwt")
    cache_key = keys.jwt_valid(hashlib.sha256(tokens["HS256"].encode()).hexdigest())
    await redis.set(cache_key, "u", ex=300)

    async def cached() -> None:
        # what a cache hit costs: hash the token, one GET
        await redis.get(keys.jwt_valid(hashlib.sha256(tokens["HS256"].encode()).hexdigest()))

    print(f"{'path':<28}{'µs/auth':>10}")
    for alg, tok in tokens.items():
        us = await per_op(lambda tok=tok: verifier.verify(tok), n)
        print(f"{'local verify ' + alg:<28}{us:>10.1f}")
    print(f"{'redis cache hit (GET)':<28}{await per_op(cached, n):>10.1f}")
    memo = Authenticator(verifier, redis, keys, cache="memory")
    print(f"{'in-process memo hit':<28}{await per_op(lambda: memo.user_of(tokens['HS256']), n):>10.1f}")

    # under concurrency (64 requests in flight), as in a busy gateway
    async def burst(fn: Any) -> float:
        start = time.perf_counter()
        for _ in range(n // 64):
            await asyncio.gather(*(fn() for _ in range(64)))
        return (time.perf_counter() - start) / (n // 64 * 64) * 1e6

    print(f"{'local HS256, 64 in flight':<28}{await burst(lambda: verifier.verify(tokens['HS256'])):>10.1f}")
    print(f"{'redis hit, 64 in flight':<28}{await burst(cached):>10.1f}")
    await redis.delete(cache_key)
    await redis.aclose()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=20000)
    args = parser.parse_args()
    url = os.environ.get("REDIS_URL")
    server = None
    if not url:
        server = EmbeddedRedis(Path(tempfile.mkdtemp(prefix="bench-redis-")))
        url = server.start()
    try:
        asyncio.run(run(url, args.n))
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
